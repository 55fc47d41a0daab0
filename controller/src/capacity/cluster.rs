//! From API objects to the model: the snapshot of bound pods on nodes, the pending pods,
//! PodDisruptionBudgets and DaemonSets, all by pure functions of what the watches hold.

use super::node::{DaemonSetSpec, GroupSpec, NodeInfo, NodeTemplate};
use super::pod::{self, PodSpec};
use super::selector::Selector;
use super::snapshot::Snapshot;
use super::volume::Catalog;
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use serde::Serialize;
use std::sync::Arc;

/// What the controller's watches hold (every list may be empty).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterObjects<'a> {
    pub nodes: &'a [Node],
    pub pods: &'a [Pod],
    pub pvs: &'a [PersistentVolume],
    pub pvcs: &'a [PersistentVolumeClaim],
    pub storage_classes: &'a [StorageClass],
    pub pdbs: &'a [PodDisruptionBudget],
    pub daemonsets: &'a [DaemonSet],
    pub namespaces: &'a [Namespace],
}

/// A PodDisruptionBudget: which pods it covers and how many may go now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pdb {
    pub namespace: String,
    pub name: String,
    pub selector: Selector,
    pub disruptions_allowed: i32,
}

impl Pdb {
    pub fn from_k8s(b: &PodDisruptionBudget) -> Result<Pdb> {
        let namespace = b
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = b.metadata.name.clone().unwrap_or_default();
        Ok(Pdb {
            selector: Selector::from_k8s(b.spec.as_ref().and_then(|s| s.selector.as_ref()))
                .map_err(|e| Error::Capacity(format!("pdb {namespace}/{name}: {e}")))?,
            disruptions_allowed: b.status.as_ref().map_or(0, |s| s.disruptions_allowed),
            namespace,
            name,
        })
    }

    pub fn covers(&self, pod: &PodSpec) -> bool {
        pod.namespace == self.namespace && self.selector.matches(&pod.labels)
    }
}

/// The model of the cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub snapshot: Snapshot,
    /// Pods the scheduler gave up on (`PodScheduled=False`, `Unschedulable`), default
    /// scheduler only, in the order listed.
    pub pending: Vec<Arc<PodSpec>>,
    pub pdbs: Vec<Pdb>,
    pub daemonsets: Vec<DaemonSetSpec>,
    /// Pending pods that could not be read (`ns/name`, why): reported, never a reason to grow.
    pub unreadable: Vec<(String, String)>,
}

fn default_scheduler(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|n| n == "default-scheduler")
}

impl Cluster {
    /// Builds the model. Fails on a node or bound pod it cannot read (a model missing what
    /// a node runs would see free space that is not there); pending pods that cannot be read
    /// are listed in `unreadable`.
    pub fn from_objects(o: &ClusterObjects) -> Result<Cluster> {
        let catalog = Catalog::new(o.pvs, o.pvcs, o.storage_classes, o.namespaces)?;
        let nodes = o
            .nodes
            .iter()
            .map(NodeInfo::from_node)
            .collect::<Result<Vec<_>>>()?;
        let mut bound = Vec::new();
        let mut pending = Vec::new();
        let mut unreadable = Vec::new();
        for p in o.pods {
            if pod::is_terminal(p) {
                continue;
            }
            let is_bound = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty());
            if is_bound {
                bound.push(Arc::new(PodSpec::from_pod(p, &catalog)?));
            } else if pod::is_unschedulable(p) && default_scheduler(p) {
                match PodSpec::from_pod(p, &catalog) {
                    Ok(spec) => pending.push(Arc::new(spec)),
                    Err(e) => unreadable.push((
                        format!(
                            "{}/{}",
                            p.metadata.namespace.as_deref().unwrap_or("default"),
                            p.metadata.name.as_deref().unwrap_or("")
                        ),
                        e.to_string(),
                    )),
                }
            }
        }
        let daemonsets = o
            .daemonsets
            .iter()
            .map(|d| DaemonSetSpec::from_daemonset(d, &catalog))
            .collect::<Result<Vec<_>>>()?;
        let pdbs = o
            .pdbs
            .iter()
            .map(Pdb::from_k8s)
            .collect::<Result<Vec<_>>>()?;
        // Pods bound to a Node that no longer exists hold nothing the scheduler sees.
        let (snapshot, _orphans) = Snapshot::new(nodes, bound, Arc::new(catalog));
        Ok(Cluster {
            snapshot,
            pending,
            pdbs,
            daemonsets,
            unreadable,
        })
    }

    /// The template of `group`, copied from its Ready node(s) `members` when there is one.
    pub fn template(&self, group: &GroupSpec, members: &[&str]) -> Result<NodeTemplate> {
        let s = &self.snapshot;
        let ready: Vec<(&NodeInfo, Vec<Arc<PodSpec>>)> = members
            .iter()
            .filter_map(|m| s.node_by_name(m))
            .filter(|&id| s.node(id).ready && !s.node(id).unschedulable)
            .map(|id| (s.node(id), s.pods_on(id).cloned().collect()))
            .collect();
        NodeTemplate::for_group(group, &ready, &self.daemonsets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn objects_become_the_model() {
        let nodes: Vec<Node> = vec![from(
            json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}),
        )];
        let pods: Vec<Pod> = vec![
            from(json!({"metadata": {"name": "a", "namespace": "default"},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]},
                "status": {"phase": "Running"}})),
            from(json!({"metadata": {"name": "done", "namespace": "default"},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]},
                "status": {"phase": "Succeeded"}})),
            from(json!({"metadata": {"name": "wait", "namespace": "default"},
                "spec": {"containers": [{"name": "c"}]},
                "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}})),
            from(
                json!({"metadata": {"name": "other", "namespace": "default"},
                "spec": {"schedulerName": "volcano", "containers": [{"name": "c"}]},
                "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}}),
            ),
            from(json!({"metadata": {"name": "bad", "namespace": "default"},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "x"}}}]},
                "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}})),
        ];
        let pdbs: Vec<PodDisruptionBudget> = vec![from(
            json!({"metadata": {"name": "b", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}}, "status": {"disruptionsAllowed": 1,
            "currentHealthy": 2, "desiredHealthy": 1, "expectedPods": 2}}),
        )];
        let c = Cluster::from_objects(&ClusterObjects {
            nodes: &nodes,
            pods: &pods,
            pdbs: &pdbs,
            ..Default::default()
        })
        .unwrap();
        let n1 = c.snapshot.node_by_name("n1").unwrap();
        assert_eq!(
            c.snapshot.requested(n1).milli_cpu,
            500,
            "terminal pods do not count"
        );
        assert_eq!(c.pending.len(), 1);
        assert_eq!(c.pending[0].name, "wait");
        assert_eq!(c.unreadable.len(), 1);
        assert_eq!(c.pdbs[0].disruptions_allowed, 1);
    }
}
