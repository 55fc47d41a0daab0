//! What the SmartScale controller and agent share: loading a YAML config with env overrides
//! and every problem reported at once, human durations, logging set-up, atomic private files,
//! and the shutdown signal.

pub mod config;
pub mod duration;
pub mod files;
pub mod logging;
pub mod shutdown;

pub use duration::Dur;

/// The shared pieces' one error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .0.join("\n"))]
    Problems(Vec<String>),
    #[error("logging: {0}")]
    Logging(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes in one line (`dispatch failure: io error: Connection refused`),
/// each cause once: SDK errors often hide the useful part in their source chain.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
