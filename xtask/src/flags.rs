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
    /// Manage registry base images (`base update` pins their digests).
    Base(Base),
    /// Measure the pipeline and print a table for BENCHMARKS.md.
    Bench(Bench),
    /// Build, push and deploy a release to the server over ssh, health-gated, rolled back on failure.
    Deploy(Deploy),
    /// Go back to the previous (or a named) release still on the server, health-gated.
    Rollback(Rollback),
    /// List the server's releases: time, result, and which one is current.
    Releases(Releases),
    /// Show the server's containers with their health, and the health URL's answer.
    Status(Status),
    /// Print (or follow) the logs of one service on the server.
    Logs(Logs),
    /// Make an admin account on the deployed release (the first one, or a new password);
    /// reads the password from stdin, never from arguments.
    CreateAdmin(CreateAdmin),
    /// Provision a fresh Debian/Ubuntu server: Docker, compose, /opt/timemanager, firewall.
    ServerSetup(ServerSetup),
    /// Make a Docker Swarm of provisioned servers for `--mode swarm`: init on the manager,
    /// join the workers, label the database's node, open the swarm ports between them.
    SwarmSetup(SwarmSetup),
    /// The server's database: `snapshot`, `snapshots`, `restore SNAPSHOT`.
    Db(Db),
    /// Deploy, roll back and break releases on loopback with real sshd, registry and Docker.
    E2e(E2e),
    /// Push the built images to a registry (GHCR by default) over its HTTP API.
    Push(Push),
}

#[derive(Debug, Args)]
pub(crate) struct Base {
    #[command(subcommand)]
    pub(crate) command: BaseCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BaseCommand {
    /// Resolve each registry base's tag to its linux/amd64 digest and write `images.lock.json`.
    Update(BaseUpdate),
}

#[derive(Debug, Args)]
pub(crate) struct BaseUpdate {
    /// Extra references to pin besides those the image definitions name.
    pub(crate) references: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct Bench {
    /// What to measure.
    #[arg(value_enum)]
    pub(crate) what: BenchWhat,
    /// Repetitions of each warm scenario (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// `bench xtask` only: measure this commit instead of the working tree (before/after).
    #[arg(long, value_name = "REV")]
    pub(crate) rev: Option<String>,
    /// `bench vs-docker` only: measure the no-change scenario and the floor, not the
    /// one-line change (whose compile every tool pays alike).
    #[arg(long)]
    pub(crate) no_change_only: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum BenchWhat {
    /// Cold build, no-change rebuild, one-line backend change: compile vs assembly, sizes.
    Build,
    /// Compile time of `cargo xtask` itself: cold (empty target) and after a one-line edit.
    Xtask,
    /// No-change deploy over ssh on loopback: wall time, split by step, TCP connections to sshd.
    Deploy,
    /// Cold push, no-change push, one-line-change push to a local registry: time and bytes.
    Push,
    /// `cargo xtask push` against `docker build`+`docker push` and `buildah`, alternated.
    VsDocker,
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
    /// Run only this step (`push`) or check (`push/fault-retry-500`) and what it needs;
    /// repeatable. An unknown name fails and lists the valid ones.
    #[arg(long, value_name = "NAME")]
    pub(crate) only: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct Push {
    /// Images to push: `backend`, `frontend` (default: all). They are built first (a no-op
    /// when nothing changed) unless `--no-build` is given.
    pub(crate) images: Vec<String>,
    /// Push exactly the OCI layouts an earlier `cargo xtask build` wrote under
    /// `target/images/`, without building.
    #[arg(long)]
    pub(crate) no_build: bool,
    /// Registry host; loopback hosts are reached over plain HTTP, others over HTTPS.
    #[arg(long, default_value = "ghcr.io")]
    pub(crate) registry: String,
    /// Repository prefix `OWNER/REPO` (default: GITHUB_REPOSITORY, else the `origin` remote),
    /// lower-cased; images go to `REGISTRY/OWNER/REPO/<image>`.
    #[arg(long)]
    pub(crate) namespace: Option<String>,
    /// Tag to set, repeatable (default: the short commit and `latest`).
    #[arg(long = "tag", value_name = "TAG")]
    pub(crate) tags: Vec<String>,
    /// A non-loopback registry host to reach over plain HTTP, repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub(crate) insecure_registries: Vec<String>,
    /// Print one JSON document `{"images": [...]}` on stdout, as `build --json` does: per
    /// image its name, reference, digest, tags, blob and byte counts, retries; nothing else.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Where the server is and how to reach it; shared by every command that talks to it.
#[derive(Debug, Clone, Args)]
pub(crate) struct Server {
    /// Server address (default: `HETZNER_HOST`).
    #[arg(long)]
    pub(crate) host: Option<String>,
    /// ssh user.
    #[arg(long, default_value = "root")]
    pub(crate) user: String,
    /// ssh port.
    #[arg(long, default_value_t = 22)]
    pub(crate) port: u16,
    /// Private key file (default: ssh-agent, or the key text in `HETZNER_SSH_KEY`).
    #[arg(long, value_name = "FILE")]
    pub(crate) identity: Option<std::path::PathBuf>,
    /// known_hosts file pinning the server's host key (default: the text in
    /// `HETZNER_KNOWN_HOSTS`, else accept-new with a warning).
    #[arg(long, value_name = "FILE")]
    pub(crate) known_hosts: Option<std::path::PathBuf>,
    /// Base directory on the server.
    #[arg(long, default_value = "/opt/timemanager", value_name = "DIR")]
    pub(crate) remote_dir: String,
    /// `compose` (one server, docker compose) or `swarm` (a Docker Swarm through its
    /// manager, `docker stack deploy`); default: `DEPLOY_MODE`, else `compose`.
    #[arg(long, value_enum)]
    pub(crate) mode: Option<Mode>,
    /// Compose project name (tests use their own, to share a Docker engine safely).
    #[arg(long, default_value = crate::deploy::compose::COMPOSE_PROJECT, hide = true)]
    pub(crate) compose_project: String,
}

/// Where the stack runs: see `deploy --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    Compose,
    Swarm,
}

/// How a release is judged healthy; shared by deploy and rollback.
#[derive(Debug, Clone, Args)]
pub(crate) struct HealthGate {
    /// URL that must answer 200 (default: `https://$DOMAIN/api/health`).
    #[arg(long, value_name = "URL")]
    pub(crate) health_url: Option<String>,
    /// Seconds to wait for the containers and the health URL.
    #[arg(long, default_value_t = 180, value_name = "SECONDS")]
    pub(crate) health_timeout: u64,
    /// Accept any TLS certificate from the health URL (for test labs only, where Traefik
    /// serves its self-signed default certificate because ACME cannot reach Let's Encrypt).
    #[arg(long, hide = true)]
    pub(crate) health_insecure_tls: bool,
    /// Resolve the health URL's HOST to ADDR, like `curl --resolve` (for test labs only).
    #[arg(long, value_name = "HOST:ADDR", hide = true)]
    pub(crate) health_resolve: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct Deploy {
    #[command(flatten)]
    pub(crate) server: Server,
    #[command(flatten)]
    pub(crate) health: HealthGate,
    /// Image tag to deploy: a 7-character commit (default: the checkout's commit).
    #[arg(long)]
    pub(crate) tag: Option<String>,
    /// Do not build and push: the tag's images must already be in the registry.
    #[arg(long)]
    pub(crate) no_push: bool,
    /// Compose profile to enable as well, e.g. `monitoring`.
    #[arg(long = "profile", value_name = "PROFILE")]
    pub(crate) profiles: Vec<String>,
    /// Print every remote command and upload, secrets masked, and change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Compose file to ship as `docker-compose.prod.yml` (tests ship their own).
    #[arg(long, value_name = "FILE", hide = true)]
    pub(crate) compose_file: Option<std::path::PathBuf>,
    /// Directory to ship as `infrastructure/` (tests ship their own).
    #[arg(long, value_name = "DIR", hide = true)]
    pub(crate) infrastructure: Option<std::path::PathBuf>,
    /// Registry that may be reached over plain HTTP (a loopback registry in tests).
    #[arg(long, value_name = "HOST:PORT", hide = true)]
    pub(crate) insecure_registry: Vec<String>,
    /// Compose file to ship as the release's `docker-compose.override.yml`, which every
    /// compose command on the server then adds (test labs only; rollback reuses the
    /// release's own).
    #[arg(long, value_name = "FILE", hide = true)]
    pub(crate) compose_override: Option<std::path::PathBuf>,
    /// Database snapshots to keep on the server (one is taken before each migrating deploy).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) keep_snapshots: usize,
    /// `--mode swarm`: tasks of backend and frontend each (spread over the nodes).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub(crate) replicas: u32,
    /// `--mode swarm`: stack file to ship as `docker-stack.yml` (tests ship their own).
    #[arg(long, value_name = "FILE", hide = true)]
    pub(crate) stack_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct Rollback {
    #[command(flatten)]
    pub(crate) server: Server,
    #[command(flatten)]
    pub(crate) health: HealthGate,
    /// Release to go back to (default: the newest healthy release before the current one).
    #[arg(long, value_name = "TAG")]
    pub(crate) to: Option<String>,
    /// Restore this snapshot (a name from `cargo xtask db snapshots`) before starting the
    /// release: for a rollback across a `contract` migration, which is refused otherwise.
    #[arg(long, value_name = "SNAPSHOT")]
    pub(crate) restore: Option<String>,
    /// Print the remote commands and change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct Db {
    #[command(subcommand)]
    pub(crate) command: DbCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DbCommand {
    /// Dump the database now (pg_dump -Fc inside its container) into the server's snapshots/.
    Snapshot(DbSnapshot),
    /// List the snapshots on the server.
    Snapshots(DbSnapshots),
    /// Replace the database with a snapshot (a rescue dump of it is taken first) and start
    /// the release the snapshot belongs to.
    Restore(DbRestore),
}

#[derive(Debug, Args)]
pub(crate) struct DbSnapshot {
    #[command(flatten)]
    pub(crate) server: Server,
    /// Snapshots to keep, this one included.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) keep: usize,
}

#[derive(Debug, Args)]
pub(crate) struct DbSnapshots {
    #[command(flatten)]
    pub(crate) server: Server,
}

#[derive(Debug, Args)]
pub(crate) struct DbRestore {
    #[command(flatten)]
    pub(crate) server: Server,
    #[command(flatten)]
    pub(crate) health: HealthGate,
    /// The snapshot's file name, from `cargo xtask db snapshots`.
    pub(crate) snapshot: String,
    /// Print the remote commands and change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct Releases {
    #[command(flatten)]
    pub(crate) server: Server,
}

#[derive(Debug, Args)]
pub(crate) struct Status {
    #[command(flatten)]
    pub(crate) server: Server,
    /// URL that should answer 200 (default: `https://$DOMAIN/api/health` when `DOMAIN` is set).
    #[arg(long, value_name = "URL")]
    pub(crate) health_url: Option<String>,
    /// Accept any TLS certificate from the health URL (for test labs only).
    #[arg(long, hide = true)]
    pub(crate) health_insecure_tls: bool,
    /// Resolve the health URL's HOST to ADDR, like `curl --resolve` (for test labs only).
    #[arg(long, value_name = "HOST:ADDR", hide = true)]
    pub(crate) health_resolve: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct Logs {
    #[command(flatten)]
    pub(crate) server: Server,
    /// Compose service, e.g. `backend`.
    pub(crate) service: String,
    /// Lines from the end of the log.
    #[arg(long, default_value_t = 100)]
    pub(crate) tail: u32,
    /// Keep printing new lines until interrupted.
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CreateAdmin {
    #[command(flatten)]
    pub(crate) server: Server,
    /// The admin's email address (their sign-in name).
    #[arg(long)]
    pub(crate) email: String,
    /// Username of a new account (default: the email's local part).
    #[arg(long)]
    pub(crate) username: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ServerSetup {
    #[command(flatten)]
    pub(crate) server: Server,
    /// Print the provisioning script and change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SwarmSetup {
    /// The manager (`--host`) and how to reach every node over ssh.
    #[command(flatten)]
    pub(crate) server: Server,
    /// A worker to join, repeatable; reached with the same user, port and keys.
    #[arg(long = "worker", value_name = "HOST")]
    pub(crate) workers: Vec<String>,
    /// The manager's address the other nodes reach (default: Docker's choice, which
    /// fails on a host with several addresses).
    #[arg(long, value_name = "ADDR")]
    pub(crate) advertise_addr: Option<String>,
    /// Hostname of the node that holds PostgreSQL's volume (default: the manager).
    #[arg(long, value_name = "HOSTNAME")]
    pub(crate) db_node: Option<String>,
    /// Print the scripts for the manager and the workers and change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct E2e {
    /// Leave the temporary server directory (releases, `.env`, logs) for inspection.
    #[arg(long)]
    pub(crate) keep_server_dir: bool,
    /// `swarm`: the three-node swarm lab instead (`e2e/swarm.rs`).
    #[arg(long, value_enum)]
    pub(crate) mode: Option<Mode>,
}
