//! One policy decision at 100 / 1,000 / 5,000 nodes, and one full decision cycle's CPU work at
//! 1,000 and 5,000 nodes with 30 pods each: Kubernetes objects → policy view and capacity model →
//! decision (every scheduler filter, the scale-down search trying up to 50 nodes).
//! Target (issues 3 and 10): ≤ 100 ms CPU for the cycle at 1,000 nodes. Run:
//! `cargo bench -p smartscale-controller --bench decision`.

mod common;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;
use smartscale_controller::capacity::{Cluster, ClusterObjects, GroupSpec, NodeGroup};
use smartscale_controller::policy::{
    self, CapacityModel, Lifecycle, Memory, PolicyConfig, Reading,
};
use smartscale_controller::signals::cluster::to_policy;

fn cluster(nodes: usize, pods_per_node: usize) -> (Vec<Node>, Vec<Pod>) {
    let ns: Vec<Node> = (0..nodes)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("node-{i}"), "labels": {"topology.kubernetes.io/zone": "us-east-1a"}},
                "spec": {"providerID": format!("aws:///us-east-1a/i-{i:08x}")},
                "status": {"allocatable": {"cpu": "8", "memory": "32Gi"}, "conditions": [{"type": "Ready", "status": "True"}]}
            }))
            .expect("static node JSON")
        })
        .collect();
    let mut ps = Vec::with_capacity(nodes * pods_per_node);
    for i in 0..nodes * pods_per_node {
        // Uneven load so the victim search has work to do: node i gets fewer pods as i grows.
        let node = (i * 7919) % nodes;
        ps.push(
            serde_json::from_value(json!({
                "metadata": {"name": format!("pod-{i}"), "namespace": if i % 50 == 0 { "kube-system" } else { "default" }, "labels": {"app": "web"},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": true}]},
                "spec": {"nodeName": format!("node-{node}"), "containers": [{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}}]},
                "status": {"phase": "Running"}
            }))
            .expect("static pod JSON"),
        );
    }
    (ns, ps)
}

fn build(nodes: &[Node], pods: &[Pod]) -> policy::Observation {
    let snap = to_policy(nodes, pods, &[]);
    let instances = snap
        .nodes
        .iter()
        .filter_map(|n| n.instance_id.clone())
        .map(|id| policy::Instance {
            id,
            lifecycle: Lifecycle::InService,
            first_seen: 0,
            ever_ready: true,
        })
        .collect::<Vec<_>>();
    policy::Observation {
        usage: policy::Usage {
            cpu: Reading::Value(20.0),
            memory: Reading::Value(30.0),
            custom: vec![],
        },
        nodes: snap.nodes,
        pending: snap.pending,
        groups: vec![policy::Group {
            asg_name: "workers".into(),
            min: 1,
            max: 10_000,
            desired: instances.len() as u32,
            node_allocatable: policy::Resources {
                cpu: 8.0,
                memory: 32.0,
            },
            instances,
            scale_down_blocked: None,
            backoff: None,
        }],
    }
}

/// The capacity model of the same objects, the group's template from its first node.
fn model(nodes: &[Node], pods: &[Pod]) -> CapacityModel {
    let cluster = Cluster::from_objects(&ClusterObjects {
        nodes,
        pods,
        ..Default::default()
    })
    .expect("model");
    let spec = GroupSpec::new(
        "workers",
        "m5.2xlarge",
        &["us-east-1a"],
        1,
        10_000,
        nodes.len() as u32,
    );
    let template = cluster.template(&spec, &["node-0"]).expect("template");
    CapacityModel {
        cluster,
        groups: vec![NodeGroup { spec, template }],
        untemplated: vec![],
        scale_down: Default::default(),
        expander: Default::default(),
    }
}

fn main() {
    let memory = Memory {
        low_since: Some(0),
        ..Memory::default()
    };
    let cfg = PolicyConfig::default();
    println!("policy decision (scale-down search, 30 pods per node):");
    for nodes in [100, 1_000, 5_000] {
        let (ns, ps) = cluster(nodes, 30);
        let obs = build(&ns, &ps);
        let (median, max, cpu) = common::measure(51, || {
            let (d, _) = policy::decide(&obs, &memory, &cfg, 100_000);
            std::hint::black_box(d);
        });
        println!("  {nodes:>5} nodes: median {median:?}, max {max:?} wall; mean {cpu:?} CPU");
    }
    let (ns, ps) = cluster(1_000, 30);
    let (median, max, cpu) = common::measure(21, || {
        let obs = build(&ns, &ps);
        let (d, _) = policy::decide(&obs, &memory, &cfg, 100_000);
        std::hint::black_box(d);
    });
    println!(
        "decision cycle, 1,000 nodes / 30,000 pods (objects → view → decision, requests only): median {median:?}, max {max:?} wall; mean {cpu:?} CPU"
    );
    for nodes in [1_000, 5_000] {
        let (ns, ps) = cluster(nodes, 30);
        let obs = build(&ns, &ps);
        let (median, _, cpu) = common::measure(5, || {
            std::hint::black_box(model(&ns, &ps));
        });
        println!(
            "  capacity model from {nodes} nodes' objects: median {median:?} wall; mean {cpu:?} CPU"
        );
        let mut m = model(&ns, &ps);
        let (median, max, cpu) = common::measure(if nodes > 1_000 { 5 } else { 21 }, || {
            let (d, _) = policy::decide_with(&obs, Some(&mut m), &memory, &cfg, 100_000);
            std::hint::black_box(d);
        });
        println!(
            "  one decision with every filter, {nodes} nodes: median {median:?}, max {max:?} wall; mean {cpu:?} CPU (target ≤ 100 ms at 1,000)"
        );
        let (median, max, cpu) = common::measure(if nodes > 1_000 { 5 } else { 11 }, || {
            let obs = build(&ns, &ps);
            let mut m = model(&ns, &ps);
            let (d, _) = policy::decide_with(&obs, Some(&mut m), &memory, &cfg, 100_000);
            std::hint::black_box(d);
        });
        println!(
            "decision cycle with the capacity model, {nodes} nodes / {} pods (objects → view + model → decision): median {median:?}, max {max:?} wall; mean {cpu:?} CPU",
            nodes * 30
        );
    }
}
