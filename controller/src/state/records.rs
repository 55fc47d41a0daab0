//! The `state` and `history#…` records and their DynamoDB attributes.

use super::{n, s};
use crate::policy::Memory;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

type Item = HashMap<String, AttributeValue>;

pub(crate) fn num(item: &Item, key: &str) -> Option<u64> {
    item.get(key)?
        .as_n()
        .ok()?
        .parse::<f64>()
        .ok()
        .map(|v| v as u64)
}
pub(crate) fn float(item: &Item, key: &str) -> Option<f64> {
    item.get(key)?.as_n().ok()?.parse().ok()
}
pub(crate) fn int(item: &Item, key: &str) -> Option<i64> {
    float(item, key).map(|v| v as i64)
}
pub(crate) fn text(item: &Item, key: &str) -> Option<String> {
    item.get(key)?.as_s().ok().cloned()
}

/// What survives a restart: the policy's trend counters and cooldown times, when each booting
/// instance was first seen (for rollback), and the desired capacity we last set (for drift).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StoredState {
    pub memory: Memory,
    pub first_seen: HashMap<String, i64>,
    /// Live instances that have been Ready nodes (since when).
    pub ever_ready: HashMap<String, i64>,
    pub last_desired: HashMap<String, u32>,
    /// An action whose intent was recorded and whose outcome was not (yet): the controller
    /// stopped between the two. Resolved against AWS at start-up (`cycle::reconcile`).
    pub intent: Option<PendingIntent>,
    /// Groups in launch backoff.
    pub backoff: HashMap<String, Backoff>,
    /// Since when (unix seconds) each group has had desired capacity it has not launched.
    pub unlaunched_since: HashMap<String, i64>,
}

/// A group's launch backoff: until when, how many times in a row, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    pub until: i64,
    pub level: u32,
    pub reason: String,
}

/// What was about to be done, kept in the state record until its outcome is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingIntent {
    /// The `time` of its history record.
    pub time: String,
    pub action: String,
    pub node_group: String,
    pub from: u32,
    pub to: u32,
    pub victim: Option<String>,
    pub source: String,
}

impl StoredState {
    pub fn from_item(item: &Item) -> StoredState {
        let map = |key: &str| -> HashMap<String, i64> {
            item.get(key)
                .and_then(|v| v.as_m().ok())
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_n().ok()?.parse().ok()?)))
                        .collect()
                })
                .unwrap_or_default()
        };
        StoredState {
            memory: Memory {
                high_cpu_checks: num(item, "high_cpu_checks").unwrap_or(0) as u32,
                low_since: int(item, "low_since"),
                last_scale_up: int(item, "last_scale_up"),
                last_scale_down: int(item, "last_scale_down"),
                last_cpu_check: int(item, "last_cpu_check"),
                removals: text(item, "removals")
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default(),
                forecast: text(item, "forecast")
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default(),
                hold: text(item, "hold").and_then(|t| serde_json::from_str(&t).ok()),
            },
            first_seen: map("first_seen"),
            ever_ready: map("ever_ready"),
            last_desired: map("last_desired")
                .into_iter()
                .map(|(k, v)| (k, v.max(0) as u32))
                .collect(),
            intent: text(item, "intent").and_then(|t| serde_json::from_str(&t).ok()),
            backoff: text(item, "backoff")
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
            unlaunched_since: map("unlaunched_since"),
        }
    }

    pub fn to_item(&self, token: u64) -> Item {
        let mut item = Item::from([
            ("fencing_token".to_string(), n(token)),
            (
                "high_cpu_checks".to_string(),
                n(self.memory.high_cpu_checks),
            ),
            (
                "updated_at".to_string(),
                s(jiff::Timestamp::now().to_string()),
            ),
        ]);
        for (key, v) in [
            ("low_since", self.memory.low_since),
            ("last_scale_up", self.memory.last_scale_up),
            ("last_scale_down", self.memory.last_scale_down),
            ("last_cpu_check", self.memory.last_cpu_check),
        ] {
            if let Some(v) = v {
                item.insert(key.to_string(), n(v));
            }
        }
        let map = |m: HashMap<String, AttributeValue>| AttributeValue::M(m);
        item.insert(
            "first_seen".into(),
            map(self
                .first_seen
                .iter()
                .map(|(k, v)| (k.clone(), n(v)))
                .collect()),
        );
        item.insert(
            "ever_ready".into(),
            map(self
                .ever_ready
                .iter()
                .map(|(k, v)| (k.clone(), n(v)))
                .collect()),
        );
        item.insert(
            "last_desired".into(),
            map(self
                .last_desired
                .iter()
                .map(|(k, v)| (k.clone(), n(v)))
                .collect()),
        );
        if let Some(intent) = &self.intent
            && let Ok(json) = serde_json::to_string(intent)
        {
            item.insert("intent".into(), s(json));
        }
        if let Ok(json) = serde_json::to_string(&self.backoff) {
            item.insert("backoff".into(), s(json));
        }
        if let Ok(json) = serde_json::to_string(&self.memory.removals) {
            item.insert("removals".into(), s(json));
        }
        if let Ok(json) = serde_json::to_string(&self.memory.forecast) {
            item.insert("forecast".into(), s(json));
        }
        if let Some(hold) = &self.memory.hold
            && let Ok(json) = serde_json::to_string(hold)
        {
            item.insert("hold".into(), s(json));
        }
        item.insert(
            "unlaunched_since".into(),
            map(self
                .unlaunched_since
                .iter()
                .map(|(k, v)| (k.clone(), n(v)))
                .collect()),
        );
        item
    }
}

/// One line of history: a decision and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryRecord {
    /// RFC 3339 with nanoseconds; also the sort key after `history#`.
    pub time: String,
    pub action: String,
    pub node_group: String,
    pub from: u32,
    pub to: u32,
    pub victim: Option<String>,
    pub reasons: Vec<String>,
    /// Signals the decision saw (JSON).
    pub signals: serde_json::Value,
    pub dry_run: bool,
    pub fencing_token: u64,
    /// Where it came from: `policy`, `api`, `rollback`, `drift`.
    pub source: String,
    /// `intent` (written before acting), `done`, `failed: …`, or `recorded` (no action).
    pub status: String,
}

/// A fixed-width, sortable UTC time with nanoseconds.
pub fn sortable_time(t: jiff::Timestamp) -> String {
    format!(
        "{}.{:09}Z",
        t.strftime("%Y-%m-%dT%H:%M:%S"),
        t.subsec_nanosecond()
    )
}

impl HistoryRecord {
    pub fn record_key(&self) -> String {
        format!("history#{}", self.time)
    }

    pub fn to_item(&self, retention: Duration) -> Item {
        let expires = jiff::Timestamp::now().as_second() + retention.as_secs() as i64;
        let mut item = Item::from([
            ("time".to_string(), s(&self.time)),
            ("action".to_string(), s(&self.action)),
            ("node_group".to_string(), s(&self.node_group)),
            ("from".to_string(), n(self.from)),
            ("to".to_string(), n(self.to)),
            ("signals".to_string(), s(self.signals.to_string())),
            ("dry_run".to_string(), AttributeValue::Bool(self.dry_run)),
            ("fencing_token".to_string(), n(self.fencing_token)),
            ("source".to_string(), s(&self.source)),
            ("status".to_string(), s(&self.status)),
            ("expires_at".to_string(), n(expires)),
            (
                "reasons".to_string(),
                AttributeValue::L(self.reasons.iter().map(s).collect()),
            ),
        ]);
        if let Some(v) = &self.victim {
            item.insert("victim".into(), s(v));
        }
        item
    }

    pub fn from_item(item: &Item) -> Option<HistoryRecord> {
        Some(HistoryRecord {
            time: text(item, "time")?,
            action: text(item, "action")?,
            node_group: text(item, "node_group").unwrap_or_default(),
            from: num(item, "from").unwrap_or(0) as u32,
            to: num(item, "to").unwrap_or(0) as u32,
            victim: text(item, "victim"),
            reasons: item
                .get("reasons")
                .and_then(|v| v.as_l().ok())
                .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
                .unwrap_or_default(),
            signals: text(item, "signals")
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(serde_json::Value::Null),
            dry_run: item
                .get("dry_run")
                .and_then(|v| v.as_bool().ok())
                .copied()
                .unwrap_or(false),
            fencing_token: num(item, "fencing_token").unwrap_or(0),
            source: text(item, "source").unwrap_or_default(),
            status: text(item, "status").unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_attributes() {
        let st = StoredState {
            memory: Memory {
                high_cpu_checks: 2,
                low_since: Some(100),
                last_scale_up: None,
                last_scale_down: Some(50),
                last_cpu_check: Some(60),
                removals: [("w".to_string(), vec![40, 50])].into(),
                forecast: {
                    let mut h = crate::policy::forecast::DemandHistory::default();
                    h.record(0, 3.5);
                    h.record(900, 4.25);
                    h
                },
                hold: Some(crate::policy::prewarm::Hold {
                    until: 1020,
                    cores: 6.0,
                }),
            },
            first_seen: HashMap::from([("i-1".to_string(), 42)]),
            ever_ready: HashMap::from([("i-2".to_string(), 7)]),
            last_desired: HashMap::from([("w".to_string(), 3)]),
            intent: Some(PendingIntent {
                time: "t".into(),
                action: "scale_down".into(),
                node_group: "w".into(),
                from: 3,
                to: 2,
                victim: Some("i-1".into()),
                source: "policy".into(),
            }),
            backoff: HashMap::from([(
                "w".to_string(),
                Backoff {
                    until: 99,
                    level: 1,
                    reason: "capacity".into(),
                },
            )]),
            unlaunched_since: HashMap::from([("w".to_string(), 5)]),
        };
        assert_eq!(StoredState::from_item(&st.to_item(7)), st);
    }

    #[test]
    fn history_keys_sort_by_time() {
        let a = sortable_time(jiff::Timestamp::from_second(1_000).unwrap());
        let b = sortable_time(jiff::Timestamp::new(1_000, 5).unwrap());
        assert!(a < b);
        assert_eq!(a, "1970-01-01T00:16:40.000000000Z");
    }
}
