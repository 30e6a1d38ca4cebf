//! Command-line interface: one subcommand per pipeline stage.

use clap::{Args, Parser, Subcommand};

/// Delivery pipeline of Time Manager: test, build images, push, deploy.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
pub(crate) struct Xtask {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run every check CI runs: format, lints, tests, frontend checks and build.
    Ci(Ci),
    /// Build the container images without Docker into `target/images/`.
    Build(Build),
    /// Measure the pipeline and print a table for BENCHMARKS.md.
    Bench(Bench),
}

#[derive(Debug, Args)]
pub(crate) struct Bench {
    /// What to measure.
    #[arg(value_enum)]
    pub(crate) what: BenchWhat,
    /// Repetitions of each warm scenario (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum BenchWhat {
    /// Cold build, no-change rebuild, one-line backend change: compile vs assembly, sizes.
    Build,
}

#[derive(Debug, Args)]
pub(crate) struct Build {
    /// Images to build: `backend`, `frontend` (default: all).
    pub(crate) images: Vec<String>,
    /// Print one JSON object with the digests and sizes on stdout, nothing else.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct Ci {
    /// Skip the frontend steps (npm ci, lint, type-check, tests, build).
    #[arg(long)]
    pub(crate) skip_frontend: bool,
    /// Skip the Rust steps (fmt, clippy, tests).
    #[arg(long)]
    pub(crate) skip_rust: bool,
    /// Skip building the images and checking them with skopeo, umoci and Docker.
    #[arg(long)]
    pub(crate) skip_images: bool,
}
