//! The command-line settings both binaries share, and the way they run their work with them:
//! metrics and probes served, leadership held (when asked), stopped cleanly on SIGTERM.

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Result;

use tokio::sync::watch;

use crate::leader::Election;

/// Becomes `true` when the process is asked to stop; long-running work that holds external
/// state (a ZooKeeper session) watches it to shut down cleanly.
pub type Shutdown = watch::Receiver<bool>;

/// How long work may take to stop after being told to (well inside the 30 s Kubernetes waits
/// between SIGTERM and SIGKILL).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, clap::Args)]
pub struct ServiceArgs {
    /// Address for `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "NODEPOOL_HTTP_ADDRESS", default_value = "0.0.0.0:8080")]
    pub http_address: SocketAddr,
    /// Work only while holding a Lease, so several replicas can run (one active).
    #[arg(long, env = "NODEPOOL_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Namespace of the Lease (default: the watched namespace).
    #[arg(long, env = "NODEPOOL_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Seconds a Lease holds without renewal; a standby takes over this long after the
    /// leader dies (at once when it shuts down cleanly).
    #[arg(long, env = "NODEPOOL_LEADER_ELECTION_LEASE_DURATION", default_value_t = 15)]
    pub leader_election_lease_duration: u64,
    /// This replica's name in the Lease (default: `$POD_NAME`, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "NODEPOOL_LOG_JSON")]
    pub log_json: bool,
    /// Open Kubernetes watches as streaming lists (needs the apiserver's WatchList feature);
    /// `false` lists, then watches.
    #[arg(long, env = "NODEPOOL_STREAMING_LISTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub streaming_lists: bool,
}

/// What a binary has once it started: its Kubernetes client, its metrics, and the health
/// checks behind `/readyz`.
pub struct Started<M> {
    pub client: kube::Client,
    pub metrics: M,
    pub health: crate::Health,
}

impl ServiceArgs {
    /// What both binaries do first: logging, the watch mode, the TLS crypto provider, the
    /// Kubernetes client, and `/metrics` (with what `register` adds), `/healthz`, `/readyz` and
    /// the binary's own `routes` served on [`ServiceArgs::http_address`].
    pub async fn start<M>(
        &self,
        register: impl FnOnce(&mut prometheus_client::registry::Registry) -> M,
        routes: axum::Router,
    ) -> Result<Started<M>> {
        crate::logging::init(self.log_json);
        crate::watch::set_streaming_lists(self.streaming_lists);
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = kube::Client::try_default().await?;
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = register(&mut registry);
        let health = crate::Health::new(client.clone());
        crate::http::serve(self.http_address, registry, health.clone(), routes).await?;
        Ok(Started { client, metrics, health })
    }

    /// Runs `work` until it ends or a shutdown signal arrives; with leader election, only
    /// after this replica leads, and fails if leadership is lost so the pod restarts.
    ///
    /// On a shutdown signal `work` is told through its [`Shutdown`] receiver and given
    /// [`SHUTDOWN_GRACE`] to finish cleanly (close sessions, release locks) before it is dropped.
    pub async fn run<W, F>(
        &self,
        client: kube::Client,
        namespace: &str,
        lease_name: &str,
        work: W,
    ) -> Result<()>
    where
        W: FnOnce(Shutdown) -> F,
        F: Future<Output = Result<()>>,
    {
        let mut leadership = None;
        if self.leader_election {
            let election = Election {
                namespace: self.leader_election_namespace.clone().unwrap_or_else(|| namespace.to_owned()),
                lease_name: lease_name.to_owned(),
                identity: self.identity.clone().unwrap_or_else(hostname),
                duration: Duration::from_secs(self.leader_election_lease_duration),
            };
            tokio::select! {
                acquired = election.acquire(client) => leadership = Some(acquired?),
                () = crate::shutdown::signal() => {
                    tracing::info!("shutting down before leading");
                    return Ok(());
                }
            }
        }
        let lost = async {
            match leadership.as_mut() {
                Some(leadership) => leadership.lost().await,
                None => std::future::pending().await,
            }
        };
        let (stop, stopping) = watch::channel(false);
        let mut work = Box::pin(work(stopping));
        let result = tokio::select! {
            result = &mut work => result,
            () = lost => Err(anyhow::anyhow!("lost the leader lease {lease_name}; exiting so a fresh start takes over")),
            () = crate::shutdown::signal() => {
                tracing::info!("shutting down");
                let _ = stop.send(true);
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut work).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!("work did not stop within {SHUTDOWN_GRACE:?}; dropping it");
                        Ok(())
                    }
                }
            }
        };
        // Sessions and watches close before the lease goes, so a successor never overlaps them.
        drop(work);
        if let Some(leadership) = leadership {
            leadership.release().await;
        }
        result
    }
}

/// The machine's host name (a pod's is its name).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}
