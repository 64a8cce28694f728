//! The bridge's crash-consistency invariant, checked from outside (docs/architecture.md, "Crash
//! consistency"): once the bridge and the operator are up, every znode under `/nodepool/nodes`
//! written for this stack's namespace is the current registration of exactly one `PoolNode`,
//! and every `PoolNode` past `init` (and not being deleted) has exactly one such znode.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use nodepool_crds::{NodeState, PoolNode};
use serde_json::Value;

use crate::stack::Stack;

/// A znode of ours as read from ZooKeeper.
#[derive(Clone, Debug)]
pub struct OurZnode {
    pub id: String,
    pub uid: String,
    pub registration: u64,
    pub state: String,
}

/// What breaks the invariant; empty when it holds.
#[derive(Debug, Default)]
pub struct Violations {
    /// Znodes that are no PoolNode's current registration.
    pub orphans: Vec<OurZnode>,
    /// PoolNodes with more than one znode of their current registration, or none.
    pub miscounted: Vec<(String, usize)>,
}

impl Violations {
    pub fn hold(&self) -> bool {
        self.orphans.is_empty() && self.miscounted.is_empty()
    }
}

/// Every node znode in the stack's chroot that a bridge of its namespace wrote.
pub async fn our_znodes(stack: &Stack) -> Result<Vec<OurZnode>> {
    let zk = stack.env.zookeeper(Some(&stack.chroot)).await?;
    let mut ours = Vec::new();
    for id in zk.list_children("/nodepool/nodes").await? {
        let data = match zk.get_data(&format!("/nodepool/nodes/{id}")).await {
            Ok((data, _)) => data,
            Err(zookeeper_client::Error::NoNode) => continue,
            Err(error) => return Err(error.into()),
        };
        let Ok(doc) = serde_json::from_slice::<Value>(&data) else { continue };
        let k8s = &doc["driver_data"]["k8s"];
        if k8s["namespace"].as_str() != Some(stack.namespace.as_str()) {
            continue;
        }
        ours.push(OurZnode {
            id,
            uid: k8s["uid"].as_str().unwrap_or_default().to_owned(),
            registration: k8s["registration"].as_u64().unwrap_or_default(),
            state: doc["state"].as_str().unwrap_or_default().to_owned(),
        });
    }
    Ok(ours)
}

/// Checks the invariant once.
pub async fn check(stack: &Stack) -> Result<Violations> {
    let znodes = our_znodes(stack).await?;
    let nodes = stack.nodes().await?;
    Ok(violations(&znodes, &nodes))
}

/// The violations of the invariant by `znodes` and `nodes` (see the module docs).
pub fn violations(znodes: &[OurZnode], nodes: &[PoolNode]) -> Violations {
    let current: BTreeMap<&str, (u64, &PoolNode)> = nodes
        .iter()
        .filter_map(|node| {
            let status = node.status.as_ref()?;
            let registered = status.state != NodeState::Init && node.metadata.deletion_timestamp.is_none();
            registered.then_some((node.metadata.uid.as_deref()?, (u64::from(status.registration), node)))
        })
        .collect();
    let mut counts: BTreeMap<&str, usize> = current.keys().map(|uid| (*uid, 0)).collect();
    let mut orphans = Vec::new();
    for znode in znodes {
        match current.get(znode.uid.as_str()) {
            Some((registration, _)) if *registration == znode.registration => {
                *counts.get_mut(znode.uid.as_str()).expect("counted above") += 1;
            }
            _ => orphans.push(znode.clone()),
        }
    }
    let miscounted = counts
        .into_iter()
        .filter(|(_, count)| *count != 1)
        .map(|(uid, count)| (current[uid].1.metadata.name.clone().unwrap_or_default(), count))
        .collect();
    Violations { orphans, miscounted }
}

/// Waits until the invariant holds (checked every half second), failing with the last
/// violations after `timeout`.
pub async fn wait_until_it_holds(stack: &Stack, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let violations = check(stack).await?;
        if violations.hold() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the znode invariant does not hold after {timeout:?}: {violations:#?}; see {}",
                stack.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use nodepool_crds::{PoolNodeSpec, PoolNodeStatus};

    use super::*;

    fn node(uid: &str, state: NodeState, registration: u32) -> PoolNode {
        let mut node = PoolNode::new(uid, PoolNodeSpec::default());
        node.metadata.uid = Some(uid.into());
        node.status = Some(PoolNodeStatus { state, registration, ..Default::default() });
        node
    }

    fn znode(id: &str, uid: &str, registration: u64) -> OurZnode {
        OurZnode { id: id.into(), uid: uid.into(), registration, state: "ready".into() }
    }

    #[test]
    fn exactly_one_znode_per_registered_node_and_none_else() {
        let nodes = [node("a", NodeState::Ready, 2), node("b", NodeState::Init, 0)];
        assert!(violations(&[znode("1", "a", 2)], &nodes).hold());
        let twice = violations(&[znode("1", "a", 2), znode("2", "a", 2)], &nodes);
        assert_eq!(twice.miscounted, vec![("a".to_owned(), 2)]);
        let missing = violations(&[], &nodes);
        assert_eq!(missing.miscounted, vec![("a".to_owned(), 0)]);
        let stale = violations(
            &[znode("1", "a", 2), znode("0", "a", 1), znode("3", "b", 0), znode("4", "gone", 0)],
            &nodes,
        );
        let ids: Vec<&str> = stale.orphans.iter().map(|z| z.id.as_str()).collect();
        assert_eq!(ids, ["0", "3", "4"]);
        assert!(stale.miscounted.is_empty());
    }
}
