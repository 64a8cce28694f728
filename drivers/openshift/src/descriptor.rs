//! The OpenShift driver as the framework sees it: its settings blocks, and the cluster client
//! built from the provider's kubeconfig Secret (or the operator's own account without one), as
//! the Kubernetes driver builds it.

use std::sync::Arc;

use async_trait::async_trait;
use kube::ResourceExt;
use nodepool_crds::{
    ConnectionType,
    driver_blocks::{Block, DriverShape},
};
use nodepool_driver::{Build, Cloud, CloudUnavailable, Driver, Supply};
use nodepool_driver_kubernetes::Cluster;

use crate::{
    BLOCK, OpenShiftCloud,
    settings::{OpenShiftLabel, OpenShiftProvider},
};

/// The OpenShift driver's descriptor.
pub struct OpenShift;

#[async_trait]
impl Driver for OpenShift {
    fn name(&self) -> &'static str {
        "openshift"
    }

    fn shape(&self) -> DriverShape {
        DriverShape {
            name: self.name(),
            // Optional: without a Secret the operator's own (in-cluster) account is used.
            needs_credentials: false,
            provider: Some(Block::of::<OpenShiftProvider>(BLOCK)),
            pool: None,
            label: Some(Block::of::<OpenShiftLabel>(BLOCK)),
            image: None,
        }
    }

    fn supply(&self) -> Supply {
        Supply::Launched
    }

    fn connection_types(&self) -> &'static [ConnectionType] {
        &[ConnectionType::Project, ConnectionType::Kubectl]
    }

    async fn cloud(&self, build: Build<'_>) -> Result<Arc<dyn Cloud>, CloudUnavailable> {
        let settings: OpenShiftProvider =
            build.provider.spec.driver_settings.parse(BLOCK)?.unwrap_or_default();
        let cluster = Cluster::connect(&build, &settings).await?;
        Ok(Arc::new(OpenShiftCloud::new(cluster, &build.provider.name_any(), build.system_id)))
    }
}
