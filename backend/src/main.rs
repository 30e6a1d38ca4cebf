//! `timemanager-backend` binary: the command line lives in the library ([`timemanager_backend::cli`]).

fn main() -> std::process::ExitCode {
    timemanager_backend::cli::main()
}
