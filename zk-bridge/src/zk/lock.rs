//! kazoo's `Lock` recipe, name for name, so Zuul, Nodepool and the bridge see each other's locks
//! (zk-protocol.md §4.1): contenders are ephemeral-sequential children `<uuid4 hex>__lock__<seq>`
//! of the lock directory; the lowest sequence holds the lock.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use zookeeper_client::{Acls, Client, CreateMode};

use super::ensure_path;

const MARKER: &str = "__lock__";

/// A held lock. Release it with [`Lock::release`]; an expired session releases it too.
#[derive(Debug)]
pub struct Lock {
    /// Full path of our contender node.
    pub contender: String,
}

/// The sequence of a kazoo contender name, or `None` for anything else in the directory.
pub fn contender_sequence(name: &str) -> Option<&str> {
    let (_, sequence) = name.rsplit_once(MARKER)?;
    let digits = sequence.strip_prefix('-').unwrap_or(sequence);
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(sequence)
}

/// The contender names in a lock directory, lowest sequence (the holder) first.
pub async fn contenders(zk: &Client, dir: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = match zk.list_children(dir).await {
        Ok(children) => children.into_iter().filter(|name| contender_sequence(name).is_some()).collect(),
        Err(zookeeper_client::Error::NoNode) => Vec::new(),
        Err(error) => return Err(error).with_context(|| format!("listing {dir}")),
    };
    // kazoo compares the captured sequences as strings.
    names.sort_by(|a, b| contender_sequence(a).cmp(&contender_sequence(b)));
    Ok(names)
}

async fn create_contender(zk: &Client, dir: &str) -> Result<String> {
    ensure_path(zk, dir).await?;
    let prefix = format!("{dir}/{}{MARKER}", uuid::Uuid::new_v4().simple());
    let options = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let (_, sequence) = zk.create(&prefix, b"", &options).await.with_context(|| format!("locking {dir}"))?;
    Ok(format!("{prefix}{sequence}"))
}

/// Takes the lock if nobody holds it, without waiting (kazoo `acquire(blocking=False)`).
pub async fn try_acquire(zk: &Client, dir: &str) -> Result<Option<Lock>> {
    let contender = create_contender(zk, dir).await?;
    let ours = contender.rsplit('/').next().unwrap_or_default().to_owned();
    let names = contenders(zk, dir).await?;
    if names.first() == Some(&ours) {
        return Ok(Some(Lock { contender }));
    }
    delete_quietly(zk, &contender).await;
    Ok(None)
}

/// Waits up to `timeout` for the lock, watching the contender just ahead of ours.
pub async fn acquire(zk: &Client, dir: &str, timeout: Duration) -> Result<Lock> {
    let contender = create_contender(zk, dir).await?;
    let ours = contender.rsplit('/').next().unwrap_or_default().to_owned();
    let wait = async {
        loop {
            let names = contenders(zk, dir).await?;
            let position = names.iter().position(|name| *name == ours).context("our contender vanished")?;
            if position == 0 {
                return Ok::<_, anyhow::Error>(());
            }
            let predecessor = format!("{dir}/{}", names[position - 1]);
            let (stat, watcher) = zk.check_and_watch_stat(&predecessor).await?;
            if stat.is_some() {
                watcher.changed().await;
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(())) => Ok(Lock { contender }),
        Ok(Err(error)) => {
            delete_quietly(zk, &contender).await;
            Err(error)
        }
        Err(_) => {
            delete_quietly(zk, &contender).await;
            bail!("timed out after {timeout:?} waiting for lock {dir}")
        }
    }
}

impl Lock {
    pub async fn release(self, zk: &Client) {
        delete_quietly(zk, &self.contender).await;
    }
}

async fn delete_quietly(zk: &Client, path: &str) {
    match zk.delete(path, None).await {
        Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
        Err(error) => tracing::warn!(%path, %error, "could not delete lock contender"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_kazoo_contenders_only() {
        assert_eq!(
            contender_sequence("0123456789abcdef0123456789abcdef__lock__0000000007"),
            Some("0000000007")
        );
        // kazoo's pattern is `__lock__(-?\d{10})$`: ten digits after an optional sign.
        assert_eq!(contender_sequence("abc__lock__-0000000001"), Some("-0000000001"));
        assert_eq!(contender_sequence("abc__lock__-000000001"), None);
        assert_eq!(contender_sequence("abc__rlock__0000000007"), None);
        assert_eq!(contender_sequence("abc__lock__7"), None);
        assert_eq!(contender_sequence("lock"), None);
    }
}
