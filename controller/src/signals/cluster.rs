//! The Kubernetes side of the signals: nodes, pods, PodDisruptionBudgets and what the capacity
//! model needs besides (PersistentVolumes and claims, StorageClasses, DaemonSets, Namespaces),
//! kept current by watches (kube reflectors) so a cycle reads memory, not the API, and a newly
//! unschedulable pod can wake the loop at once (the fast path).

use super::quantity;
use crate::capacity::ClusterObjects;
use crate::policy::{self, Resources};
use crate::{Error, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

pub const SCALE_DOWN_DISABLED: &str = "smartscale.io/scale-down-disabled";
pub const SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
pub const DRAINING_TAINT: &str = "smartscale.io/draining";
const MIRROR: &str = "kubernetes.io/config.mirror";

/// The kinds watched: the policy's view needs the first three, the capacity model all.
const KINDS: usize = 8;

/// Live view of the cluster.
pub struct ClusterWatch {
    nodes: Store<Node>,
    pods: Store<Pod>,
    pdbs: Store<PodDisruptionBudget>,
    pvs: Store<PersistentVolume>,
    pvcs: Store<PersistentVolumeClaim>,
    storage_classes: Store<StorageClass>,
    daemonsets: Store<DaemonSet>,
    namespaces: Store<Namespace>,
    /// Notified when a pod becomes unschedulable.
    pub unschedulable: Arc<Notify>,
    /// One flag per watch: all must be healthy, or the view is stale.
    healthy: [Arc<AtomicBool>; KINDS],
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Copies of what the watches hold, for the capacity model.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub pvs: Vec<PersistentVolume>,
    pub pvcs: Vec<PersistentVolumeClaim>,
    pub storage_classes: Vec<StorageClass>,
    pub pdbs: Vec<PodDisruptionBudget>,
    pub daemonsets: Vec<DaemonSet>,
    pub namespaces: Vec<Namespace>,
}

impl Objects {
    pub fn as_capacity(&self) -> ClusterObjects<'_> {
        ClusterObjects {
            nodes: &self.nodes,
            pods: &self.pods,
            pvs: &self.pvs,
            pvcs: &self.pvcs,
            storage_classes: &self.storage_classes,
            pdbs: &self.pdbs,
            daemonsets: &self.daemonsets,
            namespaces: &self.namespaces,
        }
    }
}

impl Drop for ClusterWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What the policy needs from Kubernetes.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    pub nodes: Vec<policy::Node>,
    /// Unschedulable pending pods.
    pub pending: Vec<policy::Pod>,
    /// Labels worth exporting, per node (same order as `nodes`).
    pub meta: Vec<NodeMeta>,
    /// Unschedulable pods no node like the workers could take (`ns/name`): a node selector none
    /// of them matches, or an extended resource (e.g. a GPU) none of them offers. More of the
    /// same nodes would not help, so they do not drive scale-ups.
    pub unhelpable: Vec<String>,
    /// The objects themselves, for the capacity model.
    pub objects: Arc<Objects>,
}

/// A node's instance type, zone and capacity type, from its well-known labels; its uid and
/// providerID (for garbage collection and `/status`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeMeta {
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: String,
    pub uid: String,
    pub provider_id: String,
}

fn node_meta(n: &Node) -> NodeMeta {
    let labels = n.metadata.labels.clone().unwrap_or_default();
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| labels.get(*k).cloned())
            .unwrap_or_else(|| "unknown".into())
    };
    NodeMeta {
        instance_type: get(&[
            "node.kubernetes.io/instance-type",
            "beta.kubernetes.io/instance-type",
        ]),
        zone: get(&[
            "topology.kubernetes.io/zone",
            "failure-domain.beta.kubernetes.io/zone",
        ]),
        capacity_type: get(&[
            "smartscale.io/capacity-type",
            "eks.amazonaws.com/capacityType",
        ]),
        uid: n.metadata.uid.clone().unwrap_or_default(),
        provider_id: n
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.clone())
            .unwrap_or_default(),
    }
}

fn spawn_reflector<K>(
    api: kube::Api<K>,
    healthy: Arc<AtomicBool>,
    on_apply: impl Fn(&K) + Send + 'static,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                // Any event, even an empty initial list, shows this watch works.
                Ok(event) => {
                    healthy.store(true, Ordering::Relaxed);
                    if let watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) = &event {
                        on_apply(obj);
                    }
                }
                Err(e) => {
                    healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "Kubernetes watch error; retrying with backoff");
                }
            }
        }
    });
    (store, task)
}

impl ClusterWatch {
    pub fn start(client: kube::Client) -> ClusterWatch {
        let healthy: [Arc<AtomicBool>; KINDS] = Default::default();
        let unschedulable = Arc::new(Notify::new());
        let notify = unschedulable.clone();
        let mut tasks = Vec::new();
        let (nodes, t) = spawn_reflector(
            kube::Api::<Node>::all(client.clone()),
            healthy[0].clone(),
            |_| {},
        );
        tasks.push(t);
        let (pods, t) = spawn_reflector(
            kube::Api::<Pod>::all(client.clone()),
            healthy[1].clone(),
            move |p: &Pod| {
                if is_unschedulable(p) {
                    notify.notify_one();
                }
            },
        );
        tasks.push(t);
        let (pdbs, t) = spawn_reflector(kube::Api::all(client.clone()), healthy[2].clone(), |_| {});
        tasks.push(t);
        let (pvs, t) = spawn_reflector(kube::Api::all(client.clone()), healthy[3].clone(), |_| {});
        tasks.push(t);
        let (pvcs, t) = spawn_reflector(kube::Api::all(client.clone()), healthy[4].clone(), |_| {});
        tasks.push(t);
        let (storage_classes, t) =
            spawn_reflector(kube::Api::all(client.clone()), healthy[5].clone(), |_| {});
        tasks.push(t);
        let (daemonsets, t) =
            spawn_reflector(kube::Api::all(client.clone()), healthy[6].clone(), |_| {});
        tasks.push(t);
        let (namespaces, t) = spawn_reflector(kube::Api::all(client), healthy[7].clone(), |_| {});
        tasks.push(t);
        ClusterWatch {
            nodes,
            pods,
            pdbs,
            pvs,
            pvcs,
            storage_classes,
            daemonsets,
            namespaces,
            unschedulable,
            healthy,
            tasks,
        }
    }

    /// Waits until the first full list of every kind has arrived.
    pub async fn ready(&self, timeout: Duration) -> Result<()> {
        let all = async {
            let _ = self.nodes.wait_until_ready().await;
            let _ = self.pods.wait_until_ready().await;
            let _ = self.pdbs.wait_until_ready().await;
            let _ = self.pvs.wait_until_ready().await;
            let _ = self.pvcs.wait_until_ready().await;
            let _ = self.storage_classes.wait_until_ready().await;
            let _ = self.daemonsets.wait_until_ready().await;
            let _ = self.namespaces.wait_until_ready().await;
        };
        tokio::time::timeout(timeout, all).await.map_err(|_| {
            Error::Kubernetes(format!(
                "no answer from the API server within {timeout:?}; check KUBECONFIG, that the server is up and that the controller may list nodes, pods, PodDisruptionBudgets, PersistentVolumes and claims, StorageClasses, DaemonSets and Namespaces (userdata/manifests/smartscale.yaml)"
            ))
        })
    }

    /// Whether the last watch event was a success (for /healthz).
    pub fn healthy(&self) -> bool {
        self.healthy.iter().all(|h| h.load(Ordering::Relaxed))
    }

    pub fn snapshot(&self) -> ClusterSnapshot {
        fn copy<K: kube::Resource<DynamicType = ()> + Clone>(s: &Store<K>) -> Vec<K> {
            s.state().iter().map(|o| (**o).clone()).collect()
        }
        let objects = Objects {
            nodes: copy(&self.nodes),
            pods: copy(&self.pods),
            pvs: copy(&self.pvs),
            pvcs: copy(&self.pvcs),
            storage_classes: copy(&self.storage_classes),
            pdbs: copy(&self.pdbs),
            daemonsets: copy(&self.daemonsets),
            namespaces: copy(&self.namespaces),
        };
        let mut snap = to_policy(&objects.nodes, &objects.pods, &objects.pdbs);
        snap.objects = Arc::new(objects);
        snap
    }
}

/// Builds the policy's view from API objects (pure; unit-tested).
pub fn to_policy(nodes: &[Node], pods: &[Pod], pdbs: &[PodDisruptionBudget]) -> ClusterSnapshot {
    let blocked: Vec<(&str, &LabelSelector)> = pdbs
        .iter()
        .filter(|b| {
            b.status
                .as_ref()
                .is_some_and(|s| s.disruptions_allowed <= 0)
        })
        .filter_map(|b| {
            Some((
                b.metadata.namespace.as_deref()?,
                b.spec.as_ref()?.selector.as_ref()?,
            ))
        })
        .collect();
    let mut out = ClusterSnapshot {
        nodes: nodes.iter().map(node_view).collect(),
        pending: Vec::new(),
        meta: nodes.iter().map(node_meta).collect(),
        unhelpable: Vec::new(),
        objects: Arc::default(),
    };
    let index: BTreeMap<String, usize> = out
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    for p in pods {
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        if matches!(phase, "Succeeded" | "Failed") {
            continue;
        }
        let mut view = pod_view(p);
        let ns = view.namespace.as_str();
        let labels = p.metadata.labels.clone().unwrap_or_default();
        if blocked
            .iter()
            .any(|(bns, sel)| *bns == ns && selector_matches(sel, &labels))
        {
            view.not_safe_to_evict = true;
        }
        match p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(node) => {
                if let Some(&i) = index.get(node) {
                    out.nodes[i].pods.push(view);
                }
            }
            None if is_unschedulable(p) => {
                if new_node_could_take(p, nodes) {
                    out.pending.push(view);
                } else {
                    out.unhelpable
                        .push(format!("{}/{}", view.namespace, view.name));
                }
            }
            None => {}
        }
    }
    out
}

/// Whether a new node like the existing workers could take `pod`: its node selector matches
/// some worker's labels and every extended resource it requests is on some worker. With no
/// worker to compare with (a group scaled to zero), assume yes.
fn new_node_could_take(pod: &Pod, nodes: &[Node]) -> bool {
    let workers: Vec<&Node> = nodes
        .iter()
        .filter(|n| {
            let labels = n.metadata.labels.as_ref();
            !labels.is_some_and(|l| {
                l.contains_key("node-role.kubernetes.io/control-plane")
                    || l.contains_key("node-role.kubernetes.io/master")
            })
        })
        .collect();
    if workers.is_empty() {
        return true;
    }
    let Some(spec) = &pod.spec else { return true };
    let selector = spec.node_selector.clone().unwrap_or_default();
    let extended: Vec<String> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref())
        .flat_map(|r| r.keys().cloned())
        .filter(|k| {
            !matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage")
                && !k.starts_with("hugepages-")
        })
        .collect();
    workers.iter().any(|n| {
        let labels = n.metadata.labels.clone().unwrap_or_default();
        let alloc = n
            .status
            .as_ref()
            .and_then(|s| s.allocatable.clone())
            .unwrap_or_default();
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            && extended.iter().all(|k| alloc.contains_key(k))
    })
}

/// `aws:///us-east-1a/i-0abc` → `i-0abc`.
pub fn instance_id(provider_id: &str) -> Option<String> {
    let id = provider_id.strip_prefix("aws://")?.rsplit('/').next()?;
    id.starts_with("i-").then(|| id.to_string())
}

fn node_view(n: &Node) -> policy::Node {
    let labels = n.metadata.labels.clone().unwrap_or_default();
    let annotations = n.metadata.annotations.clone().unwrap_or_default();
    let spec = n.spec.clone().unwrap_or_default();
    let status = n.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let ready_condition = conditions.iter().find(|c| c.type_ == "Ready");
    let ready = ready_condition.is_some_and(|c| c.status == "True");
    let not_ready_since = ready_condition
        .filter(|c| c.status != "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_second());
    let taints = spec.taints.unwrap_or_default();
    let draining = taints.iter().any(|t| t.key == DRAINING_TAINT);
    // Taints the node lifecycle controller adds for cordoned/not-ready nodes are covered by
    // `unschedulable` and `ready`; any other hard taint keeps foreign pods away.
    let tainted = taints.iter().any(|t| {
        matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
            && !t.key.starts_with("node.kubernetes.io/")
            && t.key != DRAINING_TAINT
    });
    let alloc = status.allocatable.unwrap_or_default();
    policy::Node {
        name: n.metadata.name.clone().unwrap_or_default(),
        instance_id: spec.provider_id.as_deref().and_then(instance_id),
        ready,
        unschedulable: spec.unschedulable.unwrap_or(false) || draining,
        tainted,
        control_plane: labels.contains_key("node-role.kubernetes.io/control-plane")
            || labels.contains_key("node-role.kubernetes.io/master"),
        scale_down_disabled: annotations.get(SCALE_DOWN_DISABLED).map(String::as_str)
            == Some("true"),
        allocatable: Resources {
            cpu: alloc
                .get("cpu")
                .and_then(|q| quantity::parse(&q.0))
                .unwrap_or(0.0),
            memory: alloc
                .get("memory")
                .and_then(|q| quantity::gib(&q.0))
                .unwrap_or(0.0),
        },
        pods: Vec::new(),
        not_ready_since,
    }
}

/// A pod the scheduler gave up on: Pending, unbound, PodScheduled=False/Unschedulable.
pub fn is_unschedulable(p: &Pod) -> bool {
    let Some(status) = &p.status else {
        return false;
    };
    status.phase.as_deref() == Some("Pending")
        && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none()
        && p.metadata.deletion_timestamp.is_none()
        && status.conditions.as_ref().is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

fn pod_view(p: &Pod) -> policy::Pod {
    let annotations = p.metadata.annotations.clone().unwrap_or_default();
    policy::Pod {
        namespace: p
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: p.metadata.name.clone().unwrap_or_default(),
        requests: requests(p),
        daemonset: p
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| o.iter().any(|r| r.kind == "DaemonSet")),
        mirror: annotations.contains_key(MIRROR),
        not_safe_to_evict: annotations.get(SAFE_TO_EVICT).map(String::as_str) == Some("false"),
    }
}

/// Effective requests as the scheduler counts them: the larger of the containers' sum and the
/// biggest init container, plus pod overhead.
pub fn requests(p: &Pod) -> Resources {
    let Some(spec) = &p.spec else {
        return Resources::ZERO;
    };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .unwrap_or_default();
        Resources {
            cpu: r
                .get("cpu")
                .and_then(|q| quantity::parse(&q.0))
                .unwrap_or(0.0),
            memory: r
                .get("memory")
                .and_then(|q| quantity::gib(&q.0))
                .unwrap_or(0.0),
        }
    };
    let sum = spec
        .containers
        .iter()
        .fold(Resources::ZERO, |a, c| a.plus(of(c)));
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .fold(Resources::ZERO, |a, c| a.max(of(c)));
    let overhead = spec.overhead.clone().unwrap_or_default();
    sum.max(init).plus(Resources {
        cpu: overhead
            .get("cpu")
            .and_then(|q| quantity::parse(&q.0))
            .unwrap_or(0.0),
        memory: overhead
            .get("memory")
            .and_then(|q| quantity::gib(&q.0))
            .unwrap_or(0.0),
    })
}

/// Label selector semantics (matchLabels AND matchExpressions). An empty selector matches all.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_exprs = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    by_labels && by_exprs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, extra: serde_json::Value) -> Node {
        let mut v = json!({
            "metadata": {"name": name},
            "spec": {"providerID": format!("aws:///us-east-1a/i-{name}")},
            "status": {
                "allocatable": {"cpu": "2", "memory": "4Gi"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn pod(name: &str, node: Option<&str>, extra: serde_json::Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]},
            "status": {"phase": "Running"}
        });
        if let Some(n) = node {
            v["spec"]["nodeName"] = json!(n);
        }
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b.clone()) {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        a.insert(k, v);
                    }
                }
            }
        }
    }

    #[test]
    fn nodes_and_pods_become_the_policy_view() {
        let nodes = vec![
            node(
                "a",
                json!({"metadata": {"annotations": {SCALE_DOWN_DISABLED: "true"}}}),
            ),
            node(
                "cp",
                json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": "true"}}}),
            ),
            node(
                "b",
                json!({"spec": {"taints": [{"key": DRAINING_TAINT, "value": "true", "effect": "NoSchedule"}]}}),
            ),
        ];
        let pods = vec![
            pod("p1", Some("a"), json!({})),
            pod(
                "ds",
                Some("a"),
                json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "u"}]}}),
            ),
            pod("done", Some("a"), json!({"status": {"phase": "Succeeded"}})),
            pod(
                "wait",
                None,
                json!({"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}}),
            ),
            pod("new", None, json!({"status": {"phase": "Pending"}})),
        ];
        let snap = to_policy(&nodes, &pods, &[]);
        let a = &snap.nodes[0];
        assert_eq!(a.instance_id.as_deref(), Some("i-a"));
        assert!(a.scale_down_disabled && a.ready);
        assert_eq!(
            a.allocatable,
            Resources {
                cpu: 2.0,
                memory: 4.0
            }
        );
        assert_eq!(a.pods.len(), 2, "terminal pods do not count");
        assert!(a.pods[1].daemonset);
        assert_eq!(
            a.pods[0].requests,
            Resources {
                cpu: 0.5,
                memory: 0.5
            }
        );
        assert!(snap.nodes[1].control_plane);
        assert!(
            snap.nodes[2].unschedulable,
            "draining taint counts as cordoned"
        );
        assert_eq!(snap.pending.len(), 1, "only pods the scheduler gave up on");
    }

    #[test]
    fn a_pdb_with_no_disruptions_left_protects_its_pods() {
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "minAvailable": 1},
            "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}
        }))
        .unwrap();
        let snap = to_policy(
            &[node("a", json!({}))],
            &[pod("p", Some("a"), json!({}))],
            &[pdb],
        );
        assert!(snap.nodes[0].pods[0].not_safe_to_evict);
    }

    #[test]
    fn pending_pods_no_worker_could_take_do_not_count() {
        let unschedulable = json!({"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}});
        let mut gpu = pod("gpu", None, unschedulable.clone());
        gpu.spec.as_mut().unwrap().containers[0]
            .resources
            .as_mut()
            .unwrap()
            .requests
            .as_mut()
            .unwrap()
            .insert(
                "nvidia.com/gpu".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
            );
        let mut picky = pod("picky", None, unschedulable.clone());
        picky.spec.as_mut().unwrap().node_selector =
            Some([("disk".to_string(), "ssd".to_string())].into());
        let plain = pod("plain", None, unschedulable);
        let snap = to_policy(&[node("a", json!({}))], &[gpu, picky, plain], &[]);
        assert_eq!(snap.pending.len(), 1);
        assert_eq!(snap.pending[0].name, "plain");
        assert_eq!(snap.unhelpable, vec!["default/gpu", "default/picky"]);
    }

    #[test]
    fn provider_ids_map_to_instance_ids() {
        assert_eq!(
            instance_id("aws:///us-east-1a/i-0abc").as_deref(),
            Some("i-0abc")
        );
        assert_eq!(instance_id("k3s://node-1"), None);
    }

    #[test]
    fn init_containers_and_overhead_count() {
        let p = pod(
            "p",
            None,
            json!({"spec": {
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
                "overhead": {"cpu": "100m"}
            }}),
        );
        assert!((requests(&p).cpu - 2.1).abs() < 1e-9);
    }
}
