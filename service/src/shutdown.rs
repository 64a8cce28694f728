//! Stopping on the signals Kubernetes (and a terminal) send.

/// Resolves on SIGINT or SIGTERM (what Kubernetes sends before it kills a pod).
pub async fn signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
