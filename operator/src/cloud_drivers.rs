//! Building the real clouds' drivers from a Provider and its credentials Secret. Each driver
//! lives in its own crate (their SDKs are large to compile).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use nodepool_crds::Provider;
use nodepool_driver::Cloud;
use nodepool_driver_aws::{AwsCloud, AwsCredentials, AwsSettings};
use nodepool_driver_gce::{GceCloud, GceSettings};

use crate::credentials::{CloudUnavailable, secret_value};

/// AWS: the Secret holds `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and optionally
/// `AWS_SESSION_TOKEN`), or, for web identity, `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE`.
pub fn aws(
    provider: &Provider,
    system_id: &str,
    credentials: Option<&Secret>,
) -> Result<Arc<dyn Cloud>, CloudUnavailable> {
    let settings = required(provider.spec.aws.as_ref(), "an aws provider needs spec.aws")?;
    let secret = required(credentials, "an aws provider needs credentialsSecretRef")?;
    let has = |key: &str| secret_value(secret, key).is_ok();
    let credentials = if has("AWS_ROLE_ARN") {
        AwsCredentials::WebIdentity {
            role_arn: secret_value(secret, "AWS_ROLE_ARN")?,
            token_file: secret_value(secret, "AWS_WEB_IDENTITY_TOKEN_FILE")?,
        }
    } else {
        AwsCredentials::Keys {
            access_key_id: secret_value(secret, "AWS_ACCESS_KEY_ID")?,
            secret_access_key: secret_value(secret, "AWS_SECRET_ACCESS_KEY")?,
            session_token: secret_value(secret, "AWS_SESSION_TOKEN").ok(),
        }
    };
    Ok(Arc::new(AwsCloud::new(AwsSettings {
        provider: provider.name_any(),
        system_id: system_id.to_owned(),
        region: settings.region.clone(),
        endpoint: settings.endpoint.clone(),
        credentials,
    })))
}

/// GCE: the Secret holds a service-account key JSON under `credentialsSecretRef.key`, by default
/// `credentials.json`.
pub async fn gce(
    provider: &Provider,
    system_id: &str,
    credentials: Option<&Secret>,
) -> Result<Arc<dyn Cloud>, CloudUnavailable> {
    let settings = required(provider.spec.gce.as_ref(), "a gce provider needs spec.gce")?;
    let secret = required(credentials, "a gce provider needs credentialsSecretRef")?;
    let key_name = provider
        .spec
        .credentials_secret_ref
        .as_ref()
        .and_then(|r| r.key.clone())
        .unwrap_or_else(|| "credentials.json".into());
    let key: serde_json::Value =
        serde_json::from_str(&secret_value(secret, &key_name)?).map_err(|error| {
            CloudUnavailable::BadSettings(format!(
                "Secret {:?} key {key_name:?} is not a JSON service-account key: {error}",
                secret.name_any()
            ))
        })?;
    let cloud = GceCloud::new(GceSettings {
        provider: provider.name_any(),
        system_id: system_id.to_owned(),
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

/// A setting the driver cannot do without (the apiserver's CEL rules normally ensure it).
fn required<'a, T>(value: Option<&'a T>, missing: &str) -> Result<&'a T, CloudUnavailable> {
    value.ok_or_else(|| CloudUnavailable::BadSettings(missing.to_owned()))
}
