//! The controller's one error type.

/// Everything that can stop a controller operation. Each variant says what failed and, where the
/// operator can act, how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration:\n{}", .0.join("\n"))]
    Config(Vec<String>),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    WriteFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Prometheus query `{query}` failed: {message}")]
    Prometheus { query: String, message: String },
    #[error("Kubernetes API: {0}")]
    Kubernetes(String),
    #[error("AWS {operation}: {message}")]
    Aws { operation: String, message: String },
    #[error("state table: {0}")]
    State(String),
    #[error(
        "lease lost: another replica holds it or fenced us (our token {ours}, current {current})"
    )]
    Fenced { ours: u64, current: u64 },
    #[error("{0}")]
    Trace(String),
    #[error("HTTP server: {0}")]
    Server(String),
    /// The capacity model could not read an object (a malformed quantity, selector or taint,
    /// an instance type it does not know).
    #[error("capacity model: {0}")]
    Capacity(String),
    /// Lambda mode: the invocation's time ran out before the cycle finished.
    #[error("deadline: {0}")]
    Deadline(String),
    /// Lambda mode: where the configuration comes from (the SSM parameter, the packaged file).
    #[error("configuration source: {0}")]
    ConfigSource(String),
    /// Lambda mode: an event that is not an EventBridge scheduled event.
    #[error("event: {0}")]
    Event(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Short machine-friendly kind, used as the `kind` label of `smartscale_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::ReadFile { .. } | Error::WriteFile { .. } => "io",
            Error::Prometheus { .. } => "prometheus",
            Error::Kubernetes(_) => "kubernetes",
            Error::Aws { .. } => "aws",
            Error::State(_) => "state",
            Error::Fenced { .. } => "fenced",
            Error::Trace(_) => "trace",
            Error::Server(_) => "server",
            Error::Capacity(_) => "capacity",
            Error::Deadline(_) => "deadline",
            Error::ConfigSource(_) => "config_source",
            Error::Event(_) => "event",
            Error::Other(_) => "other",
        }
    }

    /// Wraps any displayable AWS SDK error with the operation name.
    pub fn aws(operation: &str, err: impl std::fmt::Display) -> Self {
        Error::Aws {
            operation: operation.to_string(),
            message: err.to_string(),
        }
    }
}
