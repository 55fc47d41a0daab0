//! The clairvoyant lower bound: knows demand and boot time, starts exactly the nodes that will
//! be needed one boot time ahead, and removes them the moment they are not.

use super::{SimOptions, Timeline, trace::Trace};

pub struct OracleRun {
    pub node_seconds: f64,
    pub scale_actions: u32,
    pub timeline: Vec<Timeline>,
}

/// Nodes needed for the demand at one instant with perfect packing.
pub fn nodes_for(opts: &SimOptions, cpu: f64, memory: Option<f64>) -> u32 {
    let pods = super::pods_for(opts, cpu, memory);
    let per_node = (opts.allocatable.cpu / opts.pod.cpu)
        .min(opts.allocatable.memory / opts.pod.memory)
        .floor()
        .max(1.0);
    ((pods as f64 / per_node).ceil() as u32).clamp(opts.min, opts.max)
}

pub fn run(trace: &Trace, opts: &SimOptions, sample_every: i64) -> OracleRun {
    // Evaluate on the trace's own change points plus the boot look-ahead.
    let step = 15;
    let need: Vec<u32> = (0..trace.end_s / step + 1)
        .map(|i| {
            let r = trace.at(i * step);
            nodes_for(opts, r.cpu, r.memory)
        })
        .collect();
    let ahead = (opts.boot_time_s / step).max(0) as usize;
    let mut node_seconds = 0.0;
    let mut actions = 0;
    let mut timeline = Vec::new();
    let mut prev: Option<u32> = None;
    for i in 0..need.len().saturating_sub(1) {
        let running = need[i..=(i + ahead).min(need.len() - 1)]
            .iter()
            .copied()
            .max()
            .unwrap_or(0);
        node_seconds += running as f64 * step as f64;
        if prev.is_some_and(|p| p != running) {
            actions += 1;
        }
        prev = Some(running);
        let t = i as i64 * step;
        if t % sample_every == 0 {
            timeline.push(Timeline {
                t,
                desired: running,
                ready: running,
            });
        }
    }
    OracleRun {
        node_seconds,
        scale_actions: actions,
        timeline,
    }
}
