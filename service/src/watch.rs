//! How every Kubernetes watch of a binary is opened.
//!
//! By default as a streaming list (`sendInitialEvents`): the apiserver sends the current
//! objects as events and keeps watching, with no gap between a list and the watch that follows.
//! Right after an apiserver start, watches opened at a list's resourceVersion were seen to miss
//! events for a newly served custom resource; streaming lists do not. They need the apiserver's
//! `WatchList` feature, so clusters without it switch to a list followed by a watch with
//! `--streaming-lists=false`. The choice is made once, at start-up, for the whole process.

use std::sync::atomic::{AtomicBool, Ordering};

use kube::runtime::watcher;

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
