//! The autoscalers compared by the twin. `smartscale` and `seed-thresholds` are the real policy
//! module with two configurations; the others are small models of the baselines.

use super::cluster::{Cluster, NodeState};
use super::signals::Sample;
use crate::policy::{self, Action, Memory, PolicyConfig, Resources};

/// What an autoscaler asks the Auto Scaling group to do in one decision.
#[derive(Default)]
pub struct Command {
    /// SetDesiredCapacity.
    pub desired: Option<u32>,
    /// TerminateInstanceInAutoScalingGroup(ShouldDecrementDesiredCapacity=true), by node id.
    pub terminate: Vec<u32>,
}

impl Command {
    fn desired(n: u32) -> Command {
        Command {
            desired: Some(n),
            terminate: Vec::new(),
        }
    }
}

/// One autoscaler under test.
pub trait Autoscaler {
    fn name(&self) -> &'static str;
    /// Seconds between decisions.
    fn interval_s(&self) -> i64;
    /// Whether new pending pods trigger a decision at once (the controller's watch fast path).
    fn fast_path(&self) -> bool {
        false
    }
    fn decide(&mut self, cluster: &Cluster, sample: &Sample, now: i64) -> Command;
}

/// The real policy module, as the controller runs it.
pub struct RealPolicy {
    pub name: &'static str,
    pub config: PolicyConfig,
    pub group: policy::Group,
    pub interval_s: i64,
    pub fast_path: bool,
    /// Factor applied to the CPU the policy sees (the seed's query under-reports; see README).
    pub cpu_reporting: f64,
    pub memory: Memory,
    /// Decide with the capacity model (the controller does); the seed's design had none.
    pub capacity_model: bool,
}

impl Autoscaler for RealPolicy {
    fn name(&self) -> &'static str {
        self.name
    }
    fn interval_s(&self) -> i64 {
        self.interval_s
    }
    fn fast_path(&self) -> bool {
        self.fast_path
    }
    fn decide(&mut self, cluster: &Cluster, sample: &Sample, now: i64) -> Command {
        let usage = policy::Usage {
            cpu: policy::Reading::Value(sample.cpu_5m * self.cpu_reporting),
            memory: policy::Reading::Value(sample.memory),
            custom: vec![],
        };
        let obs = cluster.observe(usage, &self.group);
        // The controller's path: the same capacity model, from the simulated cluster.
        let mut model = self
            .capacity_model
            .then(|| super::capacity::model(cluster, &obs.groups[0]));
        let (d, next) = policy::decide_with(&obs, model.as_mut(), &self.memory, &self.config, now);
        self.memory = next;
        let mut cmd = Command {
            desired: None,
            terminate: d
                .rollback
                .iter()
                .filter_map(|id| node_by_instance(cluster, id))
                .collect(),
        };
        match d.action {
            Action::ScaleUp => cmd.desired = Some(d.to),
            Action::ScaleDown => {
                cmd.terminate
                    .extend(d.victim.and_then(|v| Cluster::node_id(&v.node)));
            }
            Action::None => {}
        }
        cmd
    }
}

fn node_by_instance(cluster: &Cluster, instance: &str) -> Option<u32> {
    cluster
        .nodes
        .iter()
        .find(|n| n.instance_id() == instance)
        .map(|n| n.id)
}

/// A fixed fleet sized for the trace's peak.
pub struct StaticPeak;

impl Autoscaler for StaticPeak {
    fn name(&self) -> &'static str {
        "static-peak"
    }
    fn interval_s(&self) -> i64 {
        3600
    }
    fn decide(&mut self, _: &Cluster, _: &Sample, _: i64) -> Command {
        Command::default()
    }
}

/// The Docker prototype's rules: up at 80% CPU or 80% memory or any pending pod, down at
/// 30%/30%, cooldowns 60 s / 120 s, ±1, and the ASG picks which instance goes.
pub struct Prototype {
    pub min: u32,
    pub max: u32,
    pub last_up: i64,
    pub last_down: i64,
}

impl Autoscaler for Prototype {
    fn name(&self) -> &'static str {
        "prototype"
    }
    fn interval_s(&self) -> i64 {
        30
    }
    fn decide(&mut self, c: &Cluster, s: &Sample, now: i64) -> Command {
        let pending = c.pending().count();
        if (pending > 0 || s.cpu_5m >= 80.0 || s.memory >= 80.0)
            && now - self.last_up >= 60
            && c.desired < self.max
        {
            self.last_up = now;
            return Command::desired(c.desired + 1);
        }
        if pending == 0
            && s.cpu_5m < 30.0
            && s.memory < 30.0
            && now - self.last_down >= 120
            && c.desired > self.min
        {
            self.last_down = now;
            return Command::desired(c.desired - 1);
        }
        Command::default()
    }
}

/// cluster-autoscaler's model: pending pods → nodes by packing (minus nodes booting); a node
/// whose requests stay under 50% of allocatable for 10 minutes and whose pods fit elsewhere is
/// removed; no scale-down for 10 minutes after a scale-up.
pub struct RequestsOnly {
    pub min: u32,
    pub max: u32,
    pub last_up: i64,
    /// Since when each node (by id) has been under-utilised.
    pub unneeded_since: std::collections::HashMap<u32, i64>,
}

impl Autoscaler for RequestsOnly {
    fn name(&self) -> &'static str {
        "requests-only"
    }
    fn interval_s(&self) -> i64 {
        10
    }
    fn fast_path(&self) -> bool {
        false
    }
    fn decide(&mut self, c: &Cluster, _: &Sample, now: i64) -> Command {
        let alloc = c.opts.allocatable;
        let pending: Vec<Resources> = c.pending().map(|p| p.requests).collect();
        let booting = c
            .nodes
            .iter()
            .filter(|n| matches!(n.state, NodeState::Booting { .. }))
            .count() as u32;
        if !pending.is_empty() {
            self.unneeded_since.clear();
            let (need, _) = policy::binpack::nodes_needed(&pending, alloc);
            let add = need.saturating_sub(booting);
            if add > 0 && c.desired < self.max {
                self.last_up = now;
                return Command::desired((c.desired + add).min(self.max));
            }
            return Command::default();
        }
        let ready: Vec<_> = c
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Ready)
            .collect();
        self.unneeded_since
            .retain(|id, _| ready.iter().any(|n| n.id == *id));
        let mut victim = None;
        for n in &ready {
            if n.requested.dominant_share(alloc) >= 0.5 {
                self.unneeded_since.remove(&n.id);
                continue;
            }
            let moving: Vec<Resources> = c
                .pods
                .iter()
                .filter(|p| p.node == Some(n.id))
                .map(|p| p.requests)
                .collect();
            let mut others: Vec<Resources> = ready
                .iter()
                .filter(|o| o.id != n.id)
                .map(|o| alloc.minus(o.requested))
                .collect();
            // cluster-autoscaler's drain rules keep a node whose pod has a node-local volume.
            let pinned = c
                .pods
                .iter()
                .any(|p| p.node == Some(n.id) && p.volume.is_some());
            if pinned || !policy::binpack::fits_into(&moving, &mut others) {
                self.unneeded_since.remove(&n.id);
                continue;
            }
            let since = *self.unneeded_since.entry(n.id).or_insert(now);
            if victim.is_none() && now - since >= 600 && now - self.last_up >= 600 {
                victim = Some(n.id);
            }
        }
        match victim {
            Some(id) if c.desired > self.min => {
                self.unneeded_since.remove(&id);
                Command {
                    desired: None,
                    terminate: vec![id],
                }
            }
            _ => Command::default(),
        }
    }
}
