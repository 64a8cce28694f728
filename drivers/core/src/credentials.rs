//! A provider's credentials Secret, and why a provider has no cloud to talk to.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

/// Why a provider has no cloud to talk to.
#[derive(Debug, thiserror::Error)]
pub enum CloudUnavailable {
    #[error("Secret {0:?} does not exist")]
    SecretMissing(String),
    #[error("Secret {secret:?} has no key {key:?}")]
    SecretKeyMissing { secret: String, key: String },
    #[error("no driver {0:?} is part of this build of nodepool-operator")]
    UnknownDriver(String),
    #[error("the {0} driver launches nothing: it has no cloud")]
    NoCloud(&'static str),
    #[error("{0}")]
    BadSettings(String),
    #[error("reading the credentials Secret: {0}")]
    Kube(#[from] kube::Error),
}

/// The value of `key` in a Secret, as text.
pub fn secret_value(secret: &Secret, key: &str) -> Result<String, CloudUnavailable> {
    let missing = || CloudUnavailable::SecretKeyMissing { secret: secret.name_any(), key: key.to_owned() };
    if let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return String::from_utf8(value.0.clone()).map_err(|_| missing());
    }
    secret.string_data.as_ref().and_then(|d| d.get(key)).cloned().ok_or_else(missing)
}

/// A setting the driver cannot do without (the apiserver's rules normally ensure it).
pub fn required<'a, T>(value: Option<&'a T>, missing: &str) -> Result<&'a T, CloudUnavailable> {
    value.ok_or_else(|| CloudUnavailable::BadSettings(missing.to_owned()))
}

impl From<nodepool_crds::driver_blocks::BadBlock> for CloudUnavailable {
    fn from(error: nodepool_crds::driver_blocks::BadBlock) -> Self {
        Self::BadSettings(error.to_string())
    }
}
