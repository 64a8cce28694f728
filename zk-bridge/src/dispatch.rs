//! Handling ZooKeeper events: one at a time per request or node, many at once across them.
//!
//! Every change below `/nodepool` arrives through one recursive watch. Handling the events in
//! arrival order would make a new request wait behind every node event before it, so each
//! request and each node gets its own task instead. Events for a key that come while its task
//! waits or works are folded into one more run, never run side by side: a handler re-reads the
//! znode, so one run after the last event sees everything. Node events wait a moment first,
//! because Zuul's changes come in bursts (lock, `in-use`; `used`, unlock) and the bridge's own
//! writes to a node echo back as events: a burst is then carried to the PoolNode in one write.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::{sync::Semaphore, task::JoinSet};

use crate::{nodes, requests, shared::Shared};

/// How long a node's events are gathered before the node is looked at.
const NODE_EVENT_DELAY: Duration = Duration::from_millis(25);
/// How many handlers run at once. A burst of a thousand new requests used to become a thousand
/// simultaneous NodeRequest creations, and the operator's writes for the launches they asked
/// for queued behind all of them at the apiserver.
const CONCURRENT_HANDLERS: usize = 32;

/// What an event is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Key {
    Request(String),
    Node(String),
}

type Handler = Arc<dyn Fn(Key) -> BoxFuture<'static, ()> + Send + Sync>;

/// Runs event handlers; dropping it stops them all (with the session they belong to).
pub struct Dispatcher {
    handler: Handler,
    node_delay: Duration,
    /// Keys with a task, and whether another run was asked for while it waited or worked.
    pending: Arc<Mutex<HashMap<Key, bool>>>,
    /// Permits for [`CONCURRENT_HANDLERS`] runs at a time.
    running: Arc<Semaphore>,
    tasks: JoinSet<()>,
}

impl Dispatcher {
    /// Hands requests and nodes to their handlers in [`requests`] and [`nodes`].
    pub fn new(shared: Arc<Shared>) -> Self {
        let handler: Handler = Arc::new(move |key| {
            let shared = shared.clone();
            Box::pin(async move { handle(&shared, &key).await })
        });
        Dispatcher::with_handler(handler, NODE_EVENT_DELAY)
    }

    fn with_handler(handler: Handler, node_delay: Duration) -> Self {
        Dispatcher {
            handler,
            node_delay,
            pending: Default::default(),
            running: Arc::new(Semaphore::new(CONCURRENT_HANDLERS)),
            tasks: JoinSet::new(),
        }
    }

    /// Has `key` handled soon: by a new task, or by one more run of the task it already has.
    pub fn submit(&mut self, key: Key) {
        while self.tasks.try_join_next().is_some() {} // reap finished tasks
        {
            let mut pending = self.pending.lock().expect("dispatch lock");
            if let Some(again) = pending.get_mut(&key) {
                *again = true;
                return;
            }
            pending.insert(key.clone(), false);
        }
        let handler = self.handler.clone();
        let pending = self.pending.clone();
        let running = self.running.clone();
        let delay = if matches!(key, Key::Node(_)) { self.node_delay } else { Duration::ZERO };
        self.tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            loop {
                let Ok(_permit) = running.acquire().await else { return };
                pending.lock().expect("dispatch lock").insert(key.clone(), false);
                handler(key.clone()).await;
                let mut pending = pending.lock().expect("dispatch lock");
                if pending.get(&key) != Some(&true) {
                    pending.remove(&key);
                    return;
                }
            }
        });
    }
}

async fn handle(shared: &Arc<Shared>, key: &Key) {
    let (kind, id, outcome) = match key {
        Key::Request(id) => ("request", id, requests::on_request_event(shared, id).await),
        Key::Node(id) => ("node", id, nodes::on_node_event(shared, id).await),
    };
    if let Err(error) = outcome {
        tracing::warn!(kind, %id, error = format!("{error:#}"), "handling a ZooKeeper event failed");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts runs per key, and how many runs of one key and of all keys overlapped at most.
    #[derive(Default)]
    struct Probe {
        runs: Mutex<HashMap<Key, usize>>,
        running: Mutex<HashMap<Key, usize>>,
        most_at_once_per_key: AtomicUsize,
        now: AtomicUsize,
        most_at_once: AtomicUsize,
    }

    fn dispatcher(probe: Arc<Probe>) -> Dispatcher {
        let handler: Handler = Arc::new(move |key: Key| {
            let probe = probe.clone();
            Box::pin(async move {
                *probe.runs.lock().unwrap().entry(key.clone()).or_default() += 1;
                let same = {
                    let mut running = probe.running.lock().unwrap();
                    let n = running.entry(key.clone()).or_default();
                    *n += 1;
                    *n
                };
                probe.most_at_once_per_key.fetch_max(same, Ordering::SeqCst);
                let all = probe.now.fetch_add(1, Ordering::SeqCst) + 1;
                probe.most_at_once.fetch_max(all, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                probe.now.fetch_sub(1, Ordering::SeqCst);
                *probe.running.lock().unwrap().get_mut(&key).unwrap() -= 1;
            })
        });
        Dispatcher::with_handler(handler, Duration::from_millis(10))
    }

    async fn settle(dispatcher: &mut Dispatcher) {
        while dispatcher.tasks.join_next().await.is_some() {}
    }

    #[tokio::test]
    async fn a_burst_of_events_for_one_node_is_handled_once() {
        let probe = Arc::new(Probe::default());
        let mut dispatcher = dispatcher(probe.clone());
        for _ in 0..5 {
            dispatcher.submit(Key::Node("0000000001".into()));
        }
        settle(&mut dispatcher).await;
        assert_eq!(probe.runs.lock().unwrap()[&Key::Node("0000000001".into())], 1);
    }

    #[tokio::test]
    async fn an_event_during_a_run_brings_one_more_run_never_an_overlapping_one() {
        let probe = Arc::new(Probe::default());
        let mut dispatcher = dispatcher(probe.clone());
        let key = Key::Request("200-0000000001".into());
        dispatcher.submit(key.clone());
        tokio::time::sleep(Duration::from_millis(10)).await; // the first run is working now
        for _ in 0..3 {
            dispatcher.submit(key.clone());
        }
        settle(&mut dispatcher).await;
        assert_eq!(probe.runs.lock().unwrap()[&key], 2);
        assert_eq!(probe.most_at_once_per_key.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn different_keys_are_handled_side_by_side() {
        let probe = Arc::new(Probe::default());
        let mut dispatcher = dispatcher(probe.clone());
        for i in 0..4 {
            dispatcher.submit(Key::Request(format!("200-000000000{i}")));
            dispatcher.submit(Key::Node(format!("000000000{i}")));
        }
        settle(&mut dispatcher).await;
        assert_eq!(probe.runs.lock().unwrap().len(), 8);
        assert!(probe.most_at_once.load(Ordering::SeqCst) >= 4, "handlers ran one by one");
    }
}
