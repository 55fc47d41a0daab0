//! Discovery (`/version`, `/api`, `/apis`, resource lists) and the minimal OpenAPI v3 documents that
//! tell kubectl the server validates fields itself (`fieldValidation`), so `kubectl create -f` works
//! with its default `--validate=strict`.

use serde_json::{Value, json};

use super::kinds::Kind;

/// The Kubernetes version reported; kubectl's dispatcher picks its 1.33 binary from it.
pub(crate) const GIT_VERSION: &str = "v1.33.1+k3s1";

pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-05-15T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

pub(crate) fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }]
    })
}

/// The API groups besides the core group, each with one version.
fn groups() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for kind in Kind::ALL {
        let info = kind.info();
        if !info.group.is_empty() && !groups.contains(&(info.group, info.version)) {
            groups.push((info.group, info.version));
        }
    }
    groups
}

fn group_json(group: &str, version: &str) -> Value {
    let gv = json!({ "groupVersion": format!("{group}/{version}"), "version": version });
    json!({ "name": group, "versions": [gv.clone()], "preferredVersion": gv })
}

pub(crate) fn api_group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|(g, v)| group_json(g, v))
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// `/apis/{group}`, if the group is served.
pub(crate) fn api_group(group: &str) -> Option<Value> {
    let (g, v) = groups().into_iter().find(|(g, _)| *g == group)?;
    let mut value = group_json(g, v);
    value["kind"] = json!("APIGroup");
    value["apiVersion"] = json!("v1");
    Some(value)
}

/// `/api/v1` or `/apis/{group}/{version}`, if served.
pub(crate) fn resource_list(group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| k.info().group == group && k.info().version == version)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for kind in kinds {
        let info = kind.info();
        resources.push(json!({
            "name": info.plural,
            "singularName": info.singular,
            "namespaced": info.namespaced,
            "kind": info.kind,
            "verbs": info.verbs,
            "shortNames": info.short_names,
        }));
        if info.has_status {
            resources.push(json!({
                "name": format!("{}/status", info.plural),
                "singularName": "",
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if kind == Kind::Pod {
            // kubectl drain looks for exactly this entry (kind Eviction, group policy, version v1).
            resources.push(json!({
                "name": "pods/eviction",
                "singularName": "",
                "namespaced": true,
                "group": "policy",
                "version": "v1",
                "kind": "Eviction",
                "verbs": ["create"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// Path key of a group version in the OpenAPI v3 index: `api/v1`, `apis/apps/v1`.
fn openapi_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

const OPENAPI_HASH: &str = "5m4rt5ca1e";

/// `/openapi/v3`: the index of per-group-version documents.
pub(crate) fn openapi_v3_index() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs = vec![("", "v1")];
    gvs.extend(groups());
    for (g, v) in gvs {
        let key = openapi_key(g, v);
        paths.insert(
            key.clone(),
            json!({ "serverRelativeURL": format!("/openapi/v3/{key}?hash={OPENAPI_HASH}") }),
        );
    }
    json!({ "paths": paths })
}

/// `/openapi/v3/{api/v1|apis/g/v}`: one PATCH operation per kind, carrying the
/// `x-kubernetes-group-version-kind` extension and the `fieldValidation` query parameter. That is
/// what kubectl's field-validation check looks for before it leaves validation to the server.
/// Schemas are not included; clients that need them (`kubectl explain`, `apply`'s merge logic)
/// are not supported.
pub(crate) fn openapi_v3_document(key: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    let mut found = false;
    for kind in Kind::ALL {
        let info = kind.info();
        if openapi_key(info.group, info.version) != key {
            continue;
        }
        found = true;
        let prefix = if info.group.is_empty() {
            format!("/api/{}", info.version)
        } else {
            format!("/apis/{}/{}", info.group, info.version)
        };
        let path = if info.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", info.plural)
        } else {
            format!("{prefix}/{}/{{name}}", info.plural)
        };
        let gvk = json!({ "group": info.group, "version": info.version, "kind": info.kind });
        let operation = |action: &str| {
            json!({
                "operationId": format!("{action}{}", info.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    { "name": "dryRun", "in": "query", "schema": { "type": "string" } },
                    { "name": "fieldManager", "in": "query", "schema": { "type": "string" } },
                    { "name": "fieldValidation", "in": "query", "schema": { "type": "string" } }
                ],
                "responses": { "200": { "description": "OK" } }
            })
        };
        paths.insert(
            path,
            json!({ "patch": operation("patch"), "put": operation("put") }),
        );
    }
    found.then(|| {
        json!({
            "openapi": "3.0.0",
            "info": { "title": "Kubernetes", "version": GIT_VERSION },
            "paths": paths,
            "components": { "schemas": {} }
        })
    })
}
