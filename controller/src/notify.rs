//! Notifications on executed actions and on repeated errors, to a Slack-compatible webhook
//! (`{"text": ...}`) and/or an SNS topic (the same text, with message attributes subscribers
//! filter on). One interface, [`Notifier::send`], for both sinks.
//!
//! Sends run in the background, so a slow webhook or SNS never delays scaling. A failure is
//! logged, counted (`smartscale_errors_total{kind="notification"}`) and kept until
//! [`Notifier::flush`] hands it over: the Lambda mode waits for its sends before the invocation
//! ends (a frozen execution environment would lose them) and reports what failed.

use crate::metrics::KindLabels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// The `kind` label notification failures are counted under.
pub const ERROR_KIND: &str = "notification";
/// At most this many failures are kept between two flushes (the daemon never flushes).
const MAX_KEPT_FAILURES: usize = 32;

/// What happened, as both sinks carry it: a text for people, attributes for filters.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// `action` (an executed scaling action) or `errors` (failed cycles in a row).
    pub event: &'static str,
    pub cluster_id: String,
    /// `scale_up`, `scale_down`, ... for an action.
    pub action: Option<String>,
    pub node_group: Option<String>,
    pub from: Option<u32>,
    pub to: Option<u32>,
    /// Short, single-line summary (SNS `Subject`: ASCII, at most 100 characters).
    pub subject: String,
    pub text: String,
}

impl Notification {
    /// An action the controller executed (not a dry run).
    pub fn action(
        cluster_id: &str,
        action: &str,
        node_group: &str,
        from: u32,
        to: u32,
        victim_node: Option<&str>,
        reasons: &[String],
    ) -> Notification {
        Notification {
            event: "action",
            cluster_id: cluster_id.to_string(),
            action: Some(action.to_string()),
            node_group: Some(node_group.to_string()),
            from: Some(from),
            to: Some(to),
            subject: subject(&format!(
                "SmartScale {cluster_id}: {action} {node_group} {from} -> {to}"
            )),
            text: format!(
                "SmartScale ({cluster_id}): {action} {node_group} {from} → {to}{}; {}",
                victim_node
                    .map(|v| format!(" (removing {v})"))
                    .unwrap_or_default(),
                reasons.join("; ")
            ),
        }
    }

    /// `count` failed cycles (or invocations) in a row.
    pub fn errors(cluster_id: &str, count: u32, last_error: &str) -> Notification {
        Notification {
            event: "errors",
            cluster_id: cluster_id.to_string(),
            action: None,
            node_group: None,
            from: None,
            to: None,
            subject: subject(&format!(
                "SmartScale {cluster_id}: {count} failed cycles in a row"
            )),
            text: format!(
                "SmartScale ({cluster_id}): {count} failed cycles in a row; last error: {last_error}"
            ),
        }
    }
}

/// SNS subjects are ASCII without control characters, below 100 characters.
fn subject(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .take(99)
        .collect()
}

#[derive(Clone)]
struct Sns {
    client: aws_sdk_sns::Client,
    topic_arn: String,
}

#[derive(Default)]
struct Tracker {
    in_flight: Mutex<Vec<JoinHandle<()>>>,
    failures: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tracker {
    fn failed(&self, errors: &Option<Family<KindLabels, Counter>>, why: String) {
        if let Some(e) = errors {
            e.get_or_create(&KindLabels {
                kind: ERROR_KIND.to_string(),
            })
            .inc();
        }
        let mut f = lock(&self.failures);
        if f.len() < MAX_KEPT_FAILURES {
            f.push(why);
        }
    }
}

#[derive(Clone)]
pub struct Notifier {
    url: Option<url::Url>,
    http: reqwest::Client,
    sns: Option<Sns>,
    errors: Option<Family<KindLabels, Counter>>,
    tracker: Arc<Tracker>,
}

impl Notifier {
    /// A notifier for the webhook only (none: notifications off).
    pub fn new(url: Option<url::Url>) -> Notifier {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Notifier {
            url,
            http,
            sns: None,
            errors: None,
            tracker: Arc::default(),
        }
    }

    /// Also publishes to this SNS topic.
    pub fn with_sns(mut self, client: aws_sdk_sns::Client, topic_arn: String) -> Notifier {
        self.sns = Some(Sns { client, topic_arn });
        self
    }

    /// Counts failed sends in this family (`kind="notification"`).
    pub fn counting(mut self, errors: Family<KindLabels, Counter>) -> Notifier {
        self.errors = Some(errors);
        self
    }

    pub fn enabled(&self) -> bool {
        self.url.is_some() || self.sns.is_some()
    }

    /// Sends `n` to every configured sink in the background. Failures are logged and counted,
    /// never returned here (see [`Notifier::flush`]).
    pub fn send(&self, n: Notification) {
        if !self.enabled() {
            return;
        }
        let mut in_flight = lock(&self.tracker.in_flight);
        in_flight.retain(|h| !h.is_finished());
        if let Some(url) = self.url.clone() {
            let http = self.http.clone();
            let text = n.text.clone();
            let tracker = self.tracker.clone();
            let errors = self.errors.clone();
            in_flight.push(tokio::spawn(async move {
                if let Err(why) = post_webhook(&http, url, &text).await {
                    tracing::warn!(%why, "webhook notification failed");
                    tracker.failed(&errors, format!("webhook: {why}"));
                }
            }));
        }
        if let Some(sns) = self.sns.clone() {
            let tracker = self.tracker.clone();
            let errors = self.errors.clone();
            in_flight.push(tokio::spawn(async move {
                if let Err(why) = publish(&sns, &n).await {
                    tracing::warn!(topic = %sns.topic_arn, %why, "SNS notification failed");
                    tracker.failed(&errors, format!("SNS {}: {why}", sns.topic_arn));
                }
            }));
        }
    }

    /// Waits up to `within` for the sends under way, then returns every failure since the last
    /// flush (sends still unfinished are dropped and reported).
    pub async fn flush(&self, within: Duration) -> Vec<String> {
        let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.tracker.in_flight));
        if !handles.is_empty() {
            let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
            if tokio::time::timeout(within, futures::future::join_all(handles))
                .await
                .is_err()
            {
                let left = aborts.iter().filter(|a| !a.is_finished()).count();
                for a in &aborts {
                    a.abort();
                }
                self.tracker.failed(
                    &self.errors,
                    format!(
                        "{left} notification(s) not sent within {:.1}s; dropped",
                        within.as_secs_f64()
                    ),
                );
            }
        }
        std::mem::take(&mut *lock(&self.tracker.failures))
    }
}

async fn post_webhook(http: &reqwest::Client, url: url::Url, text: &str) -> Result<(), String> {
    let body = serde_json::json!({ "text": text });
    match http.post(url).json(&body).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("the webhook answered {}", r.status())),
        // The URL is a secret (Slack webhooks carry their token in it): keep it out.
        Err(e) => Err(format!("unreachable: {}", e.without_url())),
    }
}

/// The message attributes of `n`: what SNS subscription filter policies match on.
pub fn attributes(n: &Notification) -> Vec<(&'static str, &'static str, String)> {
    let mut a = vec![
        ("source", "String", "smartscale".to_string()),
        ("event", "String", n.event.to_string()),
        ("cluster_id", "String", n.cluster_id.clone()),
    ];
    if let Some(action) = &n.action {
        a.push(("action", "String", action.clone()));
    }
    if let Some(group) = &n.node_group {
        a.push(("node_group", "String", group.clone()));
    }
    if let Some(from) = n.from {
        a.push(("from", "Number", from.to_string()));
    }
    if let Some(to) = n.to {
        a.push(("to", "Number", to.to_string()));
    }
    a
}

async fn publish(sns: &Sns, n: &Notification) -> Result<(), String> {
    let mut req = sns
        .client
        .publish()
        .topic_arn(&sns.topic_arn)
        .subject(&n.subject)
        .message(&n.text);
    for (name, data_type, value) in attributes(n) {
        let v = aws_sdk_sns::types::MessageAttributeValue::builder()
            .data_type(data_type)
            .string_value(value)
            .build()
            .map_err(|e| format!("attribute {name}: {e}"))?;
        req = req.message_attributes(name, v);
    }
    req.send()
        .await
        .map(|_| ())
        .map_err(|e| aws_sdk_sns::error::DisplayErrorContext(e).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_carries_its_filterable_attributes_and_the_webhook_text() {
        let n = Notification::action(
            "prod",
            "scale_down",
            "workers",
            3,
            2,
            Some("ip-10-0-0-5"),
            &["low usage".to_string()],
        );
        assert_eq!(
            n.text,
            "SmartScale (prod): scale_down workers 3 → 2 (removing ip-10-0-0-5); low usage"
        );
        assert!(
            n.subject.is_ascii() && n.subject.len() < 100,
            "{}",
            n.subject
        );
        let a = attributes(&n);
        let get = |k: &str| {
            a.iter()
                .find(|(n, _, _)| *n == k)
                .map(|(_, t, v)| (*t, v.as_str()))
        };
        assert_eq!(get("event"), Some(("String", "action")));
        assert_eq!(get("action"), Some(("String", "scale_down")));
        assert_eq!(get("cluster_id"), Some(("String", "prod")));
        assert_eq!(get("node_group"), Some(("String", "workers")));
        assert_eq!(get("to"), Some(("Number", "2")));
    }

    #[test]
    fn an_error_notification_has_no_action_attributes_and_a_bounded_subject() {
        let long = "x".repeat(300);
        let n = Notification::errors(&long, 3, "boom\nsecond line");
        assert_eq!(n.event, "errors");
        assert!(n.subject.len() < 100 && !n.subject.contains('\n'));
        assert!(attributes(&n).iter().all(|(k, _, _)| *k != "action"));
    }

    #[tokio::test]
    async fn failures_are_counted_and_handed_over_by_flush() {
        let errors: Family<KindLabels, Counter> = Family::default();
        // Nothing listens on port 9 of loopback (discard): the post fails at once.
        let url = url::Url::parse("http://127.0.0.1:9/hook").ok();
        let n = Notifier::new(url).counting(errors.clone());
        n.send(Notification::errors("c", 3, "e"));
        let failures = n.flush(Duration::from_secs(10)).await;
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].starts_with("webhook: unreachable"),
            "{failures:?}"
        );
        assert_eq!(
            errors
                .get_or_create(&KindLabels {
                    kind: ERROR_KIND.into()
                })
                .get(),
            1
        );
        assert!(n.flush(Duration::from_secs(1)).await.is_empty());
    }
}
