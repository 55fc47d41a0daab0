//! Server-side printing (`meta.k8s.io/v1` Table) for `kubectl get`, with the columns a real server
//! prints for nodes and pods and NAME/AGE for everything else.

use serde_json::{Value, json};

use super::kinds::Kind;
use super::store::meta_str;

/// Whether the client asked for a Table (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`).
pub(crate) fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

fn column(name: &str, format: &str, priority: u8) -> Value {
    json!({ "name": name, "type": "string", "format": format, "description": "", "priority": priority })
}

/// `kubectl`'s `HumanDuration` of the time since `creationTimestamp`.
fn age(object: &Value) -> String {
    let Ok(created) = meta_str(object, "creationTimestamp").parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let seconds = jiff::Timestamp::now().duration_since(created).as_secs();
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    format!("{}d", hours / 24)
}

fn node_cells(node: &Value) -> Vec<Value> {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str());
    let mut status = match ready {
        Some("True") => "Ready".to_string(),
        None => "Unknown".to_string(),
        Some(_) => "NotReady".to_string(),
    };
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<&str> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect()
        })
        .unwrap_or_default();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let version = node
        .pointer("/status/nodeInfo/kubeletVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let internal_ip = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .unwrap_or("<none>");
    vec![
        json!(meta_str(node, "name")),
        json!(status),
        json!(roles),
        json!(age(node)),
        json!(version),
        json!(internal_ip),
    ]
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses.iter().filter(|s| s["ready"] == true).count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|s| s["restartCount"].as_i64())
        .sum();
    let status = if pod.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else {
        pod.pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("Pending")
    };
    let text = |pointer: &str| {
        pod.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("<none>")
            .to_string()
    };
    vec![
        json!(meta_str(pod, "name")),
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts.to_string()),
        json!(age(pod)),
        json!(text("/status/podIP")),
        json!(text("/spec/nodeName")),
    ]
}

/// How one object becomes the cells of its row.
type Cells = fn(&Value) -> Vec<Value>;

/// A Table of `objects` (each row carries the object's metadata, as `includeObject=Metadata` does).
pub(crate) fn table(kind: Kind, objects: &[&Value], resource_version: u64) -> Value {
    let (columns, cells): (Vec<Value>, Cells) = match kind {
        Kind::Node => (
            vec![
                column("Name", "name", 0),
                column("Status", "", 0),
                column("Roles", "", 0),
                column("Age", "", 0),
                column("Version", "", 0),
                column("Internal-IP", "", 1),
            ],
            node_cells,
        ),
        Kind::Pod => (
            vec![
                column("Name", "name", 0),
                column("Ready", "", 0),
                column("Status", "", 0),
                column("Restarts", "", 0),
                column("Age", "", 0),
                column("IP", "", 1),
                column("Node", "", 1),
            ],
            pod_cells,
        ),
        Kind::PodDisruptionBudget => (
            vec![
                column("Name", "name", 0),
                column("Min Available", "", 0),
                column("Max Unavailable", "", 0),
                column("Allowed Disruptions", "", 0),
                column("Age", "", 0),
            ],
            |o| {
                let or_na = |pointer: &str| match o.pointer(pointer) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => "N/A".to_string(),
                };
                vec![
                    json!(meta_str(o, "name")),
                    json!(or_na("/spec/minAvailable")),
                    json!(or_na("/spec/maxUnavailable")),
                    json!(
                        o.pointer("/status/disruptionsAllowed")
                            .and_then(Value::as_i64)
                            .unwrap_or(0)
                    ),
                    json!(age(o)),
                ]
            },
        ),
        Kind::DaemonSet => (
            vec![
                column("Name", "name", 0),
                column("Desired", "", 0),
                column("Current", "", 0),
                column("Ready", "", 0),
                column("Up-to-date", "", 0),
                column("Available", "", 0),
                column("Age", "", 0),
            ],
            |o| {
                let count = |field: &str| {
                    o.pointer(&format!("/status/{field}"))
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                };
                vec![
                    json!(meta_str(o, "name")),
                    json!(count("desiredNumberScheduled")),
                    json!(count("currentNumberScheduled")),
                    json!(count("numberReady")),
                    json!(count("updatedNumberScheduled")),
                    json!(count("numberAvailable")),
                    json!(age(o)),
                ]
            },
        ),
        _ => (vec![column("Name", "name", 0), column("Age", "", 0)], |o| {
            vec![json!(meta_str(o, "name")), json!(age(o))]
        }),
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            json!({
                "cells": cells(o),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(Value::Null)
                }
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": resource_version.to_string() },
        "columnDefinitions": columns,
        "rows": rows
    })
}
