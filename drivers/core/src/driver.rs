//! What a driver tells the framework about itself: the descriptor every driver crate exports and
//! the registry (`drivers/registry`) lists. The operator, the CRD generator and the docs ask the
//! descriptor; nothing outside a driver's folder matches on its name.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use nodepool_crds::{
    ConnectionSettings, ConnectionType, Provider,
    driver_blocks::{BadBlock, DriverShape},
    provider::Pool,
};

use crate::{Cloud, credentials::CloudUnavailable};

/// How a driver's nodes come to be, and so where their limits come from: a launching driver's
/// cloud reports its quota ([`Cloud::quota_limits`]), a slot is one node at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Supply {
    /// Each node is launched for the request (or min-ready) and deleted after use: clouds.
    Launched,
    /// Nodes are slots on machines that already exist, registered afresh after each use:
    /// static hosts.
    Slotted,
}

impl Supply {
    pub fn launches(self) -> bool {
        self == Self::Launched
    }

    pub fn slots(self) -> bool {
        self == Self::Slotted
    }
}

/// Everything a driver needs to build the client of one provider's cloud.
pub struct Build<'a> {
    pub provider: &'a Provider,
    /// The provider's namespace.
    pub namespace: &'a str,
    /// This installation's id, tagged on everything it creates (see [`crate::tags`]).
    pub system_id: &'a str,
    /// The Secret `spec.credentialsSecretRef` names, read by the operator.
    pub credentials: Option<&'a Secret>,
}

impl Build<'_> {
    /// The key of the credentials Secret to read: `credentialsSecretRef.key`, else the driver's
    /// documented default.
    pub fn credentials_key(&self, default: &str) -> String {
        let reference = self.provider.spec.credentials_secret_ref.as_ref();
        reference.and_then(|r| r.key.clone()).unwrap_or_else(|| default.to_owned())
    }
}

/// One node a slotted provider should have: slot `slot` of `host` in `pool`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub pool: String,
    pub host: String,
    pub slot: u32,
    pub labels: Vec<String>,
}

/// How the framework reaches the host of a slot: to check it answers before a hand-out and to
/// scan its host keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotHost {
    /// How Zuul logs in, with the driver's defaults filled in.
    pub connection: ConnectionSettings,
    /// How long a reachability check or key scan may take.
    pub timeout: Duration,
    /// Scan host keys (and check the port) before the slot is registered and handed out.
    pub host_key_checking: bool,
    /// Host keys given in the settings instead of scanned.
    pub host_keys: Vec<String>,
}

impl SlotHost {
    /// The port checked and scanned (the connection port, else SSH's).
    pub fn port(&self) -> u16 {
        self.connection.connection_port.unwrap_or(22)
    }

    /// Whether the host keys are scanned: asked for, and the node is an SSH machine.
    pub fn scans_keys(&self) -> bool {
        self.host_key_checking && self.connection.connection_type.unwrap_or_default().is_ssh()
    }
}

/// A driver, as the framework sees it. Implemented by a unit struct in each driver crate and
/// listed once in the registry.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// The value of a Provider's `spec.driver`; the driver's folder is `drivers/<name>`.
    fn name(&self) -> &'static str;

    /// Its settings blocks in the custom resources, and whether it reads a credentials Secret.
    /// The CRD generator writes them into the `Provider` and `Image` schemas.
    fn shape(&self) -> DriverShape;

    /// Whether nodes are launched or slotted.
    fn supply(&self) -> Supply;

    /// The connection types its nodes can have; the first is what a node gets when nothing says
    /// otherwise.
    fn connection_types(&self) -> &'static [ConnectionType] {
        &[ConnectionType::Ssh]
    }

    /// Whether every label of a pool must name an `Image` to boot.
    fn needs_image(&self) -> bool {
        false
    }

    /// The labels a pool serves (by default the pool's `labels`).
    fn pool_labels(&self, pool: &Pool) -> Vec<String> {
        pool.labels.iter().map(|label| label.name.clone()).collect()
    }

    /// Builds the client of the provider's cloud ([`Supply::Launched`] drivers).
    async fn cloud(&self, build: Build<'_>) -> Result<Arc<dyn Cloud>, CloudUnavailable> {
        let _ = build;
        Err(CloudUnavailable::NoCloud(self.name()))
    }

    /// Every slot of the provider ([`Supply::Slotted`] drivers).
    fn slots(&self, provider: &Provider) -> Result<Vec<Slot>, BadBlock> {
        let _ = provider;
        Ok(Vec::new())
    }

    /// The hosts behind a slotted pool's slots, by name, and how to reach each.
    fn slot_hosts(&self, pool: &Pool) -> Result<Vec<(String, SlotHost)>, BadBlock> {
        let _ = pool;
        Ok(Vec::new())
    }

    /// How to reach the host behind the slots of `host` in `pool`, if the provider has it.
    fn slot_host(&self, provider: &Provider, pool: &str, host: &str) -> Option<SlotHost> {
        let pool = provider.spec.pools.iter().find(|p| p.name == pool)?;
        let hosts = self.slot_hosts(pool).ok()?;
        hosts.into_iter().find(|(name, _)| name == host).map(|(_, host)| host)
    }
}
