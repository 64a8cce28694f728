//! The ZooKeeper side: connection, the znode layout shared with Zuul, the JSON documents and
//! kazoo-compatible locks.

pub mod lock;
pub mod model;
pub mod paths;

use std::{fs, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use zookeeper_client::{Acls, Client, CreateMode, CreateOptions, TlsOptions};

/// How to reach ZooKeeper: Zuul's `[zookeeper]` settings.
#[derive(Clone, Debug, clap::Args)]
pub struct ZooKeeperConfig {
    /// `host:port[,host:port...][/chroot]`, as in Zuul's `hosts`.
    #[arg(long = "zookeeper-hosts", env = "NODEPOOL_ZOOKEEPER_HOSTS")]
    pub hosts: String,
    /// CA certificate (PEM) that signed the ZooKeeper server certificate.
    #[arg(long = "zookeeper-tls-ca", env = "NODEPOOL_ZOOKEEPER_TLS_CA")]
    pub tls_ca: PathBuf,
    /// Client certificate (PEM).
    #[arg(long = "zookeeper-tls-cert", env = "NODEPOOL_ZOOKEEPER_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// Client key (PEM).
    #[arg(long = "zookeeper-tls-key", env = "NODEPOOL_ZOOKEEPER_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Session timeout in seconds (Nodepool's default is 10).
    #[arg(
        long = "zookeeper-session-timeout",
        env = "NODEPOOL_ZOOKEEPER_SESSION_TIMEOUT",
        default_value_t = 10
    )]
    pub session_timeout: u64,
}

impl ZooKeeperConfig {
    /// Opens a new TLS session. The chroot in `hosts` must exist.
    pub async fn connect(&self) -> Result<Client> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let read =
            |path: &PathBuf| fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
        let tls = TlsOptions::new()
            .with_pem_ca(&read(&self.tls_ca)?)
            .context("ZooKeeper CA certificate")?
            .with_pem_identity(&read(&self.tls_cert)?, &read(&self.tls_key)?)
            .context("ZooKeeper client certificate")?;
        Client::connector()
            .with_tls(tls)
            .with_session_timeout(Duration::from_secs(self.session_timeout))
            .with_connection_timeout(Duration::from_secs(5))
            .secure_connect(&self.hosts)
            .await
            .with_context(|| format!("connecting to ZooKeeper at {} over TLS", self.hosts))
    }
}

/// Options for the persistent znodes we create: open ACL, as Zuul and Nodepool use.
pub fn persistent() -> CreateOptions<'static> {
    CreateMode::Persistent.with_acls(Acls::anyone_all())
}

/// Creates `path` and its parents if missing (kazoo's `ensure_path`).
pub async fn ensure_path(zk: &Client, path: &str) -> Result<()> {
    match zk.mkdir(path, &persistent()).await {
        Ok(()) | Err(zookeeper_client::Error::NodeExists) => Ok(()),
        Err(error) => Err(error).with_context(|| format!("creating {path}")),
    }
}

/// Deletes `path` and everything below it, children first. Missing nodes are fine.
pub async fn delete_recursive(zk: &Client, path: &str) -> Result<()> {
    let mut stack = vec![(path.to_owned(), false)];
    while let Some((node, expanded)) = stack.pop() {
        if !expanded {
            match zk.list_children(&node).await {
                Ok(children) => {
                    stack.push((node.clone(), true));
                    stack.extend(children.into_iter().map(|child| (format!("{node}/{child}"), false)));
                }
                Err(zookeeper_client::Error::NoNode) => {}
                Err(error) => return Err(error).with_context(|| format!("listing {node}")),
            }
            continue;
        }
        match zk.delete(&node, None).await {
            Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
            // A child appeared meanwhile (e.g. a lock contender): go round again.
            Err(zookeeper_client::Error::NotEmpty) => stack.push((node, false)),
            Err(error) => return Err(error).with_context(|| format!("deleting {node}")),
        }
    }
    Ok(())
}
