//! A pod as the scheduler and the drain rules see it, built by a pure function from the API
//! object and the catalog of its volumes.

use super::resources::Resources;
use super::selector::{Labels, NodeSelector, Selector, Toleration};
use super::volume::{Catalog, VolumeNeed};
use crate::{Error, Result};
use k8s_openapi::api::core::v1 as core;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;

pub const SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
pub const SAFE_TO_EVICT_LOCAL_VOLUMES: &str =
    "cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes";
const DAEMONSET_POD: &str = "cluster-autoscaler.kubernetes.io/daemonset-pod";
const MIRROR: &str = "kubernetes.io/config.mirror";

/// Namespaces a pod affinity term looks in: its `namespaces` and the namespaces its
/// `namespaceSelector` matched when the pod was converted; `all` for `namespaceSelector: {}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NsSet {
    pub all: bool,
    pub names: BTreeSet<String>,
}

impl NsSet {
    pub fn one(ns: &str) -> NsSet {
        NsSet {
            all: false,
            names: [ns.to_string()].into(),
        }
    }

    pub fn contains(&self, ns: &str) -> bool {
        self.all || self.names.contains(ns)
    }
}

/// A required pod (anti-)affinity term.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct AffinityTerm {
    pub namespaces: NsSet,
    pub selector: Selector,
    pub topology_key: String,
}

impl AffinityTerm {
    /// `AffinityTerm.Matches`: the pod is in one of the namespaces and has matching labels.
    pub fn matches(&self, pod: &PodSpec) -> bool {
        self.namespaces.contains(&pod.namespace) && self.selector.matches(&pod.labels)
    }
}

/// A `whenUnsatisfiable: DoNotSchedule` topology spread constraint, with the defaults the
/// scheduler applies (`minDomains` 1, `nodeAffinityPolicy` Honor, `nodeTaintsPolicy` Ignore)
/// and `matchLabelKeys` merged into the selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct SpreadConstraint {
    pub max_skew: i32,
    pub topology_key: String,
    pub selector: Selector,
    pub min_domains: i32,
    pub honor_node_affinity: bool,
    pub honor_node_taints: bool,
}

/// A host port a container binds (`hostIP` defaults to 0.0.0.0, `protocol` to TCP).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    /// `HostPortInfo.CheckConflict`: same protocol and port, and the same IP or either 0.0.0.0.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || self.ip == "0.0.0.0" || o.ip == "0.0.0.0")
    }
}

/// The pod's controller (`ownerReferences` entry with `controller: true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// A pod, as far as placing and evicting it goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// The node it is bound to, if any.
    pub node_name: Option<String>,
    /// `resource.PodRequests`: containers, sidecars and init containers, pod-level requests,
    /// overhead. Each pod also takes one of a node's `pods`.
    pub requests: Resources,
    pub node_selector: Labels,
    pub node_affinity: Option<NodeSelector>,
    pub tolerations: Vec<Toleration>,
    pub affinity: Vec<AffinityTerm>,
    pub anti_affinity: Vec<AffinityTerm>,
    pub spread: Vec<SpreadConstraint>,
    pub host_ports: Vec<HostPort>,
    pub volumes: Vec<VolumeNeed>,
    pub owner: Option<Owner>,
    pub daemonset: bool,
    pub mirror: bool,
    /// emptyDir and hostPath volumes not listed in `safe-to-evict-local-volumes`.
    pub local_storage: Vec<String>,
    /// The `cluster-autoscaler.kubernetes.io/safe-to-evict` annotation.
    pub safe_to_evict: Option<bool>,
    /// Has a deletion timestamp: leaving on its own.
    pub terminating: bool,
    pub priority: i32,
}

impl PodSpec {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Pods that have to be rescheduled elsewhere if their node goes away.
    pub fn moves_with_drain(&self) -> bool {
        !self.daemonset && !self.mirror && !self.terminating
    }

    /// Whether its placement depends on which zone a new node lands in.
    pub fn zone_sensitive(&self) -> bool {
        let zonal = |k: &str| k != super::volume::HOSTNAME;
        self.node_selector
            .keys()
            .any(|k| super::volume::ZONE_LABELS.contains(&k.as_str()))
            || self
                .node_affinity
                .as_ref()
                .is_some_and(|a| a.keys().any(|k| super::volume::ZONE_LABELS.contains(&k)))
            || self
                .affinity
                .iter()
                .chain(&self.anti_affinity)
                .any(|t| zonal(&t.topology_key))
            || self.spread.iter().any(|s| zonal(&s.topology_key))
            || self.volumes.iter().any(|v| match v {
                VolumeNeed::Bound {
                    zones,
                    node_affinity,
                    ..
                } => !zones.is_empty() || node_affinity.is_some(),
                VolumeNeed::Delayed(d) => d.provision.as_ref().is_none_or(|t| !t.is_empty()),
                VolumeNeed::Unbindable { .. } => false,
            })
    }

    /// A hash of everything the filters read: pods with equal keys (replicas of one template)
    /// get the same answer from the same snapshot, so a verdict can be reused for them.
    pub fn scheduling_key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.namespace.hash(&mut h);
        self.labels.hash(&mut h);
        self.requests.hash(&mut h);
        self.node_selector.hash(&mut h);
        self.node_affinity.hash(&mut h);
        self.tolerations.hash(&mut h);
        self.affinity.hash(&mut h);
        self.anti_affinity.hash(&mut h);
        self.spread.hash(&mut h);
        self.host_ports.hash(&mut h);
        self.volumes.hash(&mut h);
        h.finish()
    }

    /// A pod of the given shape for tests and the twin: requests only, everything else empty.
    pub fn simple(namespace: &str, name: &str, milli_cpu: i64, memory: i64) -> PodSpec {
        PodSpec {
            namespace: namespace.to_string(),
            name: name.to_string(),
            labels: Labels::new(),
            node_name: None,
            requests: Resources {
                milli_cpu,
                memory,
                ..Resources::default()
            },
            node_selector: Labels::new(),
            node_affinity: None,
            tolerations: Vec::new(),
            affinity: Vec::new(),
            anti_affinity: Vec::new(),
            spread: Vec::new(),
            host_ports: Vec::new(),
            volumes: Vec::new(),
            owner: Some(Owner {
                kind: "ReplicaSet".into(),
                name: name.to_string(),
            }),
            daemonset: false,
            mirror: false,
            local_storage: Vec::new(),
            safe_to_evict: None,
            terminating: false,
            priority: 0,
        }
    }

    /// Converts an API pod. Fails only on what the API server would have refused (a
    /// malformed quantity or selector), naming the pod.
    pub fn from_pod(pod: &core::Pod, catalog: &Catalog) -> Result<PodSpec> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        convert(pod, &namespace, &name, catalog)
            .map_err(|e| Error::Capacity(format!("pod {namespace}/{name}: {e}")))
    }

    pub fn arc(self) -> Arc<PodSpec> {
        Arc::new(self)
    }
}

fn container_requests(c: &core::Container) -> Result<Resources> {
    match c.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        Some(list) => Resources::from_list(list),
        None => Ok(Resources::default()),
    }
}

/// `resource.PodRequests` (k8s.io/component-helpers, v1.34) with PodLevelResources on: the
/// sum of the containers and restartable init containers (sidecars); each init container
/// runs alongside the sidecars started before it, and the pod needs the largest of those
/// moments; pod-level requests replace cpu/memory/hugepages; overhead is added on top.
/// <https://github.com/kubernetes/enhancements/tree/master/keps/sig-node/753-sidecar-containers#exposing-pod-resource-requirements>
pub fn pod_requests(spec: &core::PodSpec) -> Result<Resources> {
    let mut reqs = Resources::default();
    for c in &spec.containers {
        reqs.add(&container_requests(c)?);
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c)?;
        let during = if c.restart_policy.as_deref() == Some("Always") {
            reqs.add(&r);
            sidecars.add(&r);
            sidecars.clone()
        } else {
            let mut t = r;
            t.add(&sidecars);
            t
        };
        init_max.max_with(&during);
    }
    reqs.max_with(&init_max);
    if let Some(pod_level) = spec.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        for (name, q) in pod_level {
            if name == "cpu" || name == "memory" || name.starts_with("hugepages-") {
                reqs.set(name, &q.0)?;
            }
        }
    }
    if let Some(overhead) = &spec.overhead {
        reqs.add(&Resources::from_list(overhead)?);
    }
    Ok(reqs)
}

/// `schedutil.GetHostPorts`: host ports of containers and of restartable init containers.
pub fn host_ports(spec: &core::PodSpec) -> Vec<HostPort> {
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let mut ports: Vec<HostPort> = sidecars
        .chain(&spec.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(|p| HostPort {
            ip: p
                .host_ip
                .clone()
                .filter(|ip| !ip.is_empty())
                .unwrap_or_else(|| "0.0.0.0".into()),
            protocol: p
                .protocol
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "TCP".into()),
            port: p.host_port.unwrap_or(0),
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

fn affinity_terms(
    terms: Option<&Vec<core::PodAffinityTerm>>,
    namespace: &str,
    labels: &Labels,
    catalog: &Catalog,
) -> Result<Vec<AffinityTerm>> {
    let mut out = Vec::new();
    for t in terms.into_iter().flatten() {
        let mut selector = Selector::from_k8s(t.label_selector.as_ref())?;
        // Since 1.33 (MatchLabelKeysInPodAffinity GA) the API server merges these at
        // creation; merging again is harmless and covers pods from older servers.
        selector = selector.with_label_keys(t.match_label_keys.as_deref().unwrap_or(&[]), labels);
        selector =
            selector.with_mismatch_keys(t.mismatch_label_keys.as_deref().unwrap_or(&[]), labels);
        let mut names: BTreeSet<String> = t.namespaces.iter().flatten().cloned().collect();
        let mut all = false;
        match &t.namespace_selector {
            None if names.is_empty() => {
                names.insert(namespace.to_string());
            }
            None => {}
            Some(ns_sel) => {
                let ns_sel = Selector::from_k8s(Some(ns_sel))?;
                if ns_sel.is_empty() {
                    all = true;
                } else {
                    names.extend(catalog.namespaces_matching(&ns_sel));
                }
            }
        }
        out.push(AffinityTerm {
            namespaces: NsSet { all, names },
            selector,
            topology_key: t.topology_key.clone(),
        });
    }
    Ok(out)
}

fn convert(pod: &core::Pod, namespace: &str, name: &str, catalog: &Catalog) -> Result<PodSpec> {
    let no_spec = core::PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&no_spec);
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let no_annotations = std::collections::BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&no_annotations);
    let no_affinity = core::Affinity::default();
    let affinity = spec.affinity.as_ref().unwrap_or(&no_affinity);
    let node_affinity = affinity
        .node_affinity
        .as_ref()
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(NodeSelector::from_k8s);
    let pod_affinity = affinity_terms(
        affinity.pod_affinity.as_ref().and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }),
        namespace,
        &labels,
        catalog,
    )?;
    let anti_affinity = affinity_terms(
        affinity.pod_anti_affinity.as_ref().and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }),
        namespace,
        &labels,
        catalog,
    )?;
    let mut spread = Vec::new();
    for c in spec.topology_spread_constraints.iter().flatten() {
        if c.when_unsatisfiable != "DoNotSchedule" {
            continue;
        }
        let selector = Selector::from_k8s(c.label_selector.as_ref())?
            .with_label_keys(c.match_label_keys.as_deref().unwrap_or(&[]), &labels);
        spread.push(SpreadConstraint {
            max_skew: c.max_skew,
            topology_key: c.topology_key.clone(),
            selector,
            min_domains: c.min_domains.unwrap_or(1),
            honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_node_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        });
    }
    let safe_local: BTreeSet<&str> = annotations
        .get(SAFE_TO_EVICT_LOCAL_VOLUMES)
        .map(|v| v.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let mut volumes = Vec::new();
    let mut local_storage = Vec::new();
    for v in spec.volumes.iter().flatten() {
        if v.empty_dir.is_some() || v.host_path.is_some() {
            if !safe_local.contains(v.name.as_str()) {
                local_storage.push(v.name.clone());
            }
        } else if let Some(claim) = &v.persistent_volume_claim {
            volumes.push(catalog.resolve(namespace, &claim.claim_name, None)?);
        } else if let Some(eph) = &v.ephemeral {
            let template = eph.volume_claim_template.as_ref().map(|t| &t.spec);
            volumes.push(catalog.resolve(namespace, &format!("{name}-{}", v.name), template)?);
        }
    }
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| Owner {
            kind: o.kind.clone(),
            name: o.name.clone(),
        });
    let daemonset = owner.as_ref().is_some_and(|o| o.kind == "DaemonSet")
        || annotations.get(DAEMONSET_POD).map(String::as_str) == Some("true");
    Ok(PodSpec {
        namespace: namespace.to_string(),
        name: name.to_string(),
        node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
        requests: pod_requests(spec)?,
        node_selector: spec.node_selector.clone().unwrap_or_default(),
        node_affinity,
        tolerations: spec
            .tolerations
            .iter()
            .flatten()
            .map(Toleration::from_k8s)
            .collect(),
        affinity: pod_affinity,
        anti_affinity,
        spread,
        host_ports: host_ports(spec),
        volumes,
        owner,
        daemonset,
        mirror: annotations.contains_key(MIRROR),
        local_storage,
        safe_to_evict: match annotations.get(SAFE_TO_EVICT).map(String::as_str) {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        },
        terminating: pod.metadata.deletion_timestamp.is_some(),
        priority: spec.priority.unwrap_or(0),
        labels,
    })
}

/// Serializes a shared pod as the pod.
pub fn serialize_arc<S: serde::Serializer>(
    p: &Arc<PodSpec>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    p.as_ref().serialize(s)
}

/// Serializes shared pods as a list of pods.
pub fn serialize_arcs<S: serde::Serializer>(
    pods: &[Arc<PodSpec>],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(pods.iter().map(|p| p.as_ref()))
}

/// Whether the pod is done (Succeeded or Failed): the scheduler no longer counts it.
pub fn is_terminal(pod: &core::Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// A pod the scheduler gave up on: unbound, not being deleted, `PodScheduled=False` with
/// reason `Unschedulable`.
pub fn is_unschedulable(pod: &core::Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| s.node_name.is_none())
        && pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                })
            })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> core::Pod {
        let mut base = json!({"metadata": {"name": "p", "namespace": "web", "labels": {"app": "web"}},
                              "spec": {"containers": []}});
        merge(&mut base, v);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(e) if e.is_object() && v.is_object() => merge(e, v),
                    _ => {
                        a.insert(k, v);
                    }
                }
            }
        }
    }

    fn spec(v: serde_json::Value) -> PodSpec {
        PodSpec::from_pod(&pod(v), &Catalog::default()).unwrap()
    }

    fn c(name: &str, cpu: &str, mem: &str) -> serde_json::Value {
        json!({"name": name, "resources": {"requests": {"cpu": cpu, "memory": mem}}})
    }

    // KEP-753 "Exposing Pod Resource Requirements": the pod needs
    // max(sum(containers) + sum(sidecars), max over init containers i of
    // (init_i + sum(sidecars started before i))), plus overhead.
    #[test]
    fn requests_follow_the_sidecar_formula() {
        let mut sidecar = c("log", "100m", "64Mi");
        sidecar["restartPolicy"] = json!("Always");
        let p = spec(json!({"spec": {
            "containers": [c("app", "500m", "256Mi"), c("side", "250m", "128Mi")],
            "initContainers": [c("migrate", "2", "64Mi"), sidecar, c("warm", "1", "1Gi")],
            "overhead": {"cpu": "50m", "memory": "10Mi"}
        }}));
        // Containers + sidecar: 850m, 448Mi. Init moments: migrate 2000m/64Mi (before the
        // sidecar); warm 1000m+100m, 1024Mi+64Mi. Max per resource: 2000m, 1088Mi; + overhead.
        assert_eq!(p.requests.milli_cpu, 2050);
        assert_eq!(p.requests.memory, (1088 + 10) << 20);
    }

    // https://kubernetes.io/docs/concepts/policy/pod-level-resources/ (beta, on by default in
    // 1.34): pod-level cpu/memory requests replace the containers' sum.
    #[test]
    fn pod_level_requests_win_for_cpu_and_memory() {
        let p = spec(json!({"spec": {
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m", "ephemeral-storage": "1Gi"}}}],
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}
        }}));
        assert_eq!((p.requests.milli_cpu, p.requests.memory), (1000, 2 << 30));
        assert_eq!(p.requests.ephemeral_storage, 1 << 30);
    }

    #[test]
    fn scheduling_constraints_are_read() {
        let p = spec(json!({
            "metadata": {"labels": {"app": "web", "pod-template-hash": "h1"},
                         "annotations": {SAFE_TO_EVICT: "false"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-h1", "uid": "u", "controller": true}]},
            "spec": {
            "containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 53, "hostPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"}, {"containerPort": 9}]}],
            "nodeSelector": {"pool": "general"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "affinity": {
                "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname",
                     "matchLabelKeys": ["pod-template-hash"]}]},
                "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "topology.kubernetes.io/zone",
                     "namespaceSelector": {}}]}
            },
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                 "labelSelector": {"matchLabels": {"app": "web"}}, "nodeTaintsPolicy": "Honor"},
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
                 "labelSelector": {"matchLabels": {"app": "web"}}}],
            "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}]
        }}));
        assert_eq!(p.host_ports.len(), 2);
        assert_eq!(
            p.host_ports[0],
            HostPort {
                ip: "0.0.0.0".into(),
                protocol: "TCP".into(),
                port: 8080
            }
        );
        assert_eq!(
            p.node_selector.get("pool").map(String::as_str),
            Some("general")
        );
        assert_eq!(p.tolerations.len(), 1);
        assert_eq!(p.anti_affinity[0].namespaces, NsSet::one("web"));
        assert_eq!(
            p.anti_affinity[0].selector.reqs.len(),
            2,
            "matchLabelKeys merged"
        );
        assert!(p.affinity[0].namespaces.all);
        assert_eq!(p.spread.len(), 1, "ScheduleAnyway is not a filter");
        assert!(p.spread[0].honor_node_taints && p.spread[0].honor_node_affinity);
        assert_eq!(p.spread[0].min_domains, 1);
        assert_eq!(p.local_storage, vec!["tmp".to_string()]);
        assert_eq!(p.safe_to_evict, Some(false));
        assert_eq!(
            p.owner.as_ref().map(|o| o.kind.as_str()),
            Some("ReplicaSet")
        );
        assert!(p.zone_sensitive());
    }

    #[test]
    fn daemonset_and_mirror_pods_do_not_move() {
        let ds = spec(json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "u", "controller": true}]}}));
        assert!(ds.daemonset && !ds.moves_with_drain());
        let mirror = spec(json!({"metadata": {"annotations": {MIRROR: "x"}}}));
        assert!(mirror.mirror && !mirror.moves_with_drain());
        let bare = spec(json!({}));
        assert!(bare.owner.is_none() && bare.moves_with_drain());
    }

    #[test]
    fn safe_to_evict_local_volumes_are_not_local_storage() {
        let p = spec(
            json!({"metadata": {"annotations": {SAFE_TO_EVICT_LOCAL_VOLUMES: "cache, tmp"}},
            "spec": {"volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "cache", "emptyDir": {}},
                                  {"name": "host", "hostPath": {"path": "/var"}}]}}),
        );
        assert_eq!(p.local_storage, vec!["host".to_string()]);
    }

    #[test]
    fn a_bad_quantity_names_the_pod() {
        let err = PodSpec::from_pod(
            &pod(json!({"spec": {"containers": [c("a", "lots", "1Gi")]}})),
            &Catalog::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("web/p"), "{err}");
    }
}
