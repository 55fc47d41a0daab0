//! PodDisruptionBudget status as the disruption controller computes it, and the `pods/eviction`
//! subresource that enforces it (kube-apiserver's `registry/core/pod/storage/eviction.go`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{Eviction, PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::kinds::Kind;
use super::ops::{self, percent};
use super::selectors::label_selector_matches;
use super::state::World;
use super::status::{ApiError, success_status};
use super::store::{from_value, to_value};

/// How long an eviction counts as in flight (`DisruptedPods`) if its pod is not seen going away;
/// the disruption controller's `DeletionTimeout`.
const DISRUPTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Healthy as the disruption controller counts it: Ready, and not being deleted.
pub(crate) fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conds| {
            conds
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// The pods a budget's selector picks in its namespace (a missing selector picks none).
fn selected_pods(world: &mut World, pdb: &PodDisruptionBudget) -> Vec<Pod> {
    let namespace = pdb.metadata.namespace.as_deref().unwrap_or_default();
    let Some(selector) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return Vec::new();
    };
    world
        .store
        .typed::<Pod>(Kind::Pod)
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| {
            label_selector_matches(selector, &p.metadata.labels.clone().unwrap_or_default())
        })
        .collect()
}

/// `ceil(total * pct / 100)`, as `GetScaledValueFromIntOrPercent(.., roundUp=true)`.
fn scaled(value: &IntOrString, total: i32) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let pct = percent(s).unwrap_or(0);
            ((i64::from(total) * pct + 99) / 100) as i32
        }
    }
}

/// The scale of the controllers of `pods`, which the fake does not model directly: per controller
/// (a bare pod is its own controller) the number of live pods, remembered while some of its pods
/// are terminating (so an evicted pod counts until it is gone, as the controller's `replicas`
/// would), and lowered when pods go away without replacement (a scale-down).
fn expected_scale(world: &mut World, pods: &[Pod]) -> i32 {
    let mut groups: BTreeMap<String, (i32, i32)> = BTreeMap::new();
    for pod in pods.iter().filter(|p| !terminal(p)) {
        let key = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .map(|r| r.uid.clone())
            .or_else(|| pod.metadata.uid.clone())
            .unwrap_or_default();
        let entry = groups.entry(key).or_default();
        if terminating(pod) {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
    }
    let mut expected = 0;
    for (key, (live, terminating_pods)) in groups {
        let scale = world.controller_scale.entry(key).or_insert(live);
        if live > *scale || terminating_pods == 0 {
            *scale = live;
        }
        expected += *scale;
    }
    expected
}

/// The budget's status from the pods as they are now, as the disruption controller computes it.
/// `expectedPods` stands in for the scale of the pods' controllers (see `expected_scale`); for an
/// integer `minAvailable` it is the number of selected pods, as in the real controller.
pub(crate) fn compute_status(
    world: &mut World,
    pdb: &PodDisruptionBudget,
) -> PodDisruptionBudgetStatus {
    let now = jiff::Timestamp::now();
    let pods = selected_pods(world, pdb);
    let old = pdb.status.clone().unwrap_or_default();
    let spec = pdb.spec.clone().unwrap_or_default();

    // Evictions still in flight: their pod exists and has not started terminating.
    let disrupted: BTreeMap<String, Time> = old
        .disrupted_pods
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, at)| {
            let recent = now.duration_since(at.0).unsigned_abs() < DISRUPTION_TIMEOUT;
            recent
                && pods
                    .iter()
                    .any(|p| p.metadata.name.as_deref() == Some(name.as_str()) && !terminating(p))
        })
        .collect();

    let current_healthy = pods
        .iter()
        .filter(|p| {
            pod_is_ready(p)
                && !terminating(p)
                && !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or_default())
        })
        .count() as i32;
    let scale = expected_scale(world, &pods);

    let (expected, desired) = match (&spec.max_unavailable, &spec.min_available) {
        (Some(max_unavailable), _) => (scale, (scale - scaled(max_unavailable, scale)).max(0)),
        (None, Some(IntOrString::Int(n))) => (pods.len() as i32, *n),
        (None, Some(min_available)) => (scale, scaled(min_available, scale)),
        (None, None) => (scale, scale),
    };
    let allowed = (current_healthy - desired).max(0);

    let (status, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let generation = pdb.metadata.generation;
    let previous = old
        .conditions
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.type_ == "DisruptionAllowed"));
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(now),
    };
    PodDisruptionBudgetStatus {
        conditions: Some(vec![Condition {
            type_: "DisruptionAllowed".into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time,
            observed_generation: generation,
        }]),
        current_healthy,
        desired_healthy: desired,
        disruptions_allowed: allowed,
        expected_pods: expected,
        observed_generation: generation,
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
    }
}

/// Recompute every budget's status; returns whether any changed.
pub(crate) fn refresh_budgets(world: &mut World) -> bool {
    let budgets: Vec<PodDisruptionBudget> = world.store.typed(Kind::PodDisruptionBudget);
    let mut changed = false;
    for mut pdb in budgets {
        let status = compute_status(world, &pdb);
        if pdb.status.as_ref() != Some(&status) {
            pdb.status = Some(status);
            world
                .store
                .update(Kind::PodDisruptionBudget, to_value(&pdb));
            changed = true;
        }
    }
    changed
}

/// Whether the eviction can skip the budget check: pods that are pending, finished, or already
/// terminating are deleted directly (they are not counted as healthy anyway).
fn can_ignore_budget(pod: &Pod) -> bool {
    terminating(pod)
        || matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed") | Some("Pending") | None
        )
}

/// `POST .../pods/{name}/eviction`. On success the pod is deleted gracefully (with the eviction's
/// DeleteOptions) and a 201 Success `Status` is returned; a budget that allows no disruption
/// answers 429. The budget check, the count of the disruption and the deletion happen under the
/// one world lock, so two concurrent evictions cannot both spend one allowed disruption.
pub(crate) fn evict(
    world: &mut World,
    namespace: &str,
    name: &str,
    eviction: &Eviction,
    stop_delay: Option<Duration>,
) -> Result<Value, ApiError> {
    let Some(pod_value) = world.store.get(Kind::Pod, namespace, name).cloned() else {
        return Err(ApiError::not_found(Kind::Pod.resource(), name));
    };
    let Some(pod) = from_value::<Pod>(&pod_value) else {
        return Err(ApiError::internal("stored pod does not decode"));
    };
    let options = eviction.delete_options.as_ref();
    let grace = options.and_then(|o| o.grace_period_seconds);
    let preconditions = options.and_then(|o| o.preconditions.as_ref());
    ops::check_preconditions(Kind::Pod.resource(), &pod_value, preconditions)?;
    let dry_run = options
        .and_then(|o| o.dry_run.as_ref())
        .is_some_and(|d| !d.is_empty());

    let delete = |world: &mut World| -> Result<Value, ApiError> {
        if !dry_run {
            ops::delete_pod(world, namespace, name, grace, preconditions, stop_delay)?;
        }
        Ok(success_status(201, None))
    };
    if can_ignore_budget(&pod) {
        return delete(world);
    }

    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let budgets: Vec<PodDisruptionBudget> = world
        .store
        .list(Kind::PodDisruptionBudget, Some(namespace))
        .into_iter()
        .filter_map(from_value::<PodDisruptionBudget>)
        .filter(|pdb| {
            pdb.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|sel| label_selector_matches(sel, &labels))
        })
        .collect();
    let mut pdb = match budgets.len() {
        0 => return delete(world),
        1 => budgets.into_iter().next().unwrap_or_default(),
        _ => {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
    };

    let status = compute_status(world, &pdb);
    if !pod_is_ready(&pod) {
        let always_allow = pdb
            .spec
            .as_ref()
            .and_then(|s| s.unhealthy_pod_eviction_policy.as_deref())
            == Some("AlwaysAllow");
        if always_allow
            || (status.current_healthy >= status.desired_healthy && status.desired_healthy > 0)
        {
            return delete(world);
        }
    }
    if status.disruptions_allowed <= 0 {
        return Err(ApiError::disruption_budget(format!(
            "The disruption budget {} needs {} healthy pods and has {} currently",
            pdb.metadata.name.as_deref().unwrap_or_default(),
            status.desired_healthy,
            status.current_healthy
        )));
    }
    if dry_run {
        return Ok(success_status(201, None));
    }
    let mut status = status;
    status.disruptions_allowed -= 1;
    status
        .disrupted_pods
        .get_or_insert_with(BTreeMap::new)
        .insert(name.to_string(), Time(jiff::Timestamp::now()));
    pdb.status = Some(status);
    world
        .store
        .update(Kind::PodDisruptionBudget, to_value(&pdb));
    delete(world)
}
