//! One reconciler per kind, in the kube-runtime style: `reconcile(object, context)` plus an
//! error policy that retries with a delay.

pub mod cloud_node;
pub mod cloud_provider;
pub mod image;
pub mod label;
pub mod pool_node;
pub mod provider;
pub mod provider_deletion;
pub mod tenant_limit;

use std::time::Duration;

use kube::runtime::controller::Action;

/// A reconcile failure, with its context chain; the controller retries.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Error(#[from] pub anyhow::Error);

impl From<kube::Error> for Error {
    fn from(error: kube::Error) -> Self {
        Error(error.into())
    }
}

/// Conflicts are expected (another writer got there first): retry at once; anything else after
/// a pause.
pub fn retry_after(error: &Error) -> Action {
    if crate::status::is_conflict(&error.0) {
        Action::requeue(Duration::from_millis(50))
    } else {
        Action::requeue(Duration::from_secs(5))
    }
}
