//! `nodepool-zk-bridge`: serves Zuul's ZooKeeper protocol from nodepool.dev custom resources.

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use nodepool_zk_bridge::{Settings, zk::ZooKeeperConfig};

#[derive(Parser)]
#[command(version, about = "Speaks Zuul's Nodepool protocol over ZooKeeper for nodepool-operator")]
struct Cli {
    /// Namespace of the Providers, NodeRequests and PoolNodes this bridge serves.
    #[arg(long, env = "NODEPOOL_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Host name in pool-component ids (defaults to the machine's host name).
    #[arg(long, env = "NODEPOOL_HOSTNAME")]
    hostname: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "NODEPOOL_LOG_JSON")]
    log_json: bool,
    /// Seconds between ZooKeeper cleanup passes (orphaned lock directories, empty node znodes).
    #[arg(long, env = "NODEPOOL_CLEANUP_INTERVAL", default_value_t = 60)]
    cleanup_interval: u64,
    /// Seconds after which the lock directory of a deleted request is removed (Nodepool: 8 h).
    #[arg(long, env = "NODEPOOL_REQUEST_LOCK_MAX_AGE", default_value_t = 8 * 3600)]
    request_lock_max_age: u64,
    #[command(flatten)]
    zookeeper: ZooKeeperConfig,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let hostname = cli.hostname.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into())
    });
    let kube = kube::Client::try_default().await?;
    tracing::info!(namespace = %cli.namespace, zookeeper = %cli.zookeeper.hosts, "starting nodepool-zk-bridge");
    let cleanup = nodepool_zk_bridge::cleanup::CleanupSettings {
        interval: Duration::from_secs(cli.cleanup_interval),
        request_lock_max_age: Duration::from_secs(cli.request_lock_max_age),
    };
    let settings = Settings { kube, namespace: cli.namespace, zookeeper: cli.zookeeper, hostname, cleanup };
    tokio::select! {
        result = nodepool_zk_bridge::run(settings) => result,
        () = shutdown_signal() => {
            tracing::info!("shutting down; the ZooKeeper session closes and releases our locks");
            Ok(())
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json { builder.json().init() } else { builder.init() }
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
