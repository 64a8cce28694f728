//! `nodepool-operator`: runs the nodepool.dev controllers.

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use clap::Parser;
use nodepool_operator::{Settings, metrics::Metrics, web::Listings};
use nodepool_service::{ServiceArgs, cli::Started};

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
    /// installations sharing a cloud account must use different ids.
    /// Default: `nodepool-operator-<namespace>`.
    #[arg(long, env = "NODEPOOL_SYSTEM_ID")]
    system_id: Option<String>,
    /// Seconds between checks of each cloud provider for leaked instances and volumes.
    #[arg(long, env = "NODEPOOL_CLEANUP_INTERVAL", default_value_t = 60)]
    cleanup_interval: u64,
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let listings = Arc::new(Listings::default());
    let routes = nodepool_operator::web::router(listings.clone());
    let Started { client, metrics, .. } = cli.service.start(Metrics::register, routes).await?;
    tracing::info!(namespace = %cli.namespace, "starting nodepool-operator");

    let settings = Settings {
        client: client.clone(),
        system_id: cli.system_id.unwrap_or_else(|| format!("nodepool-operator-{}", cli.namespace)),
        cleanup_interval: Duration::from_secs(cli.cleanup_interval),
        namespace: cli.namespace.clone(),
        max_hold_age: cli.max_hold_age.map(Duration::from_secs),
        metrics,
        listings,
    };
    // The controllers hold nothing outside the apiserver: on shutdown they simply stop.
    let work = |mut shutdown: nodepool_service::cli::Shutdown| async move {
        tokio::select! {
            result = nodepool_operator::run(settings) => {
                result?;
                anyhow::bail!("the controllers stopped")
            }
            _ = shutdown.wait_for(|stop| *stop) => Ok(()),
        }
    };
    // One lease per watched namespace: releases watching different namespaces never collide.
    let lease = format!("nodepool-operator-{}", cli.namespace);
    cli.service.run(client, &cli.namespace, &lease, work).await
}
