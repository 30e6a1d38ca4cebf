//! `cargo xtask`: the project's delivery pipeline (test, build images, push, deploy).
//!
//! Command handlers stay thin: each parses its flags and calls one stage module.

mod base_cmd;
mod bench;
mod build;
mod ci;
mod deploy;
mod digest;
mod e2e;
mod flags;
mod harness;
mod image;
mod project;
mod provision;
mod push;
mod registry;
mod steps;
#[cfg(test)]
mod tidy;

use std::process::ExitCode;

use clap::Parser;
use xshell::Shell;

use crate::flags::{Command, Xtask};

fn main() -> ExitCode {
    let xtask = Xtask::parse();
    match run(xtask) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(xtask: Xtask) -> anyhow::Result<()> {
    let sh = &Shell::new()?;
    sh.change_dir(project::root());
    match xtask.command {
        Command::Ci(cmd) => cmd.run(sh),
        Command::Build(cmd) => cmd.run(sh),
        Command::Bench(cmd) => cmd.run(sh),
        Command::Base(cmd) => cmd.run(sh),
        Command::Push(cmd) => cmd.run(sh),
        Command::Deploy(cmd) => cmd.run(sh),
        Command::Rollback(cmd) => cmd.run(sh),
        Command::Releases(cmd) => cmd.run(sh),
        Command::Status(cmd) => cmd.run(sh),
        Command::Logs(cmd) => cmd.run(sh),
        Command::CreateAdmin(cmd) => cmd.run(sh),
        Command::ServerSetup(cmd) => cmd.run(sh),
        Command::SwarmSetup(cmd) => cmd.run(sh),
        Command::Db(cmd) => cmd.run(sh),
        Command::E2e(cmd) => cmd.run(sh),
    }
}
