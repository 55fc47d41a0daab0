//! The controller as an AWS Lambda function (`provided.al2023`: the binary is the `bootstrap`).
//! Each invocation, normally EventBridge's scheduled event, runs one full cycle exactly like
//! `once` — start-up reconciliation, the same lease, fencing, history and dry-run — and returns
//! the decision JSON (`once`'s fields, plus `problems` and `invocation`).
//!
//! Time: the invocation's deadline is split by [`budget::Budget`]. A cycle still running at the
//! soft deadline is cancelled *if it has not started acting* (nothing but the lease written:
//! it is handed back) and the invocation fails with a `deadline` error that says what was still
//! missing; an action under way is let finish until just before Lambda's own deadline.
//!
//! After the cycle: the lease is handed back and notifications are sent (both waited for: a
//! frozen environment would lose them), then one PutMetricData. Bad input (a malformed event,
//! an unreadable config parameter, SNS or CloudWatch down) never stops the cycle: each is logged, counted (`smartscale_errors_total`, CloudWatch `Errors`) and
//! listed in `problems`. The cycle failing is an invocation error (`SmartScale.<kind>`), and
//! `notifications.error_threshold` failed invocations in a row (in this execution environment)
//! are notified.

pub mod budget;
pub mod event;
pub mod kubernetes;
pub mod source;

use crate::cloudwatch::CloudWatch;
use crate::cycle::{self, Context, Outcome};
use crate::notify::{Notification, Notifier};
use crate::run::{self, Connection};
use crate::{Error, Result};
use budget::Budget;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::Serialize;
use serde_json::{Value, json};
use smartscale_common::logging::{self, LogFormat};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument;

/// What the Lambda runtime sets; without them this is not a Lambda execution environment.
const RUNTIME_ENV: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

/// One problem beside a decision: what kind (the `smartscale_errors_total` label) and what.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    pub kind: &'static str,
    pub detail: String,
}

/// The execution environment: kept between warm invocations.
struct Function {
    /// The AWS configuration from the standard chain (the function's role); each invocation
    /// applies its config's timeouts to it.
    sdk: aws_config::SdkConfig,
    /// This environment's name in the lease: stable across its invocations, so it recognises
    /// a lease it acquired whose answer was lost.
    replica: String,
    cold: AtomicBool,
    failures_in_a_row: AtomicU32,
}

/// `smartscale-controller lambda`, or the binary started as `bootstrap` by the Lambda runtime.
pub fn main(log_format: Option<LogFormat>) -> ExitCode {
    let missing: Vec<&str> = RUNTIME_ENV
        .iter()
        .copied()
        .filter(|k| std::env::var_os(k).is_none_or(|v| v.is_empty()))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "error: not in a Lambda execution environment ({} unset); `lambda` is started by the Lambda runtime (provided.al2023) or the Runtime Interface Emulator",
            missing.join(", ")
        );
        return ExitCode::from(2);
    }
    if std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").is_ok_and(|m| m.parse::<i32>().is_err()) {
        eprintln!("error: AWS_LAMBDA_FUNCTION_MEMORY_SIZE is not a number");
        return ExitCode::from(2);
    }
    // CloudWatch Logs: one JSON object per line, with the invocation's span.
    if let Err(e) = logging::init(log_format.unwrap_or(LogFormat::Json)) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        if sdk.region().is_none() {
            tracing::error!("no AWS region (AWS_REGION is set by Lambda; set it for the emulator)");
            return ExitCode::FAILURE;
        }
        let function = Arc::new(Function {
            sdk,
            replica: format!(
                "lambda-{}-{}-{:04x}",
                std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default(),
                std::process::id(),
                rand::random::<u16>()
            ),
            cold: AtomicBool::new(true),
            failures_in_a_row: AtomicU32::new(0),
        });
        tracing::info!(replica = %function.replica, "Lambda runtime started");
        let handler = lambda_runtime::service_fn(move |event: LambdaEvent<Value>| {
            let f = function.clone();
            async move { f.invoke(event).await }
        });
        match lambda_runtime::run(handler).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "Lambda runtime stopped");
                ExitCode::FAILURE
            }
        }
    })
}

fn diagnostic(e: &Error, problems: &[Problem]) -> Diagnostic {
    let mut message = e.to_string();
    if !problems.is_empty() {
        let list: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.kind, p.detail))
            .collect();
        message.push_str(&format!(" (also: {})", list.join("; ")));
    }
    Diagnostic {
        error_type: format!("SmartScale.{}", e.kind()),
        error_message: message,
    }
}

impl Function {
    async fn invoke(&self, event: LambdaEvent<Value>) -> std::result::Result<Value, Diagnostic> {
        let started = Instant::now();
        let cold = self.cold.swap(false, Ordering::SeqCst);
        let budget = Budget::new(event.context.deadline(), SystemTime::now(), started);
        let span = tracing::info_span!(
            "invocation",
            request_id = %event.context.request_id,
            cold_start = cold,
            remaining_ms = budget.remaining.as_millis() as u64
        );
        let request_id = event.context.request_id.clone();
        async move {
            let mut inv = Invocation {
                function: self,
                budget,
                problems: Vec::new(),
                config_source: None,
                threshold: 3,
                cluster_id: None,
                notifier: None,
            };
            let result = inv.run(&event.payload).await;
            let summary = json!({
                "request_id": request_id,
                "cold_start": cold,
                "duration_ms": started.elapsed().as_millis() as u64,
                "config_source": inv.config_source,
            });
            match result {
                Ok(outcome) => {
                    self.failures_in_a_row.store(0, Ordering::SeqCst);
                    let mut v = serde_json::to_value(&outcome).unwrap_or_default();
                    v["problems"] = serde_json::to_value(&inv.problems).unwrap_or_default();
                    v["invocation"] = summary;
                    tracing::info!(
                        action = outcome.action,
                        problems = inv.problems.len(),
                        "invocation done"
                    );
                    Ok(v)
                }
                Err((e, notified)) => {
                    let n = self.failures_in_a_row.fetch_add(1, Ordering::SeqCst) + 1;
                    // The cycle's own context notifies its first failure when the threshold is 1.
                    if n == inv.threshold && !(notified && inv.threshold == 1) {
                        inv.notify_failures(n, &e).await;
                    }
                    tracing::error!(error = %e, failures_in_a_row = n, "invocation failed");
                    Err(diagnostic(&e, &inv.problems))
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// One invocation's run.
struct Invocation<'a> {
    function: &'a Function,
    budget: Budget,
    problems: Vec<Problem>,
    config_source: Option<String>,
    threshold: u32,
    /// Set once the configuration is known (for failures before there is a cycle context).
    cluster_id: Option<String>,
    notifier: Option<Notifier>,
}

/// How a cycle ended: its result and how long it took, or cancelled at the soft deadline.
enum Finished {
    Cycle(Result<Outcome>, Duration),
    /// Cancelled at the soft deadline, before acting.
    Cancelled,
    /// An action under way did not finish before the hard deadline.
    Abandoned,
}

impl Invocation<'_> {
    fn problem(&mut self, kind: &'static str, detail: String) {
        tracing::warn!(kind, %detail, "problem");
        self.problems.push(Problem { kind, detail });
    }

    /// `Err((error, whether the cycle context already notified it))`.
    async fn run(&mut self, payload: &Value) -> std::result::Result<Outcome, (Error, bool)> {
        let b = self.budget;
        if let Some(why) = event::check(payload) {
            self.problem("event", why);
        }
        let env: Vec<(String, String)> = std::env::vars().collect();
        let ssm = aws_sdk_ssm::Client::new(&self.function.sdk);
        let loaded = tokio::time::timeout_at(b.soft.into(), source::load(&ssm, &env))
            .await
            .map_err(|_| {
                Error::Deadline(format!(
                    "no configuration read within {:.1}s",
                    b.remaining.as_secs_f64()
                ))
            })
            .and_then(|r| r)
            .map_err(|e| (e, false))?;
        self.config_source = Some(loaded.source.to_string());
        for p in loaded.problems {
            self.problem("config_source", p);
        }
        let cfg = loaded.config;
        for w in &cfg.warnings {
            tracing::warn!("{w}");
        }
        self.threshold = cfg.notifications.error_threshold;
        self.cluster_id = Some(cfg.cluster_id.clone());
        let sdk = self
            .function
            .sdk
            .to_builder()
            .timeout_config(run::aws_timeouts(&cfg))
            .build();
        let mut notifier = Notifier::new(cfg.notifications.webhook_url.clone());
        if let Some(arn) = &cfg.notifications.sns_topic_arn {
            notifier = notifier.with_sns(aws_sdk_sns::Client::new(&sdk), arn.clone());
        }
        self.notifier = Some(notifier);
        if cfg.prometheus.timeout >= b.remaining {
            self.problem(
                "config",
                format!(
                    "prometheus.timeout ({}) is not shorter than the function's time ({:.1}s): a slow Prometheus ends the invocation",
                    smartscale_common::duration::format(cfg.prometheus.timeout),
                    b.remaining.as_secs_f64()
                ),
            );
        }
        let cloudwatch = CloudWatch::from_config(&cfg, &sdk);
        let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
        let connecting = async {
            let kube = kubernetes::client(&secrets, &env).await?;
            run::connect(
                cfg,
                false,
                Connection {
                    sdk: &sdk,
                    kube,
                    replica: self.function.replica.clone(),
                    cluster_sync: b.until_soft(),
                },
            )
            .await
        };
        let ctx = tokio::time::timeout_at(b.soft.into(), connecting)
            .await
            .map_err(|_| {
                Error::Deadline(format!(
                    "not connected within {:.1}s (the identity secret or the Kubernetes API did not answer); nothing was written",
                    b.remaining.as_secs_f64()
                ))
            })
            .and_then(|r| r)
            .map_err(|e| (e, false))?;
        // What was counted before the context existed.
        for p in &self.problems {
            ctx.metrics.error(p.kind);
        }
        let finished = self.cycle(&ctx).await;
        self.finish(&ctx, cloudwatch.as_ref(), finished).await
    }

    /// Reconciliation and one cycle, as `once` runs them, within the soft deadline when that is
    /// safe (see the module comment).
    async fn cycle(&self, ctx: &Context) -> Finished {
        let b = self.budget;
        let work = async {
            if let Err(e) = cycle::reconcile(ctx).await {
                tracing::warn!(error = %e, "start-up reconciliation failed; continuing");
            }
            let started = Instant::now();
            let outcome = cycle::run_once(ctx, true).await;
            (outcome, started.elapsed())
        };
        tokio::pin!(work);
        tokio::select! {
            (outcome, took) = &mut work => return Finished::Cycle(outcome, took),
            _ = tokio::time::sleep_until(b.soft.into()) => {}
        }
        // Not polled while we look: it cannot start acting between this check and the drop.
        if !ctx.action_in_flight() {
            return Finished::Cancelled;
        }
        tracing::warn!("soft deadline passed while acting; letting the action finish");
        match tokio::time::timeout_at(b.hard.into(), &mut work).await {
            Ok((outcome, took)) => Finished::Cycle(outcome, took),
            Err(_) => Finished::Abandoned,
        }
    }

    async fn finish(
        &mut self,
        ctx: &Context,
        cloudwatch: Option<&CloudWatch>,
        finished: Finished,
    ) -> std::result::Result<Outcome, (Error, bool)> {
        let b = self.budget;
        let (outcome, took, ran) = match finished {
            Finished::Cycle(o, took) => (o, took, true),
            Finished::Cancelled => {
                let e = Error::Deadline(cancelled(ctx, &b).await);
                ctx.metrics.error(e.kind());
                (Err(e), Duration::ZERO, false)
            }
            Finished::Abandoned => {
                let e = Error::Deadline(format!(
                    "an action under way did not finish within the function's {:.1}s: its intent is recorded, and the next invocation settles it against AWS before it decides (as a restarted daemon does)",
                    b.remaining.as_secs_f64()
                ));
                ctx.metrics.error(e.kind());
                (Err(e), Duration::ZERO, false)
            }
        };
        // A cycle that ran and failed was counted (and, at a threshold of 1, notified) by the
        // cycle's context itself.
        let notified = ran && outcome.is_err();
        // Hand the lease back (the next invocation need not wait for it), publish the figures
        // and send the notifications, together, before Lambda's deadline.
        // Notifications first, so that the figures count their failures too.
        let left = b.until_hard();
        let release = tokio::time::timeout(left, run::release(ctx));
        let flush = ctx.notifier.flush(left);
        let (released, failures) = tokio::join!(release, flush);
        if released.is_err() {
            self.problem(
                "state",
                "the lease was not handed back in time; it expires on its own".into(),
            );
        }
        for f in failures {
            self.problem(crate::notify::ERROR_KIND, f);
        }
        let published = tokio::time::timeout(
            b.until_hard(),
            run::publish_figures(
                ctx,
                cloudwatch,
                &outcome,
                took,
                self.problems.len(),
                Some(b.started.elapsed()),
            ),
        )
        .await;
        match published {
            Ok(Some(e)) => self.problem(crate::cloudwatch::ERROR_KIND, e.to_string()),
            Ok(None) => {}
            Err(_) => {
                ctx.metrics.error(crate::cloudwatch::ERROR_KIND);
                self.problem(
                    crate::cloudwatch::ERROR_KIND,
                    "PutMetricData did not answer before the function's deadline".into(),
                );
            }
        }
        outcome.map_err(|e| (e, notified))
    }

    /// Sends the repeated-failures notification and waits for it (bounded by the deadline).
    async fn notify_failures(&mut self, n: u32, e: &Error) {
        let (Some(notifier), Some(cluster)) = (self.notifier.clone(), self.cluster_id.clone())
        else {
            return;
        };
        notifier.send(Notification::errors(&cluster, n, &e.to_string()));
        for f in notifier.flush(self.budget.until_hard()).await {
            tracing::warn!(failure = %f, "failure notification not sent");
        }
    }
}

/// Why a cancelled cycle was cancelled: what had answered and what had not.
async fn cancelled(ctx: &Context, b: &Budget) -> String {
    let st = ctx.status.read().await;
    let mut answered = Vec::new();
    let mut waiting = Vec::new();
    for dep in ["dynamodb", "prometheus", "autoscaling", "kubernetes"] {
        if st.dependencies.contains_key(dep) {
            answered.push(dep);
        } else {
            waiting.push(dep);
        }
    }
    let mut hint = String::new();
    if waiting.contains(&"prometheus") && ctx.cfg.prometheus.timeout >= b.remaining {
        hint = format!(
            "; prometheus.timeout ({}) is longer than the function's {:.1}s: lower it or raise the function timeout",
            smartscale_common::duration::format(ctx.cfg.prometheus.timeout),
            b.remaining.as_secs_f64()
        );
    }
    format!(
        "the cycle did not finish within the invocation's {:.1}s (of {:.1}s) and was cancelled before it acted: nothing but the lease was written, and the lease was handed back; answered: [{}], no answer yet: [{}]{hint}",
        (b.soft - b.started).as_secs_f64(),
        b.remaining.as_secs_f64(),
        answered.join(", "),
        waiting.join(", "),
    )
}
