//! The simulated cluster behind the API: node lifecycle, a DaemonSet controller, a scheduler, a
//! kubelet per Ready node, the disruption controller, and a poller of the AWS model that turns
//! nodes of terminated instances NotReady. Everything runs in one loop woken by API changes, by
//! its own deadlines (pod start, end of a grace period) and by a short ticker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, ContainerState, ContainerStateRunning, ContainerStatus, HostIP, Node, NodeAddress,
    NodeAffinity, NodeCondition, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    NodeSystemInfo, Pod, PodCondition, PodIP, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde_json::Value;

use super::discovery::GIT_VERSION;
use super::disruption::{pod_is_ready, refresh_budgets};
use super::kinds::Kind;
use super::ops;
use super::quantity::parse_milli;
use super::selectors::{label_selector_matches, node_requirement_matches, tolerates};
use super::state::{Shared, World};
use super::store::{from_value, to_value};

/// The longest the loop sleeps without an event.
const TICK: Duration = Duration::from_millis(100);
/// How often the AWS model is asked for instance states.
const AWS_POLL: Duration = Duration::from_millis(250);

/// Capacity a node gets when it registers without one (a t3.medium).
const DEFAULT_CAPACITY: [(&str, &str); 4] = [
    ("cpu", "2"),
    ("memory", "4Gi"),
    ("pods", "110"),
    ("ephemeral-storage", "20Gi"),
];

const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Run the controllers until the server shuts down.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    // The store version the last reconcile left behind: nothing to do until it moves, a deadline
    // is due, or something outside the store (a node's readiness switch, the AWS model) changed.
    let mut settled_at: Option<u64> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // A bug in one pass must not freeze the whole simulated cluster: log it and go on.
        let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut world = shared.world();
            let now = Instant::now();
            let due = world
                .start_at
                .values()
                .chain(world.finish_at.values())
                .any(|at| *at <= now);
            if settled_at == Some(world.store.rv()) && !due && !world.external_change {
                return next_deadline(&world);
            }
            world.external_change = false;
            let next = reconcile(&mut world, &shared);
            settled_at = Some(world.store.rv());
            next
        }));
        let next = pass.unwrap_or_else(|_| {
            tracing::error!("a simulated controller panicked; continuing");
            None
        });
        let now = Instant::now();
        let wake = next.map_or(now + TICK, |at| at.min(now + TICK)).max(now);
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Bring the world up to date; returns the next deadline (a pod to start or to finish).
pub(crate) fn reconcile(world: &mut World, shared: &Shared) -> Option<Instant> {
    // Each pass can enable the next (a DaemonSet pod created, then scheduled, then started).
    for _ in 0..8 {
        let mut changed = false;
        changed |= node_lifecycle(world);
        changed |= daemonsets(world, shared.pod_stop_delay);
        changed |= schedule(world);
        changed |= kubelet(world, shared.pod_start_delay);
        changed |= refresh_budgets(world);
        changed |= daemonset_status(world);
        if !changed {
            break;
        }
    }
    next_deadline(world)
}

/// The next time a pod is due to start or to finish terminating.
fn next_deadline(world: &World) -> Option<Instant> {
    let now = Instant::now();
    world
        .start_at
        .values()
        .chain(world.finish_at.values())
        .copied()
        .filter(|at| *at > now)
        .min()
}

fn time_now() -> Time {
    Time(jiff::Timestamp::now())
}

fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

pub(crate) fn node_is_ready(node: &Node) -> bool {
    ready_status(node) == Some("True")
}

/// The EC2 instance id in a providerID like `aws:///us-east-1a/i-0abc`.
fn instance_id(node: &Node) -> Option<&str> {
    let provider_id = node.spec.as_ref()?.provider_id.as_deref()?;
    let id = provider_id.rsplit('/').next()?;
    id.starts_with("i-").then_some(id)
}

/// Set a node's Ready condition (and, for a fresh node, the pressure conditions) as a kubelet or
/// the node lifecycle controller would. Returns whether anything changed.
pub(crate) fn set_ready_condition(
    node: &mut Node,
    status: &str,
    reason: &str,
    message: &str,
) -> bool {
    let now = time_now();
    let node_status = node.status.get_or_insert_with(Default::default);
    let conditions = node_status.conditions.get_or_insert_with(Vec::new);
    if conditions.is_empty() {
        for (pressure, reason) in [
            ("MemoryPressure", "KubeletHasSufficientMemory"),
            ("DiskPressure", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "KubeletHasSufficientPID"),
        ] {
            conditions.push(NodeCondition {
                type_: pressure.into(),
                status: "False".into(),
                reason: Some(reason.into()),
                message: Some("kubelet reports no pressure".into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(now.clone()),
            });
        }
    }
    match conditions.iter_mut().find(|c| c.type_ == "Ready") {
        Some(c) if c.status == status => false,
        Some(c) => {
            c.status = status.into();
            c.reason = Some(reason.into());
            c.message = Some(message.into());
            c.last_heartbeat_time = Some(now.clone());
            c.last_transition_time = Some(now);
            true
        }
        None => {
            conditions.push(NodeCondition {
                type_: "Ready".into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(now),
            });
            true
        }
    }
}

/// Node lifecycle: registration defaults, Ready/NotReady from the test's switch and the AWS model,
/// the condition taints (not-ready, unreachable, unschedulable), and pods on NotReady nodes marked
/// not Ready (as the node lifecycle controller's `MarkPodsNotReady` does).
fn node_lifecycle(world: &mut World) -> bool {
    let mut changed = false;
    let nodes: Vec<Node> = world.store.typed(Kind::Node);
    for original in nodes {
        let mut node = original.clone();
        let name = node.metadata.name.clone().unwrap_or_default();
        let status = node.status.get_or_insert_with(Default::default);
        if status.capacity.as_ref().is_none_or(|c| c.is_empty()) {
            status.capacity = Some(
                DEFAULT_CAPACITY
                    .iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect(),
            );
        }
        if status.allocatable.as_ref().is_none_or(|a| a.is_empty()) {
            status.allocatable = status.capacity.clone();
        }
        if status.node_info.is_none() {
            status.node_info = Some(NodeSystemInfo {
                architecture: "amd64".into(),
                container_runtime_version: "containerd://2.0.5-k3s1".into(),
                kernel_version: "6.1.0".into(),
                kube_proxy_version: GIT_VERSION.into(),
                kubelet_version: GIT_VERSION.into(),
                operating_system: "linux".into(),
                os_image: "Debian GNU/Linux 12 (bookworm)".into(),
                ..Default::default()
            });
        }
        if status.addresses.as_ref().is_none_or(|a| a.is_empty()) {
            let ip = format!("10.0.{}.{}", world.next_ip / 250, world.next_ip % 250 + 1);
            world.next_ip += 1;
            status.addresses = Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip,
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.clone(),
                },
            ]);
        }
        let terminated =
            instance_id(&node).is_some_and(|id| world.terminated_instances.contains(id));
        if terminated {
            set_ready_condition(
                &mut node,
                "Unknown",
                "NodeStatusUnknown",
                "Kubelet stopped posting node status.",
            );
        } else if world.forced_not_ready.contains(&name) {
            set_ready_condition(
                &mut node,
                "False",
                "KubeletNotReady",
                "node marked NotReady by the test world",
            );
        } else if ready_status(&node).is_none() {
            set_ready_condition(
                &mut node,
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
            );
        }

        let ready = ready_status(&node).map(str::to_string);
        let unschedulable = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let wanted: Vec<&str> = [
            (ready.as_deref() == Some("False"), TAINT_NOT_READY),
            (ready.as_deref() == Some("Unknown"), TAINT_UNREACHABLE),
            (unschedulable, TAINT_UNSCHEDULABLE),
        ]
        .into_iter()
        .filter_map(|(want, key)| want.then_some(key))
        .collect();
        let spec = node.spec.get_or_insert_with(Default::default);
        let mut taints = spec.taints.clone().unwrap_or_default();
        let managed = |t: &Taint| {
            t.effect == "NoSchedule"
                && [TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE]
                    .contains(&t.key.as_str())
        };
        taints.retain(|t| !managed(t) || wanted.contains(&t.key.as_str()));
        for key in &wanted {
            if !taints
                .iter()
                .any(|t| t.key == *key && t.effect == "NoSchedule")
            {
                taints.push(Taint {
                    key: key.to_string(),
                    effect: "NoSchedule".into(),
                    time_added: None,
                    value: None,
                });
            }
        }
        spec.taints = (!taints.is_empty()).then_some(taints);

        if node != original {
            world.store.update(Kind::Node, to_value(&node));
            changed = true;
        }
        changed |= ensure_node_lease(world, &node);
        if ready.as_deref() != Some("True") {
            changed |= mark_pods_not_ready(world, &name);
        }
    }
    changed
}

/// The node's heartbeat Lease in `kube-node-lease`, created when the node registers (it is not
/// renewed: the simulated kubelet's health is the Ready condition).
fn ensure_node_lease(world: &mut World, node: &Node) -> bool {
    let name = node.metadata.name.clone().unwrap_or_default();
    if world
        .store
        .get(Kind::Lease, "kube-node-lease", &name)
        .is_some()
    {
        return false;
    }
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                                 "uid": node.metadata.uid.clone().unwrap_or_default()}]
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 40,
            "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
        }
    });
    match ops::create(world, Kind::Lease, "kube-node-lease", lease) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(node = %name, error = %e.message, "cannot create node lease");
            false
        }
    }
}

fn mark_pods_not_ready(world: &mut World, node_name: &str) -> bool {
    let mut changed = false;
    for mut pod in pods_on(world, node_name) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Some(conditions) = pod.status.as_mut().and_then(|s| s.conditions.as_mut()) else {
            continue;
        };
        if let Some(ready) = conditions
            .iter_mut()
            .find(|c| c.type_ == "Ready" && c.status == "True")
        {
            ready.status = "False".into();
            ready.reason = Some("NodeNotReady".into());
            ready.last_transition_time = Some(time_now());
            world.marked_not_ready.insert(uid);
            world.store.update(Kind::Pod, to_value(&pod));
            changed = true;
        }
    }
    changed
}

fn pods_on(world: &mut World, node_name: &str) -> Vec<Pod> {
    world
        .store
        .typed::<Pod>(Kind::Pod)
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name))
        .collect()
}

/// The tolerations the DaemonSet controller adds to its pods.
fn daemonset_tolerations(host_network: bool) -> Vec<Toleration> {
    let toleration = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut list = vec![
        toleration(TAINT_NOT_READY, "NoExecute"),
        toleration(TAINT_UNREACHABLE, "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration(TAINT_UNSCHEDULABLE, "NoSchedule"),
    ];
    if host_network {
        list.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    list
}

/// Whether a pod's nodeSelector and required node affinity accept a node.
fn affinity_matches(pod: &Pod, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let node_name = node.metadata.name.clone().unwrap_or_default();
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    if !spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let Some(required) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    else {
        return true;
    };
    // Terms are ORed; the requirements within a term are ANDed.
    required.node_selector_terms.iter().any(|term| {
        let expressions = term
            .match_expressions
            .iter()
            .flatten()
            .all(|req| node_requirement_matches(req, labels.get(&req.key)));
        let fields = term.match_fields.iter().flatten().all(|req| {
            req.key == "metadata.name" && node_requirement_matches(req, Some(&node_name))
        });
        let empty = term.match_expressions.as_ref().is_none_or(|m| m.is_empty())
            && term.match_fields.as_ref().is_none_or(|m| m.is_empty());
        !empty && expressions && fields
    })
}

/// The first taint with one of `effects` that `tolerations` do not tolerate.
fn untolerated_taint<'a>(
    node: &'a Node,
    tolerations: &[Toleration],
    effects: &[&str],
) -> Option<&'a Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// The node a DaemonSet pod is meant for: its nodeName, or the node its affinity pins.
fn daemon_pod_target(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(node.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// A minimal DaemonSet controller: one pod per eligible node (pinned with node affinity and
/// scheduled by the scheduler, like the real one), pods removed from nodes the DaemonSet no longer
/// fits (NoExecute taints, selectors).
fn daemonsets(world: &mut World, stop_delay: Option<Duration>) -> bool {
    let mut changed = false;
    let nodes: Vec<Node> = world.store.typed(Kind::Node);
    let sets: Vec<DaemonSet> = world.store.typed(Kind::DaemonSet);
    let pods: Vec<Pod> = world.store.typed(Kind::Pod);
    for ds in sets {
        if ds.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let uid = ds.metadata.uid.clone().unwrap_or_default();
        let ds_name = ds.metadata.name.clone().unwrap_or_default();
        let namespace = ds.metadata.namespace.clone().unwrap_or_default();
        let Some(spec) = ds.spec.as_ref() else {
            continue;
        };
        let template_spec = spec.template.spec.clone().unwrap_or_default();
        let mut tolerations = template_spec.tolerations.clone().unwrap_or_default();
        tolerations.extend(daemonset_tolerations(
            template_spec.host_network == Some(true),
        ));
        let probe = Pod {
            spec: Some(template_spec.clone()),
            ..Default::default()
        };
        let mine: Vec<&Pod> = pods
            .iter()
            .filter(|p| controller_uid(p) == Some(uid.as_str()))
            .collect();
        for node in &nodes {
            let node_name = node.metadata.name.clone().unwrap_or_default();
            let fits = affinity_matches(&probe, node);
            let should_run = fits
                && untolerated_taint(node, &tolerations, &["NoSchedule", "NoExecute"]).is_none();
            let may_continue =
                fits && untolerated_taint(node, &tolerations, &["NoExecute"]).is_none();
            let here: Vec<&&Pod> = mine
                .iter()
                .filter(|p| daemon_pod_target(p).as_deref() == Some(node_name.as_str()))
                .collect();
            let live = here.iter().any(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded") | Some("Failed"))
            });
            if should_run && here.is_empty() {
                let pod = daemon_pod(&ds, &ds_name, &uid, &node_name, &tolerations);
                match ops::create(world, Kind::Pod, &namespace, to_value(&pod)) {
                    Ok(_) => changed = true,
                    Err(e) => {
                        tracing::warn!(daemonset = %ds_name, node = %node_name, error = %e.message, "cannot create daemon pod")
                    }
                }
            } else if !may_continue && live {
                for pod in here {
                    if pod.metadata.deletion_timestamp.is_none() {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        if ops::delete_pod(world, &namespace, &name, None, None, stop_delay).is_ok()
                        {
                            changed = true;
                        }
                    }
                }
            }
        }
    }
    changed
}

fn daemon_pod(
    ds: &DaemonSet,
    ds_name: &str,
    uid: &str,
    node_name: &str,
    tolerations: &[Toleration],
) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.insert(
        "pod-template-generation".into(),
        ds.metadata.generation.unwrap_or(1).to_string(),
    );
    let mut spec = template.spec.unwrap_or_default();
    spec.tolerations = Some(tolerations.to_vec());
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    affinity.node_affinity = Some(NodeAffinity {
        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_fields: Some(vec![NodeSelectorRequirement {
                    key: "metadata.name".into(),
                    operator: "In".into(),
                    values: Some(vec![node_name.to_string()]),
                }]),
                match_expressions: None,
            }],
        }),
        preferred_during_scheduling_ignored_during_execution: affinity
            .node_affinity
            .as_ref()
            .and_then(|na| {
                na.preferred_during_scheduling_ignored_during_execution
                    .clone()
            }),
    });
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{ds_name}-")),
            labels: Some(labels),
            annotations: template_meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name: ds_name.to_string(),
                uid: uid.to_string(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// A pod's requests for one resource in milli-units: the larger of the containers' sum and the
/// largest init container, plus overhead.
fn pod_request(pod: &Pod, resource: &str) -> i128 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    let request = |c: &k8s_openapi::api::core::v1::Container| {
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref().or(r.limits.as_ref()))
            .and_then(|r| r.get(resource))
            .and_then(|q| parse_milli(&q.0))
            .unwrap_or(0)
    };
    let containers: i128 = spec.containers.iter().map(request).sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(request)
        .max()
        .unwrap_or(0);
    let overhead = spec
        .overhead
        .as_ref()
        .and_then(|o| o.get(resource))
        .and_then(|q| parse_milli(&q.0))
        .unwrap_or(0);
    containers.max(init) + overhead
}

fn allocatable(node: &Node, resource: &str) -> i128 {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get(resource))
        .and_then(|q| parse_milli(&q.0))
        .unwrap_or(0)
}

/// What is already requested on a node: (cpu, memory, pod count).
fn node_usage(pods: &[Pod]) -> BTreeMap<String, (i128, i128, i128)> {
    let mut usage: BTreeMap<String, (i128, i128, i128)> = BTreeMap::new();
    for pod in pods {
        let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded") | Some("Failed")) {
            continue;
        }
        let entry = usage.entry(node).or_default();
        entry.0 += pod_request(pod, "cpu");
        entry.1 += pod_request(pod, "memory");
        entry.2 += 1000;
    }
    usage
}

/// Why a node cannot take a pod, in the scheduler's words; `Ok(score)` if it can (higher = emptier).
fn filter_node(pod: &Pod, node: &Node, used: (i128, i128, i128)) -> Result<f64, Vec<String>> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let cordon_taint = Taint {
        key: TAINT_UNSCHEDULABLE.into(),
        effect: "NoSchedule".into(),
        time_added: None,
        value: None,
    };
    if unschedulable && !tolerations.iter().any(|t| tolerates(t, &cordon_taint)) {
        return Err(vec!["node(s) were unschedulable".into()]);
    }
    if let Some(taint) = untolerated_taint(node, &tolerations, &["NoSchedule", "NoExecute"]) {
        return Err(vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key,
            taint.value.as_deref().unwrap_or_default()
        )]);
    }
    if !affinity_matches(pod, node) {
        return Err(vec![
            "node(s) didn't match Pod's node affinity/selector".into(),
        ]);
    }
    let (cpu, memory) = (pod_request(pod, "cpu"), pod_request(pod, "memory"));
    let (cpu_cap, memory_cap, pods_cap) = (
        allocatable(node, "cpu"),
        allocatable(node, "memory"),
        allocatable(node, "pods"),
    );
    let mut reasons = Vec::new();
    if used.2 + 1000 > pods_cap {
        reasons.push("Too many pods".to_string());
    }
    if cpu > 0 && used.0 + cpu > cpu_cap {
        reasons.push("Insufficient cpu".to_string());
    }
    if memory > 0 && used.1 + memory > memory_cap {
        reasons.push("Insufficient memory".to_string());
    }
    if !reasons.is_empty() {
        return Err(reasons);
    }
    let free = |used: i128, request: i128, cap: i128| {
        if cap <= 0 {
            0.0
        } else {
            (cap - used - request) as f64 / cap as f64
        }
    };
    Ok((free(used.0, cpu, cpu_cap) + free(used.1, memory, memory_cap)) / 2.0)
}

/// The scheduler: bind each pending pod to the Ready-and-fitting node with the most room; a pod
/// no node takes gets `PodScheduled=False` with reason `Unschedulable` and the scheduler's message.
fn schedule(world: &mut World) -> bool {
    let mut changed = false;
    let nodes: Vec<Node> = world.store.typed(Kind::Node);
    let pods: Vec<Pod> = world.store.typed(Kind::Pod);
    let mut usage = node_usage(&pods);
    let mut pending: Vec<Pod> = pods
        .into_iter()
        .filter(|p| {
            let spec = p.spec.as_ref();
            spec.and_then(|s| s.node_name.as_deref())
                .unwrap_or_default()
                .is_empty()
                && spec
                    .and_then(|s| s.scheduler_name.as_deref())
                    .unwrap_or("default-scheduler")
                    == "default-scheduler"
                && p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .unwrap_or("Pending")
                    == "Pending"
        })
        .collect();
    pending.sort_by_key(|p| {
        (
            std::cmp::Reverse(p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)),
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            p.metadata.name.clone(),
        )
    });
    for mut pod in pending {
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<(f64, String)> = None;
        for node in &nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            match filter_node(&pod, node, usage.get(&name).copied().unwrap_or_default()) {
                Ok(score) => {
                    if best.as_ref().is_none_or(|(b, _)| score > *b) {
                        best = Some((score, name));
                    }
                }
                Err(why) => {
                    for reason in why {
                        *reasons.entry(reason).or_default() += 1;
                    }
                }
            }
        }
        let now = time_now();
        let status = pod.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        conditions.retain(|c| c.type_ != "PodScheduled");
        match best {
            Some((_, node_name)) => {
                conditions.push(PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    last_transition_time: Some(now),
                    ..Default::default()
                });
                let entry = usage.entry(node_name.clone()).or_default();
                entry.0 += pod_request(&pod, "cpu");
                entry.1 += pod_request(&pod, "memory");
                entry.2 += 1000;
                if let Some(spec) = pod.spec.as_mut() {
                    spec.node_name = Some(node_name.clone());
                }
                tracing::debug!(pod = pod.metadata.name.as_deref().unwrap_or_default(), node = %node_name, "scheduled");
                world.store.update(Kind::Pod, to_value(&pod));
                changed = true;
            }
            None => {
                let message = unschedulable_message(nodes.len(), &reasons);
                let previous = world
                    .store
                    .get(
                        Kind::Pod,
                        pod.metadata.namespace.as_deref().unwrap_or_default(),
                        pod.metadata.name.as_deref().unwrap_or_default(),
                    )
                    .and_then(from_value::<Pod>)
                    .and_then(|p| {
                        p.status?
                            .conditions?
                            .into_iter()
                            .find(|c| c.type_ == "PodScheduled")
                    });
                if previous.as_ref().is_some_and(|c| {
                    c.status == "False" && c.message.as_deref() == Some(message.as_str())
                }) {
                    continue;
                }
                conditions.push(PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some(message),
                    last_transition_time: Some(now),
                    ..Default::default()
                });
                world.store.update(Kind::Pod, to_value(&pod));
                changed = true;
            }
        }
    }
    changed
}

fn unschedulable_message(node_count: usize, reasons: &BTreeMap<String, usize>) -> String {
    if node_count == 0 {
        return "no nodes available to schedule pods".into();
    }
    let listed: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!(
        "0/{node_count} nodes are available: {}. preemption: 0/{node_count} nodes are available: {node_count} Preemption is not helpful for scheduling.",
        listed.join(", ")
    )
}

/// The kubelets of Ready nodes: start bound pods (after `pod_start_delay`), finish terminations
/// whose time has come, and restore Ready on pods the node lifecycle marked not Ready.
fn kubelet(world: &mut World, start_delay: Duration) -> bool {
    let mut changed = false;
    let now = Instant::now();
    let nodes: BTreeMap<String, Node> = world
        .store
        .typed::<Node>(Kind::Node)
        .into_iter()
        .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
        .collect();
    let pods: Vec<Pod> = world.store.typed(Kind::Pod);
    let mut live_uids = BTreeSet::new();
    for pod in pods {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        live_uids.insert(uid.clone());
        let Some(node_name) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        let Some(node) = nodes.get(&node_name).filter(|n| node_is_ready(n)) else {
            continue;
        };
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            let due = *world.finish_at.entry(uid.clone()).or_insert(now);
            if now >= due {
                if let Some(removed) = world.store.delete(Kind::Pod, &namespace, &name) {
                    ops::forget_pod(world, &removed);
                    tracing::debug!(pod = %name, "terminated");
                }
                changed = true;
            }
            continue;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Pending" {
            let due = *world
                .start_at
                .entry(uid.clone())
                .or_insert(now + start_delay);
            if now >= due {
                world.start_at.remove(&uid);
                let ip = if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
                    host_ip(node)
                } else {
                    world.next_ip += 1;
                    format!("10.42.{}.{}", world.next_ip / 250, world.next_ip % 250 + 1)
                };
                let running = start_pod(pod, &host_ip(node), &ip);
                world.store.update(Kind::Pod, to_value(&running));
                changed = true;
            }
        } else if phase == "Running" && world.marked_not_ready.remove(&uid) {
            let mut pod = pod;
            if let Some(conditions) = pod.status.as_mut().and_then(|s| s.conditions.as_mut()) {
                for c in conditions.iter_mut().filter(|c| c.type_ == "Ready") {
                    c.status = "True".into();
                    c.reason = None;
                    c.last_transition_time = Some(time_now());
                }
            }
            world.store.update(Kind::Pod, to_value(&pod));
            changed = true;
        }
    }
    world.marked_not_ready.retain(|uid| live_uids.contains(uid));
    changed
}

fn host_ip(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address.clone())
        .unwrap_or_else(|| "10.0.0.1".into())
}

/// A pod as its kubelet reports it once its containers run and are ready.
fn start_pod(mut pod: Pod, host_ip: &str, pod_ip: &str) -> Pod {
    let now = time_now();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let status = pod.status.get_or_insert_with(Default::default);
    status.phase = Some("Running".into());
    status.host_ip = Some(host_ip.into());
    status.host_ips = Some(vec![HostIP { ip: host_ip.into() }]);
    status.pod_ip = Some(pod_ip.into());
    status.pod_ips = Some(vec![PodIP { ip: pod_ip.into() }]);
    status.start_time = Some(now.clone());
    let mut conditions: Vec<PodCondition> = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
    ]
    .into_iter()
    .map(|t| PodCondition {
        type_: t.into(),
        status: "True".into(),
        last_transition_time: Some(now.clone()),
        ..Default::default()
    })
    .collect();
    conditions.extend(
        status
            .conditions
            .iter()
            .flatten()
            .filter(|c| c.type_ == "PodScheduled")
            .cloned(),
    );
    status.conditions = Some(conditions);
    status.container_statuses = Some(
        containers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let image = c.image.clone().unwrap_or_default();
                ContainerStatus {
                    name: c.name.clone(),
                    image: image.clone(),
                    image_id: format!("{image}@sha256:{:064x}", i + 1),
                    container_id: Some(format!("containerd://{:064x}", rand::random::<u128>())),
                    ready: true,
                    started: Some(true),
                    restart_count: 0,
                    state: Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(now.clone()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            })
            .collect(),
    );
    pod
}

/// DaemonSet status as the controller reports it.
fn daemonset_status(world: &mut World) -> bool {
    let mut changed = false;
    let nodes: Vec<Node> = world.store.typed(Kind::Node);
    let pods: Vec<Pod> = world.store.typed(Kind::Pod);
    for mut ds in world.store.typed::<DaemonSet>(Kind::DaemonSet) {
        let uid = ds.metadata.uid.clone().unwrap_or_default();
        let Some(spec) = ds.spec.as_ref() else {
            continue;
        };
        let template_spec = spec.template.spec.clone().unwrap_or_default();
        let mut tolerations = template_spec.tolerations.clone().unwrap_or_default();
        tolerations.extend(daemonset_tolerations(
            template_spec.host_network == Some(true),
        ));
        let probe = Pod {
            spec: Some(template_spec),
            ..Default::default()
        };
        let selector = spec.selector.clone();
        let mine: Vec<&Pod> = pods
            .iter()
            .filter(|p| controller_uid(p) == Some(uid.as_str()))
            .filter(|p| {
                label_selector_matches(&selector, &p.metadata.labels.clone().unwrap_or_default())
            })
            .collect();
        let mut desired = 0;
        let mut current = 0;
        let mut ready = 0;
        let mut misscheduled = 0;
        for node in &nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let should_run = affinity_matches(&probe, node)
                && untolerated_taint(node, &tolerations, &["NoSchedule", "NoExecute"]).is_none();
            let scheduled: Vec<&&Pod> = mine
                .iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                })
                .collect();
            if should_run {
                desired += 1;
                if !scheduled.is_empty() {
                    current += 1;
                    if scheduled.iter().any(|p| pod_is_ready(p)) {
                        ready += 1;
                    }
                }
            } else if !scheduled.is_empty() {
                misscheduled += 1;
            }
        }
        let status = DaemonSetStatus {
            current_number_scheduled: current,
            desired_number_scheduled: desired,
            number_misscheduled: misscheduled,
            number_ready: ready,
            number_available: Some(ready),
            number_unavailable: (desired - ready > 0).then_some(desired - ready),
            updated_number_scheduled: Some(current),
            observed_generation: ds.metadata.generation,
            ..Default::default()
        };
        if ds.status.as_ref() != Some(&status) {
            ds.status = Some(status);
            world.store.update(Kind::DaemonSet, to_value(&ds));
            changed = true;
        }
    }
    changed
}

/// Poll `GET {aws_model_url}/_smartscale/instances` and record which instances are down, so their
/// nodes turn NotReady. Instances in `shutting-down`, `terminated`, `stopping` or `stopped` count
/// as down (their kubelet is gone).
pub(crate) async fn poll_aws(shared: Arc<Shared>, aws_model_url: String) {
    let url = format!(
        "{}/_smartscale/instances",
        aws_model_url.trim_end_matches('/')
    );
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client for the AWS model");
            return;
        }
    };
    let mut shutdown = shared.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            return;
        }
        match fetch_down_instances(&client, &url).await {
            Ok(down) => {
                let mut world = shared.world();
                if world.terminated_instances != down {
                    tracing::debug!(?down, "instances down in the AWS model");
                    world.terminated_instances = down;
                    world.external_change = true;
                    drop(world);
                    shared.changed.notify_one();
                }
            }
            Err(e) => tracing::debug!(url = %url, error = %e, "AWS model not reachable"),
        }
        tokio::select! {
            _ = tokio::time::sleep(AWS_POLL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn fetch_down_instances(
    client: &reqwest::Client,
    url: &str,
) -> Result<BTreeSet<String>, String> {
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let instances: Vec<Value> = response.json().await.map_err(|e| e.to_string())?;
    Ok(instances
        .iter()
        .filter(|i| {
            matches!(
                i.get("ec2_state").and_then(Value::as_str),
                Some("shutting-down" | "terminated" | "stopping" | "stopped")
            )
        })
        .filter_map(|i| {
            i.get("instance_id")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids() {
        let node = Node {
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                provider_id: Some("aws:///us-east-1a/i-0123456789abcdef0".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(instance_id(&node), Some("i-0123456789abcdef0"));
    }

    #[test]
    fn messages() {
        let mut reasons = BTreeMap::new();
        reasons.insert("Insufficient cpu".to_string(), 2);
        reasons.insert("node(s) were unschedulable".to_string(), 1);
        assert_eq!(
            unschedulable_message(3, &reasons),
            "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) were unschedulable. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
    }
}
