//! Acting on the forecast (`forecast.rs`): nodes for a predicted rise are added before the
//! pods exist, and kept until the rise's window has passed.
//!
//! Sizing assumes the coming pods are like today's (the mean CPU request of the workers'
//! movable pods) and go to the first group with room: the forecast knows how much CPU, not
//! which constraints the pods will carry.

use super::forecast::{self, Forecast};
use super::{Memory, Observation, PolicyConfig};
use serde::{Deserialize, Serialize};

/// Room the forecast reserved: no scale-down may leave less than `cores` free before `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub until: i64,
    pub cores: f64,
}

/// The CPU each pod requests: the workers' pods that move with a drain (DaemonSets and mirror
/// pods apart), then the pending ones.
fn pod_cpus(obs: &Observation) -> impl Iterator<Item = f64> + '_ {
    obs.nodes
        .iter()
        .filter(|n| !n.control_plane)
        .flat_map(|n| &n.pods)
        .filter(|p| p.moves_with_drain())
        .chain(&obs.pending)
        .map(|p| p.requests.cpu)
}

/// CPU (cores) requested by the workers' pods and by pending pods, DaemonSets and mirror
/// pods apart: the demand the forecast records.
pub fn demand(obs: &Observation) -> f64 {
    pod_cpus(obs).sum()
}

/// The CPU a typical pod requests (the mean over the workers' movable pods), so free room is
/// counted in places a pod fits, not in scattered fractions of a core.
fn slot(obs: &Observation) -> f64 {
    let cpus: Vec<f64> = pod_cpus(obs).filter(|c| *c > 0.0).collect();
    if cpus.is_empty() {
        0.0
    } else {
        cpus.iter().sum::<f64>() / cpus.len() as f64
    }
}

/// Whole slots' worth of `cpu`.
fn in_slots(cpu: f64, slot: f64) -> f64 {
    if slot > 0.0 {
        (cpu / slot + 1e-9).floor() * slot
    } else {
        cpu.max(0.0)
    }
}

/// A new node's CPU for workloads: its allocatable minus what DaemonSets take on a worker.
fn per_node(obs: &Observation, group: usize) -> f64 {
    let daemonsets = obs
        .nodes
        .iter()
        .filter(|n| !n.control_plane)
        .map(|n| {
            n.pods
                .iter()
                .filter(|p| p.daemonset)
                .map(|p| p.requests.cpu)
                .sum::<f64>()
        })
        .fold(0.0, f64::max);
    obs.groups
        .get(group)
        .map_or(0.0, |g| g.node_allocatable.cpu - daemonsets)
}

/// Free CPU for new pods: on Ready schedulable workers and on nodes still booting, less what
/// pending pods will take; `except` (a node to be removed) does not count.
pub fn room(obs: &Observation, in_flight: u32, except: Option<&str>) -> f64 {
    let s = slot(obs);
    let on_nodes: f64 = obs
        .nodes
        .iter()
        .filter(|n| n.ready && !n.unschedulable && !n.tainted && !n.control_plane)
        .filter(|n| n.instance_id.is_some() && Some(n.name.as_str()) != except)
        .map(|n| in_slots(n.free().cpu, s))
        .sum();
    let booting = in_flight as f64 * in_slots(per_node(obs, 0), s);
    on_nodes + booting - obs.pending.iter().map(|p| p.requests.cpu).sum::<f64>()
}

/// The forecast's step: records the prediction for scoring, and when a trusted forecast needs
/// more room than there is, the group and the nodes to add. Sets the hold either way.
pub fn step(
    obs: &Observation,
    next: &mut Memory,
    cfg: &PolicyConfig,
    demand: f64,
    in_flight: u32,
    now: i64,
    reasons: &mut Vec<String>,
) -> Option<(usize, u32)> {
    let lead = cfg.forecast.lead;
    let f = next.forecast.forecast(now, demand, lead);
    next.forecast.predicted(now, &f, lead);
    if !f.trusted && forecast::significant(f.rise()) {
        let hits = next.forecast.scored.iter().filter(|h| **h).count();
        reasons.push(format!(
            "forecast backed off: {hits} of its last {} predicted rises came true ({})",
            next.forecast.scored.len(),
            describe(&f, lead.as_secs())
        ));
    }
    let needed = f.room_needed();
    if !forecast::significant(needed) {
        return None;
    }
    next.hold = Some(Hold {
        until: forecast::window_end(now, lead),
        cores: needed,
    });
    let room = room(obs, in_flight, None);
    let short = needed - room;
    if short <= 1e-9 {
        reasons.push(format!(
            "{}; room for {room:.1} already",
            describe(&f, lead.as_secs())
        ));
        return None;
    }
    let gi = obs
        .groups
        .iter()
        .position(|g| g.desired < g.max && g.backoff.is_none())?;
    let per = in_slots(per_node(obs, gi), slot(obs));
    if per <= 0.0 {
        return None;
    }
    let add = (short / per - 1e-9).ceil().max(1.0) as u32;
    reasons.push(format!(
        "{}; room for {room:.1}: pre-warming {add} node{}",
        describe(&f, lead.as_secs()),
        if add == 1 { "" } else { "s" }
    ));
    Some((gi, add))
}

/// Why a scale-down must wait for the forecast: removing `node` would leave less room than
/// the rise it holds.
pub fn holds(
    obs: &Observation,
    next: &Memory,
    in_flight: u32,
    node: &str,
    now: i64,
) -> Option<String> {
    let hold = next.hold.as_ref().filter(|h| h.until > now)?;
    let left = room(obs, in_flight, Some(node));
    (left + 1e-9 < hold.cores).then(|| {
        format!(
            "{node} can go, but the forecast holds room for +{:.1} cores for {}s more (only {left:.1} without it)",
            hold.cores,
            hold.until - now
        )
    })
}

fn describe(f: &Forecast, lead_s: u64) -> String {
    let seasonal = f.seasonal.map_or("no day of history".to_string(), |s| {
        format!("seasonal +{s:.1}")
    });
    format!(
        "forecast: {:.1} → {:.1} cores within {lead_s}s ({seasonal}, trend +{:.1}), margin {:.1}",
        f.now,
        f.demand(),
        f.trend,
        f.margin
    )
}
