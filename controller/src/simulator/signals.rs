//! Prometheus as the twin sees it: samples every scrape interval, CPU averaged over 5 minutes
//! like `rate(...[5m])`, memory instant.

use super::cluster::{Cluster, NodeState};
use std::collections::VecDeque;

/// What the autoscalers read at a decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Cluster CPU busy %, averaged over the last 5 minutes (the corrected query).
    pub cpu_5m: f64,
    /// Cluster memory used %.
    pub memory: f64,
}

/// Rolling window of CPU samples.
pub struct Scraper {
    window: VecDeque<f64>,
    capacity: usize,
    pub last: Sample,
}

impl Scraper {
    pub fn new(scrape_interval_s: i64) -> Scraper {
        Scraper {
            window: VecDeque::new(),
            capacity: (300 / scrape_interval_s.max(1)).max(1) as usize,
            last: Sample::default(),
        }
    }

    /// Takes one scrape. The workload's CPU need (`demand_cpu` × usage ratio) is spread over the
    /// pods that run: when pods wait, the running ones work harder, up to each node's capacity.
    pub fn scrape(&mut self, c: &Cluster, demand_cpu: f64) -> Sample {
        let cpu_now = cpu_busy_percent(c, demand_cpu);
        if self.window.len() == self.capacity {
            self.window.pop_front();
        }
        self.window.push_back(cpu_now);
        self.last = Sample {
            cpu_5m: self.window.iter().sum::<f64>() / self.window.len() as f64,
            memory: memory_used_percent(c),
        };
        self.last
    }
}

fn ready(c: &Cluster) -> impl Iterator<Item = &super::cluster::SimNode> {
    c.nodes.iter().filter(|n| n.state == NodeState::Ready)
}

pub fn cpu_busy_percent(c: &Cluster, demand_cpu: f64) -> f64 {
    let alloc = c.opts.allocatable.cpu;
    let capacity: f64 = ready(c).count() as f64 * alloc;
    let running: f64 = ready(c).map(|n| n.requested.cpu).sum();
    if capacity <= 0.0 {
        return 0.0;
    }
    let load_per_requested_core = if running > 0.0 {
        demand_cpu * c.opts.usage_ratio / running
    } else {
        0.0
    };
    let busy: f64 = ready(c)
        .map(|n| (n.requested.cpu * load_per_requested_core).min(alloc))
        .sum();
    100.0 * busy / capacity
}

fn memory_used_percent(c: &Cluster) -> f64 {
    let alloc = c.opts.allocatable.memory;
    let nodes = ready(c).count() as f64;
    if nodes == 0.0 {
        return 0.0;
    }
    let used: f64 = ready(c)
        .map(|n| n.requested.memory * c.opts.usage_ratio + c.opts.node_overhead_memory_gib)
        .sum();
    (100.0 * used / (nodes * alloc)).min(100.0)
}
