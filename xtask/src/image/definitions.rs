//! The images this project ships, declared in one place: what goes in each layer, and how.

/// One image: its layers, bottom first, and its runtime configuration.
#[derive(Debug)]
pub(crate) struct ImageDef {
    pub(crate) name: &'static str,
    pub(crate) description: &'static str,
    pub(crate) base: Base,
    pub(crate) layers: &'static [LayerDef],
    pub(crate) entrypoint: &'static [&'static str],
    pub(crate) env: &'static [&'static str],
    pub(crate) port: u16,
    pub(crate) user: &'static str,
    pub(crate) working_dir: &'static str,
}

/// What the first layer sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Base {
    /// Nothing: the image's own runtime layer provides all it needs (no network to build).
    Scratch,
    /// A registry image (`gcr.io/distroless/cc-debian12:nonroot`), pinned by digest in
    /// `images.lock.json` and pulled once into the local blob store.
    Registry(&'static str),
}

/// How a Rust binary is linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Link {
    /// `+crt-static`: runs on scratch, needs nothing from the base.
    Static,
    /// Against the base's glibc: checked against the base's libraries before it ships.
    Dynamic,
}

#[derive(Debug)]
pub(crate) struct LayerDef {
    /// Shown in the image history and in build output.
    pub(crate) name: &'static str,
    pub(crate) contents: Contents,
}

/// How a layer's files are produced, and where they land in the image.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Contents {
    /// CA bundle, `/etc/passwd` and `/etc/group` with `nonroot` (65532), `/tmp` (1777), `/app`.
    Runtime,
    /// The release binary of a workspace package, linked statically, mode 0555.
    CargoBinary {
        package: &'static str,
        dest: &'static str,
        link: Link,
    },
    /// `npm run build` output of `frontend/`, with gzip twins of compressible files.
    ViteDist { dest: &'static str },
}

pub(crate) const NONROOT: u64 = 65532;

pub(crate) const IMAGES: &[ImageDef] = &[
    ImageDef {
        name: "backend",
        description: "Time Manager API server",
        base: Base::Scratch,
        layers: &[
            LayerDef {
                name: "runtime",
                contents: Contents::Runtime,
            },
            LayerDef {
                name: "backend binary",
                contents: Contents::CargoBinary {
                    package: "timemanager-backend",
                    dest: "app/timemanager-backend",
                    link: Link::Static,
                },
            },
        ],
        entrypoint: &["/app/timemanager-backend"],
        env: &[
            "PATH=/app",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            "APP_PORT=8080",
        ],
        port: 8080,
        user: "65532:65532",
        working_dir: "/app",
    },
    ImageDef {
        name: "frontend",
        description: "Time Manager web app and its static file server",
        base: Base::Scratch,
        layers: &[
            LayerDef {
                name: "runtime",
                contents: Contents::Runtime,
            },
            LayerDef {
                name: "static server binary",
                contents: Contents::CargoBinary {
                    package: "timemanager-frontend-server",
                    dest: "app/timemanager-frontend-server",
                    link: Link::Static,
                },
            },
            // Last: assets change more often than the server.
            LayerDef {
                name: "web assets",
                contents: Contents::ViteDist { dest: "app/public" },
            },
        ],
        entrypoint: &["/app/timemanager-frontend-server"],
        env: &[
            "PATH=/app",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            "APP_PORT=3000",
            "STATIC_DIR=/app/public",
        ],
        port: 3000,
        user: "65532:65532",
        working_dir: "/app",
    },
];

pub(crate) fn find(name: &str) -> anyhow::Result<&'static ImageDef> {
    IMAGES.iter().find(|def| def.name == name).ok_or_else(|| {
        let known: Vec<&str> = IMAGES.iter().map(|def| def.name).collect();
        anyhow::format_err!("unknown image `{name}`; known images: {}", known.join(", "))
    })
}
