//! Watches: newline-delimited `WatchEvent` JSON from a resourceVersion, with selectors, bookmarks,
//! `timeoutSeconds`, and 410 Gone (as an ERROR event, like kube-apiserver) for versions no longer kept.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::kinds::Kind;
use super::selectors::{FieldQuery, LabelQuery};
use super::state::Shared;
use super::status::ApiError;
use super::store::{self, EventType, StoredEvent};
use super::table;

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(2);
/// The watch length when the client sets no `timeoutSeconds` (kube-apiserver picks 30–60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// What one watch request selects.
pub(crate) struct WatchRequest {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub labels: LabelQuery,
    pub fields: FieldQuery,
    /// `None` or `Some(0)`: start with the current objects as ADDED; else the changes after it.
    pub resource_version: Option<u64>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
    /// Send each object as a one-row `Table` (`kubectl get -w`); column definitions come with the
    /// first event only, as kube-apiserver does.
    pub table: bool,
}

impl WatchRequest {
    fn selects(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| store::namespace(object) == ns)
            && self.labels.matches(&store::labels(object))
            && self.fields.matches(object)
    }

    /// The event this watch sees for a change, if any: objects moving into the selection are
    /// ADDED, moving out are DELETED.
    fn translate(&self, event: &StoredEvent) -> Option<(EventType, Value)> {
        if event.kind != self.kind {
            return None;
        }
        let now = self.selects(&event.object);
        match event.event_type {
            EventType::Added => now.then(|| (EventType::Added, event.object.clone())),
            EventType::Deleted => now.then(|| (EventType::Deleted, event.object.clone())),
            EventType::Modified => {
                let before = event.old.as_ref().is_some_and(|old| self.selects(old));
                match (before, now) {
                    (true, true) => Some((EventType::Modified, event.object.clone())),
                    (false, true) => Some((EventType::Added, event.object.clone())),
                    (true, false) => Some((EventType::Deleted, event.object.clone())),
                    (false, false) => None,
                }
            }
        }
    }
}

/// Encodes events for one watch: plain objects, or Tables for `kubectl get -w`.
struct Encoder {
    kind: Kind,
    table: bool,
    headers_sent: bool,
}

impl Encoder {
    fn event(&mut self, event_type: &str, object: &Value) -> Bytes {
        if !self.table {
            return line(event_type, object);
        }
        let rv = store::meta_str(object, "resourceVersion")
            .parse()
            .unwrap_or_default();
        let mut rendered = table::table(self.kind, &[object], rv);
        if self.headers_sent {
            rendered["columnDefinitions"] = json!([]);
        }
        self.headers_sent = true;
        line(event_type, &rendered)
    }
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut text = json!({ "type": event_type, "object": object }).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn bookmark(kind: Kind, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    line(
        "BOOKMARK",
        &json!({ "kind": kind.info().kind, "apiVersion": kind.api_version(), "metadata": metadata }),
    )
}

/// Start a watch; the returned body streams events until the timeout, the client leaves, or the
/// server stops.
pub(crate) fn start(shared: Arc<Shared>, request: WatchRequest) -> Result<Body, ApiError> {
    let mut encoder = Encoder {
        kind: request.kind,
        table: request.table,
        headers_sent: false,
    };
    let mut initial: Vec<Bytes> = Vec::new();
    let mut gone = false;
    let (receiver, start_rv) = {
        let world = shared.world();
        let receiver = world.store.subscribe();
        let current = world.store.rv();
        match request.resource_version {
            Some(rv) if rv != 0 && !request.send_initial_events => {
                match world.store.events_since(rv) {
                    Some(events) => {
                        for event in events {
                            if let Some((event_type, object)) = request.translate(&event) {
                                initial.push(encoder.event(event_type.as_str(), &object));
                            }
                        }
                    }
                    None => gone = true,
                }
            }
            _ => {
                let objects = world.store.list(request.kind, request.namespace.as_deref());
                for object in objects.into_iter().filter(|o| request.selects(o)) {
                    initial.push(encoder.event("ADDED", object));
                }
                if request.send_initial_events {
                    initial.push(bookmark(request.kind, current, true));
                }
            }
        }
        (receiver, current)
    };
    if gone {
        let status = ApiError::gone(format!(
            "too old resource version: {} ({})",
            request.resource_version.unwrap_or_default(),
            start_rv
        ))
        .to_status();
        initial.push(line("ERROR", &status));
    }

    let (tx, rx) = mpsc::channel::<Bytes>(256);
    // A watch that starts with 410 Gone ends after it.
    let resume_from = (!gone).then_some(start_rv);
    tokio::spawn(stream_events(
        shared,
        request,
        encoder,
        receiver,
        initial,
        resume_from,
        tx,
    ));
    Ok(Body::from_stream(rx.map(Ok::<Bytes, Infallible>)))
}

async fn stream_events(
    shared: Arc<Shared>,
    request: WatchRequest,
    mut encoder: Encoder,
    mut receiver: broadcast::Receiver<Arc<StoredEvent>>,
    initial: Vec<Bytes>,
    resume_from: Option<u64>,
    mut tx: mpsc::Sender<Bytes>,
) {
    for chunk in initial {
        if tx.send(chunk).await.is_err() {
            return;
        }
    }
    let Some(mut last_rv) = resume_from else {
        return;
    };
    let mut shutdown = shared.shutdown.clone();
    // Longer than a day is, for a test, forever (and keeps the clock arithmetic in range).
    let length = request
        .timeout
        .unwrap_or(DEFAULT_TIMEOUT)
        .min(Duration::from_secs(86_400));
    let deadline = tokio::time::Instant::now() + length;
    let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
    ticker.tick().await;
    loop {
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            received = receiver.recv() => match received {
                Ok(event) => {
                    last_rv = last_rv.max(event.rv);
                    if let Some((event_type, object)) = request.translate(&event)
                        && tx.send(encoder.event(event_type.as_str(), &object)).await.is_err()
                    {
                        return;
                    }
                }
                // A watcher this far behind re-watches from its last version, like after a server-side close.
                Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = ticker.tick() => {
                // Bookmarks double as the liveness probe that notices a client that went away.
                let probe = if request.bookmarks { bookmark(request.kind, last_rv, false) } else { Bytes::new() };
                if tx.send(probe).await.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::apiserver::store::Store;

    fn request(labels: &str, resource_version: Option<u64>) -> WatchRequest {
        WatchRequest {
            kind: Kind::Node,
            namespace: None,
            labels: LabelQuery::parse(labels).expect("labels"),
            fields: FieldQuery::default(),
            resource_version,
            bookmarks: false,
            send_initial_events: false,
            timeout: Some(Duration::from_secs(5)),
            table: false,
        }
    }

    #[test]
    fn objects_moving_across_the_selection_are_added_or_deleted() {
        let watch = request("app=x", None);
        let node = |app: &str| json!({"metadata": {"name": "a", "labels": {"app": app}}});
        let event = |old: &str, new: &str| StoredEvent {
            kind: Kind::Node,
            event_type: EventType::Modified,
            rv: 2,
            object: node(new),
            old: Some(node(old)),
        };
        let kind_of = |e: &StoredEvent| watch.translate(e).map(|(t, _)| t);
        assert_eq!(kind_of(&event("y", "x")), Some(EventType::Added));
        assert_eq!(kind_of(&event("x", "y")), Some(EventType::Deleted));
        assert_eq!(kind_of(&event("x", "x")), Some(EventType::Modified));
        assert_eq!(kind_of(&event("y", "y")), None);
    }

    #[tokio::test]
    async fn a_watch_from_a_compacted_version_gets_410_gone() {
        let (events, _) = broadcast::channel(16);
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared::new(
            Store::new(events),
            HashMap::new(),
            Duration::ZERO,
            None,
            stopped,
        ));
        {
            let mut world = shared.world();
            world
                .store
                .create(Kind::Node, json!({"metadata": {"name": "a"}}));
            world
                .store
                .create(Kind::Node, json!({"metadata": {"name": "b"}}));
            world.store.compact();
        }
        let body = start(shared.clone(), request("", Some(1))).expect("watch starts");
        let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
        let event: Value = serde_json::from_slice(&bytes).expect("one event");
        assert_eq!(event["type"], json!("ERROR"));
        assert_eq!(event["object"]["code"], json!(410));
        assert_eq!(event["object"]["reason"], json!("Expired"));

        // From the current version, the stream carries later changes.
        let body = start(shared.clone(), request("", Some(2))).expect("watch starts");
        shared
            .world()
            .store
            .create(Kind::Node, json!({"metadata": {"name": "c"}}));
        let mut stream = body.into_data_stream();
        let chunk = stream.next().await.expect("an event").expect("bytes");
        let event: Value = serde_json::from_slice(&chunk).expect("json");
        assert_eq!(
            (
                event["type"].as_str(),
                event["object"]["metadata"]["name"].as_str()
            ),
            (Some("ADDED"), Some("c"))
        );
    }
}
