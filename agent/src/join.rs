//! `smartscale-agent join`: the boot flow.
//!
//! IMDSv2 (instance id, zone, type, capacity type, ASG) → SSM settings → join token from
//! Secrets Manager → k3s config written atomically with mode 0600 → k3s started with the
//! configured command → wait until the Node is Ready → `CompleteLifecycleAction(launch hook,
//! CONTINUE)`. Any failure after the instance is known answers the launch hook with ABANDON (the
//! ASG then replaces the instance), removes the k3s config it wrote (it holds the token), and
//! ends with an error that says what failed.
//!
//! The launch action's clock started at launch, before this boot: `join` heartbeats it from the
//! start (the first heartbeat as soon as the hook is known, before its timeouts are read or the
//! token fetched; then every `heartbeat_interval`, at most a third of the HeartbeatTimeout; a
//! failed one again within seconds), so a slow boot does not let it time out. If the action ends anyway (timed out, abandoned by someone else) before the Node is Ready
//! and the instance is not in service, the join fails at once. CONTINUE is retried with backoff
//! (heartbeats go on) within the action's remaining time; when AWS says no action waits any more,
//! the instance's lifecycle state decides: in service → joined (an earlier answer of ours went
//! through, or the hook's default result is CONTINUE), anything else → failed.
//!
//! The token exists in this process's memory and in the k3s config file only: never in a log
//! line, never in a child's arguments or environment.

use crate::aws::{self, Secret};
use crate::config::{Config, Settings};
use crate::imds::{Imds, InstanceInfo};
use crate::lifecycle::{
    self, ActionResult, Completion, Heartbeats, LAUNCHED_STATES, Lifecycle, MAX_GLOBAL_TIMEOUT,
    Retried,
};
use crate::metrics::Metrics;
use crate::sources::target_lifecycle;
use crate::{Error, Result, k8s};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Labels the agent always sets (docs/interfaces.md, "Node labels set by the agent").
pub const LABEL_INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
pub const LABEL_CAPACITY_TYPE: &str = "smartscale.io/capacity-type";
pub const LABEL_NODE_GROUP: &str = "smartscale.io/node-group";

#[tracing::instrument(skip_all)]
pub async fn join(config: &Config) -> Result<()> {
    let started = Instant::now();
    let imds = Imds::from_env()?;
    let instance = imds.instance().await?;
    tracing::info!(
        instance = %instance.instance_id,
        zone = %instance.availability_zone,
        instance_type = %instance.instance_type,
        capacity = %instance.capacity_type,
        "instance identified"
    );
    let sdk = aws::sdk_config(&instance).await;
    // Both are needed before the first heartbeat (the hook's name, the group): asked at once.
    let (params, asg) = tokio::join!(
        aws::settings_params(&sdk, &config.ssm_path),
        aws::asg_name(&sdk, &instance)
    );
    // Without the settings there is no hook name to abandon; the bootstrap script abandons then.
    let params = params?;
    let asg = asg?;
    let settings = match aws::parse_settings(&config.ssm_path, &params) {
        Ok(settings) => settings,
        Err(e) => {
            // Settings this join cannot go on with (a label the kubelet may not set, …): refused
            // before anything is written or started. If the launch hook is known, answer it.
            tracing::error!(error = %e, "join failed");
            if let (Some(asg), Some(hook)) = (&asg, Settings::launch_hook_in(&params)) {
                let lifecycle = Lifecycle::new(&sdk, asg, &instance.instance_id);
                abandon(&lifecycle, &hook, None).await;
            }
            return Err(e);
        }
    };
    let launch = match (&asg, &settings.launch_hook_name) {
        (Some(asg), Some(hook)) => Some((
            Arc::new(Lifecycle::new(&sdk, asg, &instance.instance_id)),
            hook.clone(),
        )),
        _ => {
            tracing::info!(
                "no launch lifecycle hook to answer (no Auto Scaling group or no launch_hook_name)"
            );
            None
        }
    };
    // The first heartbeat goes out now, before anything slow (the hook's timeouts, the token,
    // k3s): the launch action's clock has been running since the instance launched.
    let keepalive = launch
        .as_ref()
        .map(|(lifecycle, hook)| keep_alive(lifecycle, hook, settings.heartbeat_interval, started));

    // Launched into the warm pool: the bootstrap did the slow work; answer the hook and stop
    // here. The instance joins when the group starts it from the pool (target `InService`).
    let joined = match target_lifecycle::warmed(&imds).await {
        Ok(Some(target)) => return warm(&target, launch.as_ref(), keepalive.as_ref()).await,
        Ok(None) => tokio::select! {
            r = bootstrap(config, &settings, &instance, asg.as_deref(), &sdk) => r,
            e = launch_ended(launch.as_ref(), keepalive.as_ref()) => Err(e),
        },
        Err(e) => Err(e),
    };
    // CONTINUE is part of the join: if it cannot go through (the action ended, the call is
    // refused past the action's time), the join failed and is cleaned up like any other failure.
    let joined = match (joined, &launch, &keepalive) {
        (Ok(()), Some((lifecycle, hook)), Some(keepalive)) => {
            continue_launch(lifecycle, hook, keepalive).await
        }
        (other, _, _) => other,
    };
    match joined {
        Ok(()) => {
            tracing::info!(node = %instance.hostname, "joined: node Ready");
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "join failed");
            remove_k3s_config(&config.k3s_config_path);
            if let Some((lifecycle, hook)) = &launch {
                // Heartbeats go on while ABANDON is retried: a hook whose default result is
                // CONTINUE must not time out into service; they also learn if the action is gone.
                abandon(lifecycle, hook, keepalive.as_ref()).await;
            }
            drop(keepalive);
            Err(e)
        }
    }
}

/// An instance warming for the pool: no token, no k3s, no Node; CONTINUE so that it goes on to
/// `target`. Failing to answer is an error (the action would time out to its default).
async fn warm(
    target: &str,
    launch: Option<&(Arc<Lifecycle>, String)>,
    keepalive: Option<&KeepAlive>,
) -> Result<()> {
    tracing::info!(target_state = %target, "launched into the warm pool: not joining the cluster now");
    if let (Some((lifecycle, hook)), Some(keepalive)) = (launch, keepalive) {
        continue_launch(lifecycle, hook, keepalive).await?;
        tracing::info!(hook = %hook, "warm-pool launch lifecycle action completed (CONTINUE)");
    }
    Ok(())
}

/// How long a failed ABANDON is retried. Unanswered, the action would wait out its heartbeat
/// timeout (an hour by default) before the group replaced this instance.
const ABANDON_RETRY_FOR: Duration = Duration::from_secs(120);

/// `CompleteLifecycleAction(launch hook, ABANDON)`, retried like CONTINUE until the action is
/// gone (the heartbeats of `keepalive` learn it) or [`ABANDON_RETRY_FOR`]: the group replaces
/// this instance.
async fn abandon(lifecycle: &Lifecycle, hook: &str, keepalive: Option<&KeepAlive>) {
    let mut until = Instant::now() + ABANDON_RETRY_FOR;
    if let Some(keepalive) = keepalive {
        until = until.min(keepalive.until().await);
    }
    let outcome = lifecycle
        .complete_retried(
            "launch",
            hook,
            ActionResult::Abandon,
            keepalive.map(|k| k.heartbeats.status()),
            until,
        )
        .await;
    match outcome {
        Retried::Answered(Completion::Completed) => {
            tracing::info!(hook = %hook, "launch lifecycle action abandoned; the Auto Scaling group replaces this instance")
        }
        Retried::Answered(Completion::NoActiveAction(_)) | Retried::Gone => {
            tracing::info!(hook = %hook, "no launch lifecycle action left to abandon")
        }
        Retried::GaveUp(abandon) => {
            tracing::error!(error = %abandon, "could not abandon the launch lifecycle action; it times out to its default result")
        }
    }
}

/// The launch action kept alive while `join` works.
struct KeepAlive {
    heartbeats: Heartbeats,
    /// When `join` started: the action began before it, at most its global timeout before the
    /// action must end.
    started: Instant,
}

impl KeepAlive {
    /// The action cannot outlive this: it began before this process, at most its global timeout
    /// ago ([`MAX_GLOBAL_TIMEOUT`] if the hook's timeouts could not be read).
    async fn until(&self) -> Instant {
        let timing = self.heartbeats.timing(Duration::from_secs(30)).await;
        self.started + timing.map_or(MAX_GLOBAL_TIMEOUT, |t| t.global_timeout)
    }
}

/// Heartbeats for the launch hook, the first one at once; the hook's timeouts (heartbeat period,
/// when the action must end) are read meanwhile.
fn keep_alive(
    lifecycle: &Arc<Lifecycle>,
    hook: &str,
    configured: Option<Duration>,
    started: Instant,
) -> KeepAlive {
    let lookup = {
        let lifecycle = lifecycle.clone();
        let hook = hook.to_string();
        async move {
            match lifecycle.timing(&hook).await {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the launch hook's timeouts");
                    None
                }
            }
        }
    };
    KeepAlive {
        heartbeats: lifecycle.spawn_heartbeats(hook, configured, lookup, Arc::new(Metrics::new())),
        started,
    }
}

/// `CompleteLifecycleAction(launch hook, CONTINUE)`, retried with backoff while the heartbeats
/// keep the action alive. If no action waits any more, the instance's lifecycle state tells
/// whether the launch went through.
async fn continue_launch(lifecycle: &Lifecycle, hook: &str, keepalive: &KeepAlive) -> Result<()> {
    let outcome = lifecycle
        .complete_retried(
            "launch",
            hook,
            ActionResult::Continue,
            Some(keepalive.heartbeats.status()),
            keepalive.until().await,
        )
        .await;
    let why = match outcome {
        Retried::Answered(Completion::Completed) => return Ok(()),
        Retried::Answered(Completion::NoActiveAction(message)) => message,
        Retried::Gone => "the heartbeats found no action waiting any more".to_string(),
        Retried::GaveUp(e) => format!("gave up retrying CONTINUE: {e}"),
    };
    match lifecycle.instance_state().await {
        Ok(Some(state)) if LAUNCHED_STATES.contains(&state.as_str()) => {
            tracing::warn!(
                %state,
                %why,
                "the launch lifecycle action was no longer waiting, but the instance is in service"
            );
            Ok(())
        }
        _ => Err(hook_gone(lifecycle, hook, why).await),
    }
}

/// Resolves, with the error, once the launch action no longer waits while the node is not Ready
/// yet and the instance is not in service (abandoned, or timed out to ABANDON): the group stopped
/// waiting for this join. Never otherwise: an instance already in service (the hook's default
/// result was CONTINUE, or `join` runs again on a running node) goes on joining.
async fn launch_ended(
    launch: Option<&(Arc<Lifecycle>, String)>,
    keepalive: Option<&KeepAlive>,
) -> Error {
    let (Some((lifecycle, hook)), Some(keepalive)) = (launch, keepalive) else {
        return std::future::pending().await;
    };
    lifecycle::gone(Some(keepalive.heartbeats.status())).await;
    let state = lifecycle.instance_state().await;
    if let Ok(Some(state)) = &state
        && LAUNCHED_STATES.contains(&state.as_str())
    {
        tracing::warn!(
            %state,
            "no launch lifecycle action waits any more, but the instance is in service; going on with the join"
        );
        return std::future::pending().await;
    }
    gone_error(hook, "it ended before the node was Ready".into(), state)
}

/// The error for a launch action that no longer waits, with the instance's lifecycle state.
async fn hook_gone(lifecycle: &Lifecycle, hook: &str, why: String) -> Error {
    gone_error(hook, why, lifecycle.instance_state().await)
}

fn gone_error(hook: &str, why: String, state: Result<Option<String>>) -> Error {
    let state = match state {
        Ok(Some(state)) => state,
        Ok(None) => "no longer in its Auto Scaling group".to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    Error::LaunchHookGone {
        hook: hook.to_string(),
        why,
        state,
    }
}

async fn bootstrap(
    config: &Config,
    settings: &Settings,
    instance: &InstanceInfo,
    asg: Option<&str>,
    sdk: &aws_config::SdkConfig,
) -> Result<()> {
    let server = settings
        .server_url
        .as_deref()
        .ok_or_else(|| Error::Settings {
            path: config.ssm_path.clone(),
            problems: vec![
                "server_url: required by join; the K3s server URL, e.g. https://10.0.1.10:6443"
                    .into(),
            ],
        })?;
    // join_timeout covers all of it: the token (a new cluster's server may not have published it
    // yet), k3s's start and the Node becoming Ready.
    let deadline = Instant::now() + config.join_timeout;
    let token = aws::join_token(sdk, &config.token_secret_id, deadline).await?;
    let text = k3s_config(server, &token, instance, asg, settings);
    drop(token);
    smartscale_common::files::write_private(&config.k3s_config_path, text.expose().as_bytes())?;
    drop(text);
    tracing::info!(path = %config.k3s_config_path.display(), "k3s config written (mode 0600)");

    start_k3s(&config.k3s_start_command, deadline, config.join_timeout).await?;
    wait_ready(
        &config.kubeconfig,
        &instance.hostname,
        deadline,
        config.join_timeout,
    )
    .await
}

/// Removes the k3s config after a failed join: it holds the token and is of no use now.
fn remove_k3s_config(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed the k3s config of the failed join")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove the k3s config")
        }
    }
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The k3s agent config (`/etc/rancher/k3s/config.yaml`, keys as k3s's flags).
pub fn k3s_config(
    server: &str,
    token: &Secret,
    instance: &InstanceInfo,
    asg: Option<&str>,
    settings: &Settings,
) -> Secret {
    let mut labels = vec![
        format!("{LABEL_INSTANCE_TYPE}={}", instance.instance_type),
        format!("{LABEL_ZONE}={}", instance.availability_zone),
        format!("{LABEL_CAPACITY_TYPE}={}", instance.capacity_type),
    ];
    if let Some(asg) = asg {
        labels.push(format!("{LABEL_NODE_GROUP}={asg}"));
    }
    labels.extend(settings.node_labels.iter().map(|(k, v)| format!("{k}={v}")));
    let list = |items: &[String]| -> String {
        items
            .iter()
            .map(|i| format!("  - {}\n", quoted(i)))
            .collect()
    };
    let mut out = String::from(
        "# Written by smartscale-agent join. Holds the cluster join token: keep it mode 0600.\n",
    );
    out.push_str(&format!("server: {}\n", quoted(server)));
    out.push_str(&format!("token: {}\n", quoted(token.expose())));
    out.push_str(&format!("node-name: {}\n", quoted(&instance.hostname)));
    out.push_str("kubelet-arg:\n");
    out.push_str(&list(&[format!("provider-id={}", instance.provider_id())]));
    out.push_str("node-label:\n");
    out.push_str(&list(&labels));
    if !settings.node_taints.is_empty() {
        out.push_str("node-taint:\n");
        out.push_str(&list(&settings.node_taints));
    }
    Secret::new(out)
}

/// Runs the start command (stdin closed, its output captured for the error message), killed
/// if it has not exited by `deadline`.
async fn start_k3s(command: &[String], deadline: Instant, timeout: Duration) -> Result<()> {
    let shown = command.join(" ");
    let fail = |message: String| Error::StartCommand {
        command: shown.clone(),
        message,
    };
    let (program, args) = command
        .split_first()
        .ok_or_else(|| fail("is empty".into()))?;
    tracing::info!(command = %shown, "starting k3s");
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("could not be started: {e}")))?;
    let output = tokio::time::timeout_at(deadline.into(), child.wait_with_output())
        .await
        .map_err(|_| {
            fail(format!(
                "did not finish within join_timeout ({}); killed",
                smartscale_common::duration::format(timeout)
            ))
        })?
        .map_err(|e| fail(format!("failed: {e}")))?;
    let tail = |bytes: &[u8]| -> String {
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(10)..].join(" | ")
    };
    if output.status.success() {
        tracing::info!("k3s start command finished");
        Ok(())
    } else {
        let mut message = format!("exited with {}", output.status);
        let (out, err) = (tail(&output.stdout), tail(&output.stderr));
        if !err.is_empty() {
            message.push_str(&format!("; stderr: {err}"));
        }
        if !out.is_empty() {
            message.push_str(&format!("; stdout: {out}"));
        }
        Err(fail(message))
    }
}

/// Polls the API server (with the node's own kubeconfig, once k3s has written it) until the
/// Node is Ready, or fails at `deadline` with the last thing seen.
async fn wait_ready(
    kubeconfig: &Path,
    node: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    let mut client: Option<kube::Client> = None;
    let mut last = String::from("nothing checked yet");
    loop {
        if client.is_none() {
            if kubeconfig.exists() {
                match k8s::client(kubeconfig).await {
                    Ok(c) => client = Some(c),
                    Err(e) => last = e.to_string(),
                }
            } else {
                last = format!("k3s has not written {} yet", kubeconfig.display());
            }
        }
        if let Some(c) = &client {
            match k8s::get_node(c, node).await {
                Ok(Some(n)) if k8s::is_ready(&n) => {
                    // Back from the warm pool (ReuseOnScaleIn): the drain before it left the
                    // node cordoned; serving again, it takes pods again.
                    match k8s::clear_earlier_drain(c, &n).await {
                        Ok(true) => {
                            tracing::info!(node = %node, "uncordoned: this node was drained before it went back to the warm pool")
                        }
                        Ok(false) => {}
                        // The node serves either way; an operator can uncordon it.
                        Err(e) => {
                            tracing::warn!(node = %node, error = %e, "the node is still cordoned from an earlier drain (`kubectl uncordon {node}`)")
                        }
                    }
                    return Ok(());
                }
                Ok(Some(_)) => last = format!("node {node} is registered but not Ready"),
                Ok(None) => last = format!("node {node} is not registered yet"),
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::JoinTimeout {
                node: node.to_string(),
                timeout: smartscale_common::duration::format(timeout),
                last,
            });
        }
        tracing::debug!(%last, "waiting for the node to be Ready");
        tokio::time::sleep(Duration::from_millis(500).min(deadline - Instant::now())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k3s_config_has_identity_labels_and_quoted_token() {
        let instance = InstanceInfo {
            instance_id: "i-0abc".into(),
            availability_zone: "eu-west-3a".into(),
            region: "eu-west-3".into(),
            instance_type: "t3.medium".into(),
            capacity_type: "spot".into(),
            hostname: "ip-10-0-1-5.eu-west-3.compute.internal".into(),
            asg_name: None,
        };
        let settings = Settings {
            node_labels: vec![("team".into(), "web".into())],
            node_taints: vec!["dedicated=batch:NoSchedule".into()],
            ..Settings::default()
        };
        let token = Secret::new("K10abc::server:s3cr\"et".into());
        let text = k3s_config(
            "https://10.0.1.10:6443",
            &token,
            &instance,
            Some("workers"),
            &settings,
        );
        let text = text.expose();
        assert!(
            text.contains("token: \"K10abc::server:s3cr\\\"et\"\n"),
            "{text}"
        );
        assert!(text.contains("  - \"provider-id=aws:///eu-west-3a/i-0abc\"\n"));
        for label in [
            "node.kubernetes.io/instance-type=t3.medium",
            "topology.kubernetes.io/zone=eu-west-3a",
            "smartscale.io/capacity-type=spot",
            "smartscale.io/node-group=workers",
            "team=web",
        ] {
            assert!(
                text.contains(&format!("  - \"{label}\"\n")),
                "{label} in {text}"
            );
        }
        assert!(text.contains("node-taint:\n  - \"dedicated=batch:NoSchedule\"\n"));
        assert!(text.contains("node-name: \"ip-10-0-1-5.eu-west-3.compute.internal\"\n"));
    }
}
