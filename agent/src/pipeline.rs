//! The termination pipeline: the first notice starts it; it cordons, drains, keeps the terminate
//! hook alive with heartbeats, and completes the hook exactly once.
//!
//! - **Idempotent.** Cordon, taint and evictions are safe to repeat; a second notice while the
//!   pipeline runs only adds what it brings (a terminate hook to answer).
//! - **Resumable.** Progress is recorded in `state_dir/pipeline.json` (mode 0600, written
//!   atomically): the source, the deadline (wall clock, so a restart does not extend it), whether a
//!   terminate hook waits on us and whether it was completed. A restarted agent sees the IMDS
//!   notice again (the instance is still `Terminating:Wait`) and carries on with the recorded
//!   deadline; a recorded completion is never sent twice. A manual drain is resumed only while
//!   the node is still cordoned (an operator who uncordoned it meant to stop it).
//! - **One at a time.** `state_dir/pipeline.lock` (flock) keeps a `drain` command and the `run`
//!   daemon from draining at once; the kernel releases it if a process dies.

use crate::config::OnDrainTimeout;
use crate::context::Context;
use crate::drain::{self, DrainOptions, DrainReport};
use crate::lifecycle::{ActionResult, Completion, FALLBACK_HEARTBEAT_INTERVAL, Heartbeats};
use crate::sources::{Event, Source};
use crate::{Error, Result, k8s};
use serde::{Deserialize, Serialize};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

const MARKER_FILE: &str = "pipeline.json";
const LOCK_FILE: &str = "pipeline.lock";
/// Complete a kept-alive hook this long before its global timeout would.
const GLOBAL_MARGIN: Duration = Duration::from_secs(30);

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

/// The pipeline over a [`Context`].
#[derive(Debug, Clone)]
pub struct Pipeline {
    ctx: Arc<Context>,
}

impl Pipeline {
    pub fn new(ctx: Arc<Context>) -> Self {
        Pipeline { ctx }
    }

    fn state_dir(&self) -> &Path {
        &self.ctx.config.state_dir
    }

    /// The daemon's loop: every notice from `events` runs the pipeline (the first one does the
    /// work; later ones add a hook to answer, or find nothing to do). Resumes a manual drain that a
    /// previous process left unfinished. Returns when `events` closes.
    pub async fn run(&self, mut events: mpsc::Receiver<Event>) -> Result<()> {
        if let Some(event) = self.manual_drain_to_resume().await? {
            self.handle_logged(event, Some(&mut events)).await;
        }
        while let Some(event) = events.recv().await {
            self.handle_logged(event, Some(&mut events)).await;
        }
        Ok(())
    }

    async fn handle_logged(&self, event: Event, events: Option<&mut mpsc::Receiver<Event>>) {
        if let Err(e) = self.handle(event, events).await {
            tracing::error!(error = %e, "termination pipeline failed; a new notice or a restart retries it");
        }
    }

    /// An unfinished manual drain from a previous process, if the node is still cordoned.
    async fn manual_drain_to_resume(&self) -> Result<Option<Event>> {
        let Some(marker) = load_marker(self.state_dir())? else {
            return Ok(None);
        };
        if marker.drained || marker.source != Source::Manual.label() {
            return Ok(None);
        }
        let node = k8s::get_node(&self.ctx.kube, &self.ctx.node).await?;
        if node.as_ref().is_some_and(k8s::is_cordoned) {
            tracing::info!(reason = %marker.detail, "resuming a manual drain a previous agent left unfinished");
            Ok(Some(Event::manual(&marker.detail)))
        } else {
            tracing::info!(
                "a previous manual drain was stopped (the node is no longer cordoned); not resuming it"
            );
            std::fs::remove_file(marker_path(self.state_dir()))
                .map_err(|e| Error::io("removing the pipeline marker", e))?;
            Ok(None)
        }
    }

    /// `smartscale-agent drain`: one pass, answering the terminate hook if one waits now.
    pub async fn drain_once(&self, reason: &str) -> Result<DrainReport> {
        let event = Event::manual(reason);
        self.ctx.metrics.event(Source::Manual);
        match self.handle(event, None).await? {
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

    /// One pass of the pipeline for `first`; `events` (the daemon's) may add a hook meanwhile.
    #[tracing::instrument(skip_all, fields(node = %self.ctx.node, source = first.source.label()))]
    pub async fn handle(
        &self,
        first: Event,
        mut events: Option<&mut mpsc::Receiver<Event>>,
    ) -> Result<Outcome> {
        let ctx = &self.ctx;
        let settings = &ctx.settings;
        let _lock = lock(self.state_dir()).await?;
        let previous = load_marker(self.state_dir())?;
        if previous.as_ref().is_some_and(|m| m.hook_completed) {
            tracing::info!(
                "this agent already completed the terminate lifecycle action; nothing to do"
            );
            return Ok(Outcome::AlreadyCompleted);
        }

        // A manual drain answers the hook too if the instance is already Terminating:Wait.
        let mut hook = first.source.holds_terminate_hook()
            || previous.as_ref().is_some_and(|m| m.hook)
            || (first.source == Source::Manual
                && matches!(
                    crate::sources::target_lifecycle::check(&ctx.imds).await,
                    Ok(Some(_))
                ));
        let now = unix_now();
        let fresh_deadline = now + self.drain_window(&first).as_secs();
        let (started_at, deadline) = match &previous {
            Some(m) if !m.drained => {
                tracing::info!(
                    since = m.started_at,
                    deadline = m.deadline,
                    "resuming the drain a previous agent started (its deadline stands)"
                );
                (m.started_at, m.deadline.min(fresh_deadline))
            }
            _ => (now, fresh_deadline),
        };
        let mut marker = Marker {
            source: first.source.label().to_string(),
            detail: first.detail.clone(),
            started_at,
            deadline,
            hook,
            drained: false,
            hook_completed: false,
        };
        save_marker(self.state_dir(), &marker)?;
        tracing::info!(
            detail = %first.detail,
            deadline_in_s = deadline.saturating_sub(unix_now()),
            terminate_hook = hook,
            "termination pipeline started"
        );

        let reason = format!("{}: {}", first.source.label(), first.detail);
        let cordon_deadline = instant_of(deadline);
        if let Err(e) = drain::cordon_and_taint(
            &ctx.kube,
            ctx.taint_kube.as_ref(),
            &ctx.node,
            &reason,
            cordon_deadline,
        )
        .await
        {
            // An operator's drain stops here; a termination goes on: the hook must be answered.
            if first.source == Source::Manual {
                return Err(e);
            }
            tracing::error!(error = %e, "could not cordon the node; evicting anyway");
        }

        let mut heartbeats: Option<Heartbeats> = None;
        let mut global_end: Option<Instant> = None;
        if hook {
            (heartbeats, global_end) = self.start_heartbeats(started_at).await;
        }

        let opts = DrainOptions {
            concurrency: settings.eviction_concurrency,
            ..DrainOptions::default()
        };
        let started = Instant::now();
        let mut report = {
            let drain = drain::drain_pods(
                &ctx.kube,
                &ctx.node,
                instant_of(deadline),
                &opts,
                &ctx.metrics,
            );
            tokio::pin!(drain);
            loop {
                let next = async {
                    match events.as_deref_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    report = &mut drain => break report,
                    event = next => match event {
                        Some(e) if e.source.holds_terminate_hook() && !hook => {
                            tracing::info!(detail = %e.detail, "the Auto Scaling group now waits on the terminate hook too");
                            hook = true;
                            marker.hook = true;
                            save_marker(self.state_dir(), &marker)?;
                            (heartbeats, global_end) = self.start_heartbeats(started_at).await;
                        }
                        Some(e) => tracing::debug!(source = e.source.label(), "notice while draining; already handled"),
                        None => events = None,
                    },
                }
            }
        };

        if let Ok(r) = &report
            && !r.complete
            && hook
            && heartbeats.is_some()
            && settings.on_drain_timeout == OnDrainTimeout::KeepHeartbeating
        {
            let until = global_end
                .map(|g| g.checked_sub(GLOBAL_MARGIN).unwrap_or(g))
                .unwrap_or_else(Instant::now);
            tracing::warn!(
                pods_left = %r.left.join(", "),
                keep_alive_s = until.saturating_duration_since(Instant::now()).as_secs(),
                "drain deadline passed; on_drain_timeout=keep_heartbeating: still evicting and heartbeating until the hook's global timeout"
            );
            report = drain::drain_pods(&ctx.kube, &ctx.node, until, &opts, &ctx.metrics).await;
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
        marker.drained = true;
        save_marker(self.state_dir(), &marker)?;

        if hook {
            drop(heartbeats);
            self.complete_terminate_hook(&mut marker).await?;
        }
        Ok(Outcome::Done(report))
    }

    /// How long this notice allows for the drain.
    fn drain_window(&self, event: &Event) -> Duration {
        let s = &self.ctx.settings;
        match event.source {
            Source::SpotInterruption => {
                let until_end = event
                    .ends_at
                    .and_then(|t| {
                        let secs = t.as_second() - jiff::Timestamp::now().as_second();
                        u64::try_from(secs).ok()
                    })
                    .map(Duration::from_secs);
                until_end.map_or(s.spot_drain_deadline, |d| d.min(s.spot_drain_deadline))
            }
            Source::TargetLifecycle | Source::Rebalance | Source::Manual => s.drain_timeout,
        }
    }

    /// Heartbeats for the terminate hook, and when its global timeout ends.
    async fn start_heartbeats(&self, started_at: u64) -> (Option<Heartbeats>, Option<Instant>) {
        let ctx = &self.ctx;
        let (Some(lifecycle), Some(hook)) = (&ctx.lifecycle, &ctx.settings.terminate_hook_name)
        else {
            tracing::warn!(
                "the instance is terminating but no terminate_hook_name is set (or no Auto Scaling group found); nothing to keep alive"
            );
            return (None, None);
        };
        let timing = match lifecycle.timing(hook).await {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the hook's timeouts; heartbeating every {} s", FALLBACK_HEARTBEAT_INTERVAL.as_secs());
                None
            }
        };
        let interval = ctx
            .settings
            .heartbeat_interval
            .or(timing.map(|t| t.heartbeat_timeout / 2))
            .unwrap_or(FALLBACK_HEARTBEAT_INTERVAL);
        let global_end = timing.map(|t| instant_of(started_at + t.global_timeout.as_secs()));
        (
            Some(lifecycle.spawn_heartbeats(hook, interval, ctx.metrics.clone())),
            global_end,
        )
    }

    /// `CompleteLifecycleAction(terminate hook, CONTINUE)`, recorded so it is never sent twice.
    async fn complete_terminate_hook(&self, marker: &mut Marker) -> Result<()> {
        let ctx = &self.ctx;
        let (Some(lifecycle), Some(hook)) = (&ctx.lifecycle, &ctx.settings.terminate_hook_name)
        else {
            return Ok(());
        };
        // The SDK already retried transient failures; keep trying (the instance waits for this
        // answer) until AWS takes it or says no action waits any more.
        let mut wait = Duration::from_secs(1);
        let completion = loop {
            match lifecycle.complete(hook, ActionResult::Continue).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "could not complete the terminate lifecycle action");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        };
        marker.hook_completed = true;
        save_marker(self.state_dir(), marker)?;
        if let Completion::NoActiveAction(_) = completion {
            tracing::warn!(
                "the terminate lifecycle action had already ended (timed out or completed elsewhere)"
            );
        }
        Ok(())
    }
}
