//! The capacity model at 1,000 nodes / 30,000 pods and at 5,000 nodes / 150,000 pods, a third
//! of the pods with hostname anti-affinity and zone spread (DoNotSchedule), one DaemonSet pod
//! per node, a few host ports: building the snapshot, one scale-down search (least utilised
//! first, up to 50 candidates, every filter) and one scale-up plan for 300 pending pods over
//! three groups. Target (issue 10): one decision ≤ 100 ms CPU at 1,000 nodes.
//! Run: `cargo bench -p smartscale-controller --bench capacity`.

mod common;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;
use smartscale_controller::capacity::pod::{AffinityTerm, NsSet, Owner, SpreadConstraint};
use smartscale_controller::capacity::selector::{LabelReq, Selector};
use smartscale_controller::capacity::volume::Catalog;
use smartscale_controller::capacity::{
    Cluster, ClusterObjects, Expander, GroupSpec, NodeGroup, NodeInfo, NodeTemplate, PodSpec,
    ScaleDownConfig, ScaleUpRequest, Snapshot, scale_down, scale_up,
};
use std::collections::BTreeSet;
use std::sync::Arc;

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
const PODS_PER_NODE: usize = 30;
const REPLICAS: usize = 10;

fn app(name: &str) -> Selector {
    Selector::from_reqs(vec![LabelReq::In("app".into(), [name.to_string()].into())])
}

/// Pod `i` of the cluster: deployment `i / REPLICAS`; every third deployment spreads.
fn pod(i: usize, node: Option<String>) -> PodSpec {
    let dep = i / REPLICAS;
    let name = format!("dep-{dep}");
    let mut p = PodSpec::simple(
        "default",
        &format!("{name}-{i}"),
        100 + (i % 3) as i64 * 50,
        256 << 20,
    );
    p.labels.insert("app".into(), name.clone());
    p.owner = Some(Owner {
        kind: "ReplicaSet".into(),
        name: name.clone(),
    });
    p.node_name = node;
    if dep.is_multiple_of(3) {
        p.anti_affinity.push(AffinityTerm {
            namespaces: NsSet::one("default"),
            selector: app(&name),
            topology_key: "kubernetes.io/hostname".into(),
        });
        p.spread.push(SpreadConstraint {
            max_skew: 1,
            topology_key: "topology.kubernetes.io/zone".into(),
            selector: app(&name),
            min_domains: 1,
            honor_node_affinity: true,
            honor_node_taints: false,
        });
    }
    p
}

fn node(i: usize) -> NodeInfo {
    let mut n = NodeInfo::simple(&format!("node-{i}"), 8000, 32 << 30, ZONES[i % 3]);
    n.labels.insert("pool".into(), "general".into());
    n
}

fn pods(nodes: usize) -> Vec<Arc<PodSpec>> {
    let mut out = Vec::with_capacity(nodes * (PODS_PER_NODE + 1));
    for i in 0..nodes * PODS_PER_NODE {
        // Uneven load so the scale-down search has work to do (as benches/decision.rs).
        let n = (i * 7919) % nodes;
        out.push(Arc::new(pod(i, Some(format!("node-{n}")))));
    }
    for n in 0..nodes {
        let mut ds = PodSpec::simple("kube-system", &format!("agent-{n}"), 50, 64 << 20);
        ds.daemonset = true;
        ds.owner = Some(Owner {
            kind: "DaemonSet".into(),
            name: "agent".into(),
        });
        ds.node_name = Some(format!("node-{n}"));
        if n % 10 == 0 {
            ds.host_ports
                .push(smartscale_controller::capacity::pod::HostPort {
                    ip: "0.0.0.0".into(),
                    protocol: "TCP".into(),
                    port: 9100,
                });
        }
        out.push(Arc::new(ds));
    }
    out
}

fn snapshot(nodes: usize) -> Snapshot {
    Snapshot::new(
        (0..nodes).map(node).collect(),
        pods(nodes),
        Arc::new(Catalog::default()),
    )
    .0
}

fn groups() -> Vec<NodeGroup> {
    [
        ("general", "m5.2xlarge", 200),
        ("compute", "c5.2xlarge", 200),
        ("memory", "r5.xlarge", 200),
    ]
    .into_iter()
    .map(|(name, itype, max)| {
        let spec = GroupSpec::new(name, itype, &ZONES, 0, max, 0);
        let template = NodeTemplate::for_group(&spec, &[], &[]).expect("known type");
        NodeGroup { spec, template }
    })
    .collect()
}

fn pending(nodes: usize) -> Vec<Arc<PodSpec>> {
    // 300 pods of 4 CPU: more than any node has free (about 3.4 CPU), new deployments.
    (0..300)
        .map(|k| {
            let i = nodes * PODS_PER_NODE + k;
            let mut p = pod(i, None);
            p.requests.milli_cpu = 4000;
            Arc::new(p)
        })
        .collect()
}

/// The same cluster as API objects (for the conversion cost).
fn objects(nodes: usize) -> (Vec<Node>, Vec<Pod>) {
    let ns = (0..nodes)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("node-{i}"), "labels": {
                    "kubernetes.io/hostname": format!("node-{i}"), "topology.kubernetes.io/zone": ZONES[i % 3]}},
                "spec": {"providerID": format!("aws:///{}/i-{i:08x}", ZONES[i % 3])},
                "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                           "conditions": [{"type": "Ready", "status": "True"}]}
            }))
            .expect("static node JSON")
        })
        .collect();
    let ps = (0..nodes * PODS_PER_NODE)
        .map(|i| {
            let dep = i / REPLICAS;
            let mut v = json!({
                "metadata": {"name": format!("dep-{dep}-{i}"), "namespace": "default", "labels": {"app": format!("dep-{dep}")},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("dep-{dep}"), "uid": "u", "controller": true}]},
                "spec": {"nodeName": format!("node-{}", (i * 7919) % nodes),
                         "containers": [{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}}]},
                "status": {"phase": "Running"}
            });
            if dep.is_multiple_of(3) {
                v["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": format!("dep-{dep}")}}, "topologyKey": "kubernetes.io/hostname"}]}});
                v["spec"]["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": format!("dep-{dep}")}}}]);
            }
            serde_json::from_value(v).expect("static pod JSON")
        })
        .collect();
    (ns, ps)
}

fn report(
    what: &str,
    (median, max, cpu): (
        std::time::Duration,
        std::time::Duration,
        std::time::Duration,
    ),
) {
    println!(
        "{what:<58} median {:>8.2} ms  max {:>8.2} ms  cpu/run {:>8.2} ms",
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e3
    );
}

fn main() {
    let cfg = ScaleDownConfig::default();
    for nodes in [1_000, 5_000] {
        let runs = if nodes > 1_000 { 5 } else { 20 };
        let label = format!("{nodes} nodes / {} pods", nodes * PODS_PER_NODE);
        report(
            &format!("{label}: build snapshot"),
            common::measure(runs, || {
                std::hint::black_box(snapshot(nodes));
            }),
        );
        let mut s = snapshot(nodes);
        let groups = groups();
        let pending = pending(nodes);
        let backoff = BTreeSet::new();
        let mut found = None;
        report(
            &format!("{label}: scale-down search (≤50 candidates)"),
            common::measure(runs, || {
                let c = scale_down::candidates(&s);
                let v = scale_down::find_removable(&mut s, &c, &[], &cfg, 50);
                found = Some((v.chosen.map(|r| r.node), v.refused.len()));
            }),
        );
        report(
            &format!("{label}: scale-down, 50 candidates checked in full"),
            common::measure(runs, || {
                for &n in scale_down::candidates(&s).iter().take(50) {
                    std::hint::black_box(scale_down::removable(&mut s, n, &[], &cfg).is_ok());
                }
            }),
        );
        let mut nodes_added = 0;
        report(
            &format!("{label}: scale-up plan (300 pending, 3 groups)"),
            common::measure(runs, || {
                let plan = scale_up::plan(
                    &mut s,
                    &ScaleUpRequest {
                        pending: &pending,
                        groups: &groups,
                        backoff: &backoff,
                        expander: Expander::LeastWaste,
                    },
                );
                nodes_added = plan.nodes();
            }),
        );
        report(
            &format!("{label}: one decision (build + down + up)"),
            common::measure(runs.min(5), || {
                let mut s = snapshot(nodes);
                let c = scale_down::candidates(&s);
                std::hint::black_box(scale_down::find_removable(&mut s, &c, &[], &cfg, 50));
                std::hint::black_box(scale_up::plan(
                    &mut s,
                    &ScaleUpRequest {
                        pending: &pending,
                        groups: &groups,
                        backoff: &backoff,
                        expander: Expander::LeastWaste,
                    },
                ));
            }),
        );
        println!(
            "  chosen victim {:?}; scale-up adds {nodes_added} nodes",
            found
        );
    }
    let (ns, ps) = objects(1_000);
    report(
        "1000 nodes / 30000 pods: from API objects (Cluster)",
        common::measure(5, || {
            std::hint::black_box(
                Cluster::from_objects(&ClusterObjects {
                    nodes: &ns,
                    pods: &ps,
                    ..Default::default()
                })
                .expect("static objects"),
            );
        }),
    );
}
