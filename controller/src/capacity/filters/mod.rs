//! One filter per concern, as the kube-scheduler's filter plugins: each file checks one thing
//! and says why a node fails it, in the scheduler's words. Filters that look at other pods
//! (inter-pod affinity, topology spread) precompute what they need once per pod
//! ([`prepare`], the scheduler's PreFilter), so checking a node is cheap.
//!
//! Order (kube-scheduler v1.34's default plugin order): NodeUnschedulable, TaintToleration,
//! NodeAffinity, NodePorts, NodeResourcesFit, VolumeBinding (+ VolumeZone), PodTopologySpread,
//! InterPodAffinity.

pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_ports;
pub mod node_unschedulable;
pub mod resources_fit;
pub mod taint_toleration;
pub mod topology_spread;
pub mod volume_binding;

use super::pod::PodSpec;
use super::snapshot::{NodeId, Snapshot};
use serde::{Serialize, Serializer};
use std::sync::Arc;

/// Why a node cannot take a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// NodeUnschedulable: cordoned and the pod does not tolerate it.
    Unschedulable,
    /// TaintToleration.
    Taint { key: String, value: String },
    /// NodeAffinity: `nodeSelector` or required node affinity.
    NodeAffinity,
    /// NodePorts.
    HostPorts,
    /// NodeResourcesFit: the resource that is short.
    Insufficient(String),
    /// NodeResourcesFit: the node's `pods` are used up.
    TooManyPods,
    /// VolumeBinding: a bound PV's node affinity excludes the node.
    VolumeNodeAffinity,
    /// VolumeZone: a bound PV's zone is not the node's.
    VolumeZone,
    /// VolumeBinding: no available PV and no provisioning on this node for a delayed claim.
    VolumeBind,
    /// VolumeBinding: a claim no node can satisfy now.
    VolumeUnbindable(String),
    /// PodTopologySpread: the node lacks a constraint's topology label.
    SpreadLabel,
    /// PodTopologySpread: placing the pod here would exceed `maxSkew`.
    SpreadSkew,
    /// InterPodAffinity: the pod's required affinity.
    Affinity,
    /// InterPodAffinity: the pod's required anti-affinity.
    AntiAffinity,
    /// InterPodAffinity: an existing pod's anti-affinity against this pod.
    ExistingAntiAffinity,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::Taint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::HostPorts => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::Insufficient(r) => write!(f, "Insufficient {r}"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::VolumeNodeAffinity => f.write_str("node(s) had volume node affinity conflict"),
            Reason::VolumeZone => f.write_str("node(s) had no available volume zone"),
            Reason::VolumeBind => {
                f.write_str("node(s) didn't find available persistent volumes to bind")
            }
            Reason::VolumeUnbindable(why) => write!(f, "volume: {why}"),
            Reason::SpreadLabel => f.write_str(
                "node(s) didn't match pod topology spread constraints (missing required label)",
            ),
            Reason::SpreadSkew => {
                f.write_str("node(s) didn't match pod topology spread constraints")
            }
            Reason::Affinity => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::AntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A pod with what the filters precomputed about it against one state of the snapshot.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub pod: Arc<PodSpec>,
    pub(crate) affinity: inter_pod_affinity::State,
    pub(crate) spread: topology_spread::State,
}

/// The scheduler's PreFilter for `pod`.
pub fn prepare(snap: &mut Snapshot, pod: &Arc<PodSpec>) -> Prepared {
    Prepared {
        pod: pod.clone(),
        affinity: inter_pod_affinity::prepare(snap, pod),
        spread: topology_spread::prepare(snap, pod),
    }
}

/// Every filter, first failure wins.
pub fn run(p: &Prepared, node: NodeId, snap: &Snapshot) -> Result<(), Reason> {
    let pod = &p.pod;
    node_unschedulable::check(pod, node, snap)?;
    taint_toleration::check(pod, node, snap)?;
    node_affinity::check(pod, node, snap)?;
    node_ports::check(pod, node, snap)?;
    resources_fit::check(pod, node, snap)?;
    volume_binding::check(pod, node, snap)?;
    topology_spread::check(p, node, snap)?;
    inter_pod_affinity::check(p, node, snap)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Small builders for the filters' tests.
    use super::super::node::NodeInfo;
    use super::super::pod::PodSpec;
    use super::super::snapshot::Snapshot;
    use super::super::volume::Catalog;
    use std::sync::Arc;

    pub const GI: i64 = 1 << 30;
    pub const ZONE: &str = "topology.kubernetes.io/zone";
    pub const HOST: &str = "kubernetes.io/hostname";

    pub fn node(name: &str, zone: &str) -> NodeInfo {
        NodeInfo::simple(name, 4000, 8 * GI, zone)
    }

    pub fn pod(name: &str, labels: &[(&str, &str)]) -> PodSpec {
        let mut p = PodSpec::simple("default", name, 100, 0);
        for (k, v) in labels {
            p.labels.insert(k.to_string(), v.to_string());
        }
        p
    }

    pub fn snapshot(nodes: Vec<NodeInfo>, pods: Vec<(PodSpec, &str)>) -> Snapshot {
        snapshot_with(nodes, pods, Catalog::default())
    }

    pub fn snapshot_with(
        nodes: Vec<NodeInfo>,
        pods: Vec<(PodSpec, &str)>,
        catalog: Catalog,
    ) -> Snapshot {
        let pods = pods
            .into_iter()
            .map(|(mut p, n)| {
                p.node_name = Some(n.to_string());
                Arc::new(p)
            })
            .collect();
        Snapshot::new(nodes, pods, Arc::new(catalog)).0
    }

    /// The names of the nodes `pod` may go on.
    pub fn fits(s: &mut Snapshot, pod: PodSpec) -> Vec<String> {
        let pod = Arc::new(pod);
        let prepared = s.prepare(&pod);
        s.live_nodes()
            .filter(|&n| super::run(&prepared, n, s).is_ok())
            .map(|n| s.node(n).name.clone())
            .collect()
    }
}
