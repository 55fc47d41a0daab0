//! Label selectors (query string and `metav1.LabelSelector`), field selectors, node selectors and
//! taint tolerations, matched the way the API server and scheduler match them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::kinds::Kind;
use super::status::ApiError;

/// One requirement of a query-string label selector.
#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed `labelSelector` query parameter. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelQuery(Vec<LabelReq>);

impl LabelQuery {
    /// Parse `a=b,c!=d,e in (f,g),!h,i` (the grammar of `labels.Parse`).
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_label_req(part).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unable to parse requirement: found '{part}', expected a label selector requirement"
                ))
            })?);
        }
        Ok(LabelQuery(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|req| match req {
            LabelReq::Eq(k, v) => labels.get(k) == Some(v),
            LabelReq::NotEq(k, v) => labels.get(k) != Some(v),
            LabelReq::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelReq::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            LabelReq::Exists(k) => labels.contains_key(k),
            LabelReq::NotExists(k) => !labels.contains_key(k),
            LabelReq::Gt(k, n) => labels
                .get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            LabelReq::Lt(k, n) => labels
                .get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        })
    }
}

/// Split on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_label_req(part: &str) -> Option<LabelReq> {
    let valid_key = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    let valid_value = |v: &str| {
        v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        return valid_key(key).then(|| LabelReq::NotExists(key.to_string()));
    }
    for (op, build) in [
        ("!=", LabelReq::NotEq as fn(String, String) -> LabelReq),
        ("==", LabelReq::Eq),
        ("=", LabelReq::Eq),
    ] {
        if let Some((k, v)) = part.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            return (valid_key(k) && valid_value(v)).then(|| build(k.to_string(), v.to_string()));
        }
    }
    for (op, gt) in [(">", true), ("<", false)] {
        if let Some((k, v)) = part.split_once(op) {
            let (k, n) = (k.trim(), v.trim().parse::<i64>().ok()?);
            if !valid_key(k) {
                return None;
            }
            return Some(if gt {
                LabelReq::Gt(k.to_string(), n)
            } else {
                LabelReq::Lt(k.to_string(), n)
            });
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let key = words[0].trim();
        let rest = words[1].trim();
        let (negate, list) = if let Some(list) = rest.strip_prefix("notin") {
            (true, list)
        } else if let Some(list) = rest.strip_prefix("in") {
            (false, list)
        } else {
            return None;
        };
        let inner = list.trim().strip_prefix('(')?.strip_suffix(')')?;
        let values: Vec<String> = inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        if !valid_key(key) || !values.iter().all(|v| valid_value(v)) {
            return None;
        }
        return Some(if negate {
            LabelReq::NotIn(key.to_string(), values)
        } else {
            LabelReq::In(key.to_string(), values)
        });
    }
    valid_key(part).then(|| LabelReq::Exists(part.to_string()))
}

/// Whether a `metav1.LabelSelector` selects `labels`. An empty selector selects everything.
pub(crate) fn label_selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|expr| {
        let values = expr.values.clone().unwrap_or_default();
        let label = labels.get(&expr.key);
        match expr.operator.as_str() {
            "In" => label.is_some_and(|l| values.contains(l)),
            "NotIn" => label.is_none_or(|l| !values.contains(l)),
            "Exists" => label.is_some(),
            "DoesNotExist" => label.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// One `field=value` or `field!=value` term of a field selector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldReq {
    pub field: String,
    pub equal: bool,
    pub value: String,
}

/// A parsed `fieldSelector` query parameter.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldQuery(pub Vec<FieldReq>);

impl FieldQuery {
    /// Parse `a=b,c==d,e!=f` and check every field is one the kind supports (else 400 as the real
    /// server answers: `field label not supported`).
    pub fn parse(text: &str, kind: Kind) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in split_unescaped(text, ',') {
            if part.trim().is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            let field = field.trim().to_string();
            if !supported_fields(kind).contains(&field.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push(FieldReq {
                field,
                equal,
                value: unescape(value.trim()),
            });
        }
        Ok(FieldQuery(reqs))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0
            .iter()
            .all(|req| (field_value(object, &req.field) == req.value) == req.equal)
    }

    /// The value of an `=` requirement on `field`, if there is one.
    pub fn equality(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|r| r.field == field && r.equal)
            .map(|r| r.value.as_str())
    }
}

fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            if let Some(last) = parts.last_mut() {
                last.push('\\');
                last.push(c);
            }
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(String::new());
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in text.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

/// The fields each kind's field selectors accept (as registered by kube-apiserver).
fn supported_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Pod => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        Kind::Node => &["metadata.name", "spec.unschedulable"],
        Kind::Namespace => &["metadata.name", "status.phase"],
        Kind::Event => &[
            "metadata.name",
            "metadata.namespace",
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        Kind::DaemonSet | Kind::PodDisruptionBudget | Kind::Lease => {
            &["metadata.name", "metadata.namespace"]
        }
        Kind::EventV1 => &[
            "metadata.name",
            "metadata.namespace",
            "reason",
            "type",
            "reportingController",
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
        ],
    }
}

/// The string a field selector compares: missing fields are "", booleans "true"/"false".
fn field_value(object: &Value, field: &str) -> String {
    let value = field.split('.').try_fold(object, |v, key| v.get(key));
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => match field {
            "spec.unschedulable" | "spec.hostNetwork" => "false".to_string(),
            "source" => object
                .pointer("/source/component")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        },
    }
}

/// Whether a node selector requirement (`matchExpressions` on labels) holds.
pub(crate) fn node_requirement_matches(
    req: &NodeSelectorRequirement,
    value: Option<&String>,
) -> bool {
    let values = req.values.clone().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether `toleration` tolerates `taint` (the scheduler's `ToleratesTaint`).
pub(crate) fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        _ => {
            !key.is_empty()
                && toleration.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_queries() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        for (q, want) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("tier,!missing", true),
            ("missing", false),
            ("n>4,n<6", true),
            ("", true),
        ] {
            assert_eq!(LabelQuery::parse(q).expect(q).matches(&l), want, "{q}");
        }
        assert!(LabelQuery::parse("app in web").is_err());
    }

    #[test]
    fn field_queries() {
        let pod = json!({"metadata": {"name": "p", "namespace": "default"},
                         "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let q = FieldQuery::parse("spec.nodeName=n1,status.phase!=Succeeded", Kind::Pod)
            .expect("parses");
        assert!(q.matches(&pod));
        assert_eq!(q.equality("spec.nodeName"), Some("n1"));
        let q = FieldQuery::parse("spec.nodeName==n2", Kind::Pod).expect("parses");
        assert!(!q.matches(&pod));
        let err = FieldQuery::parse("spec.bogus=1", Kind::Pod).expect_err("unsupported");
        assert_eq!(err.message, "field label not supported: spec.bogus");
        let node = json!({"metadata": {"name": "n"}, "spec": {}});
        assert!(
            FieldQuery::parse("spec.unschedulable=false", Kind::Node)
                .expect("p")
                .matches(&node)
        );
    }
}
