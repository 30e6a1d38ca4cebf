//! Temporary static directory shaped like a Vite build: `index.html` and a hashed asset with its `.gz`.

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use timemanager_frontend_server::Config;

pub const INDEX_HTML: &str = "<!doctype html><html><head><title>Time Manager</title></head><body><div id=\"root\"></div></body></html>\n";
pub const ASSET_PATH: &str = "/assets/app-abc123.js";
pub const ASSET_JS: &str = "console.log(\"time manager\");\n";
/// `ASSET_JS` gzipped (mtime 0): a real gzip stream so a client could decode it.
pub const ASSET_JS_GZ: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0x4b, 0xce, 0xcf, 0x2b, 0xce, 0xcf,
    0x49, 0xd5, 0xcb, 0xc9, 0x4f, 0xd7, 0x50, 0x2a, 0xc9, 0xcc, 0x4d, 0x55, 0xc8, 0x4d, 0xcc, 0x4b,
    0x4c, 0x4f, 0x2d, 0x52, 0xd2, 0xb4, 0xe6, 0x02, 0x00, 0x1d, 0x65, 0xa9, 0xba, 0x1d, 0x00, 0x00,
    0x00,
];

/// Content of `secret.txt`, which sits beside (outside) the static directory.
pub const SECRET: &str = "outside the static directory\n";

/// A populated static directory `<tmp>/public`, removed on drop.
pub struct Site {
    dir: TempDir,
    public: PathBuf,
}

impl Site {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("secret.txt"), SECRET).unwrap();
        let public = dir.path().join("public");
        fs::create_dir_all(public.join("assets")).unwrap();
        fs::write(public.join("index.html"), INDEX_HTML).unwrap();
        fs::write(public.join("assets/app-abc123.js"), ASSET_JS).unwrap();
        fs::write(public.join("assets/app-abc123.js.gz"), ASSET_JS_GZ).unwrap();
        Self { dir, public }
    }

    /// The static directory (`STATIC_DIR`).
    pub fn path(&self) -> &Path {
        &self.public
    }

    /// A scratch directory next to the site, for other files a test needs.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    pub fn index_html(&self) -> PathBuf {
        self.path().join("index.html")
    }

    /// Configuration serving this site (address fields unused in-process).
    pub fn config(&self) -> Config {
        Config {
            static_dir: self.path().to_owned(),
            host: "127.0.0.1".parse().unwrap(),
            port: 3000,
            log_filter: "info".to_owned(),
            shutdown_drain: timemanager_shutdown::DEFAULT_SHUTDOWN_DRAIN,
        }
    }
}
