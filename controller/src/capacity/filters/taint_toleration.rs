//! TaintToleration: every NoSchedule and NoExecute taint of the node must be tolerated;
//! PreferNoSchedule only affects scoring.

use super::Reason;
use crate::capacity::pod::PodSpec;
use crate::capacity::selector::untolerated;
use crate::capacity::snapshot::{NodeId, Snapshot};

pub fn check(pod: &PodSpec, node: NodeId, snap: &Snapshot) -> Result<(), Reason> {
    match untolerated(&snap.node(node).taints, &pod.tolerations) {
        None => Ok(()),
        Some(t) => Err(Reason::Taint {
            key: t.key.clone(),
            value: t.value.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::capacity::selector::{Taint, Toleration};

    // https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/: NoSchedule
    // and NoExecute keep pods without a matching toleration off; PreferNoSchedule does not;
    // an Exists toleration with an empty key tolerates every taint.
    #[test]
    fn hard_taints_need_a_toleration() {
        let mut gpu = node("gpu", "z1");
        gpu.taints
            .push(Taint::parse("nvidia.com/gpu", "true:NoSchedule").unwrap());
        let mut soft = node("soft", "z1");
        soft.taints
            .push(Taint::parse("spot", "true:PreferNoSchedule").unwrap());
        let mut evicting = node("evict", "z1");
        evicting
            .taints
            .push(Taint::parse("maintenance", ":NoExecute").unwrap());
        let mut s = snapshot(vec![gpu, soft, evicting], vec![]);
        assert_eq!(fits(&mut s, pod("p", &[])), vec!["soft"]);

        let mut tolerant = pod("t", &[]);
        tolerant.tolerations.push(Toleration {
            key: "nvidia.com/gpu".into(),
            operator: "Equal".into(),
            value: "true".into(),
            effect: "NoSchedule".into(),
        });
        assert_eq!(fits(&mut s, tolerant), vec!["gpu", "soft"]);

        let mut all = pod("all", &[]);
        all.tolerations.push(Toleration::exists("", ""));
        assert_eq!(fits(&mut s, all).len(), 3);

        let mut wrong_value = pod("w", &[]);
        wrong_value.tolerations.push(Toleration {
            key: "nvidia.com/gpu".into(),
            operator: "Equal".into(),
            value: "false".into(),
            effect: String::new(),
        });
        let err = s.check(&std::sync::Arc::new(wrong_value), 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node(s) had untolerated taint {nvidia.com/gpu: true}"
        );
    }
}
