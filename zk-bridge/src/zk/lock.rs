//! kazoo's `Lock` recipe, name for name, so Zuul, Nodepool and the bridge see each other's locks
//! (zk-protocol.md §4.1): contenders are ephemeral-sequential children `<uuid4 hex>__lock__<seq>`
//! of the lock directory; the lowest sequence holds the lock.

use std::{collections::HashSet, sync::Mutex, time::Duration};

use anyhow::{Context, Result};
use zookeeper_client::{Acls, Client, CreateMode};

use super::ensure_path;
use crate::recent::Recent;

const MARKER: &str = "__lock__";

/// A held lock. Release it with [`Lock::release`]; an expired session releases it too.
#[derive(Debug)]
pub struct Lock {
    /// Full path of our contender node.
    pub contender: String,
    /// The token our contender's name starts with (see [`OwnLocks`]).
    pub token: String,
}

/// The contenders this process holds or is creating, by token: kazoo names a contender
/// `<uuid4 hex>__lock__<seq>`, and the token (the uuid) is chosen, and recorded here, before
/// the contender is created and forgotten after it is deleted. So a lock directory listed at
/// any moment in between (the contender's own creation is an event that makes the bridge
/// look) shows it as ours, and our brief locks never count as someone else's.
#[derive(Debug)]
pub struct OwnLocks {
    held: Mutex<HashSet<String>>,
    /// Tokens ended lately: the deletion of their contender may still be on its way as an event.
    ended: Recent,
}

impl Default for OwnLocks {
    fn default() -> Self {
        OwnLocks { held: Default::default(), ended: Recent::new(Duration::from_secs(60)) }
    }
}

impl OwnLocks {
    /// A new token, ours from now on.
    pub fn begin(&self) -> String {
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.held.lock().unwrap().insert(token.clone());
        token
    }

    /// The contender of `token` is gone (or was never created).
    pub fn end(&self, token: &str) {
        if self.held.lock().unwrap().remove(token) {
            self.ended.insert(token);
        }
    }

    /// Whether a contender name in a lock directory is one of ours.
    pub fn is_ours(&self, name: &str) -> bool {
        contender_token(name).is_some_and(|token| self.held.lock().unwrap().contains(token))
    }

    /// Whether a contender is or was lately one of ours: its coming and going are our own brief
    /// locks, which change nothing of the lock as others see it.
    pub fn is_or_was_ours(&self, name: &str) -> bool {
        self.is_ours(name) || contender_token(name).is_some_and(|token| self.ended.contains(token))
    }
}

/// The sequence of a kazoo contender name, or `None` for anything else in the directory.
pub fn contender_sequence(name: &str) -> Option<&str> {
    let (_, sequence) = name.rsplit_once(MARKER)?;
    let digits = sequence.strip_prefix('-').unwrap_or(sequence);
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(sequence)
}

/// The token a contender name starts with.
pub fn contender_token(name: &str) -> Option<&str> {
    name.rsplit_once(MARKER).map(|(token, _)| token)
}

/// The contender names in a lock directory, lowest sequence (the holder) first.
pub async fn contenders(zk: &Client, dir: &str) -> Result<Vec<String>> {
    contenders_of(zk.list_children(dir).await, dir)
}

/// The contenders among a lock directory's children, as listed; a missing directory has none.
fn contenders_of(
    listed: std::result::Result<Vec<String>, zookeeper_client::Error>,
    dir: &str,
) -> Result<Vec<String>> {
    let mut names: Vec<String> = match listed {
        Ok(children) => children.into_iter().filter(|name| contender_sequence(name).is_some()).collect(),
        Err(zookeeper_client::Error::NoNode) => Vec::new(),
        Err(error) => return Err(error).with_context(|| format!("listing {dir}")),
    };
    // kazoo compares the captured sequences as strings.
    names.sort_by(|a, b| contender_sequence(a).cmp(&contender_sequence(b)));
    Ok(names)
}

/// Takes the lock if nobody holds it, without waiting (kazoo `acquire(blocking=False)`), with a
/// contender named after `token`.
///
/// The contender's creation and the listing of the directory go out together: ZooKeeper
/// answers a session's requests in the order they were sent, so the listing already shows the
/// contender. One round trip where kazoo's recipe takes two.
pub async fn try_acquire(zk: &Client, dir: &str, token: &str) -> Result<Option<Lock>> {
    let prefix = format!("{dir}/{token}{MARKER}");
    let options = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    // The directory is made only when missing: kazoo leaves it behind, and the bridge makes it
    // when it registers a node, so it usually exists.
    let (mut created, mut listed) = tokio::join!(zk.create(&prefix, b"", &options), zk.list_children(dir));
    if matches!(created, Err(zookeeper_client::Error::NoNode)) {
        ensure_path(zk, dir).await?;
        (created, listed) = tokio::join!(zk.create(&prefix, b"", &options), zk.list_children(dir));
    }
    let (_, sequence) = created.with_context(|| format!("locking {dir}"))?;
    let contender = format!("{prefix}{sequence}");
    let ours = contender.rsplit('/').next().unwrap_or_default().to_owned();
    let names = match contenders_of(listed, dir) {
        Ok(names) => names,
        Err(error) => {
            delete_quietly(zk, &contender).await;
            return Err(error);
        }
    };
    if names.first() == Some(&ours) {
        return Ok(Some(Lock { contender, token: token.to_owned() }));
    }
    delete_quietly(zk, &contender).await;
    Ok(None)
}

impl Lock {
    pub async fn release(self, zk: &Client) {
        delete_quietly(zk, &self.contender).await;
    }

    /// Writes `data` to `path`, naming `version`, and releases the lock, in one transaction:
    /// one round trip, not two, and the lock is held not a moment past the write. On an error
    /// nothing was written and the lock, handed back, is still held.
    pub async fn write_and_release(
        self,
        zk: &Client,
        path: &str,
        data: &[u8],
        version: i32,
    ) -> std::result::Result<(), (Lock, zookeeper_client::Error)> {
        let mut transaction = zk.new_multi_writer();
        let committed = match transaction
            .add_set_data(path, data, Some(version))
            .and_then(|()| transaction.add_delete(&self.contender, None))
        {
            Ok(()) => transaction.commit().await.map(drop).map_err(zookeeper_client::Error::from),
            Err(error) => Err(error),
        };
        committed.map_err(|error| (self, error))
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
        assert_eq!(contender_token("0123abcd__lock__0000000007"), Some("0123abcd"));
        assert_eq!(contender_token("lock"), None);
    }

    #[test]
    fn a_contender_is_ours_from_before_it_exists_until_it_is_gone() {
        let own = OwnLocks::default();
        let token = own.begin();
        // The name ZooKeeper will give it is not known yet; any sequence is recognised.
        let name = format!("{token}{MARKER}0000000042");
        assert!(own.is_ours(&name));
        assert!(!own.is_ours(&format!("{}{MARKER}0000000041", uuid::Uuid::new_v4().simple())));
        assert!(!own.is_ours("not-a-contender"));
        own.end(&token);
        assert!(!own.is_ours(&name));
    }
}
