//! The OpenShift driver (Nodepool's `openshift`): each node is a project of its own, requested
//! through OpenShift's `project.openshift.io/v1` `ProjectRequest` (what a self-provisioning user
//! may do, without the right to create namespaces), with a service account that is the
//! project's `admin` (connection type `project`), or a pod in such a project that Zuul execs
//! into (connection type `kubectl`). As Nodepool's driver does, with these differences:
//!
//! - The project is named after the node and launch attempt (`<node>-a<attempt>`; Nodepool:
//!   `<pool>-<node id>`), so a retry never meets the last attempt's project.
//! - A project request's labels are not carried to the project (OpenShift's default template
//!   drops them), and a project's admin may not label its namespace. So what the node is (its
//!   ownership tags, pod, Python path, shell) is kept in a ConfigMap in the project
//!   ([`RECORD`]), which leak cleanup reads. Nodepool recognised its projects by name alone and
//!   cleaned up none.
//! - The admin binding is an `rbac.authorization.k8s.io/v1` RoleBinding to the `admin`
//!   ClusterRole (Nodepool: the older `authorization.openshift.io/v1` kind, same meaning).
//! - The token is a long-lived service-account token Secret, kept in a Secret the `PoolNode`
//!   owns, never in a status.

mod cloud;
mod descriptor;
mod project;
pub mod settings;

pub use cloud::OpenShiftCloud;
pub use descriptor::OpenShift;

/// The block of every setting: `spec.openshift` (the cluster) and `pools[].labels[].openshift`.
pub const BLOCK: &str = "openshift";

/// The ConfigMap in each node's project that says what the node is.
pub const RECORD: &str = "nodepool-node";
