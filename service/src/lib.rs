//! What both nodepool binaries need to run as a Kubernetes service, apart from their own work:
//!
//! - [`cli`]: the shared command-line settings, and running a binary's work with them.
//! - [`http`]: one listener for `/metrics`, `/healthz` and `/readyz`.
//! - [`failpoint`]: aborting right after a chosen write, for crash-consistency tests.
//! - [`finalizers`]: changing an object's finalizers safely.
//! - [`health`]: the readiness checks behind `/readyz`.
//! - [`leader`]: leader election on a `coordination.k8s.io` Lease, so two replicas can run.
//! - [`metrics`]: metrics both binaries record alike (reconcile time and errors).
//! - [`logging`]: `tracing` output as text or JSON lines.
//! - [`watch`]: how Kubernetes watches are opened (streaming lists, or list-then-watch).
//! - [`listing`], [`table`]: Nodepool's lists of nodes, requests, labels and images, as tables
//!   or JSON (the `nodepool` command and the operator's web endpoints).
//! - [`shutdown`]: the signals Kubernetes sends before it stops a pod.

pub mod cli;
pub mod failpoint;
pub mod finalizers;
pub mod health;
pub mod http;
pub mod leader;
pub mod listing;
pub mod logging;
pub mod metrics;
pub mod shutdown;
pub mod table;
pub mod watch;
pub mod written;

pub use cli::ServiceArgs;
pub use health::Health;
pub use prometheus_client;
