//! Checks of the built images with tools that are not ours: skopeo, umoci, a real Docker engine.

use std::{path::Path, time::Duration};

use anyhow::{Context, bail, ensure};
use xshell::{Shell, cmd};

use crate::{
    harness::{
        docker, http,
        postgres::{self, Postgres},
    },
    image::{BuildReport, BuiltImage},
    provision::{self, Need},
};

pub(crate) const SKOPEO: Need = Need {
    program: "skopeo",
    package: "skopeo",
};
pub(crate) const UMOCI: Need = Need {
    program: "umoci",
    package: "umoci",
};

/// `skopeo inspect` and `umoci unpack` read each layout and agree with our digests and files.
pub(crate) fn check_layouts(
    sh: &Shell,
    report: &BuildReport,
    scratch: &Path,
) -> anyhow::Result<()> {
    provision::ensure(sh, &[SKOPEO, UMOCI])?;
    for image in &report.images {
        let layout = &image.layout;
        let tag = &report.revision.version;
        let inspected = cmd!(sh, "skopeo inspect --raw oci:{layout}:{tag}")
            .quiet()
            .read()?;
        let digest = crate::digest::Digest::of(inspected.as_bytes());
        ensure!(
            digest == image.blobs.manifest.digest,
            "skopeo reads manifest {digest} from `{}`, build wrote {}",
            layout.display(),
            image.blobs.manifest.digest
        );
        let config = cmd!(sh, "skopeo inspect --config oci:{layout}:{tag}")
            .quiet()
            .read()?;
        let config: serde_json::Value = serde_json::from_str(&config)?;
        ensure!(
            config["config"]["User"] == "65532:65532",
            "{}: unexpected user {}",
            image.name,
            config["config"]["User"]
        );

        let bundle = scratch.join(format!("umoci-{}", image.name));
        let _ = std::fs::remove_dir_all(&bundle);
        cmd!(sh, "umoci unpack --image {layout}:{tag} {bundle}")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("umoci unpack of `{}`", layout.display()))?;
        let rootfs = bundle.join("rootfs");
        let entrypoint = config["config"]["Entrypoint"][0]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/');
        check_mode(&rootfs.join(entrypoint), 0o555)?;
        check_mode(&rootfs.join("tmp"), 0o1777)?;
        std::fs::remove_dir_all(&bundle)?;
    }
    Ok(())
}

fn check_mode(path: &Path, expected: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("`{}` missing from unpacked image", path.display()))?
        .permissions()
        .mode()
        & 0o7777;
    ensure!(
        mode == expected,
        "`{}` has mode {mode:o}, expected {expected:o}",
        path.display()
    );
    Ok(())
}

/// `docker load`s each archive into a real engine and runs the containers.
pub(crate) fn check_containers(
    sh: &Shell,
    report: &BuildReport,
    state_dir: &Path,
) -> anyhow::Result<()> {
    let _engine = docker::engine(sh, state_dir)?;
    let tag = &report.revision.version;
    for image in &report.images {
        load(sh, image, tag)?;
    }
    for image in &report.images {
        let reference = format!("timemanager/{}:{tag}", image.name);
        match image.name {
            "backend" => run_backend(sh, &reference, &report.revision.commit)?,
            "frontend" => run_frontend(sh, &reference, report.revision.epoch)?,
            other => bail!("no container check for image `{other}`"),
        }
    }
    Ok(())
}

pub(crate) fn load(sh: &Shell, image: &BuiltImage, tag: &str) -> anyhow::Result<()> {
    let archive = &image.archive;
    cmd!(sh, "docker load --quiet --input {archive}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let reference = format!("timemanager/{}:{tag}", image.name);
    let format = "{{.Id}}";
    let id = cmd!(sh, "docker image inspect --format {format} {reference}")
        .quiet()
        .read()?;
    ensure!(
        id == image.blobs.config.digest,
        "docker loaded {reference} as {id}, build wrote config {}",
        image.blobs.config.digest
    );
    Ok(())
}

/// Removes the container on drop, so a failed check leaves nothing running.
struct Container {
    id: String,
}

impl Container {
    fn run(sh: &Shell, reference: &str, env: &[(&str, String)]) -> anyhow::Result<Container> {
        let env_args: Vec<String> = env
            .iter()
            .flat_map(|(k, v)| ["--env".to_owned(), format!("{k}={v}")])
            .collect();
        // Host networking keeps all traffic on loopback; `--pull never` keeps Docker Hub out of it.
        let id = cmd!(
            sh,
            "docker run --detach --pull never --network host {env_args...} {reference}"
        )
        .quiet()
        .read()?;
        Ok(Container { id })
    }

    fn logs(&self, sh: &Shell) -> String {
        let id = &self.id;
        cmd!(sh, "docker logs --tail 30 {id}")
            .quiet()
            .ignore_status()
            .read_stderr()
            .unwrap_or_default()
            + &cmd!(sh, "docker logs --tail 30 {id}")
                .quiet()
                .ignore_status()
                .read()
                .unwrap_or_default()
    }

    fn wait(&self, sh: &Shell, url: &str) -> anyhow::Result<http::Reply> {
        http::wait_for_status(url, 200, Duration::from_secs(30))
            .with_context(|| format!("container logs:\n{}", self.logs(sh)))
    }

    /// The uid the container's main process runs as, read from the host's /proc.
    fn uid(&self, sh: &Shell) -> anyhow::Result<u32> {
        let id = &self.id;
        let format = "{{.State.Pid}}";
        let pid = cmd!(sh, "docker inspect --format {format} {id}")
            .quiet()
            .read()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .context("no Uid line")?;
        Ok(line.split_whitespace().nth(1).context("no uid")?.parse()?)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Ok(sh) = Shell::new() {
            let id = &self.id;
            let _ = cmd!(sh, "docker rm --force {id}")
                .quiet()
                .ignore_stdout()
                .ignore_stderr()
                .run();
        }
    }
}

pub(crate) fn run_backend(sh: &Shell, reference: &str, commit: &str) -> anyhow::Result<()> {
    let pg = Postgres::start(sh)?;
    let port = postgres::free_port()?;
    let container = Container::run(
        sh,
        reference,
        &[
            ("DATABASE_URL", pg.url()),
            ("APP_HOST", "127.0.0.1".to_owned()),
            ("APP_PORT", port.to_string()),
        ],
    )?;
    let health = container.wait(sh, &format!("http://127.0.0.1:{port}/health"))?;
    let body: serde_json::Value =
        serde_json::from_slice(&health.body).context("health body is not JSON")?;
    ensure!(
        body["database"] == "ok" && body["revision"] == commit,
        "unexpected /health body: {body}"
    );
    let id = &container.id;
    cmd!(sh, "docker exec {id} /app/timemanager-backend healthcheck")
        .quiet()
        .run()
        .context("healthcheck subcommand inside the container")?;
    let uid = container.uid(sh)?;
    ensure!(uid == 65532, "backend runs as uid {uid}, expected 65532");
    Ok(())
}

pub(crate) fn run_frontend(sh: &Shell, reference: &str, epoch: u64) -> anyhow::Result<()> {
    let port = postgres::free_port()?;
    let container = Container::run(
        sh,
        reference,
        &[
            ("APP_HOST", "127.0.0.1".to_owned()),
            ("APP_PORT", port.to_string()),
        ],
    )?;
    let base = format!("http://127.0.0.1:{port}");
    container.wait(sh, &format!("{base}/health"))?;
    let index = http::get(&format!("{base}/"), &[])?;
    let html = index.text();
    ensure!(
        index.status == 200 && html.contains("<div id=\"root\">"),
        "index.html not served: {} {html}",
        index.status
    );
    ensure!(
        index.header("cache-control") == Some("no-cache"),
        "index.html cache-control: {:?}",
        index.header("cache-control")
    );
    let asset = html
        .split('"')
        .find(|s| s.starts_with("/assets/") && s.ends_with(".js"))
        .context("index.html references no /assets/*.js")?;
    let js = http::get(&format!("{base}{asset}"), &[("accept-encoding", "gzip")])?;
    ensure!(js.status == 200, "{asset}: status {}", js.status);
    ensure!(
        js.header("cache-control") == Some("public, max-age=31536000, immutable"),
        "{asset}: cache-control {:?}",
        js.header("cache-control")
    );
    ensure!(
        js.header("content-encoding") == Some("gzip"),
        "{asset}: precompressed gzip not served"
    );
    // Regression guard: assets stamped 1970 break Last-Modified caching.
    let created = crate::project::rfc3339(epoch);
    let (date, time) = created
        .trim_end_matches('Z')
        .split_once('T')
        .unwrap_or_default();
    let last_modified = js.header("last-modified").unwrap_or_default();
    ensure!(
        last_modified.contains(&date[..4]) && last_modified.contains(time),
        "{asset}: Last-Modified `{last_modified}` is not the commit time {created}"
    );
    let fallback = http::get(&format!("{base}/history/some-client-route"), &[])?;
    ensure!(
        fallback.status == 200 && fallback.text() == html,
        "SPA fallback did not serve index.html"
    );
    let id = &container.id;
    cmd!(
        sh,
        "docker exec {id} /app/timemanager-frontend-server healthcheck"
    )
    .quiet()
    .run()
    .context("healthcheck subcommand inside the container")?;
    let uid = container.uid(sh)?;
    ensure!(uid == 65532, "frontend runs as uid {uid}, expected 65532");
    Ok(())
}
