//! The real clouds' drivers, each in its own crate (their SDKs are large to compile).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use nodepool_crds::Provider;
use nodepool_driver::Cloud;

use crate::clouds::CloudUnavailable;

pub fn aws(
    _provider: &Provider,
    _system_id: &str,
    _credentials: Option<&Secret>,
) -> Result<Arc<dyn Cloud>, CloudUnavailable> {
    Err(CloudUnavailable::NotBuilt("aws"))
}

pub fn gce(
    _provider: &Provider,
    _system_id: &str,
    _credentials: Option<&Secret>,
) -> Result<Arc<dyn Cloud>, CloudUnavailable> {
    Err(CloudUnavailable::NotBuilt("gce"))
}
