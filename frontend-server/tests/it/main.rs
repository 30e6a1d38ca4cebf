//! Integration tests: the router in-process (`app`) and the compiled binary (`binary`).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a panic is the test failure"
)]

mod app;
mod binary;
mod drain;
mod fixture;
