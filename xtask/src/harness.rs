//! Real services for checks, started on loopback by the xtask itself and stopped on drop:
//! `dockerd` and PostgreSQL (`docker.rs`, `postgres.rs`), Debian's `docker-registry` with no
//! auth, htpasswd or our token server (`registry.rs`, `token_server.rs`), a fault-injecting
//! proxy (`fault_proxy.rs`), sshd (`sshd.rs`), all run as daemons through `daemon.rs`;
//! small HTTP helpers (`http.rs`); the deploy lab that e2e and bench share (`lab.rs`), its
//! stand-ins for third-party images under their production names (`lab_images.rs`), a
//! bounded load generator through the lab's Traefik (`load.rs`), and the swarm lab of
//! namespaced engines and sshds (`swarm_lab.rs`).

pub(crate) mod daemon;
pub(crate) mod docker;
pub(crate) mod fault_proxy;
pub(crate) mod http;
pub(crate) mod lab;
pub(crate) mod lab_images;
pub(crate) mod load;
pub(crate) mod postgres;
pub(crate) mod registry;
pub(crate) mod sshd;
pub(crate) mod swarm_lab;
pub(crate) mod token_server;
