//! The one way tests wait for something: poll a condition every 10 ms until it holds,
//! bounded, and panic naming what was awaited when it never does. Returns how long it
//! took, which some tests report. (tests/processes.rs and tests/chaos/ include this
//! file by path; the in-process tests reach it through `common`.)

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` until it holds; panics after `limit`, naming `what`.
pub fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(POLL);
    }
    start.elapsed()
}

/// As [`until`], for a condition that is awaited (the in-process meshes).
pub async fn until_async<F, Fut>(what: &str, limit: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
    start.elapsed()
}
