//! Real PostgreSQL for tests: an external server from `DATABASE_URL`, or throwaway clusters.
//!
//! Without `DATABASE_URL`, a cluster is created with `initdb` + `pg_ctl` in a temporary
//! directory (loopback TCP on a free port, unix socket inside that directory,
//! `fsync=off`). Each test holds an `Arc` to the shared cluster and the cluster stops
//! when the last holder drops it: statics are never dropped at process exit, so this
//! reference count is what guarantees no postgres process outlives the test binary.
//! Tests needing a cluster they can stop and restart get a private [`Cluster`].
//!
//! Environment: `DATABASE_URL` (use that server; needs CREATEDB), `TM_TEST_PG_BIN`
//! (directory holding `initdb`/`pg_ctl`, else the newest /usr/lib/postgresql/*/bin,
//! else `PATH`).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgPool};
use xshell::{Shell, cmd};

/// Unique suffix for databases and directories within this process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The cluster shared by tests of this binary while at least one of them runs.
static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());

/// Prefix of cluster directories in the system temp dir (used to reap leftovers).
const DIR_PREFIX: &str = "tm-backend-pg-";

fn unique() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free loopback TCP port (the OS picks it; tiny race until the user binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A throwaway PostgreSQL cluster, stopped and deleted on drop.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// PostgreSQL refuses to run as root, so as root every command goes through
    /// `runuser -u postgres`.
    as_postgres: bool,
    /// The running postmaster (or `runuser` wrapping it), reaped on stop.
    postmaster: Mutex<Option<std::process::Child>>,
}

impl Cluster {
    /// initdb + start on a free port. Panics with the server log on failure.
    pub fn start() -> Self {
        reap_leftovers();
        let sh = Shell::new().unwrap();
        let bin = pg_bin_dir();
        let as_postgres = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", unique()));
        std::fs::create_dir(&dir).unwrap();
        // Records the owning process so a later run can reap this cluster if we die.
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string()).unwrap();
        if as_postgres {
            cmd!(sh, "chown postgres: {dir}").quiet().run().unwrap();
        }
        let mut cluster = Self {
            dir,
            bin,
            port: 0,
            as_postgres,
            postmaster: Mutex::new(None),
        };

        let initdb = cluster.bin.join("initdb");
        let data = cluster.data_dir();
        cluster
            .pg(
                &sh,
                &initdb,
                &[
                    "-D",
                    path_str(&data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
            )
            .unwrap_or_else(|err| panic!("initdb failed: {err}"));

        // A port picked now may be grabbed by someone else before postgres binds it.
        let mut last_error = String::new();
        for _ in 0..3 {
            cluster.port = free_port();
            match cluster.spawn_postmaster(&sh) {
                Ok(()) => return cluster,
                Err(err) => last_error = err,
            }
        }
        panic!(
            "could not start PostgreSQL: {last_error}\n{}",
            cluster.log()
        );
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// Fast shutdown, as an operator would do (`pg_ctl stop -m fast`).
    pub fn stop(&self) {
        let sh = Shell::new().unwrap();
        self.pg_ctl_stop(&sh, "fast")
            .unwrap_or_else(|err| panic!("pg_ctl stop failed: {err}\n{}", self.log()));
    }

    /// Starts the stopped cluster again on the same port.
    pub fn restart(&self) {
        let sh = Shell::new().unwrap();
        self.spawn_postmaster(&sh)
            .unwrap_or_else(|err| panic!("restarting postgres failed: {err}\n{}", self.log()));
    }

    /// Runs the postmaster as our own child process (through `runuser` as root) and
    /// waits until it accepts connections. Unlike `pg_ctl start`, which daemonizes it
    /// and leaves PID 1 to reap it, this lets us reap it ourselves, so no `<defunct>`
    /// entry lingers after a stop.
    fn spawn_postmaster(&self, sh: &Shell) -> Result<(), String> {
        let postgres = self.bin.join("postgres");
        let port = self.port.to_string();
        let data = self.data_dir();
        let args = [
            "-D",
            path_str(&data),
            "-p",
            &port,
            "-k",
            path_str(&self.dir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ];
        let cmd = if self.as_postgres {
            cmd!(sh, "runuser -u postgres -- {postgres} {args...}")
        } else {
            cmd!(sh, "{postgres} {args...}")
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .map_err(|e| e.to_string())?;
        let mut child = std::process::Command::from(cmd)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", postgres.display()))?;

        // Same readiness test as `pg_ctl start -w`: postmaster.pid's status line.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("postgres exited with {status}"));
            }
            let pid_file = std::fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
            if pid_file.lines().nth(7).is_some_and(|l| l.trim() == "ready") {
                *self
                    .postmaster
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("postgres did not become ready within 30 s".to_owned())
    }

    /// `pg_ctl stop` in `mode`, then reaps the postmaster process.
    fn pg_ctl_stop(&self, sh: &Shell, mode: &str) -> Result<(), String> {
        let pg_ctl = self.bin.join("pg_ctl");
        let result = self.pg(
            sh,
            &pg_ctl,
            &[
                "stop",
                "-D",
                path_str(&self.data_dir()),
                "-m",
                mode,
                "-w",
                "-t",
                "30",
            ],
        );
        if let Some(mut child) = self
            .postmaster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        result
    }

    /// Runs a PostgreSQL program as the right OS user, returning its output on failure.
    fn pg(&self, sh: &Shell, program: &Path, args: &[&str]) -> Result<(), String> {
        let cmd = if self.as_postgres {
            cmd!(sh, "runuser -u postgres -- {program} {args...}")
        } else {
            cmd!(sh, "{program} {args...}")
        };
        let output = cmd
            .quiet()
            .ignore_status()
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} exited with {}: {}{}",
                program.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// Options for the `postgres` superuser on database `database`.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username("postgres")
            .database(database)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Immediate: the data is thrown away, no need for a checkpoint.
        if let Ok(sh) = Shell::new() {
            let _ = self.pg_ctl_stop(&sh, "immediate");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("non-UTF-8 temp path")
}

/// Finds `initdb`/`pg_ctl`: `TM_TEST_PG_BIN`, the newest Debian layout, then `PATH`.
fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TM_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .expect("PostgreSQL server binaries not found: install postgresql, set TM_TEST_PG_BIN, or set DATABASE_URL")
}

/// Stops clusters left by test processes that were killed before their guards ran.
fn reap_leftovers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with(DIR_PREFIX) {
                continue;
            }
            let dir = entry.path();
            let owner = std::fs::read_to_string(dir.join("owner.pid")).unwrap_or_default();
            let alive = owner
                .trim()
                .parse::<u32>()
                .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if alive {
                continue;
            }
            // Reuse Drop: a Cluster value for the dead directory stops it and deletes it.
            drop(Cluster {
                dir,
                bin: pg_bin_dir(),
                port: 0,
                as_postgres: std::fs::metadata("/proc/self")
                    .map(|m| m.uid() == 0)
                    .unwrap_or(false),
                postmaster: Mutex::new(None),
            });
        }
    });
}

/// The cluster shared by concurrently running tests, started on demand.
fn shared_cluster() -> Arc<Cluster> {
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(Cluster::start());
    *shared = Arc::downgrade(&cluster);
    cluster
}

enum Server {
    External(Box<PgConnectOptions>),
    Cluster(Arc<Cluster>),
}

impl Server {
    fn admin_options(&self) -> PgConnectOptions {
        match self {
            Self::External(options) => (**options).clone(),
            Self::Cluster(cluster) => cluster.connect_options("postgres"),
        }
    }
}

/// A freshly created, empty database of its own for one test.
pub struct TestDb {
    pub name: String,
    /// Connection URL (no password for throwaway clusters).
    pub url: String,
    pub pool: PgPool,
    server: Server,
}

impl TestDb {
    /// An empty database (no migrations applied).
    pub async fn empty() -> Self {
        let server = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => Server::External(Box::new(
                PgConnectOptions::from_str(&url)
                    .expect("DATABASE_URL is not a valid PostgreSQL URL"),
            )),
            // initdb/pg_ctl block for a moment; fine for a test runtime.
            _ => Server::Cluster(shared_cluster()),
        };
        Self::create_on(server).await
    }

    /// An empty database on a given (private) cluster.
    pub async fn on_cluster(cluster: Arc<Cluster>) -> Self {
        Self::create_on(Server::Cluster(cluster)).await
    }

    async fn create_on(server: Server) -> Self {
        let name = format!("tm_test_{}", unique());
        let admin = server.admin_options();
        let mut conn = admin
            .connect()
            .await
            .expect("cannot connect to the test PostgreSQL server");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE failed (does the DATABASE_URL role have CREATEDB?)");
        let _ = conn.close().await;

        let options = admin.clone().database(&name);
        let url = match &server {
            Server::Cluster(cluster) => cluster.url(&name),
            Server::External(_) => {
                with_database(&std::env::var("DATABASE_URL").unwrap_or_default(), &name)
            }
        };
        let pool = timemanager_backend::pool(options);
        Self {
            name,
            url,
            pool,
            server,
        }
    }

    /// A database with the backend's migrations applied.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        timemanager_backend::MIGRATOR
            .run(&db.pool)
            .await
            .expect("migrations failed");
        db
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Throwaway clusters vanish whole; on a real server, clean up our database.
        let Server::External(admin) = &self.server else {
            return;
        };
        let admin = (**admin).clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut conn) = admin.connect().await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

/// Replaces the database name (path) of a PostgreSQL URL, keeping its query.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// Waits (bounded) until `check` returns true.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    for _ in 0..10_000 {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting for {what}");
}
