//! nodepool-zk-bridge: makes the operator's custom resources look like a Nodepool 11 launcher to
//! Zuul.
//!
//! - [`components`]: one pool component per Provider pool under `/nodepool/components/pool`.
//! - [`requests`]: `/nodepool/requests/<id>` → `NodeRequest`, and the operator's outcome back.
//! - [`nodes`]: `PoolNode` → `/nodepool/nodes/<id>`, and what Zuul writes to a node back.
//! - [`session`]: one ZooKeeper session: full resync, then event-driven until the session ends.
//! - [`shared`]: the state a session's tasks share (clients, caches, locks, known znodes).
//! - [`cleanup`] and [`orphans`]: periodic housekeeping, and node znodes no PoolNode owns.

pub mod cleanup;
pub mod components;
pub mod dispatch;
pub mod metrics;
pub mod nodes;
pub mod orphans;
pub mod recent;
pub mod requests;
pub mod session;
pub mod shared;
pub mod zk;

use std::time::Duration;

use anyhow::Result;

pub use session::Settings;

/// The apiserver's status code behind an error, if it is one.
pub fn api_code(error: &anyhow::Error) -> Option<u16> {
    error.chain().find_map(|cause| match cause.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    })
}

/// Whether an error is the apiserver's "the object has been modified" conflict, which a retry
/// with a fresh read resolves.
pub fn is_conflict(error: &anyhow::Error) -> bool {
    api_code(error) == Some(409)
}

/// Runs the bridge until `shutdown`: a session at a time, resyncing both sides on every new
/// session.
pub async fn run(settings: Settings, mut shutdown: nodepool_service::cli::Shutdown) -> Result<()> {
    let mut backoff = Duration::from_millis(200);
    settings.health.pending(session::ZOOKEEPER_CHECK, "no ZooKeeper session yet");
    let stopping = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopping);
    loop {
        let started = tokio::select! {
            started = session::Session::start(&settings) => started,
            () = &mut stopping => return Ok(()),
        };
        match started {
            Ok(session) => {
                backoff = Duration::from_millis(200);
                let mut state = session.state_watcher();
                let ended = tokio::select! {
                    ended = session.run() => ended,
                    () = &mut stopping => {
                        // The session's tasks, and with them every handle on the client, are
                        // gone: the client sends CloseSession, and ZooKeeper deletes our lock
                        // and pool-component znodes at once.
                        let closed = async { while !state.changed().await.is_terminated() {} };
                        if tokio::time::timeout(Duration::from_secs(2), closed).await.is_ok() {
                            tracing::info!("ZooKeeper session closed");
                        }
                        return Ok(());
                    }
                };
                match ended {
                    Ok(()) => tracing::warn!("ZooKeeper session ended; starting a new one and resyncing"),
                    Err(error) => tracing::error!(error = format!("{error:#}"), "bridge session failed"),
                }
            }
            Err(error) => tracing::error!(error = format!("{error:#}"), "cannot start a bridge session"),
        }
        settings.metrics.zookeeper_connected(false);
        settings.health.fail(session::ZOOKEEPER_CHECK, "no ZooKeeper session; reconnecting");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut stopping => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// How every watch is opened (see [`nodepool_service::watch`]).
pub fn watch_config() -> kube::runtime::watcher::Config {
    nodepool_service::watch::config()
}
