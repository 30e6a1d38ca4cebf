//! `cargo xtask`: the project's delivery pipeline (test, build images, push, deploy).
//!
//! Command handlers stay thin: each parses its flags and calls one stage module.

mod bench;
mod build;
mod ci;
mod flags;
mod harness;
mod image;
mod project;
mod provision;
mod stack;
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
    }
}
