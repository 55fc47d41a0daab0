//! Optional webhook notifications (Slack-compatible `{"text": ...}` body) on executed actions
//! and on repeated errors. Sent in the background: a slow webhook never delays scaling.

use std::time::Duration;

#[derive(Clone)]
pub struct Notifier {
    url: Option<url::Url>,
    http: reqwest::Client,
}

impl Notifier {
    pub fn new(url: Option<url::Url>) -> Notifier {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Notifier { url, http }
    }

    /// Posts `text` to the webhook, if one is configured. Failures are logged, not returned.
    pub fn send(&self, text: String) {
        let Some(url) = self.url.clone() else { return };
        let http = self.http.clone();
        tokio::spawn(async move {
            let body = serde_json::json!({ "text": text });
            match http.post(url).json(&body).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(status = %r.status(), "webhook refused the notification"),
                // The URL is a secret (Slack webhooks carry their token in it): keep it out.
                Err(e) => tracing::warn!(error = %e.without_url(), "webhook unreachable"),
            }
        });
    }
}
