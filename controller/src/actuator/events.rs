//! Kubernetes Events on pods the capacity model found no new node for (cluster-autoscaler's
//! `NotTriggerScaleUp`), so `kubectl describe pod` tells the user why nothing grows. Best effort:
//! a failure is logged, never a reason to skip a decision. RBAC: `create` and `patch` on
//! `events.k8s.io` events (userdata/manifests/smartscale.yaml).

use super::Actuator;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};
use std::time::{Duration, Instant};

/// One event per pod this often at most (the recorder turns repeats into a series).
const EVERY: Duration = Duration::from_secs(300);
/// An event's note is at most 1 kB.
const NOTE_MAX: usize = 1000;

impl Actuator {
    /// Publishes `NotTriggerScaleUp` on each pod (`(reference, why)`), at most once per pod
    /// per five minutes. Dry-run publishes nothing.
    #[tracing::instrument(skip_all, fields(pods = pods.len()))]
    pub async fn report_unhelpable(&self, pods: &[(ObjectReference, String)]) {
        if self.dry_run || pods.is_empty() {
            return;
        }
        let due: Vec<&(ObjectReference, String)> = {
            let mut last = self.events_sent.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            last.retain(|_, t| now.duration_since(*t) < EVERY);
            pods.iter()
                .filter(|(r, _)| {
                    let key = format!("{:?}/{:?}", r.namespace, r.name);
                    if last.contains_key(&key) {
                        return false;
                    }
                    last.insert(key, now);
                    true
                })
                .collect()
        };
        for (reference, why) in due {
            let mut note = format!("pod didn't trigger scale-up: {why}");
            if note.len() > NOTE_MAX {
                let mut cut = NOTE_MAX - 3;
                while !note.is_char_boundary(cut) {
                    cut -= 1;
                }
                note.truncate(cut);
                note.push_str("...");
            }
            let event = Event {
                type_: EventType::Normal,
                reason: "NotTriggerScaleUp".into(),
                note: Some(note),
                action: "ScaleUp".into(),
                secondary: None,
            };
            if let Err(e) = self.events.publish(&event, reference).await {
                tracing::warn!(pod = ?reference.name, error = %e, "could not publish the NotTriggerScaleUp event");
            }
        }
    }
}
