//! One control cycle: lease → signals → policy → actuation → record.
//!
//! - `observe`: read every source and build the policy's view (and export it as metrics);
//! - here: the lease, the cycle itself and the write-ahead action;
//! - `manual`: `POST /scale` requests, through the same lease, fencing and records;
//! - `reconcile`: start-up drift check.

mod manual;
mod observe;
mod reconcile;

pub use manual::{ManualRequest, plan_manual, run_manual};
use observe::{build_observation, export, observe};
pub use reconcile::reconcile;

use crate::actuator::Actuator;
use crate::config::Config;
use crate::metrics::{Metrics, ReplicaLabels};
use crate::notify::Notifier;
use crate::policy::{self, Action, Decision};
use crate::signals::cluster::ClusterWatch;
use crate::signals::prometheus::Prometheus;
use crate::state::{HistoryRecord, Lease, LeaseStatus, Store, StoredState};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;
use tokio::sync::{Mutex, RwLock};
/// Everything a cycle needs; shared with the HTTP API. No globals.
pub struct Context {
    pub cfg: Config,
    pub prometheus: Prometheus,
    pub cluster: ClusterWatch,
    pub actuator: Actuator,
    pub store: Store,
    pub metrics: Metrics,
    pub notifier: Notifier,
    pub status: RwLock<Status>,
    /// The lease we hold and the state cached while we hold it. Locked for a whole cycle, so
    /// cycles and manual actions never interleave.
    pub held: Mutex<Held>,
    /// The manual-request slot: taken when `POST /scale` accepts a request, freed (by
    /// [`ManualSlot`]'s drop, even on a panic) when that request is recorded.
    manual_in_flight: AtomicBool,
    /// Set while the loop executes one of its own actions.
    loop_acting: AtomicBool,
    consecutive_errors: AtomicU32,
}

/// Holds the manual-request slot; dropping it frees the slot.
pub struct ManualSlot(std::sync::Arc<Context>);

impl Drop for ManualSlot {
    fn drop(&mut self) {
        self.0.manual_in_flight.store(false, Ordering::SeqCst);
    }
}

#[derive(Default)]
pub struct Held {
    pub lease: Option<Lease>,
    pub state: Option<StoredState>,
}

/// Health of each dependency, by the last cycle's experience.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub last_decision: Option<serde_json::Value>,
    pub last_cycle_at: Option<String>,
    pub last_error: Option<String>,
    pub lease_holder: Option<String>,
    pub fencing_token: Option<u64>,
    pub dependencies: HashMap<&'static str, DependencyHealth>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DependencyHealth {
    pub ok: bool,
    pub detail: String,
}

/// What a cycle decided, as `once` prints it and history stores it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub action: &'static str,
    pub node_group: Option<String>,
    pub from: u32,
    pub to: u32,
    pub victim: Option<String>,
    pub reasons: Vec<String>,
    pub dry_run: bool,
    pub rollback: Vec<String>,
    pub in_flight: u32,
    pub leader: bool,
    pub fencing_token: Option<u64>,
    pub signals: serde_json::Value,
}

impl Context {
    pub fn new(
        cfg: Config,
        prometheus: Prometheus,
        cluster: ClusterWatch,
        actuator: Actuator,
        store: Store,
        metrics: Metrics,
    ) -> Context {
        let notifier = Notifier::new(cfg.notifications.webhook_url.clone());
        Context {
            cfg,
            prometheus,
            cluster,
            actuator,
            store,
            metrics,
            notifier,
            status: RwLock::new(Status::default()),
            held: Mutex::new(Held::default()),
            manual_in_flight: AtomicBool::new(false),
            loop_acting: AtomicBool::new(false),
            consecutive_errors: AtomicU32::new(0),
        }
    }

    pub fn dry_run(&self) -> bool {
        self.actuator.dry_run()
    }

    /// Whether any scaling action (the loop's or a manual one) is under way.
    pub fn action_in_flight(&self) -> bool {
        self.manual_in_flight.load(Ordering::SeqCst) || self.loop_acting.load(Ordering::SeqCst)
    }

    /// Takes the manual-request slot, or `None` while any action is under way (the API's 409).
    pub fn manual_slot(self: &std::sync::Arc<Self>) -> Option<ManualSlot> {
        if self.loop_acting.load(Ordering::SeqCst) {
            return None;
        }
        self.manual_in_flight
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| ManualSlot(self.clone()))
    }

    async fn health(&self, name: &'static str, ok: bool, detail: impl Into<String>) {
        self.status.write().await.dependencies.insert(
            name,
            DependencyHealth {
                ok,
                detail: detail.into(),
            },
        );
    }

    /// Counts an error and notifies once errors repeat `error_threshold` times in a row.
    pub async fn failed(&self, err: &Error) {
        self.metrics.error(err.kind());
        let n = self.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.cfg.notifications.error_threshold {
            self.notifier.send(format!(
                "SmartScale ({}): {n} failed cycles in a row; last error: {err}",
                self.cfg.cluster_id
            ));
        }
        let mut st = self.status.write().await;
        st.last_error = Some(err.to_string());
    }
}

pub(super) fn now_parts() -> (jiff::Timestamp, i64, f64) {
    let t = jiff::Timestamp::now();
    (t, t.as_second(), t.as_millisecond() as f64 / 1000.0)
}

/// Takes or renews the lease. `Ok(None)` when another replica holds it.
pub(super) async fn lease(ctx: &Context, held: &mut Held, now: f64) -> Result<Option<Lease>> {
    let status = match ctx.store.acquire(held.lease.as_ref(), now).await {
        Ok(s) => {
            ctx.health("dynamodb", true, "ok").await;
            s
        }
        Err(e) => {
            ctx.health("dynamodb", false, e.to_string()).await;
            return Err(e);
        }
    };
    let replica = ReplicaLabels {
        replica: ctx.store.replica.clone(),
    };
    match status {
        LeaseStatus::Held(l) => {
            if held.lease.as_ref().map(|o| o.token) != Some(l.token) {
                // New acquisition: whatever we cached may be stale.
                held.state = None;
            }
            ctx.metrics.lease_held.get_or_create(&replica).set(1);
            ctx.metrics.fencing_token.set(l.token as i64);
            let mut st = ctx.status.write().await;
            st.lease_holder = Some(ctx.store.replica.clone());
            st.fencing_token = Some(l.token);
            held.lease = Some(l.clone());
            Ok(Some(l))
        }
        LeaseStatus::Other { holder, .. } => {
            held.lease = None;
            held.state = None;
            ctx.metrics.lease_held.get_or_create(&replica).set(0);
            ctx.status.write().await.lease_holder = Some(holder);
            Ok(None)
        }
    }
}

/// A history record with the common fields; callers fill in the rest.
pub(super) fn history(
    ctx: &Context,
    action: &str,
    group: &str,
    from: u32,
    to: u32,
    token: u64,
) -> HistoryRecord {
    HistoryRecord {
        time: crate::state::sortable_time(jiff::Timestamp::now()),
        action: action.to_string(),
        node_group: group.to_string(),
        from,
        to,
        victim: None,
        reasons: vec![],
        signals: serde_json::Value::Null,
        dry_run: ctx.dry_run(),
        fencing_token: token,
        source: "policy".to_string(),
        status: "recorded".to_string(),
    }
}

/// Runs one full cycle. `record_none` also writes a history record when nothing happens (`once`).
#[tracing::instrument(skip(ctx), fields(action, from, to))]
pub async fn run_once(ctx: &Context, record_none: bool) -> Result<Outcome> {
    let started = Instant::now();
    let result = cycle(ctx, record_none).await;
    ctx.metrics
        .cycle_duration
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(o) => {
            ctx.consecutive_errors.store(0, Ordering::Relaxed);
            let span = tracing::Span::current();
            span.record("action", o.action);
            span.record("from", o.from);
            span.record("to", o.to);
            tracing::info!(action = o.action, from = o.from, to = o.to, victim = ?o.victim, reasons = ?o.reasons, dry_run = o.dry_run, "decision");
            let mut st = ctx.status.write().await;
            st.last_decision = serde_json::to_value(o).ok();
            st.last_cycle_at = Some(jiff::Timestamp::now().to_string());
            st.last_error = None;
        }
        Err(e) => {
            tracing::error!(error = %e, "cycle failed");
            ctx.failed(e).await;
        }
    }
    result
}

async fn cycle(ctx: &Context, record_none: bool) -> Result<Outcome> {
    let mut held = ctx.held.lock().await;
    // Read the clock after the lock: a cycle that waited behind a manual action must not
    // renew the lease with a time already partly past.
    let (_, now, now_f) = now_parts();
    let Some(lease) = lease(ctx, &mut held, now_f).await? else {
        // A standby reads its dependencies too, so its /healthz says whether it could take
        // over, rather than "not checked yet" forever.
        let _ = observe(ctx).await;
        let holder = ctx
            .status
            .read()
            .await
            .lease_holder
            .clone()
            .unwrap_or_default();
        return Ok(Outcome {
            action: Action::None.as_str(),
            node_group: None,
            from: 0,
            to: 0,
            victim: None,
            reasons: vec![format!(
                "not the lease holder ({holder} holds it); standing by"
            )],
            dry_run: ctx.dry_run(),
            rollback: vec![],
            in_flight: 0,
            leader: false,
            fencing_token: None,
            signals: serde_json::Value::Null,
        });
    };
    let mut state = match held.state.take() {
        Some(s) => s,
        None => ctx.store.load().await?,
    };
    let before = state.clone();
    let (prom, asgs, snap) = observe(ctx).await?;
    let obs = build_observation(ctx, &prom, &asgs, &snap, &mut state, now);
    let (decision, memory) = policy::decide(&obs, &state.memory, &ctx.cfg.policy, now);
    state.memory = memory;
    export(ctx, &prom, &obs, &snap, &decision);

    let group = obs.groups.get(decision.group);
    let group_name = group.map(|g| g.asg_name.clone());
    let signals = serde_json::to_value(&prom).unwrap_or_default();
    let outcome = Outcome {
        action: decision.action.as_str(),
        node_group: group_name.clone(),
        from: decision.from,
        to: decision.to,
        victim: decision.victim.as_ref().map(|v| v.instance_id.clone()),
        reasons: decision.reasons.clone(),
        dry_run: ctx.dry_run(),
        rollback: decision.rollback.clone(),
        in_flight: decision.in_flight,
        leader: true,
        fencing_token: Some(lease.token),
        signals: signals.clone(),
    };
    let acts = decision.action != Action::None || !decision.rollback.is_empty();
    if !acts {
        if state != before || record_none {
            let rec = record_none.then(|| HistoryRecord {
                reasons: decision.reasons.clone(),
                signals: signals.clone(),
                ..history(
                    ctx,
                    "none",
                    group_name.as_deref().unwrap_or(""),
                    decision.from,
                    decision.to,
                    lease.token,
                )
            });
            ctx.store.commit(&lease, &state, rec.as_ref()).await?;
        }
        held.state = Some(state);
        return Ok(outcome);
    }

    if !lease.fresh(ctx.cfg.state.lease_ttl) {
        return Err(Error::Fenced {
            ours: lease.token,
            current: 0,
        });
    }
    ctx.loop_acting.store(true, Ordering::SeqCst);
    let result = act(ctx, &lease, &mut state, &decision, group, signals, "policy").await;
    ctx.loop_acting.store(false, Ordering::SeqCst);
    held.state = Some(state);
    result.map(|_| outcome)
}

/// Write-ahead: the intent is recorded (fenced) before AWS is called, the outcome after.
pub(super) async fn act(
    ctx: &Context,
    lease: &Lease,
    state: &mut StoredState,
    d: &Decision,
    group: Option<&policy::Group>,
    signals: serde_json::Value,
    source: &str,
) -> Result<()> {
    let dry = ctx.dry_run();
    let name = group.map(|g| g.asg_name.clone()).unwrap_or_default();
    let mut intent = HistoryRecord {
        victim: d.victim.as_ref().map(|v| v.instance_id.clone()),
        reasons: d.reasons.clone(),
        signals,
        source: if d.action == Action::None {
            "rollback"
        } else {
            source
        }
        .to_string(),
        status: "intent".to_string(),
        ..history(ctx, d.action.as_str(), &name, d.from, d.to, lease.token)
    };
    // Dry-run sets nothing, so it records no desired capacity to compare against later.
    if d.action != Action::None && !dry {
        state.last_desired.insert(name.clone(), d.to);
    }
    ctx.store.commit(lease, state, Some(&intent)).await?;

    // Each AWS write goes out only while the lease is fresh by our own monotonic clock: a
    // replica paused after the commit (and replaced) must not act late.
    let fresh = || {
        if lease.fresh(ctx.cfg.state.lease_ttl) {
            Ok(())
        } else {
            Err(Error::Fenced {
                ours: lease.token,
                current: 0,
            })
        }
    };
    let mut result = Ok(());
    for id in &d.rollback {
        if let Err(e) = fresh() {
            result = Err(e);
            break;
        }
        if let Err(e) = ctx.actuator.terminate(id, false).await {
            result = Err(e);
        }
    }
    if result.is_ok() {
        result = match (d.action, &d.victim) {
            (Action::ScaleUp, _) => match fresh() {
                Ok(()) => ctx.actuator.set_desired(&name, d.to).await,
                Err(e) => Err(e),
            },
            (Action::ScaleDown, Some(v)) => match fresh() {
                Ok(()) => ctx.actuator.terminate(&v.instance_id, true).await,
                Err(e) => Err(e),
            },
            _ => Ok(()),
        };
    }
    intent.status = match &result {
        Ok(()) => "done".into(),
        Err(e) => format!("failed: {e}"),
    };
    if let Err(e) = ctx.store.record(lease, &intent).await {
        tracing::warn!(error = %e, "could not record the action's outcome");
    }
    if result.is_ok() && !dry {
        ctx.notifier.send(format!(
            "SmartScale ({}): {} {} {} → {}{}; {}",
            ctx.cfg.cluster_id,
            d.action.as_str(),
            name,
            d.from,
            d.to,
            d.victim
                .as_ref()
                .map(|v| format!(" (removing {})", v.node))
                .unwrap_or_default(),
            d.reasons.join("; ")
        ));
    }
    result
}
