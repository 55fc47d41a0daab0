//! The three patch formats of `PATCH` (JSON patch, merge patch, strategic merge patch) and the
//! approximation used for server-side apply.

use serde_json::{Map, Value};

use super::status::ApiError;

/// The patch format named by the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchType::Apply),
            _ => Err(ApiError::unsupported_media_type(content_type)),
        }
    }
}

/// Apply `body` (the raw request body) to `doc` in the given format.
pub(crate) fn apply(doc: &mut Value, patch_type: PatchType, body: &[u8]) -> Result<(), ApiError> {
    match patch_type {
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(doc, &patch.0).map_err(|e| {
                ApiError::invalid_patch(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })
        }
        PatchType::Merge => {
            let patch = parse_object(body)?;
            json_patch::merge(doc, &patch);
            Ok(())
        }
        PatchType::Strategic => {
            let patch = parse_object(body)?;
            strategic_merge(doc, &patch);
            Ok(())
        }
        PatchType::Apply => {
            let patch = parse_apply(body)?;
            strategic_merge(doc, &patch);
            Ok(())
        }
    }
}

/// The body of an apply patch: JSON, or YAML.
pub(crate) fn parse_apply(body: &[u8]) -> Result<Value, ApiError> {
    let value = match serde_json::from_slice::<Value>(body) {
        Ok(v) => v,
        Err(_) => {
            let text = std::str::from_utf8(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            serde_saphyr::from_str::<Value>(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        }
    };
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::bad_request("apply patch must be an object"))
    }
}

fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    if patch.is_object() {
        Ok(patch)
    } else {
        Err(ApiError::bad_request(
            "error decoding patch: patch must be a JSON object",
        ))
    }
}

/// The merge key of list fields whose patch strategy is `merge` in the core API types. Lists not
/// named here are replaced as a whole, like `tolerations` and `taints`.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => "containerPort",
        "hostAliases" => "ip",
        "podIPs" | "hostIPs" => "ip",
        "ownerReferences" => "uid",
        "conditions" | "addresses" => "type",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Lists of scalars merged as sets.
fn is_primitive_merge_list(field: &str) -> bool {
    field == "finalizers"
}

/// Strategic merge patch as kube-apiserver applies it to the core types: maps merge recursively,
/// `null` deletes, lists with a merge key merge element-wise, `$patch: replace|delete` and
/// `$deleteFromPrimitiveList/<field>` are honoured, `$setElementOrder` and `$retainKeys` ignored.
pub(crate) fn strategic_merge(doc: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    if let Value::Object(target) = doc {
        merge_map(target, patch);
    }
}

fn merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = strip_directives_map(patch);
            return;
        }
        Some("delete") => {
            target.clear();
            return;
        }
        _ => {}
    }
    for (key, value) in patch {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (target.get_mut(field), value)
            {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        match (target.get_mut(key), value) {
            (Some(Value::Object(existing)), Value::Object(patch_map)) => {
                if patch_map.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(key);
                } else {
                    merge_map(existing, patch_map);
                }
            }
            (Some(Value::Array(existing)), Value::Array(patch_list)) => {
                if let Some(merge_key) = merge_key(key) {
                    merge_list(existing, patch_list, merge_key);
                } else if is_primitive_merge_list(key) {
                    for item in patch_list {
                        if !existing.contains(item) {
                            existing.push(item.clone());
                        }
                    }
                } else {
                    target.insert(key.clone(), strip_directives(value));
                }
            }
            _ => {
                target.insert(key.clone(), strip_directives(value));
            }
        }
    }
}

fn merge_list(existing: &mut Vec<Value>, patch: &[Value], key: &str) {
    if patch
        .iter()
        .any(|item| item.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *existing = patch
            .iter()
            .filter(|item| item.get("$patch").is_none())
            .map(strip_directives)
            .collect();
        return;
    }
    for item in patch {
        let Some(id) = item.get(key) else {
            existing.push(strip_directives(item));
            continue;
        };
        let position = existing.iter().position(|e| e.get(key) == Some(id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, item) {
            (Some(i), _) if delete => {
                existing.remove(i);
            }
            (None, _) if delete => {}
            (Some(i), Value::Object(patch_map)) => {
                if let Value::Object(target) = &mut existing[i] {
                    merge_map(target, patch_map);
                }
            }
            _ => existing.push(strip_directives(item)),
        }
    }
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(strip_directives_map(map)),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn strip_directives_map(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
        .map(|(k, v)| (k.clone(), strip_directives(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_by_key_and_replaces_plain_lists() {
        let mut doc = json!({
            "spec": {"unschedulable": false, "taints": [{"key": "a", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "False"}]},
            "metadata": {"finalizers": ["x"], "labels": {"a": "1", "b": "2"}}
        });
        strategic_merge(
            &mut doc,
            &json!({
                "spec": {"unschedulable": true, "taints": [{"key": "b", "effect": "NoExecute"}]},
                "status": {"conditions": [{"type": "Ready", "status": "False"}]},
                "metadata": {"finalizers": ["y"], "labels": {"a": null}}
            }),
        );
        assert_eq!(doc["spec"]["unschedulable"], json!(true));
        assert_eq!(
            doc["spec"]["taints"],
            json!([{"key": "b", "effect": "NoExecute"}])
        );
        assert_eq!(doc["status"]["conditions"][0]["status"], json!("False"));
        assert_eq!(
            doc["status"]["conditions"][1]["type"],
            json!("DiskPressure")
        );
        assert_eq!(doc["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(doc["metadata"]["labels"], json!({"b": "2"}));
    }

    #[test]
    fn strategic_merge_directives() {
        let mut doc = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}});
        strategic_merge(
            &mut doc,
            &json!({"$setElementOrder/containers": [{"name": "b"}],
                    "spec": {"containers": [{"name": "a", "$patch": "delete"}, {"name": "b", "image": "3"}]}}),
        );
        assert_eq!(
            doc,
            json!({"spec": {"containers": [{"name": "b", "image": "3"}]}})
        );
    }

    #[test]
    fn json_patch_and_merge_patch() {
        let mut doc = json!({"spec": {"unschedulable": false}});
        apply(
            &mut doc,
            PatchType::Json,
            br#"[{"op":"replace","path":"/spec/unschedulable","value":true}]"#,
        )
        .expect("json patch");
        assert_eq!(doc["spec"]["unschedulable"], json!(true));
        apply(
            &mut doc,
            PatchType::Merge,
            br#"{"spec":{"unschedulable":null}}"#,
        )
        .expect("merge");
        assert_eq!(doc, json!({"spec": {}}));
        let err = apply(
            &mut doc,
            PatchType::Json,
            br#"[{"op":"test","path":"/spec/x","value":1}]"#,
        )
        .expect_err("fails");
        assert_eq!(err.code, 422);
        assert!(PatchType::from_content_type("text/plain").is_err());
    }
}
