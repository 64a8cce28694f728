//! Registering a slot (a static host's job slot): the key scan or fixed keys, and what Zuul needs
//! to reach it. Used by the PoolNode controller (a new slot) and the scheduler (a slot back from
//! use, registered afresh and handed out in one write).

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use nodepool_crds::{NodeState, PoolNode, PoolNodeStatus, conditions};
use nodepool_driver::keyscan;

use crate::context::Context;

/// The slot condition that says whether its host answered the last key scan.
const REACHABLE: &str = "Reachable";
/// Condition set while a node is held because of its `spec.hold` (an operator's hold); a slot's
/// next registration starts without it.
pub const HELD: &str = "Held";

fn now() -> Time {
    Time(Timestamp::now())
}

/// What registering a static slot found.
pub enum Registration {
    /// Its host answered: the slot's status as `ready`.
    Ready(PoolNodeStatus),
    /// Its host did not answer a key scan: the status says so, the slot stays `init`.
    Unreachable(PoolNodeStatus),
    /// Its host is no longer in the Provider: the node is to be deleted.
    HostGone,
    /// Not a static slot, or its Provider is not known (yet).
    NotStatic,
}

/// Registers a static slot from `status` (`init`): scans its host keys when they are checked,
/// and fills in what Zuul needs to reach it. Nothing is written.
pub async fn register(node: &PoolNode, mut status: PoolNodeStatus, ctx: &Context) -> Registration {
    let Some(slot) = &node.spec.static_host else { return Registration::NotStatic };
    if status.zuul_view().is_some_and(|view| view.node_id.is_some()) {
        // Sent back to `init` after use by an operator that did not count registrations yet:
        // this registration's znode belongs to the last use, so this is the next one.
        status.registration = status.registration.wrapping_add(1);
    }
    let Some(provider) = ctx.provider(&node.spec.provider) else { return Registration::NotStatic };
    let Ok(driver) = nodepool_drivers::of(&provider) else { return Registration::NotStatic };
    let Some(host) = driver.slot_host(&provider, &node.spec.pool, &slot.host) else {
        return Registration::HostGone;
    };
    let generation = node.metadata.generation;
    let host_keys = if host.scans_keys() {
        match keyscan::scan_host_keys(&slot.host, host.port(), host.timeout).await {
            Ok(keys) => keys,
            Err(error) => {
                tracing::warn!(host = %slot.host, %error, "static host not reachable");
                conditions::set_condition(
                    &mut status.conditions,
                    conditions::condition(REACHABLE, false, "KeyScanFailed", error.to_string(), generation),
                );
                return Registration::Unreachable(status);
            }
        }
    } else {
        host.host_keys.clone()
    };
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            REACHABLE,
            true,
            "HostKeysScanned",
            format!("{} host key(s)", host_keys.len()),
            generation,
        ),
    );
    status.state = NodeState::Ready;
    status.state_time = Some(now());
    status.interface_ip = Some(slot.host.clone());
    status.hostname = Some(slot.host.clone());
    status.external_id = Some(slot.host.clone());
    status.connection = Some(host.connection);
    status.host_keys = host_keys;
    status.attributes =
        provider.spec.pools.iter().find(|p| p.name == node.spec.pool).and_then(|p| p.node_attributes.clone());
    status.observed_generation = generation;
    tracing::info!(host = %slot.host, slot = slot.slot, registration = status.registration, "static node ready");
    Registration::Ready(status)
}

/// The status a static slot starts its next registration with (`init`, not yet checked).
pub fn next_registration(node: &PoolNode, status: &PoolNodeStatus) -> PoolNodeStatus {
    let mut conditions = status.conditions.clone();
    conditions.retain(|c| c.type_ != HELD);
    PoolNodeStatus {
        state: NodeState::Init,
        state_time: Some(now()),
        registration: status.registration.wrapping_add(1),
        observed_generation: node.metadata.generation,
        conditions,
        // The bridge's view of the last registration stays until the bridge replaces it.
        zookeeper: status.zookeeper.clone(),
        ..Default::default()
    }
}
