//! Orphan node znodes, and empty ones (left by a lock taken on a node just deleted). A znode of ours (its `driver_data` names a PoolNode of this namespace)
//! that is not the current registration of a PoolNode. A crash between two writes, or a write
//! made on state a restart had not caught up with yet, can leave one; Zuul would show it as a
//! node for ever. The invariant (docs/architecture.md, "Crash consistency"): every znode of ours
//! is the current registration of exactly one PoolNode, and every registered PoolNode has
//! exactly one znode. The cleanup pass removes what breaks it, once it is safe: the znode is
//! older than the grace period, nobody holds or waits for its lock, Zuul is not using or
//! holding it, and the request it was allocated to is gone.

use std::{collections::HashSet, sync::Arc, time::Duration};

use anyhow::Result;
use kube::ResourceExt;
use nodepool_crds::{NodeState, PoolNode};

use crate::{
    nodes,
    shared::Shared,
    zk::{lock, model::ZuulFields, paths},
};

/// Why a znode of ours has no owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrphanReason {
    /// No PoolNode has the uid it names (deleted while the bridge was down, say).
    NoPoolNode,
    /// Its PoolNode has moved on to a later registration (a static slot's earlier use).
    EarlierRegistration,
    /// Its PoolNode is back in `init` (an unreachable host) or being deleted.
    NotRegistered,
    /// Another znode is its PoolNode's current registration.
    Duplicate,
}

impl OrphanReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            OrphanReason::NoPoolNode => "no-pool-node",
            OrphanReason::EarlierRegistration => "earlier-registration",
            OrphanReason::NotRegistered => "not-registered",
            OrphanReason::Duplicate => "duplicate",
        }
    }
}

/// What a znode is to this bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Not written by a bridge of this namespace (another launcher's node, or debris).
    NotOurs,
    /// The current registration of its PoolNode.
    Current,
    /// Its PoolNode's current registration, whose id this session did not know: kept as the
    /// node's znode from now on.
    Adopt,
    Orphan(OrphanReason),
}

/// What `fields` (read from znode `node_id`) is to this bridge, given the PoolNode with the uid
/// it names (`owner`) and that PoolNode's current znode id as far as this session knows it.
pub fn ownership(
    fields: &ZuulFields,
    node_id: &str,
    namespace: &str,
    owner: Option<&PoolNode>,
    current_id: Option<&str>,
) -> Ownership {
    if fields.pool_node_uid.is_none() || fields.namespace.as_deref() != Some(namespace) {
        return Ownership::NotOurs;
    }
    let Some(owner) = owner else { return Ownership::Orphan(OrphanReason::NoPoolNode) };
    let status = owner.status.clone().unwrap_or_default();
    if fields.registration < status.registration {
        return Ownership::Orphan(OrphanReason::EarlierRegistration);
    }
    if owner.metadata.deletion_timestamp.is_some() || status.state == NodeState::Init {
        return Ownership::Orphan(OrphanReason::NotRegistered);
    }
    if fields.registration > status.registration {
        return Ownership::Current; // the cache is behind the znode: not ours to judge yet
    }
    match current_id {
        Some(current) if current == node_id => Ownership::Current,
        Some(_) => Ownership::Orphan(OrphanReason::Duplicate),
        None => Ownership::Adopt,
    }
}

/// Whether Zuul (or anyone) may still care about an orphan: it is younger than `grace`, Zuul
/// uses or holds it, or the request it was allocated to still exists. Its lock is checked
/// separately (a removal refuses a locked znode anyway).
fn still_wanted(fields: &ZuulFields, age: Duration, grace: Duration, requests: &HashSet<String>) -> bool {
    age < grace
        || matches!(fields.state, Some(NodeState::InUse | NodeState::Hold))
        || fields.allocated_to.as_ref().is_some_and(|request| requests.contains(request))
}

/// One sweep: removes the orphans that are safe to remove. Returns how many were removed.
pub async fn sweep(shared: &Arc<Shared>, grace: Duration) -> Result<usize> {
    let ids = shared.zk.list_children(paths::NODES).await?;
    let nodes = shared.pool_nodes.state();
    // The current znode of every PoolNode: read no further (a round trip per node otherwise).
    let current: HashSet<String> =
        nodes.iter().filter_map(|node| nodes::current_node_id(shared, node, &node.uid()?)).collect();
    let mut requests: Option<HashSet<String>> = None;
    let mut removed = 0;
    for id in ids.into_iter().filter(|id| !current.contains(id)) {
        let (data, stat) = match shared.zk.get_data(&paths::node(&id)).await {
            Ok(read) => read,
            Err(zookeeper_client::Error::NoNode) => continue,
            Err(error) => return Err(error.into()),
        };
        let Some(fields) = ZuulFields::parse(&data) else {
            // Empty: what a lock taken on a node just deleted leaves behind (Nodepool removes
            // these too). Anything else unreadable is not ours to judge.
            if data.is_empty() && lock::contenders(&shared.zk, &paths::node_lock(&id)).await?.is_empty() {
                tracing::info!(node_id = %id, "removing a node znode without data");
                crate::zk::delete_recursive(&shared.zk, &paths::node(&id)).await?;
            }
            continue;
        };
        let owner = fields.pool_node_uid.as_deref().and_then(|uid| shared.pool_node_by_uid(uid));
        let current_id = owner.as_ref().and_then(|node| nodes::current_node_id(shared, node, &node.uid()?));
        let reason = match ownership(&fields, &id, &shared.namespace, owner.as_deref(), current_id.as_deref())
        {
            Ownership::NotOurs | Ownership::Current => continue,
            Ownership::Adopt => {
                if let (Some(uid), Some(owner)) = (&fields.pool_node_uid, &owner) {
                    nodes::remember_found(shared, uid, fields.registration, &id, None);
                    tracing::info!(node = %owner.name_any(), node_id = %id, "adopted a znode of the node's current registration");
                }
                continue;
            }
            Ownership::Orphan(reason) => reason,
        };
        let age = crate::zk::age(stat.mtime);
        if requests.is_none() {
            requests = Some(shared.zk.list_children(paths::REQUESTS).await?.into_iter().collect());
        }
        if still_wanted(&fields, age, grace, requests.as_ref().expect("listed above"))
            || !lock::contenders(&shared.zk, &paths::node_lock(&id)).await?.is_empty()
        {
            if reason == OrphanReason::Duplicate && age >= grace {
                tracing::warn!(node_id = %id, state = ?fields.state, "a duplicate znode of a node is in Zuul's hands; removed once Zuul lets it go");
            }
            continue;
        }
        if nodes::remove_znode(shared, &id).await? {
            removed += 1;
            shared.metrics.orphan_removed(reason.as_str());
            tracing::info!(
                node_id = %id,
                reason = reason.as_str(),
                pool_node = owner.as_ref().map(|n| n.name_any()).unwrap_or_default(),
                registration = fields.registration,
                state = fields.state.map(NodeState::as_str).unwrap_or_default(),
                "removed an orphan node znode"
            );
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use nodepool_crds::{PoolNodeSpec, PoolNodeStatus};

    use super::*;

    fn fields(registration: u32, namespace: &str) -> ZuulFields {
        ZuulFields {
            pool_node_uid: Some("uid-1".into()),
            namespace: Some(namespace.into()),
            registration,
            state: Some(NodeState::Ready),
            ..Default::default()
        }
    }

    fn node(state: NodeState, registration: u32) -> PoolNode {
        let mut node = PoolNode::new("slot-0", PoolNodeSpec::default());
        node.status = Some(PoolNodeStatus { state, registration, ..Default::default() });
        node
    }

    #[test]
    fn only_our_namespaces_znodes_are_judged() {
        let theirs = fields(1, "elsewhere");
        assert_eq!(ownership(&theirs, "7", "ns", None, None), Ownership::NotOurs);
        let foreign = ZuulFields { state: Some(NodeState::Ready), ..Default::default() };
        assert_eq!(
            ownership(&foreign, "7", "ns", None, None),
            Ownership::NotOurs,
            "no driver_data: not ours"
        );
    }

    #[test]
    fn a_znode_is_an_orphan_unless_it_is_its_nodes_current_registration() {
        let ready = node(NodeState::Ready, 3);
        let f = fields(3, "ns");
        assert_eq!(ownership(&f, "7", "ns", None, None), Ownership::Orphan(OrphanReason::NoPoolNode));
        assert_eq!(ownership(&f, "7", "ns", Some(&ready), Some("7")), Ownership::Current);
        assert_eq!(
            ownership(&f, "7", "ns", Some(&ready), Some("8")),
            Ownership::Orphan(OrphanReason::Duplicate)
        );
        assert_eq!(ownership(&f, "7", "ns", Some(&ready), None), Ownership::Adopt);
        assert_eq!(
            ownership(&fields(2, "ns"), "6", "ns", Some(&ready), Some("7")),
            Ownership::Orphan(OrphanReason::EarlierRegistration)
        );
        assert_eq!(
            ownership(&f, "7", "ns", Some(&node(NodeState::Init, 3)), None),
            Ownership::Orphan(OrphanReason::NotRegistered)
        );
        assert_eq!(
            ownership(&fields(4, "ns"), "9", "ns", Some(&ready), Some("7")),
            Ownership::Current,
            "a znode ahead of the cached PoolNode is left until the cache catches up"
        );
    }

    #[test]
    fn what_zuul_uses_holds_or_was_given_is_never_wanted_gone() {
        let grace = Duration::from_secs(30);
        let old = Duration::from_secs(60);
        let none = HashSet::new();
        let mut f = fields(1, "ns");
        assert!(!still_wanted(&f, old, grace, &none));
        assert!(still_wanted(&f, Duration::from_secs(5), grace, &none), "within the grace period");
        for state in [NodeState::InUse, NodeState::Hold] {
            f.state = Some(state);
            assert!(still_wanted(&f, old, grace, &none), "{state:?}");
        }
        f.state = Some(NodeState::Used);
        assert!(!still_wanted(&f, old, grace, &none), "used and unlocked: Zuul is done with it");
        f.state = Some(NodeState::Ready);
        f.allocated_to = Some("200-0000000001".into());
        let open: HashSet<String> = ["200-0000000001".to_owned()].into();
        assert!(still_wanted(&f, old, grace, &open), "its request may still be accepted");
        assert!(!still_wanted(&f, old, grace, &none), "its request is gone");
    }
}
