//! `smartscale-agent join` against the test world: the launch hook is completed only when the
//! Node is Ready; a wrong token, an unreachable server, a secret that never appears, a token not
//! in the secure format or IMDS down end in ABANDON (where the instance is known) and a clear
//! error; the token stays secret; a token published after the join started is waited for. The
//! launch hook is heartbeated at once (before its timeouts are read), a refused heartbeat is
//! tried again within seconds, a slow boot is kept alive by heartbeats, a launch action that ends
//! during the join fails it, and a refused CONTINUE is retried. What K3s refuses ends in ABANDON
//! with its reason (a node name still held by another machine's Node: K3s's node password); a
//! node label a kubelet may not set (NodeRestriction) is refused before the join starts.
//!
//! k3s is played by the test world's fake `k3s agent` (`smartscale-testworld k3s-agent`, run by
//! the agent as its `k3s_start_command`): it reads the k3s config the agent wrote (refusing one
//! others could read), keeps a node password, joins through the K3s server's supervisor endpoint
//! (`K3sServer::serve`, the SSM `server_url`), which checks the token and the node password and
//! signs the kubelet's client certificate; its simulated kubelet registers the Node with the real
//! API server (Node authorizer, NodeRestriction), and the fake writes the kubelet kubeconfig.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use serde_json::json;
use smartscale_testworld::aws::AwsModel;
use smartscale_testworld::imds::{Availability, FakeImds};
use smartscale_testworld::kubernetes::JoinRequest;
use smartscale_testworld::kubernetes::k3s::NODE_PASSWORD_REJECTED;
use support::*;

const TOKEN: &str = "K10c0ffee0123456789abcdef::server:9f8e7d6c5b4a39281706";
const LIMIT: Duration = Duration::from_secs(120);

/// Watches every process's command line and environment for `needle` while it runs, and tells
/// (`saw_k3s`) once it has read those of a process running the fake k3s agent.
struct ProcScan {
    stop: Arc<AtomicBool>,
    saw_k3s: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl ProcScan {
    fn start(needle: &str, k3s_binary: &str) -> ProcScan {
        let stop = Arc::new(AtomicBool::new(false));
        let saw_k3s = Arc::new(AtomicBool::new(false));
        let (needle, marker) = (needle.to_string(), k3s_binary.to_string());
        let (flag, saw) = (stop.clone(), saw_k3s.clone());
        let thread = std::thread::spawn(move || {
            let mut hits = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !name.chars().all(|c| c.is_ascii_digit()) {
                        continue;
                    }
                    let mut k3s = false;
                    let mut read_both = true;
                    for file in ["cmdline", "environ"] {
                        let Ok(bytes) = std::fs::read(entry.path().join(file)) else {
                            read_both = false;
                            continue;
                        };
                        let text = String::from_utf8_lossy(&bytes);
                        if text.contains(&needle) {
                            hits.push(format!("/proc/{name}/{file}"));
                        }
                        if file == "cmdline" && text.contains(&marker) && text.contains("k3s-agent")
                        {
                            k3s = true;
                        }
                    }
                    if k3s && read_both {
                        saw.store(true, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            hits
        });
        ProcScan {
            stop,
            saw_k3s,
            thread,
        }
    }

    /// The token hits, and whether the fake k3s was ever seen.
    fn finish(self) -> (Vec<String>, bool) {
        self.stop.store(true, Ordering::SeqCst);
        let hits = self.thread.join().expect("scan thread");
        (hits, self.saw_k3s.load(Ordering::SeqCst))
    }
}

/// The K3s supervisor endpoint behind a hold: each join request waits (up to 20 s) until
/// `release` is set, then goes on to K3s. So the fake k3s is still running, with its arguments
/// and environment, when the /proc scan looks.
struct HeldJoin {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HeldJoin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct HoldState {
    target: String,
    release: Arc<AtomicBool>,
    http: reqwest::Client,
}

async fn held_join(
    axum::extract::State(s): axum::extract::State<HoldState>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, String) {
    let until = Instant::now() + Duration::from_secs(20);
    while !s.release.load(Ordering::SeqCst) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answer = s
        .http
        .post(format!("{}/v1-k3s/join", s.target))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match answer {
        Ok(a) => {
            let status = axum::http::StatusCode::from_u16(a.status().as_u16())
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            (status, a.text().await.unwrap_or_default())
        }
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

impl HeldJoin {
    async fn start(target: &str, release: Arc<AtomicBool>) -> HeldJoin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = HoldState {
            target: target.trim_end_matches('/').to_string(),
            release,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
        };
        let router = axum::Router::new()
            .route("/v1-k3s/join", axum::routing::post(held_join))
            .with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        HeldJoin { url, task }
    }
}

/// One worker about to join: its group (launch + terminate hooks), IMDS, the control plane and
/// the K3s server (accepting [`TOKEN`]) with its supervisor endpoint, settings.
struct Boot {
    model: AwsModel,
    instance_id: String,
    imds: FakeImds,
    cluster: Cluster,
    /// The K3s supervisor endpoint (`K3sServer::serve`).
    k3s_url: String,
    _k3s_serving: tokio::task::JoinHandle<()>,
    node: String,
    dir: tempfile::TempDir,
}

impl Drop for Boot {
    fn drop(&mut self) {
        self._k3s_serving.abort();
    }
}

async fn boot(secret: Option<&str>, server_url: Option<&str>) -> Boot {
    let model = AwsModel::start().await.expect("AWS model");
    let instance_id = create_group(
        &model,
        GroupSpec {
            launch_hook: true,
            ..GroupSpec::default()
        },
    )
    .await;
    let imds = FakeImds::for_model_instance(model.client(), &instance_id)
        .await
        .expect("imds");
    let node = node_name(&imds.endpoint()).await;
    let cluster = start_cluster(ClusterOptions {
        tokens: vec![TOKEN.to_string()],
        ..ClusterOptions::default()
    })
    .await;
    let (k3s_url, serving) = cluster.k3s.serve().await.expect("K3s supervisor endpoint");
    let url = server_url.map_or_else(|| k3s_url.clone(), str::to_string);
    put_settings(
        &model,
        &[
            ("server_url", url.as_str()),
            ("launch_hook_name", LAUNCH_HOOK),
            ("terminate_hook_name", TERMINATE_HOOK),
            ("node_labels", "team=web"),
            ("node_taints", "dedicated=web:PreferNoSchedule"),
        ],
    )
    .await;
    if let Some(secret) = secret {
        create_secret(&model, secret).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    Boot {
        model,
        instance_id,
        imds,
        cluster,
        k3s_url,
        _k3s_serving: serving,
        node,
        dir,
    }
}

impl Boot {
    fn k3s_config(&self) -> PathBuf {
        self.dir.path().join("k3s/config.yaml")
    }

    /// The fake k3s agent's command line (as `k3s_start_command`).
    fn k3s_command(&self) -> Vec<String> {
        vec![
            testworld_bin().display().to_string(),
            "k3s-agent".into(),
            "--config".into(),
            self.k3s_config().display().to_string(),
            "--kubelet-kubeconfig".into(),
            self.dir
                .path()
                .join("kubelet.kubeconfig")
                .display()
                .to_string(),
            "--node-password-file".into(),
            self.dir.path().join("node-password").display().to_string(),
        ]
    }

    /// Runs `join` with the fake k3s and `join_timeout`; returns the agent (exited) and its time.
    async fn join(&self, join_timeout: &str) -> (Agent, std::process::ExitStatus, Duration) {
        let mut agent = self.spawn_join(join_timeout, self.model.endpoint(), None);
        let status = agent.wait_exit(Duration::from_secs(60)).await;
        let took = agent.started.elapsed();
        (agent, status, took)
    }

    /// Starts `join` with the fake k3s, AWS at `aws_endpoint`; k3s starts only once `wait_for`
    /// exists, if given (a slow boot: the start command waits in `sh -c` first).
    fn spawn_join(&self, join_timeout: &str, aws_endpoint: &str, wait_for: Option<&Path>) -> Agent {
        let k3s = self.k3s_command();
        let command: Vec<String> = match wait_for {
            None => k3s,
            Some(go) => {
                let mut c = vec![
                    "sh".to_string(),
                    "-c".to_string(),
                    r#"go="$1"; shift; while [ ! -e "$go" ]; do sleep 0.05; done; exec "$@""#
                        .to_string(),
                    "sh".to_string(),
                    go.display().to_string(),
                ];
                c.extend(k3s);
                c
            }
        };
        let config = write_config(
            self.dir.path(),
            &format!(
                "join_timeout: {join_timeout}\nk3s_start_command: {}\n",
                json!(command)
            ),
        );
        let mut env = agent_env(aws_endpoint, &self.imds.endpoint());
        env.push(("RUST_LOG".into(), "trace".into()));
        Agent::spawn(&config, &["join"], &env, &self.dir.path().join("agent.log"))
    }

    async fn lifecycle(&self) -> String {
        instance(&self.model, &self.instance_id)
            .await
            .lifecycle_state
    }

    async fn node_obj(&self) -> Option<Node> {
        Api::<Node>::all(self.cluster.admin())
            .get_opt(&self.node)
            .await
            .expect("read node")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_registers_a_ready_node_then_completes_the_launch_hook() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(Some(TOKEN), None).await;
        assert_eq!(boot.lifecycle().await, "Pending:Wait");
        // The join request waits until the scan has read the fake k3s's argv and environment.
        let scan = ProcScan::start(TOKEN, &testworld_bin().display().to_string());
        let held = HeldJoin::start(&boot.k3s_url, scan.saw_k3s.clone()).await;
        put_settings(&boot.model, &[("server_url", held.url.as_str())]).await;
        let (agent, status, took) = boot.join("30s").await;
        let (hits, saw_k3s) = scan.finish();
        let log = agent.log();
        assert!(status.success(), "join failed ({status}):\n{log}");
        eprintln!("join took {} ms", took.as_millis());
        agent.print_summary();

        // Node Ready in the API server, registered by the node's own identity, then InService.
        let node = boot.node_obj().await.expect("node registered");
        assert!(smartscale_agent::k8s::is_ready(&node));
        let instance = instance(&boot.model, &boot.instance_id).await;
        assert_eq!(instance.lifecycle_state, "InService");
        let registered_by: Vec<String> = boot
            .cluster
            .audit()
            .iter()
            .filter(|e| e.is("create", "nodes", "") && e.object() == format!("/{}", boot.node))
            .map(|e| format!("{} {}", e.user.username, e.code()))
            .collect();
        assert_eq!(
            registered_by,
            [format!("system:node:{} 201", boot.node)],
            "the Node was not registered by its own kubelet identity"
        );
        assert_eq!(
            node.spec.as_ref().and_then(|s| s.provider_id.clone()),
            Some(format!(
                "aws:///{}/{}",
                instance.availability_zone, instance.instance_id
            ))
        );
        // K3s's cloud controller initialises the node and labels its instance type `k3s` over the
        // agent's (agent/README.md, "Known limits"); the agent asked for the real one.
        let node = eventually(
            "the node initialised by K3s's cloud controller",
            Duration::from_secs(10),
            || async {
                let n = boot.node_obj().await?;
                let taints = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.clone())
                    .unwrap_or_default();
                (!taints.iter().any(|t| {
                    t.key == smartscale_testworld::kubernetes::kubelet::UNINITIALIZED_TAINT
                }))
                .then_some(n)
            },
        )
        .await;
        let labels = node.metadata.labels.clone().unwrap_or_default();
        for (k, v) in [
            ("node.kubernetes.io/instance-type", "k3s"),
            (
                "topology.kubernetes.io/zone",
                instance.availability_zone.as_str(),
            ),
            ("smartscale.io/capacity-type", "on-demand"),
            ("smartscale.io/node-group", GROUP),
            ("team", "web"),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
        }
        let k3s_config = std::fs::read_to_string(boot.k3s_config()).unwrap();
        assert!(
            k3s_config.contains("\"node.kubernetes.io/instance-type=t3.medium\""),
            "{}",
            k3s_config.replace(TOKEN, "<token>")
        );
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        assert!(
            taints.iter().any(|t| t.key == "dedicated"
                && t.value.as_deref() == Some("web")
                && t.effect == "PreferNoSchedule"),
            "{taints:?}"
        );
        let log_pos = |needle: &str| {
            log.find(needle)
                .unwrap_or_else(|| panic!("no `{needle}` in log:\n{log}"))
        };
        assert!(log_pos("k3s start command finished") < log_pos("lifecycle action completed"));

        // The token: only in the 0600 config file; in no log line, no argv, no environment.
        let mode = std::fs::metadata(boot.k3s_config())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(k3s_config.contains(TOKEN));
        assert!(!log.contains(TOKEN), "the token is in the agent's log");
        assert!(
            !log.contains("9f8e7d6c5b4a39281706"),
            "part of the token is in the agent's log"
        );
        assert!(hits.is_empty(), "the token is visible in {hits:?}");
        assert!(
            saw_k3s,
            "the /proc scan never saw the k3s child, so it proved nothing"
        );
        let kubeconfig_mode = std::fs::metadata(boot.dir.path().join("kubelet.kubeconfig"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(kubeconfig_mode, 0o600, "the kubelet kubeconfig holds a key");
        let leftovers: Vec<_> = std::fs::read_dir(boot.k3s_config().parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(leftovers, ["config.yaml"]);
    })
    .await;
}

/// A refused join: non-zero exit, the launch hook ABANDONed (the model terminates the
/// instance), no k3s config left behind.
async fn assert_abandoned(
    boot: &Boot,
    agent: &Agent,
    status: std::process::ExitStatus,
    expect: &str,
) {
    let log = agent.log();
    agent.print_summary();
    assert!(!status.success(), "join should fail:\n{log}");
    assert!(log.contains(expect), "no `{expect}` in:\n{log}");
    assert!(log.contains("launch lifecycle action abandoned"), "{log}");
    let state = wait_lifecycle(
        &boot.model,
        &boot.instance_id,
        &["Terminating", "Terminating:Proceed", "Terminated"],
        Duration::from_secs(10),
    )
    .await;
    eprintln!("after ABANDON the instance is {state}");
    assert!(
        !boot.k3s_config().exists(),
        "the k3s config (with a token) was left behind"
    );
    assert!(!log.contains(TOKEN));
}

/// Runs `join` with AWS behind a proxy that refuses the first two `CompleteLifecycleAction`
/// calls (AccessDenied) and checks that the agent retried until the third went through.
async fn join_with_two_refused_completions(boot: &Boot) -> (Agent, std::process::ExitStatus) {
    let proxy = CountingProxy::start(boot.model.endpoint()).await;
    proxy.deny("CompleteLifecycleAction", 2);
    let mut agent = boot.spawn_join("30s", &proxy.url, None);
    let status = agent.wait_exit(Duration::from_secs(30)).await;
    let log = agent.log();
    assert!(
        log.contains("could not complete the launch lifecycle action; retrying"),
        "{log}"
    );
    assert_eq!(proxy.count("CompleteLifecycleAction"), (3, 1));
    (agent, status)
}

/// A token the K3s server does not know, and its answer through the k3s agent's exit.
const WRONG_TOKEN: &str = "K10wrong::server:0000";
const UNAUTHORIZED: &str = "the server refused the join (401 Unauthorized)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_abandons_the_launch() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(Some(WRONG_TOKEN), None).await;
        let (agent, status, took) = boot.join("30s").await;
        assert_abandoned(&boot, &agent, status, UNAUTHORIZED).await;
        assert!(took < Duration::from_secs(30), "took {took:?}");
        assert!(!agent.log().contains(WRONG_TOKEN));
        assert!(boot.node_obj().await.is_none(), "a Node was registered");
    })
    .await;
}

/// A refused ABANDON is retried as CONTINUE is: unanswered, the action would hold the instance
/// for its heartbeat timeout (an hour by default) before the group replaced it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_abandon_is_retried() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(Some(WRONG_TOKEN), None).await;
        let (agent, status) = join_with_two_refused_completions(&boot).await;
        assert_abandoned(&boot, &agent, status, UNAUTHORIZED).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_abandons_within_the_join_timeout() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let closed = format!("http://127.0.0.1:{}", free_port());
        let boot = boot(Some(TOKEN), Some(&closed)).await;
        let (agent, status, took) = boot.join("4s").await;
        assert_abandoned(
            &boot,
            &agent,
            status,
            "did not finish within join_timeout (4s)",
        )
        .await;
        assert!(
            took >= Duration::from_secs(4) && took < Duration::from_secs(15),
            "took {took:?}"
        );
    })
    .await;
}

/// A secret that never appears: asked for again until `join_timeout`, then ABANDON with AWS's
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_abandons_with_a_clear_error() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(None, None).await;
        let (agent, status, took) = boot.join("4s").await;
        assert_abandoned(
            &boot,
            &agent,
            status,
            "Secrets Manager secret smartscale/test/k3s-token: GetSecretValue failed",
        )
        .await;
        let log = agent.log();
        assert!(log.contains("ResourceNotFoundException"), "{log}");
        assert!(log.contains("still missing after"), "{log}");
        assert!(
            took >= Duration::from_secs(4) && took < Duration::from_secs(15),
            "took {took:?}"
        );
    })
    .await;
}

/// The K3s server publishes the agent token once K3s runs; a worker's join may start before:
/// `GetSecretValue` is asked again (ResourceNotFoundException) until the secret is there, within
/// `join_timeout`, and the join goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_published_after_the_join_started_is_waited_for() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(None, None).await;
        let proxy = CountingProxy::start(boot.model.endpoint()).await;
        let mut agent = boot.spawn_join("60s", &proxy.url, None);
        eventually(
            "GetSecretValue asked twice",
            Duration::from_secs(20),
            || async { (proxy.count("GetSecretValue").0 >= 2).then_some(()) },
        )
        .await;
        assert_eq!(boot.lifecycle().await, "Pending:Wait");
        create_secret(&boot.model, TOKEN).await;
        let status = agent.wait_exit(Duration::from_secs(30)).await;
        let log = agent.log();
        assert!(status.success(), "{log}");
        assert!(
            log.contains("the join token's secret does not exist yet"),
            "{log}"
        );
        let (asked, answered) = proxy.count("GetSecretValue");
        eprintln!("GetSecretValue asked {asked} times, answered once");
        assert_eq!(answered, 1);
        assert_eq!(boot.lifecycle().await, "InService");
        assert!(!log.contains(TOKEN));
    })
    .await;
}

/// A secret that holds something other than a K3s token in the secure format (`K10<CA
/// hash>::<credentials>`, which lets k3s check the server's CA): refused before k3s starts, with
/// an error that does not show the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_not_in_the_secure_format_is_refused_unseen() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let plain = "plain-server-token-5f4e3d2c1b0a";
        let boot = boot(Some(plain), None).await;
        let (agent, status, _) = boot.join("30s").await;
        assert_abandoned(
            &boot,
            &agent,
            status,
            "does not hold a K3s token in the secure format",
        )
        .await;
        assert!(!agent.log().contains(plain), "the value is in the log");
        assert!(!agent.log().contains("5f4e3d2c1b0a"));
        assert!(boot.node_obj().await.is_none(), "a Node was registered");
        assert!(!agent.log().contains("starting k3s"), "{}", agent.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_down_is_a_clear_error_and_writes_nothing() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(Some(TOKEN), None).await;
        boot.imds
            .set_availability(Availability::Refused)
            .await
            .expect("imds down");
        let (agent, status, took) = boot.join("30s").await;
        let log = agent.log();
        assert!(!status.success());
        assert!(
            log.contains("instance metadata (IMDS at http://127.0.0.1:"),
            "{log}"
        );
        assert!(
            log.contains("Connection refused") || log.contains("connection refused"),
            "{log}"
        );
        assert!(took < Duration::from_secs(10), "took {took:?}");
        assert!(!boot.k3s_config().exists());
        // Without IMDS the instance is unknown; the bootstrap script abandons in that case.
        assert_eq!(boot.lifecycle().await, "Pending:Wait");
    })
    .await;
}

/// The launch action's clock started before the boot: a boot slower than its HeartbeatTimeout
/// (here 50 s of model time against 30 s) is kept alive by join's heartbeats, and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_boot_is_kept_alive_by_heartbeats() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(Some(TOKEN), None).await;
        put_settings(&boot.model, &[("heartbeat_interval", "500ms")]).await;
        let proxy = CountingProxy::start(boot.model.endpoint()).await;
        let go = boot.dir.path().join("k3s-may-start");
        let mut agent = boot.spawn_join("60s", &proxy.url, Some(&go));

        let advanced =
            advance_after_heartbeats(&boot.model, &proxy, &boot.instance_id, "Pending:Wait", 5)
                .await;
        assert_eq!(advanced, 50.0, "{}", agent.log());
        assert_eq!(boot.lifecycle().await, "Pending:Wait", "{}", agent.log());
        assert!(boot.node_obj().await.is_none(), "k3s started too early");

        std::fs::write(&go, b"").expect("let k3s start");
        let status = agent.wait_exit(Duration::from_secs(30)).await;
        let log = agent.log();
        assert!(status.success(), "{log}");
        assert_eq!(boot.lifecycle().await, "InService");
        assert!(log.contains("lifecycle action completed"), "{log}");
        assert_eq!(proxy.count("CompleteLifecycleAction"), (1, 1));
        assert!(smartscale_agent::k8s::is_ready(
            &boot.node_obj().await.expect("node")
        ));
    })
    .await;
}

/// The launch action ends while join still waits (here it times out: the model clock passes its
/// HeartbeatTimeout at once): join fails at once rather than joining a node the group gave up on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_action_that_ends_during_the_join_fails_it() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(Some(TOKEN), None).await;
        put_settings(&boot.model, &[("heartbeat_interval", "500ms")]).await;
        let proxy = CountingProxy::start(boot.model.endpoint()).await;
        let go = boot.dir.path().join("k3s-may-start");
        let mut agent = boot.spawn_join("60s", &proxy.url, Some(&go));
        eventually("a first heartbeat", Duration::from_secs(20), || async {
            (proxy.count("RecordLifecycleActionHeartbeat").1 > 0).then_some(())
        })
        .await;

        boot.model.advance_clock(40.0).await.expect("advance clock");
        wait_lifecycle(
            &boot.model,
            &boot.instance_id,
            &["Terminating", "Terminating:Proceed", "Terminated"],
            Duration::from_secs(10),
        )
        .await;
        // The join fails while k3s is still held back: it does not wait for k3s. (Letting k3s
        // start before the agent has exited races the agent's next heartbeat against the join:
        // see the next test for what happens when the join wins.)
        let status = agent.wait_exit(Duration::from_secs(20)).await;
        std::fs::write(&go, b"").expect("let k3s start");
        let log = agent.log();
        agent.print_summary();
        assert!(!status.success(), "{log}");
        assert!(
            log.contains("the launch lifecycle action (launch-hook) no longer waits"),
            "{log}"
        );
        assert!(!log.contains("joined: node Ready"), "{log}");
        assert!(
            !boot.k3s_config().exists(),
            "the k3s config was left behind"
        );
    })
    .await;
}

/// The launch action ends after the node is Ready but before CONTINUE went through (here
/// CONTINUE is refused, AccessDenied, while the model clock passes the HeartbeatTimeout): the
/// join fails, as when the action ends earlier, and must clean up the same way: the k3s config
/// with the token removed (agent/README.md: "on any failure ... removes the k3s config it
/// wrote").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_action_that_ends_before_continue_fails_the_join_and_cleans_up() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(Some(TOKEN), None).await;
        put_settings(&boot.model, &[("heartbeat_interval", "500ms")]).await;
        let proxy = CountingProxy::start(boot.model.endpoint()).await;
        proxy.deny("CompleteLifecycleAction", u32::MAX);
        let mut agent = boot.spawn_join("60s", &proxy.url, None);
        eventually("a refused CONTINUE", Duration::from_secs(30), || async {
            (proxy.count("CompleteLifecycleAction").0 > 0).then_some(())
        })
        .await;
        assert!(smartscale_agent::k8s::is_ready(
            &boot.node_obj().await.expect("node registered")
        ));

        boot.model.advance_clock(40.0).await.expect("advance clock");
        wait_lifecycle(
            &boot.model,
            &boot.instance_id,
            &["Terminating", "Terminating:Proceed", "Terminated"],
            Duration::from_secs(10),
        )
        .await;
        let status = agent.wait_exit(Duration::from_secs(30)).await;
        let log = agent.log();
        agent.print_summary();
        assert!(!status.success(), "{log}");
        assert!(
            log.contains("the launch lifecycle action (launch-hook) no longer waits"),
            "{log}"
        );
        assert!(!log.contains("joined: node Ready"), "{log}");
        assert!(!log.contains(TOKEN));
        assert!(
            !boot.k3s_config().exists(),
            "the k3s config (with the token) was left behind after the failed join"
        );
    })
    .await;
}

/// CONTINUE refused twice (AccessDenied) once the node is Ready: retried, not answered with a
/// failure (the bootstrap script would ABANDON a Ready node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_continue_is_retried() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(Some(TOKEN), None).await;
        let (agent, status) = join_with_two_refused_completions(&boot).await;
        assert!(status.success(), "{}", agent.log());
        assert_eq!(boot.lifecycle().await, "InService");
    })
    .await;
}

/// AWS reuses private addresses, and K3s never deletes a Node: a new instance can get the
/// hostname, so the node name, of a machine whose Node still exists. K3s refuses it (the name's
/// node password is the old machine's); the agent ABANDONs the launch with K3s's reason, and the
/// old Node is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_name_still_held_by_another_machine_is_refused_and_abandoned() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(Some(TOKEN), None).await;
        let old_provider = "aws:///eu-west-3a/i-0oldmachine000000";
        boot.cluster
            .k3s
            .join(JoinRequest {
                token: TOKEN.into(),
                node_name: boot.node.clone(),
                node_password: "the-old-machine's-password".into(),
                provider_id: Some(old_provider.into()),
                labels: Default::default(),
                taints: vec![],
                internal_ip: None,
                cpu: None,
                memory: None,
            })
            .await
            .expect("the old machine joined");
        // The old instance is gone; its Node stays.
        assert!(boot.cluster.k3s.stop_kubelet(&boot.node));

        let (agent, status, _) = boot.join("30s").await;
        assert_abandoned(&boot, &agent, status, NODE_PASSWORD_REJECTED).await;
        assert!(
            agent
                .log()
                .contains("the server refused the join (403 Forbidden)"),
            "{}",
            agent.log()
        );
        let node = boot.node_obj().await.expect("the old Node");
        assert_eq!(
            node.spec.and_then(|s| s.provider_id).as_deref(),
            Some(old_provider),
            "the old Node was taken over"
        );
        assert!(
            !boot.dir.path().join("kubelet.kubeconfig").exists(),
            "a kubelet kubeconfig was written for a refused join"
        );
    })
    .await;
}

/// NodeRestriction lets a kubelet set only some `kubernetes.io`/`k8s.io` labels on its Node
/// (`node-role.kubernetes.io/*` is not among them: K3s sets roles from the server), and the
/// agent's own labels are its own. Asked for through SSM `node_labels`, both are refused by the
/// settings' validation, each named, before the join starts (no token fetched, no k3s started,
/// no Node registration tried), and the launch is ABANDONed. The real API server, asked for the
/// first with the node's own identity, would refuse it too: checked at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_label_the_kubelet_may_not_set_is_refused_before_the_join() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(Some(TOKEN), None).await;
        put_settings(
            &boot.model,
            &[(
                "node_labels",
                "team=web,node-role.kubernetes.io/worker=true,smartscale.io/node-group=other",
            )],
        )
        .await;
        let proxy = CountingProxy::start(boot.model.endpoint()).await;
        let mut agent = boot.spawn_join("30s", &proxy.url, None);
        let status = agent.wait_exit(Duration::from_secs(30)).await;
        let took = agent.started.elapsed();
        assert_abandoned(
            &boot,
            &agent,
            status,
            "node_labels: `node-role.kubernetes.io/worker` is a label a kubelet may not set on its own Node",
        )
        .await;
        let log = agent.log();
        assert!(
            log.contains("node_labels: `smartscale.io/node-group` is a label the agent sets itself"),
            "{log}"
        );
        assert!(took < Duration::from_secs(15), "took {took:?}");
        // Before the join: no token asked for, no k3s, no Node registration tried.
        assert_eq!(proxy.count("GetSecretValue"), (0, 0));
        assert!(!log.contains("starting k3s"), "{log}");
        assert!(boot.node_obj().await.is_none(), "a Node was registered");
        let registrations = boot
            .cluster
            .audit()
            .iter()
            .filter(|e| e.is("create", "nodes", ""))
            .count();
        assert_eq!(registrations, 0);

        // What the validation spares the node: the real API server refuses that label to a
        // kubelet's identity (NodeRestriction), and allows the ones the check lets through.
        let refused = boot
            .cluster
            .k3s
            .join(JoinRequest {
                token: TOKEN.into(),
                node_name: boot.node.clone(),
                node_password: "p".into(),
                provider_id: None,
                labels: [
                    ("node-role.kubernetes.io/worker".to_string(), "true".to_string()),
                ]
                .into(),
                taints: vec![],
                internal_ip: None,
                cpu: None,
                memory: None,
            })
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("is not allowed to set the following labels: node-role.kubernetes.io/worker"),
            "{refused}"
        );
        let allowed: Vec<(String, String)> = [
            ("kubernetes.io/os", "linux"),
            ("node.kubernetes.io/pool", "a"),
            ("kubelet.kubernetes.io/pool", "a"),
            ("topology.kubernetes.io/region", "eu-west-3"),
            ("failure-domain.beta.kubernetes.io/zone", "eu-west-3a"),
            ("beta.kubernetes.io/instance-type", "t3.medium"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, _) in &allowed {
            assert!(smartscale_agent::config::kubelet_may_set(k), "{k}");
        }
        boot.cluster
            .k3s
            .join(JoinRequest {
                token: TOKEN.into(),
                node_name: "ip-10-0-9-9.eu-west-3.compute.internal".into(),
                node_password: "p".into(),
                provider_id: None,
                labels: allowed.into_iter().collect(),
                taints: vec![],
                internal_ip: None,
                cpu: None,
                memory: None,
            })
            .await
            .unwrap_or_else(|e| panic!("labels the check allows, refused by the API server: {e}"));
    })
    .await;
}

/// `join` heartbeats the launch hook at once, before the hook's timeouts are read (here
/// DescribeLifecycleHooks does not answer at all), and a refused heartbeat (AccessDenied, twice)
/// is tried again within seconds, not a period later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_heartbeats_at_once_and_retries_a_refused_heartbeat_within_seconds() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(Some(TOKEN), None).await;
        let proxy = CountingProxy::start(boot.model.endpoint()).await;
        proxy.hold("DescribeLifecycleHooks");
        proxy.deny("RecordLifecycleActionHeartbeat", 2);
        let go = boot.dir.path().join("k3s-may-start");
        let mut agent = boot.spawn_join("60s", &proxy.url, Some(&go));
        let beats = eventually(
            "three heartbeats, two refused",
            Duration::from_secs(20),
            || async {
                let r = proxy.requests("RecordLifecycleActionHeartbeat");
                (r.len() >= 3).then_some(r)
            },
        )
        .await;
        let first = beats[0].0.saturating_duration_since(agent.started);
        let gaps: Vec<Duration> = beats.windows(2).map(|p| p[1].0 - p[0].0).collect();
        eprintln!(
            "first launch heartbeat {} ms after the agent started; retries after {:?} ms",
            first.as_millis(),
            gaps.iter().map(|g| g.as_millis()).collect::<Vec<_>>()
        );
        assert_eq!(
            beats.iter().take(3).map(|b| b.1).collect::<Vec<_>>(),
            [false, false, true],
            "{}",
            agent.log()
        );
        assert!(
            first < Duration::from_secs(5),
            "first heartbeat after {first:?}"
        );
        assert!(gaps[0] < Duration::from_millis(1800), "{gaps:?}");
        assert!(gaps[1] < Duration::from_millis(3000), "{gaps:?}");
        // The hook's timeouts were not known yet: the first heartbeat did not wait for them.
        assert_eq!(proxy.count("DescribeLifecycleHooks").1, 0);
        assert_eq!(boot.lifecycle().await, "Pending:Wait");

        proxy.release("DescribeLifecycleHooks");
        std::fs::write(&go, b"").expect("let k3s start");
        let status = agent.wait_exit(Duration::from_secs(40)).await;
        let log = agent.log();
        assert!(status.success(), "{log}");
        assert!(
            log.contains("heartbeat failed; trying again within seconds"),
            "{log}"
        );
        assert_eq!(proxy.count("CompleteLifecycleAction"), (1, 1));
        assert_eq!(boot.lifecycle().await, "InService");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_lists_every_problem_and_exits_2() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.yaml");
        std::fs::write(
            &config,
            "ssm_path: nope\njoin_timeout: soon\nkubeconfg: /x\n",
        )
        .unwrap();
        let env = agent_env("http://127.0.0.1:9", "http://127.0.0.1:9");
        let mut agent = Agent::spawn(&config, &["join"], &env, &dir.path().join("agent.log"));
        let status = agent.wait_exit(Duration::from_secs(10)).await;
        let log = agent.log();
        assert_eq!(status.code(), Some(2), "{log}");
        for needle in [
            "ssm_path: `nope`",
            "token_secret_id: required",
            "join_timeout",
            "kubeconfg: unknown key; did you mean `kubeconfig`?",
        ] {
            assert!(log.contains(needle), "no `{needle}` in:\n{log}");
        }
        assert!(!dir.path().join("k3s").exists());
    })
    .await;
}

/// Issue 14's warm-pool proof, against the AWS model's warm pool (tests/aws_model,
/// test_warm_pool.py checks it against the Auto Scaling docs): an instance launched into the pool
/// is warmed (its launch hook answered, no token read, no k3s, no Node), stopped, pulled in by a
/// SetDesiredCapacity, and then joins and becomes Ready, InService.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_instance_warms_without_a_node_then_joins_when_pulled_in() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let mut boot = boot(Some(TOKEN), None).await;
        let asg = asg_client(&boot.model);
        // Max 2, desired 1: the pool holds max − desired = 1 instance, kept stopped.
        asg.put_warm_pool()
            .auto_scaling_group_name(GROUP)
            .pool_state(aws_sdk_autoscaling::types::WarmPoolState::Stopped)
            .send()
            .await
            .expect("PutWarmPool");
        let first = boot.instance_id.clone();
        let warm = eventually(
            "an instance warming in the pool",
            Duration::from_secs(15),
            || async {
                boot.model
                    .instances()
                    .await
                    .ok()?
                    .into_iter()
                    .find(|i| i.instance_id != first && i.lifecycle_state == "Warmed:Pending:Wait")
                    .map(|i| i.instance_id)
            },
        )
        .await;
        boot.imds = FakeImds::for_model_instance(boot.model.client(), &warm)
            .await
            .expect("imds");
        boot.node = node_name(&boot.imds.endpoint()).await;
        boot.instance_id = warm.clone();

        // Warming: the agent answers the hook and stops there.
        let (agent, status, _) = boot.join("30s").await;
        let log = agent.log();
        assert!(status.success(), "warm join failed ({status}):\n{log}");
        assert!(log.contains("launched into the warm pool"), "{log}");
        wait_lifecycle(
            &boot.model,
            &warm,
            &["Warmed:Stopped"],
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(instance(&boot.model, &warm).await.ec2_state, "stopped");
        assert!(
            boot.node_obj().await.is_none(),
            "a warmed instance registered a Node"
        );
        assert!(
            !boot.k3s_config().exists(),
            "the k3s config (with the token) was written"
        );
        assert!(!log.contains(TOKEN));
        let pool = asg
            .describe_warm_pool()
            .auto_scaling_group_name(GROUP)
            .send()
            .await
            .expect("DescribeWarmPool");
        let in_pool: Vec<_> = pool
            .instances()
            .iter()
            .filter_map(|i| i.instance_id())
            .collect();
        assert_eq!(in_pool, [warm.as_str()]);

        // Pulled in: started, the launch hook again, target InService; now it joins.
        asg.set_desired_capacity()
            .auto_scaling_group_name(GROUP)
            .desired_capacity(2)
            .send()
            .await
            .expect("SetDesiredCapacity");
        wait_lifecycle(
            &boot.model,
            &warm,
            &["Pending:Wait"],
            Duration::from_secs(15),
        )
        .await;
        let pulled = instance(&boot.model, &warm).await;
        assert_eq!(
            (
                pulled.ec2_state.as_str(),
                pulled.target_lifecycle_state.as_str()
            ),
            ("running", "InService")
        );
        let (agent, status, _) = boot.join("30s").await;
        let log = agent.log();
        assert!(
            status.success(),
            "join from the pool failed ({status}):\n{log}"
        );
        let node = boot.node_obj().await.expect("node registered");
        assert!(smartscale_agent::k8s::is_ready(&node));
        assert_eq!(
            instance(&boot.model, &warm).await.lifecycle_state,
            "InService"
        );

        // Returned to the pool on scale-in (ReuseOnScaleIn) it was drained: cordoned and
        // annotated, as the agent's drain leaves a node (NodeRestriction keeps a kubelet from
        // adding the draining taint). Started from the pool again, the same Node comes back: the
        // join puts it back into service and leaves its taints alone.
        let nodes = Api::<Node>::all(boot.cluster.admin());
        let drained = json!({
            "metadata": {"annotations": {
                smartscale_agent::k8s::DRAIN_REASON_ANNOTATION: "target-lifecycle-state Warmed:Stopped",
                smartscale_agent::k8s::DRAIN_STARTED_ANNOTATION: "2026-12-04T00:00:00Z"}},
            "spec": {"unschedulable": true},
        });
        nodes
            .patch(
                &boot.node,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&drained),
            )
            .await
            .expect("drain the node");
        let (agent, status, _) = boot.join("30s").await;
        assert!(status.success(), "rejoin failed ({status}):\n{}", agent.log());
        let node = boot.node_obj().await.expect("node");
        assert!(!smartscale_agent::k8s::is_cordoned(&node), "still cordoned");
        let kept: Vec<String> = node
            .spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.key)
            .collect();
        assert!(kept.contains(&"dedicated".to_string()), "{kept:?}");
        let annotations = node.metadata.annotations.unwrap_or_default();
        assert!(!annotations.contains_key(smartscale_agent::k8s::DRAIN_REASON_ANNOTATION));
    })
    .await;
}
