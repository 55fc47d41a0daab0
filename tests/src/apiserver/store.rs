//! The object store: every object as normalised JSON, one global resourceVersion counter, and the
//! recent change history that watches resume from.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

use super::kinds::Kind;

/// How many past changes a watch can resume from; older resourceVersions get 410 Gone.
const HISTORY_LIMIT: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it. `old` is the previous state for MODIFIED (to tell objects that
/// move into or out of a watch's selection).
#[derive(Debug)]
pub(crate) struct StoredEvent {
    pub kind: Kind,
    pub event_type: EventType,
    pub rv: u64,
    pub object: Value,
    pub old: Option<Value>,
}

pub(crate) struct Store {
    objects: BTreeMap<Kind, BTreeMap<(String, String), Value>>,
    rv: u64,
    history: VecDeque<Arc<StoredEvent>>,
    /// The highest resourceVersion whose event was dropped from `history`.
    compacted: u64,
    tx: broadcast::Sender<Arc<StoredEvent>>,
    /// Typed copies of stored objects by key, with the resourceVersion they were decoded at, so
    /// the simulated controllers do not decode unchanged objects again and again.
    decoded: HashMap<ObjectKey, (u64, Box<dyn Any + Send>)>,
}

/// Kind, namespace ("" for cluster-scoped kinds), name.
type ObjectKey = (Kind, String, String);

impl Store {
    pub fn new(tx: broadcast::Sender<Arc<StoredEvent>>) -> Self {
        Store {
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            compacted: 0,
            tx,
            decoded: HashMap::new(),
        }
    }

    /// The current (latest) resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&kind)?
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Objects of a kind, in one namespace or all, ordered by namespace and name.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<&Value> {
        self.objects
            .get(&kind)
            .map(|objects| {
                objects
                    .iter()
                    .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
                    .map(|(_, v)| v)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Typed copies of all objects of a kind (stored objects always decode; any that would not are
    /// skipped). Decodings are cached per resourceVersion.
    pub fn typed<T: DeserializeOwned + Clone + Send + 'static>(&mut self, kind: Kind) -> Vec<T> {
        let Store {
            objects, decoded, ..
        } = self;
        let mut out = Vec::new();
        for ((namespace, name), value) in objects.get(&kind).into_iter().flatten() {
            let rv: u64 = meta_str(value, "resourceVersion")
                .parse()
                .unwrap_or_default();
            let key = (kind, namespace.clone(), name.clone());
            if let Some((cached_rv, typed)) = decoded.get(&key)
                && *cached_rv == rv
                && let Some(typed) = typed.downcast_ref::<T>()
            {
                out.push(typed.clone());
                continue;
            }
            if let Some(typed) = from_value::<T>(value) {
                decoded.insert(key, (rv, Box::new(typed.clone())));
                out.push(typed);
            }
        }
        out
    }

    /// Store a new object (the caller checked it does not exist); assigns its resourceVersion.
    pub fn create(&mut self, kind: Kind, mut object: Value) -> Value {
        self.rv += 1;
        set_meta(
            &mut object,
            "resourceVersion",
            Value::String(self.rv.to_string()),
        );
        let key = key_of(&object);
        self.objects
            .entry(kind)
            .or_default()
            .insert(key, object.clone());
        self.record(kind, EventType::Added, object.clone(), None);
        object
    }

    /// Replace an existing object; assigns a new resourceVersion. Unchanged objects are not
    /// rewritten (no new version, no event), as etcd skips no-op updates.
    pub fn update(&mut self, kind: Kind, mut object: Value) -> Value {
        let key = key_of(&object);
        let old = self.objects.get(&kind).and_then(|o| o.get(&key)).cloned();
        if let Some(old) = &old {
            let mut candidate = object.clone();
            set_meta(
                &mut candidate,
                "resourceVersion",
                old["metadata"]["resourceVersion"].clone(),
            );
            if &candidate == old {
                return old.clone();
            }
        }
        self.rv += 1;
        set_meta(
            &mut object,
            "resourceVersion",
            Value::String(self.rv.to_string()),
        );
        self.objects
            .entry(kind)
            .or_default()
            .insert(key, object.clone());
        self.record(kind, EventType::Modified, object.clone(), old);
        object
    }

    /// Remove an object; the returned last state carries the deletion's resourceVersion.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let mut object = self
            .objects
            .get_mut(&kind)?
            .remove(&(namespace.to_string(), name.to_string()))?;
        self.decoded
            .remove(&(kind, namespace.to_string(), name.to_string()));
        self.rv += 1;
        set_meta(
            &mut object,
            "resourceVersion",
            Value::String(self.rv.to_string()),
        );
        self.record(kind, EventType::Deleted, object.clone(), None);
        Some(object)
    }

    fn record(&mut self, kind: Kind, event_type: EventType, object: Value, old: Option<Value>) {
        let event = Arc::new(StoredEvent {
            kind,
            event_type,
            rv: self.rv,
            object,
            old,
        });
        self.history.push_back(event.clone());
        while self.history.len() > HISTORY_LIMIT {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        // No receivers is fine: nobody watches.
        let _ = self.tx.send(event);
    }

    /// The changes after `rv`, or `None` if they are no longer all retained (410 Gone).
    pub fn events_since(&self, rv: u64) -> Option<Vec<Arc<StoredEvent>>> {
        if rv < self.compacted {
            return None;
        }
        Some(self.history.iter().filter(|e| e.rv > rv).cloned().collect())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.tx.subscribe()
    }

    /// Forget all history (test hook for the 410 Gone path).
    #[cfg(test)]
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
    }
}

fn key_of(object: &Value) -> (String, String) {
    (namespace(object).to_string(), name(object).to_string())
}

/// Decode a stored object into its typed form.
pub(crate) fn from_value<T: DeserializeOwned>(value: &Value) -> Option<T> {
    match serde_json::from_value(value.clone()) {
        Ok(typed) => Some(typed),
        Err(e) => {
            tracing::warn!(error = %e, name = name(value), "stored object does not decode");
            None
        }
    }
}

/// Encode a typed object for the store.
pub(crate) fn to_value<T: Serialize>(typed: &T) -> Value {
    serde_json::to_value(typed).unwrap_or_else(|e| {
        tracing::error!(error = %e, "typed object does not serialize");
        Value::Null
    })
}

pub(crate) fn name(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub(crate) fn namespace(object: &Value) -> &str {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub(crate) fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub(crate) fn labels(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// `metadata` as a mutable map, created if missing.
pub(crate) fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = Value::Object(Map::new());
    }
    let Value::Object(map) = object else {
        unreachable!("made an object above")
    };
    let metadata = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !metadata.is_object() {
        *metadata = Value::Object(Map::new());
    }
    match metadata {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

pub(crate) fn set_meta(object: &mut Value, field: &str, value: Value) {
    meta_mut(object).insert(field.to_string(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_history_and_noop_updates() {
        let (tx, _rx) = broadcast::channel(16);
        let mut store = Store::new(tx);
        let created = store.create(Kind::Node, json!({"metadata": {"name": "a"}}));
        assert_eq!(meta_str(&created, "resourceVersion"), "1");
        let same = store.update(Kind::Node, created.clone());
        assert_eq!(
            meta_str(&same, "resourceVersion"),
            "1",
            "no-op update keeps the version"
        );
        let changed = store.update(
            Kind::Node,
            json!({"metadata": {"name": "a", "labels": {"x": "y"}}}),
        );
        assert_eq!(meta_str(&changed, "resourceVersion"), "2");
        assert_eq!(store.events_since(1).map(|e| e.len()), Some(1));
        store.compact();
        assert!(store.events_since(1).is_none());
        assert_eq!(store.events_since(2).map(|e| e.len()), Some(0));
        let deleted = store.delete(Kind::Node, "", "a").expect("exists");
        assert_eq!(meta_str(&deleted, "resourceVersion"), "3");
    }
}
