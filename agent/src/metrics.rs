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
use std::time::Duration;

type SourceLabels = Vec<(&'static str, &'static str)>;

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    events: Family<SourceLabels, Counter>,
    drain_duration: Histogram,
    evicted: Counter,
    eviction_failed: Counter,
    heartbeats: Counter,
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
        Metrics {
            registry,
            events,
            drain_duration,
            evicted,
            eviction_failed,
            heartbeats,
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
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    tracing::info!(%address, "metrics at http://{address}/metrics");
    Ok(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "metrics server stopped");
        }
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
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
