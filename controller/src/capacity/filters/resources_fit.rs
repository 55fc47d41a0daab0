//! NodeResourcesFit: the node's allocatable minus what its pods request must cover the pod's
//! requests, resource by resource (resources the pod does not request are not checked), and
//! the node must have a pod slot left.

use super::Reason;
use crate::capacity::pod::PodSpec;
use crate::capacity::snapshot::{NodeId, Snapshot};

pub fn check(pod: &PodSpec, node: NodeId, snap: &Snapshot) -> Result<(), Reason> {
    let n = &snap.nodes[node];
    let alloc = &n.info.allocatable;
    let used = &n.requested;
    let want = &pod.requests;
    if n.pod_count + 1 > alloc.pods {
        return Err(Reason::TooManyPods);
    }
    let short = |w: i64, a: i64, u: i64| w > 0 && w > a - u;
    if short(want.milli_cpu, alloc.milli_cpu, used.milli_cpu) {
        return Err(Reason::Insufficient("cpu".into()));
    }
    if short(want.memory, alloc.memory, used.memory) {
        return Err(Reason::Insufficient("memory".into()));
    }
    if short(
        want.ephemeral_storage,
        alloc.ephemeral_storage,
        used.ephemeral_storage,
    ) {
        return Err(Reason::Insufficient("ephemeral-storage".into()));
    }
    for (name, w) in &want.scalar {
        if short(*w, alloc.get(name), used.get(name)) {
            return Err(Reason::Insufficient(name.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use std::sync::Arc;

    // https://kubernetes.io/docs/concepts/configuration/manage-resources-containers/#how-pods-with-resource-requests-are-scheduled:
    // "the scheduler ensures that, for each resource type, the sum of the resource requests of
    // the scheduled containers is less than the capacity of the node"; extended resources are
    // checked the same way, and a node takes at most its allocatable `pods`.
    #[test]
    fn requests_must_fit_what_is_left() {
        let mut a = node("a", "z1");
        a.allocatable.milli_cpu = 2000;
        a.allocatable.pods = 2;
        let mut gpu = node("gpu", "z1");
        gpu.allocatable.scalar.insert("nvidia.com/gpu".into(), 1);
        let mut s = snapshot(vec![a, gpu], vec![(pod("x", &[]), "a")]);
        let mut p = pod("p", &[]);
        p.requests.milli_cpu = 1901;
        assert_eq!(
            fits(&mut s, p.clone()),
            vec!["gpu"],
            "100m already used on a"
        );
        p.requests.milli_cpu = 1900;
        assert_eq!(fits(&mut s, p.clone()), vec!["a", "gpu"]);
        p.requests.milli_cpu = 0;
        p.requests.memory = 9 * GI;
        assert_eq!(
            s.check(&Arc::new(p), 1).unwrap_err().to_string(),
            "Insufficient memory"
        );

        let mut g = pod("g", &[]);
        g.requests.scalar.insert("nvidia.com/gpu".into(), 1);
        assert_eq!(fits(&mut s, g.clone()), vec!["gpu"]);
        assert_eq!(
            s.check(&Arc::new(g), 0).unwrap_err().to_string(),
            "Insufficient nvidia.com/gpu"
        );

        let mut storage = pod("e", &[]);
        storage.requests.ephemeral_storage = 21 * GI;
        assert!(fits(&mut s, storage).is_empty());

        s.add_pod(Arc::new(pod("y", &[])), 0);
        assert_eq!(
            s.check(&Arc::new(pod("z", &[])), 0)
                .unwrap_err()
                .to_string(),
            "Too many pods"
        );
    }
}
