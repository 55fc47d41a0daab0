//! Drain of 100 pods (grace period 0) on one node of the test world's API server, with the
//! node's own identity, through the agent's real drain code: cordon, taint attempt, evictions
//! (bounded concurrency), wait until the pods are gone. Target: ≤ 10 s.
//!
//! `cargo bench -p smartscale-agent --bench drain` (add `-- --pods 200` to change the size).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use smartscale_agent::drain::{self, DrainOptions};
use smartscale_agent::metrics::Metrics;
use smartscale_testworld::apiserver::{ApiServerOptions, FakeApiServer};

const NODE: &str = "ip-10-0-1-5.eu-west-3.compute.internal";

async fn client(api: &FakeApiServer, dir: &std::path::Path, token: &str) -> kube::Client {
    let path = dir.join(token);
    api.write_kubeconfig(&path, Some(token))
        .expect("kubeconfig");
    smartscale_agent::k8s::client(&path).await.expect("client")
}

async fn wait<F: Fn() -> bool>(what: &str, done: F) {
    let until = Instant::now() + Duration::from_secs(60);
    while !done() {
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
    let api = FakeApiServer::start(ApiServerOptions {
        tokens: HashMap::from([
            ("admin".to_string(), "admin".to_string()),
            ("node".to_string(), format!("system:node:{NODE}")),
        ]),
        pod_start_delay: Duration::ZERO,
        ..ApiServerOptions::default()
    })
    .await
    .expect("API server");
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = client(&api, dir.path(), "admin").await;
    let node_identity = client(&api, dir.path(), "node").await;
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": NODE},
        "spec": {"providerID": "aws:///eu-west-3a/i-0bench"},
        "status": {"capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
                   "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"}}
    }))
    .expect("node");
    let nodes = Api::<Node>::all(admin.clone());
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");

    let mut results = Vec::new();
    for (round, concurrency) in [10usize, 10, 10, 1].into_iter().enumerate() {
        let pods_api = Api::<Pod>::namespaced(admin.clone(), "default");
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
        wait("pods Running", || {
            api.pods()
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count()
                == pods
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
    let mut tens: Vec<f64> = results
        .iter()
        .filter(|(c, _)| *c == 10)
        .map(|(_, t)| t.as_secs_f64())
        .collect();
    tens.sort_by(f64::total_cmp);
    let median = tens[tens.len() / 2];
    println!(
        "drain of {pods} pods, grace 0, concurrency 10: median {median:.3} s (min {:.3}, max {:.3}); target <= 10 s: {}",
        tens[0],
        tens[tens.len() - 1],
        if median <= 10.0 { "met" } else { "MISSED" }
    );
    api.shutdown().await;
}
