//! OpenMetrics exported on `GET /metrics` (names in docs/interfaces.md; the dashboards use them).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub action: String,
    pub node_group: String,
    pub dry_run: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node_group: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub node_group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub node_group: String,
    pub transition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeInfoLabels {
    pub node: String,
    pub instance_id: String,
    pub instance_type: String,
    pub capacity_type: String,
    pub zone: String,
    pub node_group: String,
}

/// One worker node's hourly cost, with where its price came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeCostLabels {
    pub node: String,
    pub instance_id: String,
    pub instance_type: String,
    pub capacity_type: String,
    pub zone: String,
    pub node_group: String,
    /// `price_list`, `spot_price_history`, `group_price` or `none`.
    pub price_source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub service: String,
    pub operation: String,
}

/// Counts AWS API calls by operation (cost and rate-limit visibility; the steady-state budget
/// is ≤ 2 per cycle).
#[derive(Clone, Default)]
pub struct AwsCalls(pub Family<CallLabels, Counter>);

impl AwsCalls {
    pub fn count(&self, service: &str, operation: &str) {
        self.0
            .get_or_create(&CallLabels {
                service: service.to_string(),
                operation: operation.to_string(),
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriceLabels {
    pub node_group: String,
    pub instance_type: String,
    pub capacity_type: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub nodes: Family<NodeLabels, Gauge>,
    pub pending_pods: Gauge,
    pub signal_value: Family<SignalLabels, FloatGauge>,
    pub cycle_duration: Histogram,
    pub errors: Family<KindLabels, Counter>,
    pub lease_held: Family<ReplicaLabels, Gauge>,
    pub fencing_token: Gauge,
    pub hourly_cost: Family<GroupLabels, FloatGauge>,
    pub node_info: Family<NodeInfoLabels, Gauge>,
    pub node_price: Family<PriceLabels, FloatGauge>,
    pub node_cost: Family<NodeCostLabels, FloatGauge>,
    pub aws_calls: AwsCalls,
    /// Problems blocking a group's scale-down (no terminate hook, AZRebalance active, ...).
    pub group_problems: Family<GroupLabels, Gauge>,
    /// 1 while a group is in launch backoff.
    pub group_backoff: Family<GroupLabels, Gauge>,
    /// Unschedulable pods no node of any group could take (never a reason to grow).
    pub unhelpable_pods: Gauge,
    /// Launches that ended while their launch lifecycle action waited (it timed out, or the
    /// agent abandoned it): the instance never served. `transition` is `launching`.
    pub lifecycle_timeouts: Family<TransitionLabels, Counter>,
    pub ghost_nodes_deleted: Counter,
    /// Last lease check → an Auto Scaling write handed to the network.
    pub fence_window: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("smartscale");
        let m = Metrics {
            decisions: Family::default(),
            nodes: Family::default(),
            pending_pods: Gauge::default(),
            signal_value: Family::default(),
            cycle_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            errors: Family::default(),
            lease_held: Family::default(),
            fencing_token: Gauge::default(),
            hourly_cost: Family::default(),
            node_info: Family::default(),
            node_price: Family::default(),
            node_cost: Family::default(),
            aws_calls: AwsCalls::default(),
            group_problems: Family::default(),
            group_backoff: Family::default(),
            unhelpable_pods: Gauge::default(),
            lifecycle_timeouts: Family::default(),
            ghost_nodes_deleted: Counter::default(),
            fence_window: Histogram::new(exponential_buckets(0.000_01, 4.0, 10)),
            registry: Registry::default(),
        };
        r.register(
            "decisions",
            "Scaling decisions by action",
            m.decisions.clone(),
        );
        r.register(
            "nodes",
            "Nodes per group: current, desired, ready, in_flight",
            m.nodes.clone(),
        );
        r.register(
            "pending_pods",
            "Unschedulable pending pods",
            m.pending_pods.clone(),
        );
        r.register(
            "signal_value",
            "Last value of each signal",
            m.signal_value.clone(),
        );
        r.register(
            "cycle_duration_seconds",
            "Duration of one control cycle",
            m.cycle_duration.clone(),
        );
        r.register("errors", "Errors by kind", m.errors.clone());
        r.register(
            "lease_held",
            "1 when this replica holds the lease",
            m.lease_held.clone(),
        );
        r.register(
            "fencing_token",
            "Fencing token of the lease we hold",
            m.fencing_token.clone(),
        );
        r.register(
            "estimated_hourly_cost_dollars",
            "The group's live instances (booting ones too: they are billed) at their prices",
            m.hourly_cost.clone(),
        );
        r.register(
            "node_info",
            "One per worker node, with its attributes",
            m.node_info.clone(),
        );
        r.register(
            "node_hourly_price_dollars",
            "Hourly price of one node of a group by type and lifecycle (looked up, else configured); on-demand for every type seen, the static-fleet baseline",
            m.node_price.clone(),
        );
        r.register(
            "node_hourly_cost_dollars",
            "Hourly price of each worker node: its type's on-demand price, or the spot price of its zone",
            m.node_cost.clone(),
        );
        r.register(
            "aws_calls",
            "AWS API calls by operation",
            m.aws_calls.0.clone(),
        );
        r.register(
            "group_scale_down_blocked",
            "Problems that block a group's scale-down (see /status)",
            m.group_problems.clone(),
        );
        r.register(
            "node_group_backoff",
            "1 while a group is in launch backoff (its launches failed or never came)",
            m.group_backoff.clone(),
        );
        r.register(
            "unhelpable_pods",
            "Unschedulable pods that no node of any group could take",
            m.unhelpable_pods.clone(),
        );
        r.register(
            "lifecycle_action_timeouts",
            "Launches that ended in Pending:Wait (the launch action timed out, was abandoned or rolled back)",
            m.lifecycle_timeouts.clone(),
        );
        r.register(
            "fence_window_seconds",
            "Time from the last lease check to an Auto Scaling write leaving the process (AWS calls carry no fencing token)",
            m.fence_window.clone(),
        );
        r.register(
            "ghost_nodes_deleted",
            "Nodes deleted because EC2 said their instance was gone",
            m.ghost_nodes_deleted.clone(),
        );
        Metrics { registry: r, ..m }
    }

    pub fn group_problems(&self, group: &str, problems: usize) {
        self.group_problems
            .get_or_create(&GroupLabels {
                node_group: group.to_string(),
            })
            .set(problems as i64);
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
