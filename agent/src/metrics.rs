//! The agent's OpenMetrics endpoint (`GET /metrics` on `metrics_listen`, 127.0.0.1 by default).
//! Names as in docs/interfaces.md.

use crate::sources::Source;
use crate::{Error, Result};
use axum::http::header::CONTENT_TYPE;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

type SourceLabels = Vec<(&'static str, &'static str)>;

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    events: Family<SourceLabels, Counter>,
    drain_duration: Histogram,
    evicted: Counter,
    eviction_failed: Counter,
    heartbeats: Counter,
    deadline_exceeded: Counter,
    /// How many times `/metrics` has been rendered for a scrape.
    scrapes: watch::Sender<u64>,
    /// [`serve`] is running (the `run` daemon): someone can scrape.
    serving: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let events = Family::<SourceLabels, Counter>::default();
        // Every source from the start, so a rate() sees the first event.
        for source in Source::ALL {
            let _ = events.get_or_create(&vec![("source", source.label())]);
        }
        registry.register(
            "smartscale_agent_events",
            "Termination notices seen, by source",
            events.clone(),
        );
        // 1 s .. ~68 min.
        let drain_duration = Histogram::new([
            1.0, 5.0, 15.0, 30.0, 60.0, 90.0, 180.0, 300.0, 600.0, 1200.0, 3600.0,
        ]);
        registry.register_with_unit(
            "smartscale_agent_drain_duration",
            "Time from the start of a drain to its end (all pods gone or the deadline)",
            Unit::Seconds,
            drain_duration.clone(),
        );
        let evicted = Counter::default();
        registry.register(
            "smartscale_agent_pods_evicted",
            "Pods whose eviction the API server accepted",
            evicted.clone(),
        );
        let eviction_failed = Counter::default();
        registry.register(
            "smartscale_agent_pods_eviction_failed",
            "Pods still on the node when a drain ended (refused or not gone by the deadline)",
            eviction_failed.clone(),
        );
        let heartbeats = Counter::default();
        registry.register(
            "smartscale_agent_heartbeats",
            "RecordLifecycleActionHeartbeat calls that succeeded",
            heartbeats.clone(),
        );
        let deadline_exceeded = Counter::default();
        registry.register(
            "smartscale_agent_drain_deadline_exceeded",
            "Drains that reached their deadline (drain_timeout, or the spot deadline) with pods left on the node",
            deadline_exceeded.clone(),
        );
        Metrics {
            registry,
            events,
            drain_duration,
            evicted,
            eviction_failed,
            heartbeats,
            deadline_exceeded,
            scrapes: watch::Sender::new(0),
            serving: AtomicBool::new(false),
        }
    }

    pub fn event(&self, source: Source) {
        self.events
            .get_or_create(&vec![("source", source.label())])
            .inc();
    }

    pub fn drain_finished(&self, took: Duration) {
        self.drain_duration.observe(took.as_secs_f64());
    }

    pub fn pod_evicted(&self) {
        self.evicted.inc();
    }

    pub fn pods_failed(&self, n: usize) {
        self.eviction_failed.inc_by(n as u64);
    }

    pub fn heartbeat(&self) {
        self.heartbeats.inc();
    }

    pub fn drain_deadline_exceeded(&self) {
        self.deadline_exceeded.inc();
    }

    /// The text for one scrape of `/metrics`, counted (see [`Metrics::wait_for_scrape`]).
    pub fn scrape(&self) -> String {
        let text = self.render();
        // Rendered and counted in one step (no await between): a scrape counted after a mark
        // rendered everything recorded before it.
        self.scrapes.send_modify(|n| *n += 1);
        text
    }

    /// A mark to pass to [`Metrics::wait_for_scrape`]: how many scrapes so far.
    pub fn scrapes(&self) -> u64 {
        *self.scrapes.borrow()
    }

    /// Whether `/metrics` is being served (by the `run` daemon).
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// Waits until `/metrics` has been scraped after `mark` (from [`Metrics::scrapes`]), at most
    /// `limit`; whether it was.
    pub async fn wait_for_scrape(&self, mark: u64, limit: Duration) -> bool {
        let mut scrapes = self.scrapes.subscribe();
        matches!(
            tokio::time::timeout(limit, scrapes.wait_for(|n| *n > mark)).await,
            Ok(Ok(_))
        )
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Binds `address` now (so a taken port is an error at start) and returns the server future,
/// which runs until `shutdown` resolves.
pub async fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = ()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| Error::Metrics {
            address: address.to_string(),
            source,
        })?;
    let served = metrics.clone();
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = served.clone();
                async move {
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.scrape(),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    tracing::info!(%address, "metrics at http://{address}/metrics");
    metrics.serving.store(true, Ordering::SeqCst);
    Ok(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "metrics server stopped");
        }
        metrics.serving.store(false, Ordering::SeqCst);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_interface() {
        let m = Metrics::new();
        m.event(Source::SpotInterruption);
        m.pod_evicted();
        m.heartbeat();
        m.drain_finished(Duration::from_secs(3));
        let text = m.render();
        for name in [
            "smartscale_agent_events_total{source=\"spot_interruption\"} 1",
            "smartscale_agent_events_total{source=\"manual\"} 0",
            "smartscale_agent_drain_duration_seconds_count 1",
            "smartscale_agent_pods_evicted_total 1",
            "smartscale_agent_pods_eviction_failed_total 0",
            "smartscale_agent_heartbeats_total 1",
            "smartscale_agent_drain_deadline_exceeded_total 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        m.drain_deadline_exceeded();
        assert!(
            m.render()
                .contains("smartscale_agent_drain_deadline_exceeded_total 1\n")
        );
    }

    #[tokio::test]
    async fn a_wait_for_a_scrape_ends_with_the_next_scrape_or_at_its_limit() {
        let m = Arc::new(Metrics::new());
        let mark = m.scrapes();
        // Nobody scrapes: the wait ends at its limit.
        let started = std::time::Instant::now();
        assert!(!m.wait_for_scrape(mark, Duration::from_millis(100)).await);
        assert!(started.elapsed() >= Duration::from_millis(100));
        // A scrape before the mark does not count; one after it does.
        m.scrape();
        let mark = m.scrapes();
        let waiter = {
            let m = m.clone();
            tokio::spawn(async move { m.wait_for_scrape(mark, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        m.scrape();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("the wait ends with the scrape")
                .expect("task")
        );
    }
}
