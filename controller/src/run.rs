//! The long-running controller: builds the context, serves the API, and runs a cycle every
//! `interval` and at once when a pod becomes unschedulable (the fast path). Stops on SIGTERM.

use crate::actuator::Actuator;
use crate::cloudwatch::{CloudWatch, Figures};
use crate::config::{Config, TOKEN_ENV};
use crate::cycle::{self, Context};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::signals::cluster::ClusterWatch;
use crate::signals::prices::PriceBook;
use crate::signals::prometheus::Prometheus;
use crate::state::{Store, StoreOptions};
use crate::{Error, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long to wait for the first full view of the cluster.
const CLUSTER_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Fast-path cycles are at least this far apart, so a burst of new pods makes one decision.
const FAST_PATH_DEBOUNCE: Duration = Duration::from_millis(300);
/// How long `once` waits for its notifications before the process ends.
const NOTIFY_FLUSH: Duration = Duration::from_secs(5);

/// This replica's name in the lease: host, pid and a random suffix.
pub fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    let salt: u16 = rand::random();
    format!("{host}-{}-{salt:04x}", std::process::id())
}

/// The API token from `api.token_file` or `SMARTSCALE_API_TOKEN`. Never logged.
pub fn api_token(cfg: &Config) -> Result<Option<String>> {
    if let Ok(t) = std::env::var(TOKEN_ENV)
        && !t.trim().is_empty()
    {
        return Ok(Some(t.trim().to_string()));
    }
    match &cfg.api.token_file {
        Some(path) => {
            let t = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
                path: path.display().to_string(),
                source,
            })?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(Error::Config(vec![format!(
                    "api.token_file: {} is empty; put a long random token in it",
                    path.display()
                )]));
            }
            Ok(Some(t))
        }
        None => Ok(None),
    }
}

/// The longest any AWS call may take: well inside half the lease TTL, the window in which a
/// holder may act.
pub fn operation_timeout(cfg: &Config) -> Duration {
    (cfg.state.lease_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// Timeouts for every AWS client of the controller (see [`operation_timeout`]).
pub fn aws_timeouts(cfg: &Config) -> aws_config::timeout::TimeoutConfig {
    let operation = operation_timeout(cfg);
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(operation.min(Duration::from_secs(3)))
        .operation_attempt_timeout(operation)
        .operation_timeout(operation)
        .build()
}

/// The AWS SDK configuration from the standard chain, with the controller's timeouts.
pub async fn aws_config(cfg: &Config) -> Result<aws_config::SdkConfig> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(aws_timeouts(cfg))
        .load()
        .await;
    if sdk.region().is_none() {
        return Err(Error::Other(
            "no AWS region: set AWS_REGION (or a profile with a region)".into(),
        ));
    }
    Ok(sdk)
}

/// What [`connect`] connects with.
pub struct Connection<'a> {
    pub sdk: &'a aws_config::SdkConfig,
    pub kube: kube::Client,
    /// This replica's name in the lease.
    pub replica: String,
    /// How long to wait for the first full view of the cluster.
    pub cluster_sync: Duration,
}

/// Connects to everything (AWS from the standard chain, Kubernetes from `KUBECONFIG` or
/// in-cluster). Fails with a clear error when a dependency cannot even be configured.
pub async fn build_context(cfg: Config, dry_run: bool) -> Result<Context> {
    let sdk = aws_config(&cfg).await?;
    let kube = default_kube().await?;
    connect(
        cfg,
        dry_run,
        Connection {
            sdk: &sdk,
            kube,
            replica: replica_id(),
            cluster_sync: CLUSTER_SYNC_TIMEOUT,
        },
    )
    .await
}

/// Kubernetes from `KUBECONFIG` or in-cluster.
pub async fn default_kube() -> Result<kube::Client> {
    kube::Client::try_default().await.map_err(|e| {
        Error::Kubernetes(format!(
            "cannot configure a client ({e}); set KUBECONFIG or run in-cluster"
        ))
    })
}

/// Builds the cycle's context on given AWS and Kubernetes clients (the daemon's, or the Lambda
/// mode's: its Kubernetes identity comes from Secrets Manager).
pub async fn connect(cfg: Config, dry_run: bool, c: Connection<'_>) -> Result<Context> {
    let operation = operation_timeout(&cfg);
    let cluster = ClusterWatch::start(c.kube.clone());
    cluster.ready(c.cluster_sync).await?;
    let prometheus = Prometheus::new(cfg.prometheus.clone(), cfg.custom_signals.clone())?;
    let metrics = Metrics::new();
    let dry_run = dry_run || cfg.dry_run;
    let actuator = Actuator::new(
        c.sdk,
        c.kube,
        dry_run,
        metrics.aws_calls.clone(),
        metrics.fence_window.clone(),
    );
    let store = Store::new(
        c.sdk,
        StoreOptions {
            table: cfg.state.table.clone(),
            cluster: cfg.cluster_id.clone(),
            replica: c.replica,
            lease_ttl: cfg.state.lease_ttl,
            history_retention: cfg.state.history_retention,
            // An old holder's AWS call ends within one operation timeout of its last check.
            takeover_grace: operation,
            dry_run,
        },
        metrics.aws_calls.clone(),
    );
    let mut notifier =
        Notifier::new(cfg.notifications.webhook_url.clone()).counting(metrics.errors.clone());
    if let Some(arn) = &cfg.notifications.sns_topic_arn {
        notifier = notifier.with_sns(aws_sdk_sns::Client::new(c.sdk), arn.clone());
    }
    let prices = PriceBook::new(
        c.sdk,
        cfg.prices.lookup,
        cfg.prices.refresh,
        metrics.aws_calls.clone(),
    );
    let mut ctx = Context::new(cfg, prometheus, cluster, actuator, store, metrics);
    ctx.notifier = notifier;
    ctx.prices = prices;
    Ok(ctx)
}

/// After a cycle: its figures to CloudWatch (when enabled). Returns the failure, if any.
pub async fn publish_figures(
    ctx: &Context,
    cloudwatch: Option<&CloudWatch>,
    outcome: &Result<cycle::Outcome>,
    cycle_time: Duration,
    problems: usize,
    execution: Option<Duration>,
) -> Option<Error> {
    let cw = cloudwatch?;
    let mut figures = Figures::of(ctx, outcome, cycle_time.as_secs_f64(), problems);
    figures.execution_ms = execution.map(|d| d.as_secs_f64() * 1000.0);
    cw.publish(ctx, &figures).await.err()
}

/// `once`: start-up reconciliation and one full cycle, then the lease is handed back so the
/// next run (or replica) need not wait for it to expire, and notifications are sent.
pub async fn once(cfg: Config, dry_run: bool) -> Result<cycle::Outcome> {
    let started = Instant::now();
    let sdk = aws_config(&cfg).await?;
    let cloudwatch = CloudWatch::from_config(&cfg, &sdk);
    let kube = default_kube().await?;
    let ctx = connect(
        cfg,
        dry_run,
        Connection {
            sdk: &sdk,
            kube,
            replica: replica_id(),
            cluster_sync: CLUSTER_SYNC_TIMEOUT,
        },
    )
    .await?;
    if let Err(e) = cycle::reconcile(&ctx).await {
        tracing::warn!(error = %e, "start-up reconciliation failed; continuing");
    }
    let cycle_started = Instant::now();
    let outcome = cycle::run_once(&ctx, true).await;
    let cycle_time = cycle_started.elapsed();
    release(&ctx).await;
    let _ = publish_figures(
        &ctx,
        cloudwatch.as_ref(),
        &outcome,
        cycle_time,
        0,
        Some(started.elapsed()),
    )
    .await;
    // The process ends after this: give the notifications their chance to go out.
    for failure in ctx.notifier.flush(NOTIFY_FLUSH).await {
        tracing::warn!(%failure, "notification not sent");
    }
    outcome
}

/// Hands the lease back, if this replica holds it.
pub async fn release(ctx: &Context) {
    if let Some(lease) = ctx.held.lock().await.lease.take()
        && let Err(e) = ctx.store.release(&lease).await
    {
        tracing::warn!(error = %e, "could not release the lease; it will expire on its own");
    }
}

pub async fn run(cfg: Config, dry_run: bool) -> Result<()> {
    let token = api_token(&cfg)?;
    let listen = cfg.api.listen;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::Server(format!(
            "cannot listen on {listen}: {e}; is another controller running? change api.listen"
        ))
    })?;
    let sdk = aws_config(&cfg).await?;
    let cloudwatch = CloudWatch::from_config(&cfg, &sdk);
    let kube = default_kube().await?;
    let ctx = Arc::new(
        connect(
            cfg,
            dry_run,
            Connection {
                sdk: &sdk,
                kube,
                replica: replica_id(),
                cluster_sync: CLUSTER_SYNC_TIMEOUT,
            },
        )
        .await?,
    );
    tracing::info!(%listen, replica = %ctx.store.replica, dry_run = ctx.dry_run(), "controller started");
    if let Err(e) = cycle::reconcile(&ctx).await {
        tracing::warn!(error = %e, "start-up reconciliation failed; continuing");
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let app = crate::api::router(ctx.clone(), token);
        let mut stop = stop_rx.clone();
        tokio::spawn(crate::serve::serve(listener, app, async move {
            let _ = stop.changed().await;
        }))
    };

    let mut tick = tokio::time::interval(ctx.cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = smartscale_common::shutdown::signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
            _ = ctx.cluster.unschedulable.notified() => {
                tokio::time::sleep(FAST_PATH_DEBOUNCE).await;
                tracing::debug!("fast path: unschedulable pod");
            }
        }
        let started = Instant::now();
        let outcome = cycle::run_once(&ctx, false).await;
        let _ = publish_figures(
            &ctx,
            cloudwatch.as_ref(),
            &outcome,
            started.elapsed(),
            0,
            None,
        )
        .await;
    }

    let _ = stop_tx.send(true);
    release(&ctx).await;
    let _ = server.await;
    tracing::info!("controller stopped");
    Ok(())
}
