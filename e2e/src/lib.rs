//! Real-component test environment for nodepool-operator.
//!
//! - [`testenv`]: kube-apiserver + etcd + kube-controller-manager and a TLS-only ZooKeeper on
//!   loopback, started or reused by tests and by the `nodepool-testenv` command.
//! - [`cluster`]: helpers tests use against that environment (namespaces, CRD installation).

pub mod cluster;
pub mod gce;
pub mod invariant;
pub mod moto;
pub mod openshift;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod sshd;
pub mod stack;
pub mod testenv;
pub mod tools;
pub mod wait;
pub mod zuul;

pub use testenv::{EnvInfo, TestEnv};

/// Installs the process-wide rustls crypto provider (aws-lc-rs). ZooKeeper's TLS client asks for
/// the process default; calling this more than once is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
