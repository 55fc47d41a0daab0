//! The controller's HTTP API and dry-run, end to end: `run` against the test world.

use serde_json::{Value, json};
use smartscale_testworld::process::{free_port, poll_until};
use smartscale_testworld::prometheus::{ClusterMetrics, Prometheus, SyntheticNode};
use smartscale_testworld::world::{World, WorldOptions, product_command};
use std::time::Duration;

const TOKEN: &str = "s3cr3t-api-token-for-tests-only";
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

async fn prometheus(cpu: f64, mem: f64) -> Prometheus {
    let nodes = (0..2)
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
    .unwrap()
}

/// A webhook receiver; returns its URL and the JSON bodies it got.
async fn webhook() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

struct Running {
    child: tokio::process::Child,
    base: String,
    log: std::path::PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `smartscale-controller run` and waits until its API answers.
async fn start(w: &World, prom_url: &str, extra: &str, args: &[&str]) -> Running {
    let port = free_port().unwrap();
    let token_file = w.dir.path().join("api-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let cfg = w
        .controller_config(
            prom_url,
            &format!(
                "api:\n  listen: 127.0.0.1:{port}\n  token_file: {}\n{extra}",
                token_file.display()
            ),
        )
        .unwrap();
    // `max=N` in `args` lowers the group's configured maximum (the config has one node group).
    let args: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| match a.strip_prefix("max=") {
            Some(max) => {
                let text = std::fs::read_to_string(&cfg).unwrap();
                std::fs::write(&cfg, text.replacen("max: 10", &format!("max: {max}"), 1)).unwrap();
                false
            }
            None => true,
        })
        .collect();
    let log = w.dir.path().join(format!("controller-{port}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let child = product_command(w, "smartscale-controller")
        .unwrap()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .args(args)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let url = format!("{base}/status");
    let log2 = log.clone();
    poll_until("the controller's API", Duration::from_secs(30), || {
        let (http, url, log2) = (http.clone(), url.clone(), log2.clone());
        async move {
            let ok = http.get(&url).send().await.is_ok();
            if !ok
                && std::fs::read_to_string(&log2)
                    .unwrap_or_default()
                    .contains("error:")
            {
                panic!(
                    "controller failed: {}",
                    std::fs::read_to_string(&log2).unwrap_or_default()
                );
            }
            Ok(ok.then_some(()))
        }
    })
    .await
    .unwrap();
    Running { child, base, log }
}

async fn scale(r: &Running, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/scale", r.base))
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

/// (AWS calls so far, decisions so far) from the metrics text.
fn counts(metrics: &str) -> (f64, f64) {
    let sum = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (
        sum("smartscale_aws_calls_total{"),
        sum("smartscale_decisions_total{"),
    )
}

/// The `smartscale_aws_calls_total` lines of a metrics text (for failure messages).
fn aws_call_lines(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with("smartscale_aws_calls_total{"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn get(r: &Running, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("{}{path}", r.base)).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn api_authenticates_validates_clamps_and_reports() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let w = World::start(WorldOptions {
            workers: 2,
            ..WorldOptions::default()
        })
        .await
        .unwrap();
        let prom = prometheus(50.0, 40.0).await;
        let (hook_url, hooks) = webhook().await;
        let notify = format!("notifications: {{webhook_url: '{hook_url}'}}\n");
        let mut r = start(&w, prom.url(), &notify, &[]).await;

        poll_until("healthy, a cycle done", Duration::from_secs(20), || async {
            let decided = get(&r, "/metrics")
                .await
                .1
                .contains("smartscale_decisions_total{");
            Ok((get(&r, "/healthz").await.0 == 200 && decided).then_some(()))
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {:?}\n{}",
                futures::executor::block_on(get(&r, "/healthz")),
                r.log()
            )
        });
        let (_, metrics) = get(&r, "/metrics").await;
        for needle in [
            "smartscale_decisions_total{",
            "smartscale_nodes{node_group=\"smartscale-workers\",state=\"desired\"} 2",
            "smartscale_lease_held{",
            "smartscale_fencing_token 1",
            "smartscale_cycle_duration_seconds_bucket",
            "smartscale_signal_value{signal=\"cpu\"}",
            "smartscale_estimated_hourly_cost_dollars{node_group=\"smartscale-workers\"} 0.0832",
            "smartscale_node_info{",
            "smartscale_aws_calls_total{",
        ] {
            assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
        }

        // Steady state (nothing to do): at most 2 AWS calls per cycle (renew the lease, describe the
        // groups). A cycle counts its calls as it makes them and its decision at its end, so a
        // snapshot taken mid-cycle holds up to 2 calls of a cycle not counted yet: allowed once.
        let (c0, d0) = counts(&metrics);
        let (c1, d1, after) = poll_until("5 more cycles", Duration::from_secs(20), || async {
            let text = get(&r, "/metrics").await.1;
            let (c, d) = counts(&text);
            Ok((d >= d0 + 5.0).then_some((c, d, text)))
        })
        .await
        .unwrap();
        let (calls, cycles) = (c1 - c0, d1 - d0);
        assert!(
            calls <= 2.0 * cycles + 2.0,
            "{calls} AWS calls in {cycles} steady-state cycles (at most 2 a cycle); calls by \
             operation, before:\n{}\nafter:\n{}",
            aws_call_lines(&metrics),
            aws_call_lines(&after)
        );

        assert_eq!(scale(&r, None, r#"{"action":"scale_up"}"#).await.0, 401);
        assert_eq!(
            scale(&r, Some("wrong"), r#"{"action":"scale_up"}"#).await.0,
            401
        );
        let (code, body) = scale(&r, Some(TOKEN), "{not json").await;
        assert_eq!(code, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains("bad JSON"));
        let (code, body) = scale(&r, Some(TOKEN), r#"{"action":"explode"}"#).await;
        assert_eq!(code, 400);
        assert!(body["error"].as_str().unwrap().contains("`explode` is not"));

        // Concurrent requests: one is accepted (and clamped to max 10), the others wait their turn.
        let body = r#"{"action":"scale_up","count":20,"reason":"load test"}"#;
        let answers = futures::future::join_all((0..4).map(|_| scale(&r, Some(TOKEN), body))).await;
        let accepted: Vec<&Value> = answers
            .iter()
            .filter(|(c, _)| *c == 202)
            .map(|(_, b)| b)
            .collect();
        assert_eq!(accepted.len(), 1, "{answers:?}");
        assert!(
            answers.iter().all(|(c, _)| *c == 202 || *c == 409),
            "{answers:?}"
        );
        assert!(answers.iter().any(|(c, _)| *c == 409), "{answers:?}");
        assert_eq!(accepted[0]["to"], 10);
        assert!(
            accepted[0]["clamped"]
                .as_str()
                .unwrap()
                .contains("clamped to 10")
        );
        poll_until("desired 10", Duration::from_secs(10), || async {
            Ok((w.group().await?.0 == 10).then_some(()))
        })
        .await
        .unwrap();

        // The fencing window (last lease check → the write leaving the process) is measured.
        let m = get(&r, "/metrics").await.1;
        let value = |name: &str| {
            m.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        let (count, sum) = (
            value("smartscale_fence_window_seconds_count"),
            value("smartscale_fence_window_seconds_sum"),
        );
        assert!(count >= 1.0, "no write measured:\n{m}");
        eprintln!(
            "fencing window: {:.1} µs on average over {count} writes",
            sum / count * 1e6
        );
        assert!(sum / count < 0.05, "the window is {} s", sum / count);

        // The executed action was announced on the webhook (Slack-style `text`).
        let note = poll_until(
            "a webhook notification",
            Duration::from_secs(10),
            || async { Ok(hooks.lock().unwrap().first().cloned()) },
        )
        .await
        .unwrap();
        let text = note["text"].as_str().unwrap();
        assert!(
            text.contains("scale_up smartscale-workers 2 → 10") && text.contains("load test"),
            "{text}"
        );
        assert!(!text.contains(TOKEN));

        let (code, history) = get(&r, "/history?limit=5").await;
        assert_eq!(code, 200);
        let history: Value = serde_json::from_str(&history).unwrap();
        let first = &history["history"][0];
        assert_eq!(first["source"], "api", "{history}");
        assert_eq!(
            (first["from"].as_u64(), first["to"].as_u64()),
            (Some(2), Some(10))
        );
        assert!(first["reasons"][0].as_str().unwrap().contains("load test"));
        let times: Vec<&str> = history["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["time"].as_str().unwrap())
            .collect();
        assert!(
            times.windows(2).all(|p| p[0] > p[1]),
            "newest first: {times:?}"
        );
        assert_eq!(get(&r, "/history?limit=abc").await.0, 400);

        let (_, status) = get(&r, "/status").await;
        let status: Value = serde_json::from_str(&status).unwrap();
        assert_eq!(status["cluster_id"], "e2e");

        // SIGTERM: clean exit, lease handed back, and the token was never logged.
        let pid = r.child.id().unwrap() as i32;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(10), r.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{}", r.log());
        assert!(!r.log().contains(TOKEN));
        let lease = w
            .dynamodb
            .get_item()
            .table_name(&w.table)
            .key(
                "cluster_id",
                aws_sdk_dynamodb::types::AttributeValue::S("e2e".into()),
            )
            .key(
                "record",
                aws_sdk_dynamodb::types::AttributeValue::S("lease".into()),
            )
            .send()
            .await
            .unwrap();
        let item = lease.item().unwrap();
        let expires = item["lease_expires_at"].as_n().unwrap().clone();
        assert_eq!(expires, "0", "lease released on shutdown");
        assert!(
            !item.contains_key("expires_at"),
            "the lease never carries the table's TTL attribute (DynamoDB would delete it)"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_down_degrades_health_and_counts_errors() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let w = World::start(WorldOptions {
            workers: 2,
            ..WorldOptions::default()
        })
        .await
        .unwrap();
        let closed = format!("http://127.0.0.1:{}", free_port().unwrap());
        let r = start(&w, &closed, "", &[]).await;
        let body = poll_until("degraded health", Duration::from_secs(20), || async {
            let (code, body) = get(&r, "/healthz").await;
            Ok((code == 503 && body.contains("unreachable")).then_some(body))
        })
        .await
        .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "degraded");
        assert_eq!(v["dependencies"]["prometheus"]["ok"], false);
        assert_eq!(v["dependencies"]["autoscaling"]["ok"], true);
        let (_, metrics) = get(&r, "/metrics").await;
        assert!(
            metrics.contains("smartscale_errors_total{kind=\"prometheus\"}"),
            "{metrics}"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_never_writes_to_aws() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let w = World::start(WorldOptions { workers: 3, ..WorldOptions::default() }).await.unwrap();
        let before = w.activities().await.unwrap().len();
        // Low usage and an empty node: the policy wants to scale down at once.
        let prom = prometheus(10.0, 20.0).await;
        let fast = "policy:\n  scale_down: {sustained: 0s}\n  cooldown: {after_scale_up: 0s, after_scale_down: 0s}\n";
        let r = start(&w, prom.url(), fast, &["--dry-run"]).await;
        // A manual scale-up is accepted and recorded, not executed. (The loop's own dry-run
        // scale-downs may hold the action slot for a moment: 409 means "retry".)
        let body = poll_until("the manual request accepted", Duration::from_secs(10), || async {
            let (code, body) = scale(&r, Some(TOKEN), r#"{"action":"scale_up","count":2}"#).await;
            assert!(code == 202 || code == 409, "{code} {body}");
            Ok((code == 202).then_some(body))
        })
        .await
        .unwrap();
        assert_eq!(body["dry_run"], true);
        // Pending pods make the policy decide a scale-up too.
        for i in 0..4 {
            w.create_pod(&format!("big-{i}"), "1500m", "1Gi", None, json!({})).await.unwrap();
        }
        let history = poll_until("dry-run decisions recorded", Duration::from_secs(30), || async {
            let (_, h) = get(&r, "/history?limit=50").await;
            let v: Value = serde_json::from_str(&h).unwrap_or(Value::Null);
            let records = v["history"].as_array().cloned().unwrap_or_default();
            let done = |action: &str, source: &str| {
                records.iter().any(|h| h["action"] == action && h["source"] == source && h["status"] == "done")
            };
            Ok((done("scale_up", "api") && done("scale_up", "policy") && done("scale_down", "policy")).then_some(records))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.log()));
        assert!(history.iter().all(|h| h["dry_run"] == true));
        assert_eq!(w.activities().await.unwrap().len(), before, "no scaling activity in dry-run");
        assert_eq!(w.group().await.unwrap().0, 3);
        assert!(r.log().contains("dry-run: not calling"));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_refuses_manual_requests_and_scale_up_never_lowers_the_group() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let w = World::start(WorldOptions {
            workers: 3,
            ..WorldOptions::default()
        })
        .await
        .unwrap();
        let prom = prometheus(50.0, 40.0).await;
        // The configured max (2) is below the group's current size (3).
        let leader = start(&w, prom.url(), "", &["max=2"]).await;
        poll_until(
            "the first holds the lease",
            Duration::from_secs(20),
            || async {
                let (_, s) = get(&leader, "/status").await;
                let v: Value = serde_json::from_str(&s).unwrap_or(Value::Null);
                Ok((v["status"]["lease_holder"] == v["replica"]).then_some(()))
            },
        )
        .await
        .unwrap();
        let standby = start(&w, prom.url(), "", &["max=2"]).await;

        // The standby checks its dependencies too, so it reports healthy, but it does not act.
        poll_until("standby healthy", Duration::from_secs(20), || async {
            Ok((get(&standby, "/healthz").await.0 == 200).then_some(()))
        })
        .await
        .unwrap();
        let (code, body) = scale(&standby, Some(TOKEN), r#"{"action":"scale_up"}"#).await;
        assert_eq!(code, 409, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("does not hold the lease"),
            "{body}"
        );

        // On the holder, scale_up with desired 3 above max 2 is a no-op, never a reduction.
        let (code, body) = scale(&leader, Some(TOKEN), r#"{"action":"scale_up"}"#).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            (body["accepted"].as_bool(), body["to"].as_u64()),
            (Some(false), Some(3)),
            "{body}"
        );
        assert_eq!(w.group().await.unwrap().0, 3);
    })
    .await
    .expect("test timed out");
}

/// The API on a shared host: the token is checked before the body is read, bodies are small,
/// a client that never finishes its request head is cut off, and `/history` is served from a
/// short cache instead of querying DynamoDB on every unauthenticated request.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_refuses_oversized_unauthenticated_and_slow_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(Duration::from_secs(120), async {
        let w = World::start(WorldOptions { workers: 1, ..WorldOptions::default() }).await.unwrap();
        let prom = prometheus(50.0, 40.0).await;
        let r = start(&w, prom.url(), "", &[]).await;
        let addr = r.base.trim_start_matches("http://").to_string();
        let raw = |request: Vec<u8>| {
            let addr = addr.clone();
            async move {
                let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
                s.write_all(&request).await.unwrap();
                let mut answer = vec![0u8; 4096];
                let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer))
                    .await
                    .expect("an answer")
                    .unwrap_or(0);
                String::from_utf8_lossy(&answer[..n]).into_owned()
            }
        };
        // No token: 401 at once, though the request announces 50 MB it never sends.
        let answer = raw(b"POST /scale HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n\r\n".to_vec()).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        // With the token, a body over 16 KiB is refused.
        let big = format!("{{\"action\":\"scale_up\",\"reason\":\"{}\"}}", "x".repeat(20_000));
        let answer = raw(
            format!(
                "POST /scale HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{big}",
                big.len()
            )
            .into_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        // A request head that never ends is cut off (header read timeout, 5 s).
        let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
        slow.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match slow.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the slow client was never cut off");
        assert!(started.elapsed() >= Duration::from_secs(4), "cut off after {:?}", started.elapsed());
        // /history: two answers within the cache's life are one DynamoDB query.
        let queries = |m: &str| {
            m.lines()
                .filter(|l| l.starts_with("smartscale_aws_calls_total{") && l.contains("\"Query\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        let before = queries(&get(&r, "/metrics").await.1);
        for _ in 0..5 {
            assert_eq!(get(&r, "/history?limit=5").await.0, 200);
        }
        let after = queries(&get(&r, "/metrics").await.1);
        assert!(after - before <= 1.0, "{} queries for 5 requests", after - before);
    })
    .await
    .expect("test timed out");
}
