//! Decisions with the capacity model, on the cases issue 10 lists. Both the policy's view and
//! the model come from the same API objects, as in the controller.

use super::*;
use crate::capacity::node::TAG_LABEL;
use crate::capacity::{Cluster, ClusterObjects, Expander, GroupSpec, NodeGroup, ScaleDownConfig};
use crate::signals::cluster::to_policy;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Node as K8sNode, PersistentVolume, PersistentVolumeClaim, Pod as K8sPod,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{Value, json};
use std::time::Duration;

const NOW: i64 = 100_000;

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("fixture")
}

/// A Ready 2-CPU/4-GiB worker in us-east-1a, instance `i-<name>`.
fn worker(name: &str, labels: Value) -> K8sNode {
    let mut l = json!({"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": "us-east-1a",
                       "node.kubernetes.io/instance-type": "t3.medium"});
    l.as_object_mut()
        .unwrap()
        .extend(labels.as_object().cloned().unwrap_or_default());
    typed(json!({
        "metadata": {"name": name, "labels": l},
        "spec": {"providerID": format!("aws:///us-east-1a/i-{name}")},
        "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                   "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
}

/// A running pod of a ReplicaSet on `node` (or unschedulable when `None`).
fn pod(name: &str, node: Option<&str>, cpu: &str, spec: Value) -> K8sPod {
    let mut s = json!({"containers": [{"name": "c", "image": "app",
        "resources": {"requests": {"cpu": cpu, "memory": "128Mi"}}}]});
    s.as_object_mut()
        .unwrap()
        .extend(spec.as_object().cloned().unwrap_or_default());
    let status = match node {
        Some(n) => {
            s["nodeName"] = json!(n);
            json!({"phase": "Running"})
        }
        None => json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}),
    };
    typed(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name.split('-').next().unwrap()},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                          "uid": "u", "controller": true}]},
        "spec": s, "status": status
    }))
}

struct Setup {
    nodes: Vec<K8sNode>,
    pods: Vec<K8sPod>,
    pvs: Vec<PersistentVolume>,
    pvcs: Vec<PersistentVolumeClaim>,
    pdbs: Vec<PodDisruptionBudget>,
    daemonsets: Vec<DaemonSet>,
    /// (ASG name, instance type, ASG tags, nodes of the group).
    groups: Vec<(&'static str, &'static str, Value, Vec<&'static str>)>,
}

impl Setup {
    fn new(nodes: Vec<K8sNode>, pods: Vec<K8sPod>) -> Setup {
        let names: Vec<&'static str> = nodes
            .iter()
            .map(|n| &*n.metadata.name.clone().unwrap().leak())
            .collect();
        Setup {
            nodes,
            pods,
            pvs: vec![],
            pvcs: vec![],
            pdbs: vec![],
            daemonsets: vec![],
            groups: vec![("general", "t3.medium", json!({}), names)],
        }
    }

    /// The observation, the decision with the model, and the requests-only decision (what
    /// the policy did before the model) at CPU and memory usage `usage`.
    fn decide(&self, usage: f64, cfg: &PolicyConfig) -> (Observation, Decision, Decision) {
        let (obs, mut model) = self.build(usage);
        let (with, _) = decide_with(&obs, Some(&mut model), &Memory::default(), cfg, NOW);
        let (without, _) = decide(&obs, &Memory::default(), cfg, NOW);
        (obs, with, without)
    }

    /// The policy's view and the model, from the same objects.
    fn build(&self, cpu: f64) -> (Observation, CapacityModel) {
        let view = to_policy(&self.nodes, &self.pods, &self.pdbs);
        let cluster = Cluster::from_objects(&ClusterObjects {
            nodes: &self.nodes,
            pods: &self.pods,
            pvs: &self.pvs,
            pvcs: &self.pvcs,
            pdbs: &self.pdbs,
            daemonsets: &self.daemonsets,
            ..Default::default()
        })
        .expect("model");
        let mut groups = Vec::new();
        let mut model_groups = Vec::new();
        for (name, itype, tags, members) in &self.groups {
            let instances: Vec<Instance> = members
                .iter()
                .map(|m| Instance {
                    id: format!("i-{m}"),
                    lifecycle: Lifecycle::InService,
                    first_seen: 0,
                    ever_ready: true,
                })
                .collect();
            groups.push(Group {
                asg_name: name.to_string(),
                min: 0,
                max: 10,
                desired: instances.len() as u32,
                node_allocatable: Resources {
                    cpu: 2.0,
                    memory: 4.0,
                },
                instances,
                scale_down_blocked: None,
                backoff: None,
            });
            let mut spec =
                GroupSpec::new(name, itype, &["us-east-1a"], 0, 10, members.len() as u32);
            spec.tags = serde_json::from_value(tags.clone()).unwrap();
            let template = cluster.template(&spec, members).expect("template");
            model_groups.push(NodeGroup { spec, template });
        }
        let obs = Observation {
            usage: Usage {
                cpu: Reading::Value(cpu),
                memory: Reading::Value(cpu),
                custom: vec![],
            },
            nodes: view.nodes,
            pending: view.pending,
            groups,
        };
        let model = CapacityModel {
            cluster,
            groups: model_groups,
            untemplated: vec![],
            scale_down: ScaleDownConfig::default(),
            expander: Expander::LeastWaste,
        };
        (obs, model)
    }
}

fn fast_down() -> PolicyConfig {
    PolicyConfig {
        sustained: Duration::ZERO,
        after_scale_up: Duration::ZERO,
        ..PolicyConfig::default()
    }
}

#[test]
fn a_pod_for_the_gpu_pool_grows_the_gpu_group_not_the_first() {
    let mut s = Setup::new(
        vec![worker("a", json!({"pool": "general"}))],
        vec![pod(
            "train-0",
            None,
            "1",
            json!({"nodeSelector": {"pool": "gpu"}}),
        )],
    );
    s.groups.push((
        "gpu",
        "m5.xlarge",
        json!({format!("{TAG_LABEL}pool"): "gpu"}),
        vec![],
    ));
    let (obs, d, old) = s.decide(50.0, &PolicyConfig::default());
    assert_eq!(d.action, Action::ScaleUp, "{:?}", d.reasons);
    assert_eq!(obs.groups[d.group].asg_name, "gpu", "{:?}", d.reasons);
    assert_eq!((d.from, d.to), (0, 1));
    // The requests-only view grows the first group, where the pod can never land.
    assert_eq!(obs.groups[old.group].asg_name, "general");
}

#[test]
fn a_pod_no_new_node_can_take_is_reported_and_grows_nothing() {
    let mut s = Setup::new(
        vec![worker("a", json!({}))],
        vec![
            pod("agent-a", Some("a"), "200m", json!({})),
            pod("wide-0", None, "1900m", json!({})),
        ],
    );
    // The agent is a DaemonSet: every new node carries its 200m too, leaving 1.8 CPU.
    s.pods[0].metadata.owner_references = Some(vec![typed(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "d", "controller": true}))]);
    s.daemonsets.push(typed(json!({
        "metadata": {"name": "agent", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"containers": [{"name": "a", "image": "agent",
                                "resources": {"requests": {"cpu": "200m", "memory": "64Mi"}}}]}}}
    })));
    let (_, d, old) = s.decide(50.0, &PolicyConfig::default());
    assert_eq!(d.action, Action::None, "{:?}", d.reasons);
    assert_eq!(d.unhelpable.len(), 1, "{:?}", d.unhelpable);
    assert!(
        d.unhelpable[0].starts_with("default/wide-0: general: "),
        "{:?}",
        d.unhelpable
    );
    assert!(
        d.reasons.iter().any(|r| r.contains("wide-0")),
        "{:?}",
        d.reasons
    );
    // By requests alone, 1.9 CPU fits a 2-CPU node: the old view grows for it.
    assert_eq!(old.action, Action::ScaleUp);
}

#[test]
fn a_node_holding_a_local_volume_is_not_removed_and_the_reason_names_the_pod() {
    let mut s = Setup::new(
        vec![worker("pinned", json!({})), worker("busy", json!({}))],
        vec![
            pod(
                "db-0",
                Some("pinned"),
                "100m",
                json!({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data-0"}}]}),
            ),
            pod("web-0", Some("busy"), "400m", json!({})),
        ],
    );
    s.pvs.push(typed(json!({
        "metadata": {"name": "data-0"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "claimRef": {"namespace": "default", "name": "data-0"},
                 "local": {"path": "/data"},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["pinned"]}]}]}}},
        "status": {"phase": "Bound"}
    })));
    s.pvcs.push(typed(json!({
        "metadata": {"name": "data-0", "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": "data-0",
                 "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Bound"}
    })));
    let (_, d, old) = s.decide(5.0, &fast_down());
    // The least utilised node is `pinned`, but db-0 can only run there: `busy` goes.
    assert_eq!(d.action, Action::ScaleDown, "{:?}", d.reasons);
    assert_eq!(d.victim.as_ref().map(|v| v.node.as_str()), Some("busy"));
    // The requests-only view removes `pinned` and strands db-0.
    assert_eq!(old.victim.map(|v| v.node), Some("pinned".to_string()));

    // With web-0 pinned too (a host port taken elsewhere would do; a selector is simpler),
    // nothing can go, and the reason names both pods.
    s.pods[1] = pod(
        "web-0",
        Some("busy"),
        "400m",
        json!({"nodeSelector": {"kubernetes.io/hostname": "busy"}}),
    );
    let (_, d, _) = s.decide(5.0, &fast_down());
    assert_eq!(d.action, Action::None, "{:?}", d.reasons);
    let why = d.reasons.join(" | ");
    assert!(why.contains("pinned: pod default/db-0"), "{why}");
    assert!(
        why.contains("busy: pod default/web-0 has no other place"),
        "{why}"
    );
}

#[test]
fn a_budget_allowing_one_disruption_keeps_a_node_with_two_of_its_pods() {
    let mut s = Setup::new(
        vec![worker("a", json!({})), worker("b", json!({}))],
        vec![
            pod("api-0", Some("a"), "100m", json!({})),
            pod("api-1", Some("a"), "100m", json!({})),
            pod("api-2", Some("b"), "100m", json!({})),
            pod("web-0", Some("b"), "900m", json!({})),
        ],
    );
    s.pdbs.push(typed(json!({
        "metadata": {"name": "api", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "api"}}, "maxUnavailable": 1},
        "status": {"disruptionsAllowed": 1, "currentHealthy": 3, "desiredHealthy": 2, "expectedPods": 3}
    })));
    let (_, d, old) = s.decide(5.0, &fast_down());
    // `a` is the least utilised, but draining it evicts two api pods where one is allowed.
    assert_eq!(
        d.victim.as_ref().map(|v| v.node.as_str()),
        Some("b"),
        "{:?}",
        d.reasons
    );
    assert_eq!(old.victim.map(|v| v.node), Some("a".to_string()));
}

#[test]
fn the_control_plane_does_not_make_a_workers_kube_system_pod_not_the_last() {
    let mut cp = node_named("server", true);
    cp.pods.push(system_pod("coredns"));
    let mut w = node_named("w1", false);
    w.pods.push(system_pod("metrics-server"));
    let other = node_named("w2", false);
    let obs = Observation {
        usage: Usage {
            cpu: Reading::Value(5.0),
            memory: Reading::Value(5.0),
            custom: vec![],
        },
        pending: vec![],
        groups: vec![Group {
            asg_name: "general".into(),
            min: 0,
            max: 10,
            desired: 2,
            node_allocatable: Resources {
                cpu: 2.0,
                memory: 4.0,
            },
            instances: ["i-w1", "i-w2"]
                .iter()
                .map(|id| Instance {
                    id: id.to_string(),
                    lifecycle: Lifecycle::InService,
                    first_seen: 0,
                    ever_ready: true,
                })
                .collect(),
            scale_down_blocked: None,
            backoff: None,
        }],
        nodes: vec![cp, w, other],
    };
    let (d, _) = decide(&obs, &Memory::default(), &fast_down(), NOW);
    // w1 is the only worker with a kube-system pod: w2 goes, though both are empty-ish.
    assert_eq!(d.victim.map(|v| v.node), Some("w2".to_string()));
}

fn node_named(name: &str, control_plane: bool) -> Node {
    Node {
        name: name.into(),
        instance_id: (!control_plane).then(|| format!("i-{name}")),
        ready: true,
        unschedulable: false,
        tainted: control_plane,
        control_plane,
        scale_down_disabled: false,
        allocatable: Resources {
            cpu: 2.0,
            memory: 4.0,
        },
        pods: vec![],
        not_ready_since: None,
    }
}

fn system_pod(name: &str) -> Pod {
    Pod {
        namespace: "kube-system".into(),
        name: name.into(),
        requests: Resources {
            cpu: 0.1,
            memory: 0.1,
        },
        daemonset: false,
        mirror: false,
        not_safe_to_evict: false,
    }
}
