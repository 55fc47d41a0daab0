//! Results: per-policy numbers, the JSON shape, and the table.

use super::{Run, SimOptions, Timeline, oracle::OracleRun, trace::Trace};
use serde::Serialize;

/// One autoscaler's numbers on one trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyResult {
    pub name: String,
    pub node_hours: f64,
    /// EC2's billing: per second, with a 60-second minimum per instance.
    pub cost: f64,
    pub savings_vs_static_pct: f64,
    pub pending_p50_s: f64,
    pub pending_p99_s: f64,
    pub pending_max_s: f64,
    pub cpu_over_90_minutes: f64,
    pub scale_actions: u32,
    /// Pods whose node-local volume was on a node the autoscaler removed: data lost, and the
    /// pod can never run again (0 is the only acceptable number).
    pub volumes_lost: u32,
    /// Pods evicted by scale-down (each a restart a user may notice).
    pub evictions: u32,
    pub scale_actions_per_day: f64,
    /// Median instance lifetime, launch to gone (instances still running at the end count to it).
    pub node_lifetime_p50_min: f64,
    /// Node-hours paid for instances not yet Ready, and for instances draining.
    pub booting_node_hours: f64,
    pub draining_node_hours: f64,
    /// Instance-hours stopped in a warm pool (paid as EBS only, in `cost`).
    pub stopped_hours: f64,
    /// Only on `smartscale`: its node-hours divided by the oracle's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oracle_ratio: Option<f64>,
}

/// Rounds for stable, readable output.
fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Nearest-rank percentile of waits (seconds).
fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

fn hourly(opts: &SimOptions) -> f64 {
    opts.spot_share * opts.spot_hourly_price + (1.0 - opts.spot_share) * opts.hourly_price
}

/// EC2 bills Linux instances per second of each running stretch, with a one-minute minimum
/// every time an instance starts; a stopped instance pays for its EBS volume.
fn billed_cost(opts: &SimOptions, running: &[i64], stopped_seconds: f64) -> f64 {
    let seconds: i64 = running.iter().map(|l| (*l).max(60)).sum();
    seconds as f64 / 3600.0 * hourly(opts) + stopped_seconds / 3600.0 * opts.stopped_hourly_price
}

fn median_minutes(lifetimes: &[i64]) -> f64 {
    let mut l = lifetimes.to_vec();
    l.sort_unstable();
    r3(percentile(&l, 50.0) / 60.0)
}

fn per_day(actions: u32, end_s: i64) -> f64 {
    r3(actions as f64 * 86_400.0 / end_s.max(1) as f64)
}

impl PolicyResult {
    pub(super) fn from_run(name: &str, opts: &SimOptions, run: &Run, end_s: i64) -> PolicyResult {
        let mut waits = run.waits.clone();
        waits.sort_unstable();
        let node_hours = run.node_seconds / 3600.0;
        PolicyResult {
            name: name.to_string(),
            node_hours: r3(node_hours),
            cost: r3(billed_cost(opts, &run.billed, run.stopped_seconds)),
            savings_vs_static_pct: 0.0,
            pending_p50_s: percentile(&waits, 50.0),
            pending_p99_s: percentile(&waits, 99.0),
            pending_max_s: waits.last().copied().unwrap_or(0) as f64,
            cpu_over_90_minutes: r3(run.cpu_over_90_s as f64 / 60.0),
            scale_actions: run.scale_actions,
            volumes_lost: run.volumes_lost,
            evictions: run.evictions,
            scale_actions_per_day: per_day(run.scale_actions, end_s),
            node_lifetime_p50_min: median_minutes(&run.lifetimes),
            booting_node_hours: r3(run.booting_seconds / 3600.0),
            draining_node_hours: r3(run.draining_seconds / 3600.0),
            stopped_hours: r3(run.stopped_seconds / 3600.0),
            oracle_ratio: None,
        }
    }

    pub(super) fn oracle(opts: &SimOptions, run: &OracleRun, end_s: i64) -> PolicyResult {
        let node_hours = run.node_seconds / 3600.0;
        PolicyResult {
            name: "oracle".to_string(),
            node_hours: r3(node_hours),
            cost: r3(billed_cost(opts, &run.lifetimes, 0.0)),
            savings_vs_static_pct: 0.0,
            pending_p50_s: 0.0,
            pending_p99_s: 0.0,
            pending_max_s: 0.0,
            cpu_over_90_minutes: 0.0,
            scale_actions: run.scale_actions,
            volumes_lost: 0,
            // It removes a node only once nothing on it is needed: nothing to evict or drain.
            evictions: 0,
            scale_actions_per_day: per_day(run.scale_actions, end_s),
            node_lifetime_p50_min: median_minutes(&run.lifetimes),
            booting_node_hours: r3(run.booting_seconds / 3600.0),
            draining_node_hours: 0.0,
            stopped_hours: 0.0,
            oracle_ratio: None,
        }
    }
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub boot_time_s: i64,
    pub policies: Vec<PolicyResult>,
    #[serde(skip)]
    pub timelines: Vec<(String, Vec<Timeline>)>,
    /// Demand in nodes' worth of CPU, on the timelines' grid.
    #[serde(skip)]
    pub demand: Vec<(i64, f64)>,
}

impl Report {
    pub(super) fn new(
        trace: &Trace,
        opts: &SimOptions,
        mut policies: Vec<PolicyResult>,
        timelines: Vec<(String, Vec<Timeline>)>,
    ) -> Report {
        let static_cost = policies
            .iter()
            .find(|p| p.name == "static-peak")
            .map(|p| p.cost)
            .unwrap_or(0.0);
        let oracle_hours = policies
            .iter()
            .find(|p| p.name == "oracle")
            .map(|p| p.node_hours)
            .unwrap_or(0.0);
        for p in &mut policies {
            if static_cost > 0.0 {
                p.savings_vs_static_pct = r3(100.0 * (1.0 - p.cost / static_cost));
            }
            if p.name.starts_with("smartscale") && oracle_hours > 0.0 {
                p.oracle_ratio = Some(r3(p.node_hours / oracle_hours));
            }
        }
        let demand = timelines
            .first()
            .map(|(_, tl)| {
                tl.iter()
                    .map(|s| (s.t, trace.at(s.t).cpu / opts.allocatable.cpu))
                    .collect()
            })
            .unwrap_or_default();
        Report {
            scenario: trace.name.clone(),
            boot_time_s: opts.boot_time_s,
            policies,
            timelines,
            demand,
        }
    }

    pub fn get(&self, name: &str) -> Option<&PolicyResult> {
        self.policies.iter().find(|p| p.name == name)
    }

    pub fn to_json(&self) -> String {
        // The report holds only plain numbers and strings: serialising cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A plain-text table, one row per policy.
    pub fn table(&self) -> String {
        let mut out = format!(
            "scenario: {}   boot time: {} s\n\n{:<20} {:>10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8} {:>7} {:>7} {:>6} {:>6} {:>7}\n",
            self.scenario,
            self.boot_time_s,
            "policy",
            "node-h",
            "cost $",
            "saving %",
            "wait p50",
            "p99 s",
            "max s",
            "cpu>90 m",
            "actions",
            "lost vol",
            "evicted",
            "acts/d",
            "life m",
            "boot h",
            "drain h",
            "pool h"
        );
        for p in &self.policies {
            out.push_str(&format!(
                "{:<20} {:>10.2} {:>9.2} {:>9.1} {:>8.0} {:>8.0} {:>8.0} {:>9.1} {:>7} {:>8} {:>8} {:>7.1} {:>7.0} {:>6.1} {:>6.1} {:>7.1}\n",
                p.name,
                p.node_hours,
                p.cost,
                p.savings_vs_static_pct,
                p.pending_p50_s,
                p.pending_p99_s,
                p.pending_max_s,
                p.cpu_over_90_minutes,
                p.scale_actions,
                p.volumes_lost,
                p.evictions,
                p.scale_actions_per_day,
                p.node_lifetime_p50_min,
                p.booting_node_hours,
                p.draining_node_hours,
                p.stopped_hours
            ));
        }
        if let Some(r) = self.get("smartscale").and_then(|p| p.oracle_ratio) {
            out.push_str(&format!(
                "\nsmartscale uses {r:.2}× the oracle's node-hours (the clairvoyant lower bound).\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_per_second_with_a_one_minute_minimum() {
        let opts = SimOptions {
            hourly_price: 3.6,
            ..SimOptions::default()
        };
        // 3.6 $/h = 0.001 $/s: a 30 s instance pays 60 s, a 90 s one 90 s.
        assert!((billed_cost(&opts, &[30, 90], 0.0) - 0.150).abs() < 1e-9);
        // A stopped instance pays its volume only: 2 h at 0.01 $/h.
        let opts = SimOptions {
            stopped_hourly_price: 0.01,
            ..opts
        };
        assert!((billed_cost(&opts, &[], 7200.0) - 0.02).abs() < 1e-9);
        assert_eq!(median_minutes(&[60, 600, 6000]), 10.0);
        assert_eq!(per_day(3, 43_200), 6.0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let w: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&w, 50.0), 50.0);
        assert_eq!(percentile(&w, 99.0), 99.0);
        assert_eq!(percentile(&[7], 99.0), 7.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
