//! One control cycle: lease → signals → policy → actuation → record. Also manual scaling
//! requests from the API, through the same lease, fencing and records.

use crate::actuator::{Actuator, AsgState};
use crate::config::Config;
use crate::metrics::{
    DecisionLabels, GroupLabels, Metrics, NodeInfoLabels, NodeLabels, PriceLabels, ReplicaLabels,
    SignalLabels,
};
use crate::notify::Notifier;
use crate::policy::{self, Action, Decision, Lifecycle, Observation, Resources};
use crate::signals::cluster::{ClusterSnapshot, ClusterWatch};
use crate::signals::prometheus::{PromSignals, Prometheus};
use crate::state::{HistoryRecord, Lease, LeaseStatus, Store, StoredState};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;
use tokio::sync::{Mutex, RwLock};

/// Default node size when neither the config nor a Ready node tells (t3.medium-like).
const FALLBACK_ALLOCATABLE: Resources = Resources {
    cpu: 2.0,
    memory: 4.0,
};

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
    /// Set from the moment an action is accepted until it is recorded (the API answers 409).
    pub action_in_flight: AtomicBool,
    consecutive_errors: AtomicU32,
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

/// A manual request from `POST /scale`.
#[derive(Debug, Clone)]
pub struct ManualRequest {
    pub action: Action,
    pub count: u32,
    pub reason: String,
    pub node_group: Option<String>,
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
            action_in_flight: AtomicBool::new(false),
            consecutive_errors: AtomicU32::new(0),
        }
    }

    pub fn dry_run(&self) -> bool {
        self.actuator.dry_run()
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

fn now_parts() -> (jiff::Timestamp, i64, f64) {
    let t = jiff::Timestamp::now();
    (t, t.as_second(), t.as_millisecond() as f64 / 1000.0)
}

/// Takes or renews the lease. `Ok(None)` when another replica holds it.
async fn lease(ctx: &Context, held: &mut Held, now: f64) -> Result<Option<Lease>> {
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

/// Reads every source. Prometheus failures become missing readings; AWS and Kubernetes
/// failures are errors (without them no decision is safe).
async fn observe(ctx: &Context) -> Result<(PromSignals, Vec<AsgState>, ClusterSnapshot)> {
    let names = ctx.cfg.asg_names();
    let (prom, asgs) = tokio::join!(ctx.prometheus.read(), ctx.actuator.describe(&names));
    let prom_ok = prom.healthy();
    ctx.health(
        "prometheus",
        prom_ok,
        if prom_ok {
            "ok".to_string()
        } else {
            format!("{:?}", [&prom.usage.cpu, &prom.usage.memory])
        },
    )
    .await;
    if !prom_ok {
        ctx.metrics.error("prometheus");
    }
    let asgs = match asgs {
        Ok(a) => {
            ctx.health("autoscaling", true, "ok").await;
            a
        }
        Err(e) => {
            ctx.health("autoscaling", false, e.to_string()).await;
            return Err(e);
        }
    };
    if !ctx.cluster.healthy() {
        ctx.health("kubernetes", false, "watch failing; see logs")
            .await;
        return Err(Error::Kubernetes(
            "the Kubernetes watch is failing; no decision without the cluster's state".into(),
        ));
    }
    ctx.health("kubernetes", true, "ok").await;
    Ok((prom, asgs, ctx.cluster.snapshot()))
}

/// Allocatable of one node of the group: configured, else the largest Ready node's, else a default.
fn allocatable(ctx: &Context, gi: usize, asg: &AsgState, snap: &ClusterSnapshot) -> Resources {
    if let Some(a) = ctx.cfg.node_groups[gi].allocatable {
        return a;
    }
    snap.nodes
        .iter()
        .filter(|n| {
            n.ready
                && n.instance_id
                    .as_ref()
                    .is_some_and(|id| asg.instances.iter().any(|i| &i.0 == id))
        })
        .map(|n| n.allocatable)
        .reduce(Resources::max)
        .unwrap_or(FALLBACK_ALLOCATABLE)
}

fn build_observation(
    ctx: &Context,
    prom: &PromSignals,
    asgs: &[AsgState],
    snap: &ClusterSnapshot,
    state: &mut StoredState,
    now: i64,
) -> Observation {
    // Remember when each not-yet-Ready instance was first seen; forget the rest.
    let ready: std::collections::HashSet<&str> = snap
        .nodes
        .iter()
        .filter(|n| n.ready)
        .filter_map(|n| n.instance_id.as_deref())
        .collect();
    let booting: Vec<&str> = asgs
        .iter()
        .flat_map(|g| g.instances.iter())
        .filter(|(id, l, _)| {
            matches!(l, Lifecycle::Launching | Lifecycle::InService) && !ready.contains(id.as_str())
        })
        .map(|(id, _, _)| id.as_str())
        .collect();
    state
        .first_seen
        .retain(|id, _| booting.contains(&id.as_str()));
    for id in &booting {
        state.first_seen.entry(id.to_string()).or_insert(now);
    }
    let groups = ctx
        .cfg
        .node_groups
        .iter()
        .enumerate()
        .filter_map(|(gi, g)| {
            let asg = asgs.iter().find(|a| a.name == g.asg_name)?;
            Some(asg.to_group(
                g.min,
                g.max,
                allocatable(ctx, gi, asg, snap),
                &state.first_seen,
                now,
            ))
        })
        .collect();
    Observation {
        usage: prom.usage.clone(),
        nodes: snap.nodes.clone(),
        pending: snap.pending.clone(),
        groups,
    }
}

fn export(
    ctx: &Context,
    prom: &PromSignals,
    obs: &Observation,
    snap: &ClusterSnapshot,
    d: &Decision,
) {
    let m = &ctx.metrics;
    let mut signals = vec![
        ("cpu", &prom.usage.cpu),
        ("memory", &prom.usage.memory),
        ("pending_pods", &prom.pending_pods),
        ("nodes", &prom.nodes),
    ];
    signals.extend(
        prom.usage
            .custom
            .iter()
            .map(|c| (c.name.as_str(), &c.value)),
    );
    for (name, r) in signals {
        m.signal_value
            .get_or_create(&SignalLabels {
                signal: name.to_string(),
            })
            .set(r.value().unwrap_or(f64::NAN));
    }
    m.pending_pods.set(obs.pending.len() as i64);
    m.node_info.clear();
    m.node_price.clear();
    for (gi, g) in obs.groups.iter().enumerate() {
        let ids: std::collections::HashSet<&str> =
            g.instances.iter().map(|i| i.id.as_str()).collect();
        let ready = obs
            .nodes
            .iter()
            .filter(|n| n.ready && n.instance_id.as_deref().is_some_and(|id| ids.contains(id)))
            .count() as i64;
        let live = g
            .instances
            .iter()
            .filter(|i| matches!(i.lifecycle, Lifecycle::Launching | Lifecycle::InService))
            .count() as i64;
        let set = |state: &str, v: i64| {
            m.nodes
                .get_or_create(&NodeLabels {
                    node_group: g.asg_name.clone(),
                    state: state.to_string(),
                })
                .set(v);
        };
        set("current", live);
        set("desired", g.desired as i64);
        set("ready", ready);
        set(
            "in_flight",
            (live - ready).max(0) + (g.desired as i64 - live).max(0),
        );
        let cfg = &ctx.cfg.node_groups[gi.min(ctx.cfg.node_groups.len() - 1)];
        let price = cfg.hourly_price.unwrap_or(0.0);
        m.hourly_cost
            .get_or_create(&GroupLabels {
                node_group: g.asg_name.clone(),
            })
            .set(price * live as f64);
        for (n, meta) in snap.nodes.iter().zip(&snap.meta) {
            let Some(id) = n.instance_id.as_deref().filter(|id| ids.contains(id)) else {
                continue;
            };
            m.node_info
                .get_or_create(&NodeInfoLabels {
                    node: n.name.clone(),
                    instance_id: id.to_string(),
                    instance_type: meta.instance_type.clone(),
                    capacity_type: meta.capacity_type.clone(),
                    zone: meta.zone.clone(),
                    node_group: g.asg_name.clone(),
                })
                .set(1);
            m.node_price
                .get_or_create(&PriceLabels {
                    node_group: g.asg_name.clone(),
                    instance_type: meta.instance_type.clone(),
                    capacity_type: meta.capacity_type.clone(),
                })
                .set(price);
        }
    }
    m.decisions
        .get_or_create(&DecisionLabels {
            action: d.action.as_str().to_string(),
            node_group: obs
                .groups
                .get(d.group)
                .map(|g| g.asg_name.clone())
                .unwrap_or_default(),
            dry_run: ctx.dry_run().to_string(),
        })
        .inc();
}

/// A history record with the common fields; callers fill in the rest.
fn history(
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
    let (_, now, now_f) = now_parts();
    let mut held = ctx.held.lock().await;
    let Some(lease) = lease(ctx, &mut held, now_f).await? else {
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
    ctx.action_in_flight.store(true, Ordering::SeqCst);
    let result = act(ctx, &lease, &mut state, &decision, group, signals, "policy").await;
    ctx.action_in_flight.store(false, Ordering::SeqCst);
    held.state = Some(state);
    result.map(|_| outcome)
}

/// Write-ahead: the intent is recorded (fenced) before AWS is called, the outcome after.
async fn act(
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
    if d.action != Action::None {
        state.last_desired.insert(name.clone(), d.to);
    }
    ctx.store.commit(lease, state, Some(&intent)).await?;

    let mut result = Ok(());
    for id in &d.rollback {
        if let Err(e) = ctx.actuator.terminate(id, false).await {
            result = Err(e);
        }
    }
    if result.is_ok() {
        result = match (d.action, &d.victim) {
            (Action::ScaleUp, _) => ctx.actuator.set_desired(&name, d.to).await,
            (Action::ScaleDown, Some(v)) => ctx.actuator.terminate(&v.instance_id, true).await,
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

/// Checks a manual request against the group's bounds. Returns (group index, from, to, clamp note).
pub async fn plan_manual(
    ctx: &Context,
    req: &ManualRequest,
) -> Result<(usize, u32, u32, Option<String>)> {
    let gi = match &req.node_group {
        Some(n) => ctx
            .cfg
            .node_groups
            .iter()
            .position(|g| &g.asg_name == n)
            .ok_or_else(|| Error::Other(format!("unknown node_group `{n}`")))?,
        None => 0,
    };
    let g = &ctx.cfg.node_groups[gi];
    let asg = ctx
        .actuator
        .describe(std::slice::from_ref(&g.asg_name))
        .await?;
    let asg = &asg[0];
    let (min, max) = (g.min.max(asg.min), g.max.min(asg.max));
    let wanted = match req.action {
        Action::ScaleUp => asg.desired as i64 + req.count as i64,
        _ => asg.desired as i64 - req.count as i64,
    };
    let to = wanted.clamp(min as i64, max as i64) as u32;
    let note = (to as i64 != wanted)
        .then(|| format!("requested {wanted} clamped to {to} (group bounds [{min}, {max}])"));
    Ok((gi, asg.desired, to, note))
}

/// Executes an accepted manual request (in the background; the API has already answered).
pub async fn run_manual(ctx: &Context, req: ManualRequest, gi: usize) -> Result<()> {
    let (_, now, now_f) = now_parts();
    let mut held = ctx.held.lock().await;
    let result = async {
        let Some(lease) = lease(ctx, &mut held, now_f).await? else {
            return Err(Error::Other(
                "not the lease holder; send manual requests to the replica that holds the lease"
                    .into(),
            ));
        };
        let mut state = match held.state.take() {
            Some(s) => s,
            None => ctx.store.load().await?,
        };
        let (prom, asgs, snap) = observe(ctx).await?;
        let mut obs = build_observation(ctx, &prom, &asgs, &snap, &mut state, now);
        let g = obs.groups[gi].clone();
        let reason = format!("manual: {}", req.reason);
        let (to, victims) = match req.action {
            Action::ScaleUp => ((g.desired + req.count).min(g.max), vec![]),
            _ => {
                let mut victims = Vec::new();
                for _ in 0..req.count {
                    match policy::victim::choose(&obs) {
                        Ok(c) if c.group == gi => {
                            policy::victim::remove(&mut obs, &c.victim.node);
                            obs.groups[gi].desired -= 1;
                            victims.push(c.victim);
                        }
                        Ok(_) | Err(_) => break,
                    }
                }
                (g.desired - victims.len() as u32, victims)
            }
        };
        if to == g.desired {
            held.state = Some(state);
            return Err(Error::Other(format!(
                "nothing to do: {} stays at {to} (bounds or no removable node)",
                g.asg_name
            )));
        }
        let decision = Decision {
            action: req.action,
            group: gi,
            from: g.desired,
            to,
            victim: victims.first().cloned(),
            rollback: vec![],
            in_flight: 0,
            reasons: vec![reason.clone()],
        };
        let now_rec = jiff::Timestamp::now().as_second();
        match req.action {
            Action::ScaleUp => state.memory.last_scale_up = Some(now_rec),
            _ => state.memory.last_scale_down = Some(now_rec),
        }
        let r = if victims.len() > 1 {
            // One record per removed node, each through the same write-ahead path.
            let mut r = Ok(());
            for (i, v) in victims.iter().enumerate() {
                let d = Decision {
                    from: g.desired - i as u32,
                    to: g.desired - i as u32 - 1,
                    victim: Some(v.clone()),
                    ..decision.clone()
                };
                r = act(
                    ctx,
                    &lease,
                    &mut state,
                    &d,
                    Some(&g),
                    serde_json::Value::Null,
                    "api",
                )
                .await;
                if r.is_err() {
                    break;
                }
            }
            r
        } else {
            act(
                ctx,
                &lease,
                &mut state,
                &decision,
                Some(&g),
                serde_json::Value::Null,
                "api",
            )
            .await
        };
        held.state = Some(state);
        r
    }
    .await;
    ctx.action_in_flight.store(false, Ordering::SeqCst);
    if let Err(e) = &result {
        tracing::error!(error = %e, "manual scaling failed");
        ctx.failed(e).await;
    }
    result
}

/// At start-up, compares what we last set with what the ASG says, and records any drift.
pub async fn reconcile(ctx: &Context) -> Result<()> {
    let (_, _, now_f) = now_parts();
    let mut held = ctx.held.lock().await;
    let Some(lease) = lease(ctx, &mut held, now_f).await? else {
        return Ok(());
    };
    let state = ctx.store.load().await?;
    let names = ctx.cfg.asg_names();
    let asgs = ctx.actuator.describe(&names).await?;
    for asg in &asgs {
        if let Some(&recorded) = state.last_desired.get(&asg.name)
            && recorded != asg.desired
        {
            let why = format!(
                "drift: we last set desired capacity {recorded}, the ASG now says {} (changed outside SmartScale, or an instance was replaced)",
                asg.desired
            );
            tracing::warn!(asg = %asg.name, recorded, actual = asg.desired, "{why}");
            let rec = HistoryRecord {
                reasons: vec![why],
                source: "drift".to_string(),
                ..history(ctx, "drift", &asg.name, recorded, asg.desired, lease.token)
            };
            ctx.store.record(&lease, &rec).await?;
        }
    }
    held.state = Some(state);
    Ok(())
}
