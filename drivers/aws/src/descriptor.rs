//! The AWS driver as the framework sees it: its settings blocks and how a provider's client is
//! built from them and its credentials Secret.

use std::sync::Arc;

use async_trait::async_trait;
use kube::ResourceExt;
use nodepool_crds::driver_blocks::{Block, DriverShape};
use nodepool_driver::{Build, Cloud, CloudUnavailable, Driver, Supply, credentials::required, secret_value};

use crate::{
    AwsCloud, AwsCredentials, AwsSettings, BLOCK,
    settings::{AwsImage, AwsLabel, AwsPool, AwsProvider},
};

/// The credentials Secret's keys for an access key (the usual case).
pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";

/// The AWS driver's descriptor.
pub struct Aws;

#[async_trait]
impl Driver for Aws {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn shape(&self) -> DriverShape {
        DriverShape {
            name: self.name(),
            needs_credentials: true,
            provider: Some(Block::required::<AwsProvider>(BLOCK)),
            pool: Some(Block::of::<AwsPool>(BLOCK)),
            label: Some(Block::of::<AwsLabel>(BLOCK)),
            image: Some(Block::of::<AwsImage>(BLOCK)),
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

    /// The Secret holds `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and optionally
    /// `AWS_SESSION_TOKEN`), or, for web identity, `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE`.
    async fn cloud(&self, build: Build<'_>) -> Result<Arc<dyn Cloud>, CloudUnavailable> {
        let settings: Option<AwsProvider> = build.provider.spec.driver_settings.parse(BLOCK)?;
        let settings = required(settings.as_ref(), "an aws provider needs spec.aws")?;
        let secret = required(build.credentials, "an aws provider needs credentialsSecretRef")?;
        let has = |key: &str| secret_value(secret, key).is_ok();
        let credentials = if has("AWS_ROLE_ARN") {
            AwsCredentials::WebIdentity {
                role_arn: secret_value(secret, "AWS_ROLE_ARN")?,
                token_file: secret_value(secret, "AWS_WEB_IDENTITY_TOKEN_FILE")?,
            }
        } else {
            AwsCredentials::Keys {
                access_key_id: secret_value(secret, ACCESS_KEY_ID)?,
                secret_access_key: secret_value(secret, SECRET_ACCESS_KEY)?,
                session_token: secret_value(secret, "AWS_SESSION_TOKEN").ok(),
            }
        };
        Ok(Arc::new(AwsCloud::new(AwsSettings {
            provider: build.provider.name_any(),
            system_id: build.system_id.to_owned(),
            region: settings.region.clone(),
            endpoint: settings.endpoint.clone(),
            credentials,
        })))
    }
}
