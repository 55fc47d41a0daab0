//! VolumeBinding and VolumeZone: a bound PV's node affinity must match the node (checked on
//! labels only, as `volume.CheckNodeAffinity` does) and its zone labels must contain the node's
//! zone (skipped for nodes without zone labels); an unbound `WaitForFirstConsumer` claim needs
//! an available matching PV reachable from the node or a class that provisions in the node's
//! topology (`allowedTopologies`); a claim that cannot bind fails everywhere.

use super::Reason;
use crate::capacity::pod::PodSpec;
use crate::capacity::selector::topology_terms_match;
use crate::capacity::snapshot::{NodeId, Snapshot};
use crate::capacity::volume::{DelayedClaim, VolumeNeed, ZONE_LABELS};

/// The GA label VolumeZone also accepts for a beta one.
fn ga(label: &str) -> &str {
    match label {
        "failure-domain.beta.kubernetes.io/zone" => "topology.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region" => "topology.kubernetes.io/region",
        other => other,
    }
}

/// The available PV a delayed claim would bind on `node`, skipping `taken` (other claims of
/// the same pod) and PVs already taken in the snapshot. Smallest first, as `FindMatchingVolume`.
pub(crate) fn static_pv_for(
    d: &DelayedClaim,
    node: NodeId,
    snap: &Snapshot,
    taken: &[String],
) -> Option<String> {
    let labels = &snap.node(node).labels;
    snap.catalog
        .available(&d.class)
        .iter()
        .filter(|pv| !snap.claimed_pvs.contains(*pv) && !taken.contains(*pv))
        .filter_map(|pv| snap.catalog.pv(pv))
        .filter(|pv| d.accepts(pv))
        .filter(|pv| {
            pv.node_affinity
                .as_ref()
                .is_none_or(|a| a.matches(labels, None))
        })
        .min_by_key(|pv| (pv.capacity, pv.name.clone()))
        .map(|pv| pv.name.clone())
}

pub fn check(pod: &PodSpec, node: NodeId, snap: &Snapshot) -> Result<(), Reason> {
    let info = snap.node(node);
    let has_zone_labels = ZONE_LABELS.iter().any(|k| info.labels.contains_key(*k));
    let mut taken: Vec<String> = Vec::new();
    for v in &pod.volumes {
        match v {
            VolumeNeed::Unbindable { why, .. } => {
                return Err(Reason::VolumeUnbindable(why.clone()));
            }
            VolumeNeed::Bound {
                node_affinity,
                zones,
                ..
            } => {
                if node_affinity
                    .as_ref()
                    .is_some_and(|a| !a.matches(&info.labels, None))
                {
                    return Err(Reason::VolumeNodeAffinity);
                }
                if has_zone_labels
                    && zones.iter().any(|(k, allowed)| {
                        let v = info.labels.get(k).or_else(|| info.labels.get(ga(k)));
                        v.is_none_or(|v| !allowed.contains(v))
                    })
                {
                    return Err(Reason::VolumeZone);
                }
            }
            VolumeNeed::Delayed(d) => {
                if let Some(selected) = &d.selected_node {
                    if *selected != info.name {
                        return Err(Reason::VolumeBind);
                    }
                    continue;
                }
                if let Some(pv) = static_pv_for(d, node, snap, &taken) {
                    taken.push(pv);
                    continue;
                }
                match &d.provision {
                    Some(topologies) if topology_terms_match(topologies, &info.labels) => {}
                    _ => return Err(Reason::VolumeBind),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::capacity::pod::PodSpec;
    use crate::capacity::volume::Catalog;
    use serde_json::json;
    use std::sync::Arc;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn catalog() -> Catalog {
        let pvs = vec![
            from(json!({"metadata": {"name": "local-a"}, "spec": {
                "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                "local": {"path": "/d"}, "claimRef": {"namespace": "default", "name": "pinned"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": HOST, "operator": "In", "values": ["a"]}]}]}}}, "status": {"phase": "Bound"}})),
            from(
                json!({"metadata": {"name": "ebs-z2", "labels": {ZONE: "z2"}}, "spec": {
                "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "gp3",
                "claimRef": {"namespace": "default", "name": "zonal"}}, "status": {"phase": "Bound"}}),
            ),
            from(json!({"metadata": {"name": "free-b"}, "spec": {
                "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "static",
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": HOST, "operator": "In", "values": ["b"]}]}]}}}, "status": {"phase": "Available"}})),
        ];
        let claims = vec![
            from(
                json!({"metadata": {"name": "pinned", "namespace": "default"}, "spec": {"volumeName": "local-a"}}),
            ),
            from(
                json!({"metadata": {"name": "zonal", "namespace": "default"}, "spec": {"volumeName": "ebs-z2"}}),
            ),
            from(
                json!({"metadata": {"name": "wffc", "namespace": "default"}, "spec": {
                "storageClassName": "gp3-z1", "resources": {"requests": {"storage": "1Gi"}}}}),
            ),
            from(
                json!({"metadata": {"name": "static-1", "namespace": "default"}, "spec": {
                "storageClassName": "static", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
            ),
            from(
                json!({"metadata": {"name": "static-2", "namespace": "default"}, "spec": {
                "storageClassName": "static", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
            ),
            from(
                json!({"metadata": {"name": "immediate", "namespace": "default"}, "spec": {"storageClassName": "fast"}}),
            ),
            from(
                json!({"metadata": {"name": "chosen", "namespace": "default",
                "annotations": {"volume.kubernetes.io/selected-node": "c"}}, "spec": {"storageClassName": "gp3-z1"}}),
            ),
        ];
        let classes = vec![
            from(
                json!({"metadata": {"name": "gp3-z1"}, "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "WaitForFirstConsumer",
                "allowedTopologies": [{"matchLabelExpressions": [{"key": ZONE, "values": ["z1"]}]}]}),
            ),
            from(
                json!({"metadata": {"name": "static"}, "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"}),
            ),
            from(
                json!({"metadata": {"name": "fast"}, "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "Immediate"}),
            ),
        ];
        Catalog::new(&pvs, &claims, &classes, &[]).unwrap()
    }

    fn using(c: &Catalog, claims: &[&str]) -> PodSpec {
        let mut p = pod("p", &[]);
        p.volumes = claims
            .iter()
            .map(|cl| c.resolve("default", cl, None).unwrap())
            .collect();
        p
    }

    fn world() -> (crate::capacity::snapshot::Snapshot, Catalog) {
        let c = catalog();
        let mut nozone = node("nozone", "");
        nozone.labels.clear();
        let s = snapshot_with(
            vec![node("a", "z1"), node("b", "z1"), node("c", "z2"), nozone],
            vec![],
            c.clone(),
        );
        (s, c)
    }

    // https://kubernetes.io/docs/concepts/storage/volumes/#local: "the scheduler ensures that a
    // Pod using a local PersistentVolume is always scheduled to the same node".
    #[test]
    fn a_local_pv_pins_its_pod_to_one_node() {
        let (mut s, c) = world();
        assert_eq!(fits(&mut s, using(&c, &["pinned"])), vec!["a"]);
        let err = s.check(&Arc::new(using(&c, &["pinned"])), 1).unwrap_err();
        assert_eq!(err.to_string(), "node(s) had volume node affinity conflict");
    }

    // https://kubernetes.io/docs/reference/scheduling/config/#scheduling-plugins (VolumeZone:
    // "Checks if the node satisfies any zone requirements the volume has"); nodes without any
    // zone label pass, as in single-zone clusters.
    #[test]
    fn a_zonal_pv_keeps_its_pod_in_the_zone() {
        let (mut s, c) = world();
        assert_eq!(fits(&mut s, using(&c, &["zonal"])), vec!["c", "nozone"]);
        let err = s.check(&Arc::new(using(&c, &["zonal"])), 0).unwrap_err();
        assert_eq!(err.to_string(), "node(s) had no available volume zone");
    }

    // https://kubernetes.io/docs/concepts/storage/storage-classes/#volume-binding-mode and
    // #allowed-topologies: a WaitForFirstConsumer claim is provisioned where the pod lands,
    // within the class's allowedTopologies; a no-provisioner class needs an available PV the
    // node can reach, one per claim.
    #[test]
    fn delayed_claims_bind_where_the_pod_lands() {
        let (mut s, c) = world();
        assert_eq!(fits(&mut s, using(&c, &["wffc"])), vec!["a", "b"]);
        assert_eq!(fits(&mut s, using(&c, &["static-1"])), vec!["b"]);
        assert!(
            fits(&mut s, using(&c, &["static-1", "static-2"])).is_empty(),
            "one PV for two claims"
        );
        // A placement takes the PV: the next claim finds none.
        let first = Arc::new(using(&c, &["static-1"]));
        s.fork();
        let b = s.node_by_name("b").unwrap();
        s.bind(&first, b);
        assert!(fits(&mut s, using(&c, &["static-2"])).is_empty());
        s.revert();
        assert_eq!(fits(&mut s, using(&c, &["static-2"])), vec!["b"]);
        // Provisioning already started for node c.
        assert_eq!(fits(&mut s, using(&c, &["chosen"])), vec!["c"]);
    }

    // https://kubernetes.io/docs/concepts/storage/persistent-volumes/#binding: an unbound
    // Immediate claim waits for the control plane to bind it; no node helps meanwhile.
    #[test]
    fn claims_that_cannot_bind_fail_everywhere() {
        let (mut s, c) = world();
        for claim in ["immediate", "missing"] {
            assert!(fits(&mut s, using(&c, &[claim])).is_empty(), "{claim}");
        }
    }
}
