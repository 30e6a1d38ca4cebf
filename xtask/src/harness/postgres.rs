//! A throwaway PostgreSQL cluster on a loopback port, from Debian's `postgresql` binaries.

use std::{
    net::TcpListener,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::{harness::daemon::Daemon, provision};

/// A running cluster; dropping it stops the server and deletes its files.
pub(crate) struct Postgres {
    pub(crate) port: u16,
    dir: PathBuf,
    daemon: Option<Daemon>,
}

impl Postgres {
    /// `postgres://postgres@127.0.0.1:PORT/postgres` (trust auth: loopback, test only).
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub(crate) fn start(sh: &Shell) -> anyhow::Result<Postgres> {
        provision::ensure(sh, &[provision::POSTGRES])?;
        let initdb = provision::find_program("initdb").context("initdb not found")?;
        let postgres = initdb.with_file_name("postgres");
        let port = free_port()?;
        // Short path: the unix socket name must fit in 107 bytes.
        let dir =
            std::env::temp_dir().join(format!("timemanager-pg-{}-{port}", std::process::id()));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir)?;
        let as_root = provision::is_root();
        // PostgreSQL refuses to run as root: hand the directory to the `postgres` user.
        if as_root {
            cmd!(sh, "chown postgres:postgres {dir}").quiet().run()?;
        }
        let initdb_cmd = if as_root {
            cmd!(
                sh,
                "runuser -u postgres -- {initdb} -D {data} -U postgres --auth=trust -E UTF8 --no-sync"
            )
        } else {
            cmd!(
                sh,
                "{initdb} -D {data} -U postgres --auth=trust -E UTF8 --no-sync"
            )
        };
        initdb_cmd.quiet().ignore_stdout().run().context("initdb")?;
        let chuid: Vec<String> = if as_root {
            vec!["--chuid".to_owned(), "postgres".to_owned()]
        } else {
            Vec::new()
        };
        let args: Vec<String> = [
            "-D",
            &data.display().to_string(),
            "-p",
            &port.to_string(),
            "-k",
            &dir.display().to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let daemon = Daemon::start_as(sh, &dir, "postgres", &postgres, &args, &chuid)?;
        let pg = Postgres {
            port,
            dir,
            daemon: Some(daemon),
        };
        pg.wait_ready(sh)?;
        Ok(pg)
    }

    fn wait_ready(&self, sh: &Shell) -> anyhow::Result<()> {
        let pg_isready = provision::find_program("pg_isready").context("pg_isready not found")?;
        let port = self.port.to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = cmd!(sh, "{pg_isready} -q -h 127.0.0.1 -p {port}")
                .quiet()
                .run()
                .is_ok();
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self
                    .daemon
                    .as_ref()
                    .map(Daemon::log_tail)
                    .unwrap_or_default();
                bail!("PostgreSQL did not accept connections within 30 s; its log ends:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Stop the server before removing its files.
        drop(self.daemon.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}
