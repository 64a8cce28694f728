//! How every Kubernetes watch of a binary is opened.
//!
//! By default as a streaming list (`sendInitialEvents`): the apiserver sends the current
//! objects as events and keeps watching, with no gap between a list and the watch that follows.
//! Right after an apiserver start, watches opened at a list's resourceVersion were seen to miss
//! events for a newly served custom resource; streaming lists do not. They need the apiserver's
//! `WatchList` feature, so clusters without it switch to a list followed by a watch with
//! `--streaming-lists=false`. The choice is made once, at start-up, for the whole process.

use std::sync::atomic::{AtomicBool, Ordering};

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
    let events =
        watcher(api, config()).default_backoff().modify(without_managed_fields).reflect(writer).inspect(
            move |event| {
                on_event();
                if matches!(event, Ok(watcher::Event::InitDone)) {
                    let _ = listed_tx.send(true);
                }
            },
        );
    SharedCache { store, events, listed }
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
