//! The seed's four PromQL queries in real Prometheus, on backfilled history and on a live scrape.
//!
//! The point of the first test: the seed's CPU query averages the rate of every non-idle mode,
//! so with seven such modes a node at 56% CPU reads ~8%; the corrected query (one minus the idle
//! share) reads 56.

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use smartscale_testworld::prometheus::{
    BUSY_MODE_SHARES, ClusterMetrics, Prometheus, Sample, SyntheticExporter, SyntheticNode,
    SyntheticPod,
};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const SEED_CPU: &str = r#"avg(rate(node_cpu_seconds_total{mode!="idle"}[5m])) * 100"#;
const CORRECTED_CPU: &str = r#"(1 - avg(rate(node_cpu_seconds_total{mode="idle"}[5m]))) * 100"#;
const MEMORY: &str = "(1 - avg(node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)) * 100";
const PENDING: &str = r#"sum(kube_pod_status_phase{phase="Pending"})"#;
const NODES: &str = "count(kube_node_info)";

async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(120), body)
        .await
        .expect("test exceeded its 120 s deadline");
}

/// The value of a query that must return exactly one series.
fn single(result: &[Sample], query: &str) -> f64 {
    assert_eq!(result.len(), 1, "{query} returned {result:?}");
    result[0].1
}

/// Two workers at 56% CPU (4 and 2 CPUs; the CPUs of each differ around 56), memory 62.5% and
/// 50% used, three running pods and two pending.
fn cluster() -> ClusterMetrics {
    ClusterMetrics::new(
        vec![
            SyntheticNode::new("ip-10-0-1-10.ec2.internal", 4, 56.0)
                .with_memory(16.0 * GIB, 6.0 * GIB)
                .with_instance("i-0a1b2c3d4e5f60001", "us-east-1a"),
            SyntheticNode::new("ip-10-0-2-20.ec2.internal", 2, 56.0)
                .with_memory(8.0 * GIB, 4.0 * GIB)
                .with_instance("i-0a1b2c3d4e5f60002", "us-east-1b"),
        ],
        vec![
            SyntheticPod::running(
                "web-1",
                "ip-10-0-1-10.ec2.internal",
                0.5,
                512.0 * 1024.0 * 1024.0,
            ),
            SyntheticPod::running(
                "web-2",
                "ip-10-0-1-10.ec2.internal",
                0.5,
                512.0 * 1024.0 * 1024.0,
            ),
            SyntheticPod::running("api-1", "ip-10-0-2-20.ec2.internal", 1.0, GIB),
            SyntheticPod::pending("batch-1", 1.5, 2.0 * GIB),
            SyntheticPod::pending("batch-2", 1.5, 2.0 * GIB),
        ],
    )
}

#[tokio::test]
async fn seed_queries_on_backfilled_history() {
    bounded(async {
        let end = Timestamp::from_second(Timestamp::now().as_second()).expect("a valid timestamp");
        let history = cluster().openmetrics_history(
            end,
            Duration::from_secs(30 * 60),
            Duration::from_secs(15),
        );
        let prometheus = Prometheus::start_backfilled(&history)
            .await
            .expect("Prometheus");
        let value = |query: &'static str| {
            let prometheus = &prometheus;
            async move { single(&prometheus.query_at(query, end).await.expect(query), query) }
        };

        let seed = value(SEED_CPU).await;
        let corrected = value(CORRECTED_CPU).await;
        let non_idle_modes = BUSY_MODE_SHARES.len() as f64;
        // Averaging the seven non-idle modes divides the busy share by seven.
        assert!(
            (seed - 56.0 / non_idle_modes).abs() < 0.5,
            "seed CPU query read {seed}"
        );
        assert!(
            56.0 - seed > 40.0,
            "the seed query should misreport 56% badly, read {seed}"
        );
        assert!(
            (corrected - 56.0).abs() <= 1.0,
            "corrected CPU query read {corrected}"
        );
        println!("node at 56% CPU: seed query {seed:.2}, corrected query {corrected:.2}");

        let memory = value(MEMORY).await;
        // Available 6/16 and 4/8: used (1 - (0.375 + 0.5) / 2) = 56.25%.
        assert!((memory - 56.25).abs() < 0.01, "memory query read {memory}");
        assert_eq!(value(PENDING).await, 2.0);
        assert_eq!(value(NODES).await, 2.0);

        // The other kube-state-metrics series are there for the bin-packing queries.
        let requested = single(
            &prometheus
                .query_at(
                    r#"sum(kube_pod_container_resource_requests{resource="cpu"})"#,
                    end,
                )
                .await
                .expect("requests"),
            "requests",
        );
        assert!((requested - 5.0).abs() < 1e-9, "requested CPU {requested}");
        let allocatable = prometheus
            .query_at(r#"kube_node_status_allocatable{resource="memory"}"#, end)
            .await
            .expect("allocatable");
        assert_eq!(allocatable.len(), 2);
        let info = prometheus
            .query_at("kube_node_info", end)
            .await
            .expect("node info");
        assert!(
            info.iter()
                .any(|(labels, _)| labels.get("provider_id").map(String::as_str)
                    == Some("aws:///us-east-1a/i-0a1b2c3d4e5f60001")),
            "{info:?}"
        );
    })
    .await;
}

/// `x` within `tolerance` of `target`, as the only series.
fn near(target: f64, tolerance: f64) -> impl Fn(&[Sample]) -> bool {
    move |result: &[Sample]| result.len() == 1 && (result[0].1 - target).abs() <= tolerance
}

/// The corrected CPU query over a window a fresh live scrape can fill: `rate(x[5m])` divides by
/// the whole five minutes, so it under-reads until five minutes of samples exist.
const SHORT_CPU: &str = r#"(1 - avg(rate(node_cpu_seconds_total{mode="idle"}[5s]))) * 100"#;

#[tokio::test]
async fn live_scrape_follows_the_exporter() {
    bounded(async {
        let node = "ip-10-0-3-30.ec2.internal";
        let metrics = ClusterMetrics::new(
            vec![SyntheticNode::new(node, 2, 30.0).with_memory(8.0 * GIB, 6.0 * GIB)],
            vec![SyntheticPod::pending("waiting", 0.5, GIB)],
        );
        let exporter = SyntheticExporter::start(metrics, 0)
            .await
            .expect("exporter");
        let prometheus = Prometheus::start_scraping(exporter)
            .await
            .expect("Prometheus");
        let wait = Duration::from_secs(40);

        // The first rate() needs two scrapes (~7 s after start here).
        prometheus
            .wait_until(SHORT_CPU, near(30.0, 1.5), wait)
            .await
            .expect("CPU at 30%");
        prometheus
            .wait_until(PENDING, near(1.0, 0.0), wait)
            .await
            .expect("one pending pod");
        prometheus
            .wait_until(MEMORY, near(25.0, 0.01), wait)
            .await
            .expect("memory at 25%");

        // Load rises, memory fills, the pending pod goes: the next scrapes show it.
        let exporter = prometheus.exporter().expect("owned exporter");
        assert!(exporter.set_busy_percent(node, 80.0));
        assert!(exporter.set_memory_available(node, 2.0 * GIB));
        exporter.update(|metrics| metrics.pods.clear());
        prometheus
            .wait_until(SHORT_CPU, near(80.0, 1.5), wait)
            .await
            .expect("CPU at 80%");
        prometheus
            .wait_until(MEMORY, near(75.0, 0.01), wait)
            .await
            .expect("memory at 75%");
        // A series that leaves the exporter is marked stale at the next scrape.
        prometheus
            .wait_until(PENDING, |result| result.is_empty(), wait)
            .await
            .expect("no pending pods");
    })
    .await;
}

#[tokio::test]
async fn live_scrape_continues_backfilled_history() {
    bounded(async {
        let node = "ip-10-0-4-40.ec2.internal";
        let metrics = ClusterMetrics::new(vec![SyntheticNode::new(node, 4, 85.0)], Vec::new());
        let prometheus =
            Prometheus::start_scraping_with_history(metrics, Duration::from_secs(10 * 60))
                .await
                .expect("Prometheus");
        let wait = Duration::from_secs(40);

        // Five-minute rates are right at once, and stay right once live samples join the history
        // (a counter reset at the seam would show up as a spike in rate()).
        let first = prometheus.query(CORRECTED_CPU).await.expect("CPU query");
        assert!(near(85.0, 1.0)(&first), "right after start: {first:?}");
        let live = r#"count_over_time(node_cpu_seconds_total{mode="idle",cpu="0"}[3s])"#;
        prometheus
            .wait_until(live, |r| r.len() == 1 && r[0].1 >= 2.0, wait)
            .await
            .expect("live samples");
        let resets = prometheus
            .query(r#"sum(resets(node_cpu_seconds_total[10m]))"#)
            .await
            .expect("resets");
        assert_eq!(
            resets.first().map(|(_, v)| *v),
            Some(0.0),
            "no counter reset at the seam"
        );
        let after = prometheus.query(CORRECTED_CPU).await.expect("CPU query");
        assert!(near(85.0, 1.0)(&after), "with live samples: {after:?}");
        assert_eq!(
            single(&prometheus.query(NODES).await.expect("nodes"), NODES),
            1.0
        );
    })
    .await;
}

/// The controller's default signals read the workers only: the K3s server (Prometheus, Grafana,
/// the control plane) is busy on its own, and averaged in, a one-worker cluster would read half
/// server. Checked with the defaults as the controller parses them, in real Prometheus.
#[tokio::test]
async fn the_default_signals_read_the_workers_not_the_server() {
    bounded(async {
        let end = Timestamp::from_second(Timestamp::now().as_second()).expect("a valid timestamp");
        let metrics = ClusterMetrics::new(
            vec![
                SyntheticNode::new("server", 2, 90.0)
                    .with_memory(4.0 * GIB, 0.4 * GIB)
                    .server(),
                SyntheticNode::new("ip-10-0-1-10.ec2.internal", 2, 20.0)
                    .with_memory(4.0 * GIB, 3.0 * GIB),
            ],
            vec![],
        );
        let history =
            metrics.openmetrics_history(end, Duration::from_secs(30 * 60), Duration::from_secs(15));
        let prometheus = Prometheus::start_backfilled(&history).await.expect("Prometheus");
        let defaults = smartscale_controller::config::parse(
            "minimal",
            "cluster_id: c\nprometheus: {url: 'http://127.0.0.1:9090'}\nstate: {table: tbl}\nnode_groups: [{asg_name: w, min: 1, max: 2}]\n",
            &[],
            smartscale_controller::config::Purpose::Controller,
        )
        .expect("config")
        .prometheus
        .queries;
        let cpu = single(&prometheus.query_at(&defaults.cpu, end).await.expect("cpu"), &defaults.cpu);
        let memory = single(
            &prometheus.query_at(&defaults.memory, end).await.expect("memory"),
            &defaults.memory,
        );
        assert!((cpu - 20.0).abs() < 0.5, "the workers' CPU, not the server's 90%: {cpu}");
        assert!((memory - 25.0).abs() < 0.5, "the workers' memory: {memory}");
        // Averaged over every node-exporter target (the old default) it would read the server in.
        let everything = single(
            &prometheus.query_at(CORRECTED_CPU, end).await.expect("cpu"),
            CORRECTED_CPU,
        );
        assert!((everything - 55.0).abs() < 0.5, "{everything}");
    })
    .await;
}
