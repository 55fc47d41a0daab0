//! The controller end to end: the real binary against the test world (AWS model with lifecycle
//! hooks, fake Kubernetes API, real Prometheus).

use serde_json::{Value, json};
use smartscale_testworld::process::poll_until;
use smartscale_testworld::prometheus::{ClusterMetrics, Prometheus, SyntheticNode};
use smartscale_testworld::world::{World, WorldOptions, product_command};
use std::path::{Path, PathBuf};
use std::time::Duration;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Real Prometheus with five minutes of history at `cpu`% busy and `mem`% memory used on
/// `nodes` nodes, then live scraping of the same series.
async fn prometheus(cpu: f64, mem: f64, nodes: usize) -> Prometheus {
    let nodes = (0..nodes)
        .map(|i| {
            SyntheticNode::new(format!("node-{i}"), 2, cpu)
                .with_memory(4.0 * GIB, 4.0 * GIB * (1.0 - mem / 100.0))
        })
        .collect();
    Prometheus::start_scraping_with_history(
        ClusterMetrics::new(nodes, vec![]),
        Duration::from_secs(600),
    )
    .await
    .expect("prometheus")
}

/// A world, Prometheus at `cpu`/`mem` % on as many nodes as workers, and a controller config.
async fn setup(
    opts: WorldOptions,
    cpu: f64,
    mem: f64,
    extra: &str,
) -> (World, Prometheus, PathBuf) {
    let nodes = opts.workers as usize;
    let w = World::start(opts).await.unwrap();
    let prom = prometheus(cpu, mem, nodes).await;
    let cfg = w.controller_config(prom.url(), extra).unwrap();
    (w, prom, cfg)
}

async fn worker_names(w: &World) -> Vec<String> {
    w.ready_workers()
        .await
        .unwrap()
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

async fn once(world: &World, cfg: &Path, args: &[&str]) -> Value {
    let out = product_command(world, "smartscale-controller")
        .unwrap()
        .arg("--config")
        .arg(cfg)
        .arg("once")
        .args(args)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "once failed: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn reasons(v: &Value) -> String {
    v["reasons"].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_pods_are_packed_into_new_nodes_and_counted_in_flight() {
    tokio::time::timeout(Duration::from_secs(120), async {
        // New instances do not join on their own: they stay Pending:Wait, i.e. in flight.
        let w = World::start(WorldOptions {
            workers: 2,
            auto_join: false,
            ..WorldOptions::default()
        })
        .await
        .unwrap();
        // auto_join is off: register the two initial workers' nodes by hand.
        let (_, instances) = w.group().await.unwrap();
        for (id, _) in &instances {
            w.register_node(id).await.unwrap();
        }
        let prom = prometheus(50.0, 40.0, 2).await;
        let cfg = w.controller_config(prom.url(), "").unwrap();
        // Each worker takes one 1.5-CPU pod; three more cannot fit anywhere: 3 nodes needed.
        for i in 0..5 {
            w.create_pod(&format!("big-{i}"), "1500m", "1Gi", None, json!({}))
                .await
                .unwrap();
        }
        poll_until("3 unschedulable pods", Duration::from_secs(10), || async {
            Ok((w.unschedulable_pods().await? == 3).then_some(()))
        })
        .await
        .unwrap();

        let d = once(&w, &cfg, &[]).await;
        assert_eq!(d["action"], "scale_up", "{d}");
        assert_eq!(
            (d["from"].as_u64(), d["to"].as_u64()),
            (Some(2), Some(5)),
            "+3, not the seed's +1: {d}"
        );
        assert_eq!(w.group().await.unwrap().0, 5);

        // The three new instances are booting (Pending:Wait): no second scale-up for the same pods.
        let d = once(&w, &cfg, &[]).await;
        assert_eq!(d["action"], "none", "{d}");
        assert_eq!(d["in_flight"], 3);
        assert!(reasons(&d).contains("already booting"), "{d}");
        assert_eq!(w.group().await.unwrap().0, 5);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_up_is_clamped_by_max() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let (w, _prom, cfg) = setup(
            WorldOptions {
                workers: 2,
                max: 3,
                ..WorldOptions::default()
            },
            50.0,
            40.0,
            "",
        )
        .await;
        // max in the config is 10 but the ASG's own MaxSize is 3: the tighter bound wins.
        for i in 0..5 {
            w.create_pod(&format!("big-{i}"), "1500m", "1Gi", None, json!({}))
                .await
                .unwrap();
        }
        poll_until("3 unschedulable pods", Duration::from_secs(10), || async {
            Ok((w.unschedulable_pods().await? == 3).then_some(()))
        })
        .await
        .unwrap();
        let d = once(&w, &cfg, &[]).await;
        assert_eq!(
            (d["action"].as_str(), d["to"].as_u64()),
            (Some("scale_up"), Some(3)),
            "{d}"
        );
        // The pods the third node cannot take are named, with the group's maximum as why.
        assert!(reasons(&d).contains("at its maximum of 3"), "{d}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn high_cpu_scales_up_on_the_third_cycle_and_the_trend_survives_restarts() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let (w, _prom, cfg) = setup(
            WorldOptions {
                workers: 2,
                ..WorldOptions::default()
            },
            85.0,
            40.0,
            "",
        )
        .await;
        // Every `once` is a new process: the counter lives in DynamoDB.
        let d1 = once(&w, &cfg, &[]).await;
        let d2 = once(&w, &cfg, &[]).await;
        assert_eq!(
            (d1["action"].as_str(), d2["action"].as_str()),
            (Some("none"), Some("none")),
            "{d1} {d2}"
        );
        let d3 = once(&w, &cfg, &[]).await;
        assert_eq!(d3["action"], "scale_up", "{d3}");
        assert_eq!((d3["from"].as_u64(), d3["to"].as_u64()), (Some(2), Some(3)));
        assert!(reasons(&d3).contains("CPU above 70% for 3 checks"), "{d3}");
        // The new node joins; CPU is still high, but the 5-minute cooldown (also in DynamoDB) holds.
        w.wait_nodes("3 Ready workers", Duration::from_secs(20), |n| n == 3)
            .await
            .unwrap();
        for _ in 0..3 {
            let d = once(&w, &cfg, &[]).await;
            assert_eq!(d["action"], "none", "{d}");
        }
        let d = once(&w, &cfg, &[]).await;
        assert!(reasons(&d).contains("scale-up cooldown"), "{d}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn high_memory_scales_up_at_once() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let (w, _prom, cfg) = setup(
            WorldOptions {
                workers: 2,
                ..WorldOptions::default()
            },
            20.0,
            80.0,
            "",
        )
        .await;
        let d = once(&w, &cfg, &[]).await;
        assert_eq!(
            (d["action"].as_str(), d["to"].as_u64()),
            (Some("scale_up"), Some(3)),
            "{d}"
        );
        assert!(reasons(&d).contains("memory 80.0% above 75%"), "{d}");
    })
    .await
    .expect("test timed out");
}

const FAST_DOWN: &str = "policy:\n  scale_down: {sustained: 0s}\n  cooldown: {after_scale_up: 0s, after_scale_down: 0s}\n";

#[tokio::test(flavor = "multi_thread")]
async fn low_load_removes_the_least_utilised_eligible_worker_through_the_terminate_hook() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let (w, _prom, cfg) = setup(
            WorldOptions {
                workers: 3,
                ..WorldOptions::default()
            },
            10.0,
            20.0,
            FAST_DOWN,
        )
        .await;
        let workers = worker_names(&w).await;
        // a: busy (1.2 CPU); b: lightest (0.1) but annotated scale-down-disabled; c: 0.3.
        w.create_replica("a1", "1200m", "1Gi", &workers[0])
            .await
            .unwrap();
        w.create_replica("b1", "100m", "128Mi", &workers[1])
            .await
            .unwrap();
        w.create_replica("c1", "300m", "256Mi", &workers[2])
            .await
            .unwrap();
        annotate(&w, &workers[1], "smartscale.io/scale-down-disabled", "true").await;

        let d = once(&w, &cfg, &[]).await;
        assert_eq!(d["action"], "scale_down", "{d}");
        let victim = d["victim"].as_str().unwrap().to_string();
        assert_eq!(
            victim,
            w.instance_of(&workers[2]).await.unwrap(),
            "the victim should be {}",
            workers[2]
        );
        let (desired, instances) = w.group().await.unwrap();
        assert_eq!(desired, 2);
        let state = instances
            .iter()
            .find(|(id, _)| *id == victim)
            .map(|(_, s)| s.clone());
        assert_eq!(
            state.as_deref(),
            Some("Terminating:Wait"),
            "the terminate hook holds it for the agent"
        );
    })
    .await
    .expect("test timed out");
}

async fn annotate(w: &World, node: &str, key: &str, value: &str) {
    use k8s_openapi::api::core::v1::Node;
    let patch = json!({"metadata": {"annotations": {key: value}}});
    kube::Api::<Node>::all(w.kube.clone())
        .patch(
            node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_removed_while_its_pods_would_not_fit_elsewhere() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let (w, _prom, cfg) = setup(
            WorldOptions {
                workers: 2,
                ..WorldOptions::default()
            },
            10.0,
            20.0,
            FAST_DOWN,
        )
        .await;
        let workers = worker_names(&w).await;
        w.create_replica("a1", "1500m", "1Gi", &workers[0])
            .await
            .unwrap();
        w.create_replica("b1", "1500m", "1Gi", &workers[1])
            .await
            .unwrap();
        let d = once(&w, &cfg, &[]).await;
        assert_eq!(d["action"], "none", "{d}");
        assert!(reasons(&d).contains("has no other place"), "{d}");
        assert!(
            w.activities()
                .await
                .unwrap()
                .iter()
                .all(|a| !a.contains("Terminating"))
        );
    })
    .await
    .expect("test timed out");
}

/// A Prometheus stand-in that answers after `delay` (real Prometheus cannot be made slow).
async fn slow_prometheus(delay: Duration) -> String {
    let app = axum::Router::new().fallback(move || async move {
        tokio::time::sleep(delay).await;
        axum::Json(json!({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "5"]}]}}))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_prometheus_data_never_removes_a_node() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let w = World::start(WorldOptions { workers: 3, ..WorldOptions::default() }).await.unwrap();
        let prom = prometheus(10.0, 20.0, 3).await;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let slow = slow_prometheus(Duration::from_secs(5)).await;
        let cases = [
            ("down", closed.clone(), String::new(), "unreachable"),
            ("empty", prom.url().to_string(), "prometheus:\n  url: PROM\n  timeout: 500ms\n  queries: {cpu: 'sum(no_such_metric)'}\n".to_string(), "no data"),
            ("NaN", prom.url().to_string(), "prometheus:\n  url: PROM\n  timeout: 500ms\n  queries: {memory: 'vector(0) / 0'}\n".to_string(), "NaN"),
            ("slow", slow.clone(), String::new(), "timed out"),
        ];
        for (what, url, override_yaml, expect) in cases {
            let cfg_text;
            let cfg = if override_yaml.is_empty() {
                w.controller_config(&url, FAST_DOWN).unwrap()
            } else {
                // Replace the prometheus section with the override.
                let base = std::fs::read_to_string(w.controller_config(&url, FAST_DOWN).unwrap()).unwrap();
                let start = base.find("prometheus:").unwrap();
                let end = base.find("state:").unwrap();
                cfg_text = format!("{}{}{}", &base[..start], override_yaml.replace("PROM", &url), &base[end..]);
                let p = w.dir.path().join(format!("bad-{what}.yaml"));
                std::fs::write(&p, &cfg_text).unwrap();
                p
            };
            let d = once(&w, &cfg, &[]).await;
            assert_eq!(d["action"], "none", "{what}: {d}");
            assert!(reasons(&d).contains("missing"), "{what}: {d}");
            assert!(d["signals"].to_string().contains(expect), "{what}: expected `{expect}` in {}", d["signals"]);
        }
        assert_eq!(w.group().await.unwrap().0, 3);
        // With good data the same cluster does scale down: the cases above were held back by the data alone.
        let cfg = w.controller_config(prom.url(), FAST_DOWN).unwrap();
        let d = once(&w, &cfg, &[]).await;
        assert_eq!(d["action"], "scale_down", "{d}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_never_becomes_ready_is_rolled_back_and_recorded() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let w = World::start(WorldOptions {
            workers: 2,
            auto_join: false,
            ..WorldOptions::default()
        })
        .await
        .unwrap();
        let initial: Vec<String> = w
            .group()
            .await
            .unwrap()
            .1
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        for id in &initial {
            w.register_node(id).await.unwrap();
        }
        let prom = prometheus(50.0, 40.0, 2).await;
        let cfg = w
            .controller_config(prom.url(), "policy: {max_node_provision_time: 5s}\n")
            .unwrap();
        for i in 0..3 {
            w.create_pod(&format!("big-{i}"), "1500m", "1Gi", None, json!({}))
                .await
                .unwrap();
        }
        poll_until("1 unschedulable pod", Duration::from_secs(10), || async {
            Ok((w.unschedulable_pods().await? == 1).then_some(()))
        })
        .await
        .unwrap();
        let d = once(&w, &cfg, &[]).await;
        assert_eq!(
            (d["action"].as_str(), d["to"].as_u64()),
            (Some("scale_up"), Some(3)),
            "{d}"
        );
        let (_, instances) = w.group().await.unwrap();
        let (stuck, _) = instances
            .iter()
            .find(|(id, _)| !initial.contains(id))
            .cloned()
            .unwrap();
        // It never joins. Once the provision time has passed, the next cycle rolls it back.
        let d = poll_until("a rollback", Duration::from_secs(30), || async {
            let d = once(&w, &cfg, &[]).await;
            Ok((!d["rollback"].as_array().unwrap().is_empty()).then_some(d))
        })
        .await
        .unwrap();
        assert_eq!(d["rollback"][0], stuck.as_str(), "{d}");
        assert!(reasons(&d).contains("not Ready within 5s"), "{d}");
        assert_eq!(
            d["action"], "none",
            "the replacement covers the pending pod: {d}"
        );
        let (desired, instances) = w.group().await.unwrap();
        assert_eq!(desired, 3, "desired kept: the ASG replaces the instance");
        let state = instances
            .iter()
            .find(|(id, _)| *id == stuck)
            .map(|(_, s)| s.as_str());
        assert!(
            state.is_some_and(|s| s.starts_with("Terminating")),
            "{state:?}"
        );
        let history = w.history("e2e").await.unwrap();
        let recorded = history.iter().any(|i| {
            i.get("source")
                .and_then(|v| v.as_s().ok())
                .map(String::as_str)
                == Some("rollback")
                && i.get("status")
                    .and_then(|v| v.as_s().ok())
                    .map(String::as_str)
                    == Some("done")
        });
        assert!(recorded, "rollback recorded in history");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_desired_capacity_changed_behind_our_back_is_recorded_as_drift() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let (w, _prom, cfg) = setup(
            WorldOptions {
                workers: 2,
                ..WorldOptions::default()
            },
            20.0,
            80.0,
            "",
        )
        .await;
        let d = once(&w, &cfg, &[]).await;
        assert_eq!(d["to"], 3, "{d}");
        // Someone changes the group by hand.
        w.autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(&w.asg_name)
            .desired_capacity(5)
            .send()
            .await
            .unwrap();
        once(&w, &cfg, &[]).await;
        let history = w.history("e2e").await.unwrap();
        let drift: Vec<_> = history
            .iter()
            .filter(|i| {
                i.get("action")
                    .and_then(|v| v.as_s().ok())
                    .map(String::as_str)
                    == Some("drift")
            })
            .collect();
        assert_eq!(drift.len(), 1, "one drift record");
        let n = |k: &str| drift[0].get(k).and_then(|v| v.as_n().ok()).cloned();
        assert_eq!(
            (n("from").as_deref(), n("to").as_deref()),
            (Some("3"), Some("5"))
        );
    })
    .await
    .expect("test timed out");
}

/// The demand history the controller itself would have recorded yesterday (the state record's
/// `forecast` attribute, policy/forecast.rs): 1 core until a few minutes from now a day ago,
/// then 7 cores.
fn yesterday_rose(now: i64) -> String {
    const BUCKET: i64 = 300;
    let rise_after = (now - 86_400) / BUCKET + 2;
    let first = rise_after - 12;
    let peaks: Vec<f64> = (first..rise_after + 12)
        .map(|b| if b <= rise_after { 1.0 } else { 7.0 })
        .collect();
    json!({"first": first, "peaks": peaks, "open": null, "scored": []}).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forecast_rise_scales_up_before_any_pod_is_pending() {
    use aws_sdk_dynamodb::types::AttributeValue;
    tokio::time::timeout(Duration::from_secs(120), async {
        let (w, _prom, cfg) = setup(
            WorldOptions {
                workers: 2,
                ..WorldOptions::default()
            },
            // Usage is low and scale-down immediate: only the forecast keeps new nodes.
            10.0,
            20.0,
            // A lead of 30 minutes reaches yesterday's rise from any moment of this test.
            "policy:\n  forecast: {enabled: true, lead: 30m}\n  scale_down: {sustained: 0s}\n  cooldown: {after_scale_up: 0s, after_scale_down: 0s}\n",
        )
        .await;
        let workers = worker_names(&w).await;
        for (i, node) in workers.iter().enumerate() {
            w.create_replica(&format!("web{i}"), "500m", "256Mi", node)
                .await
                .unwrap();
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        w.dynamodb
            .put_item()
            .table_name(&w.table)
            .item("cluster_id", AttributeValue::S("e2e".into()))
            .item("record", AttributeValue::S("state".into()))
            .item("forecast", AttributeValue::S(yesterday_rose(now)))
            .send()
            .await
            .unwrap();

        let d = once(&w, &cfg, &[]).await;
        assert_eq!(d["action"], "scale_up", "{d}");
        assert!(
            reasons(&d).contains("cores within 1800s (seasonal +6.0, trend +0.0)"),
            "{d}"
        );
        assert!(reasons(&d).contains("pre-warming"), "{d}");
        assert_eq!(w.unschedulable_pods().await.unwrap(), 0, "no pod is pending");
        let (desired, _) = w.group().await.unwrap();
        assert!(desired > 2, "desired {desired}");
        // The nodes join and are Ready before the pods that will need them exist.
        w.wait_nodes("the pre-warmed workers Ready", Duration::from_secs(30), |n| {
            n == desired as usize
        })
        .await
        .unwrap();
        assert_eq!(w.unschedulable_pods().await.unwrap(), 0);
        // Next cycle (a new process: the history and the hold come from the state record): an
        // empty pre-warmed node could go by usage, but the forecast keeps its room.
        let d = once(&w, &cfg, &[]).await;
        assert_eq!(d["action"], "none", "{d}");
        assert!(
            reasons(&d).contains("but the forecast holds room for +6.0 cores"),
            "{d}"
        );
    })
    .await
    .expect("test timed out");
}
