//! What the agent's end-to-end tests share: the test world set up for one worker instance (the
//! AWS model's group, the real Kubernetes control plane with the K3s server's joins, the node's
//! own kubelet identity), the agent binary as a child process with its log, polling with
//! deadlines, workload fixtures (real ReplicaSets, Deployments, a DaemonSet, a mirror pod,
//! budgets the disruption controller computes), what the API server's audit log says about
//! evictions and deletions, a counting proxy in front of the AWS model (to prove a lifecycle
//! action is completed once and when, and to refuse chosen actions), and a gate in front of the
//! API server (to take it away and back).
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
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use smartscale_testworld::aws::{AwsModel, ModelInstance};
use smartscale_testworld::kubernetes::kubelet::{self, UNINITIALIZED_TAINT};
use smartscale_testworld::kubernetes::{
    AuditEvent, ControlPlane, ControlPlaneOptions, JoinRequest, K3sOptions, K3sServer, Kubeconfig,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_smartscale-agent");

/// The binary under test: `SMARTSCALE_AGENT_BIN` (e.g. the release-agent build workers run), else
/// the one cargo built for these tests.
pub fn agent_bin() -> String {
    std::env::var("SMARTSCALE_AGENT_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| BIN.to_string())
}
/// The fake `k3s agent` (`smartscale-testworld k3s-agent`), built by `cargo build --workspace --bins`.
pub fn testworld_bin() -> PathBuf {
    smartscale_testworld::world::product_binary("smartscale-testworld")
        .unwrap_or_else(|e| panic!("{e}"))
}

pub const REGION: &str = "eu-west-3";
pub const GROUP: &str = "workers";
pub const LAUNCH_HOOK: &str = "launch-hook";
pub const TERMINATE_HOOK: &str = "terminate-hook";
pub const SSM_PATH: &str = "/smartscale/test/agent";
pub const SECRET_ID: &str = "smartscale/test/k3s-token";

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

/// The node name the agent will use: the instance's `local-hostname` from its IMDS at `endpoint`.
pub async fn node_name(endpoint: &str) -> String {
    let client =
        smartscale_agent::imds::Imds::new(endpoint, Duration::from_secs(60)).expect("imds client");
    client
        .require("meta-data/local-hostname")
        .await
        .expect("hostname")
}

/// The node name of a model instance without asking its IMDS (for AEMM, started later): its
/// `local-hostname`, derived as both IMDS mocks derive it (the parity test checks they agree).
pub fn model_node_name(instance: &ModelInstance) -> String {
    smartscale_testworld::aemm::local_hostname(
        &smartscale_testworld::imds::ImdsInstance::from_model(instance),
    )
}

// ---------------------------------------------------------------- Kubernetes

/// The token nodes join the tests' K3s server with (for tests that skip `agent join`).
pub const K3S_TOKEN: &str = "K10e2e::node:agent-token-0123456789";

/// How the tests' control plane and K3s server are started.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Join tokens the K3s server accepts.
    pub tokens: Vec<String>,
    /// Bound pod → Running and Ready (the simulated kubelet's start delay).
    pub pod_start_delay: Duration,
    /// kube-controller-manager's `--node-monitor-grace-period`.
    pub node_monitor_grace_period: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            tokens: vec![K3S_TOKEN.to_string()],
            pod_start_delay: Duration::from_millis(100),
            node_monitor_grace_period: Duration::from_secs(50),
        }
    }
}

/// The real control plane (etcd, kube-apiserver with Node,RBAC and NodeRestriction,
/// kube-controller-manager, kube-scheduler) and the K3s server's joins and cloud controller.
pub struct Cluster {
    // The K3s server (its kubelets) stops before the control plane goes away.
    pub k3s: K3sServer,
    pub plane: ControlPlane,
}

pub async fn start_cluster(opts: ClusterOptions) -> Cluster {
    let plane = ControlPlane::start(ControlPlaneOptions {
        node_monitor_grace_period: opts.node_monitor_grace_period,
        ..ControlPlaneOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("control plane: {e}"));
    let k3s = K3sServer::start(
        &plane,
        K3sOptions {
            tokens: opts.tokens,
            pod_start_delay: opts.pod_start_delay,
            ..K3sOptions::default()
        },
    )
    .expect("K3s server");
    Cluster { k3s, plane }
}

/// The kube API error's status code (0 if it is no API answer).
pub fn api_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        _ => 0,
    }
}

/// One `create pods/eviction` request in the API server's audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// `namespace/name`.
    pub pod: String,
    pub code: u16,
    pub user: String,
}

impl Cluster {
    /// The administrator's client (`system:masters`).
    pub fn admin(&self) -> kube::Client {
        self.plane.admin().clone()
    }

    /// Joins `node` through the K3s server as its k3s agent would (token, node password, the
    /// kubelet's client certificate `system:node:<node>`), with the labels the SmartScale agent
    /// sets, and waits until it is Ready and initialised by K3s's cloud controller (no
    /// uninitialized taint: the scheduler places pods there). Returns the kubelet kubeconfig.
    pub async fn join_node(
        &self,
        node: &str,
        password: &str,
        provider_id: &str,
        labels: &[(&str, &str)],
    ) -> Kubeconfig {
        let kubeconfig = self
            .k3s
            .join(JoinRequest {
                token: K3S_TOKEN.to_string(),
                node_name: node.to_string(),
                node_password: password.to_string(),
                provider_id: Some(provider_id.to_string()),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                taints: Vec::new(),
                internal_ip: None,
                cpu: Some("4".into()),
                memory: Some("8Gi".into()),
            })
            .await
            .unwrap_or_else(|e| panic!("joining {node}: {e}"));
        let admin = self.admin();
        eventually(
            &format!("node {node} Ready and initialised"),
            Duration::from_secs(20),
            || async {
                let n = Api::<Node>::all(admin.clone()).get_opt(node).await.ok()??;
                let initialised = !n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.key == UNINITIALIZED_TAINT));
                (smartscale_agent::k8s::is_ready(&n) && initialised).then_some(())
            },
        )
        .await;
        kubeconfig
    }

    /// Joins the worker instance's node, named `node`, with the labels the agent's join sets.
    pub async fn join_worker(&self, node: &str, instance: &ModelInstance) -> Kubeconfig {
        let mut labels = vec![
            (
                "node.kubernetes.io/instance-type",
                instance.instance_type.as_str(),
            ),
            (
                "topology.kubernetes.io/zone",
                instance.availability_zone.as_str(),
            ),
            ("smartscale.io/capacity-type", instance.market.as_str()),
        ];
        if let Some(asg) = &instance.asg_name {
            labels.push(("smartscale.io/node-group", asg.as_str()));
        }
        self.join_node(
            node,
            &instance.instance_id,
            &format!(
                "aws:///{}/{}",
                instance.availability_zone, instance.instance_id
            ),
            &labels,
        )
        .await
    }

    /// Names (`namespace/name`) of the pods bound to `node`, Running ones only if `running`.
    pub async fn pods_on(&self, node: &str, running: bool) -> Vec<String> {
        let list = Api::<Pod>::all(self.admin())
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .expect("list pods");
        let mut names: Vec<String> = list
            .items
            .iter()
            .filter(|p| !running || is_running(p))
            .map(pod_key)
            .collect();
        names.sort();
        names
    }

    pub async fn node_obj(&self, node: &str) -> Node {
        Api::<Node>::all(self.admin())
            .get(node)
            .await
            .unwrap_or_else(|e| panic!("reading node {node}: {e}"))
    }

    /// Every audited request so far.
    pub fn audit(&self) -> Vec<AuditEvent> {
        self.plane.audit().expect("the API server's audit log")
    }

    /// Every eviction request (`create pods/eviction`) so far, by anyone, oldest first.
    pub fn evictions(&self) -> Vec<Eviction> {
        self.audit()
            .iter()
            .filter(|e| e.is("create", "pods", "eviction"))
            .map(|e| Eviction {
                pod: e.object(),
                code: e.code(),
                user: e.user.username.clone(),
            })
            .collect()
    }

    /// (pod, status code) of every eviction `node`'s own identity (`system:node:<node>`, what
    /// the agent drains with) asked for, oldest first.
    pub fn eviction_log(&self, node: &str) -> Vec<(String, u16)> {
        let user = format!("system:node:{node}");
        self.evictions()
            .into_iter()
            .filter(|e| e.user == user)
            .map(|e| (e.pod, e.code))
            .collect()
    }

    /// Pod deletions not made by a kubelet (whose grace-0 delete ends every graceful deletion,
    /// an eviction's included): pods removed without an eviction. `namespace/name by user (agent)`.
    pub fn deletion_log(&self) -> Vec<String> {
        self.audit()
            .iter()
            .filter(|e| e.is("delete", "pods", "") && e.user_agent != kubelet::USER_AGENT)
            .map(|e| {
                format!(
                    "{} by {} ({}) -> {}",
                    e.object(),
                    e.user.username,
                    e.user_agent,
                    e.code()
                )
            })
            .collect()
    }
}

pub fn pod_key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

pub fn is_running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

pub fn is_pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("fixture decodes")
}

/// How the pods of a [`create_replicaset`] or [`create_deployment`] look.
#[derive(Debug, Clone, Default)]
pub struct PodTemplate<'a> {
    /// Pin the pods to this node (`nodeSelector` on `kubernetes.io/hostname`: the scheduler
    /// places them, so a replacement made while the node is cordoned stays Pending rather than
    /// being bound to it, as `nodeName` would).
    pub node: Option<&'a str>,
    pub empty_dir: bool,
    pub grace_seconds: i64,
    /// CPU request (`100m`), if any.
    pub cpu: Option<&'a str>,
}

fn pod_template(labels: &Value, t: &PodTemplate<'_>) -> Value {
    let mut container = json!({"name": "main", "image": "registry.example/app:1"});
    if let Some(cpu) = t.cpu {
        container["resources"] = json!({"requests": {"cpu": cpu}});
    }
    let mut spec = json!({
        "terminationGracePeriodSeconds": t.grace_seconds,
        "containers": [container],
    });
    if let Some(node) = t.node {
        spec["nodeSelector"] = json!({"kubernetes.io/hostname": node});
    }
    if t.empty_dir {
        spec["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
    }
    json!({"metadata": {"labels": labels}, "spec": spec})
}

/// A real ReplicaSet `name` in `default` (labels `app=<app>`, `rs=<name>`): the ReplicaSet
/// controller creates its pods and re-creates evicted ones.
pub async fn create_replicaset(
    admin: &kube::Client,
    name: &str,
    app: &str,
    replicas: i32,
    t: &PodTemplate<'_>,
) {
    let labels = json!({"app": app, "rs": name});
    let rs: ReplicaSet = typed(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": pod_template(&labels, t),
        }
    }));
    Api::<ReplicaSet>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &rs)
        .await
        .unwrap_or_else(|e| panic!("create replicaset {name}: {e}"));
}

/// A real Deployment `name` in `default` (pods labelled `app=<name>`).
pub async fn create_deployment(
    admin: &kube::Client,
    name: &str,
    replicas: i32,
    t: &PodTemplate<'_>,
) {
    let labels = json!({"app": name});
    let d: Deployment = typed(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": pod_template(&labels, t),
        }
    }));
    Api::<Deployment>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &d)
        .await
        .unwrap_or_else(|e| panic!("create deployment {name}: {e}"));
}

/// The pods in `default` that match `selector` (a label selector).
pub async fn pods_matching(admin: &kube::Client, selector: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(admin.clone(), "default")
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
}

/// Waits until `n` pods matching `selector` run on `node` and are Ready; their names.
pub async fn wait_running(
    admin: &kube::Client,
    selector: &str,
    node: &str,
    n: usize,
) -> Vec<String> {
    eventually(
        &format!("{n} pod(s) {selector} Running on {node}"),
        Duration::from_secs(30),
        || async {
            let mut names: Vec<String> = pods_matching(admin, selector)
                .await
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
                .filter(|p| is_running(p) && is_pod_ready(p))
                .map(pod_key)
                .collect();
            names.sort();
            (names.len() == n).then_some(names)
        },
    )
    .await
}

/// A static pod's mirror on `node`, as its kubelet creates it (the mirror annotations, owned by
/// the Node); created here by the administrator. The API cannot remove it; drains skip it.
pub async fn create_mirror_pod(admin: &kube::Client, node: &str) -> String {
    let uid = Api::<Node>::all(admin.clone())
        .get(node)
        .await
        .expect("node")
        .metadata
        .uid
        .expect("node uid");
    let name = format!("static-web-{node}");
    let pod: Pod = typed(json!({
        "metadata": {"name": name, "namespace": "kube-system",
                     "annotations": {"kubernetes.io/config.mirror": "hash", "kubernetes.io/config.source": "file",
                                     "kubernetes.io/config.hash": "hash"},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid, "controller": true}]},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": "registry.example/web:1"}]},
    }));
    Api::<Pod>::namespaced(admin.clone(), "kube-system")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create mirror pod");
    format!("kube-system/{name}")
}

/// A real DaemonSet in kube-system: the DaemonSet controller creates its pod on every node
/// (with the tolerations it gives DaemonSet pods, `node.kubernetes.io/unschedulable` among them).
pub async fn create_daemonset(admin: &kube::Client) {
    let ds: DaemonSet = typed(json!({
        "metadata": {"name": "node-exporter", "namespace": "kube-system"},
        "spec": {
            "selector": {"matchLabels": {"app": "node-exporter"}},
            "template": {"metadata": {"labels": {"app": "node-exporter"}},
                         "spec": {"containers": [{"name": "e", "image": "registry.example/ne:1"}]}}
        }
    }));
    Api::<DaemonSet>::namespaced(admin.clone(), "kube-system")
        .create(&PostParams::default(), &ds)
        .await
        .expect("create daemonset");
}

/// A budget `<app>-pdb` with `minAvailable` over `app=<app>`.
pub async fn create_pdb(admin: &kube::Client, app: &str, min_available: i32) {
    let pdb: PodDisruptionBudget = typed(json!({
        "metadata": {"name": format!("{app}-pdb")},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}}
    }));
    Api::<PodDisruptionBudget>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &pdb)
        .await
        .expect("create pdb");
}

/// Waits until the disruption controller (kube-controller-manager) has computed the budget's
/// status for its current generation with `healthy` pods and `allowed` disruptions.
pub async fn wait_pdb(admin: &kube::Client, app: &str, healthy: i32, allowed: i32) {
    let pdbs = Api::<PodDisruptionBudget>::namespaced(admin.clone(), "default");
    let name = format!("{app}-pdb");
    eventually(
        &format!("{name}: currentHealthy {healthy}, disruptionsAllowed {allowed}"),
        Duration::from_secs(30),
        || async {
            let pdb = pdbs.get(&name).await.ok()?;
            let s = pdb.status?;
            (s.observed_generation.is_some()
                && s.observed_generation == pdb.metadata.generation
                && s.current_healthy == healthy
                && s.disruptions_allowed == allowed)
                .then_some(())
        },
    )
    .await;
}

/// A budget that allows no disruption of `app` while it has one Ready pod, once the disruption
/// controller has computed it (`disruptionsAllowed: 0`).
pub async fn create_blocking_pdb(admin: &kube::Client, app: &str) {
    create_pdb(admin, app, 1).await;
    wait_pdb(admin, app, 1, 0).await;
}

pub async fn delete_pdb(admin: &kube::Client, app: &str) {
    Api::<PodDisruptionBudget>::namespaced(admin.clone(), "default")
        .delete(&format!("{app}-pdb"), &Default::default())
        .await
        .expect("delete pdb");
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

/// Forwards everything to the AWS model and counts actions by name (Auto Scaling's `Action`
/// form field, or the JSON protocols' `X-Amz-Target`: `GetSecretValue`): (requests, successful
/// answers), when each request arrived and how it ended, and when the first request that
/// succeeded arrived. It can refuse chosen actions (AccessDenied) and hold them (no answer until
/// released).
pub struct CountingProxy {
    pub url: String,
    counts: Arc<Mutex<BTreeMap<String, Counted>>>,
    denied: Arc<Mutex<HashMap<String, u32>>>,
    held: tokio::sync::watch::Sender<Vec<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Requests and successful answers of one action.
#[derive(Debug, Default, Clone)]
struct Counted {
    requests: u32,
    successes: u32,
    /// When the first request that AWS then answered with success reached the proxy: no later
    /// than the moment AWS acted on it.
    first_success_sent: Option<Instant>,
    /// Every request: when it reached the proxy, and whether it succeeded.
    log: Vec<(Instant, bool)>,
}

#[derive(Clone)]
struct ProxyState {
    target: String,
    http: reqwest::Client,
    counts: Arc<Mutex<BTreeMap<String, Counted>>>,
    /// Actions to answer with 403 AccessDenied instead of forwarding, and how many more times.
    denied: Arc<Mutex<HashMap<String, u32>>>,
    /// Actions whose requests wait (unanswered) until they are released.
    held: tokio::sync::watch::Receiver<Vec<String>>,
}

impl CountingProxy {
    pub async fn start(target: &str) -> CountingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let denied = Arc::new(Mutex::new(HashMap::new()));
        let (held, held_rx) = tokio::sync::watch::channel(Vec::new());
        let state = ProxyState {
            held: held_rx,
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
            held,
            task,
        }
    }

    /// Hold every request for `action` (no answer: the caller waits, or times out) until
    /// [`CountingProxy::release`].
    pub fn hold(&self, action: &str) {
        self.held.send_modify(|h| h.push(action.to_string()));
    }

    pub fn release(&self, action: &str) {
        self.held.send_modify(|h| h.retain(|a| a != action));
    }

    /// When each request for `action` reached the proxy, and whether it succeeded, oldest first.
    pub fn requests(&self, action: &str) -> Vec<(Instant, bool)> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(action)
            .map(|c| c.log.clone())
            .unwrap_or_default()
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
            .map(|c| (c.requests, c.successes))
            .unwrap_or_default()
    }

    /// When the first request for `action` that succeeded was sent (reached the proxy).
    pub fn first_success_sent(&self, action: &str) -> Option<Instant> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(action)
            .and_then(|c| c.first_success_sent)
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
    let sent = Instant::now();
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .map(str::to_string);
    let action = target.or_else(|| {
        url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v.into_owned())
    });
    if let Some(action) = &action {
        let mut held = state.held.clone();
        let _ = held.wait_for(|h| !h.contains(action)).await;
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
            {
                let mut counts = state.counts.lock().unwrap_or_else(|p| p.into_inner());
                let entry = counts.entry(action.clone()).or_default();
                entry.requests += 1;
                entry.log.push((sent, false));
            }
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
        entry.requests += 1;
        entry.log.push((sent, status.is_success()));
        if status.is_success() {
            entry.successes += 1;
            entry.first_success_sent.get_or_insert(sent);
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

/// A TCP gate in front of the API server: open, it passes connections through (TLS included: the
/// client still talks TLS to the API server, whose certificate names 127.0.0.1); closed, it cuts
/// the open ones and drops every new one at once (the API server is away, as in an outage).
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
    /// A gate to `target` (`https://127.0.0.1:PORT` or `http://…`), open; its `url` has the
    /// same scheme.
    pub async fn start(target: &str) -> Gate {
        let (scheme, address) = target.split_once("://").expect("target URL");
        let upstream: std::net::SocketAddr = address
            .trim_end_matches('/')
            .parse()
            .expect("target address");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gate");
        let url = format!("{scheme}://{}", listener.local_addr().expect("gate addr"));
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
