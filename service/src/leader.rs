//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does it,
//! so a Deployment can run two replicas: one works, the other waits to take over.
//!
//! - Every replica tries to take or renew the Lease every [`RETRY`]: it may when the Lease is
//!   free (no holder), its own, or not renewed for a whole lease duration. Writes carry the
//!   resourceVersion they were computed from, so two replicas never both win.
//! - "Not renewed for a lease duration" is measured on this replica's clock from when it last
//!   saw the Lease change (client-go's rule), so clock skew between nodes does not matter.
//! - The leader that cannot renew within two thirds of the duration counts itself as lost, ahead
//!   of anyone else being allowed to take over. The caller then stops (the pod restarts) rather
//!   than winding its work down in place: controllers and ZooKeeper sessions hold state that
//!   only a fresh start makes consistent again.
//! - On shutdown the Lease is released (holder cleared), so the standby takes over within
//!   [`RETRY`] instead of after the lease duration.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, api::PostParams};
use tokio::{sync::watch, task::JoinHandle};

/// How often a standby looks at the Lease and the leader renews it.
pub const RETRY: Duration = Duration::from_secs(2);

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
    renewing: JoinHandle<()>,
    lock: LeaseLock,
}

impl Election {
    /// Waits until this replica holds the lease; then keeps renewing it in the background.
    pub async fn acquire(&self, client: kube::Client) -> Result<Leadership> {
        let mut lock = LeaseLock {
            api: Api::namespaced(client, &self.namespace),
            election: self.clone(),
            observed: None,
        };
        tracing::info!(lease = %self.lease_name, identity = %self.identity, "waiting for leadership");
        loop {
            match lock.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(lease = %self.lease_name, error = format!("{error:#}"), "leader election")
                }
            }
            tokio::time::sleep(RETRY).await;
        }
        tracing::info!(lease = %self.lease_name, identity = %self.identity, "leading");
        let (tx, leading) = watch::channel(true);
        let renew_deadline = self.duration * 2 / 3;
        let mut renewer = lock.clone();
        let renewing = tokio::spawn(async move {
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(RETRY).await;
                match renewer.try_acquire_or_renew().await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => {
                        tracing::error!(lease = %renewer.election.lease_name, "another replica holds the lease");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(lease = %renewer.election.lease_name, error = format!("{error:#}"), "renewing the lease failed");
                        if renewed.elapsed() > renew_deadline {
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(false);
        });
        Ok(Leadership { leading, renewing, lock })
    }
}

impl Leadership {
    /// Resolves when this replica no longer holds the lease.
    pub async fn lost(&mut self) {
        let _ = self.leading.wait_for(|leading| !*leading).await;
        tracing::error!(lease = %self.lock.election.lease_name, "leadership lost");
    }

    /// Gives the lease up so a standby replica takes over at once.
    pub async fn release(self) {
        self.renewing.abort();
        let lease = self.lock.election.lease_name.clone();
        match tokio::time::timeout(Duration::from_secs(5), self.lock.release()).await {
            Ok(Ok(())) => tracing::info!(%lease, "leadership released"),
            Ok(Err(error)) => {
                tracing::warn!(%lease, error = format!("{error:#}"), "releasing the lease failed")
            }
            Err(_) => tracing::warn!(%lease, "releasing the lease timed out"),
        }
    }
}

/// The Lease as one replica sees it.
#[derive(Clone)]
struct LeaseLock {
    api: Api<Lease>,
    election: Election,
    /// The holder and renew time last seen, and when (on our clock) they were first seen.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
}

impl LeaseLock {
    /// One attempt: `true` if we hold the lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let Election { lease_name, identity, duration, .. } = &self.election;
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(lease_name).await.context("reading the Lease")? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(lease_name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(error) => Err(error).context("creating the Lease"),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (holder.clone(), spec.renew_time.clone());
        let first_seen = match &self.observed {
            Some((h, r, at)) if (h, r) == (&record.0, &record.1) => *at,
            _ => Instant::now(),
        };
        self.observed = Some((record.0, record.1, first_seen));
        let theirs = holder.as_ref().is_some_and(|h| h != identity);
        let their_duration =
            spec.lease_duration_seconds.map_or(*duration, |s| Duration::from_secs(s.max(0) as u64));
        if theirs && first_seen.elapsed() < their_duration {
            return Ok(false);
        }
        if holder.as_ref() != Some(identity) {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            if let Some(previous) = &holder {
                tracing::info!(lease = %lease_name, %previous, "taking over an expired lease");
            }
        }
        spec.holder_identity = Some(identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        // The resourceVersion read above makes this a compare-and-swap.
        match self.api.replace(lease_name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error).context("updating the Lease"),
        }
    }

    /// Clears the holder if it is us.
    async fn release(&self) -> Result<()> {
        let name = &self.election.lease_name;
        let Some(mut lease) = self.api.get_opt(name).await? else { return Ok(()) };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.election.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api.replace(name, &PostParams::default(), &lease).await?;
        Ok(())
    }
}
