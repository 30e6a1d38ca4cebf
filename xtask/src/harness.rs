//! Real services for tests, started on loopback by the xtask itself: Docker, PostgreSQL.

pub(crate) mod daemon;
pub(crate) mod docker;
pub(crate) mod http;
pub(crate) mod lab_images;
pub(crate) mod postgres;
pub(crate) mod registry;
pub(crate) mod sshd;
