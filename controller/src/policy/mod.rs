//! The scaling policy: a pure function from what the controller observed to what it should do.
//!
//! No I/O and no clock: `now` is an argument. The controller (`cycle`) and the digital twin
//! (`simulator`) call exactly this code, so what the twin measures is what production does.

pub mod binpack;
mod decide;
pub mod forecast;
pub mod model;
#[cfg(test)]
mod model_tests;
pub mod prewarm;
#[cfg(test)]
mod tests;
pub mod victim;

use serde::{Deserialize, Serialize};
use std::time::Duration;

pub use decide::{decide, decide_with};
pub use model::CapacityModel;

/// CPU cores and memory in GiB.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Resources {
    pub cpu: f64,
    pub memory: f64,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpu: 0.0,
        memory: 0.0,
    };
    /// Slack for float sums of many requests.
    const EPS: f64 = 1e-9;

    pub fn fits_in(self, free: Resources) -> bool {
        self.cpu <= free.cpu + Self::EPS && self.memory <= free.memory + Self::EPS
    }
    pub fn plus(self, o: Resources) -> Resources {
        Resources {
            cpu: self.cpu + o.cpu,
            memory: self.memory + o.memory,
        }
    }
    pub fn minus(self, o: Resources) -> Resources {
        Resources {
            cpu: self.cpu - o.cpu,
            memory: self.memory - o.memory,
        }
    }
    pub fn max(self, o: Resources) -> Resources {
        Resources {
            cpu: self.cpu.max(o.cpu),
            memory: self.memory.max(o.memory),
        }
    }
    /// The larger of the CPU and memory fractions of `of` (0 when `of` is empty).
    pub fn dominant_share(self, of: Resources) -> f64 {
        let share = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        share(self.cpu, of.cpu).max(share(self.memory, of.memory))
    }
}

/// One observed value, or why there is none. A missing value is a state of its own: it can
/// block a scale-down, it never causes a scaling action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reading {
    Value(f64),
    Missing(String),
}

impl Reading {
    /// Builds a reading, turning NaN and infinities into `Missing`.
    pub fn from_f64(v: f64) -> Reading {
        if v.is_finite() {
            Reading::Value(v)
        } else {
            Reading::Missing(format!("value is {v}"))
        }
    }
    pub fn value(&self) -> Option<f64> {
        match self {
            Reading::Value(v) => Some(*v),
            Reading::Missing(_) => None,
        }
    }
}

/// A custom signal's reading with its thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomReading {
    pub name: String,
    pub value: Reading,
    pub scale_up_above: Option<f64>,
    pub scale_down_below: Option<f64>,
}

/// Usage signals, cluster-wide, as Prometheus reports them (percentages 0–100).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu: Reading,
    pub memory: Reading,
    pub custom: Vec<CustomReading>,
}

/// A pod, as far as scaling cares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub requests: Resources,
    /// Owned by a DaemonSet: it runs on every node and never moves.
    pub daemonset: bool,
    /// A static pod's mirror: it cannot be evicted.
    pub mirror: bool,
    /// Annotated `cluster-autoscaler.kubernetes.io/safe-to-evict: "false"`.
    pub not_safe_to_evict: bool,
}

impl Pod {
    /// Pods that would have to be rescheduled elsewhere if their node went away.
    pub fn moves_with_drain(&self) -> bool {
        !self.daemonset && !self.mirror
    }
}

/// A Kubernetes node with its pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// EC2 instance id from `spec.providerID`, when the node is an EC2 instance.
    pub instance_id: Option<String>,
    pub ready: bool,
    /// Cordoned (`spec.unschedulable`) or tainted as draining: new pods cannot land here.
    pub unschedulable: bool,
    /// Has a NoSchedule/NoExecute taint (e.g. a control plane's): pods moved off another node
    /// are not assumed to tolerate it, so it never counts as room for them.
    pub tainted: bool,
    pub control_plane: bool,
    /// Annotated `smartscale.io/scale-down-disabled=true`.
    pub scale_down_disabled: bool,
    pub allocatable: Resources,
    pub pods: Vec<Pod>,
    /// Since when (unix seconds) the node has not been Ready, when it is not.
    #[serde(default)]
    pub not_ready_since: Option<i64>,
}

impl Node {
    pub fn requested(&self) -> Resources {
        self.pods
            .iter()
            .fold(Resources::ZERO, |acc, p| acc.plus(p.requests))
    }
    pub fn free(&self) -> Resources {
        self.allocatable.minus(self.requested())
    }
}

/// An instance's lifecycle as the Auto Scaling group reports it, reduced to what matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// `Pending`, `Pending:Wait`, `Pending:Proceed`.
    Launching,
    InService,
    /// Any `Terminating*` or `Terminated` state: already leaving.
    Terminating,
    /// Detached, standby, warm pool: not ours to count.
    Other,
}

/// An Auto Scaling group instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub lifecycle: Lifecycle,
    /// When the controller first saw it launching (unix seconds); rollback counts from here.
    pub first_seen: i64,
    /// It was a Ready node once: if it is NotReady now, it is broken, not booting — neither
    /// capacity in flight nor a rollback candidate (a cluster-wide fault must not make the
    /// controller replace the whole fleet).
    #[serde(default)]
    pub ever_ready: bool,
}

/// A worker Auto Scaling group as observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub asg_name: String,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    /// Allocatable of one node of this group (used to pack pending pods).
    pub node_allocatable: Resources,
    pub instances: Vec<Instance>,
    /// Why this group must not be scaled down now (no terminate hook, AZRebalance active, ...).
    #[serde(default)]
    pub scale_down_blocked: Option<String>,
    /// Why this group is in launch backoff (its launches failed or never came): its missing
    /// capacity is not counted as on its way, and scale-ups go to other groups.
    #[serde(default)]
    pub backoff: Option<String>,
}

/// Everything the policy looks at in one decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub usage: Usage,
    pub nodes: Vec<Node>,
    /// Pods the scheduler could not place (PodScheduled=False, reason Unschedulable).
    pub pending: Vec<Pod>,
    pub groups: Vec<Group>,
}

/// What the policy remembers between decisions (persisted in the state record).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Consecutive decisions with CPU above the scale-up threshold.
    pub high_cpu_checks: u32,
    /// Since when (unix seconds) the cluster has continuously qualified for a scale-down.
    pub low_since: Option<i64>,
    pub last_scale_up: Option<i64>,
    pub last_scale_down: Option<i64>,
    /// When a high-CPU check last counted.
    #[serde(default)]
    pub last_cpu_check: Option<i64>,
    /// When the policy removed a node, per group, within the disruption budget's window.
    #[serde(default)]
    pub removals: std::collections::BTreeMap<String, Vec<i64>>,
    /// The demand history and the forecast's score (recorded whether or not it is enabled).
    #[serde(default)]
    pub forecast: forecast::DemandHistory,
    /// Room the forecast keeps for a predicted rise.
    #[serde(default)]
    pub hold: Option<prewarm::Hold>,
}

/// At most this many of a group's nodes are removed by scale-down per `window` (the smaller of
/// `nodes` and `percent` of the group's desired capacity, rounded up, when both are set; no
/// limit when neither is). Rollbacks and replacements of broken nodes do not count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisruptionBudget {
    pub nodes: Option<u32>,
    pub percent: Option<f64>,
    pub window: Duration,
}

impl DisruptionBudget {
    /// Removals allowed per window in a group of `desired` nodes (`None`: unlimited).
    pub fn allowed(&self, desired: u32) -> Option<u32> {
        let by_percent = self
            .percent
            .map(|p| ((p / 100.0) * desired as f64).ceil().max(1.0) as u32);
        match (self.nodes, by_percent) {
            (Some(n), Some(p)) => Some(n.min(p)),
            (n, p) => n.or(p),
        }
    }
}

/// Policy knobs. Defaults: see `Default` and README "Policy".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyConfig {
    pub cpu_above: f64,
    pub cpu_checks: u32,
    pub memory_above: f64,
    /// Scale up for unschedulable pods.
    pub pending_pods: bool,
    /// Size scale-ups for pending pods by packing their requests (else the seed's +1/+2 only).
    pub pending_pods_binpack: bool,
    /// Whether the scale-up cooldown also delays scale-ups for pending pods (the seed's rule).
    pub cooldown_applies_to_pending: bool,
    pub cpu_below: f64,
    pub memory_below: f64,
    /// Also scale down when a node's pods fit on the others by requests and the usage predicted
    /// after removing it stays below the scale-up thresholds (usage thresholds alone leave
    /// well-packed clusters over-provisioned forever).
    pub consolidate: bool,
    pub sustained: Duration,
    pub after_scale_up: Duration,
    pub after_scale_down: Duration,
    pub max_node_provision_time: Duration,
    /// A node that was Ready and has been NotReady this long is replaced (its instance terminated
    /// through the terminate hook, desired capacity kept), while NotReady nodes are a minority.
    #[serde(default = "default_replace_unready_after")]
    pub replace_unready_after: Duration,
    /// A group whose launches fail (or never come within `max_node_provision_time`) backs off
    /// for `backoff_initial`, doubling up to `backoff_max` (cluster-autoscaler's 5 and 30 min).
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial: Duration,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: Duration,
    /// The controller's interval: CPU checks count at most once per interval, so the extra
    /// cycles of the pending-pod fast path cannot make "3 consecutive checks" pass in a second.
    #[serde(default = "default_check_interval")]
    pub check_interval: Duration,
    /// A node younger than this (since its instance was first seen launching) is not removed
    /// by scale-down: a node started for a burst serves the next burst instead of being
    /// consolidated away between them.
    #[serde(default = "default_consolidate_after")]
    pub consolidate_after: Duration,
    #[serde(default = "default_disruption_budget")]
    pub disruption_budget: DisruptionBudget,
    /// Predictive pre-warming (off by default; README "Forecast").
    #[serde(default)]
    pub forecast: forecast::ForecastConfig,
}

fn default_consolidate_after() -> Duration {
    Duration::from_secs(0)
}

fn default_disruption_budget() -> DisruptionBudget {
    DisruptionBudget {
        nodes: None,
        percent: None,
        window: Duration::from_secs(3600),
    }
}

fn default_check_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_replace_unready_after() -> Duration {
    Duration::from_secs(20 * 60)
}

fn default_backoff_initial() -> Duration {
    Duration::from_secs(5 * 60)
}

fn default_backoff_max() -> Duration {
    Duration::from_secs(30 * 60)
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            cpu_above: 70.0,
            cpu_checks: 3,
            memory_above: 75.0,
            pending_pods: true,
            pending_pods_binpack: true,
            cooldown_applies_to_pending: false,
            cpu_below: 30.0,
            memory_below: 50.0,
            consolidate: true,
            sustained: Duration::from_secs(600),
            after_scale_up: Duration::from_secs(300),
            after_scale_down: Duration::from_secs(0),
            max_node_provision_time: Duration::from_secs(900),
            replace_unready_after: default_replace_unready_after(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            check_interval: default_check_interval(),
            consolidate_after: default_consolidate_after(),
            disruption_budget: default_disruption_budget(),
            forecast: forecast::ForecastConfig::default(),
        }
    }
}

impl PolicyConfig {
    /// The rules exactly as the seed document wrote them (no bin-packing, no consolidation,
    /// cooldowns gate every scale-up, 10 minutes between scale-downs).
    pub fn seed() -> Self {
        PolicyConfig {
            pending_pods_binpack: false,
            cooldown_applies_to_pending: true,
            consolidate: false,
            after_scale_down: Duration::from_secs(600),
            ..PolicyConfig::default()
        }
    }
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    ScaleUp,
    ScaleDown,
    None,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ScaleUp => "scale_up",
            Action::ScaleDown => "scale_down",
            Action::None => "none",
        }
    }
}

/// The node chosen for removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Victim {
    pub node: String,
    pub instance_id: String,
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub action: Action,
    /// Index into `Observation::groups` of the group acted on (the first group when none).
    pub group: usize,
    pub from: u32,
    pub to: u32,
    pub victim: Option<Victim>,
    /// Instances that never became Ready nodes within `max_node_provision_time`: terminate them
    /// (keeping desired capacity, so the ASG replaces them).
    pub rollback: Vec<String>,
    /// Instances whose nodes were Ready once and have been NotReady past
    /// `replace_unready_after`: terminate them through the terminate hook, keeping desired
    /// capacity, so the ASG replaces them.
    #[serde(default)]
    pub replace: Vec<String>,
    /// Nodes still booting (capacity in flight), all groups.
    pub in_flight: u32,
    pub reasons: Vec<String>,
    /// Pending pods no new node of any group could take (`ns/name: why per group`), by the
    /// capacity model: never a reason to grow.
    #[serde(default)]
    pub unhelpable: Vec<String>,
}
