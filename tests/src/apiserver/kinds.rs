//! The resource kinds the fake server serves, their API coordinates, and strict decoding of request
//! bodies into the `k8s-openapi` types.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod};
use k8s_openapi::api::events::v1::Event as EventV1;
use k8s_openapi::api::policy::v1::{Eviction, PodDisruptionBudget};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::status::{ApiError, ResourceName};

/// A resource kind served by the fake API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Namespace,
    Node,
    Pod,
    Event,
    DaemonSet,
    PodDisruptionBudget,
    Lease,
    /// `events.k8s.io/v1` Event (what kube-runtime's event recorder writes).
    EventV1,
}

/// Static facts about a kind, used by routing, discovery and messages.
pub(crate) struct KindInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// Whether `status` is a separate subresource (main-resource writes keep the old status).
    pub has_status: bool,
    /// Whether `metadata.generation` tracks spec changes.
    pub has_generation: bool,
}

const ALL_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Event,
        Kind::DaemonSet,
        Kind::PodDisruptionBudget,
        Kind::Lease,
        Kind::EventV1,
    ];

    pub fn info(self) -> &'static KindInfo {
        match self {
            Kind::Namespace => &KindInfo {
                group: "",
                version: "v1",
                kind: "Namespace",
                plural: "namespaces",
                singular: "namespace",
                namespaced: false,
                short_names: &["ns"],
                verbs: ALL_VERBS,
                has_status: true,
                has_generation: false,
            },
            Kind::Node => &KindInfo {
                group: "",
                version: "v1",
                kind: "Node",
                plural: "nodes",
                singular: "node",
                namespaced: false,
                short_names: &["no"],
                verbs: ALL_VERBS,
                has_status: true,
                has_generation: false,
            },
            Kind::Pod => &KindInfo {
                group: "",
                version: "v1",
                kind: "Pod",
                plural: "pods",
                singular: "pod",
                namespaced: true,
                short_names: &["po"],
                verbs: ALL_VERBS,
                has_status: true,
                has_generation: false,
            },
            Kind::Event => &KindInfo {
                group: "",
                version: "v1",
                kind: "Event",
                plural: "events",
                singular: "event",
                namespaced: true,
                short_names: &["ev"],
                verbs: ALL_VERBS,
                has_status: false,
                has_generation: false,
            },
            Kind::DaemonSet => &KindInfo {
                group: "apps",
                version: "v1",
                kind: "DaemonSet",
                plural: "daemonsets",
                singular: "daemonset",
                namespaced: true,
                short_names: &["ds"],
                verbs: ALL_VERBS,
                has_status: true,
                has_generation: true,
            },
            Kind::PodDisruptionBudget => &KindInfo {
                group: "policy",
                version: "v1",
                kind: "PodDisruptionBudget",
                plural: "poddisruptionbudgets",
                singular: "poddisruptionbudget",
                namespaced: true,
                short_names: &["pdb"],
                verbs: ALL_VERBS,
                has_status: true,
                has_generation: true,
            },
            Kind::EventV1 => &KindInfo {
                group: "events.k8s.io",
                version: "v1",
                kind: "Event",
                plural: "events",
                singular: "event",
                namespaced: true,
                short_names: &["ev"],
                verbs: ALL_VERBS,
                has_status: false,
                has_generation: false,
            },
            Kind::Lease => &KindInfo {
                group: "coordination.k8s.io",
                version: "v1",
                kind: "Lease",
                plural: "leases",
                singular: "lease",
                namespaced: true,
                short_names: &[],
                verbs: ALL_VERBS,
                has_status: false,
                has_generation: false,
            },
        }
    }

    /// `v1` or `apps/v1`.
    pub fn api_version(self) -> String {
        let info = self.info();
        if info.group.is_empty() {
            info.version.to_string()
        } else {
            format!("{}/{}", info.group, info.version)
        }
    }

    pub fn resource(self) -> ResourceName<'static> {
        ResourceName {
            plural: self.info().plural,
            group: self.info().group,
        }
    }

    /// The kind served at `/api/v1/{plural}` (group "") or `/apis/{group}/{version}/{plural}`.
    pub fn from_path(group: &str, version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| {
            let info = k.info();
            info.group == group && info.version == version && info.plural == plural
        })
    }

    /// Parse `value` strictly into this kind's `k8s-openapi` type and serialize it back, so what is
    /// stored holds only fields the real API knows. Returns the normalised object and the paths of
    /// unknown fields that were dropped.
    pub fn decode(self, value: Value) -> Result<(Value, Vec<String>), ApiError> {
        let result = match self {
            Kind::Namespace => decode_as::<Namespace>(value),
            Kind::Node => decode_as::<Node>(value),
            Kind::Pod => decode_as::<Pod>(value),
            Kind::Event => decode_as::<Event>(value),
            Kind::DaemonSet => decode_as::<DaemonSet>(value),
            Kind::PodDisruptionBudget => decode_as::<PodDisruptionBudget>(value),
            Kind::Lease => decode_as::<Lease>(value),
            Kind::EventV1 => decode_as::<EventV1>(value),
        };
        result.map_err(|e| ApiError::bad_request(format!("{}: {e}", self.decode_context())))
    }

    /// How kube-apiserver introduces a decoding error: `Pod in version "v1" cannot be handled as a Pod`.
    pub fn decode_context(self) -> String {
        let info = self.info();
        format!(
            "{} in version \"{}\" cannot be handled as a {}",
            info.kind, info.version, info.kind
        )
    }
}

/// How the request asked unknown fields to be treated (`fieldValidation` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation {other:?} is invalid: must be one of Ignore, Warn, Strict"
            ))),
        }
    }

    /// Apply the directive to the unknown fields found while decoding: an error for `Strict`
    /// (introduced by `context`, e.g. [`Kind::decode_context`]), warnings (for the `Warning`
    /// header) for `Warn`.
    pub fn check(self, unknown: &[String], context: &str) -> Result<Vec<String>, ApiError> {
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        let described: Vec<String> = unknown
            .iter()
            .map(|path| format!("unknown field \"{path}\""))
            .collect();
        match self {
            FieldValidation::Ignore => Ok(Vec::new()),
            FieldValidation::Warn => Ok(described),
            FieldValidation::Strict => Err(ApiError::bad_request(format!(
                "{context}: strict decoding error: {}",
                described.join(", ")
            ))),
        }
    }
}

/// Decode request JSON text into a `Value`, reporting syntax errors as 400 like the real server.
pub(crate) fn parse_json(body: &[u8], what: &str) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "{what}: couldn't get version/kind; json parse error: {e}"
        ))
    })
}

/// Strictly decode an `Eviction` body; unknown fields are reported like other bodies.
pub(crate) fn decode_eviction(value: Value) -> Result<(Eviction, Vec<String>), ApiError> {
    decode_typed::<Eviction>(value).map_err(|e| {
        ApiError::bad_request(format!(
            "Eviction in version \"v1\" cannot be handled as a Eviction: {e}"
        ))
    })
}

/// Strictly decode a `DeleteOptions` body.
pub(crate) fn decode_delete_options(
    value: Value,
) -> Result<(DeleteOptions, Vec<String>), ApiError> {
    decode_typed::<DeleteOptions>(value).map_err(|e| {
        ApiError::bad_request(format!(
            "DeleteOptions in version \"v1\" cannot be handled as a DeleteOptions: {e}"
        ))
    })
}

fn decode_as<T: DeserializeOwned + Serialize>(
    value: Value,
) -> Result<(Value, Vec<String>), String> {
    let (typed, unknown) = decode_typed::<T>(value)?;
    let normalised = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    Ok((normalised, unknown))
}

/// Deserialize with the path of the first type error and the paths of all ignored (unknown) fields.
fn decode_typed<T: DeserializeOwned>(value: Value) -> Result<(T, Vec<String>), String> {
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(format_path(&path));
    let deserializer = serde_ignored::Deserializer::new(value, &mut record);
    let typed: T = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    Ok((typed, unknown))
}

/// `spec.containers[0].foo`, as kube-apiserver names a field.
fn format_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", format_path(parent)),
        Path::Map { parent, key } => {
            let parent = format_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => format_path(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_reported_with_their_path() {
        let (value, unknown) = Kind::Pod
            .decode(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "bogus": 1},
                "spec": {"containers": [{"name": "c", "image": "i", "colour": "red"}]}
            }))
            .expect("decodes");
        assert_eq!(unknown, vec!["metadata.bogus", "spec.containers[0].colour"]);
        assert!(value["metadata"].get("bogus").is_none());
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = Kind::Pod
            .decode(json!({"metadata": {"name": "p"}, "spec": {"containers": "nope"}}))
            .expect_err("rejects");
        assert_eq!(err.code, 400);
        assert!(err.message.contains("spec.containers"), "{}", err.message);
    }

    #[test]
    fn strict_validation_fails_on_unknown_fields() {
        let err = FieldValidation::Strict
            .check(&["spec.foo".to_string()], &Kind::Pod.decode_context())
            .expect_err("strict");
        assert_eq!(
            err.message,
            "Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: unknown field \"spec.foo\""
        );
    }
}
