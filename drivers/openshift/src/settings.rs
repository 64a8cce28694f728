//! The OpenShift driver's settings blocks: `spec.openshift` (the cluster, as the Kubernetes
//! driver's) and `pools[].labels[].openshift` (a project, or a pod in a project of its own).
//! Nodepool's `max-projects` is every pool's `maxServers`.

use nodepool_driver_kubernetes::settings::PodSettings;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use nodepool_driver_kubernetes::settings::KubernetesProvider as OpenShiftProvider;

/// What a node of a label is: a project of its own, or a pod in a project of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenShiftLabel {
    /// `project`: Zuul gets a project and a service account that is its admin (connection type
    /// `project`). `pod`: Zuul gets a running pod in a project of its own to exec into
    /// (connection type `kubectl`).
    #[serde(rename = "type")]
    pub kind: OpenShiftLabelKind,
    /// The pod of a pod label (a project label uses the labels, Python path and shell type).
    #[serde(flatten)]
    pub pod: PodSettings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OpenShiftLabelKind {
    Project,
    Pod,
}

impl OpenShiftLabelKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Project => "project",
            Self::Pod => "pod",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_reads_as_nodepool_writes_it() {
        let label: OpenShiftLabel =
            serde_json::from_value(serde_json::json!({"type": "pod", "image": "quay.io/x", "cpu": 2}))
                .unwrap();
        assert_eq!(label.kind, OpenShiftLabelKind::Pod);
        assert_eq!((label.pod.image.as_deref(), label.pod.cpu), (Some("quay.io/x"), Some(2)));
        let bad = serde_json::from_value::<OpenShiftLabel>(serde_json::json!({"type": "namespace"}));
        assert!(bad.is_err(), "OpenShift labels are projects or pods");
    }
}
