//! The OpenShift pods driver (Nodepool's `openshiftpods`): each node is a pod in a project (a
//! namespace) that already exists, the pool's name; Zuul execs into it (connection type
//! `kubectl`) with the provider's own credentials, as Nodepool hands them over. Nothing but pods
//! is created, so the provider's account needs only to create, read, list and delete pods (and
//! exec into them) in its projects; it works on any Kubernetes cluster, OpenShift or not.
//!
//! The pods are built as the Kubernetes driver builds those of its pod labels
//! (`nodepool_driver_kubernetes::objects::pod`), and the cluster is reached the same way.
//! Differences from Nodepool: a pod is named after its node and launch attempt (Nodepool:
//! `<label>-<node id>`), so a retry never meets the last attempt's pod; leaked pods (ours by
//! their labels) are cleaned up, which Nodepool's driver did not do; the provider's kubeconfig
//! must hold a token, since that token is what Zuul gets (Nodepool handed over none in-cluster).

mod cloud;
mod descriptor;
pub mod settings;

pub use cloud::OpenShiftPodsCloud;
pub use descriptor::OpenShiftPods;

/// The block of every setting: `spec.openshiftpods` (the cluster) and
/// `pools[].labels[].openshiftpods` (the pod).
pub const BLOCK: &str = "openshiftpods";
