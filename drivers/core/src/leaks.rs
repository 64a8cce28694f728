//! Leak detection: instances and other resources tagged for a provider of this installation
//! that no `PoolNode` owns. A resource must be seen leaked on two passes in a row before it is
//! deleted, so a node created between a list and the cache catching up is never mistaken.

use std::collections::{BTreeSet, HashSet};

use crate::cloud::{Cloud, CloudError, InstanceState, LeakedResource, Owner, ResourceKind};

/// What may own the provider's resources: every `PoolNode` of the provider (in any state) and
/// every `Image`, by name.
#[derive(Clone, Debug, Default)]
pub struct Owners {
    pub nodes: HashSet<String>,
    pub images: HashSet<String>,
}

impl Owners {
    fn own(&self, resource: &LeakedResource) -> bool {
        match &resource.owner {
            Some(Owner::Node(node)) => self.nodes.contains(node),
            Some(Owner::Image(image)) => self.images.contains(image),
            None => false,
        }
    }
}

/// A cloud resource by kind and id (`instance` `i-0abc`, `volume` `vol-0def`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceRef {
    pub kind: ResourceKind,
    pub id: String,
}

/// What one pass found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Resources seen leaked for the first time (deleted next pass if still leaked).
    pub suspected: BTreeSet<ResourceRef>,
    /// Resources deleted this pass.
    pub deleted: Vec<LeakedResource>,
}

/// One pass: lists the provider's resources, deletes the ones that were already suspects and
/// still have no owner, and returns the new suspects.
pub async fn pass(
    cloud: &dyn Cloud,
    owners: &Owners,
    previous: &BTreeSet<ResourceRef>,
) -> Result<Pass, CloudError> {
    let mut resources: Vec<LeakedResource> = cloud
        .list_instances()
        .await?
        .into_iter()
        .filter(|i| {
            !matches!(i.state, InstanceState::Gone | InstanceState::Stopping | InstanceState::Refused(_))
        })
        .map(|i| LeakedResource {
            kind: ResourceKind::Instance,
            owner: i.node().map(|node| Owner::Node(node.to_owned())),
            id: i.id,
        })
        .collect();
    resources.extend(cloud.list_other_resources().await?);

    let mut result = Pass::default();
    for resource in resources {
        if owners.own(&resource) {
            continue;
        }
        let key = ResourceRef { kind: resource.kind, id: resource.id.clone() };
        if !previous.contains(&key) {
            result.suspected.insert(key);
            continue;
        }
        tracing::info!(kind = %resource.kind, id = %resource.id, owner = ?resource.owner, "deleting leaked resource");
        let deleted = match resource.kind {
            ResourceKind::Instance => cloud.delete(&resource.id).await,
            _ => cloud.delete_other_resource(&resource).await,
        };
        match deleted {
            Ok(()) => result.deleted.push(resource),
            Err(error) => {
                tracing::warn!(kind = %resource.kind, id = %resource.id, %error, "deleting a leaked resource failed");
                result.suspected.insert(key); // try again next pass
            }
        }
    }
    Ok(result)
}
