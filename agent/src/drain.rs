//! Draining the agent's own node: cordon, taint, then evict its pods through the Eviction API
//! (so PodDisruptionBudgets are honoured) with bounded concurrency, and wait until they are gone.
//!
//! - Pods are listed with `fieldSelector=spec.nodeName=<node>`, the only pod list a kubelet
//!   identity may read. DaemonSet pods (their controller would recreate them) and mirror pods
//!   (static pods; the API cannot remove them) are left alone. Pods with emptyDir volumes and pods
//!   without a controller are evicted: the node is going away, their data with it.
//! - A refused eviction (429 from a PodDisruptionBudget, or any error) is retried with
//!   exponential backoff per pod, bounded by the deadline; other pods are not held up by it.
//! - A pod whose grace period would outlast the deadline is evicted with the time that is left
//!   (at least 1 s); one round of evictions is sent even when no time is left at all.
//! - The drain ends when no evictable or terminating pod is left, or at the deadline, with the
//!   list of pods still there and why. The deadline is a [`Deadline`]: a later notice (a spot
//!   interruption during an ASG termination) may bring it forward while the drain runs.

use crate::k8s::{self, TaintOutcome};
use crate::metrics::Metrics;
use crate::{Error, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Preconditions};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often the pod list is read again while waiting.
pub const DEFAULT_POLL: Duration = Duration::from_millis(250);
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct DrainOptions {
    pub concurrency: usize,
    pub poll: Duration,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            concurrency: 10,
            poll: DEFAULT_POLL,
        }
    }
}

/// A drain deadline that a later, more urgent notice may bring forward (never push back). Read
/// at every step of the drain, so a change applies within one poll.
#[derive(Debug)]
pub struct Deadline(std::sync::Mutex<Instant>);

impl Deadline {
    pub fn new(at: Instant) -> Self {
        Deadline(std::sync::Mutex::new(at))
    }

    pub fn get(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the deadline to `at` if that is sooner; whether it moved.
    pub fn bring_forward(&self, at: Instant) -> bool {
        let mut current = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if at < *current {
            *current = at;
            true
        } else {
            false
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// No evictable pod is left on the node.
    pub complete: bool,
    /// Evictions the API server accepted.
    pub evicted: usize,
    /// `namespace/name (why)` of every pod left at the deadline.
    pub left: Vec<String>,
    pub took: Duration,
}

/// Cordon and taint, retried until `deadline`. The taint is best effort: with the kubelet
/// identity NodeRestriction refuses it, and cordon (`node.kubernetes.io/unschedulable`) keeps
/// new pods away just the same.
#[tracing::instrument(skip_all, fields(node))]
pub async fn cordon_and_taint(
    node_client: &kube::Client,
    taint_client: Option<&kube::Client>,
    node: &str,
    reason: &str,
    deadline: Instant,
) -> Result<()> {
    cordon_and_taint_until(
        node_client,
        taint_client,
        node,
        reason,
        &Deadline::new(deadline),
    )
    .await
}

/// [`cordon_and_taint`] with a deadline that may be brought forward meanwhile.
pub async fn cordon_and_taint_until(
    node_client: &kube::Client,
    taint_client: Option<&kube::Client>,
    node: &str,
    reason: &str,
    deadline: &Deadline,
) -> Result<()> {
    retry_until(deadline, "cordon", || {
        k8s::cordon(node_client, node, reason)
    })
    .await?;
    tracing::info!(node, "node cordoned");
    let client = taint_client.unwrap_or(node_client);
    match retry_until(deadline, "taint", || k8s::add_draining_taint(client, node)).await {
        Ok(TaintOutcome::Added) => {
            tracing::info!(node, taint = k8s::DRAINING_TAINT, "node tainted")
        }
        Ok(TaintOutcome::AlreadyThere) => {}
        Ok(TaintOutcome::Forbidden(why)) => tracing::info!(
            node,
            %why,
            "this identity may not change the node's taints (NodeRestriction); the cordon keeps new pods away (set taint_kubeconfig to add {})",
            k8s::DRAINING_TAINT
        ),
        // The cordon is what matters; a taint failure must not stop the drain.
        Err(e) => {
            tracing::warn!(node, error = %e, "could not add the draining taint; draining anyway")
        }
    }
    Ok(())
}

async fn retry_until<T, F, Fut>(deadline: &Deadline, what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tries = 0u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_permanent() || Instant::now() + backoff(tries) >= deadline.get() => {
                return Err(e);
            }
            Err(e) => {
                if tries == 0 {
                    tracing::warn!(error = %e, "{what} failed; retrying until the deadline");
                }
                tokio::time::sleep(backoff(tries)).await;
                tries += 1;
            }
        }
    }
}

fn backoff(tries: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32 << tries.min(8))
        .min(BACKOFF_MAX)
}

/// What to do with one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Left alone: DaemonSet or mirror pod.
    Skip(&'static str),
    /// Already being deleted: wait for it.
    Terminating,
    Evict,
}

fn classify(pod: &Pod) -> Class {
    let meta = &pod.metadata;
    if meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"))
    {
        return Class::Skip("mirror pod");
    }
    if meta.owner_references.as_ref().is_some_and(|o| {
        o.iter()
            .any(|o| o.kind == "DaemonSet" && o.controller == Some(true))
    }) {
        return Class::Skip("DaemonSet pod");
    }
    if meta.deletion_timestamp.is_some() {
        return Class::Terminating;
    }
    Class::Evict
}

fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("?")
    )
}

/// The outcome of one eviction request.
#[derive(Debug)]
enum Attempt {
    Accepted,
    /// The pod (with this uid) no longer exists.
    Gone,
    /// Refused or failed; try again later.
    Retry {
        blocked: bool,
        why: String,
    },
}

#[derive(Debug, Default)]
struct Retry {
    tries: u32,
    next_at: Option<Instant>,
    why: String,
}

async fn evict(client: &kube::Client, pod: &Pod, deadline: Instant) -> Attempt {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let left = deadline.saturating_duration_since(Instant::now()).as_secs();
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0) as u64;
    let params = EvictParams {
        delete_options: Some(DeleteParams {
            // Shortened only if the pod's own grace period would outlast the deadline.
            grace_period_seconds: (grace > left).then(|| left.max(1) as u32),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        }),
        ..EvictParams::default()
    };
    match Api::<Pod>::namespaced(client.clone(), namespace)
        .evict(name, &params)
        .await
    {
        Ok(_) => Attempt::Accepted,
        // 409: the uid precondition failed, a new pod took the name; it is listed next round.
        Err(e) if matches!(k8s::status_code(&e), Some(404 | 409)) => Attempt::Gone,
        Err(e) if k8s::status_code(&e) == Some(429) => Attempt::Retry {
            blocked: true,
            why: format!("eviction refused: {}", k8s::describe(&e)),
        },
        Err(e) => Attempt::Retry {
            blocked: false,
            why: format!("eviction failed: {}", k8s::describe(&e)),
        },
    }
}

/// Evicts every evictable pod on `node` and waits until they are gone, or until `deadline`.
/// Errors only if the pods could never be listed at all.
pub async fn drain_pods(
    client: &kube::Client,
    node: &str,
    deadline: Instant,
    opts: &DrainOptions,
    metrics: &Metrics,
) -> Result<DrainReport> {
    drain_pods_until(client, node, &Deadline::new(deadline), opts, metrics).await
}

/// [`drain_pods`] with a deadline that may be brought forward while it runs.
#[tracing::instrument(skip_all, fields(node))]
pub async fn drain_pods_until(
    client: &kube::Client,
    node: &str,
    deadline_cell: &Deadline,
    opts: &DrainOptions,
    metrics: &Metrics,
) -> Result<DrainReport> {
    let start = Instant::now();
    let pods_api = Api::<Pod>::all(client.clone());
    let list_params = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let mut retries: HashMap<String, Retry> = HashMap::new();
    let mut evicted = 0usize;
    let mut last_seen: Option<Vec<(String, Class)>> = None;
    let mut list_failing = false;
    let mut logged_skips = false;
    // One round of evictions is sent even with no time left (a spot notice already due): each pod
    // then gets at least a second of grace, instead of none.
    let mut rounds = 0u32;
    loop {
        let now = Instant::now();
        let deadline = deadline_cell.get();
        let pods = match pods_api.list(&list_params).await {
            Ok(list) => list.items,
            Err(e) => {
                if now >= deadline {
                    let Some(seen) = last_seen else {
                        return Err(Error::kube(format!("listing the pods of node {node}"), e));
                    };
                    let left = seen
                        .into_iter()
                        .map(|(k, _)| {
                            format!("{k} (state unknown: the API server stopped answering)")
                        })
                        .collect();
                    return Ok(DrainReport {
                        complete: false,
                        evicted,
                        left,
                        took: start.elapsed(),
                    });
                }
                if !list_failing {
                    tracing::warn!(node, error = %k8s::describe(&e), "cannot list the node's pods; retrying");
                    list_failing = true;
                }
                tokio::time::sleep(opts.poll.min(deadline.saturating_duration_since(now))).await;
                continue;
            }
        };
        if std::mem::take(&mut list_failing) {
            tracing::info!(node, "the API server answers again");
        }
        let classified: Vec<(&Pod, Class)> = pods.iter().map(|p| (p, classify(p))).collect();
        if !logged_skips {
            logged_skips = true;
            let skipped: Vec<String> = classified
                .iter()
                .filter_map(|(p, c)| match c {
                    Class::Skip(why) => Some(format!("{} ({why})", key(p))),
                    _ => None,
                })
                .collect();
            let to_evict = classified
                .iter()
                .filter(|(_, c)| *c == Class::Evict)
                .count();
            tracing::info!(node, pods = to_evict, skipped = ?skipped, "evicting the node's pods");
        }
        let remaining: Vec<(&Pod, Class)> = classified
            .into_iter()
            .filter(|(_, c)| !matches!(c, Class::Skip(_)))
            .collect();
        last_seen = Some(remaining.iter().map(|(p, c)| (key(p), *c)).collect());
        if remaining.is_empty() {
            let took = start.elapsed();
            tracing::info!(
                node,
                evicted,
                took_ms = took.as_millis() as u64,
                "drain complete: no pods left to evict"
            );
            return Ok(DrainReport {
                complete: true,
                evicted,
                left: Vec::new(),
                took,
            });
        }
        if now >= deadline && rounds > 0 {
            let left: Vec<String> = remaining
                .iter()
                .map(|(p, c)| {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    let why = match (c, retries.get(&uid)) {
                        (Class::Terminating, _) => "still terminating".to_string(),
                        (_, Some(r)) if !r.why.is_empty() => r.why.clone(),
                        _ => "not evicted yet".to_string(),
                    };
                    format!("{} ({why})", key(p))
                })
                .collect();
            return Ok(DrainReport {
                complete: false,
                evicted,
                left,
                took: start.elapsed(),
            });
        }

        let due: Vec<&Pod> = remaining
            .iter()
            .filter(|(p, c)| {
                *c == Class::Evict
                    && retries
                        .get(p.metadata.uid.as_deref().unwrap_or_default())
                        .is_none_or(|r| r.next_at.is_none_or(|at| at <= now))
            })
            .map(|(p, _)| *p)
            .collect();
        let attempts: Vec<(&Pod, Attempt)> = futures::stream::iter(due)
            .map(|pod| async move { (pod, evict(client, pod, deadline).await) })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        rounds += 1;
        for (pod, attempt) in attempts {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            match attempt {
                Attempt::Accepted => {
                    evicted += 1;
                    metrics.pod_evicted();
                    retries.remove(&uid);
                    tracing::debug!(pod = %key(pod), "eviction accepted");
                }
                Attempt::Gone => {
                    retries.remove(&uid);
                }
                Attempt::Retry { blocked, why } => {
                    let r = retries.entry(uid).or_default();
                    if r.tries == 0 {
                        if blocked {
                            tracing::info!(pod = %key(pod), %why, "eviction blocked; retrying until the deadline");
                        } else {
                            tracing::warn!(pod = %key(pod), %why, "eviction failed; retrying until the deadline");
                        }
                    } else {
                        tracing::debug!(pod = %key(pod), tries = r.tries, %why, "eviction still refused");
                    }
                    let wait = backoff(r.tries) + jitter(&key(pod), r.tries);
                    r.tries += 1;
                    r.next_at = Some(Instant::now() + wait);
                    r.why = why;
                }
            }
        }
        let next_retry = retries.values().filter_map(|r| r.next_at).min();
        let now = Instant::now();
        let wake = next_retry
            .map_or(now + opts.poll, |at| at.min(now + opts.poll))
            .min(deadline_cell.get())
            .max(now);
        tokio::time::sleep_until(wake.into()).await;
    }
}

/// Up to 100 ms spread per pod and try, so nodes draining at once do not retry in lockstep.
fn jitter(key: &str, tries: u32) -> Duration {
    let hash = key.bytes().fold(
        u64::from(tries).wrapping_add(1469598103934665603),
        |h, b| (h ^ u64::from(b)).wrapping_mul(1099511628211),
    );
    Duration::from_millis(hash % 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn daemonset_and_mirror_pods_are_skipped() {
        let ds = pod(json!({"metadata": {"name": "a", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ds", "uid": "1", "controller": true}]}}));
        let mirror = pod(
            json!({"metadata": {"name": "b", "annotations": {"kubernetes.io/config.mirror": "x"}}}),
        );
        let rs = pod(json!({"metadata": {"name": "c", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "2", "controller": true}]}}));
        let bare_with_empty_dir = pod(json!({"metadata": {"name": "d"},
            "spec": {"containers": [], "volumes": [{"name": "scratch", "emptyDir": {}}]}}));
        let going =
            pod(json!({"metadata": {"name": "e", "deletionTimestamp": "2026-01-01T00:00:00Z"}}));
        assert_eq!(classify(&ds), Class::Skip("DaemonSet pod"));
        assert_eq!(classify(&mirror), Class::Skip("mirror pod"));
        assert_eq!(classify(&rs), Class::Evict);
        assert_eq!(classify(&bare_with_empty_dir), Class::Evict);
        assert_eq!(classify(&going), Class::Terminating);
    }

    #[test]
    fn a_deadline_only_moves_forward() {
        let t = Instant::now() + Duration::from_secs(600);
        let d = Deadline::new(t);
        assert!(!d.bring_forward(t + Duration::from_secs(1)));
        assert_eq!(d.get(), t);
        assert!(d.bring_forward(t - Duration::from_secs(510)));
        assert_eq!(d.get(), t - Duration::from_secs(510));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(10), BACKOFF_MAX);
        assert!(jitter("default/a", 1) < Duration::from_millis(100));
    }
}
