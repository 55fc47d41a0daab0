//! What the agent's end-to-end tests share: the test world set up for one worker instance, the
//! agent binary as a child process with its log, polling with deadlines, pod fixtures, a
//! counting proxy in front of the AWS model (to prove a lifecycle action is completed once, and to
//! refuse chosen actions), and a gate in front of the API server (to take it away and back).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_autoscaling::types::{
    InstancesDistribution, LaunchTemplate, LaunchTemplateSpecification, LifecycleHookSpecification,
    MixedInstancesPolicy,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use smartscale_testworld::apiserver::{ApiServerOptions, FakeApiServer};
use smartscale_testworld::aws::{AwsModel, ModelInstance};
use smartscale_testworld::imds::FakeImds;

pub const BIN: &str = env!("CARGO_BIN_EXE_smartscale-agent");

/// The binary under test: `SMARTSCALE_AGENT_BIN` (e.g. the release-agent build workers run), else
/// the one cargo built for these tests.
pub fn agent_bin() -> String {
    std::env::var("SMARTSCALE_AGENT_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| BIN.to_string())
}
pub const REGION: &str = "eu-west-3";
pub const GROUP: &str = "workers";
pub const LAUNCH_HOOK: &str = "launch-hook";
pub const TERMINATE_HOOK: &str = "terminate-hook";
pub const SSM_PATH: &str = "/smartscale/test/agent";
pub const SECRET_ID: &str = "smartscale/test/k3s-token";
pub const ADMIN_TOKEN: &str = "admin-token";
pub const NODE_TOKEN: &str = "node-token-0123456789";

/// One agent end-to-end test at a time, across threads (`cargo test`) and processes (`cargo
/// nextest` runs each test in its own process): each starts moto, servers and agent processes,
/// and several assert latencies (cordon within 2 s) that parallel tests on two cores would make
/// flaky. An flock on a file in the temp directory; the kernel releases it if a test dies.
pub struct Serial(std::fs::File);

pub async fn serial() -> Serial {
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join("smartscale-agent-e2e.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("open the e2e lock file");
    // SAFETY: flock on a descriptor we own.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Serial(file)
}

/// Runs a test body with a deadline, so a hung expectation fails instead of hanging CI.
pub async fn bounded(limit: Duration, body: impl Future<Output = ()>) {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its {} s limit", limit.as_secs()));
}

/// Polls `probe` every 20 ms until it gives `Some`; panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {:?} waiting for {what}",
            timeout
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- AWS

/// Which lifecycle hooks the group has (created with the group, so the first instance waits).
#[derive(Debug, Clone, Copy)]
pub struct GroupSpec {
    pub launch_hook: bool,
    pub terminate_hook: bool,
    pub spot: bool,
    /// AWS's minimum is 30 s; tests advance the model clock instead of waiting.
    pub heartbeat_timeout: i32,
}

impl Default for GroupSpec {
    fn default() -> Self {
        GroupSpec {
            launch_hook: false,
            terminate_hook: true,
            spot: false,
            heartbeat_timeout: 30,
        }
    }
}

pub fn asg_client(model: &AwsModel) -> aws_sdk_autoscaling::Client {
    aws_sdk_autoscaling::Client::new(&model.sdk_config(REGION))
}

/// Creates the group with one instance and returns its id once it is `Pending:Wait` (launch
/// hook) or `InService`.
pub async fn create_group(model: &AwsModel, spec: GroupSpec) -> String {
    let asg = asg_client(model);
    model
        .client()
        .create_launch_template(REGION, "workers-lt", "ami-12c6146b", "t3.medium")
        .await
        .expect("CreateLaunchTemplate");
    let template = LaunchTemplateSpecification::builder()
        .launch_template_name("workers-lt")
        .build();
    let mut hooks = Vec::new();
    if spec.launch_hook {
        hooks.push((LAUNCH_HOOK, "autoscaling:EC2_INSTANCE_LAUNCHING"));
    }
    if spec.terminate_hook {
        hooks.push((TERMINATE_HOOK, "autoscaling:EC2_INSTANCE_TERMINATING"));
    }
    let mut create = asg
        .create_auto_scaling_group()
        .auto_scaling_group_name(GROUP)
        .min_size(0)
        .max_size(2)
        .desired_capacity(1)
        .availability_zones(format!("{REGION}a"));
    create = if spec.spot {
        create.mixed_instances_policy(
            MixedInstancesPolicy::builder()
                .launch_template(
                    LaunchTemplate::builder()
                        .launch_template_specification(template)
                        .build(),
                )
                .instances_distribution(
                    InstancesDistribution::builder()
                        .on_demand_base_capacity(0)
                        .on_demand_percentage_above_base_capacity(0)
                        .build(),
                )
                .build(),
        )
    } else {
        create.launch_template(template)
    };
    for (name, transition) in hooks {
        create = create.lifecycle_hook_specification_list(
            LifecycleHookSpecification::builder()
                .lifecycle_hook_name(name)
                .lifecycle_transition(transition)
                .heartbeat_timeout(spec.heartbeat_timeout)
                .default_result("ABANDON")
                .build(),
        );
    }
    create.send().await.expect("CreateAutoScalingGroup");
    let wanted = if spec.launch_hook {
        "Pending:Wait"
    } else {
        "InService"
    };
    eventually(
        &format!("an instance {wanted}"),
        Duration::from_secs(15),
        || async {
            model
                .instances()
                .await
                .ok()?
                .into_iter()
                .find(|i| i.asg_name.as_deref() == Some(GROUP) && i.lifecycle_state == wanted)
                .map(|i| i.instance_id)
        },
    )
    .await
}

pub async fn instance(model: &AwsModel, id: &str) -> ModelInstance {
    model
        .instance(id)
        .await
        .expect("model answers")
        .expect("instance known")
}

pub async fn wait_lifecycle(
    model: &AwsModel,
    id: &str,
    states: &[&str],
    timeout: Duration,
) -> String {
    eventually(&format!("{id} in {states:?}"), timeout, || async {
        let i = model.instance(id).await.ok()??;
        states
            .contains(&i.lifecycle_state.as_str())
            .then_some(i.lifecycle_state)
    })
    .await
}

pub async fn put_settings(model: &AwsModel, settings: &[(&str, &str)]) {
    let ssm = aws_sdk_ssm::Client::new(&model.sdk_config(REGION));
    for (name, value) in settings {
        ssm.put_parameter()
            .name(format!("{SSM_PATH}/{name}"))
            .value(*value)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .expect("PutParameter");
    }
}

pub async fn create_secret(model: &AwsModel, value: &str) {
    aws_sdk_secretsmanager::Client::new(&model.sdk_config(REGION))
        .create_secret()
        .name(SECRET_ID)
        .secret_string(value)
        .send()
        .await
        .expect("CreateSecret");
}

/// The node name the agent will use: the instance's `local-hostname` from its IMDS.
pub async fn node_name(imds: &FakeImds) -> String {
    let client = smartscale_agent::imds::Imds::new(&imds.endpoint(), Duration::from_secs(60))
        .expect("imds client");
    client
        .require("meta-data/local-hostname")
        .await
        .expect("hostname")
}

// ---------------------------------------------------------------- Kubernetes

pub async fn start_api(model: &AwsModel, node: &str) -> FakeApiServer {
    let tokens = HashMap::from([
        (ADMIN_TOKEN.to_string(), "admin".to_string()),
        (NODE_TOKEN.to_string(), format!("system:node:{node}")),
    ]);
    FakeApiServer::start(ApiServerOptions {
        tokens,
        aws_model_url: Some(model.endpoint().to_string()),
        pod_start_delay: Duration::from_millis(50),
        pod_stop_delay: Some(Duration::from_millis(100)),
        port: 0,
    })
    .await
    .expect("fake API server")
}

pub async fn client(api: &FakeApiServer, dir: &Path, token: &str) -> kube::Client {
    let path = dir.join(format!("kubeconfig-{token}"));
    api.write_kubeconfig(&path, Some(token))
        .expect("kubeconfig");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kube config");
    config.default_retry = false;
    kube::Client::try_from(config).expect("kube client")
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("fixture decodes")
}

/// Registers the worker's Node as k3s would have (for tests that skip `join`).
pub async fn register_node(admin: &kube::Client, node: &str, instance: &ModelInstance) {
    let body: Node = typed(json!({
        "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
        "spec": {"providerID": format!("aws:///{}/{}", instance.availability_zone, instance.instance_id)},
    }));
    Api::<Node>::all(admin.clone())
        .create(&PostParams::default(), &body)
        .await
        .expect("create node");
    eventually("node Ready", Duration::from_secs(10), || async {
        let n = Api::<Node>::all(admin.clone()).get(node).await.ok()?;
        smartscale_agent::k8s::is_ready(&n).then_some(())
    })
    .await;
}

/// A ReplicaSet-owned pod bound to `node`, 1 s grace period.
pub async fn create_pod(admin: &kube::Client, node: &str, name: &str, app: &str, empty_dir: bool) {
    let mut spec = json!({
        "nodeName": node,
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": "registry.example/app:1"}],
    });
    if empty_dir {
        spec["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
    }
    let pod: Pod = typed(json!({
        "metadata": {"name": name, "labels": {"app": app}, "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-rs"),
             "uid": format!("uid-{app}-rs"), "controller": true}]},
        "spec": spec,
    }));
    Api::<Pod>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
}

/// A static pod's mirror on `node` (the API cannot remove it; drains skip it).
pub async fn create_mirror_pod(admin: &kube::Client, node: &str) -> String {
    let name = format!("static-web-{node}");
    let pod: Pod = typed(json!({
        "metadata": {"name": name, "namespace": "kube-system",
                     "annotations": {"kubernetes.io/config.mirror": "hash", "kubernetes.io/config.source": "file"}},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": "registry.example/web:1"}]},
    }));
    Api::<Pod>::namespaced(admin.clone(), "kube-system")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create mirror pod");
    format!("kube-system/{name}")
}

pub async fn create_daemonset(admin: &kube::Client) {
    let ds: k8s_openapi::api::apps::v1::DaemonSet = typed(json!({
        "metadata": {"name": "node-exporter", "namespace": "kube-system"},
        "spec": {
            "selector": {"matchLabels": {"app": "node-exporter"}},
            "template": {"metadata": {"labels": {"app": "node-exporter"}},
                         "spec": {"containers": [{"name": "e", "image": "registry.example/ne:1"}]}}
        }
    }));
    Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(admin.clone(), "kube-system")
        .create(&PostParams::default(), &ds)
        .await
        .expect("create daemonset");
}

/// A budget that allows no disruption of `app` while it has one Ready pod.
pub async fn create_blocking_pdb(admin: &kube::Client, app: &str) {
    let pdb: k8s_openapi::api::policy::v1::PodDisruptionBudget = typed(json!({
        "metadata": {"name": format!("{app}-pdb")},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": app}}}
    }));
    Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &pdb)
        .await
        .expect("create pdb");
}

pub async fn delete_pdb(admin: &kube::Client, app: &str) {
    Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(admin.clone(), "default")
        .delete(&format!("{app}-pdb"), &Default::default())
        .await
        .expect("delete pdb");
}

/// Names (`namespace/name`) of the pods on `node`, Running ones only if `running`.
pub fn pods_on(api: &FakeApiServer, node: &str, running: bool) -> Vec<String> {
    let mut names: Vec<String> = api
        .pods()
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|p| {
            !running || p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.unwrap_or_default(),
                p.metadata.name.unwrap_or_default()
            )
        })
        .collect();
    names.sort();
    names
}

pub fn node_obj(api: &FakeApiServer, node: &str) -> Node {
    api.nodes()
        .into_iter()
        .find(|n| n.metadata.name.as_deref() == Some(node))
        .expect("node exists")
}

// ---------------------------------------------------------------- the agent process

/// Writes the agent's YAML config into `dir`.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("agent.yaml");
    let text = format!(
        "ssm_path: {SSM_PATH}\ntoken_secret_id: {SECRET_ID}\nk3s_config_path: {k3s}\nkubeconfig: {kc}\nstate_dir: {state}\npoll_interval: 500ms\n{extra}",
        k3s = dir.join("k3s/config.yaml").display(),
        kc = dir.join("kubelet.kubeconfig").display(),
        state = dir.join("state").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running agent; killed when dropped.
pub struct Agent {
    child: tokio::process::Child,
    pub log_path: PathBuf,
    pub started: Instant,
}

/// The environment the agent gets: nothing from the test's own environment but PATH.
pub fn agent_env(aws_endpoint: &str, imds: &str) -> Vec<(String, String)> {
    [
        ("PATH", std::env::var("PATH").unwrap_or_default().as_str()),
        ("AWS_ENDPOINT_URL", aws_endpoint),
        ("AWS_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds),
        ("RUST_LOG", "debug"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Agent {
    pub fn spawn(config: &Path, args: &[&str], env: &[(String, String)], log_path: &Path) -> Agent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("agent log");
        let err = log.try_clone().expect("log handle");
        let child = tokio::process::Command::new(agent_bin())
            .arg("--config")
            .arg(config)
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn agent");
        Agent {
            child,
            log_path: log_path.to_path_buf(),
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The agent's own info-and-above lines (shown with `--nocapture`).
    pub fn print_summary(&self) {
        for line in self
            .log()
            .lines()
            .filter(|l| !l.contains("DEBUG") && !l.contains("TRACE"))
        {
            eprintln!("    | {}", strip_ansi(line));
        }
    }

    pub async fn wait_log(&self, needle: &str, timeout: Duration) {
        let until = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < until,
                "agent log has no `{needle}` after {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for agent"),
            Err(_) => panic!(
                "agent did not exit within {timeout:?}; log:\n{}",
                self.log()
            ),
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }
}

pub const SIGKILL: i32 = libc::SIGKILL;
pub const SIGTERM: i32 = libc::SIGTERM;
pub const SIGINT: i32 = libc::SIGINT;

pub async fn metrics_text(port: u16) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text")
}

/// The value of one sample line (`name{labels} value`) in OpenMetrics text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

// ---------------------------------------------------------------- counting proxy

/// Forwards everything to the AWS model and counts Auto Scaling actions by name:
/// (requests, successful answers).
pub struct CountingProxy {
    pub url: String,
    counts: Arc<Mutex<BTreeMap<String, (u32, u32)>>>,
    denied: Arc<Mutex<HashMap<String, u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct ProxyState {
    target: String,
    http: reqwest::Client,
    counts: Arc<Mutex<BTreeMap<String, (u32, u32)>>>,
    /// Actions to answer with 403 AccessDenied instead of forwarding, and how many more times.
    denied: Arc<Mutex<HashMap<String, u32>>>,
}

impl CountingProxy {
    pub async fn start(target: &str) -> CountingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let denied = Arc::new(Mutex::new(HashMap::new()));
        let state = ProxyState {
            target: target.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
            counts: counts.clone(),
            denied: denied.clone(),
        };
        let router = axum::Router::new().fallback(forward).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        CountingProxy {
            url,
            counts,
            denied,
            task,
        }
    }

    /// Answer the next `times` requests for `action` with 403 AccessDenied (as IAM would without
    /// the permission), without passing them on. `u32::MAX`: until [`CountingProxy::allow`].
    pub fn deny(&self, action: &str, times: u32) {
        self.denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(action.to_string(), times);
    }

    pub fn allow(&self, action: &str) {
        self.denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(action);
    }

    /// (requests, successes) for one action.
    pub fn count(&self, action: &str) -> (u32, u32) {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(action)
            .copied()
            .unwrap_or_default()
    }
}

async fn forward(
    axum::extract::State(state): axum::extract::State<ProxyState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let action = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.into_owned());
    if let Some(action) = &action {
        let deny = {
            let mut denied = state.denied.lock().unwrap_or_else(|p| p.into_inner());
            match denied.get_mut(action) {
                Some(left) if *left > 0 => {
                    *left = left.saturating_sub(u32::from(*left != u32::MAX));
                    true
                }
                _ => false,
            }
        };
        if deny {
            state
                .counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(action.clone())
                .or_default()
                .0 += 1;
            let body = format!(
                "<ErrorResponse xmlns=\"https://autoscaling.amazonaws.com/doc/2011-01-01/\"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User: arn:aws:sts::123456789012:assumed-role/worker/i-test is not authorized to perform: autoscaling:{action} (denied by the test proxy)</Message></Error><RequestId>denied-by-test</RequestId></ErrorResponse>"
            );
            let mut response = (axum::http::StatusCode::FORBIDDEN, body).into_response();
            response
                .headers_mut()
                .insert("content-type", "text/xml".parse().expect("header"));
            return response;
        }
    }
    let mut out_headers = headers.clone();
    for h in ["host", "content-length", "connection", "transfer-encoding"] {
        out_headers.remove(h);
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let answer = state
        .http
        .request(method, format!("{}{path}", state.target))
        .headers(out_headers)
        .body(body)
        .send()
        .await;
    let Ok(answer) = answer else {
        return axum::http::StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    if let Some(action) = action {
        let mut counts = state.counts.lock().unwrap_or_else(|p| p.into_inner());
        let entry = counts.entry(action).or_default();
        entry.0 += 1;
        if status.is_success() {
            entry.1 += 1;
        }
    }
    let content_type = answer.headers().get("content-type").cloned();
    let bytes = answer.bytes().await.unwrap_or_default();
    let mut response = (status, bytes).into_response();
    if let Some(ct) = content_type {
        response.headers_mut().insert("content-type", ct);
    }
    response
}

/// Advances the model clock by 10 s after each heartbeat the model answers, `steps` times or
/// until `instance` is no longer in `waiting` (`Pending:Wait`, `Terminating:Wait`); returns how
/// far. Tied to heartbeats rather than to wall time, so a slow machine cannot make the clock
/// outrun them: what is shown is that heartbeats keep the action alive past its 30 s
/// HeartbeatTimeout, not how fast they come.
pub async fn advance_after_heartbeats(
    model: &AwsModel,
    proxy: &CountingProxy,
    instance_id: &str,
    waiting: &str,
    steps: usize,
) -> f64 {
    let mut advanced = 0.0;
    for _ in 0..steps {
        let seen = proxy.count("RecordLifecycleActionHeartbeat").1;
        let still = eventually(
            "a heartbeat or the end of the wait",
            Duration::from_secs(20),
            || async {
                if instance(model, instance_id).await.lifecycle_state != waiting {
                    return Some(false);
                }
                (proxy.count("RecordLifecycleActionHeartbeat").1 > seen).then_some(true)
            },
        )
        .await;
        if !still {
            break;
        }
        model.advance_clock(10.0).await.expect("advance clock");
        advanced += 10.0;
    }
    advanced
}

// ---------------------------------------------------------------- API server gate

/// A TCP gate in front of the fake API server: open, it passes connections through; closed, it
/// cuts the open ones and drops every new one at once (the API server is away, as in an outage).
pub struct Gate {
    pub url: String,
    open: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Gate {
    /// A gate to `target` (`http://127.0.0.1:PORT`), open.
    pub async fn start(target: &str) -> Gate {
        let upstream: std::net::SocketAddr = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("target address");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gate");
        let url = format!("http://{}", listener.local_addr().expect("gate addr"));
        let (open, open_rx) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !*open_rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut closed = open_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = closed.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Gate { url, open, task }
    }

    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

/// `line` without terminal colour codes.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
