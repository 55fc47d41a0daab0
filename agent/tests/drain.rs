//! `smartscale-agent run` and `drain` against the test world: the ASG termination hook, spot
//! interruption, PodDisruptionBudgets held past the heartbeat timeout (both `on_drain_timeout`
//! policies), a kill mid-drain (the hook completed exactly once), a manual drain, and an API
//! server that does not answer (`drain` fails, `run` goes on). Then what went wrong once: a stale
//! manual-drain record, a manual drain stopped early, an API server away for longer than the
//! heartbeat timeout (while `run` runs, and when `run` starts without it or the kubelet
//! kubeconfig), a failed pass, a refused completion, a refused heartbeat, and a spot notice during
//! an ASG termination. And `metrics_flush_wait`: the hook waits for a scrape of the final metrics. And what only a real
//! control plane shows: evicted pods re-created by the ReplicaSet controller and running on
//! another node (placed by the scheduler) before the hook is completed, and a budget computed by
//! the disruption controller that blocks an eviction until the replacement is Ready elsewhere.
//!
//! Each test has one worker: an instance of the AWS model's group, its IMDS, its Node joined
//! through the K3s server to the real control plane (kube-apiserver with Node,RBAC authorization
//! and NodeRestriction, kube-controller-manager, kube-scheduler), and the agent with the node's
//! own kubelet identity (its client certificate `system:node:<node>`). Evictions and deletions
//! are read from the API server's audit log.
//!
//! IMDS: the ASG-termination tests use the test world's fake IMDS, because it follows the AWS
//! model live (`autoscaling/target-lifecycle-state` turns `Terminated` when the model's instance
//! enters `Terminating:Wait`, and goes on answering as the model moves); AEMM fixes its scenario
//! when it starts and cannot. The spot-only tests run against AEMM (amazon-ec2-metadata-mock),
//! whose notice appears at a trigger time.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use smartscale_testworld::aemm::{Aemm, AemmOptions, Onset, Scenario, SpotAction};
use smartscale_testworld::aws::AwsModel;
use smartscale_testworld::imds::FakeImds;
use smartscale_testworld::kubernetes::{AuditEvent, Kubeconfig};
use support::*;

const LIMIT: Duration = Duration::from_secs(150);

/// The worker's instance metadata: the fake IMDS (follows the model live), or AEMM (started
/// with its scenario once the test is ready for the notice).
enum Metadata {
    Fake(FakeImds),
    Aemm(Option<Box<Aemm>>),
}

struct Worker {
    model: AwsModel,
    instance_id: String,
    imds: Metadata,
    cluster: Cluster,
    admin: kube::Client,
    node: String,
    /// The node's kubelet kubeconfig (its client certificate), as K3s wrote it.
    node_kubeconfig: Kubeconfig,
    dir: tempfile::TempDir,
    config: PathBuf,
    metrics_port: u16,
    proxy: Option<CountingProxy>,
    /// Pods the drain must evict (`namespace/name`).
    evictable: Vec<String>,
    /// DaemonSet and mirror pods it must leave alone.
    left_alone: Vec<String>,
    /// The pod under a budget that allows no disruption, if [`Worker::add_pods`] made one.
    guarded: Option<String>,
}

/// Which IMDS the worker gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Imds {
    Fake,
    /// AEMM, started later by [`Worker::start_aemm`].
    Aemm,
}

async fn worker(
    spec: GroupSpec,
    settings: &[(&str, &str)],
    proxy: bool,
    config_extra: &str,
) -> Worker {
    worker_with(spec, settings, proxy, config_extra, Imds::Fake).await
}

async fn worker_with(
    spec: GroupSpec,
    settings: &[(&str, &str)],
    proxy: bool,
    config_extra: &str,
    imds: Imds,
) -> Worker {
    let model = AwsModel::start().await.expect("AWS model");
    let instance_id = create_group(&model, spec).await;
    let (imds, node) = match imds {
        Imds::Fake => {
            let fake = FakeImds::for_model_instance(model.client(), &instance_id)
                .await
                .expect("imds");
            let node = node_name(&fake.endpoint()).await;
            (Metadata::Fake(fake), node)
        }
        Imds::Aemm => (
            Metadata::Aemm(None),
            model_node_name(&instance(&model, &instance_id).await),
        ),
    };
    let cluster = start_cluster(ClusterOptions::default()).await;
    let admin = cluster.admin();
    let dir = tempfile::tempdir().expect("tempdir");
    let node_kubeconfig = cluster
        .join_worker(&node, &instance(&model, &instance_id).await)
        .await;
    node_kubeconfig
        .write(&dir.path().join("kubelet.kubeconfig"))
        .expect("node kubeconfig");
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
        cluster,
        admin,
        node,
        node_kubeconfig,
        dir,
        config,
        metrics_port,
        proxy,
        evictable: Vec::new(),
        left_alone: Vec::new(),
        guarded: None,
    }
}

impl Worker {
    /// `free` pods pinned to the node, each of its own ReplicaSet (the first with an emptyDir),
    /// optionally a `guarded` one under a budget that allows no disruption (computed by the
    /// disruption controller), the DaemonSet's pod and a mirror pod; waits until all run.
    async fn add_pods(&mut self, free: usize, guarded: bool) {
        create_daemonset(&self.admin).await;
        let mirror = create_mirror_pod(&self.admin, &self.node).await;
        for i in 0..free {
            let template = PodTemplate {
                node: Some(&self.node),
                empty_dir: i == 0,
                grace_seconds: 1,
                cpu: None,
            };
            create_replicaset(&self.admin, &format!("free-{i}"), "free", 1, &template).await;
        }
        if guarded {
            let template = PodTemplate {
                node: Some(&self.node),
                grace_seconds: 1,
                ..PodTemplate::default()
            };
            create_replicaset(&self.admin, "guarded", "guarded", 1, &template).await;
        }
        self.evictable = wait_running(&self.admin, "app=free", &self.node, free).await;
        if guarded {
            let pod = wait_running(&self.admin, "app=guarded", &self.node, 1).await;
            create_blocking_pdb(&self.admin, "guarded").await;
            self.evictable.extend(pod.iter().cloned());
            self.guarded = pod.into_iter().next();
        }
        let (cluster, node, mirror) = (&self.cluster, &self.node, &mirror);
        let ds_pod = eventually(
            "the DaemonSet and mirror pods Running",
            Duration::from_secs(20),
            || async move {
                let running = cluster.pods_on(node, true).await;
                let ds = running
                    .iter()
                    .find(|p| p.starts_with("kube-system/node-exporter"))?;
                running.contains(mirror).then(|| ds.clone())
            },
        )
        .await;
        self.left_alone = vec![ds_pod, mirror.clone()];
    }

    /// The pod under the blocking budget (`namespace/name`).
    fn guarded(&self) -> &str {
        self.guarded
            .as_deref()
            .expect("add_pods(_, true) made a guarded pod")
    }

    fn imds_endpoint(&self) -> String {
        match &self.imds {
            Metadata::Fake(fake) => fake.endpoint(),
            Metadata::Aemm(Some(aemm)) => aemm.endpoint(),
            Metadata::Aemm(None) => panic!("AEMM is not started yet (Worker::start_aemm)"),
        }
    }

    fn fake_imds(&self) -> &FakeImds {
        match &self.imds {
            Metadata::Fake(fake) => fake,
            Metadata::Aemm(_) => panic!("this worker's IMDS is AEMM"),
        }
    }

    /// Starts AEMM for the worker's instance with a spot interruption (`action_in` from the
    /// notice, negative: already due) that appears `after` from now; returns when it appears.
    async fn start_aemm(&mut self, after: Duration, action_in: i64) -> Instant {
        let now = jiff::Timestamp::now().as_second();
        // AEMM's trigger times are whole seconds.
        let at_second = now + after.as_secs() as i64 + 1;
        let trigger = jiff::Timestamp::from_second(at_second).expect("time");
        let action_time = jiff::Timestamp::from_second(at_second + action_in).expect("time");
        let scenario = Scenario::SpotInterruption {
            action: SpotAction::Terminate,
            time: Some(action_time),
            onset: Onset::At(trigger),
        };
        let aemm = Aemm::start_with(AemmOptions::for_model_instance(
            &instance(&self.model, &self.instance_id).await,
            scenario,
        ))
        .await
        .unwrap_or_else(|e| panic!("AEMM: {e}"));
        assert_eq!(node_name(&aemm.endpoint()).await, self.node);
        let wait = trigger.duration_since(jiff::Timestamp::now());
        self.imds = Metadata::Aemm(Some(Box::new(aemm)));
        Instant::now() + Duration::try_from(wait).unwrap_or_default()
    }

    fn aws_endpoint(&self) -> String {
        self.proxy
            .as_ref()
            .map_or_else(|| self.model.endpoint().to_string(), |p| p.url.clone())
    }

    fn agent(&self, args: &[&str], log: &str) -> Agent {
        let env = agent_env(&self.aws_endpoint(), &self.imds_endpoint());
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

    async fn node_obj(&self) -> k8s_openapi::api::core::v1::Node {
        self.cluster.node_obj(&self.node).await
    }

    /// Time from `since` until the Node is cordoned.
    async fn cordoned_after(&self, since: Instant) -> Duration {
        eventually("node cordoned", Duration::from_secs(10), || async {
            smartscale_agent::k8s::is_cordoned(&self.node_obj().await).then(|| since.elapsed())
        })
        .await
    }

    /// Every evictable pod evicted (a 201 in the audit log, asked for by the node's own
    /// identity), no eviction by anyone else, none deleted without an eviction, DaemonSet and
    /// mirror pods never touched.
    fn assert_evicted_properly(&self, evictable: &[String]) {
        let log = self.cluster.eviction_log(&self.node);
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
        let user = format!("system:node:{}", self.node);
        let others: Vec<Eviction> = self
            .cluster
            .evictions()
            .into_iter()
            .filter(|e| e.user != user)
            .collect();
        assert!(
            others.is_empty(),
            "evictions not by the node's identity: {others:?}"
        );
        let deleted = self.cluster.deletion_log();
        assert!(
            deleted.is_empty(),
            "pods deleted without eviction: {deleted:?}"
        );
    }

    async fn metrics(&self) -> String {
        metrics_text(self.metrics_port).await
    }

    /// Puts a [`Gate`] between the agent and the API server (the node's kubeconfig points at it).
    fn gate_api(&self, gate: &Gate) {
        self.node_kubeconfig
            .clone()
            .with_server(&gate.url)
            .write(&self.dir.path().join("kubelet.kubeconfig"))
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
            .filter(|p| p.starts_with("default/free-"))
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
        let mut remaining = w.cluster.pods_on(&w.node, false).await;
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
        assert!(!smartscale_agent::k8s::has_draining_taint(
            &w.node_obj().await
        ));
        // What keeps new pods away instead (agent/README.md): kube-controller-manager's node
        // lifecycle controller taints the cordoned node.
        eventually(
            "node.kubernetes.io/unschedulable:NoSchedule on the cordoned node",
            Duration::from_secs(10),
            || async {
                let node = w.node_obj().await;
                let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
                taints
                    .iter()
                    .any(|t| {
                        t.key == "node.kubernetes.io/unschedulable" && t.effect == "NoSchedule"
                    })
                    .then_some(())
            },
        )
        .await;

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
        // Exported from the start, at 0: this drain ended before its deadline.
        assert_eq!(
            sample(&metrics, "smartscale_agent_drain_deadline_exceeded_total"),
            Some(0.0),
            "{metrics}"
        );

        // A stop is not a termination: SIGTERM ends the daemon cleanly.
        agent.signal(SIGTERM);
        let status = agent.wait_exit(Duration::from_secs(5)).await;
        assert!(status.success(), "{status}: {}", agent.log());
    })
    .await;
}

/// Waits until the Node is cordoned; the time from `notice` (which must have come first).
async fn cordoned_after_notice(w: &Worker, notice: Instant) -> Duration {
    let at = eventually("node cordoned", Duration::from_secs(20), || async {
        smartscale_agent::k8s::is_cordoned(&w.node_obj().await).then(Instant::now)
    })
    .await;
    assert!(
        at >= notice,
        "cordoned {:?} before the notice appeared",
        notice - at
    );
    at - notice
}

/// The spot interruption notice from AEMM (the AWS-maintained IMDS mock): it appears at its
/// trigger time, a few seconds after the agent started watching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_interruption_cordons_and_drains_before_the_deadline() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let spec = GroupSpec {
            spot: true,
            ..GroupSpec::default()
        };
        let mut w = worker_with(spec, &[], false, "", Imds::Aemm).await;
        assert_eq!(instance(&w.model, &w.instance_id).await.market, "spot");
        w.add_pods(5, false).await;
        let t0 = w.start_aemm(Duration::from_secs(5), 120).await;
        let agent = w.run_agent("agent.log").await;
        assert!(
            Instant::now() < t0,
            "the agent was not watching yet when the notice appeared: the measurement would be wrong"
        );
        assert!(
            !smartscale_agent::k8s::is_cordoned(&w.node_obj().await),
            "cordoned before the notice"
        );

        let cordon = cordoned_after_notice(&w, t0).await;
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
            log.contains(&format!("{} (eviction refused: 429", w.guarded())),
            "{log}"
        );
        w.assert_evicted_properly(&w.free_pods());
        let evictions = w.cluster.eviction_log(&w.node);
        let guarded: Vec<u16> = evictions
            .iter()
            .filter(|(p, _)| p == w.guarded())
            .map(|(_, s)| *s)
            .collect();
        // Refused by the budget the disruption controller computed, every time.
        assert!(
            !guarded.is_empty() && guarded.iter().all(|s| *s == 429),
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
        // The drain reached its deadline with a pod left: counted once.
        assert_eq!(
            sample(&metrics, "smartscale_agent_drain_deadline_exceeded_total"),
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
        assert!(agent.log().contains(w.guarded()), "{}", agent.log());
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
        // Past its deadline with a pod left, then drained while heartbeating: one drain that
        // exceeded its deadline.
        let metrics = w.metrics().await;
        assert_eq!(
            sample(&metrics, "smartscale_agent_drain_deadline_exceeded_total"),
            Some(1.0),
            "{metrics}"
        );
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
        let free = w.free_pods();
        eventually("the free pods evicted", Duration::from_secs(15), || async {
            let log = w.cluster.eviction_log(&w.node);
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
        let mut w = worker(GroupSpec::default(), &[("drain_timeout", "30s")], true, "").await;
        // A separate identity for the taint only (see README): here the administrator's.
        let extra = format!(
            "metrics_listen: 127.0.0.1:{}\ntaint_kubeconfig: {}\n",
            w.metrics_port,
            w.cluster.plane.admin_kubeconfig().display()
        );
        w.config = write_config(w.dir.path(), &extra);
        w.add_pods(3, false).await;

        let mut agent = w.agent(&["drain", "--reason", "kernel upgrade"], "drain.log");
        let status = agent.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "{}", agent.log());
        let node = w.node_obj().await;
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

/// `drain` (an operator's command) fails at once with a clear error when the API server does not
/// answer; `run` does not wait for it: it watches IMDS, serves its metrics and says in its log
/// that it keeps trying (a termination then is heartbeated: see the next test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_does_not_answer_fails_drain_but_not_run() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let w = worker(GroupSpec::default(), &[], false, "").await;
        // The node's own identity, at an address where nothing listens.
        w.node_kubeconfig
            .clone()
            .with_server(&format!("https://127.0.0.1:{}", free_port()))
            .write(&w.dir.path().join("kubelet.kubeconfig"))
            .expect("kubeconfig");
        let mut drain = w.agent(&["drain"], "drain.log");
        let status = drain.wait_exit(Duration::from_secs(30)).await;
        let log = drain.log();
        assert!(!status.success(), "{log}");
        assert!(
            log.contains("the Kubernetes API server does not answer for node"),
            "{log}"
        );

        let mut run = w.run_agent("run.log").await;
        run.wait_log(
            "the Kubernetes API server does not answer for node",
            Duration::from_secs(20),
        )
        .await;
        let metrics = w.metrics().await;
        assert_eq!(
            sample(&metrics, "smartscale_agent_drain_deadline_exceeded_total"),
            Some(0.0),
            "{metrics}"
        );
        run.signal(SIGTERM);
        let status = run.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "{status}: {}", run.log());
    })
    .await;
}

/// `run` started before k3s has written the kubelet kubeconfig (as at boot), while the API server
/// is away too (the single K3s server restarting): it watches IMDS and heartbeats a termination
/// at once, past the hook's HeartbeatTimeout, builds its kube client once the kubeconfig is
/// there, and drains and completes the hook once the API server is back, within the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_heartbeats_a_termination_while_the_api_server_is_away_and_drains_once_it_is_back() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let settings = [("drain_timeout", "60s"), ("heartbeat_interval", "500ms")];
        let mut w = worker(GroupSpec::default(), &settings, true, "").await;
        w.add_pods(2, false).await;
        let gate = Gate::start(&w.cluster.plane.url).await;
        gate.set_open(false);
        let kubeconfig = w.dir.path().join("kubelet.kubeconfig");
        std::fs::remove_file(&kubeconfig).expect("no kubelet kubeconfig yet");
        let agent = w.run_agent("agent.log").await;
        agent
            .wait_log(
                "the Kubernetes API server does not answer for node",
                Duration::from_secs(10),
            )
            .await;

        let t0 = w.terminate().await;
        // 40 s of model time, past the 30 s HeartbeatTimeout, with no kubeconfig.
        assert_eq!(
            advance_after_heartbeats(&w, 4).await,
            40.0,
            "{}",
            agent.log()
        );
        assert_eq!(w.lifecycle().await, "Terminating:Wait", "{}", agent.log());
        let proxy = w.proxy.as_ref().expect("proxy");
        let first_heartbeat = proxy
            .first_success_sent("RecordLifecycleActionHeartbeat")
            .expect("a heartbeat");
        eprintln!(
            "first terminate heartbeat {} ms after Terminating:Wait, with no API server",
            first_heartbeat.saturating_duration_since(t0).as_millis()
        );

        // k3s writes the kubeconfig; the API server is still away: the cordon waits for it.
        w.gate_api(&gate);
        agent
            .wait_log(
                "cordon failed; retrying until the deadline",
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(
            advance_after_heartbeats(&w, 2).await,
            20.0,
            "{}",
            agent.log()
        );
        assert_eq!(w.lifecycle().await, "Terminating:Wait", "{}", agent.log());
        assert!(!smartscale_agent::k8s::is_cordoned(&w.node_obj().await));

        gate.set_open(true);
        let back = Instant::now();
        wait_lifecycle(
            &w.model,
            &w.instance_id,
            &["Terminated"],
            Duration::from_secs(30),
        )
        .await;
        eprintln!(
            "API server back -> drained and hook completed in {} ms",
            back.elapsed().as_millis()
        );
        agent
            .wait_log("lifecycle action completed", Duration::from_secs(5))
            .await;
        w.assert_evicted_properly(&w.evictable);
        let log = agent.log();
        let at = |needle: &str| {
            log.find(needle)
                .unwrap_or_else(|| panic!("no `{needle}` in:\n{log}"))
        };
        assert!(at("heartbeating the lifecycle action") < at("node cordoned"));
        assert!(at("node cordoned") < at("node drained"));
        assert!(!log.contains("drain deadline passed"), "{log}");
        assert_eq!(proxy.count("CompleteLifecycleAction"), (1, 1));
        let metrics = w.metrics().await;
        assert_eq!(
            sample(&metrics, "smartscale_agent_drain_deadline_exceeded_total"),
            Some(0.0),
            "{metrics}"
        );
    })
    .await;
}

/// Two heartbeats of the terminate hook refused (AccessDenied): each is tried again within
/// seconds (1 s, then 2 s), not a period later; and with no `heartbeat_interval` set they come
/// every third of the 30 s HeartbeatTimeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_terminate_heartbeat_is_retried_within_seconds() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let mut w = worker(GroupSpec::default(), &[("drain_timeout", "60s")], true, "").await;
        w.add_pods(1, true).await;
        let proxy = w.proxy.as_ref().expect("proxy");
        proxy.deny("RecordLifecycleActionHeartbeat", 2);
        let agent = w.run_agent("agent.log").await;

        w.terminate().await;
        let beats = eventually(
            "four heartbeats (two refused)",
            Duration::from_secs(30),
            || async {
                let r = proxy.requests("RecordLifecycleActionHeartbeat");
                (r.len() >= 4).then_some(r)
            },
        )
        .await;
        let gaps: Vec<Duration> = beats.windows(2).map(|p| p[1].0 - p[0].0).collect();
        eprintln!(
            "terminate heartbeats: accepted {:?}, gaps {:?} ms",
            beats.iter().map(|b| b.1).collect::<Vec<_>>(),
            gaps.iter().map(|g| g.as_millis()).collect::<Vec<_>>()
        );
        assert_eq!(
            beats.iter().take(4).map(|b| b.1).collect::<Vec<_>>(),
            [false, false, true, true],
            "{}",
            agent.log()
        );
        assert!(gaps[0] < Duration::from_millis(1800), "{gaps:?}");
        assert!(gaps[1] < Duration::from_millis(3000), "{gaps:?}");
        // HeartbeatTimeout 30 s: every 10 s at most.
        assert!(
            gaps[2] >= Duration::from_secs(9) && gaps[2] <= Duration::from_millis(10_800),
            "{gaps:?}"
        );
        assert_eq!(w.lifecycle().await, "Terminating:Wait");
        assert!(
            agent
                .log()
                .contains("heartbeat failed; trying again within seconds"),
            "{}",
            agent.log()
        );

        delete_pdb(&w.admin, "guarded").await;
        wait_lifecycle(
            &w.model,
            &w.instance_id,
            &["Terminated"],
            Duration::from_secs(20),
        )
        .await;
        w.assert_evicted_properly(&w.evictable);
    })
    .await;
}

/// `metrics_flush_wait`: after the drain, the terminate hook is completed only once `/metrics`
/// has been scraped (here by the test, in place of Prometheus), and that scrape has the drain's
/// final numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminate_hook_waits_for_a_scrape_of_the_final_metrics() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let settings = [
            ("drain_timeout", "60s"),
            ("heartbeat_interval", "1s"),
            ("metrics_flush_wait", "40s"),
        ];
        let mut w = worker(GroupSpec::default(), &settings, true, "").await;
        w.add_pods(3, false).await;
        let agent = w.run_agent("agent.log").await;

        w.terminate().await;
        agent
            .wait_log("waiting up to 40s for /metrics", Duration::from_secs(20))
            .await;
        let log = agent.log();
        assert!(log.contains("node drained"), "{log}");
        let proxy = w.proxy.as_ref().expect("proxy");
        assert_eq!(proxy.count("CompleteLifecycleAction"), (0, 0), "{log}");
        assert_eq!(w.lifecycle().await, "Terminating:Wait");

        let scraped = Instant::now();
        let metrics = w.metrics().await;
        wait_lifecycle(
            &w.model,
            &w.instance_id,
            &["Terminated"],
            Duration::from_secs(20),
        )
        .await;
        let completed = proxy
            .first_success_sent("CompleteLifecycleAction")
            .expect("completed through the proxy");
        eprintln!(
            "terminate hook completed {} ms after the scrape",
            completed.saturating_duration_since(scraped).as_millis()
        );
        assert!(completed > scraped);
        assert_eq!(
            sample(&metrics, "smartscale_agent_pods_evicted_total"),
            Some(3.0),
            "{metrics}"
        );
        assert_eq!(
            sample(&metrics, "smartscale_agent_drain_duration_seconds_count"),
            Some(1.0),
            "{metrics}"
        );
        agent
            .wait_log(
                "the drain's final metrics were scraped",
                Duration::from_secs(5),
            )
            .await;
        w.assert_evicted_properly(&w.evictable);
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
        assert!(smartscale_agent::k8s::is_cordoned(&w.node_obj().await));

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
        let gate = Gate::start(&w.cluster.plane.url).await;
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
        assert!(!smartscale_agent::k8s::is_cordoned(&w.node_obj().await));

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
        // The fake IMDS: AEMM cannot add a notice while it runs, nor follow the model's
        // Terminating:Wait that the termination needs.
        w.fake_imds().inject_spot_instance_action(
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
/// one round of evictions goes out, then the drain ends at once with what is left. AEMM shows
/// the notice (action time 10 s before it appears).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_already_due_leaves_no_drain_time() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let spec = GroupSpec {
            spot: true,
            terminate_hook: false,
            ..GroupSpec::default()
        };
        let mut w = worker_with(spec, &[], false, "", Imds::Aemm).await;
        w.add_pods(2, true).await;
        let t0 = w.start_aemm(Duration::from_secs(5), -10).await;
        let agent = w.run_agent("agent.log").await;
        assert!(
            Instant::now() < t0,
            "the agent was not watching yet when the notice appeared"
        );

        agent
            .wait_log("drain deadline passed with", Duration::from_secs(20))
            .await;
        let took = t0.elapsed();
        eprintln!(
            "spot notice already due: drain ended after {} ms",
            took.as_millis()
        );
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert!(smartscale_agent::k8s::is_cordoned(&w.node_obj().await));
        w.assert_evicted_properly(&w.free_pods());
        assert!(agent.log().contains(w.guarded()), "{}", agent.log());
    })
    .await;
}

/// A second worker node, Ready, outside the group (only a place for pods to go).
const OTHER_NODE: &str = "ip-10-0-250-9.eu-west-3.compute.internal";

async fn join_other_node(w: &Worker) {
    w.cluster
        .join_node(
            OTHER_NODE,
            "the-other-machine",
            "aws:///eu-west-3a/i-0other0000000000",
            &[("topology.kubernetes.io/zone", "eu-west-3a")],
        )
        .await;
}

/// When each pod matching `selector` was first seen Running and Ready on `node` (polled every
/// 20 ms through the admin client, so no earlier than it happened), until aborted.
fn watch_ready_on(
    admin: kube::Client,
    selector: &'static str,
    node: &'static str,
) -> (
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Instant>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Instant>>> =
        Default::default();
    let out = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            for p in pods_matching(&admin, selector).await {
                let on = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
                if on && is_running(&p) && is_pod_ready(&p) {
                    out.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(pod_key(&p))
                        .or_insert_with(Instant::now);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (seen, task)
}

/// Pods made by the ReplicaSet controller (its ServiceAccount, from the audit log).
fn created_by_replicaset_controller(w: &Worker) -> usize {
    w.cluster
        .audit()
        .iter()
        .filter(|e| {
            e.is("create", "pods", "")
                && e.code() == 201
                && e.user.username == "system:serviceaccount:kube-system:replicaset-controller"
        })
        .count()
}

/// A Deployment's replicas on the draining node, a second Ready node: every evicted pod is
/// re-created by the real ReplicaSet controller, placed on the other node by the real scheduler,
/// and Running and Ready there before the agent completes the terminate hook (the evicted pods
/// terminate gracefully, 2 s, and the agent waits until they are gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_pods_run_on_another_node_before_the_hook_is_completed() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let mut w = worker(GroupSpec::default(), &[("drain_timeout", "60s")], true, "").await;
        let template = PodTemplate {
            grace_seconds: 2,
            cpu: Some("100m"),
            ..PodTemplate::default()
        };
        // Only the worker's node exists yet: the scheduler puts every replica there.
        create_deployment(&w.admin, "web", 3, &template).await;
        let originals = wait_running(&w.admin, "app=web", &w.node, 3).await;
        w.evictable = originals.clone();
        join_other_node(&w).await;
        let created_before = created_by_replicaset_controller(&w);
        let (ready_elsewhere, watcher) = watch_ready_on(w.admin.clone(), "app=web", OTHER_NODE);
        let agent = w.run_agent("agent.log").await;

        w.terminate().await;
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
        watcher.abort();
        let completed = w
            .proxy
            .as_ref()
            .expect("proxy")
            .first_success_sent("CompleteLifecycleAction")
            .expect("the terminate hook was completed through the proxy");
        w.assert_evicted_properly(&originals);

        // The replacements: the Deployment's ReplicaSet's pods, on the other node.
        let pods = pods_matching(&w.admin, "app=web").await;
        let live: Vec<_> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        assert_eq!(
            live.len(),
            3,
            "{:?}",
            live.iter().map(|p| pod_key(p)).collect::<Vec<_>>()
        );
        for p in &live {
            let key = pod_key(p);
            assert!(!originals.contains(&key), "{key} was not evicted");
            assert_eq!(
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
                Some(OTHER_NODE),
                "{key}: the scheduler placed it elsewhere"
            );
            let owner = p
                .metadata
                .owner_references
                .as_ref()
                .and_then(|o| o.iter().find(|o| o.controller == Some(true)))
                .unwrap_or_else(|| panic!("{key} has no controller"));
            assert_eq!(owner.kind, "ReplicaSet", "{key}");
            assert!(owner.name.starts_with("web-"), "{key}: {}", owner.name);
        }
        assert!(
            created_by_replicaset_controller(&w) >= created_before + 3,
            "the ReplicaSet controller did not create the replacements"
        );
        let seen = ready_elsewhere
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for p in &live {
            let key = pod_key(p);
            let at = seen
                .get(&key)
                .unwrap_or_else(|| panic!("{key} was never seen Ready on {OTHER_NODE}"));
            assert!(
                *at < completed,
                "{key} was Ready on {OTHER_NODE} only {:?} after the hook was completed",
                *at - completed
            );
            eprintln!(
                "{key} Ready on {OTHER_NODE} {} ms before the terminate hook was completed",
                (completed - *at).as_millis()
            );
        }
    })
    .await;
}

/// A budget (minAvailable 1 of 2) that the real disruption controller computes: the first
/// eviction uses its one allowed disruption; the second is refused (429, in the audit log) while
/// the first pod's replacement cannot be placed (the only node is cordoned); once a node with room
/// joins and the replacement is Ready there, the controller allows a disruption again and the
/// agent's retry goes through, before the hook is completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_blocks_until_the_replacement_is_ready_elsewhere() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let mut w = worker(GroupSpec::default(), &[("drain_timeout", "90s")], true, "").await;
        let template = PodTemplate {
            grace_seconds: 1,
            cpu: Some("100m"),
            ..PodTemplate::default()
        };
        create_deployment(&w.admin, "db", 2, &template).await;
        let originals = wait_running(&w.admin, "app=db", &w.node, 2).await;
        w.evictable = originals.clone();
        create_pdb(&w.admin, "db", 1).await;
        wait_pdb(&w.admin, "db", 2, 1).await;
        let agent = w.run_agent("agent.log").await;

        w.terminate().await;
        let node = w.node.clone();
        let blocked = eventually(
            "one eviction accepted and the other refused by the budget",
            Duration::from_secs(20),
            || async {
                let log = w.cluster.eviction_log(&node);
                let accepted: Vec<&String> =
                    log.iter().filter(|(_, c)| *c == 201).map(|(p, _)| p).collect();
                let refused = log
                    .iter()
                    .find(|(p, c)| *c == 429 && !accepted.contains(&p))
                    .map(|(p, _)| p.clone());
                (accepted.len() == 1).then_some(refused).flatten()
            },
        )
        .await;
        agent
            .wait_log("eviction blocked", Duration::from_secs(10))
            .await;
        // The budget as the disruption controller sees it now: one healthy pod, none to spare.
        wait_pdb(&w.admin, "db", 1, 0).await;
        let refused_so_far = w
            .cluster
            .eviction_log(&node)
            .iter()
            .filter(|(p, c)| *p == blocked && *c == 429)
            .count();
        assert!(refused_so_far >= 1);
        assert_eq!(w.lifecycle().await, "Terminating:Wait");
        assert!(
            w.cluster.pods_on(&node, true).await.contains(&blocked),
            "{blocked} must still run"
        );

        join_other_node(&w).await;
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
        w.assert_evicted_properly(&originals);
        let log = agent.log();
        assert!(log.contains("node drained"), "{log}");
        assert!(!log.contains("drain deadline passed"), "{log}");

        // In the audit log: the refusals, then the replacement's kubelet reporting it Running on
        // the other node, then the blocked pod's eviction accepted.
        let audit = w.cluster.audit();
        let user = format!("system:node:{node}");
        let other_user = format!("system:node:{OTHER_NODE}");
        let at = |pick: &dyn Fn(&AuditEvent) -> bool| -> Vec<usize> {
            audit
                .iter()
                .enumerate()
                .filter(|(_, e)| pick(e))
                .map(|(i, _)| i)
                .collect()
        };
        let eviction = |e: &AuditEvent, code: u16| {
            e.is("create", "pods", "eviction")
                && e.user.username == user
                && e.object() == blocked
                && e.code() == code
        };
        let refusals = at(&|e| eviction(e, 429));
        let accepted = at(&|e| eviction(e, 201));
        let replacement_ran = at(&|e| {
            e.is("patch", "pods", "status")
                && e.user.username == other_user
                && e.object().starts_with("default/db-")
        });
        eprintln!(
            "audit log: {} refusal(s) of {blocked} (lines {refusals:?}), a replacement Running on {OTHER_NODE} at {replacement_ran:?}, accepted at {accepted:?}",
            refusals.len()
        );
        assert_eq!(accepted.len(), 1, "{accepted:?}");
        let first_ran = *replacement_ran
            .first()
            .expect("a replacement reported Running on the other node");
        assert!(
            refusals.first().is_some_and(|i| *i < first_ran),
            "no refusal while no replacement ran"
        );
        assert!(refusals.iter().all(|i| *i < accepted[0]));
        assert!(
            first_ran < accepted[0],
            "the blocked pod was evicted before a replacement ran elsewhere"
        );
        // Both replacements end up on the other node.
        wait_running(&w.admin, "app=db", OTHER_NODE, 2).await;
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
    let env = agent_env(&w.aws_endpoint(), &w.imds_endpoint());
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
