//! The controller's Lambda mode under the real AWS Lambda Runtime Interface Emulator, against the
//! test world (the AWS model, the real Kubernetes control plane, real Prometheus): an EventBridge
//! scheduled event scales the group exactly as `once` does; two concurrent invocations act
//! once; a function timeout shorter than a slow Prometheus ends with a clear error and writes
//! nothing; bad input (a malformed event, a missing config parameter, SNS and CloudWatch down)
//! still decides and acts, and says so.
//!
//! Needs `cargo build --workspace --bins` and `scripts/setup-backends.sh` (moto, Prometheus, the
//! control plane and the emulator).

use serde_json::{Value, json};
use smartscale_testworld::lambda_rie::{
    Function, FunctionOptions, IDENTITY_SECRET, publish_identity, put_config_parameter,
    scheduled_event,
};
use smartscale_testworld::process::{free_port, poll_until};
use smartscale_testworld::prometheus::Prometheus;
use smartscale_testworld::world::{
    World, WorldOptions, controller_config_text, product_command, prometheus_at,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

const PARAMETER: &str = "/smartscale/e2e/controller/config";

struct Setup {
    w: World,
    _prom: Prometheus,
    prom_url: String,
    /// The same config as a file, for `once`.
    file: PathBuf,
}

/// A world whose new instances stay booting (in flight), Prometheus at 50 % CPU, the config in
/// SSM and as a file, the function's identity in Secrets Manager, and three pods that need
/// three more nodes.
async fn setup(extra: &str) -> Setup {
    let w = World::start(WorldOptions {
        workers: 2,
        auto_join: false,
        ..WorldOptions::default()
    })
    .await
    .unwrap();
    let (_, instances) = w.group().await.unwrap();
    for (id, _) in &instances {
        w.register_node(id).await.unwrap();
    }
    let prom = prometheus_at(50.0, 40.0, 2).await.unwrap();
    let prom_url = prom.url().to_string();
    let text = controller_config_text("e2e", &w.table, &w.asg_name, &prom_url, extra);
    put_config_parameter(&w, PARAMETER, &text).await.unwrap();
    publish_identity(&w).await.unwrap();
    let file = w.controller_config(&prom_url, extra).unwrap();
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
    Setup {
        w,
        _prom: prom,
        prom_url,
        file,
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn function_env(parameter: &str) -> Vec<(String, String)> {
    env(&[
        ("SMARTSCALE_CONFIG_PARAMETER", parameter),
        ("SMARTSCALE_KUBERNETES_SECRET", IDENTITY_SECRET),
    ])
}

async fn start(w: &World, timeout_s: u32, env: Vec<(String, String)>) -> Function {
    Function::start(w, FunctionOptions { timeout_s, env })
        .await
        .unwrap()
}

/// History records of the live cluster: (action, status).
async fn history(w: &World) -> Vec<(String, String)> {
    w.history("e2e")
        .await
        .unwrap()
        .iter()
        .filter(|i| {
            i.get("record")
                .and_then(|r| r.as_s().ok())
                .is_some_and(|r| r.starts_with("history#"))
        })
        .map(|i| {
            let s = |k: &str| {
                i.get(k)
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default()
            };
            (s("action"), s("status"))
        })
        .collect()
}

fn kinds(v: &Value) -> Vec<String> {
    v["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn subcommand(w: &World, args: &[&str], extra_env: &[(&str, &str)]) -> Value {
    let out = product_command(w, "smartscale-controller")
        .unwrap()
        .args(args)
        .envs(extra_env.iter().copied())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_event_scales_the_group_exactly_as_once_does() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let s = setup("").await;
        let w = &s.w;
        // What `once` decides on this very cluster (a dry run writes nothing live).
        let dry = w.controller_once(&s.file, &["--dry-run"]).await.unwrap();
        assert_eq!(dry["action"], "scale_up", "{dry}");

        let f = start(w, 30, function_env(PARAMETER)).await;
        let r = f.invoke(&scheduled_event(&w.region)).await.unwrap();
        assert!(!r.failed(), "{} / {}", r.text, f.log());
        let d = &r.body;
        for key in ["action", "node_group", "from", "to", "reasons", "in_flight", "rollback"] {
            assert_eq!(d[key], dry[key], "`{key}` differs from once's: {d} vs {dry}");
        }
        assert_eq!((d["from"].as_u64(), d["to"].as_u64()), (Some(2), Some(5)), "{d}");
        assert_eq!(d["leader"], true);
        assert_eq!(d["dry_run"], false);
        assert!(d["fencing_token"].as_u64().is_some(), "{d}");
        assert_eq!(d["problems"], json!([]), "{d}");
        assert_eq!(d["invocation"]["cold_start"], true);
        assert_eq!(d["invocation"]["config_source"], format!("ssm:{PARAMETER}"));
        assert_eq!(w.group().await.unwrap().0, 5);
        let h = history(w).await;
        assert_eq!(
            h.iter().filter(|(a, st)| a == "scale_up" && st == "done").count(),
            1,
            "{h:?}"
        );

        // Warm: the three new instances are booting; no second scale-up, as once says too.
        let r = f.invoke(&scheduled_event(&w.region)).await.unwrap();
        assert!(!r.failed(), "{}", r.text);
        assert_eq!(r.body["invocation"]["cold_start"], false);
        let once = w.controller_once(&s.file, &[]).await.unwrap();
        for d in [&r.body, &once] {
            assert_eq!(d["action"], "none", "{d}");
            assert_eq!(d["in_flight"], 3, "{d}");
            assert!(d["reasons"].to_string().contains("already booting"), "{d}");
        }
        assert_eq!(w.group().await.unwrap().0, 5);

        // No Kubernetes credential in the function's environment.
        let environ = f.bootstrap_environment();
        assert!(!environ.is_empty(), "the bootstrap's environment was not found");
        assert!(
            environ.iter().all(|e| !e.starts_with("KUBECONFIG=")
                && !e.contains("eyJ")
                && !e.starts_with("SMARTSCALE_KUBERNETES_TOKEN")),
            "{environ:?}"
        );

        // status and history read DynamoDB, from the config in SSM (no --config).
        let param = [("SMARTSCALE_CONFIG_PARAMETER", PARAMETER)];
        let st = subcommand(w, &["status"], &param).await;
        assert_eq!(st["cluster_id"], "e2e", "{st}");
        assert_eq!(st["last"]["action"], "none", "{st}");
        assert!(st["lease"]["fencing_token"].as_u64().unwrap_or(0) >= 2, "{st}");
        assert_eq!(st["state"]["intent"], Value::Null, "{st}");
        let hist = subcommand(w, &["history", "--limit", "10"], &param).await;
        let records = hist["history"].as_array().unwrap();
        assert!(
            records
                .iter()
                .any(|r| r["action"] == "scale_up" && r["status"] == "done" && r["to"] == 5),
            "{hist}"
        );

        let reports = f.wait_reports(2).await.unwrap();
        let init = f.init_durations_ms();
        println!(
            "lambda durations (debug build): init {init:?} ms, cold invocation {:.1} ms, warm invocation {:.1} ms",
            reports[0].duration_ms, reports[1].duration_ms
        );
        f.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_concurrent_invocations_cause_one_action() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let s = setup("").await;
        let w = &s.w;
        // Two execution environments, as Lambda would start without reserved concurrency 1.
        let (a, b) = tokio::join!(
            start(w, 30, function_env(PARAMETER)),
            start(w, 30, function_env(PARAMETER))
        );
        let event = scheduled_event(&w.region);
        let (ra, rb) = tokio::join!(a.invoke(&event), b.invoke(&event));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(!ra.failed() && !rb.failed(), "{} / {}", ra.text, rb.text);
        let ups = [&ra.body, &rb.body]
            .iter()
            .filter(|d| d["action"] == "scale_up")
            .count();
        assert_eq!(ups, 1, "{} / {}", ra.body, rb.body);
        assert_eq!(w.group().await.unwrap().0, 5);
        let h = history(w).await;
        // The intent and its outcome are one record.
        let ups: Vec<_> = h.iter().filter(|(a, _)| a == "scale_up").collect();
        assert_eq!(ups.len(), 1, "{h:?}");
        assert_eq!(ups[0].1, "done", "{h:?}");
        a.shutdown().await;
        b.shutdown().await;
    })
    .await
    .expect("test timed out");
}

/// A Prometheus that accepts connections and never answers.
async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_timeout_shorter_than_a_slow_prometheus_ends_with_a_clear_error_and_writes_nothing()
 {
    tokio::time::timeout(Duration::from_secs(180), async {
        let s = setup("").await;
        let w = &s.w;
        let (silent, _server) = silent_server().await;
        // A config that lets Prometheus take 20 s, in a function that has 3 s.
        let slow = format!(
            "cluster_id: e2e\ninterval: 30s\nprometheus:\n  url: {silent}\n  timeout: 20s\nstate:\n  table: {}\n  lease_ttl: 60s\nnode_groups:\n  - asg_name: {}\n    min: 1\n    max: 10\n",
            w.table, w.asg_name
        );
        put_config_parameter(w, "/smartscale/e2e/slow", &slow)
            .await
            .unwrap();
        let f = start(w, 3, function_env("/smartscale/e2e/slow")).await;
        let r = f.invoke(&scheduled_event(&w.region)).await.unwrap();
        assert_eq!(
            r.error_type.as_deref(),
            Some("SmartScale.deadline"),
            "{} / {}",
            r.text,
            f.log()
        );
        let message = r.body["errorMessage"].as_str().unwrap_or_default();
        for part in [
            "cancelled before it acted",
            "the lease was handed back",
            "no answer yet: [prometheus",
            "prometheus.timeout (20s) is longer than the function's ",
        ] {
            assert!(message.contains(part), "`{part}` not in: {message}");
        }
        // The time the invocation had left when it started: the 3 s timeout less
        // however long the runtime took to hand the event over (a slow machine: 2.9 s).
        let left = message
            .split("is longer than the function's ")
            .nth(1)
            .and_then(|rest| rest.split('s').next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no time left in: {message}"));
        assert!((2.0..=3.0).contains(&left), "{left}s left of 3 s: {message}");
        assert!(r.wall < f.timeout, "answered after {:?}", r.wall);
        assert!(!r.text.contains("Task timed out"), "{}", r.text);

        // Nothing half-written: the group as it was, no history, no intent, the lease free.
        assert_eq!(w.group().await.unwrap().0, 2);
        assert_eq!(history(w).await, vec![]);
        let st = subcommand(w, &["--config", s.file.to_str().unwrap(), "status"], &[]).await;
        assert_eq!(st["state"]["intent"], Value::Null, "{st}");
        assert!(
            st["lease"]["expires_in_s"].as_f64().unwrap_or(0.0) < 0.0,
            "the lease was not handed back: {st}"
        );
        // The next run acts at once: no lease to wait for, nothing to settle.
        let once = w.controller_once(&s.file, &[]).await.unwrap();
        assert_eq!(once["action"], "scale_up", "{once}");
        assert_eq!(w.group().await.unwrap().0, 5);
        f.shutdown().await;
    })
    .await
    .expect("test timed out");
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_event_a_missing_config_parameter_and_sns_and_cloudwatch_down_still_decide_and_act()
 {
    tokio::time::timeout(Duration::from_secs(180), async {
        let extra = "notifications: {sns_topic_arn: 'arn:aws:sns:us-east-1:123456789012:smartscale-e2e'}\ncloudwatch: {enabled: true}";
        let s = setup(extra).await;
        let w = &s.w;
        // The packaged config (the parameter named below does not exist).
        let packaged = w.dir.path().join("task/controller.yaml");
        write(
            &packaged,
            &controller_config_text("e2e", &w.table, &w.asg_name, &s.prom_url, extra),
        );
        let (hanging, _server) = silent_server().await;
        let refused = format!("http://127.0.0.1:{}", free_port().unwrap());
        let mut e = function_env("/smartscale/e2e/missing");
        e.extend(env(&[
            ("SMARTSCALE_CONFIG_FILE", packaged.to_str().unwrap()),
            ("AWS_ENDPOINT_URL_SNS", &refused),
            ("AWS_ENDPOINT_URL_CLOUDWATCH", &hanging),
        ]));
        let f = start(w, 30, e).await;
        let malformed = json!({"source": "aws.s3", "detail-type": "Object Created", "detail": {}});
        let r = f.invoke(&malformed).await.unwrap();
        assert!(!r.failed(), "{} / {}", r.text, f.log());
        let d = &r.body;
        assert_eq!(d["action"], "scale_up", "{d}");
        assert_eq!(w.group().await.unwrap().0, 5, "it acted");
        assert_eq!(
            d["invocation"]["config_source"],
            format!("file:{}", packaged.display())
        );
        let mut k = kinds(d);
        k.sort();
        assert_eq!(
            k,
            ["cloudwatch", "config_source", "event", "notification"],
            "{d}"
        );
        for p in d["problems"].as_array().unwrap() {
            assert!(!p["detail"].as_str().unwrap_or_default().is_empty(), "{p}");
        }
        let text = d["problems"].to_string();
        assert!(text.contains("/smartscale/e2e/missing"), "{text}");
        assert!(text.contains("aws.s3"), "{text}");
        // Logged, each of them.
        let log = f.log();
        for kind in ["event", "config_source", "notification", "cloudwatch"] {
            assert!(
                log.lines().any(|l| l.contains("\"problem\"") && l.contains(&format!("\"kind\":\"{kind}\""))),
                "no log line for {kind}: {log}"
            );
        }
        f.shutdown().await;
    })
    .await
    .expect("test timed out");
}
