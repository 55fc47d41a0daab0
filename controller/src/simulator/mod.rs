//! The digital twin: replays a demand trace through a simulated cluster, once per autoscaler,
//! and reports node-hours, cost and how long pods waited. `smartscale` runs the controller's own
//! `policy` module, so its numbers say something about production.

mod autoscalers;
mod capacity;
pub mod chart;
mod cluster;
mod oracle;
pub mod report;
mod signals;
pub mod trace;

use crate::policy::{self, PolicyConfig, Resources};
use autoscalers::{Autoscaler, Prototype, RealPolicy, RequestsOnly, StaticPeak};
use cluster::Cluster;
pub use report::{PolicyResult, Report};
use serde::{Deserialize, Serialize};
use signals::Scraper;
use trace::Trace;

/// The simulated world's parameters (config section `simulate`, README "Digital twin").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimOptions {
    /// One node's allocatable resources.
    pub allocatable: Resources,
    /// Every pod's requests.
    pub pod: Resources,
    pub boot_time_s: i64,
    /// Boot time varies uniformly by ± this much.
    pub boot_jitter_s: i64,
    pub drain_time_s: i64,
    pub scrape_interval_s: i64,
    /// The controller's decision interval.
    pub interval_s: i64,
    /// Delay of the controller's pending-pod fast path (watch → decision).
    pub fast_path_delay_s: i64,
    /// Share of requested CPU/memory that pods really use.
    pub usage_ratio: f64,
    pub node_overhead_memory_gib: f64,
    pub hourly_price: f64,
    /// Share of nodes on spot, and their price.
    pub spot_share: f64,
    pub spot_hourly_price: f64,
    pub spot_interruptions_per_node_hour: f64,
    pub min: u32,
    pub max: u32,
    /// Pods with a node-local volume beside the demand's pods (default: the scenario's).
    pub local_volume_pods: Option<u32>,
    /// The `smartscale+warm-pool` run's warm pool: its size (default: max − desired, AWS's
    /// default), how long a stopped, pre-initialised instance takes from start to Ready, and
    /// what a stopped instance costs (its EBS volume: 20 GiB of gp3 at $0.08/GiB-month).
    pub warm_pool_size: Option<u32>,
    pub warm_boot_time_s: i64,
    pub warm_boot_jitter_s: i64,
    pub stopped_hourly_price: f64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            allocatable: Resources {
                cpu: 2.0,
                memory: 4.0,
            },
            pod: Resources {
                cpu: 0.5,
                memory: 0.5,
            },
            boot_time_s: 75,
            boot_jitter_s: 10,
            drain_time_s: 30,
            scrape_interval_s: 15,
            interval_s: 30,
            fast_path_delay_s: 1,
            usage_ratio: 0.5,
            node_overhead_memory_gib: 0.3,
            hourly_price: 0.0416,
            spot_share: 0.0,
            spot_hourly_price: 0.0125,
            spot_interruptions_per_node_hour: 0.0,
            min: 1,
            max: 40,
            local_volume_pods: None,
            warm_pool_size: None,
            warm_boot_time_s: 30,
            warm_boot_jitter_s: 5,
            stopped_hourly_price: 20.0 * 0.08 / 730.0,
        }
    }
}

/// One point of a run's timeline (for the chart).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timeline {
    pub t: i64,
    pub desired: u32,
    pub ready: u32,
    /// The most pods pending at once since the previous point (a point sample would miss
    /// most of a wait shorter than the grid).
    pub pending: u32,
}

/// Pods needed for a demand (the demand's own; `local_volume_pods` come on top).
fn pods_for(opts: &SimOptions, cpu: f64, memory: Option<f64>) -> usize {
    let by_cpu = (cpu / opts.pod.cpu - 1e-9).ceil().max(0.0) as usize;
    let by_mem = memory.map_or(0, |m| (m / opts.pod.memory - 1e-9).ceil().max(0.0) as usize);
    by_cpu.max(by_mem)
}

impl SimOptions {
    pub fn local_volume_pods(&self) -> u32 {
        self.local_volume_pods.unwrap_or(0)
    }
}

/// The result of one autoscaler on one trace.
struct Run {
    node_seconds: f64,
    waits: Vec<i64>,
    cpu_over_90_s: i64,
    scale_actions: u32,
    /// Pods whose node-local volume went with a node the autoscaler removed.
    volumes_lost: u32,
    /// Pods evicted by scale-down.
    evictions: u32,
    /// Each instance's life, launch to gone (or to the end of the trace).
    lifetimes: Vec<i64>,
    booting_seconds: f64,
    draining_seconds: f64,
    /// Each running stretch of an instance (EC2 bills each start separately).
    billed: Vec<i64>,
    /// Instance-seconds spent stopped in the warm pool (EBS only).
    stopped_seconds: f64,
    timeline: Vec<Timeline>,
}

/// Timeline resolution: at most ~1,500 points per line.
fn sample_every(trace: &Trace) -> i64 {
    ((trace.end_s / 1500) / 60 * 60).max(60)
}

fn simulate(
    trace: &Trace,
    opts: &SimOptions,
    seed: u64,
    start: Start,
    scaler: &mut dyn Autoscaler,
    progress: &mut dyn FnMut(&str, f64),
) -> Run {
    let mut c = Cluster::new(opts.clone(), start.nodes, seed);
    if start.warm_pool {
        c = c.with_warm_pool();
    }
    let mut scraper = Scraper::new(opts.scrape_interval_s);
    let every = sample_every(trace);
    let (mut node_seconds, mut over_90) = (0.0, 0);
    let (mut booting_seconds, mut draining_seconds, mut stopped_seconds) = (0.0, 0.0, 0.0);
    let mut timeline = Vec::new();
    let (mut next_row, mut next_scrape, mut next_tick, mut next_sample) =
        (0usize, 0i64, 0i64, 0i64);
    let mut fast_at: Option<i64> = None;
    let mut pending_peak = 0u32;
    let mut demand = trace.rows[0];
    let mut t = 0;
    let mut next_progress = 0.0;
    while t < trace.end_s {
        while next_row < trace.rows.len() && trace.rows[next_row].time_s <= t {
            demand = trace.rows[next_row];
            next_row += 1;
        }
        let pending_before = c.pending().count();
        c.set_demand(demand.cpu, demand.memory, t);
        c.advance(t);
        c.schedule(t);
        if scaler.fast_path() && fast_at.is_none() && c.pending().count() > pending_before {
            fast_at = Some(t + opts.fast_path_delay_s);
        }
        if t >= next_scrape {
            scraper.scrape(&c, demand.cpu);
            next_scrape += opts.scrape_interval_s;
        }
        if t >= next_tick || fast_at.is_some_and(|f| t >= f) {
            let cmd = scaler.decide(&c, &scraper.last, t);
            if let Some(d) = cmd.desired {
                c.set_desired(d.clamp(opts.min, opts.max), t);
            }
            for id in cmd.terminate {
                c.terminate(id, t);
            }
            c.advance(t);
            c.schedule(t);
            if t >= next_tick {
                next_tick += scaler.interval_s();
            }
            fast_at = None;
        }
        pending_peak = pending_peak.max(c.pending().count() as u32);
        if t >= next_sample {
            timeline.push(Timeline {
                t,
                desired: c.desired,
                ready: c.ready_nodes() as u32,
                pending: std::mem::take(&mut pending_peak),
            });
            next_sample += every;
        }
        let next_t = [
            trace.rows.get(next_row).map(|r| r.time_s),
            Some(next_scrape),
            Some(next_tick),
            Some(next_sample),
            fast_at,
            c.next_event(t),
            Some(trace.end_s),
        ]
        .into_iter()
        .flatten()
        .filter(|&x| x > t)
        .min()
        .unwrap_or(trace.end_s);
        let dt = next_t - t;
        let (warming, stopped) = c.pool_warming_and_stopped(t);
        node_seconds += (c.nodes.len() + warming) as f64 * dt as f64;
        stopped_seconds += stopped as f64 * dt as f64;
        let (booting, draining) = c.booting_and_draining();
        booting_seconds += booting as f64 * dt as f64;
        draining_seconds += draining as f64 * dt as f64;
        if signals::cpu_busy_percent(&c, demand.cpu) > 90.0 {
            over_90 += dt;
        }
        t = next_t;
        let done = t as f64 / trace.end_s as f64;
        if done >= next_progress {
            progress(scaler.name(), done);
            next_progress += 0.25;
        }
    }
    c.finish(trace.end_s);
    let mut waits = std::mem::take(&mut c.waits);
    waits.extend(c.pending().map(|p| trace.end_s - p.waiting_since));
    Run {
        node_seconds,
        waits,
        cpu_over_90_s: over_90,
        scale_actions: c.scale_actions,
        volumes_lost: c.volumes_lost,
        evictions: c.evictions,
        lifetimes: std::mem::take(&mut c.lifetimes),
        booting_seconds,
        draining_seconds,
        billed: std::mem::take(&mut c.billed),
        stopped_seconds,
        timeline,
    }
}

/// How a run begins: Ready nodes, and whether the group has a warm pool.
#[derive(Debug, Clone, Copy)]
struct Start {
    nodes: u32,
    warm_pool: bool,
}

impl Start {
    fn cold(nodes: u32) -> Start {
        Start {
            nodes,
            warm_pool: false,
        }
    }
}

/// Runs every autoscaler on the trace and builds the report. `progress` hears (policy, fraction).
pub fn run_all(
    trace: &Trace,
    policy_config: &PolicyConfig,
    opts: &SimOptions,
    seed: u64,
    progress: &mut dyn FnMut(&str, f64),
) -> Report {
    let mut opts = opts.clone();
    opts.local_volume_pods = opts.local_volume_pods.or(Some(trace.local_volume_pods));
    let opts = &opts;
    let first = trace.rows[0];
    let initial = oracle::nodes_for(opts, first.cpu, first.memory);
    let peak = trace
        .rows
        .iter()
        .map(|r| oracle::nodes_for(opts, r.cpu, r.memory))
        .max()
        .unwrap_or(opts.min);
    let group = policy::Group {
        asg_name: "simulated".into(),
        min: opts.min,
        max: opts.max,
        desired: initial,
        node_allocatable: opts.allocatable,
        instances: vec![],
        scale_down_blocked: None,
        backoff: None,
    };
    let real = |name, config: PolicyConfig, interval_s, fast_path, cpu_reporting| RealPolicy {
        name,
        config,
        group: group.clone(),
        interval_s,
        fast_path,
        cpu_reporting,
        memory: policy::Memory::default(),
        capacity_model: name.starts_with("smartscale"),
    };
    // The forecast is off by default until the twin shows it helps: run the other setting too.
    let mut other = policy_config.clone();
    other.forecast.enabled = !policy_config.forecast.enabled;
    let other_name = if other.forecast.enabled {
        "smartscale+forecast"
    } else {
        "smartscale-reactive"
    };
    let cold = Start::cold(initial);
    let mut scalers: Vec<(Box<dyn Autoscaler>, Start)> = vec![
        (
            Box::new(real(
                "smartscale",
                policy_config.clone(),
                opts.interval_s,
                true,
                1.0,
            )),
            cold,
        ),
        (
            Box::new(real(other_name, other, opts.interval_s, true, 1.0)),
            cold,
        ),
        // The same policy on a group with a warm pool (the oracle still boots cold).
        (
            Box::new(real(
                "smartscale+warm-pool",
                policy_config.clone(),
                opts.interval_s,
                true,
                1.0,
            )),
            Start {
                nodes: initial,
                warm_pool: true,
            },
        ),
        (Box::new(StaticPeak), Start::cold(peak)),
        // The seed ran every 2 minutes and its CPU query averaged over CPU modes, which on
        // our measured data reads a third of the true value (TOOLCHAIN.md: 56% → 18.67).
        (
            Box::new(real(
                "seed-thresholds",
                PolicyConfig::seed(),
                120,
                false,
                1.0 / 3.0,
            )),
            cold,
        ),
        (
            Box::new(Prototype {
                min: opts.min,
                max: opts.max,
                last_up: i64::MIN / 2,
                last_down: i64::MIN / 2,
            }),
            cold,
        ),
        (
            Box::new(RequestsOnly {
                min: opts.min,
                max: opts.max,
                last_up: i64::MIN / 2,
                unneeded_since: Default::default(),
            }),
            cold,
        ),
    ];
    let mut results = Vec::new();
    let mut timelines = Vec::new();
    for (scaler, start) in scalers.iter_mut() {
        let run = simulate(trace, opts, seed, *start, scaler.as_mut(), progress);
        results.push(PolicyResult::from_run(
            scaler.name(),
            opts,
            &run,
            trace.end_s,
        ));
        timelines.push((scaler.name().to_string(), run.timeline));
    }
    let oracle = oracle::run(trace, opts, sample_every(trace));
    results.push(PolicyResult::oracle(opts, &oracle, trace.end_s));
    timelines.push(("oracle".to_string(), oracle.timeline));
    Report::new(trace, opts, results, timelines)
}

#[cfg(test)]
mod tests;
