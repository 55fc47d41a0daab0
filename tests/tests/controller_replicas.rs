//! Three `run` replicas on one table, with random kills and SIGSTOP/SIGCONT pauses while the
//! workload swings: never two scale actions for one decision, the lease is taken over within
//! 2 × TTL after the holder dies, and a resumed stale holder writes nothing.

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use smartscale_testworld::process::{free_port, poll_until};
use smartscale_testworld::prometheus::{ClusterMetrics, Prometheus, SyntheticNode};
use smartscale_testworld::world::{World, WorldOptions, product_command};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const TTL: Duration = Duration::from_secs(1);

struct Replica {
    child: tokio::process::Child,
    port: u16,
    cfg: PathBuf,
    log: PathBuf,
    paused: bool,
}

async fn spawn(w: &World, cfg: &PathBuf, port: u16, n: usize) -> Replica {
    let log = w.dir.path().join(format!("replica-{port}-{n}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let child = product_command(w, "smartscale-controller")
        .unwrap()
        .arg("--config")
        .arg(cfg)
        .arg("run")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let r = Replica {
        child,
        port,
        cfg: cfg.clone(),
        log,
        paused: false,
    };
    let up = poll_until(
        "the replica's API",
        Duration::from_secs(20),
        || async move { Ok(status(port).await.map(|_| ())) },
    )
    .await;
    assert!(
        up.is_ok(),
        "replica did not start: {}",
        std::fs::read_to_string(&r.log).unwrap_or_default()
    );
    r
}

fn signal(r: &Replica, sig: i32) {
    if let Some(pid) = r.child.id() {
        unsafe { libc::kill(pid as i32, sig) };
    }
}

async fn status(port: u16) -> Option<Value> {
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/status"))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .ok()?;
    resp.json().await.ok()
}

/// Port of the replica that holds the lease, by its own account.
async fn leader(replicas: &[Replica]) -> Option<usize> {
    for (i, r) in replicas.iter().enumerate() {
        if r.paused {
            continue;
        }
        if let Some(s) = status(r.port).await
            && s["status"]["lease_holder"] == s["replica"]
            && s["replica"].is_string()
        {
            return Some(i);
        }
    }
    None
}

async fn history(w: &World) -> Vec<Value> {
    w.history("e2e")
        .await
        .unwrap()
        .iter()
        .map(|i| {
            let s = |k: &str| i.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
            let n = |k: &str| {
                i.get(k)
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0)
            };
            json!({"time": s("time"), "action": s("action"), "status": s("status"), "source": s("source"),
                "from": n("from"), "to": n("to"), "token": n("fencing_token")})
        })
        .collect()
}

fn decisions(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("smartscale_decisions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_under_kills_and_pauses_never_act_twice() {
    tokio::time::timeout(Duration::from_secs(600), async {
        // Terminations go through the hook, answered at once (as by an agent whose drain is done).
        let w = World::start(WorldOptions { workers: 2, max: 8, complete_terminations: true, ..WorldOptions::default() })
            .await
            .unwrap();
        let before = w.activities().await.unwrap();
        let nodes = (0..2)
            .map(|i| SyntheticNode::new(format!("n{i}"), 2, 10.0).with_memory(4.0 * GIB, 3.2 * GIB))
            .collect();
        let prom = Prometheus::start_scraping_with_history(ClusterMetrics::new(nodes, vec![]), Duration::from_secs(600))
            .await
            .unwrap();
        let extra = "interval: 250ms\nstate: {table: smartscale-state, lease_ttl: 1s}\npolicy:\n  scale_down: {sustained: 0s}\n  cooldown: {after_scale_up: 0s, after_scale_down: 0s}\n";
        let mut replicas = Vec::new();
        for n in 0..3 {
            let port = free_port().unwrap();
            let base = std::fs::read_to_string(w.controller_config(prom.url(), "").unwrap()).unwrap();
            // Drop the default interval/state lines in favour of the fast ones.
            let base: String = base
                .lines()
                .filter(|l| !l.starts_with("interval:") && !l.starts_with("state:") && !l.starts_with("  table:") && !l.starts_with("  lease_ttl:"))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
                .replace("timeout: 500ms", "timeout: 200ms");
            let cfg = w.dir.path().join(format!("replica-{n}.yaml"));
            std::fs::write(&cfg, format!("{base}{extra}api: {{listen: '127.0.0.1:{port}'}}\n")).unwrap();
            replicas.push(spawn(&w, &cfg, port, 0).await);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
        let started = Instant::now();
        let mut leader_cycles = 0.0;
        let mut seen: std::collections::HashMap<PathBuf, f64> = Default::default();
        let mut takeovers = Vec::new();
        let mut stale_resumes = 0;
        let mut round = 0;
        let tails = |replicas: &[Replica]| -> String {
            replicas
                .iter()
                .map(|r| {
                    let log = std::fs::read_to_string(&r.log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(8).collect();
                    format!("--- {}:\n{}", r.log.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        while leader_cycles < 200.0 || round < 12 {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "too slow: {leader_cycles} cycles after {round} rounds\n{}",
                tails(&replicas)
            );
            round += 1;
            // Workload swing: pending pods → scale-up; deleted → consolidation scale-downs.
            if round % 2 == 1 {
                for i in 0..2 {
                    let _ = w.create_pod(&format!("burst-{round}-{i}"), "1500m", "1Gi", None, json!({})).await;
                }
            } else {
                let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(w.kube.clone(), "default");
                for i in 0..2 {
                    let _ = pods.delete(&format!("burst-{}-{i}", round - 1), &Default::default()).await;
                }
            }
            // Let it work a little.
            tokio::time::sleep(Duration::from_millis(rng.random_range(800..1500))).await;
            // Chaos on the leader: kill it (and measure the takeover) or pause it past its lease.
            let Some(li) = leader(&replicas).await else { continue };
            if rng.random_bool(0.5) {
                if let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{}/metrics", replicas[li].port)).await {
                    seen.insert(replicas[li].log.clone(), decisions(&resp.text().await.unwrap_or_default()));
                }
                signal(&replicas[li], libc::SIGKILL);
                let _ = replicas[li].child.wait().await;
                let died = Instant::now();
                let dead_port = replicas[li].port;
                let took = poll_until("a new leader", Duration::from_secs(10), || {
                    let ports: Vec<u16> = replicas.iter().filter(|r| r.port != dead_port && !r.paused).map(|r| r.port).collect();
                    async move {
                        for p in ports {
                            if let Some(s) = status(p).await
                                && s["status"]["lease_holder"] == s["replica"]
                            {
                                return Ok(Some(()));
                            }
                        }
                        Ok(None)
                    }
                })
                .await;
                if took.is_ok() {
                    takeovers.push(died.elapsed());
                }
                let cfg = replicas[li].cfg.clone();
                replicas[li] = spawn(&w, &cfg, dead_port, round).await;
            } else {
                signal(&replicas[li], libc::SIGSTOP);
                replicas[li].paused = true;
                tokio::time::sleep(TTL * 2 + Duration::from_millis(rng.random_range(0..800))).await;
                signal(&replicas[li], libc::SIGCONT);
                replicas[li].paused = false;
                stale_resumes += 1;
            }
            // Cycles so far: the last count each process reported (killed ones keep theirs).
            for r in &replicas {
                if let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{}/metrics", r.port)).await {
                    let n = decisions(&resp.text().await.unwrap_or_default());
                    seen.insert(r.log.clone(), n);
                }
            }
            leader_cycles = seen.values().sum();
        }
        for r in &replicas {
            signal(r, libc::SIGTERM);
        }
        for r in &mut replicas {
            let _ = tokio::time::timeout(Duration::from_secs(10), r.child.wait()).await;
        }

        // Every launch and termination the ASG did is explained by a recorded decision.
        let records = history(&w).await;
        let acted = |status_ok: &dyn Fn(&str) -> bool| {
            let mut launches = 0;
            let mut terminations = 0;
            for h in &records {
                if !status_ok(h["status"].as_str().unwrap_or("")) {
                    continue;
                }
                let (from, to) = (h["from"].as_i64().unwrap(), h["to"].as_i64().unwrap());
                match h["action"].as_str() {
                    Some("scale_up") => launches += to - from,
                    Some("scale_down") => terminations += 1,
                    _ => {}
                }
            }
            (launches, terminations)
        };
        let (done_launches, done_terminations) = acted(&|s| s == "done");
        let (max_launches, max_terminations) = acted(&|s| s == "done" || s == "intent");
        let activities = w.activities().await.unwrap();
        let new: Vec<&String> = activities.iter().take(activities.len() - before.len()).collect();
        let launches = new.iter().filter(|a| a.starts_with("Launching")).count() as i64;
        let terminations = new.iter().filter(|a| a.starts_with("Terminating")).count() as i64;
        let summary = format!(
            "{leader_cycles} cycles, {} records, takeovers {takeovers:?}, {stale_resumes} stale resumes; \
             launches {launches} (records: {done_launches}..={max_launches}), terminations {terminations} (records: {done_terminations}..={max_terminations})",
            records.len()
        );
        eprintln!("{summary}");
        assert!(leader_cycles >= 200.0, "{summary}");
        assert!(done_launches + done_terminations > 0, "the workload made the controller act: {summary}\n{}", tails(&replicas));
        assert!((done_launches..=max_launches).contains(&launches), "{summary}");
        assert!((done_terminations..=max_terminations).contains(&terminations), "{summary}");
        assert!(!takeovers.is_empty() && stale_resumes > 0, "{summary}");
        for t in &takeovers {
            assert!(*t <= TTL * 2, "takeover took {t:?} > 2 × TTL: {summary}");
        }
        // Fencing: in time order, tokens never go back (a stale holder's write would).
        let mut tokens: Vec<(String, i64)> = records.iter().map(|h| (h["time"].as_str().unwrap().to_string(), h["token"].as_i64().unwrap())).collect();
        tokens.sort();
        assert!(tokens.windows(2).all(|p| p[0].1 <= p[1].1), "a write with an older fencing token came later: {tokens:?}");
        // The resumed stale holders noticed.
        // Every replica process's log, the killed ones' too.
        let logs: String = std::fs::read_dir(w.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("replica-"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        assert!(logs.contains("lease lost") || logs.contains("fenced") || logs.contains("lease lost:"), "no replica noticed losing the lease");
    })
    .await
    .expect("test timed out");
}
