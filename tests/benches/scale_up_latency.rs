//! Pending pod created in the Kubernetes API → SetDesiredCapacity sent, over 20+ runs, through
//! the controller's watch fast path (the loop interval is 30 s, so only the fast path can be this
//! quick). Target (issue 3): ≤ 2 s p99. Measured from the pod's creation to the ASG reporting the
//! new desired capacity (polled every 10 ms), so it is an upper bound.
//! Run: `cargo build --bins && cargo bench -p smartscale-testworld --bench scale_up_latency`.

use serde_json::json;
use smartscale_testworld::prometheus::{ClusterMetrics, Prometheus, SyntheticNode};
use smartscale_testworld::world::{World, WorldOptions, product_binary, product_command};
use std::time::{Duration, Instant};

const RUNS: usize = 25;

#[tokio::main]
async fn main() {
    // New instances never join here: each run's pod needs one more node than is booting.
    let w = World::start(WorldOptions {
        workers: 2,
        max: 40,
        auto_join: false,
        ..WorldOptions::default()
    })
    .await
    .expect("world");
    let gib = 1024.0 * 1024.0 * 1024.0;
    let nodes = (0..2)
        .map(|i| SyntheticNode::new(format!("n{i}"), 2, 40.0).with_memory(4.0 * gib, 2.0 * gib))
        .collect();
    let prom = Prometheus::start_scraping_with_history(
        ClusterMetrics::new(nodes, vec![]),
        Duration::from_secs(600),
    )
    .await
    .expect("prometheus");
    // Nodes for the two initial workers (no agent here), then the controller with only its
    // fast path: a 30 s interval.
    for (id, _) in w.group().await.expect("group").1 {
        w.register_node(&id).await.expect("node");
    }
    let port = smartscale_testworld::process::free_port().expect("port");
    let cfg = w
        .controller_config(
            prom.url(),
            &format!("api: {{listen: '127.0.0.1:{port}'}}\n"),
        )
        .expect("config");
    let text = std::fs::read_to_string(&cfg)
        .expect("read")
        .replacen("interval: 1s\n", "interval: 30s\n", 1)
        .replacen("lease_ttl: 3s", "lease_ttl: 60s", 1)
        .replacen("max: 10", "max: 40", 1);
    std::fs::write(&cfg, text).expect("write");
    println!(
        "controller binary: {}",
        product_binary("smartscale-controller")
            .expect("binary")
            .display()
    );
    let log = w.dir.path().join("controller.log");
    let file = std::fs::File::create(&log).expect("log");
    let mut child = product_command(&w, "smartscale-controller")
        .expect("command")
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .expect("spawn");
    // Wait for the first cycle (the start-up one) to finish.
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/status"))
            .send()
            .await
            && r.text()
                .await
                .unwrap_or_default()
                .contains("last_decision\":{")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "controller did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Fill the two workers so that every measured pod needs a new node.
    for i in 0..2 {
        w.create_pod(&format!("fill-{i}"), "1500m", "1Gi", None, json!({}))
            .await
            .expect("pod");
    }
    let mut latencies = Vec::new();
    for run in 0..RUNS {
        let before = w.group().await.expect("group").0;
        let t0 = Instant::now();
        w.create_pod(&format!("wide-{run}"), "1500m", "1Gi", None, json!({}))
            .await
            .expect("pod");
        loop {
            if w.group().await.expect("group").0 > before {
                latencies.push(t0.elapsed());
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(40),
                "run {run}: no scale-up; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let _ = child.kill().await;
    latencies.sort();
    let pct = |p: f64| latencies[((p / 100.0 * RUNS as f64).ceil() as usize).clamp(1, RUNS) - 1];
    println!(
        "pending pod → SetDesiredCapacity over {RUNS} runs: p50 {:?}, p99 {:?}, max {:?} (target p99 ≤ 2 s)",
        pct(50.0),
        pct(99.0),
        latencies[RUNS - 1]
    );
}
