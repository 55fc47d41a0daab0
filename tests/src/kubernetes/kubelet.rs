//! A simulated kubelet: the one part of a node the test world plays itself. It talks to the real
//! API server with its own client certificate (`system:node:<name>`), so the Node authorizer and
//! NodeRestriction judge everything it does, and it does what a kubelet does that the product
//! can observe:
//!
//! - registers its Node (labels, taints, providerID, capacity) and reports Ready status;
//! - renews its Lease in `kube-node-lease`, the heartbeat the node lifecycle controller watches;
//! - runs the pods the real scheduler binds to it: Running and Ready after a start delay;
//! - finishes graceful deletions once the grace period is over (delete with grace 0);
//! - when its instance dies ([`Kubelet::stop`]) it goes silent: no heartbeat, no pod handling.
//!   The Node object stays; the real controller manager marks it NotReady, as on AWS.
//!
//! It does not run containers, probes, volumes or images.

use super::kubeconfig::Kubeconfig;
use crate::{Error, Result};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The taint a kubelet started with `--cloud-provider=external` registers with (K3s does, while
/// its cloud controller is enabled), removed once the cloud controller initialises the node.
pub const UNINITIALIZED_TAINT: &str = "node.cloudprovider.kubernetes.io/uninitialized";
/// What the simulated kubelet reports as its version (K3s's format).
pub const KUBELET_VERSION: &str = "v1.34.4+k3s1";
/// The user agent of its requests, so the audit log tells the kubelet from the agent (both use
/// the node's identity).
pub const USER_AGENT: &str = "kubelet/v1.34.4 (linux/amd64) smartscale-testworld";

/// What a node looks like and how its kubelet behaves.
#[derive(Debug, Clone)]
pub struct KubeletOptions {
    pub name: String,
    pub provider_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `key[=value]:Effect`, as `--register-with-taints` takes them.
    pub taints: Vec<String>,
    /// Register with the uninitialized taint (an external cloud provider will initialise it).
    pub external_cloud_provider: bool,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub internal_ip: String,
    /// Time from a pod being bound to it being Running and Ready.
    pub pod_start_delay: Duration,
    /// How often the Lease is renewed (kubelet default 10 s: a quarter of its 40 s duration).
    pub lease_renew_interval: Duration,
}

impl KubeletOptions {
    pub fn new(name: &str) -> Self {
        KubeletOptions {
            name: name.to_string(),
            provider_id: None,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            external_cloud_provider: true,
            cpu: "2".into(),
            memory: "4Gi".into(),
            pods: 110,
            internal_ip: "10.0.1.10".into(),
            pod_start_delay: Duration::from_millis(100),
            lease_renew_interval: Duration::from_secs(2),
        }
    }
}

/// A running simulated kubelet; stops (silently, like a dead machine) when dropped.
pub struct Kubelet {
    pub name: String,
    client: kube::Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet").field("name", &self.name).finish()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop();
    }
}

fn kube_err(what: String) -> impl FnOnce(kube::Error) -> Error {
    move |e| Error::Invalid(format!("kubelet: {what}: {e}"))
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn parse_taint(text: &str) -> Result<serde_json::Value> {
    let (kv, effect) = text
        .rsplit_once(':')
        .ok_or_else(|| Error::Invalid(format!("taint {text:?} has no :Effect")))?;
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    Ok(json!({"key": key, "value": value, "effect": effect}))
}

/// A kube client for a kubelet identity, with the kubelet's user agent.
async fn client(kubeconfig: &Kubeconfig) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::from_yaml(&kubeconfig.to_yaml())
        .map_err(|e| Error::Invalid(format!("kubelet kubeconfig: {e}")))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| Error::Invalid(format!("kubelet kubeconfig: {e}")))?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    config.read_timeout = Some(Duration::from_secs(30));
    // Its loops retry on their own period, as a kubelet's do; kube's backoff (minutes) is off.
    config.default_retry = false;
    kube::Client::try_from(config).map_err(|e| Error::Invalid(format!("kubelet client: {e}")))
}

impl Kubelet {
    /// Registers the Node with the identity in `kubeconfig` and starts the heartbeat and the pod
    /// loop. Registration errors (NodeRestriction refusing a label, say) are returned as the API
    /// server gave them. An existing Node of the same name is taken over, as a kubelet does.
    pub async fn start(kubeconfig: &Kubeconfig, opts: KubeletOptions) -> Result<Kubelet> {
        let client = client(kubeconfig).await?;
        let nodes: Api<Node> = Api::all(client.clone());
        let mut labels = opts.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), opts.name.clone());
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert("kubernetes.io/arch".into(), "amd64".into());
        let mut taints = opts
            .taints
            .iter()
            .map(|t| parse_taint(t))
            .collect::<Result<Vec<_>>>()?;
        if opts.external_cloud_provider {
            taints
                .push(json!({"key": UNINITIALIZED_TAINT, "value": "true", "effect": "NoSchedule"}));
        }
        let mut spec = json!({"taints": taints});
        if let Some(id) = &opts.provider_id {
            spec["providerID"] = json!(id);
        }
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": opts.name,
                "labels": labels,
                "annotations": {
                    "k3s.io/internal-ip": opts.internal_ip,
                    "k3s.io/hostname": opts.name,
                    "node.alpha.kubernetes.io/ttl": "0",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                },
            },
            "spec": spec,
        }))
        .map_err(|e| Error::Invalid(format!("node JSON: {e}")))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::info!(node = %opts.name, "node exists already; the kubelet takes it over");
            }
            Err(e) => return Err(kube_err(format!("registering node {}", opts.name))(e)),
        }
        report_status(&client, &opts).await?;
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = vec![
            tokio::spawn(heartbeat(client.clone(), opts.clone(), stopped.clone())),
            tokio::spawn(run_pods(client.clone(), opts.clone(), stopped.clone())),
        ];
        Ok(Kubelet {
            name: opts.name,
            client,
            tasks,
            stopped,
        })
    }

    /// The instance is gone: no more heartbeats or pod handling. Nothing is deleted.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Its heartbeat and pod loops have ended (an aborted task ends at its next `.await`).
    pub fn is_finished(&self) -> bool {
        self.tasks.iter().all(|t| t.is_finished())
    }

    /// This kubelet's client (its node identity).
    pub fn client(&self) -> &kube::Client {
        &self.client
    }
}

/// Patches `nodes/status`: capacity, allocatable, conditions, addresses and node info.
async fn report_status(client: &kube::Client, opts: &KubeletOptions) -> Result<()> {
    let t = now();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": t, "lastTransitionTime": t})
    };
    let resources = json!({
        "cpu": opts.cpu, "memory": opts.memory, "pods": opts.pods.to_string(),
        "ephemeral-storage": "20Gi",
    });
    let status = json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": opts.internal_ip},
            {"type": "Hostname", "address": opts.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "6.8.0-aws",
            "osImage": "Ubuntu 24.04 LTS", "containerRuntimeVersion": "containerd://2.0.5-k3s1",
            "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": "amd64",
        },
    }});
    Api::<Node>::all(client.clone())
        .patch_status(
            &opts.name,
            &PatchParams::default(),
            &Patch::Strategic(&status),
        )
        .await
        .map_err(kube_err(format!(
            "reporting the status of node {}",
            opts.name
        )))?;
    Ok(())
}

/// Renews the node Lease, and re-reports status every minute (the kubelet's
/// nodeStatusReportFrequency is 5 minutes; faster keeps Ready fresh after a restart of ours).
async fn heartbeat(
    client: kube::Client,
    opts: KubeletOptions,
    stopped: Arc<std::sync::atomic::AtomicBool>,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut node_uid: Option<String> = None;
    let mut last_status = std::time::Instant::now();
    loop {
        if stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if node_uid.is_none() {
            node_uid = Api::<Node>::all(client.clone())
                .get_opt(&opts.name)
                .await
                .ok()
                .flatten()
                .and_then(|n| n.metadata.uid);
        }
        let mut lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": opts.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": opts.name, "leaseDurationSeconds": 40, "renewTime": now()},
        });
        if let Some(uid) = &node_uid {
            lease["metadata"]["ownerReferences"] = json!([{
                "apiVersion": "v1", "kind": "Node", "name": opts.name, "uid": uid,
            }]);
        }
        let params = PatchParams::apply("kubelet").force();
        if let Err(e) = leases
            .patch(&opts.name, &params, &Patch::Apply(&lease))
            .await
        {
            tracing::debug!(node = %opts.name, error = %e, "kubelet: lease renewal failed");
        }
        if last_status.elapsed() >= Duration::from_secs(60) {
            if let Err(e) = report_status(&client, &opts).await {
                tracing::debug!(node = %opts.name, error = %e, "kubelet: status report failed");
            }
            last_status = std::time::Instant::now();
        }
        tokio::time::sleep(opts.lease_renew_interval).await;
    }
}

/// Watches the pods bound to this node: starts new ones, finishes graceful deletions.
async fn run_pods(
    client: kube::Client,
    opts: KubeletOptions,
    stopped: Arc<std::sync::atomic::AtomicBool>,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", opts.name));
    let started: Arc<Mutex<HashSet<String>>> = Arc::default();
    let finishing: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut next_ip: u32 = 2;
    let mut events = std::pin::pin!(watcher(pods, config));
    while let Some(event) = events.next().await {
        if stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let pods = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => vec![pod],
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(node = %opts.name, error = %e, "kubelet: pod watch error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for pod in pods {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                if lock(&finishing).insert(uid.clone()) {
                    tokio::spawn(finish_deletion(client.clone(), pod, stopped.clone()));
                }
            } else if (phase.is_empty() || phase == "Pending") && lock(&started).insert(uid) {
                next_ip += 1;
                let ip = pod_ip(&opts, next_ip, &pod);
                tokio::spawn(start_pod(
                    client.clone(),
                    pod,
                    opts.clone(),
                    ip,
                    stopped.clone(),
                ));
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pod_ip(opts: &KubeletOptions, n: u32, pod: &Pod) -> String {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return opts.internal_ip.clone();
    }
    // A stable /24 per node from its name (kube-controller-manager's podCIDR would do; this is
    // only for display).
    let octet = opts
        .name
        .bytes()
        .fold(0u32, |a, b| (a * 31 + u32::from(b)) % 250);
    format!("10.42.{}.{}", octet, n % 250 + 2)
}

/// After the start delay: Running, every container started and ready, the pod Ready.
async fn start_pod(
    client: kube::Client,
    pod: Pod,
    opts: KubeletOptions,
    ip: String,
    stopped: Arc<std::sync::atomic::AtomicBool>,
) {
    tokio::time::sleep(opts.pod_start_delay).await;
    if stopped.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let (Some(name), Some(ns)) = (pod.metadata.name.clone(), pod.metadata.namespace.clone()) else {
        return;
    };
    let t = now();
    let containers: Vec<_> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "name": c.name, "image": c.image.unwrap_or_default(), "imageID": "",
                "containerID": format!("containerd://{:064x}", (u128::from(name.len() as u32) << 64) + i as u128),
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": t}},
            })
        })
        .collect();
    let condition = |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": t});
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": opts.internal_ip, "hostIPs": [{"ip": opts.internal_ip}],
        "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": t,
        "conditions": [
            condition("PodReadyToStartContainers"), condition("Initialized"),
            condition("ContainersReady"), condition("Ready"), condition("PodScheduled"),
        ],
        "containerStatuses": containers,
    }});
    let api: Api<Pod> = Api::namespaced(client, &ns);
    // Conflicts and races with deletion are normal; the watch brings the pod back if needed.
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        tracing::debug!(pod = %name, error = %e, "kubelet: could not mark the pod Running");
    }
}

/// Waits out the grace period (until `deletionTimestamp`), then deletes the pod with grace 0 and
/// its UID as precondition: the last step of a graceful deletion, which only the kubelet takes.
async fn finish_deletion(
    client: kube::Client,
    pod: Pod,
    stopped: Arc<std::sync::atomic::AtomicBool>,
) {
    let (Some(name), Some(ns), Some(uid)) = (
        pod.metadata.name.clone(),
        pod.metadata.namespace.clone(),
        pod.metadata.uid.clone(),
    ) else {
        return;
    };
    if let Some(at) = &pod.metadata.deletion_timestamp {
        let wait = at.0.duration_since(jiff::Timestamp::now());
        let secs = wait.as_secs_f64();
        if secs > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(secs.min(3600.0))).await;
        }
    }
    if stopped.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    if let Err(e) = Api::<Pod>::namespaced(client, &ns)
        .delete(&name, &params)
        .await
    {
        tracing::debug!(pod = %name, error = %e, "kubelet: could not finish the deletion");
    }
}
