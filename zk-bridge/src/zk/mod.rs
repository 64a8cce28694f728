//! The ZooKeeper side: connection, the znode layout shared with Zuul, the JSON documents and
//! kazoo-compatible locks.

pub mod lock;
pub mod model;
pub mod paths;

use std::{fs, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use zookeeper_client::{
    Acls, Client, CreateMode, CreateOptions, Error as ZkError, MultiWriteError, TlsOptions,
};

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
/// How long ago a znode was last written (`mtime`, milliseconds since the epoch by ZooKeeper's
/// clock; 0 if that is ahead of ours).
pub fn age(mtime: i64) -> std::time::Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    std::time::Duration::from_millis(now.saturating_sub(mtime).max(0) as u64)
}

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

/// How [`remove_unless_locked`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    /// The znode is gone (or was already).
    Done,
    /// Someone holds or waits for its lock; nothing was changed.
    Locked,
    /// It has children besides its lock directory; nothing was changed.
    OtherChildren,
}

/// How often a removal reads the znode again because someone wrote it meanwhile.
const REMOVAL_ATTEMPTS: usize = 5;

/// Removes the znode at `path` and its kazoo lock directory `lock_dir`, first writing what
/// `mark` makes of its data (Nodepool's "write `deleted`, then delete recursively"), all in one
/// transaction. ZooKeeper refuses it as a whole, changing nothing, while anyone holds or waits
/// for the lock, as the lock directory is not empty then: so the lock need not be taken, and
/// nobody can take it halfway through. Data `mark` cannot read is removed unmarked.
pub async fn remove_unless_locked(
    zk: &Client,
    path: &str,
    lock_dir: &str,
    mark: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Result<Removal> {
    let mut with_lock_dir = true;
    for _ in 0..REMOVAL_ATTEMPTS {
        let (data, stat) = match zk.get_data(path).await {
            Ok(read) => read,
            Err(ZkError::NoNode) => return Ok(Removal::Done),
            Err(error) => return Err(error).with_context(|| format!("reading {path}")),
        };
        let mut transaction = zk.new_multi_writer();
        match mark(&data) {
            Some(marked) => transaction.add_set_data(path, &marked, Some(stat.version))?,
            None => transaction.add_check_version(path, stat.version)?,
        }
        let lock_dir_index = with_lock_dir.then_some(1);
        if with_lock_dir {
            transaction.add_delete(lock_dir, None)?;
        }
        transaction.add_delete(path, None)?;
        let (index, error) = match transaction.commit().await {
            Ok(_) => return Ok(Removal::Done),
            Err(MultiWriteError::OperationFailed { index, source }) => (index, source),
            Err(error) => return Err(error).with_context(|| format!("removing {path}")),
        };
        match error {
            ZkError::BadVersion => {} // written meanwhile: read it again
            ZkError::NoNode if index == 0 => return Ok(Removal::Done),
            ZkError::NoNode if Some(index) == lock_dir_index => with_lock_dir = false, // never locked
            ZkError::NotEmpty if Some(index) == lock_dir_index => return Ok(Removal::Locked),
            ZkError::NotEmpty => return Ok(Removal::OtherChildren),
            error => return Err(error).with_context(|| format!("removing {path}")),
        }
    }
    anyhow::bail!("{path} kept changing while being removed")
}
