//! The agent's view of Kubernetes: a client from a kubeconfig (the node's own kubelet identity),
//! and what it does to its own Node object: read readiness, cordon, add the draining taint.
//!
//! Rights used with the kubelet identity (Node authorizer + NodeRestriction): `get` of its own
//! Node, `patch` of its own Node's `spec.unschedulable` and annotations. NodeRestriction forbids
//! a kubelet to change its own taints, so the taint needs a second identity
//! (`taint_kubeconfig`) or is skipped; see agent/README.md.

use crate::{Error, Result};
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The taint the agent adds while draining (docs/interfaces.md).
pub const DRAINING_TAINT: &str = "smartscale.io/draining";
/// Annotations the agent sets on its Node when it cordons it: why, and since when.
pub const DRAIN_REASON_ANNOTATION: &str = "smartscale.io/drain-reason";
pub const DRAIN_STARTED_ANNOTATION: &str = "smartscale.io/drain-started-at";

/// A client for the kubeconfig at `path`. Requests time out after 10 s; kube's own retry of
/// 429s is off, because the drain retries evictions itself within its deadline.
pub async fn client(path: &Path) -> Result<kube::Client> {
    let bad = |message: String| Error::Kubeconfig {
        path: path.display().to_string(),
        message,
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    config.default_retry = false;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(10));
    config.reset_reader_on_write = true;
    kube::Client::try_from(config).map_err(|e| bad(e.to_string()))
}

/// The node's kube client, built from its kubeconfig when first needed and kept: the `run` daemon
/// starts before k3s has written the kubelet kubeconfig (at boot) and goes on while the API server
/// is away (a restart of the single K3s server), so neither may stop it. Building the client only
/// reads the kubeconfig; the API server is first asked when the client is used.
pub struct KubeClient {
    path: PathBuf,
    client: Mutex<Option<kube::Client>>,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("path", &self.path)
            .field("built", &self.cached().is_some())
            .finish()
    }
}

impl KubeClient {
    pub fn new(path: &Path) -> Self {
        KubeClient {
            path: path.to_path_buf(),
            client: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The client: the one built before, or one built now from the kubeconfig (an error if it
    /// cannot be read yet).
    pub async fn get(&self) -> Result<kube::Client> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let built = client(&self.path).await?;
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        Ok(slot.get_or_insert(built).clone())
    }

    /// The client if it has been built.
    pub fn cached(&self) -> Option<kube::Client> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// [`KubeClient::get`], tried again every second until `deadline()` (read at each try: it may
    /// be brought forward meanwhile); the last error then.
    pub async fn get_until(&self, deadline: impl Fn() -> Instant) -> Result<kube::Client> {
        let mut logged = false;
        loop {
            match self.get().await {
                Ok(c) => {
                    if logged {
                        tracing::info!(path = %self.path.display(), "kubeconfig read; the node's kube client is ready");
                    }
                    return Ok(c);
                }
                Err(e) => {
                    let now = Instant::now();
                    if now >= deadline() {
                        return Err(e);
                    }
                    if !logged {
                        tracing::warn!(error = %e, "no kube client for the node yet; trying again every second until the drain deadline");
                        logged = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1).min(deadline() - now)).await;
                }
            }
        }
    }
}

/// The status code of an API error answer, if the error is one.
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// A kube error in one line with its cause chain (connection refused, timed out).
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => smartscale_common::error_chain(other),
    }
}

/// The Node, `None` if it does not exist (yet).
pub async fn get_node(client: &kube::Client, name: &str) -> Result<Option<Node>> {
    Api::<Node>::all(client.clone())
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("reading node {name}"), e))
}

pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn is_cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

pub fn has_draining_taint(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == DRAINING_TAINT))
}

/// Sets `spec.unschedulable` and the drain annotations (a merge patch: idempotent).
pub async fn cordon(client: &kube::Client, name: &str, reason: &str) -> Result<()> {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let patch = json!({
        "metadata": {"annotations": {DRAIN_REASON_ANNOTATION: reason, DRAIN_STARTED_ANNOTATION: now}},
        "spec": {"unschedulable": true},
    });
    Api::<Node>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("cordoning node {name}"), e))?;
    Ok(())
}

/// Undoes what an earlier drain of this node left (cordon, drain annotations, and the draining
/// taint where this identity may change taints; NodeRestriction forbids a kubelet to): an
/// instance the group returned to its warm pool comes back as the same Node. Returns whether
/// there was anything to undo. A node cordoned by someone else (no drain annotation) is left
/// alone.
pub async fn clear_earlier_drain(client: &kube::Client, node: &Node) -> Result<bool> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let ours = node
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(DRAIN_REASON_ANNOTATION));
    if !ours {
        return Ok(false);
    }
    let nodes = Api::<Node>::all(client.clone());
    let patch = json!({
        "metadata": {"annotations": {DRAIN_REASON_ANNOTATION: null, DRAIN_STARTED_ANNOTATION: null}},
        "spec": {"unschedulable": false},
    });
    nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("uncordoning node {name}"), e))?;
    if has_draining_taint(node) {
        let taints: Vec<_> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.key != DRAINING_TAINT)
            .collect();
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": taints},
        });
        if let Err(e) = nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(node = %name, error = %e, "cannot remove the draining taint (`kubectl taint node {name} {DRAINING_TAINT}-`)");
        }
    }
    Ok(true)
}

/// How adding the draining taint went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaintOutcome {
    Added,
    AlreadyThere,
    /// The identity may not change the node's taints (NodeRestriction for a kubelet).
    Forbidden(String),
}

/// Adds `smartscale.io/draining=true:NoSchedule`, keeping the other taints. The whole list is
/// replaced under the read resourceVersion, so a concurrent change makes it retry, not clobber.
pub async fn add_draining_taint(client: &kube::Client, name: &str) -> Result<TaintOutcome> {
    let nodes = Api::<Node>::all(client.clone());
    for _ in 0..5 {
        let node = nodes
            .get(name)
            .await
            .map_err(|e| Error::kube(format!("reading node {name}"), e))?;
        if has_draining_taint(&node) {
            return Ok(TaintOutcome::AlreadyThere);
        }
        let mut taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        taints.push(Taint {
            key: DRAINING_TAINT.into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        });
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": taints},
        });
        match nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(TaintOutcome::Added),
            Err(e) if status_code(&e) == Some(409) => continue,
            Err(e) if status_code(&e) == Some(403) => {
                return Ok(TaintOutcome::Forbidden(describe(&e)));
            }
            Err(e) => return Err(Error::kube(format!("tainting node {name}"), e)),
        }
    }
    Err(Error::Invalid(format!(
        "node {name} kept changing while the draining taint was being added; gave up after 5 tries"
    )))
}
