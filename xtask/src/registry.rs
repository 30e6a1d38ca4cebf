//! A registry client over the OCI distribution API, blocking, on ureq with rustls.
//!
//! Layered like go-containerregistry's `transport`/`remote` split: `reference.rs` (hosts,
//! names, image references, URLs), `transport.rs` (one request, counting, retry driving),
//! `auth.rs` (ping, `WWW-Authenticate`, Basic or a token reused until it expires and
//! renewed once on 401), `error.rs` (typed errors and their hints), and `client.rs`, the
//! protocol operations on top. Push and the pull of base images share all of it.
//! Nothing here depends on the image builder.

mod auth;
mod challenge;
mod client;
pub(crate) mod credentials;
mod error;
pub(crate) mod reference;
pub(crate) mod retry;
mod transport;

pub(crate) use client::{BlobSource, BlobUpload, Client, ClientOptions, Manifest, Mount};
pub(crate) use credentials::Credentials;
pub(crate) use error::Error;
pub(crate) use reference::{ImageReference, Registry};
pub(crate) use retry::RetryPolicy;
