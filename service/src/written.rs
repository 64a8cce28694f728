//! Reading our own writes. A reconcile can run again before the cache shows what this process
//! just wrote (or read fresh): other writes in between queue another run, which gets the cached
//! copy. In the operator, acting on that stale copy of a PoolNode repeated the last step: a
//! cloud call again (a fifth of all `create` calls in a burst of 1,000 launches), or a used
//! static slot registered a second time, its write then refused as a conflict (about one
//! refused write per request→use→return cycle with 16 Zuul workers). In the bridge, a node
//! registered from a fresh read when its request was fulfilled looked, on the cached copy a
//! registration behind, like a znode of an earlier use. So the newest version of an object a
//! process has seen is remembered by its resourceVersion, and a reconcile on an older copy waits
//! for the cache. The objects stay the only record: after a restart nothing is remembered and
//! the freshly listed cache is trusted.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::Resource;

/// How long an entry is kept at most (a node deleted before the cache caught up leaves one).
const TTL: Duration = Duration::from_secs(300);

/// Whether a cached resourceVersion is the written one or newer. resourceVersions are opaque,
/// but etcd's are increasing integers; anything else is compared for equality only.
pub fn at_least(cached: Option<&str>, written: &str) -> bool {
    match (cached.map(str::parse::<u64>), written.parse::<u64>()) {
        (Some(Ok(cached)), Ok(written)) => cached >= written,
        _ => cached == Some(written),
    }
}

/// Waits until `caught_up` holds for a cache that shows a process's own writes a moment after
/// they are made, checking every few milliseconds for at most `within`. Returns whether it held;
/// callers go on either way, as a lagging watch must not stop them for good.
pub async fn until_cached(within: Duration, caught_up: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !caught_up() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

/// The resourceVersion of the newest copy of each object seen (written, or read fresh), by uid.
#[derive(Default)]
pub struct WrittenVersions(Mutex<HashMap<String, (Instant, String)>>);

impl WrittenVersions {
    /// Remembers `object` as the apiserver returned it after one of our writes or reads.
    pub fn record<K: Resource>(&self, object: &K) {
        let (Some(uid), Some(version)) = (object.meta().uid.clone(), object.meta().resource_version.clone())
        else {
            return;
        };
        let mut written = self.0.lock().expect("written versions lock");
        written.retain(|_, (at, _)| at.elapsed() < TTL);
        written.insert(uid, (Instant::now(), version));
    }

    /// Whether the cached `object` is older than the newest copy we saw. Once it is not, the
    /// entry is dropped. Versions that are not comparable never count as behind: a write based
    /// on a stale copy then still fails on its resourceVersion.
    pub fn cache_is_behind<K: Resource>(&self, object: &K) -> bool {
        let Some(uid) = object.meta().uid.as_deref() else { return false };
        let mut written = self.0.lock().expect("written versions lock");
        let Some((_, version)) = written.get(uid) else { return false };
        let cached = object.meta().resource_version.as_deref().and_then(|c| c.parse::<u64>().ok());
        let behind = match (cached, version.parse::<u64>().ok()) {
            (Some(cached), Some(written)) => cached < written,
            _ => false,
        };
        if !behind {
            written.remove(uid);
        }
        behind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodepool_crds::PoolNode;

    fn node(uid: &str, version: &str) -> PoolNode {
        let mut node = PoolNode::new("n", Default::default());
        node.metadata.uid = Some(uid.into());
        node.metadata.resource_version = Some(version.into());
        node
    }

    #[test]
    fn a_copy_older_than_our_write_is_behind_until_the_cache_catches_up() {
        let written = WrittenVersions::default();
        written.record(&node("a", "120"));
        assert!(written.cache_is_behind(&node("a", "119")));
        assert!(!written.cache_is_behind(&node("b", "1")), "another node");
        assert!(!written.cache_is_behind(&node("a", "120")));
        // Caught up once: the entry is gone, so a later write by someone else is no concern.
        assert!(!written.cache_is_behind(&node("a", "119")));
        written.record(&node("a", "130"));
        assert!(!written.cache_is_behind(&node("a", "131")), "newer than our write");
    }

    #[test]
    fn versions_that_are_not_numbers_are_never_behind() {
        let written = WrittenVersions::default();
        written.record(&node("a", "opaque-2"));
        assert!(!written.cache_is_behind(&node("a", "opaque-1")));
        assert!(at_least(Some("x"), "x"));
        assert!(!at_least(Some("x"), "y"));
        assert!(!at_least(None, "5"));
        assert!(at_least(Some("6"), "5"));
    }
}
