//! The clairvoyant lower bound: knows demand and boot time, starts exactly the nodes that will
//! be needed one boot time ahead, and removes them the moment they are not.

use super::{SimOptions, Timeline, trace::Trace};

pub struct OracleRun {
    pub node_seconds: f64,
    pub scale_actions: u32,
    /// Each instance's life: the newest goes first when the fleet shrinks.
    pub lifetimes: Vec<i64>,
    pub booting_seconds: f64,
    pub timeline: Vec<Timeline>,
}

/// Nodes needed for the demand at one instant with perfect packing.
pub fn nodes_for(opts: &SimOptions, cpu: f64, memory: Option<f64>) -> u32 {
    let pods = super::pods_for(opts, cpu, memory) + opts.local_volume_pods() as usize;
    let per_node = (opts.allocatable.cpu / opts.pod.cpu)
        .min(opts.allocatable.memory / opts.pod.memory)
        .floor()
        .max(1.0);
    ((pods as f64 / per_node).ceil() as u32).clamp(opts.min, opts.max)
}

pub fn run(trace: &Trace, opts: &SimOptions, sample_every: i64) -> OracleRun {
    let boot = opts.boot_time_s.max(0);
    let need: Vec<u32> = trace
        .rows
        .iter()
        .map(|r| nodes_for(opts, r.cpu, r.memory))
        .collect();
    // Nodes at t = the most any demand in [t, t + boot] needs: a node must start one boot
    // time before it is needed and goes the moment nothing ahead needs it. Demand is piecewise
    // constant, so this changes only at row times and row times minus the boot time.
    let mut cuts: Vec<i64> = trace
        .rows
        .iter()
        .flat_map(|r| [r.time_s, r.time_s - boot])
        .chain([0, trace.end_s])
        .filter(|t| (0..=trace.end_s).contains(t))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let nodes_at = |t: i64| -> u32 {
        let first = trace
            .rows
            .partition_point(|r| r.time_s <= t)
            .saturating_sub(1);
        let last = trace.rows.partition_point(|r| r.time_s <= t + boot);
        need[first..last.max(first + 1)]
            .iter()
            .copied()
            .max()
            .unwrap_or(opts.min)
    };
    let mut node_seconds = 0.0;
    let mut actions = 0;
    let mut prev: Option<u32> = None;
    let mut segments = Vec::new();
    // Launch times of the running instances, oldest first; the initial fleet is there at 0.
    let mut launched: Vec<i64> = Vec::new();
    let (mut lifetimes, mut booting_seconds) = (Vec::new(), 0.0);
    for w in cuts.windows(2) {
        let running = nodes_at(w[0]);
        node_seconds += running as f64 * (w[1] - w[0]) as f64;
        while launched.len() < running as usize {
            if w[0] > 0 {
                booting_seconds += boot.min(trace.end_s - w[0]) as f64;
            }
            launched.push(w[0]);
        }
        while launched.len() > running as usize {
            lifetimes.extend(launched.pop().map(|t| w[0] - t));
        }
        if prev.is_some_and(|p| p != running) {
            actions += 1;
        }
        prev = Some(running);
        segments.push((w[0], running));
    }
    let timeline = (0..trace.end_s)
        .step_by(sample_every.max(1) as usize)
        .map(|t| {
            let i = segments.partition_point(|s| s.0 <= t).saturating_sub(1);
            let n = segments.get(i).map_or(opts.min, |s| s.1);
            Timeline {
                t,
                desired: n,
                ready: n,
                pending: 0,
            }
        })
        .collect();
    lifetimes.extend(launched.iter().map(|t| trace.end_s - t));
    OracleRun {
        node_seconds,
        scale_actions: actions,
        lifetimes,
        booting_seconds,
        timeline,
    }
}
