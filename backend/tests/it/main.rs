//! Integration tests against real PostgreSQL: the router in-process and the compiled binary.

// clippy.toml allows unwrap in tests, but only inside #[test] functions; helpers here
// are test code too, where a panic is exactly the failure report we want.
#![allow(clippy::unwrap_used, reason = "test code")]

mod auth;
mod binary;
mod clock;
mod cors;
mod dashboards;
mod drain;
mod fixtures;
mod health;
mod metrics;
mod migrate;
mod migrations;
mod pg;
mod support;
mod users;
