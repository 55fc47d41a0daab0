//! A test-only pause point: with `TESTWORLD_PAUSE_AT=<name>` in its environment, the controller
//! stops itself (SIGSTOP) the first time it reaches the point `<name>`, after writing its pid to
//! `TESTWORLD_PAUSE_FILE`. The end-to-end tests use it to freeze a replica at the worst moment
//! — after it decided, before its final lease check — let another replica take over, and resume
//! it (SIGCONT). Without the variable it costs one atomic load.

use std::sync::atomic::{AtomicBool, Ordering};

const PAUSE_AT: &str = "TESTWORLD_PAUSE_AT";
const PAUSE_FILE: &str = "TESTWORLD_PAUSE_FILE";

static DONE: AtomicBool = AtomicBool::new(false);

pub fn pause_point(name: &str) {
    if DONE.load(Ordering::Relaxed) {
        return;
    }
    if std::env::var(PAUSE_AT).ok().as_deref() != Some(name) {
        return;
    }
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    if let Ok(path) = std::env::var(PAUSE_FILE) {
        let _ = std::fs::write(&path, std::process::id().to_string());
    }
    tracing::warn!(point = name, "test pause point: stopping until SIGCONT");
    // SAFETY: raise(2) has no memory-safety preconditions.
    unsafe {
        libc::raise(libc::SIGSTOP);
    }
}
