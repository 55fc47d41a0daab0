//! The termination pipeline: the first notice starts it; it cordons, drains, keeps the terminate
//! hook alive with heartbeats, and completes the hook exactly once.
//!
//! - **Idempotent.** Cordon, taint and evictions are safe to repeat; a second notice while the
//!   pipeline runs only adds what it brings: a terminate hook to answer, or an earlier deadline
//!   (a spot interruption during an ASG termination).
//! - **Resumable.** Progress is recorded in `state_dir/pipeline.json` (mode 0600, written
//!   atomically): the source, the deadline (wall clock, so a restart does not extend it), whether a
//!   terminate hook waits on us (and since when) and whether it was completed. A restarted agent
//!   sees the IMDS notice again (the instance is still `Terminating:Wait`) and carries on with the
//!   recorded deadline; a recorded completion is never sent twice. A record is resumed only by the
//!   notice it belongs to: the same source within its drain window, or the same terminate hook
//!   within the hook's global timeout (an instance terminates once). Anything else (a manual
//!   drain stopped a week ago, then an ASG termination) starts afresh. A manual drain is resumed
//!   only while the node is still cordoned (an operator who uncordoned it meant to stop it); an
//!   interrupted `drain` command removes its record.
//! - **Retried.** A pass that fails (state directory not writable, AWS refusing) is retried with
//!   backoff: [`Pipeline::run`] hands its sources back to the watcher, which reports the notices
//!   IMDS still shows again. Heartbeats run from before the cordon until the hook is completed;
//!   completion is retried until the hook's global timeout.
//! - **One at a time.** `state_dir/pipeline.lock` (flock) keeps a `drain` command and the `run`
//!   daemon from draining at once; the kernel releases it if a process dies.

use crate::config::OnDrainTimeout;
use crate::context::Context;
use crate::drain::{self, Deadline, DrainOptions, DrainReport};
use crate::lifecycle::{
    self, ActionResult, Completion, Heartbeats, HookTiming, MAX_GLOBAL_TIMEOUT, Retried,
};
use crate::sources::{Event, Source};
use crate::{Error, Result, k8s};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

const MARKER_FILE: &str = "pipeline.json";
const LOCK_FILE: &str = "pipeline.lock";
/// Complete a kept-alive hook this long before its global timeout would.
const GLOBAL_MARGIN: Duration = Duration::from_secs(30);
/// Backoff between retries of a failed pass.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// A later notice moves the deadline only if it brings it forward by more than this (deadlines are
/// recorded in whole seconds).
const DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// The pipeline's progress on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// `target_lifecycle`, `spot_interruption`, `rebalance` or `manual`.
    pub source: String,
    pub detail: String,
    /// Unix seconds.
    pub started_at: u64,
    /// Unix seconds: when the drain gives up (then `on_drain_timeout` applies).
    pub deadline: u64,
    /// A terminate lifecycle action waits on this instance.
    pub hook: bool,
    /// Unix seconds: when the agent first saw that terminate action waiting (its global timeout
    /// counts from about then). Absent in records of older agents: `started_at` stands in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_since: Option<u64>,
    /// The last drain ended (complete or at its deadline).
    pub drained: bool,
    /// CompleteLifecycleAction was answered for the terminate hook. Never sent again.
    pub hook_completed: bool,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `Instant` of a wall-clock deadline (in the past → now).
fn instant_of(unix: u64) -> Instant {
    Instant::now() + Duration::from_secs(unix.saturating_sub(unix_now()))
}

pub fn marker_path(state_dir: &Path) -> PathBuf {
    state_dir.join(MARKER_FILE)
}

pub fn load_marker(state_dir: &Path) -> Result<Option<Marker>> {
    let path = marker_path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                // Written atomically, so this is someone else's file; do not trust it.
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable pipeline marker");
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::ReadFile {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn remove_marker(state_dir: &Path) -> Result<()> {
    match std::fs::remove_file(marker_path(state_dir)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing the pipeline marker", e)),
    }
}

fn save_marker(state_dir: &Path, marker: &Marker) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(marker)
        .map_err(|e| Error::Invalid(format!("encoding the pipeline marker: {e}")))?;
    smartscale_common::files::write_private(&marker_path(state_dir), &bytes)?;
    Ok(())
}

/// An exclusive flock on `state_dir/pipeline.lock`, released when dropped (or when the process dies).
#[derive(Debug)]
struct PipelineLock {
    _file: std::fs::File,
}

/// The lock of one pass, and the record to remove if the pass ends before its drain did: an
/// operator's `drain` that is interrupted or cannot cordon must leave nothing that a later notice
/// could take for a drain in progress. The record goes before the lock is released.
#[derive(Debug)]
struct Held {
    _lock: PipelineLock,
    remove_on_drop: Option<PathBuf>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(path) = self.remove_on_drop.take() else {
            return;
        };
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(
                path = %path.display(),
                "the manual drain ended early; removed its record"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "could not remove the record of the unfinished manual drain"
            ),
        }
    }
}

async fn lock(state_dir: &Path) -> Result<PipelineLock> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(state_dir)
        .map_err(|e| Error::io(format!("creating {}", state_dir.display()), e))?;
    let path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut waited = false;
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(PipelineLock { _file: file });
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::io(format!("locking {}", path.display()), err));
        }
        if !waited {
            tracing::info!(path = %path.display(), "another smartscale-agent process is draining; waiting for it");
            waited = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How one pass of the pipeline ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Drained (completely or at the deadline) and, if a hook waited, completed.
    Done(DrainReport),
    /// This agent had already completed the terminate hook: nothing was done.
    AlreadyCompleted,
}

/// How long a notice allows for the drain: `configured`, or less if the notice says when the
/// instance goes away (`ends_at`; spot: the action time): zero once that time has passed.
pub fn drain_window(
    configured: Duration,
    ends_at: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Duration {
    let Some(end) = ends_at else {
        return configured;
    };
    let left = end.as_second().saturating_sub(now.as_second());
    Duration::from_secs(u64::try_from(left).unwrap_or(0)).min(configured)
}

/// Whether `m` records a terminate lifecycle action that may still wait on us: not answered, and
/// younger than the hook's global timeout (no action outlives it; an instance terminates once, so
/// any terminate action of this instance is that one).
fn hook_alive(m: &Marker, now: u64, global: Duration) -> bool {
    m.hook && !m.hook_completed && now < hook_since(m).saturating_add(global.as_secs())
}

fn hook_since(m: &Marker) -> u64 {
    m.hook_since.unwrap_or(m.started_at)
}

/// Whether a pass for a notice from `source` (`hook`: a terminate action waits now) carries on the
/// unfinished drain that `m` records, keeping its start and deadline: only the drain of the same
/// terminate action (within the hook's global timeout), or one of the same source within its drain
/// window. Anything else is another drain: it starts afresh.
fn resumes(m: &Marker, source: Source, hook: bool, now: u64, global: Duration) -> bool {
    if m.drained || m.hook_completed || m.started_at > now {
        return false;
    }
    if hook && hook_alive(m, now, global) {
        return true;
    }
    m.source == source.label() && now < m.deadline
}

fn retry_backoff(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1u32 << failures.min(8))
        .min(RETRY_MAX)
}

fn unix_of(t: jiff::Timestamp) -> u64 {
    u64::try_from(t.as_second()).unwrap_or(0)
}

/// The terminate hook's keep-alive during one pass.
#[derive(Debug, Default)]
struct KeepAlive {
    heartbeats: Option<Heartbeats>,
    /// When the hook's global timeout ends.
    global_end: Option<Instant>,
}

/// What one pass carries while it drains.
#[derive(Debug)]
struct PassState {
    marker: Marker,
    keepalive: KeepAlive,
    held: Held,
    /// When the instance goes away, if a notice said (spot): nothing is kept alive past it.
    ends_at: Option<Instant>,
}

/// The pipeline over a [`Context`].
#[derive(Debug, Clone)]
pub struct Pipeline {
    ctx: Arc<Context>,
    /// The terminate hook's timeouts, once read.
    timing: Arc<Mutex<Option<HookTiming>>>,
}

impl Pipeline {
    pub fn new(ctx: Arc<Context>) -> Self {
        Pipeline {
            ctx,
            timing: Arc::new(Mutex::new(None)),
        }
    }

    fn state_dir(&self) -> &Path {
        &self.ctx.config.state_dir
    }

    /// The daemon's loop: every notice from `events` runs the pipeline (the first one does the
    /// work; later ones add a hook to answer, or find nothing to do). Resumes a manual drain that a
    /// previous process left unfinished. A pass that fails is retried with backoff: its sources go
    /// back to the watcher through `rearm`, which reports the notices IMDS still shows again.
    /// Returns when `events` closes.
    pub async fn run(
        &self,
        mut events: mpsc::Receiver<Event>,
        rearm: mpsc::UnboundedSender<Source>,
    ) -> Result<()> {
        let mut failures = 0u32;
        let mut retry: Option<(Instant, Vec<Source>)> = None;
        // Whether a manual drain waits to be resumed needs the API server (is the node still
        // cordoned?), which may be away: then it is asked again later, like a failed pass.
        let mut next = match self.manual_drain_to_resume().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell yet whether to resume the manual drain on record; asking again");
                retry = Some((Instant::now() + retry_backoff(0), vec![Source::Manual]));
                failures = 1;
                None
            }
        };
        loop {
            let event = match next.take() {
                Some(e) => e,
                None => {
                    let due = retry.as_ref().map(|(at, _)| *at);
                    let retry_due = async move {
                        match due {
                            Some(at) => tokio::time::sleep_until(at.into()).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        e = events.recv() => match e {
                            Some(e) => e,
                            None => return Ok(()),
                        },
                        () = retry_due => {
                            let sources = retry.take().map(|(_, s)| s).unwrap_or_default();
                            tracing::info!(sources = ?sources.iter().map(|s| s.label()).collect::<Vec<_>>(), "retrying the termination pipeline");
                            for source in sources {
                                if source == Source::Manual {
                                    match self.manual_drain_to_resume().await {
                                        Ok(e) => next = e,
                                        Err(e) => {
                                            let wait = retry_backoff(failures);
                                            failures = failures.saturating_add(1);
                                            tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "cannot read the manual drain to resume; asking again");
                                            let at = Instant::now() + wait;
                                            let (due, sources) = retry.get_or_insert_with(|| (at, Vec::new()));
                                            *due = (*due).min(at);
                                            if !sources.contains(&Source::Manual) {
                                                sources.push(Source::Manual);
                                            }
                                        }
                                    }
                                } else {
                                    let _ = rearm.send(source);
                                }
                            }
                            continue;
                        }
                    }
                }
            };
            let mut seen = Vec::new();
            match self.pass(event, Some(&mut events), &mut seen, false).await {
                Ok(_) => failures = 0,
                Err(e) => {
                    let wait = retry_backoff(failures);
                    failures = failures.saturating_add(1);
                    tracing::error!(
                        error = %e,
                        retry_in_s = wait.as_secs(),
                        "termination pipeline failed; retrying it with the notices still there"
                    );
                    let at = Instant::now() + wait;
                    let (due, sources) = retry.get_or_insert_with(|| (at, Vec::new()));
                    *due = (*due).min(at);
                    for s in seen {
                        if !sources.contains(&s) {
                            sources.push(s);
                        }
                    }
                }
            }
        }
    }

    /// An unfinished manual drain from a previous process, if the node is still cordoned and its
    /// drain window has not passed.
    async fn manual_drain_to_resume(&self) -> Result<Option<Event>> {
        let Some(marker) = load_marker(self.state_dir())? else {
            return Ok(None);
        };
        // A record with a terminate hook belongs to the termination: its IMDS notice resumes it.
        if marker.drained || marker.hook || marker.source != Source::Manual.label() {
            return Ok(None);
        }
        if unix_now() >= marker.deadline {
            tracing::info!(
                since = marker.started_at,
                "a previous manual drain ended unfinished longer ago than its drain window; not resuming it"
            );
            remove_marker(self.state_dir())?;
            return Ok(None);
        }
        let node = k8s::get_node(&self.ctx.kube.get().await?, &self.ctx.node).await?;
        if node.as_ref().is_some_and(k8s::is_cordoned) {
            tracing::info!(reason = %marker.detail, "resuming a manual drain a previous agent left unfinished");
            Ok(Some(Event::manual(&marker.detail)))
        } else {
            tracing::info!(
                "a previous manual drain was stopped (the node is no longer cordoned); not resuming it"
            );
            remove_marker(self.state_dir())?;
            Ok(None)
        }
    }

    /// `smartscale-agent drain`: one pass, answering the terminate hook if one waits now. If it
    /// ends early (the future is dropped on SIGINT/SIGTERM, or the cordon fails), its record is
    /// removed unless a terminate hook waits.
    pub async fn drain_once(&self, reason: &str) -> Result<DrainReport> {
        let event = Event::manual(reason);
        self.ctx.metrics.event(Source::Manual);
        match self.pass(event, None, &mut Vec::new(), true).await? {
            Outcome::Done(report) if report.complete => Ok(report),
            Outcome::Done(report) => Err(Error::DrainIncomplete {
                node: self.ctx.node.clone(),
                left: report.left,
            }),
            Outcome::AlreadyCompleted => Ok(DrainReport {
                complete: true,
                evicted: 0,
                left: Vec::new(),
                took: Duration::ZERO,
            }),
        }
    }

    /// One pass of the pipeline for `first`; `events` (the daemon's) may add a hook or bring the
    /// deadline forward meanwhile. `seen` collects the sources of every notice it took (to retry
    /// them if it fails); `from_cli`: the `drain` command, whose record goes if it ends early.
    #[tracing::instrument(skip_all, fields(node = %self.ctx.node, source = first.source.label()))]
    async fn pass(
        &self,
        first: Event,
        mut events: Option<&mut mpsc::Receiver<Event>>,
        seen: &mut Vec<Source>,
        from_cli: bool,
    ) -> Result<Outcome> {
        seen.push(first.source);
        let ctx = &self.ctx;
        let settings = &ctx.settings;
        let mut held = Held {
            _lock: lock(self.state_dir()).await?,
            remove_on_drop: None,
        };
        let previous = load_marker(self.state_dir())?;
        if previous.as_ref().is_some_and(|m| m.hook_completed) {
            tracing::info!(
                "this agent already completed the terminate lifecycle action; nothing to do"
            );
            return Ok(Outcome::AlreadyCompleted);
        }

        // A manual drain answers the hook too if the instance is already Terminating:Wait.
        let hook_now = first.source.holds_terminate_hook()
            || (first.source == Source::Manual
                && matches!(
                    crate::sources::target_lifecycle::check(&ctx.imds).await,
                    Ok(Some(_))
                ));
        let global = if hook_now || previous.as_ref().is_some_and(|m| m.hook) {
            self.hook_timing()
                .await
                .map_or(MAX_GLOBAL_TIMEOUT, |t| t.global_timeout)
        } else {
            MAX_GLOBAL_TIMEOUT
        };
        let now = unix_now();
        let hook = hook_now
            || previous
                .as_ref()
                .is_some_and(|m| hook_alive(m, now, global));
        let fresh_deadline = now + self.window(&first).as_secs();
        let resumed = previous
            .as_ref()
            .filter(|m| resumes(m, first.source, hook, now, global));
        let (started_at, deadline) = match resumed {
            Some(m) => {
                tracing::info!(
                    since = m.started_at,
                    deadline = m.deadline,
                    "resuming the drain a previous agent started (its deadline stands)"
                );
                (m.started_at, m.deadline.min(fresh_deadline))
            }
            None => {
                if let Some(m) = previous.as_ref().filter(|m| !m.drained) {
                    tracing::info!(
                        recorded_source = %m.source,
                        since = m.started_at,
                        deadline = m.deadline,
                        "not resuming the unfinished drain on record (another notice, or older than its drain window); starting afresh"
                    );
                }
                (now, fresh_deadline)
            }
        };
        // An instance terminates once: a terminate action on record is the one that waits now.
        let hook_seen_at =
            hook.then(|| previous.as_ref().filter(|m| m.hook).map_or(now, hook_since));
        let marker = Marker {
            source: first.source.label().to_string(),
            detail: first.detail.clone(),
            started_at,
            deadline,
            hook,
            hook_since: hook_seen_at,
            drained: false,
            hook_completed: false,
        };
        save_marker(self.state_dir(), &marker)?;
        if from_cli && first.source == Source::Manual && !hook {
            held.remove_on_drop = Some(marker_path(self.state_dir()));
        }
        tracing::info!(
            detail = %first.detail,
            deadline_in_s = deadline.saturating_sub(unix_now()),
            terminate_hook = hook,
            "termination pipeline started"
        );

        let mut st = PassState {
            marker,
            keepalive: KeepAlive::default(),
            held,
            ends_at: first.ends_at.map(|t| instant_of(unix_of(t))),
        };
        // Heartbeats first: the cordon may retry for as long as the API server is away, longer
        // than the hook's heartbeat timeout.
        if let Some(since) = hook_seen_at {
            st.keepalive = self.start_heartbeats(since).await;
        }

        let reason = format!("{}: {}", first.source.label(), first.detail);
        // An operator's drain stops if it cannot cordon; a termination goes on: the hook must be
        // answered, and evictions may still work.
        let stop_on_cordon_failure = AtomicBool::new(first.source == Source::Manual && !hook);
        let drain_deadline = Deadline::new(instant_of(deadline));
        let opts = DrainOptions {
            concurrency: settings.eviction_concurrency,
            ..DrainOptions::default()
        };
        let started = Instant::now();
        let work = async {
            // The kubelet kubeconfig may not be there yet (k3s has not written it): the hook is
            // heartbeated meanwhile, and the drain starts once it is, within the deadline.
            let kube = match ctx.kube.get_until(|| drain_deadline.get()).await {
                Ok(c) => c,
                Err(e) if stop_on_cordon_failure.load(Ordering::SeqCst) => return Err(e),
                Err(e) => return Ok(Err(e)),
            };
            let taint_kube = match &ctx.taint_kube {
                Some(t) => match t.get().await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "no client for the draining taint; cordoning only");
                        None
                    }
                },
                None => None,
            };
            if let Err(e) = drain::cordon_and_taint_until(
                &kube,
                taint_kube.as_ref(),
                &ctx.node,
                &reason,
                &drain_deadline,
            )
            .await
            {
                if stop_on_cordon_failure.load(Ordering::SeqCst) {
                    return Err(e);
                }
                tracing::error!(error = %e, "could not cordon the node; evicting anyway");
            }
            Ok(
                drain::drain_pods_until(&kube, &ctx.node, &drain_deadline, &opts, &ctx.metrics)
                    .await,
            )
        };
        let mut report = self
            .while_notices(
                work,
                &mut events,
                &mut st,
                &drain_deadline,
                seen,
                &stop_on_cordon_failure,
            )
            .await??;
        if !matches!(&report, Ok(r) if r.complete) {
            // The deadline passed with pods left (or their state unknown): once per drain,
            // whatever on_drain_timeout then does.
            ctx.metrics.drain_deadline_exceeded();
        }

        if let Ok(r) = &report
            && !r.complete
            && st.marker.hook
            && st.keepalive.heartbeats.is_some()
            && settings.on_drain_timeout == OnDrainTimeout::KeepHeartbeating
        {
            let mut until = st
                .keepalive
                .global_end
                .map(|g| g.checked_sub(GLOBAL_MARGIN).unwrap_or(g))
                .unwrap_or_else(Instant::now);
            if let Some(end) = st.ends_at {
                until = until.min(end);
            }
            tracing::warn!(
                pods_left = %r.left.join(", "),
                keep_alive_s = until.saturating_duration_since(Instant::now()).as_secs(),
                "drain deadline passed; on_drain_timeout=keep_heartbeating: still evicting and heartbeating until the hook's global timeout"
            );
            let phase = Deadline::new(until);
            let work = async {
                let kube = ctx.kube.get_until(|| phase.get()).await?;
                drain::drain_pods_until(&kube, &ctx.node, &phase, &opts, &ctx.metrics).await
            };
            report = self
                .while_notices(
                    work,
                    &mut events,
                    &mut st,
                    &phase,
                    seen,
                    &stop_on_cordon_failure,
                )
                .await?;
        }
        ctx.metrics.drain_finished(started.elapsed());
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "could not drain the node");
                DrainReport {
                    complete: false,
                    evicted: 0,
                    left: vec![format!("(unknown: {e})")],
                    took: started.elapsed(),
                }
            }
        };
        if report.complete {
            tracing::info!(
                evicted = report.evicted,
                took_ms = report.took.as_millis() as u64,
                "node drained"
            );
        } else {
            ctx.metrics.pods_failed(report.left.len());
            tracing::error!(
                pods_left = %report.left.join(", "),
                "drain deadline passed with {} pod(s) left on the node",
                report.left.len()
            );
        }
        // Everything the drain counted is recorded: a scrape after this mark has it all.
        let scrapes_at_end = ctx.metrics.scrapes();
        st.marker.drained = true;
        save_marker(self.state_dir(), &st.marker)?;
        // The drain ran its course: its record stays (drained), whatever happens next.
        st.held.remove_on_drop = None;

        if st.marker.hook {
            // Heartbeats go on until AWS has the answer.
            self.flush_metrics(scrapes_at_end, &st.keepalive, st.ends_at)
                .await;
            self.complete_terminate_hook(&mut st.marker, &st.keepalive)
                .await?;
        }
        Ok(Outcome::Done(report))
    }

    /// Runs `work` while taking the notices that arrive meanwhile (see [`Pipeline::on_notice`]).
    async fn while_notices<T>(
        &self,
        work: impl Future<Output = T>,
        events: &mut Option<&mut mpsc::Receiver<Event>>,
        st: &mut PassState,
        deadline: &Deadline,
        seen: &mut Vec<Source>,
        stop_on_cordon_failure: &AtomicBool,
    ) -> Result<T> {
        tokio::pin!(work);
        loop {
            let next = async {
                match events.as_deref_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                out = &mut work => return Ok(out),
                event = next => match event {
                    Some(e) => {
                        seen.push(e.source);
                        self.on_notice(e, st, deadline, stop_on_cordon_failure).await?;
                    }
                    None => *events = None,
                },
            }
        }
    }

    /// A notice while a pass drains adds what it brings: a terminate hook to answer (heartbeats
    /// start at once), or an earlier deadline (a spot interruption: the drain must end before the
    /// instance does).
    async fn on_notice(
        &self,
        e: Event,
        st: &mut PassState,
        deadline: &Deadline,
        stop_on_cordon_failure: &AtomicBool,
    ) -> Result<()> {
        let mut news = false;
        if e.source.holds_terminate_hook() && !st.marker.hook {
            tracing::info!(detail = %e.detail, "the Auto Scaling group now waits on the terminate hook too");
            news = true;
            let since = unix_now();
            st.marker.hook = true;
            st.marker.hook_since = Some(since);
            // A termination now: the record must outlive this process, and a failed cordon
            // must not stop the pass.
            st.held.remove_on_drop = None;
            stop_on_cordon_failure.store(false, Ordering::SeqCst);
            save_marker(self.state_dir(), &st.marker)?;
            st.keepalive = self.start_heartbeats(since).await;
        }
        if let Some(t) = e.ends_at {
            let end = instant_of(unix_of(t));
            st.ends_at = Some(st.ends_at.map_or(end, |e| e.min(end)));
        }
        let now = unix_now();
        let window = self.window(&e);
        let new_deadline = now + window.as_secs();
        let at = instant_of(new_deadline);
        if at + DEADLINE_SLACK < deadline.get() && deadline.bring_forward(at) {
            news = true;
            tracing::warn!(
                source = e.source.label(),
                detail = %e.detail,
                deadline_in_s = window.as_secs(),
                "a later notice brings the drain deadline forward"
            );
            if new_deadline < st.marker.deadline {
                st.marker.deadline = new_deadline;
                save_marker(self.state_dir(), &st.marker)?;
            }
        }
        if !news {
            tracing::debug!(
                source = e.source.label(),
                "notice while draining; already handled"
            );
        }
        Ok(())
    }

    /// How long this notice allows for the drain.
    fn window(&self, event: &Event) -> Duration {
        let s = &self.ctx.settings;
        let configured = match event.source {
            Source::SpotInterruption => s.spot_drain_deadline,
            Source::TargetLifecycle | Source::Rebalance | Source::Manual => s.drain_timeout,
        };
        drain_window(configured, event.ends_at, jiff::Timestamp::now())
    }

    /// The terminate hook's timeouts (read once; `None` if they cannot be read).
    async fn hook_timing(&self) -> Option<HookTiming> {
        if let Some(t) = *self.timing.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(t);
        }
        let (Some(lifecycle), Some(hook)) =
            (&self.ctx.lifecycle, &self.ctx.settings.terminate_hook_name)
        else {
            return None;
        };
        match lifecycle.timing(hook).await {
            Ok(t) => {
                *self.timing.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
                Some(t)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the terminate hook's timeouts");
                None
            }
        }
    }

    /// Heartbeats for the terminate hook (waiting since `since`, unix seconds), and when its
    /// global timeout ends.
    async fn start_heartbeats(&self, since: u64) -> KeepAlive {
        let ctx = &self.ctx;
        let (Some(lifecycle), Some(hook)) = (&ctx.lifecycle, &ctx.settings.terminate_hook_name)
        else {
            tracing::warn!(
                "the instance is terminating but no terminate_hook_name is set (or no Auto Scaling group found); nothing to keep alive"
            );
            return KeepAlive::default();
        };
        let timing = self.hook_timing().await;
        if timing.is_none() {
            tracing::warn!(
                "heartbeating every {} s without knowing the hook's timeouts",
                HookTiming::interval(None, ctx.settings.heartbeat_interval).as_secs_f64()
            );
        }
        let global = timing.map_or(MAX_GLOBAL_TIMEOUT, |t| t.global_timeout);
        KeepAlive {
            heartbeats: Some(lifecycle.spawn_heartbeats(
                hook,
                ctx.settings.heartbeat_interval,
                std::future::ready(timing),
                ctx.metrics.clone(),
            )),
            global_end: Some(instant_of(since.saturating_add(global.as_secs()))),
        }
    }

    /// `metrics_flush_wait`: before the terminate hook is completed (and the instance goes), wait
    /// until `/metrics` has been scraped since the drain ended (`mark`), at most that long, so
    /// Prometheus has the drain's last numbers. Not if nothing serves them (the `drain` command),
    /// nor past the instance's end (spot) or once no action waits any more.
    async fn flush_metrics(&self, mark: u64, keepalive: &KeepAlive, ends_at: Option<Instant>) {
        let ctx = &self.ctx;
        let mut wait = ctx.settings.metrics_flush_wait;
        if wait.is_zero()
            || !ctx.metrics.serving()
            || ctx.lifecycle.is_none()
            || ctx.settings.terminate_hook_name.is_none()
        {
            return;
        }
        if let Some(end) = ends_at {
            wait = wait.min(end.saturating_duration_since(Instant::now()));
        }
        if ctx.metrics.scrapes() > mark {
            return;
        }
        tracing::info!(
            wait_ms = wait.as_millis() as u64,
            "waiting up to {} for /metrics to be scraped once more before completing the terminate lifecycle action (metrics_flush_wait)",
            smartscale_common::duration::format(wait)
        );
        let started = Instant::now();
        let scraped = tokio::select! {
            s = ctx.metrics.wait_for_scrape(mark, wait) => s,
            () = lifecycle::gone(keepalive.heartbeats.as_ref().map(Heartbeats::status)) => false,
        };
        if scraped {
            tracing::info!(
                after_ms = started.elapsed().as_millis() as u64,
                "the drain's final metrics were scraped"
            );
        } else {
            tracing::warn!(
                "/metrics was not scraped within metrics_flush_wait; completing the terminate lifecycle action anyway"
            );
        }
    }

    /// `CompleteLifecycleAction(terminate hook, CONTINUE)`, recorded so it is never sent twice;
    /// retried (the heartbeats keep the action alive meanwhile) until AWS takes it, says no action
    /// waits any more, or the hook's global timeout passes: then it gives up with an error.
    async fn complete_terminate_hook(
        &self,
        marker: &mut Marker,
        keepalive: &KeepAlive,
    ) -> Result<()> {
        let ctx = &self.ctx;
        let (Some(lifecycle), Some(hook)) = (&ctx.lifecycle, &ctx.settings.terminate_hook_name)
        else {
            return Ok(());
        };
        let until = keepalive.global_end.unwrap_or_else(|| {
            instant_of(hook_since(marker).saturating_add(MAX_GLOBAL_TIMEOUT.as_secs()))
        });
        let outcome = lifecycle
            .complete_retried(
                "terminate",
                hook,
                ActionResult::Continue,
                keepalive.heartbeats.as_ref().map(Heartbeats::status),
                until,
            )
            .await;
        match outcome {
            Retried::Answered(completion) => {
                marker.hook_completed = true;
                save_marker(self.state_dir(), marker)?;
                if let Completion::NoActiveAction(_) = completion {
                    tracing::warn!(
                        "the terminate lifecycle action had already ended (timed out or completed elsewhere)"
                    );
                }
                Ok(())
            }
            Retried::Gone => {
                marker.hook_completed = true;
                save_marker(self.state_dir(), marker)?;
                tracing::warn!(
                    "the terminate lifecycle action ended before AWS took this agent's answer (timed out, or an earlier attempt went through)"
                );
                Ok(())
            }
            Retried::GaveUp(e) => Err(Error::AutoScaling {
                action: "CompleteLifecycleAction",
                message: format!(
                    "gave up answering the terminate hook {hook}: its time is up (the hook's global timeout, or its heartbeat timeout since the last accepted heartbeat); the Auto Scaling group applies the hook's default result. Last error: {e}"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    const GLOBAL: Duration = Duration::from_secs(3000);

    fn marker(source: Source, started_at: u64, window: u64, hook: bool) -> Marker {
        Marker {
            source: source.label().into(),
            detail: "test".into(),
            started_at,
            deadline: started_at + window,
            hook,
            hook_since: hook.then_some(started_at),
            drained: false,
            hook_completed: false,
        }
    }

    #[test]
    fn a_stale_manual_drain_is_not_resumed_by_a_termination() {
        let now = 1_800_000_000;
        // `drain`, Ctrl-C, uncordon; a week later the ASG terminates the instance.
        let old = marker(Source::Manual, now - 7 * DAY, 600, false);
        assert!(!resumes(&old, Source::TargetLifecycle, true, now, GLOBAL));
        assert!(!resumes(&old, Source::SpotInterruption, false, now, GLOBAL));
        assert!(!resumes(&old, Source::Manual, false, now, GLOBAL));
        assert!(!hook_alive(&old, now, GLOBAL));
        // Even a recent one: another notice is another drain.
        let recent = marker(Source::Manual, now - 60, 600, false);
        assert!(!resumes(
            &recent,
            Source::TargetLifecycle,
            true,
            now,
            GLOBAL
        ));
        assert!(resumes(&recent, Source::Manual, false, now, GLOBAL));
    }

    #[test]
    fn the_same_notice_resumes_within_its_window() {
        let now = 1_800_000_000;
        let spot = marker(Source::SpotInterruption, now - 30, 90, false);
        assert!(resumes(&spot, Source::SpotInterruption, false, now, GLOBAL));
        let spot_past = marker(Source::SpotInterruption, now - 100, 90, false);
        assert!(!resumes(
            &spot_past,
            Source::SpotInterruption,
            false,
            now,
            GLOBAL
        ));
        let mut drained = marker(Source::SpotInterruption, now - 30, 90, false);
        drained.drained = true;
        assert!(!resumes(
            &drained,
            Source::SpotInterruption,
            false,
            now,
            GLOBAL
        ));
        let future = marker(Source::SpotInterruption, now + 3600, 90, false);
        assert!(!resumes(
            &future,
            Source::SpotInterruption,
            false,
            now,
            GLOBAL
        ));
    }

    #[test]
    fn the_same_terminate_hook_resumes_until_its_global_timeout() {
        let now = 1_800_000_000;
        // Killed after its drain deadline, still within the hook's global timeout: same action,
        // same deadline (a restart does not extend it).
        let hooked = marker(Source::TargetLifecycle, now - 900, 600, true);
        assert!(hook_alive(&hooked, now, GLOBAL));
        assert!(resumes(&hooked, Source::TargetLifecycle, true, now, GLOBAL));
        // A spot notice for the same instance carries on the same drain (its deadline applies).
        assert!(resumes(
            &hooked,
            Source::SpotInterruption,
            true,
            now,
            GLOBAL
        ));
        // Past the global timeout no action can wait any more.
        let expired = marker(Source::TargetLifecycle, now - 3001, 600, true);
        assert!(!hook_alive(&expired, now, GLOBAL));
        assert!(!resumes(
            &expired,
            Source::TargetLifecycle,
            true,
            now,
            GLOBAL
        ));
        let mut done = marker(Source::TargetLifecycle, now - 60, 600, true);
        done.hook_completed = true;
        assert!(!hook_alive(&done, now, GLOBAL));
        assert!(!resumes(&done, Source::TargetLifecycle, true, now, GLOBAL));
    }

    #[test]
    fn a_marker_of_an_older_agent_still_reads() {
        let old = r#"{"source":"target_lifecycle","detail":"x","started_at":10,"deadline":610,
            "hook":true,"drained":false,"hook_completed":false}"#;
        let m: Marker = serde_json::from_str(old).unwrap();
        assert_eq!(m.hook_since, None);
        assert_eq!(hook_since(&m), 10);
    }

    #[test]
    fn a_notice_time_shortens_the_window_and_a_past_one_leaves_none() {
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let spot = Duration::from_secs(90);
        let at = |s: i64| Some(now + jiff::SignedDuration::from_secs(s));
        assert_eq!(drain_window(spot, None, now), spot);
        assert_eq!(drain_window(spot, at(120), now), spot);
        assert_eq!(drain_window(spot, at(30), now), Duration::from_secs(30));
        assert_eq!(drain_window(spot, at(0), now), Duration::ZERO);
        assert_eq!(drain_window(spot, at(-45), now), Duration::ZERO);
    }

    #[test]
    fn retries_back_off_to_half_a_minute() {
        assert_eq!(retry_backoff(0), Duration::from_secs(1));
        assert_eq!(retry_backoff(3), Duration::from_secs(8));
        assert_eq!(retry_backoff(40), RETRY_MAX);
    }
}
