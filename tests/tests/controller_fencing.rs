//! AWS calls carry no fencing token, so the controller's last line of defence against a stale
//! leader is the lease check right before each AWS write. This freezes a replica at exactly that
//! point (after it decided, before the check: the test-only pause point in
//! controller/src/testing.rs), lets another replica take over and act, resumes the frozen one, and
//! checks it sends nothing to AWS — for growing and for shrinking decisions alike.
//! `TESTWORLD_FENCING_RUNS` sets the number of runs (10 here; 100+ for the soak in the README).

use serde_json::{Value, json};
use smartscale_testworld::process::{free_port, poll_until};
use smartscale_testworld::world::{World, WorldOptions, product_command, prometheus_at};
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Replica {
    child: tokio::process::Child,
    port: u16,
    log: PathBuf,
}

impl Replica {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn metrics(port: u16) -> Option<String> {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()?;
    r.text().await.ok()
}

/// AWS writes this process has sent (its own `smartscale_aws_calls_total`).
fn writes(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("smartscale_aws_calls_total{"))
        .filter(|l| {
            l.contains("\"SetDesiredCapacity\"")
                || l.contains("\"TerminateInstanceInAutoScalingGroup\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn spawn(w: &World, cfg: &Path, port: u16, name: &str, pause_file: Option<&Path>) -> Replica {
    let log = w.dir.path().join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = product_command(w, "smartscale-controller").unwrap();
    cmd.arg("--config")
        .arg(cfg)
        .arg("run")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    if let Some(p) = pause_file {
        cmd.env("TESTWORLD_PAUSE_AT", "before-final-lease-check")
            .env("TESTWORLD_PAUSE_FILE", p);
    }
    Replica {
        child: cmd.spawn().unwrap(),
        port,
        log,
    }
}

fn signal(r: &Replica, sig: i32) {
    if let Some(pid) = r.child.id() {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, sig) };
    }
}

fn config(w: &World, prom: &str, port: u16) -> PathBuf {
    let base = std::fs::read_to_string(w.controller_config(prom, "").unwrap()).unwrap();
    let base: String = base
        .lines()
        .filter(|l| {
            !l.starts_with("interval:")
                && !l.starts_with("state:")
                && !l.starts_with("  table:")
                && !l.starts_with("  lease_ttl:")
        })
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace("timeout: 500ms", "timeout: 200ms");
    let path = w.dir.path().join(format!("fencing-{port}.yaml"));
    std::fs::write(
        &path,
        format!(
            "{base}interval: 250ms\nstate: {{table: {}, lease_ttl: 1s}}\npolicy:\n  scale_down: {{sustained: 0s}}\n  cooldown: {{after_scale_up: 0s, after_scale_down: 0s}}\napi: {{listen: '127.0.0.1:{port}'}}\n",
            w.table
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_frozen_before_its_final_lease_check_sends_nothing_after_a_takeover() {
    let runs: usize = std::env::var("TESTWORLD_FENCING_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    tokio::time::timeout(Duration::from_secs(60 + 20 * runs as u64), async {
        let w = World::start(WorldOptions { workers: 2, max: 8, complete_terminations: true, ..WorldOptions::default() })
            .await
            .unwrap();
        let prom = prometheus_at(10.0, 20.0, 2).await.unwrap();
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(w.kube.clone(), "default");
        let (mut grows, mut shrinks) = (0, 0);
        for run in 0..runs {
            // Even runs want a scale-up (pods no node can take), odd runs a scale-down (idle nodes).
            let grow = run % 2 == 0;
            if grow {
                let (desired, _) = w.group().await.unwrap();
                for i in 0..desired as usize + 1 {
                    w.create_pod(&format!("wide-{run}-{i}"), "1500m", "1Gi", None, json!({})).await.unwrap();
                }
            } else {
                for p in pods.list(&Default::default()).await.unwrap().items {
                    let _ = pods.delete(p.metadata.name.as_deref().unwrap(), &Default::default()).await;
                }
            }
            let pause_file = w.dir.path().join(format!("paused-{run}"));
            let (pa, pb) = (free_port().unwrap(), free_port().unwrap());
            let mut a = spawn(&w, &config(&w, prom.url(), pa), pa, &format!("frozen-{run}"), Some(&pause_file));
            poll_until("A frozen at its final lease check", Duration::from_secs(30), || async {
                Ok(pause_file.exists().then_some(()))
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
            let before = history_len(&w).await;
            let mut b = spawn(&w, &config(&w, prom.url(), pb), pb, &format!("taker-{run}"), None);
            // B takes the expired lease over, waits out the takeover grace, and acts.
            let acted = poll_until("B to act", Duration::from_secs(30), || async {
                let h = history(&w).await;
                Ok(h.iter().skip(before).find(|r| r["status"] == "done").cloned())
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", b.log()));
            if acted["action"] == "scale_up" { grows += 1 } else { shrinks += 1 }
            // Resume A while B holds the lease: its check finds its lease stale.
            signal(&a, libc::SIGCONT);
            poll_until("A to notice", Duration::from_secs(20), || async {
                let log = a.log();
                Ok((log.contains("lease lost") || log.contains("fenced")).then_some(()))
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
            let sent = writes(&metrics(pa).await.unwrap_or_default());
            assert_eq!(sent, 0.0, "run {run}: the frozen replica sent an AWS write after resuming:\n{}", a.log());
            for r in [&a, &b] {
                signal(r, libc::SIGTERM);
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), a.child.wait()).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), b.child.wait()).await;
            let _ = (a.port, b.port);
        }
        eprintln!("{runs} runs: {grows} scale-ups and {shrinks} scale-downs taken over; the frozen replica sent nothing in any");
        assert!(grows > 0 && shrinks > 0, "both kinds of decision were exercised: {grows} up, {shrinks} down");
    })
    .await
    .expect("test timed out");
}

async fn history(w: &World) -> Vec<Value> {
    let mut items: Vec<Value> = w
        .history("e2e")
        .await
        .unwrap()
        .iter()
        .map(|i| {
            let s = |k: &str| {
                i.get(k)
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default()
            };
            json!({"time": s("time"), "action": s("action"), "status": s("status")})
        })
        .collect();
    items.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    items
}

async fn history_len(w: &World) -> usize {
    history(w).await.len()
}
