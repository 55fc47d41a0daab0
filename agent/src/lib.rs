//! The SmartScale node agent, in the order things happen on a worker:
//!
//! - boot: [`join`] (IMDS facts, SSM settings and the Secrets Manager token → k3s config →
//!   Node Ready → launch lifecycle hook);
//! - running: [`sources`] (one small monitor per IMDS source) → [`pipeline`] (once per
//!   termination, resumable) → [`drain`] (cordon, taint, evictions) → [`lifecycle`] (heartbeats,
//!   `CompleteLifecycleAction` exactly once).
//!
//! Around them: [`config`] (local YAML + env, and the SSM settings), [`imds`] (the IMDSv2
//! session), [`aws`] (SDK clients, SSM, the join token), [`k8s`] (the node's own kube client),
//! [`metrics`] and [`run`] (the `run` daemon's wiring).

pub mod aws;
pub mod config;
pub mod context;
pub mod drain;
pub mod imds;
pub mod join;
pub mod k8s;
pub mod lifecycle;
pub mod metrics;
pub mod pipeline;
pub mod run;
pub mod sources;

/// Everything that can go wrong in the agent, each with what to do about it in the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration in {source_name}:\n  {}", problems.join("\n  "))]
    Config {
        source_name: String,
        problems: Vec<String>,
    },
    #[error("invalid settings in SSM Parameter Store under {path}:\n  {}", problems.join("\n  "))]
    Settings { path: String, problems: Vec<String> },
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("instance metadata (IMDS at {endpoint}): {message}")]
    Imds { endpoint: String, message: String },
    #[error("SSM Parameter Store {path}: {message}")]
    Ssm { path: String, message: String },
    #[error("Secrets Manager secret {id}: {message}")]
    Secret { id: String, message: String },
    #[error("Auto Scaling {action}: {message}")]
    AutoScaling {
        action: &'static str,
        message: String,
    },
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("Kubernetes API, {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("k3s start command `{command}` {message}")]
    StartCommand { command: String, message: String },
    #[error("node {node} did not become Ready within {timeout}: {last}")]
    JoinTimeout {
        node: String,
        timeout: String,
        last: String,
    },
    #[error(
        "the launch lifecycle action ({hook}) no longer waits ({why}); the instance is {state}: the Auto Scaling group stopped waiting for this join (abandoned or timed out)"
    )]
    LaunchHookGone {
        hook: String,
        why: String,
        state: String,
    },
    #[error(
        "drain of node {node} interrupted (SIGINT or SIGTERM); the node stays cordoned (`kubectl uncordon {node}` to undo) and nothing will resume this drain"
    )]
    Interrupted { node: String },
    #[error("drain of node {node} ended with {} pod(s) left: {}", left.len(), left.join(", "))]
    DrainIncomplete { node: String, left: Vec<String> },
    #[error("metrics endpoint {address}: {source}")]
    Metrics {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Common(#[from] smartscale_common::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            what: what.into(),
            source: Box::new(source),
        }
    }

    /// An answer that repeating the same request will not change (bad request, unauthorized,
    /// forbidden, not found, invalid): no point retrying it until a deadline.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Kube { source, .. } => {
                matches!(k8s::status_code(source), Some(400 | 401 | 403 | 404 | 422))
            }
            _ => false,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
