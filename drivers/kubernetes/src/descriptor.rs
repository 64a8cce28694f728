//! The Kubernetes driver as the framework sees it: its settings blocks, and the cluster client
//! built from the provider's kubeconfig Secret (or the operator's own account without one).

use std::sync::Arc;

use async_trait::async_trait;
use kube::{
    ResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
};
use nodepool_crds::{
    ConnectionType,
    driver_blocks::{Block, DriverShape},
};
use nodepool_driver::{Build, Cloud, CloudUnavailable, Driver, Supply, secret_value};

use crate::{
    BLOCK, KubernetesCloud,
    settings::{KubernetesLabel, KubernetesProvider},
};

/// The key of the kubeconfig in the credentials Secret when `credentialsSecretRef` names none.
pub const DEFAULT_KEY: &str = "kubeconfig";

/// The Kubernetes driver's descriptor.
pub struct Kubernetes;

#[async_trait]
impl Driver for Kubernetes {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn shape(&self) -> DriverShape {
        DriverShape {
            name: self.name(),
            // Optional: without a Secret the operator's own (in-cluster) account is used.
            needs_credentials: false,
            provider: Some(Block::of::<KubernetesProvider>(BLOCK)),
            pool: None,
            label: Some(Block::of::<KubernetesLabel>(BLOCK)),
            image: None,
        }
    }

    fn supply(&self) -> Supply {
        Supply::Launched
    }

    fn connection_types(&self) -> &'static [ConnectionType] {
        &[ConnectionType::Namespace, ConnectionType::Kubectl]
    }

    async fn cloud(&self, build: Build<'_>) -> Result<Arc<dyn Cloud>, CloudUnavailable> {
        let provider = build.provider;
        let settings: KubernetesProvider = provider.spec.driver_settings.parse(BLOCK)?.unwrap_or_default();
        let config = cluster_config(&build, settings.context.clone()).await?;
        let api_url = settings
            .api_url
            .clone()
            .unwrap_or_else(|| config.cluster_url.to_string().trim_end_matches('/').to_owned());
        let skip_tls = config.accept_invalid_certs;
        let client = kube::Client::try_from(config)
            .map_err(|e| CloudUnavailable::BadSettings(format!("building the cluster client: {e}")))?;
        let cloud = KubernetesCloud::new(client, &provider.name_any(), build.system_id, api_url, skip_tls);
        Ok(Arc::new(cloud))
    }
}

/// The client configuration of a provider's cluster: the kubeconfig in its credentials Secret
/// (at `context`), or the operator's own in-cluster account without a Secret.
pub async fn cluster_config(
    build: &Build<'_>,
    context: Option<String>,
) -> Result<kube::Config, CloudUnavailable> {
    let config = match build.credentials {
        Some(secret) => {
            let key = build.credentials_key(DEFAULT_KEY);
            let bad = |error: String| {
                CloudUnavailable::BadSettings(format!(
                    "Secret {:?} key {key:?} is not a usable kubeconfig: {error}",
                    secret.name_any()
                ))
            };
            let kubeconfig =
                Kubeconfig::from_yaml(&secret_value(secret, &key)?).map_err(|e| bad(e.to_string()))?;
            let options = KubeConfigOptions { context, ..Default::default() };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| bad(e.to_string()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            CloudUnavailable::BadSettings(format!("no kubeconfig Secret and no in-cluster account: {e}"))
        })?,
    };
    Ok(config)
}
