//! The OpenShift pods driver's settings: the cluster in `spec.openshiftpods`; the pod in
//! `pools[].labels[].openshiftpods` (the Kubernetes driver's `PodSettings`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The cluster the projects are in. Its kubeconfig is in the credentials Secret (key
/// `kubeconfig` unless `credentialsSecretRef.key` says otherwise), and its user must have a
/// token: Zuul is handed that token to reach its pods.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenShiftPodsProvider {
    /// The kubeconfig context to use (Nodepool's `context`). Default: the current context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The API server URL handed to Zuul. Default: the kubeconfig's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
}
