//! The test world's one error type.

/// Everything that can go wrong while starting or driving the test world.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "port {0} on 127.0.0.1 is already in use; stop whatever holds it or choose another port"
    )]
    PortInUse(u16),
    #[error("{0} is not installed: {1}")]
    MissingDependency(&'static str, String),
    #[error("{name} did not become ready within {seconds} s; its log: {log}")]
    NotReady {
        name: String,
        seconds: u64,
        log: String,
    },
    #[error("HTTP call to {url} failed: {message}")]
    Http { url: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{name} exited unexpectedly ({status}); its log: {log}")]
    Exited {
        name: String,
        status: String,
        log: String,
    },
    #[error("timed out after {seconds:.1} s waiting for {what}")]
    Timeout { what: String, seconds: f64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
