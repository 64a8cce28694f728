//! Periodic ZooKeeper housekeeping, as Nodepool's CleanupWorker does (zk-protocol.md §4.5, §6.7):
//!
//! - request-lock directories whose request is gone and which have not changed for a while
//!   (Nodepool: 8 hours) are removed;
//! - node znodes with empty data (left by a lock taken on a node just deleted) are removed;
//! - node znodes of ours that no PoolNode owns are removed ([`crate::orphans`]).

use std::{sync::Arc, time::Duration};

use anyhow::Result;

use crate::{
    shared::Shared,
    zk::{self, lock, paths},
};

/// How often and how strictly to clean up.
#[derive(Clone, Copy, Debug)]
pub struct CleanupSettings {
    pub interval: Duration,
    /// Age after which an orphaned request-lock directory is removed.
    pub request_lock_max_age: Duration,
    /// How long a node znode of ours that no PoolNode owns is left alone (last written before).
    pub orphan_grace: Duration,
}

impl Default for CleanupSettings {
    fn default() -> Self {
        CleanupSettings {
            interval: Duration::from_secs(60),
            request_lock_max_age: Duration::from_secs(8 * 3600),
            orphan_grace: Duration::from_secs(30),
        }
    }
}

pub async fn run(shared: Arc<Shared>, settings: CleanupSettings) -> Result<()> {
    shared.until_resynced().await;
    loop {
        tokio::time::sleep(settings.interval).await;
        if let Err(error) = pass(&shared, settings).await {
            tracing::warn!(error = format!("{error:#}"), "ZooKeeper cleanup pass failed");
        }
        if let Err(error) = crate::orphans::sweep(&shared, settings.orphan_grace).await {
            tracing::warn!(error = format!("{error:#}"), "sweeping orphan node znodes failed");
        }
    }
}

async fn pass(shared: &Arc<Shared>, settings: CleanupSettings) -> Result<()> {
    let requests: std::collections::HashSet<String> =
        shared.zk.list_children(paths::REQUESTS).await?.into_iter().collect();
    // A safety net for withdrawals the watch missed (the resync catches those of a restart).
    crate::requests::forget_withdrawn(shared, &requests).await?;
    for id in shared.zk.list_children(paths::REQUEST_LOCKS).await? {
        if requests.contains(&id) {
            continue;
        }
        let dir = paths::request_lock(&id);
        let Some(stat) = shared.zk.check_stat(&dir).await? else { continue };
        let age = zk::age(stat.mtime);
        if age >= settings.request_lock_max_age && lock::contenders(&shared.zk, &dir).await?.is_empty() {
            tracing::info!(request = %id, "removing the lock directory of a request that is gone");
            zk::delete_recursive(&shared.zk, &dir).await?;
        }
    }
    Ok(())
}
