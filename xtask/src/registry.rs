//! A registry client over the OCI distribution API, blocking, on ureq with rustls.
//!
//! Push and (later) pull share one auth path (ping, `WWW-Authenticate`, Basic or a token
//! reused until it expires and renewed once on 401) and one retry path (backoff with
//! jitter, bounded in attempts and time). See `shared/notes/oci-registry-protocol.md`
//! for the registry behaviour each rule comes from.

pub(crate) mod base64;
mod challenge;
mod client;
pub(crate) mod credentials;
mod error;
pub(crate) mod reference;
pub(crate) mod retry;

pub(crate) use client::{
    BlobSource, BlobUpload, Client, ClientOptions, Manifest, Mount, human_bytes, sha256_digest,
};
pub(crate) use credentials::Credentials;
pub(crate) use error::Error;
pub(crate) use reference::Registry;
pub(crate) use retry::RetryPolicy;
