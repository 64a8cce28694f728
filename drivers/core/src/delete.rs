//! The delete state machine: terminate the node's instance, wait until it is gone.
//!
//! The instance is found by the id recorded in the node's status, or — when the operator
//! stopped between asking the cloud for an instance and recording its id — by the node's tag,
//! so an instance is never left behind.

use std::time::Duration;

use crate::cloud::{Cloud, CloudError, InstanceState};

/// What the caller should do after [`advance`].
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Call again after this long.
    Wait(Duration),
    /// Nothing of the node is left in the cloud.
    Gone,
}

/// How often a stopping instance is looked at.
pub const POLL: Duration = Duration::from_secs(1);
const RETRY: Duration = Duration::from_secs(5);

/// Deletes every instance of `node` (the recorded one, and any tagged for the node) and reports
/// whether they are all gone.
pub async fn advance(cloud: &dyn Cloud, node: &str, recorded: Option<&str>) -> Next {
    let mut ids: Vec<String> = recorded.map(|id| vec![id.to_owned()]).unwrap_or_default();
    if recorded.is_none() {
        match cloud.list_instances().await {
            Ok(instances) => ids.extend(
                instances
                    .into_iter()
                    .filter(|i| i.node() == Some(node) && i.state != InstanceState::Gone)
                    .map(|i| i.id),
            ),
            Err(error) => {
                tracing::warn!(%node, %error, "listing instances to find the node's failed; retrying");
                return Next::Wait(RETRY);
            }
        }
    }
    let mut all_gone = true;
    for id in ids {
        match delete_and_check(cloud, &id).await {
            Ok(gone) => all_gone &= gone,
            Err(error) => {
                tracing::warn!(%node, instance = %id, %error, "deleting the instance failed; retrying");
                return Next::Wait(RETRY);
            }
        }
    }
    if all_gone { Next::Gone } else { Next::Wait(POLL) }
}

/// Asks the cloud to delete the instance unless it is already going, then says whether it is
/// gone.
pub async fn delete_and_check(cloud: &dyn Cloud, id: &str) -> Result<bool, CloudError> {
    match cloud.get(id).await? {
        None => Ok(true),
        Some(instance) => match &instance.state {
            InstanceState::Gone | InstanceState::Refused(_) => Ok(true),
            InstanceState::Stopping => Ok(false),
            _ => {
                tracing::info!(instance = %id, "deleting instance");
                cloud.delete(id).await?;
                Ok(matches!(
                    cloud.get(id).await?,
                    None | Some(crate::Instance { state: InstanceState::Gone, .. })
                ))
            }
        },
    }
}
