//! `nodepool-operator`: runs the nodepool.dev controllers.

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use nodepool_operator::Settings;

#[derive(Parser)]
#[command(version, about = "Kubernetes operator that brokers CI nodes for Zuul")]
struct Cli {
    /// Namespace whose nodepool.dev objects are managed.
    #[arg(long, env = "NODEPOOL_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Delete held nodes after this many seconds even without a per-node expiration
    /// (Nodepool's max-hold-age). Unset: held nodes stay until Zuul releases them.
    #[arg(long, env = "NODEPOOL_MAX_HOLD_AGE")]
    max_hold_age: Option<u64>,
    /// Identifies this installation in the tags of everything it creates in a cloud; two
    /// installations sharing a cloud account must use different ids. Default: the namespace.
    #[arg(long, env = "NODEPOOL_SYSTEM_ID")]
    system_id: Option<String>,
    /// Seconds between checks of each cloud provider for leaked instances and volumes.
    #[arg(long, env = "NODEPOOL_CLEANUP_INTERVAL", default_value_t = 60)]
    cleanup_interval: u64,
    /// Log as JSON lines.
    #[arg(long, env = "NODEPOOL_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.log_json {
        builder.json().init()
    } else {
        builder.init()
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = kube::Client::try_default().await?;
    tracing::info!(namespace = %cli.namespace, "starting nodepool-operator");
    let settings = Settings {
        client,
        system_id: cli.system_id.unwrap_or_else(|| format!("nodepool-operator-{}", cli.namespace)),
        cleanup_interval: Duration::from_secs(cli.cleanup_interval),
        namespace: cli.namespace,
        max_hold_age: cli.max_hold_age.map(Duration::from_secs),
    };
    tokio::select! {
        result = nodepool_operator::run(settings) => result,
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

/// SIGINT or SIGTERM (what Kubernetes sends before it kills a pod).
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
