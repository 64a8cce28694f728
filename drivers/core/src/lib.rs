//! The driver framework shared by every driver.
//!
//! Each driver crate exports a [`Driver`] descriptor (its name, settings blocks, how its nodes
//! come to be, how a provider's cloud is built); the registry in `drivers/registry` lists them.
//!
//! A driver that launches nodes implements [`Cloud`]: single, non-blocking calls to a cloud API (start creating an
//! instance, look one up, start deleting one, list, quota). The framework turns those calls into
//! the node lifecycle:
//!
//! - [`create`]: the create state machine (request instance → wait running → scan host keys →
//!   ready), with launch retries that clean up a failed attempt's instance first, boot and
//!   launch timeouts, and over-quota aborts;
//! - [`delete`]: the delete state machine (terminate → wait gone), which also finds an instance
//!   whose id was never recorded;
//! - [`leaks`]: instances and volumes tagged for a provider that no node owns;
//! - [`throttle`]: the per-provider API rate limit and the API [`metrics`], applied to every call;
//! - [`keyscan`]: reachability checks and SSH host-key scans, for launched nodes and slots alike.
//!
//! The state machines keep their state in a serializable value that the operator stores in the
//! `PoolNode` status, so a restarted operator resumes every launch and deletion where it stood.
//! Creating is idempotent per attempt ([`InstanceSpec::token`]), so resuming never duplicates an
//! instance.

pub mod cloud;
pub mod coalesce;
pub mod create;
pub mod credentials;
pub mod delete;
pub mod driver;
pub mod keyscan;
pub mod leaks;
pub mod metrics;
pub mod tags;
pub mod throttle;

pub use cloud::{
    Cloud, CloudError, Instance, InstanceSpec, InstanceState, KubernetesCredentials, LeakedResource,
    NodeAccess, Owner, ResourceKind,
};
pub use credentials::{CloudUnavailable, secret_value};
pub use driver::{Build, Driver, Slot, SlotHost, Supply};
pub use metrics::CloudApiMetrics;
pub use throttle::{RateLimiter, Throttled};
