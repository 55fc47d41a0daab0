//! What a K3s server does beyond the upstream control plane, as far as SmartScale can see it:
//!
//! - **Join**: an agent presents the cluster token and its node password; the server checks
//!   both, signs the node's kubelet client certificate and hands back its kubeconfig
//!   ([`K3sServer::join`], also over HTTP for the fake k3s binary, `POST /v1-k3s/join`).
//! - **Node passwords**: the first join of a name stores a hash in the Secret
//!   `kube-system/<node>.node-password.k3s`; a later join of the same name with another password
//!   is refused ("Node password rejected, ..."), so a new machine cannot take the name of a Node
//!   that still exists. The Secret is removed when its Node is deleted.
//! - **Cloud controller** (on by default, as in K3s): initialises new nodes by removing the
//!   `node.cloudprovider.kubernetes.io/uninitialized` taint, setting `providerID` to
//!   `k3s://<name>` when the kubelet gave none, and labelling the instance type `k3s` (K3s's
//!   cloud provider reports that for every node). It never deletes a Node: K3s's cloud provider
//!   says every instance exists.

use super::kubeconfig::{Credential, Kubeconfig};
use super::kubelet::{Kubelet, KubeletOptions, UNINITIALIZED_TAINT};
use super::pki::Pki;
use crate::{Error, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What K3s answers when a node password does not match (k3s pkg/nodepassword).
pub const NODE_PASSWORD_REJECTED: &str = "Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' may not match server node-passwd entry, try enabling a unique node name with the --with-node-id flag";

/// A join request: what a k3s agent sends, plus what its kubelet registers with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    pub node_name: String,
    pub node_password: String,
    #[serde(default)]
    pub provider_id: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<String>,
    #[serde(default)]
    pub internal_ip: Option<String>,
    /// Capacity the kubelet reports (the instance type's size); defaults 2 CPU / 4 GiB.
    #[serde(default)]
    pub cpu: Option<String>,
    #[serde(default)]
    pub memory: Option<String>,
}

/// Why a join failed, as the k3s agent would log it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinRefused {
    Unauthorized,
    NodePasswordRejected,
    Registration(String),
}

impl std::fmt::Display for JoinRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinRefused::Unauthorized => {
                f.write_str("401 Unauthorized: the join token is not valid")
            }
            JoinRefused::NodePasswordRejected => f.write_str(NODE_PASSWORD_REJECTED),
            JoinRefused::Registration(e) => write!(f, "the kubelet could not register: {e}"),
        }
    }
}

/// Settings of the simulated K3s server.
#[derive(Debug, Clone)]
pub struct K3sOptions {
    /// Tokens a worker may join with (K3s's agent token; the server token works too).
    pub tokens: Vec<String>,
    pub cloud_controller: bool,
    pub pod_start_delay: Duration,
    pub lease_renew_interval: Duration,
}

impl Default for K3sOptions {
    fn default() -> Self {
        K3sOptions {
            tokens: vec!["K10world::node:agent-token".into()],
            cloud_controller: true,
            pod_start_delay: Duration::from_millis(100),
            lease_renew_interval: Duration::from_secs(2),
        }
    }
}

struct Inner {
    url: String,
    server_ca_pem: String,
    pki: Pki,
    admin: kube::Client,
    opts: K3sOptions,
    kubelets: Mutex<BTreeMap<String, Arc<Kubelet>>>,
}

/// The K3s server's own behaviour on top of a [`super::ControlPlane`]; cheap to clone.
#[derive(Clone)]
pub struct K3sServer {
    inner: Arc<Inner>,
    tasks: Arc<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for K3sServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K3sServer")
            .field("url", &self.inner.url)
            .finish()
    }
}

fn secret_name(node: &str) -> String {
    format!("{node}.node-password.k3s")
}

fn hash(password: &str) -> String {
    // K3s stores a salted scrypt hash; what matters here is only that equal passwords match.
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    password.hash(&mut h);
    format!("{:016x}", h.finish())
}

impl K3sServer {
    /// Starts the cloud controller and the node-password cleanup against `plane`.
    pub fn start(plane: &super::ControlPlane, opts: K3sOptions) -> Result<K3sServer> {
        let inner = Arc::new(Inner {
            url: plane.url.clone(),
            server_ca_pem: plane.pki.server_ca_pem.clone(),
            pki: plane.pki.clone(),
            admin: plane.admin().clone(),
            opts,
            kubelets: Mutex::new(BTreeMap::new()),
        });
        let mut tasks = vec![tokio::spawn(remove_passwords_of_deleted_nodes(
            inner.admin.clone(),
        ))];
        if inner.opts.cloud_controller {
            tasks.push(tokio::spawn(cloud_controller(inner.admin.clone())));
        }
        Ok(K3sServer {
            inner,
            tasks: Arc::new(tasks),
        })
    }

    /// Joins a node: token and node password checked, kubelet certificate signed, kubelet
    /// started. Returns the kubelet's kubeconfig (what k3s writes to kubelet.kubeconfig).
    pub async fn join(&self, req: JoinRequest) -> std::result::Result<Kubeconfig, JoinRefused> {
        if !self.inner.opts.tokens.iter().any(|t| t == &req.token) {
            return Err(JoinRefused::Unauthorized);
        }
        self.check_node_password(&req.node_name, &req.node_password)
            .await
            .map_err(|e| match e {
                Error::Invalid(m) if m == NODE_PASSWORD_REJECTED => {
                    JoinRefused::NodePasswordRejected
                }
                other => JoinRefused::Registration(other.to_string()),
            })?;
        let cert = self
            .inner
            .pki
            .node_cert(&req.node_name)
            .map_err(|e| JoinRefused::Registration(e.to_string()))?;
        let kubeconfig = Kubeconfig::new(
            &self.inner.url,
            &self.inner.server_ca_pem,
            Credential::Certificate(cert),
        );
        let mut opts = KubeletOptions::new(&req.node_name);
        opts.provider_id = req.provider_id.clone();
        opts.labels = req.labels.clone();
        opts.taints = req.taints.clone();
        opts.external_cloud_provider = self.inner.opts.cloud_controller;
        opts.pod_start_delay = self.inner.opts.pod_start_delay;
        opts.lease_renew_interval = self.inner.opts.lease_renew_interval;
        if let Some(ip) = &req.internal_ip {
            opts.internal_ip = ip.clone();
        }
        if let Some(cpu) = &req.cpu {
            opts.cpu = cpu.clone();
        }
        if let Some(memory) = &req.memory {
            opts.memory = memory.clone();
        }
        let kubelet = Kubelet::start(&kubeconfig, opts)
            .await
            .map_err(|e| JoinRefused::Registration(e.to_string()))?;
        // A kubelet of the same name still running (a restart of k3s) is replaced.
        if let Some(old) =
            lock(&self.inner.kubelets).insert(req.node_name.clone(), Arc::new(kubelet))
        {
            old.stop();
        }
        Ok(kubeconfig)
    }

    async fn check_node_password(&self, node: &str, password: &str) -> Result<()> {
        let secrets: Api<Secret> = Api::namespaced(self.inner.admin.clone(), "kube-system");
        let name = secret_name(node);
        let want = hash(password);
        match secrets.get_opt(&name).await {
            Ok(Some(secret)) => {
                let stored = secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get("hash").cloned())
                    .or_else(|| {
                        secret
                            .data
                            .as_ref()
                            .and_then(|d| d.get("hash"))
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    })
                    .unwrap_or_default();
                if stored == want {
                    Ok(())
                } else {
                    Err(Error::Invalid(NODE_PASSWORD_REJECTED.into()))
                }
            }
            Ok(None) => {
                let secret: Secret = serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "kube-system",
                                 "labels": {"k3s.io/node-password": "true"}},
                    "type": "k3s.cattle.io/node-password",
                    "stringData": {"hash": want},
                }))
                .map_err(|e| Error::Invalid(format!("node password secret: {e}")))?;
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .map_err(|e| Error::Invalid(format!("storing the node password: {e}")))?;
                Ok(())
            }
            Err(e) => Err(Error::Invalid(format!("reading the node password: {e}"))),
        }
    }

    /// The running kubelet of `node`, if it joined through this server.
    pub fn kubelet(&self, node: &str) -> Option<Arc<Kubelet>> {
        lock(&self.inner.kubelets).get(node).cloned()
    }

    /// Stops the cloud controller, the password cleanup and every kubelet, and waits until each
    /// has ended. A task that never reaches an `.await` cannot be aborted and would keep the
    /// runtime from shutting down; this says so within `timeout` instead.
    pub async fn stop(&self, timeout: Duration) -> Result<()> {
        for t in self.tasks.iter() {
            t.abort();
        }
        let kubelets: Vec<_> = lock(&self.inner.kubelets).values().cloned().collect();
        for k in &kubelets {
            k.stop();
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut running: Vec<String> = kubelets
                .iter()
                .filter(|k| !k.is_finished())
                .map(|k| format!("kubelet {}", k.name()))
                .collect();
            if self.tasks.iter().any(|t| !t.is_finished()) {
                running.push("the K3s server's node watchers".into());
            }
            if running.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Invalid(format!(
                    "{} still running {timeout:?} after being stopped (a loop that never awaits?)",
                    running.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Names of nodes whose kubelet runs (not stopped).
    pub fn running_kubelets(&self) -> Vec<String> {
        lock(&self.inner.kubelets)
            .iter()
            .filter(|(_, k)| !k.is_stopped())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The machine behind `node` is gone: its kubelet goes silent (the Node stays).
    pub fn stop_kubelet(&self, node: &str) -> bool {
        match lock(&self.inner.kubelets).get(node) {
            Some(k) if !k.is_stopped() => {
                k.stop();
                true
            }
            _ => false,
        }
    }

    /// An HTTP endpoint for the fake k3s binary (`smartscale-testworld k3s-agent`): `POST
    /// /v1-k3s/join` with a [`JoinRequest`] → 200 with the kubelet kubeconfig as the body,
    /// 401 for a bad token, 403 for a rejected node password, 500 for a failed registration.
    pub async fn serve(&self) -> Result<(String, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("binding the K3s supervisor endpoint", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the K3s supervisor address", e))?;
        let server = self.clone();
        let router = axum::Router::new()
            .route("/v1-k3s/join", axum::routing::post(join_handler))
            .with_state(server);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok((format!("http://{addr}"), task))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for k in lock(&self.kubelets).values() {
            k.stop();
        }
    }
}

impl Drop for K3sServer {
    fn drop(&mut self) {
        if Arc::strong_count(&self.tasks) == 1 {
            for t in self.tasks.iter() {
                t.abort();
            }
        }
    }
}

async fn join_handler(
    axum::extract::State(server): axum::extract::State<K3sServer>,
    axum::Json(req): axum::Json<JoinRequest>,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    match server.join(req).await {
        Ok(kubeconfig) => (StatusCode::OK, kubeconfig.to_yaml()),
        Err(e @ JoinRefused::Unauthorized) => (StatusCode::UNAUTHORIZED, e.to_string()),
        Err(e @ JoinRefused::NodePasswordRejected) => (StatusCode::FORBIDDEN, e.to_string()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// K3s's cloud controller: initialise every node that carries the uninitialized taint.
async fn cloud_controller(admin: kube::Client) {
    let nodes: Api<Node> = Api::all(admin);
    let mut events = std::pin::pin!(watcher(nodes.clone(), watcher::Config::default()));
    while let Some(event) = events.next().await {
        let node = match event {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => n,
            Ok(_) => continue,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if !taints.iter().any(|t| t.key == UNINITIALIZED_TAINT) {
            continue;
        }
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        let kept: Vec<_> = taints
            .into_iter()
            .filter(|t| t.key != UNINITIALIZED_TAINT)
            .collect();
        let mut patch = json!({
            "metadata": {
                "resourceVersion": node.metadata.resource_version,
                "labels": {
                    "node.kubernetes.io/instance-type": "k3s",
                    "beta.kubernetes.io/instance-type": "k3s",
                },
            },
            "spec": {"taints": kept},
        });
        if node
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.as_ref())
            .is_none()
        {
            patch["spec"]["providerID"] = json!(format!("k3s://{name}"));
        }
        if let Err(e) = nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(node = %name, error = %e, "k3s cloud controller: initialising failed; retried on the next event");
        }
    }
}

/// K3s removes a node's password Secret when the Node is deleted, so the name can join again.
async fn remove_passwords_of_deleted_nodes(admin: kube::Client) {
    let nodes: Api<Node> = Api::all(admin.clone());
    let secrets: Api<Secret> = Api::namespaced(admin, "kube-system");
    let mut events = std::pin::pin!(watcher(nodes, watcher::Config::default()));
    while let Some(event) = events.next().await {
        let node = match event {
            Ok(watcher::Event::Delete(node)) => node,
            Ok(_) => continue,
            // Wait before the watcher tries again: once the API server is gone its errors come
            // back at once, and a loop that never yields can be neither aborted nor outlived
            // (the runtime's shutdown waits for it: a test hung an hour after it passed).
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if let Some(name) = node.metadata.name
            && let Err(e) = secrets
                .delete(&secret_name(&name), &DeleteParams::default())
                .await
        {
            tracing::debug!(node = %name, error = %e, "k3s: removing the node password failed");
        }
    }
}
