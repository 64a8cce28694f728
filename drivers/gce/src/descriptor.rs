//! The GCE driver as the framework sees it: its settings blocks and how a provider's client is
//! built from them and its credentials Secret.

use std::sync::Arc;

use async_trait::async_trait;
use kube::ResourceExt;
use nodepool_crds::driver_blocks::{Block, DriverShape};
use nodepool_driver::{Build, Cloud, CloudUnavailable, Driver, Supply, credentials::required, secret_value};

use crate::{
    BLOCK, GceCloud, GceSettings,
    settings::{GceImage, GceLabel, GcePool, GceProvider},
};

/// The key of the service-account JSON in the credentials Secret when `credentialsSecretRef`
/// names none.
pub const DEFAULT_KEY: &str = "credentials.json";

/// The GCE driver's descriptor.
pub struct Gce;

#[async_trait]
impl Driver for Gce {
    fn name(&self) -> &'static str {
        "gce"
    }

    fn shape(&self) -> DriverShape {
        DriverShape {
            name: self.name(),
            needs_credentials: true,
            provider: Some(Block::required::<GceProvider>(BLOCK)),
            pool: Some(Block::of::<GcePool>(BLOCK)),
            label: Some(Block::of::<GceLabel>(BLOCK)),
            image: Some(Block::of::<GceImage>(BLOCK)),
        }
    }

    fn supply(&self) -> Supply {
        Supply::Launched
    }

    fn connection_types(&self) -> &'static [nodepool_crds::ConnectionType] {
        use nodepool_crds::ConnectionType::*;
        &[Ssh, Winrm, NetworkCli]
    }

    fn needs_image(&self) -> bool {
        true
    }

    /// The Secret holds a service-account key JSON under `credentialsSecretRef.key`, by default
    /// [`DEFAULT_KEY`].
    async fn cloud(&self, build: Build<'_>) -> Result<Arc<dyn Cloud>, CloudUnavailable> {
        let provider = build.provider;
        let settings: Option<GceProvider> = provider.spec.driver_settings.parse(BLOCK)?;
        let settings = required(settings.as_ref(), "a gce provider needs spec.gce")?;
        let secret = required(build.credentials, "a gce provider needs credentialsSecretRef")?;
        let key_name = build.credentials_key(DEFAULT_KEY);
        let key: serde_json::Value =
            serde_json::from_str(&secret_value(secret, &key_name)?).map_err(|error| {
                CloudUnavailable::BadSettings(format!(
                    "Secret {:?} key {key_name:?} is not a JSON service-account key: {error}",
                    secret.name_any()
                ))
            })?;
        let cloud = GceCloud::new(GceSettings {
            provider: provider.name_any(),
            system_id: build.system_id.to_owned(),
            project: settings.project.clone(),
            region: settings.region.clone(),
            zones: settings.zones.clone(),
            endpoint: settings.endpoint.clone(),
            service_account_key: key,
        })
        .await
        .map_err(|error| CloudUnavailable::BadSettings(error.to_string()))?;
        Ok(Arc::new(cloud))
    }
}
