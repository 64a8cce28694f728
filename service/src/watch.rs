//! How every Kubernetes watch of a binary is opened.
//!
//! By default as a streaming list (`sendInitialEvents`): the apiserver sends the current
//! objects as events and keeps watching, with no gap between a list and the watch that follows.
//! Right after an apiserver start, watches opened at a list's resourceVersion were seen to miss
//! events for a newly served custom resource; streaming lists do not. They need the apiserver's
//! `WatchList` feature, so clusters without it switch to a list followed by a watch with
//! `--streaming-lists=false`. The choice is made once, at start-up, for the whole process.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use futures::StreamExt;
use kube::{
    Resource,
    runtime::{WatchStreamExt, reflector, watcher},
};

static STREAMING_LISTS: AtomicBool = AtomicBool::new(true);

/// Chooses streaming lists (`true`) or list-then-watch for every watch opened from now on.
pub fn set_streaming_lists(streaming: bool) {
    STREAMING_LISTS.store(streaming, Ordering::Relaxed);
}

/// The configuration every watch is opened with.
pub fn config() -> watcher::Config {
    let config = watcher::Config::default();
    if STREAMING_LISTS.load(Ordering::Relaxed) { config.streaming_lists() } else { config }
}

/// One watch of a kind that feeds both a cache and controllers
/// (`Controller::for_stream(cache.events.applied_objects(), cache.store.clone())`, or
/// `watches_stream(cache.events.touched_objects(), ...)` to hear of deletions too): each object
/// is held once, without its managedFields (server-side-apply bookkeeping that neither binary
/// reads and that made up half of a cached node). `on_event` runs for every watch event, e.g. to
/// wake a loop that reads the cache.
pub struct SharedCache<K: Resource<DynamicType = ()> + Clone + 'static, S> {
    pub store: reflector::Store<K>,
    /// The watch's events, once they are in the cache.
    pub events: S,
    /// Turns `true` once the initial list is in the cache. (The store's own `wait_until_ready`
    /// wakes only one waiter, and the controller is that waiter.)
    pub listed: tokio::sync::watch::Receiver<bool>,
    /// How far the watch has got.
    pub progress: WatchProgress,
}

/// The newest resourceVersion a watch has put in its cache, deletions included. An object
/// missing from the cache once the watch has passed the version it was written at has been
/// deleted since, rather than not been seen yet.
#[derive(Clone, Debug, Default)]
pub struct WatchProgress(Arc<AtomicU64>);

impl WatchProgress {
    fn saw<K: Resource>(&self, object: &K) {
        if let Some(version) = object.meta().resource_version.as_deref().and_then(|v| v.parse().ok()) {
            self.0.fetch_max(version, Ordering::Relaxed);
        }
    }

    /// Whether the watch has delivered `version` or a newer one (etcd's resourceVersions are
    /// increasing integers; anything else never counts as passed).
    pub fn passed(&self, version: &str) -> bool {
        version.parse::<u64>().is_ok_and(|version| self.0.load(Ordering::Relaxed) >= version)
    }
}

pub fn shared_cache<K>(
    api: kube::Api<K>,
    on_event: impl Fn() + Send + 'static,
) -> SharedCache<K, impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let (listed_tx, listed) = tokio::sync::watch::channel(false);
    let progress = WatchProgress::default();
    let seen = progress.clone();
    let events =
        watcher(api, config()).default_backoff().modify(without_managed_fields).reflect(writer).inspect(
            move |event| {
                match event {
                    Ok(
                        watcher::Event::Apply(object)
                        | watcher::Event::Delete(object)
                        | watcher::Event::InitApply(object),
                    ) => seen.saw(object),
                    Ok(watcher::Event::InitDone) => {
                        let _ = listed_tx.send(true);
                    }
                    _ => {}
                }
                on_event();
            },
        );
    SharedCache { store, events, listed, progress }
}

/// Drops an object's server-side-apply bookkeeping before it is cached.
pub fn without_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// How many reconciles of one controller run at once. Unbounded, a restart with thousands of
/// objects started a reconcile for each at the same moment, and the parked reconciles alone
/// took a quarter of a gigabyte; the rest wait in the controller's queue, which costs little.
/// Reconciles that wait long (a cloud's rate limit, an SSH scan of a host that does not answer)
/// are far fewer than this.
pub const CONCURRENT_RECONCILES: u16 = 128;

/// The configuration every controller runs with.
pub fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(CONCURRENT_RECONCILES)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    fn at(version: &str) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.resource_version = Some(version.into());
        object
    }

    #[test]
    fn progress_is_the_newest_version_delivered() {
        let progress = WatchProgress::default();
        assert!(!progress.passed("1"));
        progress.saw(&at("12"));
        progress.saw(&at("7")); // an older object in a list
        assert!(progress.passed("12") && progress.passed("9"));
        assert!(!progress.passed("13"));
        assert!(!progress.passed("opaque"), "only comparable versions count");
    }
}
