//! Authentication by bearer token and the authorization a kubelet identity gets.
//!
//! What is modelled (Kubernetes 1.33: the Node authorizer with `AuthorizeNodeWithSelectors`, beta
//! and on by default, plus the NodeRestriction admission plugin, as K3s runs them) for a user named
//! `system:node:<name>`:
//! - nodes: `get` only its own Node; `list`/`watch` only with `fieldSelector=metadata.name=<name>`;
//!   `create`, `update`, `patch` (also `nodes/status`) only its own Node, and never a change of its
//!   taints or of `node-restriction.kubernetes.io/` or unknown `kubernetes.io`/`k8s.io` labels;
//!   no `delete`.
//! - pods: `get` only pods bound to it; `list`/`watch` only with `fieldSelector=spec.nodeName=<name>`;
//!   `create` only mirror pods bound to it and owned by its Node; `delete` only pods bound to it;
//!   `pods/status` only of pods bound to it; `pods/eviction` only for pods bound to it; no
//!   `update`/`patch` of the pod itself.
//! - events: `create`, `update`, `patch`.
//! - leases in `kube-node-lease`: only the one named after the node.
//! - nothing else (namespaces, DaemonSets, PodDisruptionBudgets are forbidden).
//!
//! Every other authenticated user is an administrator. Discovery, `/version` and OpenAPI are open to
//! all authenticated users; `/version` and the health endpoints also to anonymous ones.

use std::collections::BTreeSet;

use axum::http::{HeaderMap, header};
use serde_json::Value;

use super::kinds::Kind;
use super::selectors::FieldQuery;
use super::state::{Shared, World};
use super::status::ApiError;
use super::store::{self, labels};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum User {
    /// No tokens are configured: everyone is an administrator.
    Anonymous,
    Named(String),
}

impl User {
    pub fn name(&self) -> &str {
        match self {
            User::Anonymous => "system:anonymous",
            User::Named(name) => name,
        }
    }

    /// The node name of a kubelet identity (`system:node:<name>`).
    pub fn node(&self) -> Option<&str> {
        match self {
            User::Named(name) => name.strip_prefix("system:node:").filter(|n| !n.is_empty()),
            User::Anonymous => None,
        }
    }
}

/// Identify the caller from `Authorization: Bearer <token>`; 401 if tokens are configured and the
/// request carries none of them.
pub(crate) fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<User, ApiError> {
    if shared.tokens.is_empty() {
        return Ok(User::Anonymous);
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match token.and_then(|t| shared.tokens.get(t)) {
        Some(user) => Ok(User::Named(user.clone())),
        None => Err(ApiError::unauthorized()),
    }
}

/// One request as the authorizer sees it.
pub(crate) struct Attributes<'a> {
    pub verb: &'a str,
    pub kind: Kind,
    pub subresource: Option<&'a str>,
    pub namespace: &'a str,
    pub name: &'a str,
    pub fields: &'a FieldQuery,
}

impl Attributes<'_> {
    fn resource(&self) -> String {
        match self.subresource {
            Some(sub) => format!("{}/{sub}", self.kind.info().plural),
            None => self.kind.info().plural.to_string(),
        }
    }

    /// The RBAC-style refusal: `User "x" cannot get resource "nodes" in API group "" at the cluster scope: why`.
    fn deny(&self, user: &User, why: &str) -> ApiError {
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{}\"", self.namespace)
        };
        let mut reason = format!(
            "User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
            user.name(),
            self.verb,
            self.resource(),
            self.kind.info().group
        );
        if !why.is_empty() {
            reason.push_str(": ");
            reason.push_str(why);
        }
        ApiError::forbidden(self.kind.resource(), self.name, reason)
    }
}

fn pod_node<'a>(world: &'a World, namespace: &str, name: &str) -> Option<&'a str> {
    world
        .store
        .get(Kind::Pod, namespace, name)?
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
}

/// The Node authorizer: may this user make this request at all?
pub(crate) fn authorize(
    user: &User,
    attrs: &Attributes<'_>,
    world: &World,
) -> Result<(), ApiError> {
    let Some(node) = user.node() else {
        return Ok(());
    };
    let allowed = match (attrs.kind, attrs.subresource, attrs.verb) {
        (Kind::Node, None | Some("status"), "get") => {
            if attrs.name == node {
                Ok(())
            } else {
                Err(format!(
                    "node '{node}' cannot read '{}', only its own Node object",
                    attrs.name
                ))
            }
        }
        (Kind::Node, None, "list" | "watch") => {
            if attrs.fields.equality("metadata.name") == Some(node) {
                Ok(())
            } else {
                Err(format!(
                    "node '{node}' cannot read all nodes, only its own Node object"
                ))
            }
        }
        (Kind::Node, None, "create" | "update" | "patch")
        | (Kind::Node, Some("status"), "update" | "patch") => Ok(()),
        (Kind::Pod, None, "get") => {
            if pod_node(world, attrs.namespace, attrs.name) == Some(node) {
                Ok(())
            } else {
                Err(format!(
                    "no relationship found between node '{node}' and this object"
                ))
            }
        }
        (Kind::Pod, None, "list" | "watch") => {
            if attrs.fields.equality("spec.nodeName") == Some(node) {
                Ok(())
            } else {
                Err("can only list/watch pods with spec.nodeName field selector".to_string())
            }
        }
        (Kind::Pod, None, "create" | "delete")
        | (Kind::Pod, Some("status"), "update" | "patch")
        | (Kind::Pod, Some("eviction"), "create") => Ok(()),
        (Kind::Event | Kind::EventV1, None, "create" | "update" | "patch") => Ok(()),
        (Kind::Lease, None, verb) if attrs.namespace == "kube-node-lease" => {
            let name = if attrs.name.is_empty() {
                attrs.fields.equality("metadata.name").unwrap_or_default()
            } else {
                attrs.name
            };
            if verb == "create" || name == node {
                Ok(())
            } else {
                Err(
                    "can only access node lease with the same name as the requesting node"
                        .to_string(),
                )
            }
        }
        _ => Err(String::new()),
    };
    allowed.map_err(|why| attrs.deny(user, &why))
}

/// NodeRestriction admission for writes by a kubelet identity. `new` is the object as it would be
/// stored (or the request body for creates and evictions), `old` the stored object.
pub(crate) fn admit(
    user: &User,
    attrs: &Attributes<'_>,
    new: Option<&Value>,
    old: Option<&Value>,
    world: &World,
) -> Result<(), ApiError> {
    let Some(node) = user.node() else {
        return Ok(());
    };
    let forbid = |why: String| Err(ApiError::forbidden(attrs.kind.resource(), attrs.name, why));
    match attrs.kind {
        Kind::Node => {
            let target = if attrs.name.is_empty() {
                new.map(store::name).unwrap_or_default()
            } else {
                attrs.name
            };
            if target != node {
                return forbid(format!(
                    "node \"{node}\" is not allowed to modify node \"{target}\""
                ));
            }
            let new_labels = new.map(labels).unwrap_or_default();
            let old_labels = old.map(labels).unwrap_or_default();
            let forbidden: BTreeSet<&String> = new_labels
                .iter()
                .filter(|(k, v)| old_labels.get(*k) != Some(*v))
                .map(|(k, _)| k)
                .chain(old_labels.keys().filter(|k| !new_labels.contains_key(*k)))
                .filter(|k| forbidden_label(k))
                .collect();
            if !forbidden.is_empty() {
                let list: Vec<&str> = forbidden.iter().map(|s| s.as_str()).collect();
                return if attrs.verb == "create" {
                    forbid(format!(
                        "node \"{node}\" is not allowed to set the following labels: {}",
                        list.join(", ")
                    ))
                } else {
                    forbid(format!(
                        "is not allowed to modify labels: {}",
                        list.join(", ")
                    ))
                };
            }
            if attrs.verb != "create" {
                let taints = |v: Option<&Value>| {
                    v.and_then(|v| v.pointer("/spec/taints"))
                        .cloned()
                        .unwrap_or(Value::Null)
                };
                let normalise = |t: Value| {
                    if t == Value::Array(Vec::new()) {
                        Value::Null
                    } else {
                        t
                    }
                };
                if normalise(taints(new)) != normalise(taints(old)) {
                    return forbid(format!("node \"{node}\" is not allowed to modify taints"));
                }
            }
            Ok(())
        }
        Kind::Pod => match (attrs.subresource, attrs.verb) {
            (None, "create") => {
                let pod = new.cloned().unwrap_or(Value::Null);
                let mirror = pod
                    .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
                    .is_some();
                if !mirror {
                    return forbid(format!(
                        "pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"
                    ));
                }
                if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
                    return forbid(format!(
                        "node \"{node}\" can only create pods with spec.nodeName set to itself"
                    ));
                }
                let owners = pod
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let owned_by_node = owners.len() == 1
                    && owners[0].get("kind").and_then(Value::as_str) == Some("Node")
                    && owners[0].get("name").and_then(Value::as_str) == Some(node)
                    && owners[0].get("controller").and_then(Value::as_bool) == Some(true);
                if !owned_by_node {
                    return forbid(format!(
                        "node \"{node}\" can only create pods with an owner reference set to itself"
                    ));
                }
                Ok(())
            }
            (None, "delete") => match pod_node(world, attrs.namespace, attrs.name) {
                _ if world
                    .store
                    .get(Kind::Pod, attrs.namespace, attrs.name)
                    .is_none() =>
                {
                    Err(ApiError::not_found(Kind::Pod.resource(), attrs.name))
                }
                Some(n) if n == node => Ok(()),
                _ => forbid(format!(
                    "node \"{node}\" can only delete pods with spec.nodeName set to itself"
                )),
            },
            (Some("status"), _) => {
                if old
                    .and_then(|o| o.pointer("/spec/nodeName"))
                    .and_then(Value::as_str)
                    != Some(node)
                {
                    return forbid(format!(
                        "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
                    ));
                }
                if new.map(labels) != old.map(labels) {
                    return forbid(format!(
                        "node \"{node}\" cannot update labels through pod status"
                    ));
                }
                Ok(())
            }
            (Some("eviction"), _) => match pod_node(world, attrs.namespace, attrs.name) {
                _ if world
                    .store
                    .get(Kind::Pod, attrs.namespace, attrs.name)
                    .is_none() =>
                {
                    Err(ApiError::not_found(Kind::Pod.resource(), attrs.name))
                }
                Some(n) if n == node => Ok(()),
                _ => forbid(format!(
                    "node {node} can only evict pods with spec.nodeName set to itself"
                )),
            },
            _ => Ok(()),
        },
        Kind::Lease => {
            let target = new.map(store::name).unwrap_or(attrs.name);
            if attrs.namespace == "kube-node-lease" && target == node {
                Ok(())
            } else {
                forbid(format!(
                    "node \"{node}\" is not allowed to modify lease \"{target}\""
                ))
            }
        }
        _ => Ok(()),
    }
}

/// Labels a kubelet may not set on its Node (NodeRestriction's `getForbiddenLabels`).
fn forbidden_label(key: &str) -> bool {
    let Some((namespace, _)) = key.split_once('/') else {
        return false;
    };
    let in_domain =
        |domain: &str| namespace == domain || namespace.ends_with(&format!(".{domain}"));
    if in_domain("node-restriction.kubernetes.io") {
        return true;
    }
    if !(in_domain("kubernetes.io") || in_domain("k8s.io")) {
        return false;
    }
    const KUBELET_LABELS: &[&str] = &[
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    let kubelet_namespace = in_domain("kubelet.kubernetes.io") || in_domain("node.kubernetes.io");
    !(KUBELET_LABELS.contains(&key) || kubelet_namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_labels() {
        assert!(!forbidden_label("topology.kubernetes.io/zone"));
        assert!(!forbidden_label("node.kubernetes.io/instance-type"));
        assert!(!forbidden_label("smartscale.io/capacity-type"));
        assert!(!forbidden_label("plain"));
        assert!(forbidden_label("node-role.kubernetes.io/worker"));
        assert!(forbidden_label("node-restriction.kubernetes.io/pool"));
        assert!(forbidden_label("example.k8s.io/x"));
    }

    #[test]
    fn node_identity() {
        assert_eq!(User::Named("system:node:a".into()).node(), Some("a"));
        assert_eq!(User::Named("admin".into()).node(), None);
        assert_eq!(User::Anonymous.node(), None);
    }
}
