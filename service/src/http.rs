//! The HTTP listener every binary runs: Prometheus metrics and the probes of its pod.
//!
//! - `GET /metrics`: the registry in the OpenMetrics text format when the client accepts it
//!   (Prometheus does), else in Prometheus's classic text format (what `promtool check
//!   metrics`, curl and older scrapers read).
//! - `GET /healthz`: liveness; answers as long as the process serves requests.
//! - `GET /readyz`: readiness; 200 when every [`Health`] check passes, else 503 with the
//!   failing checks (one per line, like the apiserver's `/readyz?verbose`).

use std::{collections::HashSet, net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;

use crate::Health;

struct Shared {
    registry: Registry,
    health: Health,
}

/// Binds `address` and serves the endpoints, and the binary's own `routes`, in a background
/// task. Binding errors are returned at once (a port in use is a configuration error worth
/// failing start-up for).
pub async fn serve(
    address: SocketAddr,
    registry: Registry,
    health: Health,
    routes: Router,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics and health listener to {address}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(Shared { registry, health }))
        .merge(routes);
    tracing::info!(address = %bound, "serving /metrics, /healthz, /readyz and the binary's own pages");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the metrics and health listener stopped");
        }
    });
    Ok(bound)
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> impl IntoResponse {
    let mut body = String::new();
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    match prometheus_client::encoding::text::encode(&mut body, &shared.registry) {
        Ok(()) if openmetrics => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], body),
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, PROMETHEUS_TEXT)], prometheus_text(&body)),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding the metrics failed: {error}\n"),
        ),
    }
}

/// Rewrites OpenMetrics text as Prometheus's classic text format. The two differ, for what
/// this registry holds, only in that a counter family is named without `_total` in
/// OpenMetrics (its samples keep it), and in the `# UNIT` and `# EOF` lines.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = line
            .strip_prefix("# HELP ")
            .map(|rest| ("# HELP ", rest))
            .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("# TYPE ", rest)));
        match descriptor {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    text.push_str(&format!("{kind}{name}_total {tail}\n"));
                    continue;
                }
                text.push_str(line);
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let (ready, report) = shared.health.readiness().await;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, report)
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

    use super::*;

    #[test]
    fn counters_are_named_with_total_in_the_classic_format() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        counter.inc();
        registry.register("launches", "Launches", counter);
        registry.register("up", "Up", Gauge::<i64>::default());
        let mut openmetrics = String::new();
        prometheus_client::encoding::text::encode(&mut openmetrics, &registry).unwrap();
        assert!(openmetrics.contains("# TYPE launches counter\n"), "{openmetrics}");
        let text = prometheus_text(&openmetrics);
        assert_eq!(
            text,
            "# HELP launches_total Launches.\n# TYPE launches_total counter\nlaunches_total 1\n\
             # HELP up Up.\n# TYPE up gauge\nup 0\n"
        );
    }
}
