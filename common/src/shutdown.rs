//! Waiting for SIGTERM or SIGINT.

/// Resolves when the process receives SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
                _ = int.recv() => tracing::info!("SIGINT received, stopping"),
            }
        }
        _ => {
            // Cannot install handlers (should not happen on Unix): fall back to Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
