//! One control cycle: lease → signals → policy → actuation → record.
//!
//! - `observe`: read every source and build the policy's view (and export it as metrics);
//! - `guards`: what the leader does so AWS and K3s cannot act behind the policy's back (group
//!   safety, launch backoff, ghost Nodes);
//! - here: the lease, the cycle itself and the write-ahead action;
//! - `manual`: `POST /scale` requests, through the same lease, fencing and records;
//! - `reconcile`: start-up drift check.

mod guards;
mod manual;
mod model;
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
use crate::state::{HistoryRecord, Lease, LeaseStatus, PendingIntent, Store, StoredState};
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
    /// Each group's last safety check (`guards::secure_groups`).
    safety: std::sync::Mutex<HashMap<String, (Instant, crate::actuator::GroupSafety)>>,
    /// Instances EC2 said exist, and when (`guards::collect_ghost_nodes`).
    known_instances: std::sync::Mutex<HashMap<String, Instant>>,
    /// Each instance's lifecycle state at the last look (to see launches end in Pending:Wait).
    last_states: std::sync::Mutex<HashMap<String, String>>,
    /// The workers' prices, looked up in the background (`signals::prices`).
    pub prices: crate::signals::prices::PriceBook,
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
    /// Per group: what blocks its scale-down, what the controller fixed, its launch backoff.
    pub groups: HashMap<String, GroupStatus>,
    /// Worker Nodes whose providerID names no EC2 instance: outside every group.
    pub unknown_nodes: Vec<String>,
    /// Nodes deleted because their instance was gone (last cycle that deleted any).
    pub deleted_nodes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupStatus {
    pub scale_down_blocked: Vec<String>,
    pub fixed: Vec<String>,
    pub backoff: Option<String>,
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
            safety: std::sync::Mutex::new(HashMap::new()),
            known_instances: std::sync::Mutex::new(HashMap::new()),
            last_states: std::sync::Mutex::new(HashMap::new()),
            prices: crate::signals::prices::PriceBook::offline(),
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
            self.notifier.send(crate::notify::Notification::errors(
                &self.cfg.cluster_id,
                n,
                &err.to_string(),
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
    observe::count_launch_timeouts(ctx, &asgs);
    let safety = guards::secure_groups(ctx, &asgs).await;
    let cancels = guards::update_backoffs(ctx, &asgs, &mut state, now).await;
    let obs = build_observation(ctx, &prom, &asgs, &snap, &mut state, &safety, now);
    let mut capacity = capacity_model(ctx, &asgs, &snap);
    let (decision, memory) =
        policy::decide_with(&obs, capacity.as_mut(), &state.memory, &ctx.cfg.policy, now);
    if !decision.unhelpable.is_empty() {
        tracing::info!(
            pods = ?decision.unhelpable,
            "pending pods no new node of any group could take (reason per group); not scaling up for them"
        );
        let refs = unhelpable_refs(&decision.unhelpable, &snap);
        let report = ctx.actuator.report_unhelpable(&refs);
        if tokio::time::timeout(std::time::Duration::from_secs(2), report)
            .await
            .is_err()
        {
            tracing::warn!("NotTriggerScaleUp events not all published within 2 s");
        }
    }
    export(ctx, &prom, &obs, &asgs, &snap, &decision);
    report(ctx, &obs, &snap, &safety).await;
    if !ctx.dry_run() {
        let deleted = guards::collect_ghost_nodes(ctx, &lease, &asgs, &snap).await;
        if !deleted.is_empty() {
            ctx.status.write().await.deleted_nodes = deleted;
        }
    }

    let group = obs.groups.get(decision.group);
    let group_name = group.map(|g| g.asg_name.clone());
    let signals = serde_json::to_value(&prom).unwrap_or_default();
    let mut outcome = Outcome {
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
    let acts = decision.action != Action::None
        || !decision.rollback.is_empty()
        || !decision.replace.is_empty();
    if !acts && cancels.is_empty() {
        // Nothing to do: the trend and the low-usage window move on.
        state.memory = memory;
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
    // A new holder of a lease that ran out waits until the old holder's last AWS call must
    // have landed (AWS calls carry no fencing token). Nothing is committed: next cycle decides anew.
    if let Some(wait) = lease.takeover_wait() {
        outcome.action = Action::None.as_str();
        outcome.victim = None;
        outcome.rollback = vec![];
        outcome.reasons.push(format!(
            "took the lease over from {}; acting in {:.1}s, once its last AWS call must have landed",
            lease.took_over_from.as_deref().unwrap_or("an expired holder"),
            wait.as_secs_f64()
        ));
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
    let mut result = Ok(());
    for c in &cancels {
        if let Err(e) = cancel(ctx, &lease, &mut state, c).await {
            tracing::warn!(asg = %c.group, error = %e, "could not take back the capacity that is not coming");
        }
    }
    if acts {
        result = act(
            ctx, &lease, &mut state, &decision, memory, group, signals, "policy",
        )
        .await;
    } else {
        state.memory = memory;
        if let Err(e) = ctx.store.commit(&lease, &state, None).await {
            tracing::warn!(error = %e, "could not save the state");
        }
    }
    ctx.loop_acting.store(false, Ordering::SeqCst);
    held.state = Some(state);
    result.map(|_| outcome)
}

/// Exposes what the cycle found beyond the decision: per-group safety and backoff, and Nodes
/// outside every group (`/status`).
async fn report(
    ctx: &Context,
    obs: &policy::Observation,
    snap: &crate::signals::cluster::ClusterSnapshot,
    safety: &HashMap<String, crate::actuator::GroupSafety>,
) {
    let groups = obs
        .groups
        .iter()
        .map(|g| {
            let s = safety.get(&g.asg_name).cloned().unwrap_or_default();
            (
                g.asg_name.clone(),
                GroupStatus {
                    scale_down_blocked: s.problems,
                    fixed: s.fixed,
                    backoff: g.backoff.clone(),
                },
            )
        })
        .collect();
    let unknown = snap
        .nodes
        .iter()
        .zip(&snap.meta)
        .filter(|(n, _)| n.instance_id.is_none() && !n.control_plane)
        .map(|(n, m)| format!("{} (providerID {:?})", n.name, m.provider_id))
        .collect();
    let mut st = ctx.status.write().await;
    st.groups = groups;
    st.unknown_nodes = unknown;
}

/// Takes back desired capacity a group in backoff will not get (fenced, recorded).
async fn cancel(
    ctx: &Context,
    lease: &Lease,
    state: &mut StoredState,
    c: &guards::Cancel,
) -> Result<()> {
    let mut rec = HistoryRecord {
        reasons: vec![format!("backoff: {}", c.reason)],
        source: "backoff".to_string(),
        status: "intent".to_string(),
        ..history(
            ctx,
            "scale_up_cancelled",
            &c.group,
            c.from,
            c.to,
            lease.token,
        )
    };
    ctx.store.commit(lease, state, Some(&rec)).await?;
    if !lease.fresh(ctx.cfg.state.lease_ttl) {
        return Err(Error::Fenced {
            ours: lease.token,
            current: 0,
        });
    }
    let r = ctx.actuator.set_desired(&c.group, c.to).await;
    rec.status = match &r {
        Ok(()) => "done".into(),
        Err(e) => format!("failed: {e}"),
    };
    if r.is_ok() && !ctx.dry_run() {
        state.last_desired.insert(c.group.clone(), c.to);
    }
    ctx.store.commit(lease, state, Some(&rec)).await?;
    r
}

/// Write-ahead: the intent is recorded (fenced) before AWS is called, the outcome after. The
/// policy's memory (`memory`: cooldowns, trend reset) and the desired capacity we set are
/// committed only with a successful action, so a failed or throttled one is retried next cycle
/// and a crash in between leaves an intent (resolved at start-up, `reconcile`), not false drift.
#[allow(clippy::too_many_arguments)]
pub(super) async fn act(
    ctx: &Context,
    lease: &Lease,
    state: &mut StoredState,
    d: &Decision,
    memory: policy::Memory,
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
            if d.replace.is_empty() {
                "rollback"
            } else {
                "replace"
            }
        } else {
            source
        }
        .to_string(),
        status: "intent".to_string(),
        ..history(ctx, d.action.as_str(), &name, d.from, d.to, lease.token)
    };
    state.intent = Some(PendingIntent {
        time: intent.time.clone(),
        action: intent.action.clone(),
        node_group: name.clone(),
        from: d.from,
        to: d.to,
        victim: intent.victim.clone(),
        source: intent.source.clone(),
    });
    ctx.store.commit(lease, state, Some(&intent)).await?;

    // Each AWS write goes out only while the lease is fresh by our own monotonic clock: a
    // replica paused after the commit (and replaced) must not act late. The check sits right
    // before each call (`ready`).
    let ready = || {
        crate::testing::pause_point("before-final-lease-check");
        if lease.fresh(ctx.cfg.state.lease_ttl) {
            ctx.actuator.fence_window.checked();
            Ok(())
        } else {
            Err(Error::Fenced {
                ours: lease.token,
                current: 0,
            })
        }
    };
    // Overdue and broken instances are replaced (desired kept); a failure there is recorded but
    // does not hold back the decision's own action.
    let mut side_errors = Vec::new();
    for id in d.rollback.iter().chain(&d.replace) {
        if let Err(e) = ready() {
            return finish(ctx, lease, state, &mut intent, None, Err(e)).await;
        }
        if let Err(e) = ctx.actuator.terminate(id, false).await {
            tracing::warn!(instance = %id, error = %e, "could not replace the instance");
            side_errors.push(format!("{id}: {e}"));
        }
    }
    let result = match (d.action, &d.victim) {
        (Action::ScaleUp, _) => match ready() {
            Ok(()) => ctx.actuator.set_desired(&name, d.to).await,
            Err(e) => Err(e),
        },
        (Action::ScaleDown, Some(v)) => {
            // Nothing new lands on it from here on; undone if the termination fails.
            match ctx
                .actuator
                .mark_for_deletion(&v.node, jiff::Timestamp::now().as_second())
                .await
            {
                Err(e) => Err(e),
                Ok(()) => {
                    let r = match ready() {
                        Ok(()) => ctx.actuator.terminate(&v.instance_id, true).await,
                        Err(e) => Err(e),
                    };
                    if r.is_err()
                        && let Err(e) = ctx.actuator.unmark(&v.node).await
                    {
                        tracing::warn!(node = %v.node, error = %e, "could not untaint the node after the failed termination");
                    }
                    r
                }
            }
        }
        _ => Ok(()),
    };
    if !side_errors.is_empty() {
        intent
            .reasons
            .push(format!("replacements failed: {}", side_errors.join("; ")));
    }
    let memory = result.is_ok().then_some(memory);
    if result.is_ok() && d.action != Action::None && !dry {
        state.last_desired.insert(name.clone(), d.to);
    }
    if result.is_ok() && !dry && d.action != Action::None {
        ctx.notifier.send(crate::notify::Notification::action(
            &ctx.cfg.cluster_id,
            d.action.as_str(),
            &name,
            d.from,
            d.to,
            d.victim.as_ref().map(|v| v.node.as_str()),
            &d.reasons,
        ));
    }
    finish(ctx, lease, state, &mut intent, memory, result).await
}

/// Records the outcome with the state: the new memory only after a success; the intent cleared.
async fn finish(
    ctx: &Context,
    lease: &Lease,
    state: &mut StoredState,
    intent: &mut HistoryRecord,
    memory: Option<policy::Memory>,
    result: Result<()>,
) -> Result<()> {
    intent.status = match &result {
        Ok(()) => "done".into(),
        Err(e) => format!("failed: {e}"),
    };
    if let Some(m) = memory {
        state.memory = m;
    }
    state.intent = None;
    if let Err(e) = ctx.store.commit(lease, state, Some(intent)).await {
        // The intent stays in the stored state; the next start-up resolves it against AWS.
        tracing::warn!(error = %e, "could not record the action's outcome");
    }
    result
}

/// This cycle's capacity model; when it cannot be built, the reason is logged and counted and
/// the policy packs requests instead.
fn capacity_model(
    ctx: &Context,
    asgs: &[crate::actuator::AsgState],
    snap: &crate::signals::cluster::ClusterSnapshot,
) -> Option<policy::CapacityModel> {
    let _span = tracing::info_span!("capacity_model").entered();
    match model::build(ctx, asgs, snap) {
        Ok(m) => Some(m),
        Err(e) => {
            ctx.metrics.error("capacity_model");
            tracing::error!(error = %e, "capacity model not built; deciding by requests only this cycle");
            None
        }
    }
}

/// The pods named in `unhelpable` (`ns/name: why`), as event references with their uid.
fn unhelpable_refs(
    unhelpable: &[String],
    snap: &crate::signals::cluster::ClusterSnapshot,
) -> Vec<(k8s_openapi::api::core::v1::ObjectReference, String)> {
    unhelpable
        .iter()
        .filter_map(|line| {
            let (key, why) = line.split_once(": ")?;
            let (ns, name) = key.split_once('/')?;
            let uid = snap
                .objects
                .pods
                .iter()
                .find(|p| {
                    p.metadata.namespace.as_deref() == Some(ns)
                        && p.metadata.name.as_deref() == Some(name)
                })
                .and_then(|p| p.metadata.uid.clone());
            Some((
                k8s_openapi::api::core::v1::ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    namespace: Some(ns.into()),
                    name: Some(name.into()),
                    uid,
                    ..Default::default()
                },
                why.to_string(),
            ))
        })
        .collect()
}
