//! The Kubernetes driver: each node is a namespace of its own, with a service account Zuul acts
//! as (connection type `namespace`), or a pod in such a namespace that Zuul execs into
//! (connection type `kubectl`). As Nodepool's `kubernetes` driver does, with these differences:
//! the namespace is named after the node and launch attempt, so a retry never waits for the
//! last attempt's namespace to go; the pod role grants `pods/log` (Nodepool writes `pods/logs`);
//! the pod's `restartPolicy` is `Never` inside its spec; and the service account token is kept
//! in a Secret the `PoolNode` owns, never in a status.
//!
//! Every object is created idempotently (an existing one is taken as is), so a launch resumed
//! after a crash simply creates what is missing.

mod cluster;
mod descriptor;
pub mod objects;
pub mod settings;

pub use cluster::{KubernetesCloud, classify, create_or_get};
pub use descriptor::{Cluster, DEFAULT_KEY, Kubernetes, cluster_config};

/// The block of every Kubernetes setting: `spec.kubernetes` and `pools[].labels[].kubernetes`.
pub const BLOCK: &str = "kubernetes";

/// The service account (and its token Secret) Zuul acts as in each node's namespace.
pub const SERVICE_ACCOUNT: &str = "zuul-worker";
