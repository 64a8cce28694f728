//! `nodepool-zk-bridge`: serves Zuul's ZooKeeper protocol from nodepool.dev custom resources.

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use nodepool_service::{ServiceArgs, cli::Started};
use nodepool_zk_bridge::{Settings, metrics::Metrics, zk::ZooKeeperConfig};

#[derive(Parser)]
#[command(version, about = "Speaks Zuul's Nodepool protocol over ZooKeeper for nodepool-operator")]
struct Cli {
    /// Namespace of the Providers, NodeRequests and PoolNodes this bridge serves.
    #[arg(long, env = "NODEPOOL_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Host name in pool-component ids (defaults to the machine's host name).
    #[arg(long, env = "NODEPOOL_HOSTNAME")]
    hostname: Option<String>,
    /// Seconds between ZooKeeper cleanup passes (orphaned lock directories, empty node znodes).
    #[arg(long, env = "NODEPOOL_CLEANUP_INTERVAL", default_value_t = 60)]
    cleanup_interval: u64,
    /// Seconds after which the lock directory of a deleted request is removed (Nodepool: 8 h).
    #[arg(long, env = "NODEPOOL_REQUEST_LOCK_MAX_AGE", default_value_t = 8 * 3600)]
    request_lock_max_age: u64,
    /// Seconds a node znode of ours that no PoolNode owns is left alone before the cleanup
    /// removes it (it may be a registration the PoolNode cache has not shown yet).
    #[arg(long, env = "NODEPOOL_ORPHAN_GRACE", default_value_t = 30)]
    orphan_grace: u64,
    #[command(flatten)]
    zookeeper: ZooKeeperConfig,
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let Started { client: kube, metrics, health } =
        cli.service.start(Metrics::register, Default::default()).await?;
    let hostname = cli.hostname.unwrap_or_else(nodepool_service::cli::hostname);
    tracing::info!(namespace = %cli.namespace, zookeeper = %cli.zookeeper.hosts, "starting nodepool-zk-bridge");

    let cleanup = nodepool_zk_bridge::cleanup::CleanupSettings {
        interval: Duration::from_secs(cli.cleanup_interval),
        request_lock_max_age: Duration::from_secs(cli.request_lock_max_age),
        orphan_grace: Duration::from_secs(cli.orphan_grace),
    };
    let settings = Settings {
        kube: kube.clone(),
        namespace: cli.namespace.clone(),
        zookeeper: cli.zookeeper,
        hostname,
        cleanup,
        metrics,
        health,
    };
    // On shutdown the bridge closes its ZooKeeper session, which releases every lock and
    // ephemeral pool component it held at once (not after the session timeout).
    let lease = format!("nodepool-zk-bridge-{}", cli.namespace);
    let work = |shutdown| nodepool_zk_bridge::run(settings, shutdown);
    cli.service.run(kube, &cli.namespace, &lease, work).await
}
