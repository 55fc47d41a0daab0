//! Label selectors, node selectors, taints and tolerations with the API machinery's exact
//! semantics (`labels.Selector`, `nodeaffinity.LazyErrorNodeSelector`, `Toleration.ToleratesTaint`).

use crate::{Error, Result};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

pub type Labels = BTreeMap<String, String>;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelReq {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelReq {
    pub fn key(&self) -> &str {
        match self {
            LabelReq::In(k, _)
            | LabelReq::NotIn(k, _)
            | LabelReq::Exists(k)
            | LabelReq::DoesNotExist(k) => k,
        }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            LabelReq::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            LabelReq::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            LabelReq::Exists(k) => labels.contains_key(k),
            LabelReq::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A compiled label selector. `nothing` is what a nil selector means where Kubernetes
/// converts it with `LabelSelectorAsSelector` (pod affinity terms, spread constraints, PDBs):
/// it matches no object. A selector with no requirements matches every object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Selector {
    pub reqs: Vec<LabelReq>,
    pub nothing: bool,
}

impl Selector {
    pub fn everything() -> Selector {
        Selector {
            reqs: Vec::new(),
            nothing: false,
        }
    }

    pub fn nothing() -> Selector {
        Selector {
            reqs: Vec::new(),
            nothing: true,
        }
    }

    /// `metav1.LabelSelectorAsSelector`: nil → nothing, `{}` → everything.
    pub fn from_k8s(sel: Option<&LabelSelector>) -> Result<Selector> {
        let Some(sel) = sel else {
            return Ok(Selector::nothing());
        };
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(LabelReq::In(k.clone(), [v.clone()].into()));
        }
        for e in sel.match_expressions.iter().flatten() {
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            reqs.push(match e.operator.as_str() {
                "In" if !values.is_empty() => LabelReq::In(e.key.clone(), values),
                "NotIn" if !values.is_empty() => LabelReq::NotIn(e.key.clone(), values),
                "Exists" if values.is_empty() => LabelReq::Exists(e.key.clone()),
                "DoesNotExist" if values.is_empty() => LabelReq::DoesNotExist(e.key.clone()),
                op => {
                    return Err(Error::Capacity(format!(
                        "label selector requirement {} {op} {values:?} is not valid",
                        e.key
                    )));
                }
            });
        }
        Ok(Selector::from_reqs(reqs))
    }

    /// A selector from requirements, in canonical order (so equal selectors compare equal).
    pub fn from_reqs(mut reqs: Vec<LabelReq>) -> Selector {
        reqs.sort();
        reqs.dedup();
        Selector {
            reqs,
            nothing: false,
        }
    }

    /// `labels.SelectorFromSet`.
    pub fn from_labels(labels: &Labels) -> Selector {
        Selector::from_reqs(
            labels
                .iter()
                .map(|(k, v)| LabelReq::In(k.clone(), [v.clone()].into()))
                .collect(),
        )
    }

    /// This selector with `key In [value]` added for each of `keys` the labels carry (the
    /// `matchLabelKeys` merge of spread constraints and affinity terms).
    pub fn with_label_keys(&self, keys: &[String], labels: &Labels) -> Selector {
        if self.nothing {
            return self.clone();
        }
        let mut reqs = self.reqs.clone();
        for k in keys {
            if let Some(v) = labels.get(k) {
                reqs.push(LabelReq::In(k.clone(), [v.clone()].into()));
            }
        }
        Selector::from_reqs(reqs)
    }

    /// This selector with `key NotIn [value]` added for each of `keys` (`mismatchLabelKeys`).
    pub fn with_mismatch_keys(&self, keys: &[String], labels: &Labels) -> Selector {
        if self.nothing {
            return self.clone();
        }
        let mut reqs = self.reqs.clone();
        for k in keys {
            if let Some(v) = labels.get(k) {
                reqs.push(LabelReq::NotIn(k.clone(), [v.clone()].into()));
            }
        }
        Selector::from_reqs(reqs)
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        !self.nothing && self.reqs.iter().all(|r| r.matches(labels))
    }

    /// `labels.Selector.Empty()`: no requirements (and not the nothing selector).
    pub fn is_empty(&self) -> bool {
        !self.nothing && self.reqs.is_empty()
    }

    /// A `key=value` every matching object must carry, if the selector has one: what the
    /// snapshot indexes selectors by.
    pub fn index_label(&self) -> Option<(&str, &str)> {
        self.reqs.iter().find_map(|r| match r {
            LabelReq::In(k, vs) if vs.len() == 1 => {
                vs.iter().next().map(|v| (k.as_str(), v.as_str()))
            }
            _ => None,
        })
    }

    /// A key every matching object must carry, if any.
    pub fn index_key(&self) -> Option<&str> {
        self.reqs.iter().find_map(|r| match r {
            LabelReq::In(k, _) | LabelReq::Exists(k) => Some(k.as_str()),
            _ => None,
        })
    }
}

/// A node selector requirement's operator (`NodeSelectorOperator`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeOp {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
    /// A requirement the API machinery cannot parse: its term never matches.
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NodeReq {
    pub key: String,
    pub op: NodeOp,
}

impl NodeReq {
    fn from_k8s(r: &core::NodeSelectorRequirement) -> NodeReq {
        let values: Vec<String> = r.values.clone().unwrap_or_default();
        let int = || match values.as_slice() {
            [v] => v.parse::<i64>().ok(),
            _ => None,
        };
        let op = match r.operator.as_str() {
            "In" if !values.is_empty() => NodeOp::In(values.iter().cloned().collect()),
            "NotIn" if !values.is_empty() => NodeOp::NotIn(values.iter().cloned().collect()),
            "Exists" if values.is_empty() => NodeOp::Exists,
            "DoesNotExist" if values.is_empty() => NodeOp::DoesNotExist,
            "Gt" => int().map_or(NodeOp::Invalid, NodeOp::Gt),
            "Lt" => int().map_or(NodeOp::Invalid, NodeOp::Lt),
            _ => NodeOp::Invalid,
        };
        NodeReq {
            key: r.key.clone(),
            op,
        }
    }

    fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match &self.op {
            NodeOp::In(vs) => v.is_some_and(|v| vs.contains(v)),
            NodeOp::NotIn(vs) => v.is_none_or(|v| !vs.contains(v)),
            NodeOp::Exists => v.is_some(),
            NodeOp::DoesNotExist => v.is_none(),
            NodeOp::Gt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            NodeOp::Lt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
            NodeOp::Invalid => false,
        }
    }
}

/// `matchFields` on `metadata.name` (the only field node selectors may use).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum FieldReq {
    NameIs(String),
    NameIsNot(String),
    Invalid,
}

/// One `NodeSelectorTerm`: its expressions and fields all hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NodeTerm {
    pub exprs: Vec<NodeReq>,
    pub fields: Vec<FieldReq>,
}

impl NodeTerm {
    /// `name` is `None` where Kubernetes matches against labels only (PV node affinity):
    /// then `matchFields` are not checked, as in `nodeSelectorTerm.match`.
    pub fn matches(&self, labels: &Labels, name: Option<&str>) -> bool {
        if self.fields.contains(&FieldReq::Invalid) {
            return false;
        }
        if !self.exprs.iter().all(|r| r.matches(labels)) {
            return false;
        }
        match name {
            Some(name) if !name.is_empty() => self.fields.iter().all(|f| match f {
                FieldReq::NameIs(n) => n == name,
                FieldReq::NameIsNot(n) => n != name,
                FieldReq::Invalid => false,
            }),
            _ => true,
        }
    }
}

/// A `NodeSelector`: terms ORed. Empty terms are dropped (they select nothing), so a selector
/// whose terms are all empty matches no node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NodeSelector {
    pub terms: Vec<NodeTerm>,
}

impl NodeSelector {
    pub fn from_k8s(ns: &core::NodeSelector) -> NodeSelector {
        let terms = ns
            .node_selector_terms
            .iter()
            .filter(|t| {
                !t.match_expressions.as_ref().is_none_or(|e| e.is_empty())
                    || !t.match_fields.as_ref().is_none_or(|f| f.is_empty())
            })
            .map(|t| {
                let exprs: Vec<NodeReq> = t
                    .match_expressions
                    .iter()
                    .flatten()
                    .map(NodeReq::from_k8s)
                    .collect();
                let fields = t
                    .match_fields
                    .iter()
                    .flatten()
                    .map(|f| {
                        let values = f.values.clone().unwrap_or_default();
                        match (f.key.as_str(), f.operator.as_str(), values.as_slice()) {
                            ("metadata.name", "In", [v]) => FieldReq::NameIs(v.clone()),
                            ("metadata.name", "NotIn", [v]) => FieldReq::NameIsNot(v.clone()),
                            _ => FieldReq::Invalid,
                        }
                    })
                    .collect();
                NodeTerm { exprs, fields }
            })
            .collect();
        NodeSelector { terms }
    }

    pub fn matches(&self, labels: &Labels, name: Option<&str>) -> bool {
        self.terms.iter().any(|t| t.matches(labels, name))
    }

    /// Label keys any term tests.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.terms
            .iter()
            .flat_map(|t| t.exprs.iter().map(|e| e.key.as_str()))
    }
}

/// `v1helper.MatchTopologySelectorTerms` for a StorageClass's `allowedTopologies`: no terms
/// allow every node; an empty term allows none.
pub fn topology_terms_match(terms: &[BTreeMap<String, BTreeSet<String>>], labels: &Labels) -> bool {
    terms.is_empty()
        || terms.iter().any(|t| {
            !t.is_empty()
                && t.iter()
                    .all(|(k, vs)| labels.get(k).is_some_and(|v| vs.contains(v)))
        })
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

impl Taint {
    pub fn from_k8s(t: &core::Taint) -> Taint {
        Taint {
            key: t.key.clone(),
            value: t.value.clone().unwrap_or_default(),
            effect: t.effect.clone(),
        }
    }

    /// `key[=value]:Effect`, the form of `--register-with-taints` and of cluster-autoscaler's
    /// taint tags (`value:Effect` with the key from the tag name).
    pub fn parse(key: &str, value_effect: &str) -> Result<Taint> {
        let (value, effect) = value_effect.rsplit_once(':').ok_or_else(|| {
            Error::Capacity(format!(
                "taint {key}={value_effect:?} has no :Effect (NoSchedule, PreferNoSchedule or NoExecute)"
            ))
        })?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(Error::Capacity(format!(
                "taint {key}={value_effect:?}: effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
            )));
        }
        Ok(Taint {
            key: key.to_string(),
            value: value.to_string(),
            effect: effect.to_string(),
        })
    }

    /// NoSchedule and NoExecute keep pods off (`DoNotScheduleTaintsFilterFunc`).
    pub fn blocks_scheduling(&self) -> bool {
        self.effect == "NoSchedule" || self.effect == "NoExecute"
    }
}

/// A pod toleration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Toleration {
    pub key: String,
    /// `Equal` (also for an empty operator) or `Exists`; anything else tolerates nothing.
    pub operator: String,
    pub value: String,
    /// Empty: every effect.
    pub effect: String,
}

impl Toleration {
    pub fn from_k8s(t: &core::Toleration) -> Toleration {
        Toleration {
            key: t.key.clone().unwrap_or_default(),
            operator: t.operator.clone().unwrap_or_default(),
            value: t.value.clone().unwrap_or_default(),
            effect: t.effect.clone().unwrap_or_default(),
        }
    }

    pub fn exists(key: &str, effect: &str) -> Toleration {
        Toleration {
            key: key.to_string(),
            operator: "Exists".to_string(),
            value: String::new(),
            effect: effect.to_string(),
        }
    }

    /// `Toleration.ToleratesTaint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != taint.effect {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator.as_str() {
            "" | "Equal" => self.value == taint.value,
            "Exists" => true,
            _ => false,
        }
    }
}

/// The first NoSchedule/NoExecute taint none of the tolerations tolerates.
pub fn untolerated<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| t.blocks_scheduling())
        .find(|t| !tolerations.iter().any(|tol| tol.tolerates(t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(v: serde_json::Value) -> Selector {
        Selector::from_k8s(Some(&serde_json::from_value(v).unwrap())).unwrap()
    }

    // https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors:
    // matchLabels and matchExpressions are ANDed; NotIn and DoesNotExist match objects
    // without the key; an empty selector matches everything, a nil one (in the APIs that
    // convert with LabelSelectorAsSelector) nothing.
    #[test]
    fn label_selectors_follow_the_api_semantics() {
        let s = sel(json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}));
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("app", "api")])));
        assert!(sel(json!({})).matches(&labels(&[])));
        assert!(sel(json!({})).is_empty());
        assert!(!Selector::from_k8s(None).unwrap().matches(&labels(&[])));
        let bad: LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key": "a", "operator": "Near", "values": ["b"]}]}),
        )
        .unwrap();
        assert!(Selector::from_k8s(Some(&bad)).is_err());
        assert_eq!(s.index_label(), Some(("app", "web")));
    }

    #[test]
    fn label_keys_are_merged_into_the_selector() {
        let s = sel(json!({"matchLabels": {"app": "web"}}));
        let pod = labels(&[("app", "web"), ("pod-template-hash", "abc")]);
        let merged = s.with_label_keys(&["pod-template-hash".into(), "missing".into()], &pod);
        assert!(merged.matches(&pod));
        assert!(!merged.matches(&labels(&[("app", "web"), ("pod-template-hash", "old")])));
    }

    fn node_selector(v: serde_json::Value) -> NodeSelector {
        NodeSelector::from_k8s(&serde_json::from_value(v).unwrap())
    }

    // https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#node-affinity:
    // terms are ORed, expressions in a term ANDed; Gt/Lt compare the label as an integer;
    // matchFields supports metadata.name.
    #[test]
    fn node_selectors_or_terms_and_expressions() {
        let ns = node_selector(json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]},
                                  {"key": "cores", "operator": "Gt", "values": ["3"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]}
        ]}));
        assert!(ns.matches(&labels(&[("zone", "a"), ("cores", "4")]), Some("n1")));
        assert!(!ns.matches(&labels(&[("zone", "a"), ("cores", "3")]), Some("n1")));
        assert!(!ns.matches(&labels(&[("zone", "a"), ("cores", "many")]), Some("n1")));
        assert!(ns.matches(&labels(&[]), Some("special")));
        let lt = node_selector(json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gen", "operator": "Lt", "values": ["5"]},
                                  {"key": "spot", "operator": "DoesNotExist"}]}]}));
        assert!(lt.matches(&labels(&[("gen", "4")]), None));
        assert!(!lt.matches(&labels(&[("gen", "4"), ("spot", "")]), None));
        assert!(!lt.matches(&labels(&[]), None), "Lt needs the label");
    }

    #[test]
    fn empty_terms_select_nothing_and_bad_terms_never_match() {
        let empty = node_selector(json!({"nodeSelectorTerms": [{}]}));
        assert!(!empty.matches(&labels(&[("a", "b")]), Some("n")));
        let invalid = node_selector(json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["x"]}]},
            {"matchExpressions": [{"key": "a", "operator": "Exists"}]}]}));
        assert!(invalid.matches(&labels(&[("a", "b")]), Some("n")));
        assert!(!invalid.matches(&labels(&[]), Some("n")));
    }

    // PV node affinity is checked against the node's labels only (volume.CheckNodeAffinity
    // builds a Node with labels and no name), so matchFields never rule a node out there.
    #[test]
    fn match_fields_are_skipped_without_a_name() {
        let ns = node_selector(json!({"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["x"]}]}]}));
        assert!(ns.matches(&labels(&[]), None));
        assert!(!ns.matches(&labels(&[]), Some("y")));
    }

    // https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/: an empty
    // key with Exists tolerates everything; Equal compares values; an empty effect matches
    // every effect; PreferNoSchedule never keeps a pod off.
    #[test]
    fn tolerations_match_taints() {
        let taint = Taint::parse("gpu", "true:NoSchedule").unwrap();
        let tol = |v: serde_json::Value| Toleration::from_k8s(&serde_json::from_value(v).unwrap());
        assert!(tol(json!({"key": "gpu", "operator": "Equal", "value": "true"})).tolerates(&taint));
        assert!(
            tol(json!({"key": "gpu", "value": "true", "effect": "NoSchedule"})).tolerates(&taint)
        );
        assert!(!tol(json!({"key": "gpu", "value": "false"})).tolerates(&taint));
        assert!(
            !tol(json!({"key": "gpu", "operator": "Exists", "effect": "NoExecute"}))
                .tolerates(&taint)
        );
        assert!(tol(json!({"operator": "Exists"})).tolerates(&taint));
        let soft = Taint::parse("x", ":PreferNoSchedule").unwrap();
        assert!(untolerated(std::slice::from_ref(&soft), &[]).is_none());
        assert_eq!(untolerated(&[soft, taint.clone()], &[]), Some(&taint));
        assert!(Taint::parse("x", "true").is_err());
        assert!(Taint::parse("x", "true:Sometimes").is_err());
    }

    #[test]
    fn allowed_topologies() {
        let terms = vec![BTreeMap::from([(
            "topology.kubernetes.io/zone".to_string(),
            BTreeSet::from(["a".to_string()]),
        )])];
        assert!(topology_terms_match(&[], &labels(&[])));
        assert!(topology_terms_match(
            &terms,
            &labels(&[("topology.kubernetes.io/zone", "a")])
        ));
        assert!(!topology_terms_match(
            &terms,
            &labels(&[("topology.kubernetes.io/zone", "b")])
        ));
        assert!(!topology_terms_match(&[BTreeMap::new()], &labels(&[])));
    }
}
