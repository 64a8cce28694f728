//! Leader election on a `coordination.k8s.io/v1` Lease (via `kube-lease-manager`), so a
//! Deployment can run two replicas: one works, the other waits to take over.
//!
//! A replica that loses its lease stops (the caller returns an error and the pod restarts)
//! rather than trying to wind its work down in place: controllers and ZooKeeper sessions hold
//! state that only a fresh start makes consistent again. On shutdown the lease is released, so
//! the standby takes over at once instead of after the lease duration.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::{sync::watch, task::JoinHandle};

/// Where the lease lives and who we are.
#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub lease_name: String,
    /// Unique per replica: the pod name.
    pub identity: String,
    /// How long a lease holds without renewal.
    pub duration: Duration,
}

/// Leadership held by this replica until [`Leadership::release`] or the lease is lost.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    manager: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    lease_name: String,
}

impl Election {
    /// Waits until this replica holds the lease.
    pub async fn acquire(&self, client: kube::Client) -> Result<Leadership> {
        let duration = self.duration.as_secs().max(2);
        let manager = LeaseManagerBuilder::new(client, &self.lease_name)
            .with_namespace(&self.namespace)
            .with_identity(&self.identity)
            .with_duration(duration)
            .with_grace((duration / 3).max(1))
            .with_field_manager(format!("{}-{}", self.lease_name, self.identity))
            .build()
            .await
            .with_context(|| format!("preparing Lease {}/{}", self.namespace, self.lease_name))?;
        let (mut leading, manager) = manager.watch().await;
        tracing::info!(lease = %self.lease_name, identity = %self.identity, "waiting for leadership");
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                bail!("leader election for Lease {} stopped before we led", self.lease_name);
            }
        }
        tracing::info!(lease = %self.lease_name, identity = %self.identity, "leading");
        Ok(Leadership { leading, manager, lease_name: self.lease_name.clone() })
    }
}

impl Leadership {
    /// Resolves when this replica no longer holds the lease.
    pub async fn lost(&mut self) {
        while *self.leading.borrow_and_update() {
            if self.leading.changed().await.is_err() {
                break;
            }
        }
        tracing::error!(lease = %self.lease_name, "leadership lost");
    }

    /// Gives the lease up so a standby replica takes over without waiting for it to expire.
    pub async fn release(self) {
        // Dropping the receiver closes the channel; the manager task then releases the lease.
        drop(self.leading);
        match tokio::time::timeout(Duration::from_secs(5), self.manager).await {
            Ok(Ok(Ok(_))) => tracing::info!(lease = %self.lease_name, "leadership released"),
            Ok(Ok(Err(error))) => {
                tracing::warn!(lease = %self.lease_name, %error, "releasing the lease failed")
            }
            Ok(Err(error)) => tracing::warn!(lease = %self.lease_name, %error, "the lease task failed"),
            Err(_) => tracing::warn!(lease = %self.lease_name, "releasing the lease timed out"),
        }
    }
}
