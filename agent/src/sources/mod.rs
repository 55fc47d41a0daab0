//! IMDS sources of a termination, one small monitor per source (as aws-node-termination-handler
//! has), each turning an IMDS answer into one common [`Event`]. Adding a source touches one file
//! here plus the list in [`Source`].

pub mod rebalance;
pub mod spot;
pub mod target_lifecycle;

use crate::imds::Imds;
use crate::metrics::Metrics;
use crate::{Error, Result};
use jiff::Timestamp;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Where a termination notice came from; the label of `smartscale_agent_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// `autoscaling/target-lifecycle-state` = `Terminated`: the ASG holds the instance in
    /// `Terminating:Wait` for our terminate hook.
    TargetLifecycle,
    /// `spot/instance-action`: EC2 reclaims the instance in two minutes.
    SpotInterruption,
    /// `events/recommendations/rebalance`: elevated interruption risk (opt-in).
    Rebalance,
    /// `smartscale-agent drain`.
    Manual,
}

impl Source {
    pub const ALL: [Source; 4] = [
        Source::TargetLifecycle,
        Source::SpotInterruption,
        Source::Rebalance,
        Source::Manual,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Source::TargetLifecycle => "target_lifecycle",
            Source::SpotInterruption => "spot_interruption",
            Source::Rebalance => "rebalance",
            Source::Manual => "manual",
        }
    }

    pub fn from_label(label: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.label() == label)
    }

    /// Whether this notice means the ASG waits on our terminate lifecycle hook.
    pub fn holds_terminate_hook(self) -> bool {
        self == Source::TargetLifecycle
    }
}

/// One termination notice.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub source: Source,
    /// What IMDS said (or the operator's reason), for the log.
    pub detail: String,
    /// When the instance goes away, if the notice says (spot: the action time).
    pub ends_at: Option<Timestamp>,
}

impl Event {
    pub fn manual(reason: &str) -> Event {
        Event {
            source: Source::Manual,
            detail: reason.to_string(),
            ends_at: None,
        }
    }
}

/// Ask one source once: `Ok(Some)` when it reports a termination notice.
pub async fn check(source: Source, imds: &Imds) -> Result<Option<Event>> {
    match source {
        Source::TargetLifecycle => target_lifecycle::check(imds).await,
        Source::SpotInterruption => spot::check(imds).await,
        Source::Rebalance => rebalance::check(imds).await,
        Source::Manual => Ok(None),
    }
}

/// Poll `sources` every `interval` and send each source's first notice to `events` (once per
/// source: the pipeline is idempotent, but there is no reason to repeat). A source sent back on
/// `rearm` (the pipeline failed on its notice) is watched again, so a notice IMDS still shows is
/// sent again at the next poll (and not counted again in `smartscale_agent_events_total`). Runs
/// until `events` is closed. IMDS failures are logged once per outage, not once per poll.
pub async fn watch(
    imds: Arc<Imds>,
    sources: Vec<Source>,
    interval: Duration,
    events: mpsc::Sender<Event>,
    mut rearm: mpsc::UnboundedReceiver<Source>,
    metrics: Arc<Metrics>,
) {
    let watched = sources.clone();
    let mut pending = sources;
    let mut counted: Vec<Source> = Vec::new();
    let mut rearm_open = true;
    let mut failing = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        sources = ?pending.iter().map(|s| s.label()).collect::<Vec<_>>(),
        interval_ms = interval.as_millis() as u64,
        "watching IMDS for termination notices"
    );
    loop {
        let again = async {
            if rearm_open {
                rearm.recv().await
            } else {
                std::future::pending().await
            }
        };
        if pending.is_empty() {
            // Every source has fired: wait for one to be re-armed, or for the pipeline to go.
            tokio::select! {
                source = again => match source {
                    Some(s) => rearm_source(&watched, &mut pending, s),
                    None => rearm_open = false,
                },
                () = events.closed() => return,
            }
            continue;
        }
        tokio::select! {
            _ = ticker.tick() => {}
            source = again => {
                match source {
                    Some(s) => rearm_source(&watched, &mut pending, s),
                    None => rearm_open = false,
                }
                continue;
            }
        }
        let answers = futures::future::join_all(pending.iter().map(|s| check(*s, &imds))).await;
        let mut errors: Vec<Error> = Vec::new();
        let mut fired = Vec::new();
        for (source, answer) in pending.iter().zip(answers) {
            match answer {
                Ok(Some(event)) => fired.push((*source, event)),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        match (errors.first(), failing) {
            (Some(e), false) => {
                tracing::warn!(error = %e, "IMDS is not answering; still polling");
                failing = true;
            }
            (None, true) => {
                tracing::info!("IMDS answers again");
                failing = false;
            }
            _ => {}
        }
        for (source, event) in fired {
            if counted.contains(&source) {
                tracing::info!(source = source.label(), detail = %event.detail, "termination notice still there; handing it to the pipeline again");
            } else {
                tracing::info!(source = source.label(), detail = %event.detail, "termination notice");
                metrics.event(source);
                counted.push(source);
            }
            pending.retain(|s| *s != source);
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}

fn rearm_source(watched: &[Source], pending: &mut Vec<Source>, source: Source) {
    if watched.contains(&source) && !pending.contains(&source) {
        tracing::debug!(source = source.label(), "watching the source again");
        pending.push(source);
    }
}
