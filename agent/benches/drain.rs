//! Drain of 100 pods (grace period 0) on one node of the test world's real control plane
//! (kube-apiserver with Node,RBAC and NodeRestriction, the controller manager, the scheduler; the
//! node joined through the K3s server, its simulated kubelet running the pods), with the node's
//! own identity (its client certificate), through the agent's real drain code: cordon, taint
//! attempt (refused by NodeRestriction), evictions (bounded concurrency), wait until the pods
//! are gone. Target: ≤ 10 s.
//!
//! `cargo bench -p smartscale-agent --bench drain` (add `-- --pods 200` to change the size).
//! Needs the control plane binary (`scripts/setup-backends.sh`).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use smartscale_agent::drain::{self, DrainOptions};
use smartscale_agent::metrics::Metrics;
use smartscale_testworld::kubernetes::{
    ControlPlane, ControlPlaneOptions, JoinRequest, K3sOptions, K3sServer,
};

const NODE: &str = "ip-10-0-1-5.eu-west-3.compute.internal";

/// Polls `done` every 20 ms; panics after 60 s.
async fn wait<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() {
    let pods: usize = std::env::args()
        .skip_while(|a| a != "--pods")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(pods));
}

async fn bench(pods: usize) {
    let started = Instant::now();
    let plane = ControlPlane::start(ControlPlaneOptions::default())
        .await
        .unwrap_or_else(|e| panic!("control plane: {e}"));
    let k3s = K3sServer::start(
        &plane,
        K3sOptions {
            pod_start_delay: Duration::ZERO,
            ..K3sOptions::default()
        },
    )
    .expect("K3s server");
    let kubeconfig = k3s
        .join(JoinRequest {
            token: K3sOptions::default().tokens[0].clone(),
            node_name: NODE.into(),
            node_password: "bench".into(),
            provider_id: Some("aws:///eu-west-3a/i-0bench".into()),
            labels: Default::default(),
            taints: vec![],
            internal_ip: None,
            cpu: Some("64".into()),
            memory: Some("256Gi".into()),
        })
        .await
        .unwrap_or_else(|e| panic!("join: {e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let node_path = dir.path().join("kubelet.kubeconfig");
    kubeconfig.write(&node_path).expect("node kubeconfig");
    let admin = smartscale_agent::k8s::client(&plane.admin_kubeconfig())
        .await
        .expect("admin client");
    let node_identity = smartscale_agent::k8s::client(&node_path)
        .await
        .expect("node client");
    let nodes = Api::<Node>::all(admin.clone());
    wait("the node Ready", || async {
        nodes
            .get(NODE)
            .await
            .is_ok_and(|n| smartscale_agent::k8s::is_ready(&n))
    })
    .await;
    println!(
        "control plane up and node joined in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut results = Vec::new();
    let pods_api = Api::<Pod>::namespaced(admin.clone(), "default");
    for (round, concurrency) in [10usize, 10, 10, 1].into_iter().enumerate() {
        for i in 0..pods {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("r{round}-p{i}"), "labels": {"app": "bench"}},
                "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "c", "image": "registry.example/app:1"}]}
            }))
            .expect("pod");
            pods_api
                .create(&PostParams::default(), &pod)
                .await
                .expect("create pod");
        }
        wait("pods Running", || async {
            pods_api
                .list(&ListParams::default().labels("app=bench"))
                .await
                .is_ok_and(|l| {
                    l.items
                        .iter()
                        .filter(|p| {
                            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                        })
                        .count()
                        == pods
                })
        })
        .await;

        let metrics = Metrics::new();
        let start = Instant::now();
        let deadline = start + Duration::from_secs(60);
        drain::cordon_and_taint(&node_identity, None, NODE, "bench", deadline)
            .await
            .expect("cordon");
        let opts = DrainOptions {
            concurrency,
            ..DrainOptions::default()
        };
        let report = drain::drain_pods(&node_identity, NODE, deadline, &opts, &metrics)
            .await
            .expect("drain");
        let took = start.elapsed();
        assert!(report.complete, "{report:?}");
        assert_eq!(report.evicted, pods);
        println!(
            "round {round}: {pods} pods, concurrency {concurrency}: drained in {:.3} s",
            took.as_secs_f64()
        );
        results.push((concurrency, took));
        nodes
            .patch(
                NODE,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": false}})),
            )
            .await
            .expect("uncordon");
    }
    let evictions = plane
        .audit()
        .expect("audit log")
        .iter()
        .filter(|e| {
            e.is("create", "pods", "eviction")
                && e.code() == 201
                && e.user.username == format!("system:node:{NODE}")
        })
        .count();
    assert_eq!(evictions, 4 * pods, "evictions by the node's identity");
    // How long the API server itself took per request (the audit log's timestamps).
    let audit = std::fs::read_to_string(plane.dir().join("audit.log")).expect("audit log");
    let events: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &serde_json::Value| e["stage"] == "ResponseComplete")
        .collect();
    for (verb, subresource) in [("create", "eviction"), ("create", ""), ("delete", "")] {
        let mut ms: Vec<f64> = events
            .iter()
            .filter(|e| {
                e["verb"] == verb
                    && e["objectRef"]["resource"] == "pods"
                    && e["objectRef"]["subresource"].as_str().unwrap_or("") == subresource
            })
            .filter_map(|e| {
                let at = |k: &str| e[k].as_str()?.parse::<jiff::Timestamp>().ok();
                let took = at("stageTimestamp")?.duration_since(at("requestReceivedTimestamp")?);
                Some(took.as_secs_f64() * 1000.0)
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        if !ms.is_empty() {
            println!(
                "API server time per {verb} pods{} ({} requests, audit log): median {:.1} ms, p90 {:.1} ms",
                if subresource.is_empty() {
                    String::new()
                } else {
                    format!("/{subresource}")
                },
                ms.len(),
                ms[ms.len() / 2],
                ms[ms.len() * 9 / 10],
            );
        }
    }
    let mut tens: Vec<f64> = results
        .iter()
        .filter(|(c, _)| *c == 10)
        .map(|(_, t)| t.as_secs_f64())
        .collect();
    tens.sort_by(f64::total_cmp);
    let median = tens[tens.len() / 2];
    let one = results
        .iter()
        .find(|(c, _)| *c == 1)
        .map_or(0.0, |(_, t)| t.as_secs_f64());
    println!(
        "drain of {pods} pods, grace 0, concurrency 10: median {median:.3} s (min {:.3}, max {:.3}; concurrency 1: {one:.3} s); target <= 10 s: {}",
        tens[0],
        tens[tens.len() - 1],
        if median <= 10.0 { "met" } else { "MISSED" }
    );
    drop(k3s);
    plane.shutdown().await;
}
