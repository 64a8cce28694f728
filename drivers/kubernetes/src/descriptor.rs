//! The Kubernetes driver as the framework sees it: its settings blocks, and the cluster client
//! built from the provider's kubeconfig Secret (or the operator's own account without one).

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use kube::{
    ResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
};
use nodepool_crds::{
    ConnectionType,
    driver_blocks::{Block, DriverShape},
};
use nodepool_driver::{Build, Cloud, CloudUnavailable, Driver, KubernetesCredentials, Supply, secret_value};

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
        let settings: KubernetesProvider =
            build.provider.spec.driver_settings.parse(BLOCK)?.unwrap_or_default();
        let cluster = Cluster::connect(&build, &settings).await?;
        let cloud = KubernetesCloud::new(cluster, &build.provider.name_any(), build.system_id);
        Ok(Arc::new(cloud))
    }
}

/// A provider's cluster: the client, and how Zuul reaches the same API server.
pub struct Cluster {
    pub client: kube::Client,
    /// The API server URL handed to Zuul.
    pub api_url: String,
    /// Whether Zuul skips verifying the API server's certificate (as the kubeconfig says).
    pub skip_tls: bool,
}

impl Cluster {
    /// The cluster `settings` name, with the credentials `build` carries.
    pub async fn connect(build: &Build<'_>, settings: &KubernetesProvider) -> Result<Self, CloudUnavailable> {
        let config = cluster_config(build, settings.context.clone()).await?;
        let api_url = settings
            .api_url
            .clone()
            .unwrap_or_else(|| config.cluster_url.to_string().trim_end_matches('/').to_owned());
        let skip_tls = config.accept_invalid_certs;
        let client = kube::Client::try_from(config)
            .map_err(|e| CloudUnavailable::BadSettings(format!("building the cluster client: {e}")))?;
        Ok(Cluster { client, api_url, skip_tls })
    }

    /// What Zuul is handed for a node in `namespace` (Nodepool's `connection_port` object).
    pub fn credentials(
        &self,
        namespace: &str,
        token: String,
        ca: &[u8],
        pod: Option<String>,
    ) -> KubernetesCredentials {
        KubernetesCredentials {
            host: self.api_url.clone(),
            namespace: namespace.to_owned(),
            user: crate::SERVICE_ACCOUNT.into(),
            skip_tls: self.skip_tls,
            // As Nodepool hands it over: base64 text, kubeconfig's `certificate-authority-data`.
            ca_crt: (!self.skip_tls).then(|| base64::engine::general_purpose::STANDARD.encode(ca)),
            pod,
            token,
        }
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
