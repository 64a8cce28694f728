//! Failpoints for fault-injection tests: a process started with
//! `NODEPOOL_FAILPOINTS=bridge-node-created` aborts right after that write, as a `kill -9` at
//! that instant would. The crash-consistency tests (`e2e/tests/crash_points.rs`) stop each
//! binary at each write of a node's way through ZooKeeper and check that a restart leaves
//! exactly one znode per registered `PoolNode`.
//!
//! The variable is a comma-separated list of failpoint names, each optionally `@N` to abort at
//! the Nth time it is reached instead of the first (`operator-slot-recycled@3`). Unset, as in
//! production, [`hit`] costs one load of an initialised `OnceLock`.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
};

/// The environment variable naming the failpoints armed in this process.
pub const VARIABLE: &str = "NODEPOOL_FAILPOINTS";

/// A place right after a write that a crash could follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failpoint {
    /// The bridge created a node's znode (its id not yet recorded anywhere).
    BridgeNodeCreated,
    /// The bridge wrote a node's znode under its lock (e.g. `allocated_to`).
    BridgeNodeWritten,
    /// The bridge removed the znode of a node's earlier registration (a static slot back from
    /// use), before registering the next one.
    BridgeNodeRetired,
    /// The bridge recorded a znode's id and Zuul's view in the `PoolNode`.
    BridgeViewRecorded,
    /// The bridge wrote a request `fulfilled` in ZooKeeper.
    BridgeRequestFulfilled,
    /// The operator wrote a hand-out: the nodes' allocations and the request's `fulfilled`.
    OperatorHandOutWritten,
    /// The operator registered a static slot back from use afresh (on its own, not handed out).
    OperatorSlotRecycled,
}

impl Failpoint {
    pub const ALL: [Failpoint; 7] = [
        Failpoint::BridgeNodeCreated,
        Failpoint::BridgeNodeWritten,
        Failpoint::BridgeNodeRetired,
        Failpoint::BridgeViewRecorded,
        Failpoint::BridgeRequestFulfilled,
        Failpoint::OperatorHandOutWritten,
        Failpoint::OperatorSlotRecycled,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Failpoint::BridgeNodeCreated => "bridge-node-created",
            Failpoint::BridgeNodeWritten => "bridge-node-written",
            Failpoint::BridgeNodeRetired => "bridge-node-retired",
            Failpoint::BridgeViewRecorded => "bridge-view-recorded",
            Failpoint::BridgeRequestFulfilled => "bridge-request-fulfilled",
            Failpoint::OperatorHandOutWritten => "operator-hand-out-written",
            Failpoint::OperatorSlotRecycled => "operator-slot-recycled",
        }
    }

    /// Which binary reaches it.
    pub const fn in_bridge(self) -> bool {
        !matches!(self, Failpoint::OperatorHandOutWritten | Failpoint::OperatorSlotRecycled)
    }
}

/// The armed failpoints: how many hits each may take before the process aborts.
struct Armed {
    abort_at: HashMap<&'static str, u32>,
    hits: Mutex<HashMap<&'static str, u32>>,
}

fn armed() -> &'static Armed {
    static ARMED: OnceLock<Armed> = OnceLock::new();
    ARMED.get_or_init(|| {
        let spec = std::env::var(VARIABLE).unwrap_or_default();
        Armed { abort_at: parse(&spec), hits: Default::default() }
    })
}

/// `name[@N],...` → the hit at which each named failpoint aborts; unknown names are ignored
/// with a warning, so a typo does not pass silently.
fn parse(spec: &str) -> HashMap<&'static str, u32> {
    let mut abort_at = HashMap::new();
    for item in spec.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let (name, at) = item.split_once('@').unwrap_or((item, "1"));
        let Some(point) = Failpoint::ALL.into_iter().find(|p| p.name() == name) else {
            eprintln!("{VARIABLE}: no failpoint called {name:?}; ignored");
            continue;
        };
        abort_at.insert(point.name(), at.parse().unwrap_or(1).max(1));
    }
    abort_at
}

/// Called right after the write `point` names: aborts the process if the failpoint is armed
/// and this is the hit it waits for.
pub fn hit(point: Failpoint) {
    let armed = armed();
    if armed.abort_at.is_empty() {
        return;
    }
    let Some(&at) = armed.abort_at.get(point.name()) else { return };
    let count = {
        let mut hits = armed.hits.lock().expect("failpoint hits");
        let count = hits.entry(point.name()).or_default();
        *count += 1;
        *count
    };
    if count == at {
        eprintln!("failpoint {} reached (hit {count}): aborting", point.name());
        std::process::abort();
    }
}

/// The environment variable naming the pause points armed in this process.
pub const PAUSE_VARIABLE: &str = "NODEPOOL_PAUSES";

/// A place where a test may slow a process down (see [`pause`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pause {
    /// The bridge, handling a request Zuul withdrew, has read one of the request's nodes from
    /// ZooKeeper and not yet recorded what it saw in the `PoolNode`. Zuul's node events keep
    /// coming meanwhile.
    BridgeWithdrawalNodeRead,
}

impl Pause {
    pub const ALL: [Pause; 1] = [Pause::BridgeWithdrawalNodeRead];

    pub const fn name(self) -> &'static str {
        match self {
            Pause::BridgeWithdrawalNodeRead => "bridge-withdrawal-node-read",
        }
    }
}

/// `name=300ms,...` → how long each named pause point waits; unknown names and unreadable
/// durations are ignored with a warning.
fn parse_pauses(spec: &str) -> HashMap<&'static str, std::time::Duration> {
    let mut pauses = HashMap::new();
    for item in spec.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let (name, millis) = item.split_once('=').unwrap_or((item, ""));
        let Some(point) = Pause::ALL.into_iter().find(|p| p.name() == name) else {
            eprintln!("{PAUSE_VARIABLE}: no pause point called {name:?}; ignored");
            continue;
        };
        let Ok(millis) = millis.trim_end_matches("ms").parse::<u64>() else {
            eprintln!("{PAUSE_VARIABLE}: {item:?} is not name=<milliseconds>ms; ignored");
            continue;
        };
        pauses.insert(point.name(), std::time::Duration::from_millis(millis));
    }
    pauses
}

/// Waits as long as `point` is armed for (not at all unless a test armed it).
pub async fn pause(point: Pause) {
    static PAUSES: OnceLock<HashMap<&'static str, std::time::Duration>> = OnceLock::new();
    let pauses = PAUSES.get_or_init(|| parse_pauses(&std::env::var(PAUSE_VARIABLE).unwrap_or_default()));
    if let Some(&wait) = pauses.get(point.name()) {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        let spec: Vec<String> = Failpoint::ALL.iter().map(|p| format!("{}@2", p.name())).collect();
        let parsed = parse(&spec.join(","));
        assert_eq!(parsed.len(), Failpoint::ALL.len());
        assert!(parsed.values().all(|&at| at == 2));
    }

    #[test]
    fn unknown_names_and_blanks_are_ignored() {
        let parsed = parse(" bridge-node-created , nonsense,,operator-slot-recycled@0");
        assert_eq!(parsed.get("bridge-node-created"), Some(&1));
        assert_eq!(parsed.get("operator-slot-recycled"), Some(&1), "@0 means the first hit");
        assert_eq!(parsed.len(), 2);
    }

    #[test]
    fn pauses_parse_as_milliseconds() {
        let parsed =
            parse_pauses("bridge-withdrawal-node-read=500ms, nonsense=1ms, bridge-withdrawal-node-read");
        assert_eq!(parsed.get("bridge-withdrawal-node-read"), Some(&std::time::Duration::from_millis(500)));
        assert_eq!(parsed.len(), 1, "the unknown name and the one without a duration are ignored");
    }
}
