//! Push without a network where it can be: the JSON report, tags, and layouts read back
//! from a copy of what the image module wrote, pushed to a canned registry.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    sync::Arc,
};

use super::*;

#[test]
fn push_json_has_exactly_the_documented_fields() {
    let pushed = PushedImage {
        name: "backend".to_owned(),
        repository: "ghcr.io/o/r/backend".to_owned(),
        digest: Digest::of(b"manifest"),
        tags: vec!["abc1234".to_owned(), "latest".to_owned()],
        tags_written: vec![],
        blobs_uploaded: 1,
        blobs_mounted: 2,
        blobs_skipped: 3,
        bytes_uploaded: 4,
        retries: 5,
        uploaded: vec![],
        elapsed: Duration::ZERO,
    };
    let digest = Digest::of(b"manifest");
    assert_eq!(
        report_json(&[pushed]).to_string(),
        format!(
            r#"{{"images":[{{"blobs_mounted":2,"blobs_skipped":3,"blobs_uploaded":1,"bytes_uploaded":4,"digest":"{digest}","name":"backend","reference":"ghcr.io/o/r/backend@{digest}","retries":5,"tags":["abc1234","latest"]}}]}}"#
        )
    );
}

#[test]
fn tags_default_to_the_layout_version_and_drop_duplicates_in_order() {
    let dir = TempDir::new("tags");
    let layout = Layout::read(&write_layout(&dir.0, "backend")).unwrap();
    let defaults = PushOptions::default();
    assert_eq!(tags(&defaults, &layout).unwrap(), ["abc1234", "latest"]);
    let given = PushOptions {
        tags: ["b", "a", "b", "c", "a"].map(str::to_owned).to_vec(),
        ..PushOptions::default()
    };
    assert_eq!(tags(&given, &layout).unwrap(), ["b", "a", "c"]);
}

/// Build output copied elsewhere pushes from the copy: push reads only the layout.
#[test]
fn a_copied_layout_pushes_from_the_copy() {
    let dir = TempDir::new("copy");
    let built = write_layout(&dir.0.join("build"), "backend");
    let copy = dir.0.join("elsewhere/backend");
    copy_dir(&built, &copy);
    fs::remove_dir_all(dir.0.join("build")).unwrap();
    let layout = Layout::read(&copy).unwrap();
    let registry = FakeRegistry::start();
    let opts = PushOptions {
        registry: registry.addr.to_string(),
        namespace: Some("Owner/Repo".to_owned()),
        credentials: CredentialSource::Anonymous,
        client: ClientOptions {
            timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        },
        mount_cache: None,
        progress: false,
        build: false,
        ..PushOptions::default()
    };
    let sh = Shell::new().unwrap();
    let pushed = push_layouts(&sh, &opts, std::slice::from_ref(&copy)).unwrap();
    assert_eq!(pushed.len(), 1);
    let image = &pushed[0];
    assert_eq!(image.name, "backend");
    assert_eq!(image.digest, layout.manifest.digest);
    assert_eq!(image.tags_written, ["abc1234", "latest"]);
    assert_eq!(image.blobs_uploaded, layout.layers.len() + 1);
    assert_eq!(
        image.bytes_uploaded,
        layout.config.bytes.len() as u64 + layout.layers.iter().map(|l| l.size).sum::<u64>()
    );
    let stored = registry.blobs();
    for digest in layout.blob_digests() {
        assert!(stored.contains_key(digest.as_str()), "{digest} not pushed");
    }
    assert_eq!(
        registry.manifest("owner/repo/backend", "latest").as_deref(),
        Some(layout.manifest.bytes.as_slice())
    );

    // A second push finds every tag in place and sends nothing.
    let again = push_layouts(&sh, &opts, std::slice::from_ref(&copy)).unwrap();
    assert!(again[0].tags_written.is_empty());
    assert_eq!(again[0].blobs_uploaded, 0);
}

#[test]
fn a_missing_or_changed_blob_names_the_file_and_says_to_build() {
    let dir = TempDir::new("broken");
    let layout_dir = write_layout(&dir.0, "backend");
    let layout = Layout::read(&layout_dir).unwrap();

    let config = layout_dir.join(layout.config.digest.blob_path());
    fs::write(&config, b"{}").unwrap();
    let err = format!("{:#}", Layout::read(&layout_dir).unwrap_err());
    assert!(
        err.contains(&config.display().to_string())
            && err.contains(layout.config.digest.as_str())
            && err.contains("cargo xtask build"),
        "{err}"
    );

    let layer = &layout.layers[0];
    fs::remove_file(&layer.path).unwrap();
    fs::write(&config, &layout.config.bytes).unwrap();
    let err = format!("{:#}", Layout::read(&layout_dir).unwrap_err());
    assert!(
        err.contains(&layer.path.display().to_string())
            && err.contains(layer.digest.as_str())
            && err.contains("cargo xtask build"),
        "{err}"
    );

    // Same size, other bytes: caught when the layer is hashed before upload.
    let mut bytes = fs::read(&layout.layers[1].path).unwrap();
    bytes[0] ^= 1;
    fs::write(&layout.layers[1].path, bytes).unwrap();
    let err = format!("{:#}", layout::verify(&layout.layers[1]).unwrap_err());
    assert!(err.contains("cargo xtask build"), "{err}");

    let err = format!("{:#}", Layout::read(&dir.0.join("frontend")).unwrap_err());
    assert!(
        err.contains("index.json") && err.contains("cargo xtask build"),
        "{err}"
    );
}

/// A two-layer image written by the image module's own store, as `build` writes it.
fn write_layout(root: &Path, name: &str) -> PathBuf {
    use crate::image::{
        layer::{self, Entry, Source},
        oci,
        store::{ImageBlobs, Store},
    };
    let store = Store::new(root.to_path_buf()).unwrap();
    let mut layers = Vec::new();
    for (path, content) in [("etc/motd", "hello"), ("app/run", "#!binary")] {
        let entries = layer::normalize(vec![Entry::file(
            path,
            0o644,
            Source::Bytes(content.into()),
        )])
        .unwrap();
        layers.push(store.layer(&entries, 1_700_000_000).unwrap().0);
    }
    let config = oci::Blob::from_json(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()},
    }));
    let manifest =
        oci::to_blob(&oci::manifest(&config, &layers, &Default::default()).unwrap()).unwrap();
    store.put(&config).unwrap();
    store.put(&manifest).unwrap();
    let blobs = ImageBlobs {
        manifest,
        config,
        layers,
    };
    store
        .write_layout(
            name,
            &blobs,
            &format!("timemanager/{name}:abc1234"),
            "abc1234",
        )
        .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A scratch directory removed on drop, even when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("xtask-push-{what}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// An in-process registry without auth: blobs and manifests in memory, uploads checked
/// against their digest, just enough of the distribution API for a push.
struct FakeRegistry {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<FakeState>>,
}

#[derive(Default)]
struct FakeState {
    blobs: BTreeMap<String, Vec<u8>>,
    manifests: BTreeMap<String, Vec<u8>>,
}

impl FakeRegistry {
    fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        FakeRegistry { addr, state }
    }

    fn blobs(&self) -> BTreeMap<String, Vec<u8>> {
        self.state.lock().unwrap().blobs.clone()
    }

    fn manifest(&self, repository: &str, reference: &str) -> Option<Vec<u8>> {
        let key = format!("{repository}:{reference}");
        self.state.lock().unwrap().manifests.get(&key).cloned()
    }
}

fn serve(stream: TcpStream, state: &Mutex<FakeState>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body).unwrap();
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, headers, reply) = answer(method, target, body, state);
        let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", reply.len());
        for (name, value) in headers {
            head += &format!("{name}: {value}\r\n");
        }
        if stream.write_all(format!("{head}\r\n").as_bytes()).is_err()
            || (method != "HEAD" && stream.write_all(&reply).is_err())
        {
            return;
        }
    }
}

fn answer(
    method: &str,
    target: &str,
    body: Vec<u8>,
    state: &Mutex<FakeState>,
) -> (u16, Vec<(&'static str, String)>, Vec<u8>) {
    let mut state = state.lock().unwrap();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query_digest = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("digest="))
        .map(|d| d.replace("%3A", ":"));
    if path == "/v2/" {
        return (200, vec![], b"{}".to_vec());
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return (404, vec![], vec![]);
    };
    if let Some((repository, _session)) = rest.split_once("/blobs/uploads/") {
        return match (method, query_digest) {
            ("POST", _) => (
                202,
                vec![(
                    "Location",
                    format!("/v2/{repository}/blobs/uploads/session"),
                )],
                vec![],
            ),
            ("PUT", Some(digest)) => {
                if Digest::of(&body) != digest {
                    return (
                        400,
                        vec![],
                        br#"{"errors":[{"code":"DIGEST_INVALID"}]}"#.to_vec(),
                    );
                }
                state.blobs.insert(digest.clone(), body);
                (201, vec![("Docker-Content-Digest", digest)], vec![])
            }
            _ => (405, vec![], vec![]),
        };
    }
    if let Some((_, digest)) = rest.split_once("/blobs/") {
        return match state.blobs.get(digest) {
            Some(blob) => (200, vec![], blob.clone()),
            None => (404, vec![], vec![]),
        };
    }
    if let Some((repository, reference)) = rest.split_once("/manifests/") {
        let key = format!("{repository}:{reference}");
        return match method {
            "PUT" => {
                let digest = Digest::of(&body);
                state
                    .manifests
                    .insert(format!("{repository}:{digest}"), body.clone());
                state.manifests.insert(key, body);
                (
                    201,
                    vec![("Docker-Content-Digest", digest.to_string())],
                    vec![],
                )
            }
            _ => match state.manifests.get(&key) {
                Some(manifest) => (
                    200,
                    vec![("Docker-Content-Digest", Digest::of(manifest).to_string())],
                    manifest.clone(),
                ),
                None => (404, vec![], vec![]),
            },
        };
    }
    (404, vec![], vec![])
}
