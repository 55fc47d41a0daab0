//! Create, update and delete as kube-apiserver's registries do them: metadata the server owns,
//! per-kind defaults and validation, status subresources, graceful pod deletion and cascades.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Preconditions;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rand::Rng;
use serde_json::{Value, json};

use super::kinds::Kind;
use super::quantity::parse_milli;
use super::selectors::label_selector_matches;
use super::state::World;
use super::status::{ApiError, ResourceName};
use super::store::{self, from_value, meta_str, set_meta, to_value};

/// Default `terminationGracePeriodSeconds` of a pod.
pub(crate) const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Wall-clock time as Kubernetes writes it (`2025-01-02T03:04:05Z`).
pub(crate) fn now_rfc3339() -> String {
    timestamp_rfc3339(jiff::Timestamp::now())
}

pub(crate) fn timestamp_rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A random UUID (version 4 layout), as object uids look.
pub(crate) fn new_uid() -> String {
    let mut rng = rand::rng();
    let bytes: [u8; 16] = rng.random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        (bytes[8] & 0x3) | 0x8,
        &hex[17..20],
        &hex[20..32]
    )
}

/// The five-character suffix `generateName` gets.
pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// `metadata.name` must be an RFC 1123 subdomain.
fn validate_name(kind: Kind, name: &str) -> Result<(), ApiError> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        return Ok(());
    }
    let info = kind.info();
    Err(ApiError::invalid(
        info.kind,
        name,
        info.group,
        &[(
            "metadata.name".to_string(),
            format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ),
            "FieldValueInvalid",
        )],
    ))
}

/// Create an object as the registry does: namespace and name checks, `generateName`, uid,
/// creationTimestamp, per-kind defaults and validation. Returns the stored object.
pub(crate) fn create(
    world: &mut World,
    kind: Kind,
    namespace: &str,
    mut object: Value,
) -> Result<Value, ApiError> {
    let info = kind.info();
    if info.namespaced {
        let body_ns = meta_str(&object, "namespace").to_string();
        if !body_ns.is_empty() && body_ns != namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if world.store.get(Kind::Namespace, "", namespace).is_none() {
            return Err(ApiError::not_found(Kind::Namespace.resource(), namespace));
        }
        set_meta(&mut object, "namespace", json!(namespace));
    } else {
        store::meta_mut(&mut object).remove("namespace");
    }

    let mut name = meta_str(&object, "name").to_string();
    if name.is_empty() {
        let prefix = meta_str(&object, "generateName").to_string();
        if prefix.is_empty() {
            return Err(ApiError::invalid(
                info.kind,
                "",
                info.group,
                &[(
                    "metadata.name".to_string(),
                    "Required value: name or generateName is required".to_string(),
                    "FieldValueRequired",
                )],
            ));
        }
        // Retry on the (unlikely) collision, as the real server's callers do.
        for _ in 0..10 {
            name = format!("{prefix}{}", random_suffix());
            if world
                .store
                .get(kind, namespace_of(kind, namespace), &name)
                .is_none()
            {
                break;
            }
        }
        set_meta(&mut object, "name", json!(name));
    }
    validate_name(kind, &name)?;
    if world
        .store
        .get(kind, namespace_of(kind, namespace), &name)
        .is_some()
    {
        return Err(ApiError::already_exists(kind.resource(), &name));
    }

    let meta = store::meta_mut(&mut object);
    for owned in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "managedFields",
    ] {
        meta.remove(owned);
    }
    meta.insert("uid".into(), json!(new_uid()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    if info.has_generation {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }

    let object = match kind {
        Kind::Pod => prepare_pod_create(object)?,
        Kind::Namespace => {
            let mut object = object;
            let labels = store::meta_mut(&mut object)
                .entry("labels")
                .or_insert_with(|| json!({}));
            labels["kubernetes.io/metadata.name"] = json!(name);
            object["spec"] = json!({ "finalizers": ["kubernetes"] });
            object["status"] = json!({ "phase": "Active" });
            object
        }
        Kind::DaemonSet => prepare_daemonset(object)?,
        Kind::PodDisruptionBudget => {
            validate_pdb(&object)?;
            let mut object = object;
            object["status"] = json!({
                "disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0
            });
            object
        }
        Kind::Node => {
            let mut object = object;
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("configSource");
            }
            object
        }
        Kind::Event | Kind::EventV1 | Kind::Lease => object,
    };
    Ok(world.store.create(kind, object))
}

/// Cluster-scoped kinds live under the empty namespace in the store.
pub(crate) fn namespace_of(kind: Kind, namespace: &str) -> &str {
    if kind.info().namespaced {
        namespace
    } else {
        ""
    }
}

fn prepare_pod_create(object: Value) -> Result<Value, ApiError> {
    let Some(mut pod) = from_value::<Pod>(&object) else {
        return Err(ApiError::internal("pod does not decode"));
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    validate_pod_spec(spec, "spec", &name, "Pod", "")?;
    default_pod_spec(spec);
    let qos = qos_class(spec);
    // The status is the kubelet's to write; whatever the client sent is dropped (as PrepareForCreate does).
    pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
        phase: Some("Pending".into()),
        qos_class: Some(qos.into()),
        ..Default::default()
    });
    Ok(to_value(&pod))
}

/// The checks on a pod spec that a client is most likely to trip: containers, names and images.
fn validate_pod_spec(
    spec: &PodSpec,
    path: &str,
    name: &str,
    kind: &str,
    group: &str,
) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    if spec.containers.is_empty() {
        causes.push((
            format!("{path}.containers"),
            "Required value".to_string(),
            "FieldValueRequired",
        ));
    }
    for (i, c) in spec.containers.iter().enumerate() {
        if c.name.is_empty() {
            causes.push((
                format!("{path}.containers[{i}].name"),
                "Required value".to_string(),
                "FieldValueRequired",
            ));
        }
        if c.image.as_deref().unwrap_or_default().is_empty() {
            causes.push((
                format!("{path}.containers[{i}].image"),
                "Required value".to_string(),
                "FieldValueRequired",
            ));
        }
    }
    for (i, c) in spec.containers.iter().enumerate() {
        for (section, list) in [
            (
                "requests",
                &c.resources.as_ref().and_then(|r| r.requests.clone()),
            ),
            (
                "limits",
                &c.resources.as_ref().and_then(|r| r.limits.clone()),
            ),
        ] {
            for (resource, quantity) in list.iter().flatten() {
                if parse_milli(&quantity.0).is_none_or(|v| v < 0) {
                    causes.push((
                        format!("{path}.containers[{i}].resources.{section}[{resource}]"),
                        format!(
                            "Invalid value: \"{}\": must be a valid quantity",
                            quantity.0
                        ),
                        "FieldValueInvalid",
                    ));
                }
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(kind, name, group, &causes))
    }
}

/// The defaults the API server fills into a pod spec.
fn default_pod_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds
        .get_or_insert(DEFAULT_GRACE_SECONDS);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.security_context.get_or_insert_with(Default::default);
    spec.enable_service_links.get_or_insert(true);
    spec.priority.get_or_insert(0);
    spec.preemption_policy
        .get_or_insert_with(|| "PreemptLowerPriority".into());
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        c.termination_message_path
            .get_or_insert_with(|| "/dev/termination-log".into());
        c.termination_message_policy
            .get_or_insert_with(|| "File".into());
        let image = c.image.clone().unwrap_or_default();
        let tag = image.rsplit('/').next().unwrap_or_default();
        let latest = !tag.contains(':') || tag.ends_with(":latest");
        c.image_pull_policy.get_or_insert_with(|| {
            if latest {
                "Always".into()
            } else {
                "IfNotPresent".into()
            }
        });
        c.resources.get_or_insert_with(Default::default);
    }
}

/// The pod's QoS class (Guaranteed, Burstable, BestEffort) from its containers' requests and limits.
fn qos_class(spec: &PodSpec) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in &spec.containers {
        let resources = c.resources.clone().unwrap_or_default();
        let requests = resources.requests.unwrap_or_default();
        let limits = resources.limits.unwrap_or_default();
        if !requests.is_empty() || !limits.is_empty() {
            any = true;
        }
        for resource in ["cpu", "memory"] {
            let limit = limits.get(resource);
            let request = requests.get(resource).or(limit);
            if limit.is_none() || request.map(|q| &q.0) != limit.map(|q| &q.0) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn prepare_daemonset(object: Value) -> Result<Value, ApiError> {
    let Some(mut ds) = from_value::<DaemonSet>(&object) else {
        return Err(ApiError::internal("daemonset does not decode"));
    };
    let name = ds.metadata.name.clone().unwrap_or_default();
    let spec = ds.spec.get_or_insert_with(Default::default);
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector_empty = spec
        .selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.is_empty())
        && spec
            .selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty());
    if selector_empty {
        return Err(ApiError::invalid(
            "DaemonSet",
            &name,
            "apps",
            &[(
                "spec.selector".into(),
                "Invalid value: \"{}\": empty selector is invalid for daemonset".into(),
                "FieldValueInvalid",
            )],
        ));
    }
    if !label_selector_matches(&spec.selector, &template_labels) {
        return Err(ApiError::invalid(
            "DaemonSet",
            &name,
            "apps",
            &[(
                "spec.template.metadata.labels".into(),
                "Invalid value: `selector` does not match template `labels`".into(),
                "FieldValueInvalid",
            )],
        ));
    }
    let pod_spec = spec.template.spec.get_or_insert_with(Default::default);
    validate_pod_spec(pod_spec, "spec.template.spec", &name, "DaemonSet", "apps")?;
    default_pod_spec(pod_spec);
    spec.revision_history_limit.get_or_insert(10);
    spec.update_strategy.get_or_insert_with(|| {
        k8s_openapi::api::apps::v1::DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDaemonSet {
                max_surge: Some(IntOrString::Int(0)),
                max_unavailable: Some(IntOrString::Int(1)),
            }),
        }
    });
    ds.status = Some(Default::default());
    Ok(to_value(&ds))
}

fn validate_pdb(object: &Value) -> Result<(), ApiError> {
    let Some(pdb) = from_value::<PodDisruptionBudget>(object) else {
        return Err(ApiError::internal("poddisruptionbudget does not decode"));
    };
    let name = pdb.metadata.name.clone().unwrap_or_default();
    let spec = pdb.spec.unwrap_or_default();
    let mut causes = Vec::new();
    if spec.min_available.is_some() && spec.max_unavailable.is_some() {
        causes.push((
            "spec".to_string(),
            "Invalid value: minAvailable and maxUnavailable cannot be both set".to_string(),
            "FieldValueInvalid",
        ));
    }
    for (field, value) in [
        ("spec.minAvailable", &spec.min_available),
        ("spec.maxUnavailable", &spec.max_unavailable),
    ] {
        match value {
            Some(IntOrString::Int(n)) if *n < 0 => causes.push((field.to_string(), format!("Invalid value: {n}: must be greater than or equal to 0"), "FieldValueInvalid")),
            Some(IntOrString::String(s)) if percent(s).is_none_or(|p| !(0..=100).contains(&p)) => causes.push((
                field.to_string(),
                format!("Invalid value: \"{s}\": must be an integer or a percentage between 0% and 100%"),
                "FieldValueInvalid",
            )),
            _ => {}
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "PodDisruptionBudget",
            &name,
            "policy",
            &causes,
        ))
    }
}

/// `"25%"` → 25.
pub(crate) fn percent(text: &str) -> Option<i64> {
    text.strip_suffix('%')?.parse().ok()
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Main,
    Status,
}

/// The object a replace (PUT, or the result of a PATCH) would store, as the registry computes it:
/// optimistic concurrency on `resourceVersion`, the main resource keeps the old status and the
/// status subresource keeps the old spec and metadata, server-owned metadata is preserved.
/// Nothing is written; store the result with `Store::update`.
pub(crate) fn prepare_update(
    world: &World,
    kind: Kind,
    namespace: &str,
    name: &str,
    part: Part,
    new: Value,
) -> Result<Value, ApiError> {
    let info = kind.info();
    let ns = namespace_of(kind, namespace);
    let Some(old) = world.store.get(kind, ns, name).cloned() else {
        return Err(ApiError::not_found(kind.resource(), name));
    };
    let body_name = meta_str(&new, "name");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let body_ns = meta_str(&new, "namespace");
    if info.namespaced && !body_ns.is_empty() && body_ns != namespace {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let body_rv = meta_str(&new, "resourceVersion");
    if !body_rv.is_empty() && body_rv != meta_str(&old, "resourceVersion") {
        return Err(ApiError::conflict(
            kind.resource(),
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }

    let mut result = match part {
        Part::Status => {
            let mut result = old.clone();
            match new.get("status") {
                Some(status) => result["status"] = status.clone(),
                None => {
                    if let Some(map) = result.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
            result
        }
        Part::Main => {
            let mut result = new;
            if info.has_status {
                match old.get("status") {
                    Some(status) => result["status"] = status.clone(),
                    None => {
                        if let Some(map) = result.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
            }
            result
        }
    };
    let meta = store::meta_mut(&mut result);
    meta.insert("name".into(), json!(name));
    if info.namespaced {
        meta.insert("namespace".into(), json!(namespace));
    } else {
        meta.remove("namespace");
    }
    for owned in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old.get("metadata").and_then(|m| m.get(owned)) {
            Some(v) => {
                meta.insert(owned.into(), v.clone());
            }
            None => {
                meta.remove(owned);
            }
        }
    }
    meta.remove("selfLink");
    if info.has_generation && part == Part::Main && result.get("spec") != old.get("spec") {
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        set_meta(&mut result, "generation", json!(generation + 1));
    }

    if part == Part::Main {
        match kind {
            Kind::Pod => validate_pod_update(&old, &result, name)?,
            Kind::DaemonSet
                if result.pointer("/spec/selector") != old.pointer("/spec/selector") =>
            {
                return Err(ApiError::invalid(
                    "DaemonSet",
                    name,
                    "apps",
                    &[(
                        "spec.selector".into(),
                        "Invalid value: field is immutable".into(),
                        "FieldValueInvalid",
                    )],
                ));
            }
            Kind::PodDisruptionBudget => validate_pdb(&result)?,
            _ => {}
        }
    }
    Ok(result)
}

/// Pod specs are immutable apart from images, activeDeadlineSeconds, added tolerations and
/// terminationGracePeriodSeconds.
fn validate_pod_update(old: &Value, new: &Value, name: &str) -> Result<(), ApiError> {
    let strip = |pod: &Value| {
        let mut spec = pod.get("spec").cloned().unwrap_or(Value::Null);
        for list in ["containers", "initContainers"] {
            if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in items {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("image");
                    }
                }
            }
        }
        if let Some(spec) = spec.as_object_mut() {
            for mutable in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
            ] {
                spec.remove(mutable);
            }
        }
        spec
    };
    if strip(old) == strip(new) {
        return Ok(());
    }
    Err(ApiError::invalid(
        "Pod",
        name,
        "",
        &[(
            "spec".into(),
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
            "FieldValueForbidden",
        )],
    ))
}

/// Check `DeleteOptions.preconditions` against the stored object.
pub(crate) fn check_preconditions(
    resource: ResourceName<'_>,
    object: &Value,
    preconditions: Option<&Preconditions>,
) -> Result<(), ApiError> {
    let Some(pre) = preconditions else {
        return Ok(());
    };
    let name = store::name(object);
    if let Some(uid) = pre.uid.as_deref() {
        let actual = meta_str(object, "uid");
        if uid != actual {
            return Err(ApiError::conflict(
                resource,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                ),
            ));
        }
    }
    if let Some(rv) = pre.resource_version.as_deref() {
        let actual = meta_str(object, "resourceVersion");
        if rv != actual {
            return Err(ApiError::conflict(
                resource,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"
                ),
            ));
        }
    }
    Ok(())
}

/// Delete a pod gracefully, as the pod registry does: the grace period comes from the request,
/// else the pod's `terminationGracePeriodSeconds`; unscheduled and finished pods, and a grace
/// period of 0, remove the pod at once; otherwise `deletionTimestamp` is set and the simulated
/// kubelet removes the pod when the grace period (or `pod_stop_delay`) has passed.
/// Returns the pod as the response shows it (still present, or its last state).
pub(crate) fn delete_pod(
    world: &mut World,
    namespace: &str,
    name: &str,
    grace: Option<i64>,
    preconditions: Option<&Preconditions>,
    stop_delay: Option<Duration>,
) -> Result<Value, ApiError> {
    let Some(pod) = world.store.get(Kind::Pod, namespace, name).cloned() else {
        return Err(ApiError::not_found(Kind::Pod.resource(), name));
    };
    check_preconditions(Kind::Pod.resource(), &pod, preconditions)?;
    let spec_grace = pod
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    let mut grace = grace.filter(|g| *g >= 0).unwrap_or(spec_grace.max(0));
    let bound = !pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .is_empty();
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !bound || phase == "Succeeded" || phase == "Failed" {
        grace = 0;
    }
    let uid = meta_str(&pod, "uid").to_string();
    if grace == 0 {
        forget_pod(world, &pod);
        return Ok(world
            .store
            .delete(Kind::Pod, namespace, name)
            .unwrap_or(pod));
    }
    let stop_after = Duration::from_secs(grace.unsigned_abs());
    let stop_after = stop_delay.map_or(stop_after, |d| d.min(stop_after));
    // A grace period too long for the clock is, for a test, forever.
    let deadline = Instant::now()
        .checked_add(stop_after)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(10 * 365 * 86_400));
    let current_grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64);
    if let Some(current) = current_grace
        && current <= grace
    {
        // Already terminating at least as fast: nothing changes.
        return Ok(pod);
    }
    let mut updated = pod;
    let when = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(grace))
        .unwrap_or_else(|_| jiff::Timestamp::now());
    set_meta(
        &mut updated,
        "deletionTimestamp",
        json!(timestamp_rfc3339(when)),
    );
    set_meta(&mut updated, "deletionGracePeriodSeconds", json!(grace));
    let previous = world.finish_at.get(&uid).copied();
    world
        .finish_at
        .insert(uid, previous.map_or(deadline, |p| p.min(deadline)));
    Ok(world.store.update(Kind::Pod, updated))
}

/// Delete a non-pod object, with the cascades the garbage collector and pod GC would do: a Node's
/// pods go with it, a DaemonSet's pods are deleted gracefully (unless orphaned), a namespace takes
/// its contents. Returns the deleted object.
pub(crate) fn delete_object(
    world: &mut World,
    kind: Kind,
    namespace: &str,
    name: &str,
    preconditions: Option<&Preconditions>,
    orphan: bool,
    stop_delay: Option<Duration>,
) -> Result<Value, ApiError> {
    let ns = namespace_of(kind, namespace);
    let Some(existing) = world.store.get(kind, ns, name).cloned() else {
        return Err(ApiError::not_found(kind.resource(), name));
    };
    check_preconditions(kind.resource(), &existing, preconditions)?;
    match kind {
        Kind::Namespace => {
            if ["default", "kube-system", "kube-public", "kube-node-lease"].contains(&name) {
                return Err(ApiError::forbidden(
                    kind.resource(),
                    name,
                    "this namespace may not be deleted",
                ));
            }
            for contained in [
                Kind::Pod,
                Kind::Event,
                Kind::EventV1,
                Kind::DaemonSet,
                Kind::PodDisruptionBudget,
                Kind::Lease,
            ] {
                let names: Vec<String> = world
                    .store
                    .list(contained, Some(name))
                    .into_iter()
                    .map(|o| store::name(o).to_string())
                    .collect();
                for n in names {
                    if let Some(removed) = world.store.delete(contained, name, &n) {
                        forget_pod(world, &removed);
                    }
                }
            }
        }
        Kind::Node => {
            // Pod GC: pods bound to a node that no longer exists are removed.
            let bound: Vec<(String, String)> = world
                .store
                .list(Kind::Pod, None)
                .into_iter()
                .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(name))
                .map(|p| (store::namespace(p).to_string(), store::name(p).to_string()))
                .collect();
            for (pod_ns, pod_name) in bound {
                if let Some(removed) = world.store.delete(Kind::Pod, &pod_ns, &pod_name) {
                    forget_pod(world, &removed);
                }
            }
            world.forced_not_ready.remove(name);
            world.store.delete(Kind::Lease, "kube-node-lease", name);
        }
        Kind::DaemonSet if !orphan => {
            let uid = meta_str(&existing, "uid").to_string();
            for (pod_ns, pod_name) in owned_pods(world, &uid) {
                // Background propagation: the pods terminate gracefully after their owner is gone.
                let _ = delete_pod(world, &pod_ns, &pod_name, None, None, stop_delay);
            }
        }
        _ => {}
    }
    Ok(world.store.delete(kind, ns, name).unwrap_or(existing))
}

/// Pods whose controller owner has this uid.
pub(crate) fn owned_pods(world: &World, owner_uid: &str) -> Vec<(String, String)> {
    world
        .store
        .list(Kind::Pod, None)
        .into_iter()
        .filter(|p| {
            p.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| {
                    refs.iter()
                        .any(|r| r.get("uid").and_then(Value::as_str) == Some(owner_uid))
                })
        })
        .map(|p| (store::namespace(p).to_string(), store::name(p).to_string()))
        .collect()
}

/// Drop the kubelet's private state for a removed pod.
pub(crate) fn forget_pod(world: &mut World, pod: &Value) {
    let uid = meta_str(pod, "uid");
    world.start_at.remove(uid);
    world.finish_at.remove(uid);
    world.controller_scale.remove(uid);
    world.marked_not_ready.remove(uid);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_look_like_uuids() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(uid.matches('-').count(), 4);
        assert_eq!(&uid[14..15], "4");
        assert_eq!(random_suffix().len(), 5);
    }

    #[test]
    fn names_must_be_subdomains() {
        assert!(validate_name(Kind::Pod, "web-1.a").is_ok());
        assert_eq!(
            validate_name(Kind::Pod, "Web").expect_err("upper").code,
            422
        );
        assert!(validate_name(Kind::Pod, "-a").is_err());
    }
}
