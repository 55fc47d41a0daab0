//! Shared by the benches: CPU time of this process, and a run-N-times helper.
#![allow(dead_code)] // each bench uses part of this module

use std::time::{Duration, Instant};

/// CPU time (user + system) this process has used, from `/proc/self/stat` (clock ticks).
/// Coarse (10 ms ticks here), so `measure` reports CPU as a total over many runs.
pub fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the `(comm)`: utime and stime are the 12th and 13th.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        });
    Duration::from_millis(ticks.unwrap_or(0) * 10)
}

/// Runs `f` `n` times on this (otherwise idle, single-threaded) process. Returns the median and
/// max wall time per run, and the mean CPU time per run.
pub fn measure(n: usize, mut f: impl FnMut()) -> (Duration, Duration, Duration) {
    let cpu0 = cpu_time();
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed()
        })
        .collect();
    let cpu = (cpu_time() - cpu0) / n as u32;
    times.sort();
    (times[n / 2], times[n - 1], cpu)
}
