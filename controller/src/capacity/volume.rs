//! What a pod's volumes demand of a node, resolved from its PersistentVolumeClaims, their
//! PersistentVolumes and StorageClasses as the VolumeBinding and VolumeZone plugins read them.

use super::selector::{Labels, NodeSelector, Selector};
use crate::Result;
use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub const HOSTNAME: &str = "kubernetes.io/hostname";
pub const ZONE: &str = "topology.kubernetes.io/zone";
pub const REGION: &str = "topology.kubernetes.io/region";
const BETA_ZONE: &str = "failure-domain.beta.kubernetes.io/zone";
const BETA_REGION: &str = "failure-domain.beta.kubernetes.io/region";
/// The labels VolumeZone compares (`volumezone.topologyLabels`).
pub const ZONE_LABELS: [&str; 4] = [BETA_ZONE, ZONE, BETA_REGION, REGION];
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// A volume requirement of a pod, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum VolumeNeed {
    /// The claim is bound (or pre-bound) to `pv`: the node must satisfy the PV's node affinity
    /// (VolumeBinding) and zone labels (VolumeZone).
    Bound {
        claim: String,
        pv: String,
        node_affinity: Option<NodeSelector>,
        /// `(label, allowed values)` from the PV's zone/region labels.
        zones: Vec<(String, BTreeSet<String>)>,
        /// A `local`/`hostPath` volume or one pinned to hostnames: the data lives on one node.
        node_local: bool,
    },
    /// An unbound claim of a `WaitForFirstConsumer` class: bound when the pod is scheduled, to
    /// an available PV the node can reach or to a volume provisioned in the node's topology.
    Delayed(DelayedClaim),
    /// A claim that no node can satisfy now (missing, being deleted, an unbound claim of an
    /// `Immediate` class or of no class, a PV that does not exist).
    Unbindable { claim: String, why: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct DelayedClaim {
    pub claim: String,
    pub namespace: String,
    pub class: String,
    pub request: i64,
    pub access_modes: BTreeSet<String>,
    pub volume_mode: String,
    pub selector: Option<Selector>,
    /// `volume.kubernetes.io/selected-node`: provisioning already started for that node.
    pub selected_node: Option<String>,
    /// The class's `allowedTopologies` when it can provision; `None` when it cannot
    /// (`kubernetes.io/no-provisioner`): only an existing available PV will do.
    pub provision: Option<Vec<BTreeMap<String, BTreeSet<String>>>>,
}

/// A PersistentVolume as the binder matches it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PvInfo {
    pub name: String,
    pub class: String,
    pub capacity: i64,
    pub access_modes: BTreeSet<String>,
    pub volume_mode: String,
    pub labels: Labels,
    pub node_affinity: Option<NodeSelector>,
    /// `namespace/name` of the claim it is bound or pre-bound to.
    pub claim_ref: Option<String>,
    pub available: bool,
    pub node_local: bool,
}

#[derive(Debug, Clone)]
struct ClassInfo {
    provisioner: String,
    wait_for_first_consumer: bool,
    allowed_topologies: Vec<BTreeMap<String, BTreeSet<String>>>,
}

/// PVs, claims, classes and namespaces, indexed: what pod conversion and the volume filter look up.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    claims: HashMap<String, PersistentVolumeClaim>,
    pvs: HashMap<String, PvInfo>,
    classes: HashMap<String, ClassInfo>,
    default_class: Option<String>,
    /// Available PVs (no claim, phase Available), by class, for WaitForFirstConsumer claims.
    available: BTreeMap<String, Vec<String>>,
    namespaces: BTreeMap<String, Labels>,
}

fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

fn storage(
    spec_requests: Option<
        &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
) -> Result<i64> {
    match spec_requests.and_then(|r| r.get("storage")) {
        Some(q) => super::quantity::units(&q.0),
        None => Ok(0),
    }
}

fn zones_of(labels: &Labels) -> Vec<(String, BTreeSet<String>)> {
    ZONE_LABELS
        .iter()
        .filter_map(|k| {
            labels
                .get(*k)
                .map(|v| (k.to_string(), v.split("__").map(str::to_string).collect()))
        })
        .collect()
}

impl Catalog {
    pub fn new(
        pvs: &[PersistentVolume],
        claims: &[PersistentVolumeClaim],
        classes: &[StorageClass],
        namespaces: &[Namespace],
    ) -> Result<Catalog> {
        let mut c = Catalog::default();
        for sc in classes {
            let Some(name) = sc.metadata.name.clone() else {
                continue;
            };
            let annotations = sc.metadata.annotations.clone().unwrap_or_default();
            if annotations.get(DEFAULT_CLASS).map(String::as_str) == Some("true") {
                c.default_class = Some(name.clone());
            }
            let allowed_topologies = sc
                .allowed_topologies
                .iter()
                .flatten()
                .map(|t| {
                    t.match_label_expressions
                        .iter()
                        .flatten()
                        .map(|e| (e.key.clone(), e.values.iter().cloned().collect()))
                        .collect()
                })
                .collect();
            c.classes.insert(
                name,
                ClassInfo {
                    provisioner: sc.provisioner.clone(),
                    wait_for_first_consumer: sc.volume_binding_mode.as_deref()
                        == Some("WaitForFirstConsumer"),
                    allowed_topologies,
                },
            );
        }
        for pv in pvs {
            let Some(name) = pv.metadata.name.clone() else {
                continue;
            };
            let spec = pv.spec.clone().unwrap_or_default();
            let labels = pv.metadata.labels.clone().unwrap_or_default();
            let annotations = pv.metadata.annotations.clone().unwrap_or_default();
            let class = annotations
                .get(BETA_CLASS)
                .cloned()
                .or(spec.storage_class_name.clone())
                .unwrap_or_default();
            let node_affinity = spec
                .node_affinity
                .as_ref()
                .and_then(|a| a.required.as_ref())
                .map(NodeSelector::from_k8s);
            let pinned = node_affinity.as_ref().is_some_and(|ns| {
                !ns.terms.is_empty()
                    && ns.terms.iter().all(|t| {
                        t.exprs.iter().any(|e| {
                            e.key == HOSTNAME && matches!(e.op, super::selector::NodeOp::In(_))
                        })
                    })
            });
            let claim_ref = spec.claim_ref.as_ref().and_then(|r| {
                Some(key(
                    r.namespace.as_deref().unwrap_or("default"),
                    r.name.as_deref()?,
                ))
            });
            let phase = pv.status.as_ref().and_then(|s| s.phase.clone());
            let info = PvInfo {
                name: name.clone(),
                class: class.clone(),
                capacity: storage(spec.capacity.as_ref())?,
                access_modes: spec.access_modes.iter().flatten().cloned().collect(),
                volume_mode: spec
                    .volume_mode
                    .clone()
                    .unwrap_or_else(|| "Filesystem".into()),
                labels,
                node_affinity,
                available: claim_ref.is_none()
                    && phase.as_deref() == Some("Available")
                    && pv.metadata.deletion_timestamp.is_none(),
                claim_ref,
                node_local: spec.local.is_some() || spec.host_path.is_some() || pinned,
            };
            if info.available {
                c.available.entry(class).or_default().push(name.clone());
            }
            c.pvs.insert(name, info);
        }
        for claim in claims {
            if let Some(name) = &claim.metadata.name {
                let ns = claim.metadata.namespace.as_deref().unwrap_or("default");
                c.claims.insert(key(ns, name), claim.clone());
            }
        }
        for ns in namespaces {
            if let Some(name) = &ns.metadata.name {
                c.namespaces
                    .insert(name.clone(), ns.metadata.labels.clone().unwrap_or_default());
            }
        }
        Ok(c)
    }

    pub fn pv(&self, name: &str) -> Option<&PvInfo> {
        self.pvs.get(name)
    }

    /// Available PVs of a class, by name.
    pub fn available(&self, class: &str) -> &[String] {
        self.available.get(class).map_or(&[], Vec::as_slice)
    }

    /// Namespaces whose labels match `sel` (a pod affinity term's `namespaceSelector`).
    pub fn namespaces_matching(&self, sel: &Selector) -> BTreeSet<String> {
        self.namespaces
            .iter()
            .filter(|(_, labels)| sel.matches(labels))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Resolves the claim `name` of a pod in `namespace`. `template` is the claim spec of a
    /// generic ephemeral volume, used while its claim does not exist yet.
    pub fn resolve(
        &self,
        namespace: &str,
        name: &str,
        template: Option<&PersistentVolumeClaimSpec>,
    ) -> Result<VolumeNeed> {
        let claim_key = key(namespace, name);
        let unbindable = |why: String| {
            Ok(VolumeNeed::Unbindable {
                claim: claim_key.clone(),
                why,
            })
        };
        let (spec, annotations) = match (self.claims.get(&claim_key), template) {
            (Some(c), _) => {
                if c.metadata.deletion_timestamp.is_some() {
                    return unbindable(format!("persistentvolumeclaim {name:?} is being deleted"));
                }
                (
                    c.spec.clone().unwrap_or_default(),
                    c.metadata.annotations.clone().unwrap_or_default(),
                )
            }
            (None, Some(t)) => {
                let mut spec = t.clone();
                if spec.storage_class_name.is_none() {
                    spec.storage_class_name = self.default_class.clone();
                }
                (spec, BTreeMap::new())
            }
            (None, None) => return unbindable(format!("persistentvolumeclaim {name:?} not found")),
        };
        if let Some(pv_name) = spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
            let Some(pv) = self.pvs.get(pv_name) else {
                return unbindable(format!(
                    "persistentvolumeclaim {name:?} is bound to persistentvolume {pv_name:?}, which does not exist"
                ));
            };
            return Ok(VolumeNeed::Bound {
                claim: claim_key,
                pv: pv_name.to_string(),
                node_affinity: pv.node_affinity.clone(),
                zones: zones_of(&pv.labels),
                node_local: pv.node_local,
            });
        }
        let class = annotations
            .get(BETA_CLASS)
            .cloned()
            .or(spec.storage_class_name.clone())
            .unwrap_or_default();
        if class.is_empty() {
            return unbindable(format!(
                "persistentvolumeclaim {name:?} is unbound and has no storage class: only the PV controller binding a matching PV can help"
            ));
        }
        let Some(sc) = self.classes.get(&class) else {
            return unbindable(format!(
                "storageclass {class:?} of persistentvolumeclaim {name:?} not found"
            ));
        };
        if !sc.wait_for_first_consumer {
            return unbindable(format!(
                "persistentvolumeclaim {name:?} is unbound and its class {class:?} binds Immediately: it waits for the PV controller or provisioner, not for a node"
            ));
        }
        let provision = (!sc.provisioner.is_empty() && sc.provisioner != NO_PROVISIONER)
            .then(|| sc.allowed_topologies.clone());
        Ok(VolumeNeed::Delayed(DelayedClaim {
            claim: claim_key,
            namespace: namespace.to_string(),
            class,
            request: storage(spec.resources.as_ref().and_then(|r| r.requests.as_ref()))?,
            access_modes: spec.access_modes.iter().flatten().cloned().collect(),
            volume_mode: spec
                .volume_mode
                .clone()
                .unwrap_or_else(|| "Filesystem".into()),
            selector: spec
                .selector
                .as_ref()
                .map(|s| Selector::from_k8s(Some(s)))
                .transpose()?,
            selected_node: annotations.get(SELECTED_NODE).cloned(),
            provision,
        }))
    }
}

impl DelayedClaim {
    /// `FindMatchingVolume`'s test of one PV for this claim (node affinity checked by the caller).
    pub fn accepts(&self, pv: &PvInfo) -> bool {
        if let Some(r) = &pv.claim_ref {
            return *r == self.claim;
        }
        pv.available
            && pv.class == self.class
            && pv.capacity >= self.request
            && pv.volume_mode == self.volume_mode
            && self.access_modes.is_subset(&pv.access_modes)
            && self.selector.as_ref().is_none_or(|s| s.matches(&pv.labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn catalog() -> Catalog {
        let pvs: Vec<PersistentVolume> = vec![
            from(json!({"metadata": {"name": "local-1"}, "spec": {
                "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                "local": {"path": "/d"}, "claimRef": {"namespace": "db", "name": "data-0"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": HOSTNAME, "operator": "In", "values": ["n1"]}]}]}}},
                "status": {"phase": "Bound"}})),
            from(
                json!({"metadata": {"name": "ebs-1", "labels": {ZONE: "us-east-1a"}}, "spec": {
                "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "gp3",
                "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"}},
                "status": {"phase": "Bound"}}),
            ),
            from(json!({"metadata": {"name": "free-1"}, "spec": {
                "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "static"},
                "status": {"phase": "Available"}})),
        ];
        let claims: Vec<PersistentVolumeClaim> = vec![
            from(json!({"metadata": {"name": "data-0", "namespace": "db"},
                "spec": {"volumeName": "local-1", "storageClassName": "local"}})),
            from(json!({"metadata": {"name": "data-1", "namespace": "db"},
                "spec": {"volumeName": "ebs-1"}})),
            from(json!({"metadata": {"name": "wait", "namespace": "db"},
                "spec": {"storageClassName": "gp3", "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}}})),
            from(json!({"metadata": {"name": "now", "namespace": "db"},
                "spec": {"storageClassName": "fast"}})),
            from(json!({"metadata": {"name": "classless", "namespace": "db"}, "spec": {}})),
            from(json!({"metadata": {"name": "static", "namespace": "db"},
                "spec": {"storageClassName": "static", "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}}})),
        ];
        let classes: Vec<StorageClass> = vec![
            from(
                json!({"metadata": {"name": "gp3", "annotations": {DEFAULT_CLASS: "true"}},
                "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "WaitForFirstConsumer",
                "allowedTopologies": [{"matchLabelExpressions": [{"key": ZONE, "values": ["us-east-1a", "us-east-1b"]}]}]}),
            ),
            from(
                json!({"metadata": {"name": "fast"}, "provisioner": "ebs.csi.aws.com",
                "volumeBindingMode": "Immediate"}),
            ),
            from(
                json!({"metadata": {"name": "static"}, "provisioner": NO_PROVISIONER,
                "volumeBindingMode": "WaitForFirstConsumer"}),
            ),
        ];
        Catalog::new(&pvs, &claims, &classes, &[]).unwrap()
    }

    // https://kubernetes.io/docs/concepts/storage/volumes/#local: a local PV's node affinity
    // pins its pods to one node; https://kubernetes.io/docs/reference/labels-annotations-taints/#topologykubernetesiozone:
    // a zonal PV's zone label restricts its pods to that zone (VolumeZone).
    #[test]
    fn bound_claims_carry_the_pv_topology() {
        let c = catalog();
        match c.resolve("db", "data-0", None).unwrap() {
            VolumeNeed::Bound {
                node_local,
                node_affinity,
                ..
            } => {
                assert!(node_local);
                assert!(node_affinity.is_some());
            }
            other => panic!("{other:?}"),
        }
        match c.resolve("db", "data-1", None).unwrap() {
            VolumeNeed::Bound {
                node_local, zones, ..
            } => {
                assert!(!node_local);
                assert_eq!(
                    zones,
                    vec![(ZONE.to_string(), ["us-east-1a".to_string()].into())]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    // https://kubernetes.io/docs/concepts/storage/storage-classes/#volume-binding-mode:
    // Immediate claims bind before scheduling; WaitForFirstConsumer claims bind (or are
    // provisioned) for the node the pod lands on, within allowedTopologies.
    #[test]
    fn unbound_claims_by_binding_mode() {
        let c = catalog();
        match c.resolve("db", "wait", None).unwrap() {
            VolumeNeed::Delayed(d) => {
                assert_eq!(d.request, 1 << 30);
                assert_eq!(d.provision.as_ref().map(Vec::len), Some(1));
            }
            other => panic!("{other:?}"),
        }
        match c.resolve("db", "static", None).unwrap() {
            VolumeNeed::Delayed(d) => {
                assert!(d.provision.is_none(), "no-provisioner class");
                assert!(d.accepts(c.pv("free-1").unwrap()));
            }
            other => panic!("{other:?}"),
        }
        for (claim, why) in [
            ("now", "Immediately"),
            ("classless", "no storage class"),
            ("missing", "not found"),
        ] {
            match c.resolve("db", claim, None).unwrap() {
                VolumeNeed::Unbindable { why: w, .. } => assert!(w.contains(why), "{claim}: {w}"),
                other => panic!("{claim}: {other:?}"),
            }
        }
    }

    #[test]
    fn ephemeral_volumes_use_their_template_until_the_claim_exists() {
        let c = catalog();
        let template: PersistentVolumeClaimSpec = from(
            json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}),
        );
        match c.resolve("db", "pod-scratch", Some(&template)).unwrap() {
            VolumeNeed::Delayed(d) => assert_eq!(d.class, "gp3", "the default class"),
            other => panic!("{other:?}"),
        }
    }
}
