//! The Kubernetes driver's settings blocks: `spec.kubernetes` (the cluster) and
//! `pools[].labels[].kubernetes` (a namespace, or a pod and its container).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The cluster nodes are made in. Its kubeconfig is in the credentials Secret (key `kubeconfig`
/// unless `credentialsSecretRef.key` says otherwise); without a Secret the operator's own
/// in-cluster account is used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesProvider {
    /// The kubeconfig context to use (Nodepool's `context`). Default: the current context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The API server URL handed to Zuul. Default: the one the operator uses, which executors
    /// outside the cluster may not reach (an in-cluster service address, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
}

/// What a node of a label is: a namespace of its own, or a pod in a namespace of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesLabel {
    /// `namespace`: Zuul gets a namespace and a service account that may manage it (connection
    /// type `namespace`). `pod`: Zuul gets a running pod it can exec into (connection type
    /// `kubectl`), with a service account restricted to that.
    #[serde(rename = "type")]
    pub kind: LabelKind,
    /// The pod of a pod label (a namespace label uses the labels, Python path and shell type).
    #[serde(flatten)]
    pub pod: PodSettings,
}

/// A pod's container and what Zuul runs Ansible with in it (shared with the OpenShift pods
/// driver).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Container image of a pod label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `imagePullPolicy` of the container. Default `IfNotPresent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull: Option<String>,
    /// Secrets to pull the image with (`imagePullSecrets`, by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// CPUs the container requests (also the node's quota footprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// Memory the container requests, MiB (also the node's quota footprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// CPU limit. Default: the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<u32>,
    /// Memory limit, MiB. Default: the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// Environment of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// `nodeSelector` of the pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// `schedulerName` of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    /// Run the container privileged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    /// Kubernetes labels put on the namespace and the pod (besides Nodepool's own).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations put on the pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The pod's `volumes`, each in Kubernetes' own form (`{name: cache, emptyDir: {}}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "nodepool_crds::common::free_form_list")]
    pub volumes: Vec<serde_json::Value>,
    /// Where the container mounts them (`volumeMounts`, Kubernetes' form: `{name, mountPath}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "nodepool_crds::common::free_form_list")]
    pub volume_mounts: Vec<serde_json::Value>,
    /// More resources a node holds against quota, by key (Nodepool's `extra-resources`), counted
    /// against `maxResources` and tenant limits; not requested from the cluster.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_resources: BTreeMap<String, u64>,
    /// `ansible_python_interpreter` for Zuul. Default `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_path: Option<String>,
    /// `ansible_shell_type` for Zuul.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell_type: Option<String>,
}

impl PodSettings {
    /// The pod's volumes and the container's mounts as Kubernetes types; an error names the
    /// first that is not a valid volume or mount.
    pub fn volumes(
        &self,
    ) -> Result<(Vec<k8s_openapi::api::core::v1::Volume>, Vec<k8s_openapi::api::core::v1::VolumeMount>), String>
    {
        fn each<T: serde::de::DeserializeOwned>(
            items: &[serde_json::Value],
            what: &str,
        ) -> Result<Vec<T>, String> {
            items
                .iter()
                .map(|item| serde_json::from_value(item.clone()).map_err(|e| format!("{what} {item}: {e}")))
                .collect()
        }
        Ok((each(&self.volumes, "volume")?, each(&self.volume_mounts, "volume mount")?))
    }

    /// What a node holds against quota: what its container requests (a namespace or project
    /// label: what the label says), as one instance. An error says why the label's pod cannot
    /// be built (a volume that is not one), so the label is not launchable.
    pub fn footprint(&self) -> Result<nodepool_crds::pool_node::NodeResources, String> {
        self.volumes()?;
        Ok(nodepool_crds::pool_node::NodeResources {
            cores: self.cpu.unwrap_or(0),
            ram: self.memory.unwrap_or(0),
            instances: 1,
            other: self.extra_resources.clone().into_iter().collect(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LabelKind {
    Namespace,
    Pod,
}

/// One environment variable of the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_footprint_is_its_requests_and_its_extra_resources() {
        let pod = PodSettings {
            cpu: Some(2),
            memory: Some(512),
            extra_resources: BTreeMap::from([("example.com/dongle".to_owned(), 1)]),
            ..Default::default()
        };
        let held = pod.footprint().unwrap();
        assert_eq!((held.cores, held.ram, held.instances), (2, 512, 1));
        assert_eq!(held.other.get("example.com/dongle"), Some(&1));
    }
}
