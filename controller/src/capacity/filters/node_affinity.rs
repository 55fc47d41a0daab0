//! NodeAffinity: the pod's `nodeSelector` (every label equal) and its required node affinity
//! (`requiredDuringSchedulingIgnoredDuringExecution`: terms ORed, expressions ANDed, `matchFields`
//! on `metadata.name`).

use super::Reason;
use crate::capacity::node::NodeInfo;
use crate::capacity::pod::PodSpec;
use crate::capacity::snapshot::{NodeId, Snapshot};

/// `nodeaffinity.GetRequiredNodeAffinity(pod).Match(node)`.
pub fn matches(pod: &PodSpec, node: &NodeInfo) -> bool {
    pod.node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
        && pod
            .node_affinity
            .as_ref()
            .is_none_or(|a| a.matches(&node.labels, Some(&node.name)))
}

pub fn check(pod: &PodSpec, node: NodeId, snap: &Snapshot) -> Result<(), Reason> {
    if matches(pod, snap.node(node)) {
        Ok(())
    } else {
        Err(Reason::NodeAffinity)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::capacity::selector::NodeSelector;
    use serde_json::json;

    fn affinity(v: serde_json::Value) -> Option<NodeSelector> {
        Some(NodeSelector::from_k8s(&serde_json::from_value(v).unwrap()))
    }

    // https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#nodeselector and
    // #node-affinity: "If you specify both nodeSelector and nodeAffinity, both must be satisfied";
    // multiple nodeSelectorTerms are ORed, matchExpressions within a term ANDed; NotIn and
    // DoesNotExist give anti-affinity; Gt/Lt compare integers.
    #[test]
    fn selector_and_affinity_both_hold() {
        let mut a = node("a", "z1");
        a.labels.insert("pool".into(), "general".into());
        a.labels.insert("gen".into(), "6".into());
        let mut b = node("b", "z2");
        b.labels.insert("pool".into(), "general".into());
        b.labels.insert("gen".into(), "5".into());
        let mut c = node("c", "z1");
        c.labels.insert("pool".into(), "gpu".into());
        let mut s = snapshot(vec![a, b, c], vec![]);

        let mut p = pod("p", &[]);
        p.node_selector.insert("pool".into(), "general".into());
        assert_eq!(fits(&mut s, p.clone()), vec!["a", "b"]);
        p.node_affinity = affinity(json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["5"]}]},
            {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["z9"]}]}]}));
        assert_eq!(fits(&mut s, p.clone()), vec!["a"]);

        let mut q = pod("q", &[]);
        q.node_affinity = affinity(json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["gpu"]},
                                  {"key": ZONE, "operator": "Exists"}]}]}));
        assert_eq!(fits(&mut s, q), vec!["a", "b"]);

        // matchFields on metadata.name (what the DaemonSet controller uses).
        let mut r = pod("r", &[]);
        r.node_affinity = affinity(json!({"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["c"]}]}]}));
        assert_eq!(fits(&mut s, r), vec!["c"]);
        let err = s.check(&std::sync::Arc::new(p), 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node(s) didn't match Pod's node affinity/selector"
        );
    }
}
