//! The OpenShift pods driver as the framework sees it: its settings blocks, and the cluster
//! client with the token handed to Zuul.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use kube::ResourceExt;
use nodepool_crds::{
    ConnectionType,
    driver_blocks::{Block, DriverShape},
};
use nodepool_driver::{Build, Cloud, CloudUnavailable, Driver, Supply};
use nodepool_driver_kubernetes::{cluster_config, settings::PodSettings};

use crate::{BLOCK, OpenShiftPodsCloud, cloud::Account, settings::OpenShiftPodsProvider};

/// The OpenShift pods driver's descriptor.
pub struct OpenShiftPods;

#[async_trait]
impl Driver for OpenShiftPods {
    fn name(&self) -> &'static str {
        "openshiftpods"
    }

    fn shape(&self) -> DriverShape {
        DriverShape {
            name: self.name(),
            // Zuul gets the provider's own token, so there must be a kubeconfig that has one.
            needs_credentials: true,
            provider: Some(Block::of::<OpenShiftPodsProvider>(BLOCK)),
            pool: None,
            label: Some(Block::required::<PodSettings>(BLOCK)),
            image: None,
        }
    }

    fn supply(&self) -> Supply {
        Supply::Launched
    }

    fn connection_types(&self) -> &'static [ConnectionType] {
        &[ConnectionType::Kubectl]
    }

    /// The kubeconfig in the credentials Secret (key `kubeconfig`), at `spec.openshiftpods.context`.
    async fn cloud(&self, build: Build<'_>) -> Result<Arc<dyn Cloud>, CloudUnavailable> {
        let provider = build.provider;
        let settings: OpenShiftPodsProvider = provider.spec.driver_settings.parse(BLOCK)?.unwrap_or_default();
        let config = cluster_config(&build, settings.context.clone()).await?;
        let token = config.auth_info.token.as_ref().map(|t| {
            use secrecy::ExposeSecret;
            t.expose_secret().to_owned()
        });
        let Some(token) = token else {
            return Err(CloudUnavailable::BadSettings(
                "the kubeconfig's user has no token; an openshiftpods provider hands its token to Zuul"
                    .into(),
            ));
        };
        let account = Account {
            api_url: settings
                .api_url
                .clone()
                .unwrap_or_else(|| config.cluster_url.to_string().trim_end_matches('/').to_owned()),
            skip_tls: config.accept_invalid_certs,
            ca_crt: config.root_cert.as_ref().map(|certs| pem_base64(certs)),
            token,
        };
        let client = kube::Client::try_from(config)
            .map_err(|e| CloudUnavailable::BadSettings(format!("building the cluster client: {e}")))?;
        let projects = provider.spec.pools.iter().map(|pool| pool.name.clone()).collect();
        let cloud = OpenShiftPodsCloud::new(client, &provider.name_any(), build.system_id, projects, account);
        Ok(Arc::new(cloud))
    }
}

/// The CA certificates as kubeconfig's `certificate-authority-data`: base64 of the PEM text.
fn pem_base64(certs: &[Vec<u8>]) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut pem = String::new();
    for der in certs {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let body = engine.encode(der);
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    engine.encode(pem)
}
