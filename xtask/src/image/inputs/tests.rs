//! The fast path's key against a real git checkout, and its record against a real layout.

use std::fs;

use serde_json::json;
use xshell::{Shell, cmd};

use super::*;
use crate::image::{
    definitions,
    layer::{self, Entry, Source},
    oci,
};

/// A scratch git repository, removed on drop.
struct Repo {
    root: PathBuf,
    sh: Shell,
}

impl Repo {
    fn new(name: &str) -> Repo {
        let root = std::env::temp_dir().join(format!("xtask-inputs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("backend/src")).unwrap();
        fs::create_dir_all(root.join("frontend")).unwrap();
        let sh = Shell::new().unwrap();
        sh.change_dir(&root);
        fs::write(root.join(".gitignore"), "node_modules/\n.env\n/target\n").unwrap();
        fs::write(root.join("backend/src/lib.rs"), "pub fn a() {}\n").unwrap();
        fs::write(root.join("Cargo.lock"), "# lock v1\n").unwrap();
        cmd!(sh, "git init --quiet").run().unwrap();
        Repo::commit(&sh, "first");
        Repo { root, sh }
    }

    fn commit(sh: &Shell, message: &str) {
        cmd!(sh, "git add --all").run().unwrap();
        cmd!(
            sh,
            "git -c user.name=t -c user.email=t@t -c commit.gpgsign=false commit --quiet -m {message}"
        )
        .run()
        .unwrap();
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// The key as `build` would compute it here, with this environment and toolchain.
    fn key(&self, env: &[(&str, &str)], toolchain: &str) -> String {
        let revision = project::revision(&self.sh).unwrap();
        let env = build_env(env.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())));
        key(&self.sh, &self.root, &revision, &env, toolchain).unwrap()
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

const ENV: &[(&str, &str)] = &[("VITE_API_BASE_URL", "/api"), ("PATH", "/usr/bin")];
const RUSTC: &str = "rustc 1.95.0 (59807616e 2026-04-14)";

#[test]
fn a_changed_tracked_file_changes_the_key_and_reverting_it_restores_it() {
    let repo = Repo::new("tracked");
    let clean = repo.key(ENV, RUSTC);
    assert_eq!(repo.key(ENV, RUSTC), clean, "the key is deterministic");
    repo.write("backend/src/lib.rs", "pub fn a() { let _ = 1; }\n");
    let edited = repo.key(ENV, RUSTC);
    assert_ne!(edited, clean);
    repo.write("backend/src/lib.rs", "pub fn a() { let _ = 2; }\n");
    assert_ne!(repo.key(ENV, RUSTC), edited, "a second edit is another key");
    // Staged or not, the content on disk is what counts.
    cmd!(repo.sh, "git add backend/src/lib.rs").run().unwrap();
    assert_ne!(repo.key(ENV, RUSTC), edited);
    cmd!(repo.sh, "git reset --quiet --hard").run().unwrap();
    assert_eq!(repo.key(ENV, RUSTC), clean, "back to the commit's content");
    fs::remove_file(repo.root.join("Cargo.lock")).unwrap();
    assert_ne!(repo.key(ENV, RUSTC), clean, "a deleted file counts");
    cmd!(repo.sh, "git checkout --quiet -- Cargo.lock")
        .run()
        .unwrap();
    repo.write("Cargo.lock", "# lock v2\n");
    assert_ne!(repo.key(ENV, RUSTC), clean, "Cargo.lock counts");
    cmd!(repo.sh, "git checkout --quiet -- Cargo.lock")
        .run()
        .unwrap();
    assert_eq!(repo.key(ENV, RUSTC), clean);
}

#[test]
fn a_new_commit_changes_the_key() {
    let repo = Repo::new("commit");
    let before = repo.key(ENV, RUSTC);
    repo.write("README.md", "docs\n");
    Repo::commit(&repo.sh, "docs");
    // Labels carry the commit: even a documentation commit makes other images.
    assert_ne!(repo.key(ENV, RUSTC), before);
}

#[test]
fn new_untracked_files_count_and_ignored_ones_only_when_the_build_reads_them() {
    let repo = Repo::new("untracked");
    let clean = repo.key(ENV, RUSTC);
    repo.write("backend/src/new_module.rs", "pub fn b() {}\n");
    let with_new = repo.key(ENV, RUSTC);
    assert_ne!(with_new, clean, "an untracked file the build would use");
    repo.write("backend/src/new_module.rs", "pub fn b() { }\n");
    assert_ne!(repo.key(ENV, RUSTC), with_new, "its content counts");
    fs::remove_file(repo.root.join("backend/src/new_module.rs")).unwrap();
    assert_eq!(repo.key(ENV, RUSTC), clean);

    repo.write("frontend/node_modules/left-pad/index.js", "x\n");
    repo.write("target/release/whatever", "x\n");
    assert_eq!(
        repo.key(ENV, RUSTC),
        clean,
        "ignored outputs and installed packages are not inputs"
    );
    repo.write("frontend/.env", "VITE_API_BASE_URL=https://elsewhere/api\n");
    assert_ne!(
        repo.key(ENV, RUSTC),
        clean,
        "Vite reads `frontend/.env` although git ignores it"
    );
}

#[test]
fn the_environment_that_reaches_the_build_counts_and_nothing_else() {
    let repo = Repo::new("env");
    let clean = repo.key(ENV, RUSTC);
    for changed in [
        ("VITE_API_BASE_URL", "https://time-manager.app/api"),
        ("SOURCE_DATE_EPOCH", "1700000000"),
        ("RUSTFLAGS", "-Ctarget-cpu=native"),
        ("CARGO_PROFILE_RELEASE_LTO", "false"),
        ("GITHUB_REPOSITORY", "someone/fork"),
        ("CC", "clang"),
    ] {
        let mut env = ENV.to_vec();
        env.retain(|(name, _)| *name != changed.0);
        env.push(changed);
        assert_ne!(repo.key(&env, RUSTC), clean, "{changed:?}");
    }
    let mut env = ENV.to_vec();
    env.extend([
        ("TERM", "xterm"),
        ("SHLVL", "3"),
        ("REGISTRY_PASSWORD", "hunter2"),
        ("CARGO_REGISTRY_TOKEN", "t0k3n"),
        ("CARGO_PKG_VERSION", "0.1.0"),
        ("CARGO_MANIFEST_DIR", "/somewhere/xtask"),
    ]);
    assert_eq!(
        repo.key(&env, RUSTC),
        clean,
        "unrelated variables, secrets and what `cargo run` sets for the xtask do not count"
    );
}

#[test]
fn another_toolchain_changes_the_key() {
    let repo = Repo::new("toolchain");
    let clean = repo.key(ENV, RUSTC);
    assert_ne!(repo.key(ENV, "rustc 1.96.0 (0123456789 2026-05-28)"), clean);
}

/// `rustc -vV` is cached against the binary's identity: a replaced rustc is asked again.
#[test]
fn the_cached_rustc_version_is_refreshed_when_rustc_changes() {
    use std::os::unix::fs::PermissionsExt;
    let repo = Repo::new("rustc");
    let rustc = repo.root.join("fake-rustc");
    let write_rustc = |version: &str| {
        fs::write(&rustc, format!("#!/bin/sh\necho 'rustc {version}'\n")).unwrap();
        fs::set_permissions(&rustc, fs::Permissions::from_mode(0o755)).unwrap();
    };
    write_rustc("1.95.0");
    let sh = Shell::new().unwrap();
    sh.set_var("RUSTC", &rustc);
    let cache = repo.root.join("cache");
    let first = toolchain(&sh, &cache).unwrap();
    assert!(first.starts_with("rustc 1.95.0"), "{first}");
    assert_eq!(toolchain(&sh, &cache).unwrap(), first, "cached");
    write_rustc("1.96.0-beta");
    let second = toolchain(&sh, &cache).unwrap();
    assert!(second.starts_with("rustc 1.96.0-beta"), "{second}");
}

/// A small but real image in a store: layers, layout, archive and SBOM as `build` writes them.
fn built_image(store: &Store, content: &[u8]) -> BuiltImage {
    let def = definitions::find("backend").unwrap();
    let entries = layer::normalize(vec![Entry::file(
        "app/x",
        0o555,
        Source::Bytes(content.to_vec()),
    )])
    .unwrap();
    let (layer, _) = store.layer(&entries, 7).unwrap();
    let config = Blob::from_json(&json!({"rootfs": {"diff_ids": [layer.diff_id]}}));
    let manifest = oci::to_blob(
        &oci::manifest(&config, std::slice::from_ref(&layer), &BTreeMap::new()).unwrap(),
    )
    .unwrap();
    store.put(&config).unwrap();
    store.put(&manifest).unwrap();
    let blobs = ImageBlobs {
        manifest,
        config,
        layers: vec![layer],
    };
    let layout = store
        .write_layout(def.name, &blobs, "timemanager/backend:abc1234", "abc1234")
        .unwrap();
    let archive = store
        .write_archive(
            def.name,
            &blobs,
            &["timemanager/backend:abc1234".to_owned()],
            7,
        )
        .unwrap();
    fs::write(
        sbom_path(store, def.name),
        b"{\"spdxVersion\":\"SPDX-2.3\"}",
    )
    .unwrap();
    BuiltImage {
        name: def.name,
        blobs,
        layout,
        archive,
        n_cached_layers: 0,
        times: AssemblyTimes::default(),
    }
}

#[test]
fn a_record_is_used_only_while_its_key_matches_and_its_files_are_intact() {
    let repo = Repo::new("record");
    let store = Store::new(repo.root.join("images")).unwrap();
    let defs = [definitions::find("backend").unwrap()];
    let image = built_image(&store, b"v1");
    assert!(
        lookup(&store, "k1", &defs).is_none(),
        "nothing recorded yet"
    );
    record(&store, "k1", std::slice::from_ref(&image)).unwrap();

    let hit = lookup(&store, "k1", &defs).expect("an intact record is a hit");
    assert_eq!(hit[0].blobs.manifest.digest, image.blobs.manifest.digest);
    assert_eq!(hit[0].blobs.manifest.bytes, image.blobs.manifest.bytes);
    assert_eq!(hit[0].blobs.config.bytes, image.blobs.config.bytes);
    assert_eq!(hit[0].blobs.layers, image.blobs.layers);
    assert_eq!(hit[0].layout, image.layout);
    assert!(lookup(&store, "k2", &defs).is_none(), "another key");
    let both = [defs[0], definitions::find("frontend").unwrap()];
    assert!(
        lookup(&store, "k1", &both).is_none(),
        "an image the record does not hold"
    );

    let index = image.layout.join("index.json");
    let original = fs::read(&index).unwrap();
    fs::write(&index, b"{}").unwrap();
    assert!(lookup(&store, "k1", &defs).is_none(), "a corrupted index");
    fs::write(&index, &original).unwrap();
    assert!(lookup(&store, "k1", &defs).is_some());

    let layer_path = image.layout.join(image.blobs.layers[0].digest.blob_path());
    let layer_bytes = fs::read(&layer_path).unwrap();
    fs::remove_file(&layer_path).unwrap();
    fs::write(&layer_path, &layer_bytes[..layer_bytes.len() - 1]).unwrap();
    assert!(lookup(&store, "k1", &defs).is_none(), "a truncated layer");
    fs::remove_file(&layer_path).unwrap();
    assert!(lookup(&store, "k1", &defs).is_none(), "a missing layer");
    fs::write(&layer_path, &layer_bytes).unwrap();
    assert!(lookup(&store, "k1", &defs).is_some());

    let config_path = image.layout.join(image.blobs.config.digest.blob_path());
    fs::remove_file(&config_path).unwrap();
    fs::write(&config_path, b"{\"tampered\":true}").unwrap();
    assert!(lookup(&store, "k1", &defs).is_none(), "a tampered config");
    fs::remove_file(&config_path).unwrap();
    fs::write(&config_path, &image.blobs.config.bytes).unwrap();

    fs::write(sbom_path(&store, "backend"), b"{}").unwrap();
    assert!(lookup(&store, "k1", &defs).is_none(), "another SBOM");
    fs::write(
        sbom_path(&store, "backend"),
        b"{\"spdxVersion\":\"SPDX-2.3\"}",
    )
    .unwrap();
    fs::write(&image.archive, b"short").unwrap();
    assert!(lookup(&store, "k1", &defs).is_none(), "a rewritten archive");

    // A rebuild records again; then a deleted layout is a miss.
    let image = built_image(&store, b"v1");
    record(&store, "k1", std::slice::from_ref(&image)).unwrap();
    assert!(lookup(&store, "k1", &defs).is_some());
    fs::remove_dir_all(&image.layout).unwrap();
    assert!(lookup(&store, "k1", &defs).is_none(), "a deleted layout");

    fs::write(record_path(&store), b"not json").unwrap();
    assert!(lookup(&store, "k1", &defs).is_none(), "a corrupted record");
}

#[test]
fn a_record_of_one_image_keeps_the_other_of_the_same_key_only() {
    let repo = Repo::new("merge");
    let store = Store::new(repo.root.join("images")).unwrap();
    let backend = built_image(&store, b"b");
    record(&store, "k1", std::slice::from_ref(&backend)).unwrap();
    // A second image's entry, as a build of `frontend` alone would have added it.
    let text = fs::read_to_string(record_path(&store)).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["images"]["frontend"] = doc["images"]["backend"].clone();
    fs::write(record_path(&store), doc.to_string()).unwrap();
    record(&store, "k1", std::slice::from_ref(&backend)).unwrap();
    let text = fs::read_to_string(record_path(&store)).unwrap();
    assert!(text.contains("\"frontend\""), "same key: kept");
    record(&store, "k2", std::slice::from_ref(&backend)).unwrap();
    let text = fs::read_to_string(record_path(&store)).unwrap();
    assert!(!text.contains("\"frontend\""), "another key: dropped");
}
