//! `smartscale-agent join` against the test world: the launch hook is completed only when the
//! Node is Ready; a wrong token, an unreachable server, a missing secret or IMDS down end in
//! ABANDON (where the instance is known) and a clear error; the token stays secret. A slow boot is
//! kept alive by heartbeats, a launch action that ends during the join fails it, and a refused
//! CONTINUE is retried.
//!
//! k3s is played by this test binary itself (`fake_k3s_joiner`, run by the agent as its
//! `k3s_start_command`): it reads the k3s config the agent wrote, checks its mode and token as a
//! K3s server would, registers the Node with the kubelet identity and writes the kubelet
//! kubeconfig, as k3s does.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::json;
use smartscale_testworld::aws::AwsModel;
use smartscale_testworld::imds::{Availability, FakeImds};
use support::*;

const TOKEN: &str = "K10c0ffee0123456789abcdef::server:9f8e7d6c5b4a39281706";
const JOINER_ENV: &str = "SMARTSCALE_TEST_JOINER";
const LIMIT: Duration = Duration::from_secs(90);

/// What the fake k3s is told by the test.
#[derive(Serialize, Deserialize)]
struct JoinerSpec {
    k3s_config: PathBuf,
    expected_token: String,
    node_token: String,
    kubeconfig_out: PathBuf,
    /// A slow boot: start only once this file exists.
    #[serde(default)]
    wait_for: Option<PathBuf>,
}

/// The k3s agent config keys the agent writes.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct K3sConfig {
    server: String,
    token: String,
    node_name: String,
    kubelet_arg: Vec<String>,
    node_label: Vec<String>,
    #[serde(default)]
    node_taint: Vec<String>,
}

/// The fake k3s. Does nothing unless started by an agent with `SMARTSCALE_TEST_JOINER` set.
#[test]
#[ignore = "helper process: run by the agent as its k3s start command"]
fn fake_k3s_joiner() {
    let Ok(spec_path) = std::env::var(JOINER_ENV) else {
        return;
    };
    let code = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(fake_k3s(Path::new(&spec_path)));
    std::process::exit(code);
}

async fn fake_k3s(spec_path: &Path) -> i32 {
    let spec: JoinerSpec =
        serde_json::from_slice(&std::fs::read(spec_path).expect("spec")).expect("spec json");
    // Long enough for the test's /proc scan to see this process.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(go) = &spec.wait_for {
        while !go.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let meta = std::fs::metadata(&spec.k3s_config).expect("k3s config exists");
    if meta.permissions().mode() & 0o777 != 0o600 {
        eprintln!(
            "k3s: config file mode is {:o}, not 600",
            meta.permissions().mode() & 0o777
        );
        return 3;
    }
    let text = std::fs::read_to_string(&spec.k3s_config).expect("k3s config");
    let config: K3sConfig = match serde_saphyr::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("k3s: config is not valid: {e}");
            return 4;
        }
    };
    if config.token != spec.expected_token {
        eprintln!("k3s: the server rejected the join token (401 Unauthorized)");
        return 1;
    }
    let provider_id = config
        .kubelet_arg
        .iter()
        .find_map(|a| a.strip_prefix("provider-id="))
        .expect("provider-id kubelet arg")
        .to_string();
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), json!(config.node_name));
    for l in &config.node_label {
        let (k, v) = l.split_once('=').expect("label k=v");
        labels.insert(k.into(), json!(v));
    }
    let taints: Vec<serde_json::Value> = config
        .node_taint
        .iter()
        .map(|t| {
            let (kv, effect) = t.rsplit_once(':').expect("taint effect");
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            json!({"key": k, "value": v, "effect": effect})
        })
        .collect();
    // The kubelet kubeconfig k3s would write, with this node's identity.
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: k3s\n  cluster:\n    server: {server}\ncontexts:\n- name: k3s\n  context:\n    cluster: k3s\n    user: node\ncurrent-context: k3s\nusers:\n- name: node\n  user:\n    token: {token}\n",
        server = config.server,
        token = spec.node_token
    );
    smartscale_common::files::write_private(&spec.kubeconfig_out, kubeconfig.as_bytes())
        .expect("write kubeconfig");
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": config.node_name, "labels": labels},
        "spec": {"providerID": provider_id, "taints": taints},
    }))
    .expect("node");
    // Like k3s, keep trying an unreachable server (the agent's join_timeout ends it).
    loop {
        match kube_client(&spec.kubeconfig_out).await {
            Some(client) => match Api::<Node>::all(client)
                .create(&PostParams::default(), &node)
                .await
            {
                Ok(_) => return 0,
                Err(kube::Error::Api(s)) => {
                    eprintln!("k3s: registering the node failed: {} {}", s.code, s.message);
                    return 5;
                }
                Err(e) => eprintln!("k3s: cannot reach the server: {e}; retrying"),
            },
            None => eprintln!("k3s: bad kubeconfig"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn kube_client(path: &Path) -> Option<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).ok()?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .ok()?;
    kube::Client::try_from(config).ok()
}

/// Watches every process's command line and environment for `needle` while it runs.
struct ProcScan {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, bool)>,
}

impl ProcScan {
    fn start(needle: &str, joiner_marker: &str) -> ProcScan {
        let stop = Arc::new(AtomicBool::new(false));
        let (needle, marker, flag) = (needle.to_string(), joiner_marker.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut hits = Vec::new();
            let mut saw_joiner = false;
            while !flag.load(Ordering::SeqCst) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !name.chars().all(|c| c.is_ascii_digit()) {
                        continue;
                    }
                    for file in ["cmdline", "environ"] {
                        let Ok(bytes) = std::fs::read(entry.path().join(file)) else {
                            continue;
                        };
                        let text = String::from_utf8_lossy(&bytes);
                        if text.contains(&needle) {
                            hits.push(format!("/proc/{name}/{file}"));
                        }
                        if file == "cmdline"
                            && text.contains(&marker)
                            && text.contains(JOINER_MARKER_ARG)
                        {
                            saw_joiner = true;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (hits, saw_joiner)
        });
        ProcScan { stop, thread }
    }

    fn finish(self) -> (Vec<String>, bool) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("scan thread")
    }
}

const JOINER_MARKER_ARG: &str = "fake_k3s_joiner";

/// One worker about to join: its group (launch + terminate hooks), IMDS, API server, settings.
struct Boot {
    model: AwsModel,
    instance_id: String,
    imds: FakeImds,
    api: smartscale_testworld::apiserver::FakeApiServer,
    node: String,
    dir: tempfile::TempDir,
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
    let node = node_name(&imds).await;
    let api = start_api(&model, &node).await;
    let url = server_url.map_or_else(|| api.url(), str::to_string);
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
        api,
        node,
        dir,
    }
}

impl Boot {
    fn k3s_config(&self) -> PathBuf {
        self.dir.path().join("k3s/config.yaml")
    }

    /// Runs `join` with the fake k3s and `join_timeout`; returns the agent (exited) and its time.
    async fn join(&self, join_timeout: &str) -> (Agent, std::process::ExitStatus, Duration) {
        let mut agent = self.spawn_join(join_timeout, self.model.endpoint(), None);
        let status = agent.wait_exit(Duration::from_secs(60)).await;
        let took = agent.started.elapsed();
        (agent, status, took)
    }

    /// Starts `join` with the fake k3s, AWS at `aws_endpoint`; the fake k3s waits for `wait_for`
    /// to exist, if given (a slow boot).
    fn spawn_join(&self, join_timeout: &str, aws_endpoint: &str, wait_for: Option<&Path>) -> Agent {
        let spec = JoinerSpec {
            k3s_config: self.k3s_config(),
            expected_token: TOKEN.into(),
            node_token: NODE_TOKEN.into(),
            kubeconfig_out: self.dir.path().join("kubelet.kubeconfig"),
            wait_for: wait_for.map(Path::to_path_buf),
        };
        let spec_path = self.dir.path().join("joiner.json");
        std::fs::write(&spec_path, serde_json::to_vec(&spec).expect("spec")).expect("write spec");
        let me = std::env::current_exe().expect("test binary");
        let command = json!([
            me,
            JOINER_MARKER_ARG,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1"
        ]);
        let config = write_config(
            self.dir.path(),
            &format!("join_timeout: {join_timeout}\nk3s_start_command: {command}\n"),
        );
        let mut env = agent_env(aws_endpoint, &self.imds.endpoint());
        env.push((JOINER_ENV.into(), spec_path.display().to_string()));
        env.push(("RUST_LOG".into(), "trace".into()));
        Agent::spawn(&config, &["join"], &env, &self.dir.path().join("agent.log"))
    }

    async fn lifecycle(&self) -> String {
        instance(&self.model, &self.instance_id)
            .await
            .lifecycle_state
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_registers_a_ready_node_then_completes_the_launch_hook() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(Some(TOKEN), None).await;
        assert_eq!(
            instance(&boot.model, &boot.instance_id)
                .await
                .lifecycle_state,
            "Pending:Wait"
        );
        let scan = ProcScan::start(
            TOKEN,
            &std::env::current_exe().unwrap().display().to_string(),
        );
        let (agent, status, took) = boot.join("30s").await;
        let (hits, saw_joiner) = scan.finish();
        let log = agent.log();
        assert!(status.success(), "join failed ({status}):\n{log}");
        eprintln!("join took {} ms", took.as_millis());
        agent.print_summary();

        // Node Ready in the API server, with the identity and labels, then InService.
        let node = node_obj(&boot.api, &boot.node);
        assert!(smartscale_agent::k8s::is_ready(&node));
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let instance = instance(&boot.model, &boot.instance_id).await;
        assert_eq!(instance.lifecycle_state, "InService");
        assert_eq!(
            node.spec.as_ref().and_then(|s| s.provider_id.clone()),
            Some(format!(
                "aws:///{}/{}",
                instance.availability_zone, instance.instance_id
            ))
        );
        for (k, v) in [
            ("node.kubernetes.io/instance-type", "t3.medium"),
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
        assert!(
            std::fs::read_to_string(boot.k3s_config())
                .unwrap()
                .contains(TOKEN)
        );
        assert!(!log.contains(TOKEN), "the token is in the agent's log");
        assert!(
            !log.contains("9f8e7d6c5b4a39281706"),
            "part of the token is in the agent's log"
        );
        assert!(hits.is_empty(), "the token is visible in {hits:?}");
        assert!(
            saw_joiner,
            "the /proc scan never saw the k3s child, so it proved nothing"
        );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_abandons_the_launch() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(Some("K10wrong::server:0000"), None).await;
        let (agent, status, took) = boot.join("30s").await;
        assert_abandoned(&boot, &agent, status, "the server rejected the join token").await;
        assert!(took < Duration::from_secs(30), "took {took:?}");
        assert!(!agent.log().contains("K10wrong::server:0000"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_abandons_with_a_clear_error() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(None, None).await;
        let (agent, status, _) = boot.join("30s").await;
        assert_abandoned(
            &boot,
            &agent,
            status,
            "Secrets Manager secret smartscale/test/k3s-token: GetSecretValue failed",
        )
        .await;
        assert!(
            agent.log().contains("ResourceNotFoundException"),
            "{}",
            agent.log()
        );
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
        assert_eq!(
            instance(&boot.model, &boot.instance_id)
                .await
                .lifecycle_state,
            "Pending:Wait"
        );
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

        std::fs::write(&go, b"").expect("let k3s start");
        let status = agent.wait_exit(Duration::from_secs(30)).await;
        let log = agent.log();
        assert!(status.success(), "{log}");
        assert_eq!(boot.lifecycle().await, "InService");
        assert!(log.contains("lifecycle action completed"), "{log}");
        assert_eq!(proxy.count("CompleteLifecycleAction"), (1, 1));
        assert!(smartscale_agent::k8s::is_ready(&node_obj(
            &boot.api, &boot.node
        )));
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
        // The node could join now; too late.
        std::fs::write(&go, b"").expect("let k3s start");
        let status = agent.wait_exit(Duration::from_secs(20)).await;
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

/// CONTINUE refused twice (AccessDenied) once the node is Ready: retried, not answered with a
/// failure (the bootstrap script would ABANDON a Ready node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_continue_is_retried() {
    let _serial = serial().await;
    bounded(LIMIT, async {
        let boot = boot(Some(TOKEN), None).await;
        let proxy = CountingProxy::start(boot.model.endpoint()).await;
        proxy.deny("CompleteLifecycleAction", 2);
        let mut agent = boot.spawn_join("30s", &proxy.url, None);
        let status = agent.wait_exit(Duration::from_secs(30)).await;
        let log = agent.log();
        assert!(status.success(), "{log}");
        assert!(
            log.contains("could not complete the launch lifecycle action; retrying"),
            "{log}"
        );
        assert_eq!(proxy.count("CompleteLifecycleAction"), (3, 1));
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
