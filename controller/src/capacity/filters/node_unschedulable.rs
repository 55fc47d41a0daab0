//! NodeUnschedulable: a cordoned node (`spec.unschedulable`) takes only pods that tolerate
//! `node.kubernetes.io/unschedulable:NoSchedule`.

use super::Reason;
use crate::capacity::pod::PodSpec;
use crate::capacity::selector::Taint;
use crate::capacity::snapshot::{NodeId, Snapshot};

pub fn check(pod: &PodSpec, node: NodeId, snap: &Snapshot) -> Result<(), Reason> {
    if !snap.node(node).unschedulable {
        return Ok(());
    }
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        value: String::new(),
        effect: "NoSchedule".into(),
    };
    if pod.tolerations.iter().any(|t| t.tolerates(&taint)) {
        Ok(())
    } else {
        Err(Reason::Unschedulable)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::capacity::selector::Toleration;

    // https://kubernetes.io/docs/reference/scheduling/config/#scheduling-plugins
    // (NodeUnschedulable: "Filters out nodes that have .spec.unschedulable set to true") and
    // https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/#taint-nodes-by-condition:
    // a pod tolerating node.kubernetes.io/unschedulable still goes there.
    #[test]
    fn cordoned_nodes_take_only_tolerating_pods() {
        let mut cordoned = node("a", "z1");
        cordoned.unschedulable = true;
        let mut s = snapshot(vec![cordoned, node("b", "z1")], vec![]);
        assert_eq!(fits(&mut s, pod("p", &[])), vec!["b"]);
        let mut tolerant = pod("t", &[]);
        tolerant.tolerations.push(Toleration::exists(
            "node.kubernetes.io/unschedulable",
            "NoSchedule",
        ));
        assert_eq!(fits(&mut s, tolerant), vec!["a", "b"]);
    }
}
