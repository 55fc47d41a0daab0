//! `smartscale-agent run` and `drain` against the test world: the ASG termination hook, spot
//! interruption, PodDisruptionBudgets held past the heartbeat timeout (both `on_drain_timeout`
//! policies), a kill mid-drain (the hook completed exactly once), a manual drain, and an API
//! server that does not answer. Then what went wrong once: a stale manual-drain record, a manual
//! drain stopped early, an API server away for longer than the heartbeat timeout, a failed pass,
//! a refused completion, and a spot notice during an ASG termination.
//!
//! Each test has one worker: an instance of the AWS model's group, its fake IMDS, a fake API
//! server where its Node is registered, and the agent with the node's own kubelet identity.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use smartscale_testworld::apiserver::FakeApiServer;
use smartscale_testworld::aws::AwsModel;
use smartscale_testworld::imds::FakeImds;
use support::*;

const LIMIT: Duration = Duration::from_secs(120);

struct Worker {
    model: AwsModel,
    instance_id: String,
    imds: FakeImds,
    api: FakeApiServer,
    admin: kube::Client,
    node: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    metrics_port: u16,
    proxy: Option<CountingProxy>,
    /// Pods the drain must evict (`namespace/name`).
    evictable: Vec<String>,
    /// DaemonSet and mirror pods it must leave alone.
    left_alone: Vec<String>,
}

async fn worker(
    spec: GroupSpec,
    settings: &[(&str, &str)],
    proxy: bool,
    config_extra: &str,
) -> Worker {
    let model = AwsModel::start().await.expect("AWS model");
    let instance_id = create_group(&model, spec).await;
    let imds = FakeImds::for_model_instance(model.client(), &instance_id)
        .await
        .expect("imds");
    let node = node_name(&imds).await;
    let api = start_api(&model, &node).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = client(&api, dir.path(), ADMIN_TOKEN).await;
    api.write_kubeconfig(&dir.path().join("kubelet.kubeconfig"), Some(NODE_TOKEN))
        .expect("node kubeconfig");
    register_node(&admin, &node, &instance(&model, &instance_id).await).await;
    let mut all = vec![("terminate_hook_name", TERMINATE_HOOK)];
    all.extend_from_slice(settings);
    put_settings(&model, &all).await;
    let metrics_port = free_port();
    let config = write_config(
        dir.path(),
        &format!("metrics_listen: 127.0.0.1:{metrics_port}\n{config_extra}"),
    );
    let proxy = if proxy {
        Some(CountingProxy::start(model.endpoint()).await)
    } else {
        None
    };
    Worker {
        model,
        instance_id,
        imds,
        api,
        admin,
        node,
        dir,
        config,
        metrics_port,
        proxy,
        evictable: Vec::new(),
        left_alone: Vec::new(),
    }
}

impl Worker {
    /// `free` ReplicaSet pods (the first with an emptyDir), optionally `default/guarded-0` under a
    /// budget that allows no disruption, a DaemonSet pod and a mirror pod; waits until all run.
    async fn add_pods(&mut self, free: usize, guarded: bool) {
        create_daemonset(&self.admin).await;
        let mirror = create_mirror_pod(&self.admin, &self.node).await;
        for i in 0..free {
            create_pod(
                &self.admin,
                &self.node,
                &format!("free-{i}"),
                "free",
                i == 0,
            )
            .await;
            self.evictable.push(format!("default/free-{i}"));
        }
        if guarded {
            create_pod(&self.admin, &self.node, "guarded-0", "guarded", false).await;
            create_blocking_pdb(&self.admin, "guarded").await;
            self.evictable.push("default/guarded-0".into());
        }
        let (api, node, evictable, mirror) = (&self.api, &self.node, &self.evictable, &mirror);
        let ds_pod = eventually("all pods Running", Duration::from_secs(15), || async move {
            let running = pods_on(api, node, true);
            let ds = running
                .iter()
                .find(|p| p.starts_with("kube-system/node-exporter"))?;
            (evictable.iter().all(|p| running.contains(p)) && running.contains(mirror))
                .then(|| vec![ds.clone(), mirror.clone()])
        })
        .await;
        self.left_alone = ds_pod;
    }

    fn aws_endpoint(&self) -> String {
        self.proxy
            .as_ref()
            .map_or_else(|| self.model.endpoint().to_string(), |p| p.url.clone())
    }

    fn agent(&self, args: &[&str], log: &str) -> Agent {
        let env = agent_env(&self.aws_endpoint(), &self.imds.endpoint());
        Agent::spawn(&self.config, args, &env, &self.dir.path().join(log))
    }

    async fn run_agent(&self, log: &str) -> Agent {
        let agent = self.agent(&["run"], log);
        agent
            .wait_log(
                "watching IMDS for termination notices",
                Duration::from_secs(20),
            )
            .await;
        agent
    }

    async fn terminate(&self) -> Instant {
        asg_client(&self.model)
            .terminate_instance_in_auto_scaling_group()
            .instance_id(&self.instance_id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .expect("TerminateInstanceInAutoScalingGroup");
        let at = Instant::now();
        assert_eq!(self.lifecycle().await, "Terminating:Wait");
        at
    }

    async fn lifecycle(&self) -> String {
        instance(&self.model, &self.instance_id)
            .await
            .lifecycle_state
    }

    /// Time from `since` until the Node is cordoned.
    async fn cordoned_after(&self, since: Instant) -> Duration {
        eventually("node cordoned", Duration::from_secs(10), || async {
            smartscale_agent::k8s::is_cordoned(&node_obj(&self.api, &self.node))
                .then(|| since.elapsed())
        })
        .await
    }

    /// Every evictable pod evicted (a 201 in the eviction log), none deleted without an
    /// eviction, DaemonSet and mirror pods never touched.
    fn assert_evicted_properly(&self, evictable: &[String]) {
        let log = self.api.eviction_log();
        for pod in evictable {
            assert!(
                log.iter().any(|(p, status)| p == pod && *status == 201),
                "{pod} was not evicted: {log:?}"
            );
        }
        for pod in &self.left_alone {
            assert!(
                !log.iter().any(|(p, _)| p == pod),
                "{pod} must not be evicted: {log:?}"
            );
        }
        assert!(
            self.api.deletion_log().is_empty(),
            "pods deleted without eviction: {:?}",
            self.api.deletion_log()
        );
    }

    async fn metrics(&self) -> String {
        metrics_text(self.metrics_port).await
    }

    /// Puts a [`Gate`] between the agent and the API server (the node's kubeconfig points at it).
    fn gate_api(&self, gate: &Gate) {
        let kubeconfig = self
            .api
            .kubeconfig(Some(NODE_TOKEN))
            .replace(&self.api.url(), &gate.url);
        std::fs::write(self.dir.path().join("kubelet.kubeconfig"), kubeconfig)
            .expect("node kubeconfig through the gate");
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn marker_path(&self) -> PathBuf {
        smartscale_agent::pipeline::marker_path(&self.state_dir())
    }

    fn free_pods(&self) -> Vec<String> {
        self.evictable
            .iter()
            .filter(|p| p.contains("free"))
            .cloned()
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asg_termination_cordons_drains_and_completes_the_hook() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let mut w = worker(GroupSpec::default(), &[("drain_timeout", "60s")], false, "").await;
        w.add_pods(5, false).await;
        let mut agent = w.run_agent("agent.log").await;

        let t0 = w.terminate().await;
        let cordon = w.cordoned_after(t0).await;
        let done = wait_lifecycle(
            &w.model,
            &w.instance_id,
            &["Terminated"],
            Duration::from_secs(30),
        )
        .await;
        let total = t0.elapsed();
        eprintln!(
            "cordoned {} ms after Terminating:Wait; instance {done} after {} ms",
            cordon.as_millis(),
            total.as_millis()
        );
        assert!(cordon <= Duration::from_secs(2), "cordon took {cordon:?}");

        w.assert_evicted_properly(&w.evictable);
        let mut remaining = pods_on(&w.api, &w.node, false);
        remaining.retain(|p| !w.left_alone.contains(p));
        assert!(remaining.is_empty(), "pods left: {remaining:?}");
        // The model terminates the instance before the agent has read AWS's answer.
        agent
            .wait_log("lifecycle action completed", Duration::from_secs(5))
            .await;
        let log = agent.log();
        let at = |needle: &str| {
            log.find(needle)
                .unwrap_or_else(|| panic!("no `{needle}` in:\n{log}"))
        };
        assert!(at("node cordoned") < at("node drained"));
        assert!(at("node drained") < at("lifecycle action completed"));
        // The kubelet identity may not taint its own node (NodeRestriction): cordon only.
        assert!(log.contains("may not change the node's taints"), "{log}");
        assert!(!smartscale_agent::k8s::has_draining_taint(&node_obj(
            &w.api, &w.node
        )));

        let metrics = w.metrics().await;
        assert_eq!(
            sample(
                &metrics,
                "smartscale_agent_events_total{source=\"target_lifecycle\"}"
            ),
            Some(1.0),
            "{metrics}"
        );
        assert_eq!(
            sample(&metrics, "smartscale_agent_pods_evicted_total"),
            Some(5.0),
            "{metrics}"
        );
        assert!(
            sample(&metrics, "smartscale_agent_heartbeats_total").unwrap_or(0.0) >= 1.0,
            "{metrics}"
        );
        assert_eq!(
            sample(&metrics, "smartscale_agent_drain_duration_seconds_count"),
            Some(1.0),
            "{metrics}"
        );

        // A stop is not a termination: SIGTERM ends the daemon cleanly.
        agent.signal(SIGTERM);
        let status = agent.wait_exit(Duration::from_secs(5)).await;
        assert!(status.success(), "{status}: {}", agent.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_interruption_cordons_and_drains_before_the_deadline() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let spec = GroupSpec {
            spot: true,
            ..GroupSpec::default()
        };
        let mut w = worker(spec, &[], false, "").await;
        assert_eq!(instance(&w.model, &w.instance_id).await.market, "spot");
        w.add_pods(5, false).await;
        let agent = w.run_agent("agent.log").await;

        w.imds.inject_spot_instance_action(
            "terminate",
            jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120),
        );
        let t0 = Instant::now();
        let cordon = w.cordoned_after(t0).await;
        agent
            .wait_log("node drained", Duration::from_secs(90))
            .await;
        let drained = t0.elapsed();
        eprintln!(
            "spot: cordoned after {} ms, drained after {} ms",
            cordon.as_millis(),
            drained.as_millis()
        );
        assert!(cordon <= Duration::from_secs(2), "cordon took {cordon:?}");
        assert!(drained < Duration::from_secs(90));
        w.assert_evicted_properly(&w.evictable);
        // No hook waits on a spot interruption: nothing was completed, the instance is InService.
        assert_eq!(w.lifecycle().await, "InService");
        assert!(!agent.log().contains("lifecycle action completed"));
        let metrics = w.metrics().await;
        assert_eq!(
            sample(
                &metrics,
                "smartscale_agent_events_total{source=\"spot_interruption\"}"
            ),
            Some(1.0),
            "{metrics}"
        );
    })
    .await;
}

/// Advances the model clock by 10 s after each heartbeat while the instance is
/// `Terminating:Wait` (see [`support::advance_after_heartbeats`]); returns how far.
async fn advance_after_heartbeats(w: &Worker, steps: usize) -> f64 {
    let proxy = w
        .proxy
        .as_ref()
        .expect("these tests count heartbeats through the proxy");
    support::advance_after_heartbeats(&w.model, proxy, &w.instance_id, "Terminating:Wait", steps)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_budget_is_outlasted_by_heartbeats_then_continue_applies() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let settings = [
            ("drain_timeout", "6s"),
            ("heartbeat_interval", "500ms"),
            ("on_drain_timeout", "continue"),
        ];
        let mut w = worker(GroupSpec::default(), &settings, true, "").await;
        w.add_pods(3, true).await;
        let agent = w.run_agent("agent.log").await;

        let t0 = w.terminate().await;
        let advanced = advance_after_heartbeats(&w, 100).await;
        let state = wait_lifecycle(
            &w.model,
            &w.instance_id,
            &["Terminated"],
            Duration::from_secs(10),
        )
        .await;
        eprintln!(
            "instance {state} after {} ms; model clock advanced {advanced} s meanwhile",
            t0.elapsed().as_millis()
        );
        // HeartbeatTimeout is 30 s: only the heartbeats kept it waiting this long.
        assert!(
            advanced >= 40.0,
            "the instance stopped waiting after {advanced} s of model time"
        );

        agent
            .wait_log("lifecycle action completed", Duration::from_secs(5))
            .await;
        let log = agent.log();
        assert!(
            log.contains("drain deadline passed with 1 pod(s) left on the node"),
            "{log}"
        );
        assert!(
            log.contains("default/guarded-0 (eviction refused: 429"),
            "{log}"
        );
        let free: Vec<String> = w
            .evictable
            .iter()
            .filter(|p| p.contains("free"))
            .cloned()
            .collect();
        w.assert_evicted_properly(&free);
        let evictions = w.api.eviction_log();
        assert!(
            evictions
                .iter()
                .filter(|(p, _)| p == "default/guarded-0")
                .all(|(_, s)| *s == 429),
            "{evictions:?}"
        );
        let metrics = w.metrics().await;
        assert!(
            sample(&metrics, "smartscale_agent_heartbeats_total").unwrap_or(0.0) >= 6.0,
            "{metrics}"
        );
        assert_eq!(
            sample(&metrics, "smartscale_agent_pods_eviction_failed_total"),
            Some(1.0),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_heartbeating_holds_the_hook_until_the_budget_allows() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let settings = [
            ("drain_timeout", "3s"),
            ("heartbeat_interval", "500ms"),
            ("on_drain_timeout", "keep_heartbeating"),
        ];
        let mut w = worker(GroupSpec::default(), &settings, true, "").await;
        w.add_pods(2, true).await;
        let agent = w.run_agent("agent.log").await;

        w.terminate().await;
        agent
            .wait_log(
                "on_drain_timeout=keep_heartbeating",
                Duration::from_secs(15),
            )
            .await;
        assert!(agent.log().contains("default/guarded-0"), "{}", agent.log());
        // 50 s of model time, past the 30 s HeartbeatTimeout, and still waiting.
        assert_eq!(
            advance_after_heartbeats(&w, 5).await,
            50.0,
            "{}",
            agent.log()
        );
        assert_eq!(w.lifecycle().await, "Terminating:Wait", "{}", agent.log());
        delete_pdb(&w.admin, "guarded").await;
        wait_lifecycle(
            &w.model,
            &w.instance_id,
            &["Terminated"],
            Duration::from_secs(20),
        )
        .await;
        w.assert_evicted_properly(&w.evictable);
        agent
            .wait_log("lifecycle action completed", Duration::from_secs(5))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_drain_resumes_and_completes_the_hook_exactly_once() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let settings = [("drain_timeout", "60s"), ("heartbeat_interval", "1s")];
        let mut w = worker(GroupSpec::default(), &settings, true, "").await;
        w.add_pods(4, true).await;
        let first = w.run_agent("agent-1.log").await;
        w.terminate().await;
        first
            .wait_log("eviction blocked", Duration::from_secs(15))
            .await;
        let free: Vec<String> = w
            .evictable
            .iter()
            .filter(|p| p.contains("free"))
            .cloned()
            .collect();
        eventually("the free pods evicted", Duration::from_secs(15), || async {
            let log = w.api.eviction_log();
            free.iter()
                .all(|p| log.iter().any(|(e, s)| e == p && *s == 201))
                .then_some(())
        })
        .await;
        first.signal(SIGKILL);
        drop(first);
        let proxy = w.proxy.as_ref().expect("proxy");
        assert_eq!(proxy.count("CompleteLifecycleAction"), (0, 0));
        assert_eq!(w.lifecycle().await, "Terminating:Wait");

        let mut second = w.run_agent("agent-2.log").await;
        second
            .wait_log(
                "resuming the drain a previous agent started",
                Duration::from_secs(10),
            )
            .await;
        delete_pdb(&w.admin, "guarded").await;
        wait_lifecycle(
            &w.model,
            &w.instance_id,
            &["Terminated"],
            Duration::from_secs(20),
        )
        .await;
        w.assert_evicted_properly(&w.evictable);
        // The proxy counts an answer once it has passed it on: after the model acted on it.
        second
            .wait_log("lifecycle action completed", Duration::from_secs(5))
            .await;
        second.print_summary();
        assert_eq!(proxy.count("CompleteLifecycleAction"), (1, 1));
        assert!(proxy.count("RecordLifecycleActionHeartbeat").1 >= 1);
        second.signal(SIGTERM);
        assert!(second.wait_exit(Duration::from_secs(5)).await.success());

        // Started again after the completion: it sees Terminated, and answers nothing twice.
        let third = w.run_agent("agent-3.log").await;
        third
            .wait_log(
                "already completed the terminate lifecycle action",
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(proxy.count("CompleteLifecycleAction"), (1, 1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_drain_cordons_taints_and_evicts_without_touching_the_hook() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let dir_hint = "kubeconfig-admin-token";
        let mut w = worker(GroupSpec::default(), &[("drain_timeout", "30s")], true, "").await;
        // A separate identity for the taint only (see README): here the administrator's.
        let extra = format!(
            "metrics_listen: 127.0.0.1:{}\ntaint_kubeconfig: {}\n",
            w.metrics_port,
            w.dir.path().join(dir_hint).display()
        );
        w.config = write_config(w.dir.path(), &extra);
        w.add_pods(3, false).await;

        let mut agent = w.agent(&["drain", "--reason", "kernel upgrade"], "drain.log");
        let status = agent.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "{}", agent.log());
        let node = node_obj(&w.api, &w.node);
        assert!(smartscale_agent::k8s::is_cordoned(&node));
        assert!(smartscale_agent::k8s::has_draining_taint(&node), "{node:?}");
        let reason = node.metadata.annotations.unwrap_or_default();
        assert_eq!(
            reason
                .get(smartscale_agent::k8s::DRAIN_REASON_ANNOTATION)
                .map(String::as_str),
            Some("manual: kernel upgrade")
        );
        w.assert_evicted_properly(&w.evictable);
        assert_eq!(w.lifecycle().await, "InService");
        let proxy = w.proxy.as_ref().expect("proxy");
        assert_eq!(proxy.count("CompleteLifecycleAction"), (0, 0));

        // Again: nothing left, still fine.
        let mut again = w.agent(&["drain"], "drain-2.log");
        assert!(
            again.wait_exit(Duration::from_secs(30)).await.success(),
            "{}",
            again.log()
        );
        assert!(
            again
                .log()
                .contains("drain complete: no pods left to evict")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_does_not_answer_is_a_clear_error() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let w = worker(GroupSpec::default(), &[], false, "").await;
        let closed = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: {NODE_TOKEN}\n",
            free_port()
        );
        std::fs::write(w.dir.path().join("kubelet.kubeconfig"), closed).expect("kubeconfig");
        for command in [&["drain"][..], &["run"][..]] {
            let mut agent = w.agent(command, &format!("{}.log", command[0]));
            let status = agent.wait_exit(Duration::from_secs(30)).await;
            let log = agent.log();
            assert!(!status.success(), "{log}");
            assert!(log.contains("the Kubernetes API server does not answer for node"), "{log}");
        }
    })
    .await;
}

fn unix_now() -> u64 {
    jiff::Timestamp::now().as_second() as u64
}

/// An operator ran `drain`, stopped it early and uncordoned the node; its record stayed (the
/// agent was killed). A week later the ASG terminates the instance: the pipeline must not take the
/// record's long-past deadline (evicting nothing and completing the hook at once), but drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_manual_drain_record_does_not_cut_a_termination_short() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let mut w = worker(GroupSpec::default(), &[("drain_timeout", "60s")], true, "").await;
        w.add_pods(3, false).await;
        let week_ago = unix_now() - 7 * 86_400;
        let stale = smartscale_agent::pipeline::Marker {
            source: "manual".into(),
            detail: "kernel upgrade".into(),
            started_at: week_ago,
            deadline: week_ago + 600,
            hook: false,
            hook_since: None,
            drained: false,
            hook_completed: false,
        };
        let write_stale = || {
            std::fs::create_dir_all(w.state_dir()).expect("state dir");
            std::fs::write(
                w.marker_path(),
                serde_json::to_vec(&stale).expect("marker json"),
            )
            .expect("stale marker");
        };
        // At start-up, a manual drain older than its window is not resumed (even though the node
        // is still cordoned), and its record goes.
        kube::Api::<k8s_openapi::api::core::v1::Node>::all(w.admin.clone())
            .patch(
                &w.node,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({"spec": {"unschedulable": true}})),
            )
            .await
            .expect("cordon");
        write_stale();
        let agent = w.run_agent("agent.log").await;
        eventually(
            "the stale record removed",
            Duration::from_secs(5),
            || async { (!w.marker_path().exists()).then_some(()) },
        )
        .await;
        let log = agent.log();
        assert!(
            log.contains("ended unfinished longer ago than its drain window; not resuming it"),
            "{log}"
        );
        assert!(!log.contains("resuming a manual drain"), "{log}");
        // The daemon has been running all week when the record is left.
        write_stale();

        w.terminate().await;
        wait_lifecycle(
            &w.model,
            &w.instance_id,
            &["Terminated"],
            Duration::from_secs(30),
        )
        .await;
        agent
            .wait_log("lifecycle action completed", Duration::from_secs(5))
            .await;
        let log = agent.log();
        w.assert_evicted_properly(&w.evictable);
        assert!(
            log.contains("not resuming the unfinished drain on record"),
            "{log}"
        );
        assert!(
            !log.contains("resuming the drain a previous agent started"),
            "{log}"
        );
        assert!(log.contains("node drained"), "{log}");
        assert!(!log.contains("drain deadline passed"), "{log}");
        assert_eq!(
            w.proxy
                .as_ref()
                .expect("proxy")
                .count("CompleteLifecycleAction"),
            (1, 1)
        );
    })
    .await;
}

/// `drain` stopped with Ctrl-C, and `drain` that cannot cordon: neither leaves a record behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_drain_that_stops_early_leaves_no_record() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let mut w = worker(GroupSpec::default(), &[("drain_timeout", "60s")], false, "").await;
        w.add_pods(1, true).await;

        let mut agent = w.agent(&["drain", "--reason", "kernel upgrade"], "drain.log");
        agent
            .wait_log("eviction blocked", Duration::from_secs(20))
            .await;
        assert!(w.marker_path().exists(), "the drain records its progress");
        agent.signal(SIGINT);
        let status = agent.wait_exit(Duration::from_secs(10)).await;
        let log = agent.log();
        assert!(!status.success(), "{log}");
        assert!(
            !w.marker_path().exists(),
            "the interrupted drain left its record:\n{log}"
        );
        assert!(log.contains("interrupted (SIGINT or SIGTERM)"), "{log}");
        assert!(
            log.contains("the manual drain ended early; removed its record"),
            "{log}"
        );
        // The operator decides about the cordon.
        assert!(smartscale_agent::k8s::is_cordoned(&node_obj(
            &w.api, &w.node
        )));

        // The Node is gone: the cordon fails (404), the drain stops, nothing stays behind.
        kube::Api::<k8s_openapi::api::core::v1::Node>::all(w.admin.clone())
            .delete(&w.node, &Default::default())
            .await
            .expect("delete node");
        let mut again = w.agent(&["drain"], "drain-2.log");
        let status = again.wait_exit(Duration::from_secs(30)).await;
        let log = again.log();
        assert!(!status.success(), "{log}");
        assert!(log.contains("cordoning node"), "{log}");
        assert!(
            !w.marker_path().exists(),
            "the failed drain left its record: {log}"
        );
    })
    .await;
}

/// The API server is away for longer than the hook's HeartbeatTimeout when the termination
/// comes: the cordon retries, and the heartbeats (started before it) keep the hook alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_the_hook_alive_while_the_api_server_is_away() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let settings = [("drain_timeout", "60s"), ("heartbeat_interval", "500ms")];
        let mut w = worker(GroupSpec::default(), &settings, true, "").await;
        w.add_pods(2, false).await;
        let gate = Gate::start(&w.api.url()).await;
        w.gate_api(&gate);
        let agent = w.run_agent("agent.log").await;

        gate.set_open(false);
        w.terminate().await;
        agent
            .wait_log(
                "cordon failed; retrying until the deadline",
                Duration::from_secs(10),
            )
            .await;
        // 40 s of model time, past the 30 s HeartbeatTimeout, without a cordon.
        assert_eq!(
            advance_after_heartbeats(&w, 4).await,
            40.0,
            "{}",
            agent.log()
        );
        assert_eq!(w.lifecycle().await, "Terminating:Wait", "{}", agent.log());
        assert!(!smartscale_agent::k8s::is_cordoned(&node_obj(
            &w.api, &w.node
        )));

        gate.set_open(true);
        wait_lifecycle(
            &w.model,
            &w.instance_id,
            &["Terminated"],
            Duration::from_secs(30),
        )
        .await;
        w.assert_evicted_properly(&w.evictable);
        let log = agent.log();
        let at = |needle: &str| {
            log.find(needle)
                .unwrap_or_else(|| panic!("no `{needle}` in:\n{log}"))
        };
        assert!(at("heartbeating the lifecycle action") < at("node cordoned"));
    })
    .await;
}

/// A pass that fails (here its record cannot be read: the state directory is broken) is retried
/// with the notice IMDS still shows, once the cause is gone, without waiting for a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pass_is_retried_while_the_notice_is_there() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let mut w = worker(GroupSpec::default(), &[("drain_timeout", "60s")], true, "").await;
        w.add_pods(2, false).await;
        let agent = w.run_agent("agent.log").await;
        // A directory where the record should be: reading and writing it fail.
        std::fs::create_dir_all(w.marker_path().join("in-the-way")).expect("block the marker");

        w.terminate().await;
        agent
            .wait_log("termination pipeline failed", Duration::from_secs(10))
            .await;
        assert_eq!(w.lifecycle().await, "Terminating:Wait");
        std::fs::remove_dir_all(w.marker_path()).expect("unblock the marker");

        wait_lifecycle(
            &w.model,
            &w.instance_id,
            &["Terminated"],
            Duration::from_secs(30),
        )
        .await;
        w.assert_evicted_properly(&w.evictable);
        agent
            .wait_log("lifecycle action completed", Duration::from_secs(5))
            .await;
        let log = agent.log();
        assert!(log.contains("termination notice still there"), "{log}");
        assert_eq!(
            w.proxy
                .as_ref()
                .expect("proxy")
                .count("CompleteLifecycleAction"),
            (1, 1)
        );
        // One notice, however often it was handed over.
        let metrics = w.metrics().await;
        assert_eq!(
            sample(
                &metrics,
                "smartscale_agent_events_total{source=\"target_lifecycle\"}"
            ),
            Some(1.0),
            "{metrics}"
        );
    })
    .await;
}

/// CompleteLifecycleAction refused (AccessDenied) after the drain: the agent retries, and its
/// heartbeats keep the hook alive meanwhile, past the heartbeat timeout; once allowed, it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_completion_is_retried_while_heartbeats_keep_the_hook() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let settings = [("drain_timeout", "60s"), ("heartbeat_interval", "500ms")];
        let mut w = worker(GroupSpec::default(), &settings, true, "").await;
        w.add_pods(2, false).await;
        let proxy = w.proxy.as_ref().expect("proxy");
        proxy.deny("CompleteLifecycleAction", u32::MAX);
        let agent = w.run_agent("agent.log").await;

        w.terminate().await;
        eventually("a refused completion", Duration::from_secs(20), || async {
            (proxy.count("CompleteLifecycleAction").0 > 0).then_some(())
        })
        .await;
        // 40 s of model time after the drain, past the 30 s HeartbeatTimeout: still waiting.
        assert_eq!(
            advance_after_heartbeats(&w, 4).await,
            40.0,
            "{}",
            agent.log()
        );
        assert_eq!(w.lifecycle().await, "Terminating:Wait", "{}", agent.log());
        assert_eq!(proxy.count("CompleteLifecycleAction").1, 0);

        proxy.allow("CompleteLifecycleAction");
        wait_lifecycle(
            &w.model,
            &w.instance_id,
            &["Terminated"],
            Duration::from_secs(45),
        )
        .await;
        agent
            .wait_log("lifecycle action completed", Duration::from_secs(5))
            .await;
        let (tries, answered) = proxy.count("CompleteLifecycleAction");
        assert!(tries >= 2, "{tries}");
        assert_eq!(answered, 1);
        w.assert_evicted_properly(&w.evictable);
        assert!(
            agent
                .log()
                .contains("could not complete the terminate lifecycle action; retrying"),
            "{}",
            agent.log()
        );
    })
    .await;
}

/// A spot interruption during an ASG termination's drain: its 2-minute notice brings the drain's
/// deadline forward (here a notice with 3 s left), the hook is completed before the instance goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_during_a_termination_brings_the_deadline_forward() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let spec = GroupSpec {
            spot: true,
            ..GroupSpec::default()
        };
        let settings = [("drain_timeout", "10m"), ("heartbeat_interval", "1s")];
        let mut w = worker(spec, &settings, true, "").await;
        w.add_pods(2, true).await;
        let agent = w.run_agent("agent.log").await;

        w.terminate().await;
        agent
            .wait_log("eviction blocked", Duration::from_secs(20))
            .await;
        let injected = Instant::now();
        w.imds.inject_spot_instance_action(
            "terminate",
            jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3),
        );
        wait_lifecycle(
            &w.model,
            &w.instance_id,
            &["Terminated"],
            Duration::from_secs(20),
        )
        .await;
        let took = injected.elapsed();
        eprintln!("completed {} ms after the spot notice", took.as_millis());
        assert!(took < Duration::from_secs(15), "took {took:?}");
        let log = agent.log();
        assert!(
            log.contains("a later notice brings the drain deadline forward"),
            "{log}"
        );
        assert!(
            log.contains("drain deadline passed with 1 pod(s) left on the node"),
            "{log}"
        );
        w.assert_evicted_properly(&w.free_pods());
    })
    .await;
}

/// A spot notice whose action time has already passed leaves no drain time (not the full 90 s):
/// one round of evictions goes out, then the drain ends at once with what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_already_due_leaves_no_drain_time() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let spec = GroupSpec {
            spot: true,
            terminate_hook: false,
            ..GroupSpec::default()
        };
        let mut w = worker(spec, &[], false, "").await;
        w.add_pods(2, true).await;
        let agent = w.run_agent("agent.log").await;

        w.imds.inject_spot_instance_action(
            "terminate",
            jiff::Timestamp::now() - jiff::SignedDuration::from_secs(10),
        );
        let t0 = Instant::now();
        agent
            .wait_log("drain deadline passed with", Duration::from_secs(10))
            .await;
        let took = t0.elapsed();
        eprintln!(
            "spot notice already due: drain ended after {} ms",
            took.as_millis()
        );
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert!(smartscale_agent::k8s::is_cordoned(&node_obj(
            &w.api, &w.node
        )));
        w.assert_evicted_properly(&w.free_pods());
        assert!(agent.log().contains("default/guarded-0"), "{}", agent.log());
    })
    .await;
}

/// Not a test: measures the idle resident memory of `run`. Set SMARTSCALE_AGENT_BIN to measure
/// another build (the release binary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn measure_idle_rss_of_run() {
    let _serial = serial().await;
    let w = worker(GroupSpec::default(), &[], false, "").await;
    let bin = agent_bin();
    let env = agent_env(&w.aws_endpoint(), &w.imds.endpoint());
    let log = w.dir.path().join("rss.log");
    let mut child = tokio::process::Command::new(&bin)
        .arg("--config")
        .arg(&w.config)
        .arg("run")
        .env_clear()
        .envs(
            env.iter()
                .map(|(k, v)| (k, v))
                .filter(|(k, _)| *k != "RUST_LOG"),
        )
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let pid = child.id().expect("pid");
    let mut at = 0;
    for wait in [5u64, 10, 15] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        at += wait;
        eprint!("after {at} s: ");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
                .unwrap_or_default()
        };
        eprintln!(
            "{bin}: VmRSS {} kB (anonymous {} kB, file {} kB), VmHWM {} kB, threads {}",
            field("VmRSS:"),
            field("RssAnon:"),
            field("RssFile:"),
            field("VmHWM:"),
            field("Threads:")
        );
    }
    // Resident memory by mapping (file or [heap]/[stack]/anonymous).
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by_mapping: std::collections::BTreeMap<String, u64> = Default::default();
    let mut current = String::new();
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            current = fields.get(5).map_or("[anonymous]", |v| v).to_string();
        } else if fields.first() == Some(&"Rss:") {
            *by_mapping.entry(current.clone()).or_default() +=
                fields[1].parse::<u64>().unwrap_or(0);
        }
    }
    for (mapping, kb) in by_mapping.iter().filter(|(_, kb)| **kb > 0) {
        eprintln!("  {kb:>6} kB  {mapping}");
    }
    let _ = child.kill().await;
}
