//! What the scheduler is writing, or has written, that the caches may not show yet. A pass plans
//! on the caches with this laid over them, so it can start while earlier decisions are still
//! being written: a node being handed out is already allocated in it, and a request being decided
//! on is left out. Before, every pass waited for the caches to show all of the last pass's
//! writes, and a request arriving meanwhile waited behind them (with 16 Zuul workers a static
//! slot sat ready for ~350 ms before it was handed out again).
//!
//! Only an optimisation of what a pass sees: every status write still carries the
//! resourceVersion it was based on, so a decision made on a stale copy fails as a conflict and
//! is made again. Nodes created by a pass are not covered; such passes still wait for the caches
//! (see [`super::run`]).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use kube::ResourceExt;
use nodepool_crds::{NodeRequest, PoolNode};

use nodepool_service::written::at_least;

/// How far a write has got.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Version {
    /// Being written.
    InFlight,
    /// Written; the apiserver answered with this resourceVersion.
    Written(String),
}

#[derive(Default)]
pub struct Overlay {
    /// Nodes as the scheduler is making them (intended) or made them (as written).
    nodes: HashMap<String, (Arc<PoolNode>, Version)>,
    /// Requests a decision is being written for, or was written for.
    requests: HashMap<String, Version>,
}

impl Overlay {
    /// A decision about `request` is being written.
    pub fn hold_request(&mut self, request: &str) {
        self.requests.insert(request.to_owned(), Version::InFlight);
    }

    /// `node` is being written; `intended` is what it will look like.
    pub fn hold_node(&mut self, intended: PoolNode) {
        self.nodes.insert(intended.name_any(), (Arc::new(intended), Version::InFlight));
    }

    /// `node` was written, producing `version`, but stays as held until the cache shows that
    /// version: a node handed back to the pool is not offered on a stale cached copy.
    pub fn keep_until_cached(&mut self, node: &str, version: String) {
        if let Some((_, held)) = self.nodes.get_mut(node) {
            *held = Version::Written(version);
        }
    }

    /// `request`'s decision was written, producing `version`.
    pub fn request_written(&mut self, request: &str, version: String) {
        self.requests.insert(request.to_owned(), Version::Written(version));
    }

    /// `node` was written; this is what the apiserver stored.
    pub fn node_written(&mut self, node: PoolNode) {
        let version = Version::Written(node.resource_version().unwrap_or_default());
        self.nodes.insert(node.name_any(), (Arc::new(node), version));
    }

    /// A decision's writes ended without (all of) the results recorded above: what is still in
    /// flight of them is dropped, and the caches are trusted again.
    pub fn abandon(&mut self, request: Option<&str>, nodes: &[String]) {
        if let Some(request) = request
            && self.requests.get(request) == Some(&Version::InFlight)
        {
            self.requests.remove(request);
        }
        for node in nodes {
            if self.nodes.get(node).is_some_and(|(_, version)| *version == Version::InFlight) {
                self.nodes.remove(node);
            }
        }
    }

    /// Whether nothing is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.requests.is_empty()
    }

    /// Forgets what the caches show now (or that is gone from them).
    pub fn settle(
        &mut self,
        cached_node: impl Fn(&str) -> Option<Arc<PoolNode>>,
        cached_request: impl Fn(&str) -> Option<Arc<NodeRequest>>,
    ) {
        self.nodes.retain(|name, (_, version)| match version {
            Version::InFlight => true,
            Version::Written(written) => {
                cached_node(name).is_some_and(|n| !at_least(n.resource_version().as_deref(), written))
            }
        });
        self.requests.retain(|name, version| match version {
            Version::InFlight => true,
            Version::Written(written) => {
                cached_request(name).is_some_and(|r| !at_least(r.resource_version().as_deref(), written))
            }
        });
    }

    /// The cached nodes, with the ones held here as the scheduler is making them.
    pub fn nodes(&self, cached: Vec<Arc<PoolNode>>) -> Vec<Arc<PoolNode>> {
        cached
            .into_iter()
            .map(|node| match self.nodes.get(&node.name_any()) {
                Some((held, _)) => held.clone(),
                None => node,
            })
            .collect()
    }

    /// The cached requests but those a decision is being (or was just) written for.
    pub fn requests(&self, cached: Vec<Arc<NodeRequest>>) -> Vec<Arc<NodeRequest>> {
        let held: HashSet<&str> = self.requests.keys().map(String::as_str).collect();
        cached.into_iter().filter(|r| !held.contains(r.name_any().as_str())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodepool_crds::PoolNodeStatus;

    fn node(name: &str, version: &str, allocated_to: Option<&str>) -> PoolNode {
        let mut node = PoolNode::new(name, Default::default());
        node.metadata.resource_version = Some(version.into());
        node.status =
            Some(PoolNodeStatus { allocated_to: allocated_to.map(str::to_owned), ..Default::default() });
        node
    }

    fn request(name: &str, version: &str) -> NodeRequest {
        let mut request = NodeRequest::new(name, Default::default());
        request.metadata.resource_version = Some(version.into());
        request
    }

    fn allocated(nodes: &[Arc<PoolNode>], name: &str) -> Option<String> {
        let node = nodes.iter().find(|n| n.name_any() == name)?;
        node.status.as_ref()?.allocated_to.clone()
    }

    #[test]
    fn a_node_being_handed_out_shows_allocated_until_the_cache_shows_the_write() {
        let mut overlay = Overlay::default();
        let stale = vec![Arc::new(node("a", "10", None)), Arc::new(node("b", "11", None))];
        overlay.hold_node(node("a", "10", Some("r1")));
        assert_eq!(allocated(&overlay.nodes(stale.clone()), "a").as_deref(), Some("r1"));
        assert_eq!(allocated(&overlay.nodes(stale.clone()), "b"), None);

        overlay.node_written(node("a", "12", Some("r1")));
        overlay.settle(|n| stale.iter().find(|s| s.name_any() == n).cloned(), |_| None);
        assert_eq!(allocated(&overlay.nodes(stale.clone()), "a").as_deref(), Some("r1"), "cache still at 10");

        let fresh = [Arc::new(node("a", "12", Some("r1"))), Arc::new(node("b", "11", None))];
        overlay.settle(|n| fresh.iter().find(|s| s.name_any() == n).cloned(), |_| None);
        assert!(overlay.is_empty(), "the cache caught up");
    }

    #[test]
    fn a_request_is_left_out_until_the_cache_shows_its_decision() {
        let mut overlay = Overlay::default();
        let stale = vec![Arc::new(request("r1", "5")), Arc::new(request("r2", "6"))];
        overlay.hold_request("r1");
        let names =
            |requests: Vec<Arc<NodeRequest>>| requests.iter().map(|r| r.name_any()).collect::<Vec<_>>();
        assert_eq!(names(overlay.requests(stale.clone())), ["r2"]);

        overlay.request_written("r1", "7".into());
        overlay.settle(|_| None, |r| stale.iter().find(|s| s.name_any() == r).cloned());
        assert_eq!(names(overlay.requests(stale.clone())), ["r2"]);

        overlay.settle(|_| None, |r| (r == "r1").then(|| Arc::new(request("r1", "7"))));
        assert_eq!(names(overlay.requests(stale)), ["r1", "r2"]);
    }

    #[test]
    fn a_node_handed_back_stays_as_held_until_the_cache_shows_the_write() {
        let mut overlay = Overlay::default();
        overlay.hold_node(node("a", "10", Some("held")));
        overlay.keep_until_cached("a", "12".into());
        overlay.abandon(None, &["a".into()]);
        let stale = vec![Arc::new(node("a", "10", None))];
        overlay.settle(|n| stale.iter().find(|s| s.name_any() == n).cloned(), |_| None);
        assert_eq!(
            allocated(&overlay.nodes(stale), "a").as_deref(),
            Some("held"),
            "not offered on a stale copy"
        );
        let fresh = [Arc::new(node("a", "12", None))];
        overlay.settle(|n| fresh.iter().find(|s| s.name_any() == n).cloned(), |_| None);
        assert!(overlay.is_empty(), "the cache caught up");
    }

    #[test]
    fn an_abandoned_decision_gives_the_caches_back_their_say() {
        let mut overlay = Overlay::default();
        overlay.hold_request("r1");
        overlay.hold_node(node("a", "10", Some("r1")));
        overlay.node_written(node("b", "12", Some("r1")));
        overlay.abandon(Some("r1"), &["a".into(), "b".into()]);
        let cached = vec![Arc::new(node("a", "10", None)), Arc::new(node("b", "11", None))];
        let nodes = overlay.nodes(cached);
        assert_eq!(allocated(&nodes, "a"), None, "never written");
        assert_eq!(allocated(&nodes, "b").as_deref(), Some("r1"), "written: kept until the cache shows it");
        assert_eq!(overlay.requests(vec![Arc::new(request("r1", "5"))]).len(), 1);
    }
}
