//! Deciding which requests get which nodes, as a pure function of what is in the caches, in
//! Nodepool's order (zk-protocol.md §6.2–6.6):
//!
//! 1. requests by priority class (`100` < `200` < `300` < `900`), relative priority, then age;
//! 2. for each, the pools that serve every label, preferred provider first, then pool priority;
//! 3. the first pool with a free ready node per label gets the request (all nodes of one request
//!    from one pool); a cloud pool may instead launch what is missing, if its quota allows —
//!    the request is then `pending` until the launches end;
//! 4. a request no pool of ours can ever serve is declined; anything else waits;
//! 5. pending requests are fulfilled once all their nodes are ready, and declined if a launch
//!    failed;
//! 6. labels below their `minReady` get spare launches where quota remains;
//! 7. finally, static slots back from use that no request took are registered afresh.

use std::{
    cmp::Ordering,
    collections::{BTreeSet, HashMap, HashSet},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use nodepool_crds::{
    Label, NodeRequest, NodeState, PoolNode,
    conditions::{self, WaitReason},
    pool_node::{Allocation, NodeResources},
    provider::ResourceUsage,
};

use super::capacity::{self, Capacity, TenantBudget};
pub use super::views::{LaunchView, PoolView, footprint};

/// What the scheduler does with one request in this pass.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Hand these nodes (names, in label order) from `provider/pool` to the request.
    Assign { request: String, provider: String, pool: String, nodes: Vec<String> },
    /// Accept the request in `provider/pool`: allocate the free nodes in `reuse` and launch one
    /// node per label in `launch`; the request is `pending` until they are ready.
    Launch {
        request: String,
        provider: String,
        pool: String,
        reuse: Vec<String>,
        launch: Vec<(String, NodeResources)>,
    },
    /// Launch unallocated nodes of `label` to keep its `minReady`.
    LaunchSpare {
        provider: String,
        pool: String,
        label: String,
        resources: NodeResources,
        count: u32,
        /// The label's spares counted by the pass (logged with the launch).
        spares: Vec<String>,
    },
    /// Register a static slot back from use afresh (no request waits for it in this pass).
    Recycle { node: String },
    /// Keep a static slot back from use for the next request a little longer (see
    /// [`RECYCLE_GRACE`]); a pass follows after `after`.
    KeepForReuse { node: String, after: Duration },
    /// Leave it waiting, saying why.
    Wait { request: String, reason: WaitReason, message: String },
    /// None of our pools can serve it (or its launch failed). `release` are nodes allocated to
    /// it that go back to the pool.
    Decline { request: String, pools: Vec<String>, message: String, release: Vec<String> },
    /// Put a stranded hand-out (see [`STRANDED_AFTER`]) back to `requested`, if fresh reads
    /// confirm that none of its nodes shows its allocation.
    Undo { request: String },
}

/// Whether a node's launch failed for good: `failed`, or already `deleting` after that (the
/// node controller may tear it down before a scheduling pass sees it failed).
fn launch_failed(node: &PoolNode) -> bool {
    node.status.as_ref().is_some_and(|s| {
        s.state == NodeState::Failed
            || conditions::find(&s.conditions, conditions::types::LAUNCHED)
                .is_some_and(|c| c.reason == conditions::reasons::LAUNCH_FAILED)
    })
}

/// What nodes of these resources hold against quota together.
fn total<'a>(footprints: impl IntoIterator<Item = &'a NodeResources>) -> ResourceUsage {
    footprints.into_iter().map(NodeResources::usage).sum()
}

/// Nodepool's request order: priority class, relative priority, then sequence (age).
pub fn request_order(a: &NodeRequest, b: &NodeRequest) -> Ordering {
    a.spec.order().cmp(&b.spec.order())
}

/// Whether a node can be handed to a request right now: a free ready node, or a static slot
/// back from use, whose next registration and allocation are then written at once.
pub fn is_available(node: &PoolNode) -> bool {
    node.is_free() || node.is_back_from_use()
}

/// How long a static slot back from use is kept for the next request before it is registered
/// afresh on its own, when its registration scans no host keys.
///
/// Taken by a request, the slot's next registration and its allocation are one apiserver write,
/// and the bridge creates its next znode allocated. Registered first, it costs one more write
/// (and its watch events), and the znode is written twice. Zuul's workers ask again as soon as
/// they return a node, so most slots are taken within this time: with 4 benchmark workers on 16
/// slots, PoolNode writes per request fell from 3.5 to 2.5 and the p50 from ~85 to ~70 ms.
/// A slot whose keys are scanned is registered at once instead: its scan is kept off the
/// request path.
pub const RECYCLE_GRACE: Duration = Duration::from_millis(500);

/// Everything a pass decides on.
pub struct World<'a> {
    pub requests: &'a [std::sync::Arc<NodeRequest>],
    pub nodes: &'a [std::sync::Arc<PoolNode>],
    pub pools: &'a [PoolView],
    pub labels: &'a [std::sync::Arc<Label>],
    /// How long each static slot back from use (by name) has been seen so.
    pub back_for: &'a HashMap<String, Duration>,
    /// When the pass runs: a hand-out is stranded once it has been so for a while.
    pub now: Timestamp,
}

/// How long a `fulfilled` request may name an allocation that none of its nodes shows before it
/// is decided again. A hand-out writes the allocations and `fulfilled` at once, and when an
/// allocation fails it reverts `fulfilled` (the bridge never tells Zuul of it), trying until the
/// revert lands. A request seen so for this long was left by an operator that stopped before
/// its revert landed; Zuul never gives up on a request, so it would wait for ever.
pub const STRANDED_AFTER: Duration = Duration::from_secs(30);

/// Whether `request` is a stranded hand-out: `fulfilled` for [`STRANDED_AFTER`] with an
/// allocation that none of `allocations` (those the nodes show) is.
fn is_stranded(request: &NodeRequest, allocations: &HashSet<Allocation>, now: Timestamp) -> bool {
    let Some(allocation) = request.handed_out_allocation() else { return false };
    let since = request.status.as_ref().and_then(|s| s.state_time.as_ref()).map_or(now, |t| t.0);
    let old_enough = now.duration_since(since).as_secs_f64() >= STRANDED_AFTER.as_secs_f64();
    request.metadata.deletion_timestamp.is_none() && old_enough && !allocations.contains(&allocation)
}

/// Whether a slot back from use is registered again without a key scan: handed out first, and
/// kept for [`RECYCLE_GRACE`].
fn reregisters_without_scan(world: &World, node: &PoolNode) -> bool {
    let Some(slot) = &node.spec.static_host else { return false };
    world
        .pools
        .iter()
        .find(|p| p.provider == node.spec.provider && p.pool == node.spec.pool)
        .is_some_and(|p| !p.scanned_hosts.contains(&slot.host))
}

/// Decides on every open and pending request, in order, then on spare launches. Nodes assigned
/// earlier in the pass are not offered again, and launches planned earlier count against quota.
pub fn plan(world: &World, tenants: &mut [TenantBudget]) -> Vec<Decision> {
    let mut pass = Pass {
        taken: HashSet::new(),
        free: world.nodes.iter().map(|n| n.as_ref()).filter(|n| is_available(n)).collect(),
        capacity: Capacity::from_nodes(world.nodes),
        decisions: Vec::new(),
    };
    // Slots back from use that need no key scan first (see RECYCLE_GRACE), then ready nodes,
    // then slots whose registration scans keys: that scan would be on the request's path.
    pass.free.sort_by_cached_key(|n| {
        let class = match n.is_back_from_use() {
            true if reregisters_without_scan(world, n) => 0,
            false => 1,
            true => 2,
        };
        (class, n.metadata.creation_timestamp.clone().map(|t| t.0))
    });

    let mut pending: Vec<&NodeRequest> =
        world.requests.iter().map(|r| r.as_ref()).filter(|r| r.is_pending()).collect();
    pending.sort_by(|a, b| request_order(a, b));
    for request in pending {
        pass.pending(world, request);
    }
    let mut open: Vec<&NodeRequest> =
        world.requests.iter().map(|r| r.as_ref()).filter(|r| r.is_open()).collect();
    open.sort_by(|a, b| request_order(a, b));
    for request in open {
        pass.open(world, request, tenants);
    }
    let allocations: HashSet<Allocation> = world.nodes.iter().filter_map(|n| n.allocation()).collect();
    for request in world.requests.iter().filter(|r| is_stranded(r, &allocations, world.now)) {
        pass.decisions.push(Decision::Undo { request: request.name_any() });
    }
    pass.spares(world);
    pass.recycle(world);
    pass.decisions
}

/// What one pool can give a request now.
struct Offer<'a> {
    /// Free nodes it hands out.
    reuse: Vec<&'a PoolNode>,
    /// Labels it launches, with each node's footprint.
    launch: Vec<(String, NodeResources)>,
    /// What the launches hold against quota.
    launched: ResourceUsage,
    /// What the request holds against its tenant's limit: the free nodes and the launches.
    need: ResourceUsage,
}

/// Why the pools tried could not serve a request now.
#[derive(Default)]
struct Misses {
    /// Pools that yield to another launcher's pool of better priority.
    yielded: Vec<String>,
    /// Cloud pools that can never serve it (a label they cannot launch, beyond their limits).
    never: Vec<String>,
    /// Cloud pools that cannot launch for it now (paused, at a limit).
    blocked: Vec<String>,
}

/// The pools that serve every label of the request, preferred provider first, then by priority;
/// `Err` with the reason to decline when there are none.
fn candidates<'w>(world: &World<'w>, request: &NodeRequest) -> Result<Vec<&'w PoolView>, String> {
    let labels = &request.spec.labels;
    let mut candidates: Vec<&PoolView> =
        world.pools.iter().filter(|p| labels.iter().all(|label| p.labels.contains(label))).collect();
    if candidates.is_empty() {
        let missing: BTreeSet<&String> =
            labels.iter().filter(|l| !world.pools.iter().any(|p| p.labels.contains(*l))).collect();
        return Err(if missing.is_empty() {
            format!("no single pool serves all of {labels:?}")
        } else {
            format!("no provider serves label(s) {missing:?}")
        });
    }
    let preferred = request.spec.preferred_provider.as_deref();
    candidates.sort_by_key(|p| {
        (Some(p.provider.as_str()) != preferred, p.priority, p.provider.clone(), p.pool.clone())
    });
    Ok(candidates)
}

/// Other launchers sharing the ZooKeeper (Nodepool's, §6.3 steps 2 and 3): when we have no pool
/// of the request's preferred provider and another launcher has, that pool takes the request.
fn left_to_preferred_elsewhere(request: &NodeRequest, candidates: &[&PoolView]) -> Option<String> {
    let preferred = request.spec.preferred_provider.as_deref()?;
    if candidates.iter().any(|p| p.provider == preferred) {
        return None;
    }
    let theirs = request.spec.other_launchers.iter().find(|o| o.provider == preferred)?;
    Some(format!("left to another launcher's pool {} of the preferred provider", theirs.id))
}

/// Why a request no pool could serve now waits.
fn why_waiting(labels: &[String], candidates: &[&PoolView], misses: Misses) -> (WaitReason, String) {
    let usable = candidates.iter().filter(|p| p.usable).count();
    if !misses.yielded.is_empty() && misses.yielded.len() == usable {
        (WaitReason::OtherLauncher, misses.yielded.join("; "))
    } else if usable == 0 {
        let message = format!("every pool serving {labels:?} is paused or its provider is not Ready");
        (WaitReason::ProvidersUnavailable, message)
    } else if !misses.blocked.is_empty() {
        (WaitReason::AtQuota, misses.blocked.join("; "))
    } else {
        let names: Vec<String> = candidates.iter().map(|p| format!("{}/{}", p.provider, p.pool)).collect();
        (WaitReason::NoFreeNodes, format!("waiting for free nodes for {labels:?} in {}", names.join(", ")))
    }
}

/// The state of one pass.
struct Pass<'a> {
    /// Nodes handed out in this pass.
    taken: HashSet<String>,
    /// Free ready nodes and static slots back from use, oldest first.
    free: Vec<&'a PoolNode>,
    capacity: Capacity,
    decisions: Vec<Decision>,
}

impl<'a> Pass<'a> {
    /// A free node of `label` in `pool`, not yet handed out and not in `chosen`.
    fn free_node(&self, pool: &PoolView, label: &str, chosen: &[&'a PoolNode]) -> Option<&'a PoolNode> {
        self.free.iter().copied().find(|n| {
            n.spec.provider == pool.provider
                && n.spec.pool == pool.pool
                && n.spec.labels.iter().any(|l| l == label)
                && !self.taken.contains(&n.name_any())
                && !chosen.iter().any(|c| c.name_any() == n.name_any())
        })
    }

    /// Decides on an open request, in Nodepool's order: the pools that serve all its labels, in
    /// preference order; the first that can serve it now (free nodes, else launches within
    /// quota) takes it, if the tenant's limit allows; otherwise it is declined (no pool ever
    /// could) or waits, with the reason.
    fn open(&mut self, world: &World, request: &NodeRequest, tenants: &mut [TenantBudget]) {
        let name = request.name_any();
        let candidates = match candidates(world, request) {
            Ok(candidates) => candidates,
            Err(message) => return self.decline_everywhere(world, name, message),
        };
        if let Some(message) = left_to_preferred_elsewhere(request, &candidates) {
            return self.wait(name, WaitReason::OtherLauncher, message);
        }
        let mut budget =
            request.spec.tenant.as_ref().and_then(|t| tenants.iter_mut().find(|b| &b.tenant == t));
        let mut misses = Misses::default();
        for pool in candidates.iter().copied() {
            let Some(offer) = self.offer(pool, request, &mut misses) else { continue };
            // A tenant at its limit waits (Nodepool never declines for tenant quota).
            if let Some(budget) = budget.as_deref_mut() {
                if !budget.fits(&offer.need) {
                    let message = format!(
                        "tenant {} is at its limit (uses {} servers, {} cores, {} MiB)",
                        budget.tenant, budget.used.servers, budget.used.cores, budget.used.ram
                    );
                    return self.wait(name, WaitReason::TenantLimit, message);
                }
                budget.used.add(&offer.need);
            }
            return self.take(name, pool, offer);
        }
        let slotted_candidates = candidates.iter().any(|p| p.launch.is_none());
        if !slotted_candidates && misses.never.len() == candidates.len() {
            return self.decline_everywhere(world, name, misses.never.join("; "));
        }
        let (reason, message) = why_waiting(&request.spec.labels, &candidates, misses);
        self.wait(name, reason, message);
    }

    /// What `pool` can do for the request now: free nodes for its labels, launches for the rest.
    /// `None`, with the reason in `misses`, when it cannot.
    fn offer(&self, pool: &PoolView, request: &NodeRequest, misses: &mut Misses) -> Option<Offer<'a>> {
        if !pool.usable {
            return None; // paused or not Ready: it neither serves nor declines now
        }
        let others = &request.spec.other_launchers;
        if let Some(better) = others.iter().filter(|o| o.priority < pool.priority).min_by_key(|o| o.priority)
        {
            misses.yielded.push(format!(
                "{}/{} (priority {}) yields to another launcher's pool {} (priority {})",
                pool.provider, pool.pool, pool.priority, better.id, better.priority
            ));
            return None;
        }
        // Free ready nodes first (a slotted pool's only way; a cloud pool's when reuse is on).
        let labels = &request.spec.labels;
        let reuse = pool.launch.is_none() || request.spec.reuse;
        let mut chosen: Vec<&'a PoolNode> = Vec::new();
        let mut missing: Vec<String> = Vec::new();
        for label in labels {
            match self.free_node(pool, label, &chosen).filter(|_| reuse) {
                Some(node) => chosen.push(node),
                None => missing.push(label.clone()),
            }
        }
        let launch = match &pool.launch {
            _ if missing.is_empty() => Vec::new(),
            None => return None, // a slotted pool without free nodes: try the next pool
            Some(launch) => self.launches(pool, launch, labels, &missing, misses)?,
        };
        let launched = total(launch.iter().map(|(_, r)| r));
        let mut need = footprint(chosen.iter().copied());
        need.add(&launched);
        Some(Offer { reuse: chosen, launch, launched, need })
    }

    /// The launches for the `missing` labels in a cloud pool, if they fit now; `None`, with why
    /// they never or not now fit in `misses`, otherwise.
    fn launches(
        &self,
        pool: &PoolView,
        launch: &LaunchView,
        labels: &[String],
        missing: &[String],
        misses: &mut Misses,
    ) -> Option<Vec<(String, NodeResources)>> {
        let at = format!("{}/{}", pool.provider, pool.pool);
        if let Some((label, why)) = missing.iter().find_map(|l| launch.unlaunchable.get_key_value(l)) {
            misses.never.push(format!("{at}: label {label}: {why}"));
            return None;
        }
        let whole = total(labels.iter().filter_map(|l| launch.footprints.get(l)));
        if let Err(why) = capacity::ever_fits(launch, &whole) {
            misses.never.push(format!("{at}: {why}"));
            return None;
        }
        if let Some(why) = &launch.paused {
            misses.blocked.push(format!("{at} is paused: {why}"));
            return None;
        }
        let need: Vec<(String, NodeResources)> =
            missing.iter().map(|l| (l.clone(), launch.footprints[l].clone())).collect();
        let more = total(need.iter().map(|(_, r)| r));
        if let Err(why) = self.capacity.fits(pool, launch, &more, need.len() as u32) {
            misses.blocked.push(why);
            return None;
        }
        Some(need)
    }

    /// Hands the request what `pool` offered: its free nodes, and launches where it needs them.
    fn take(&mut self, request: String, pool: &PoolView, offer: Offer) {
        let reused: Vec<String> = offer.reuse.iter().map(|n| n.name_any()).collect();
        self.taken.extend(reused.iter().cloned());
        let (provider, pool_name) = (pool.provider.clone(), pool.pool.clone());
        if offer.launch.is_empty() {
            self.decisions.push(Decision::Assign { request, provider, pool: pool_name, nodes: reused });
        } else {
            self.capacity.take(pool, &offer.launched, offer.launch.len() as u32);
            let launch = offer.launch;
            self.decisions.push(Decision::Launch {
                request,
                provider,
                pool: pool_name,
                reuse: reused,
                launch,
            });
        }
    }

    fn wait(&mut self, request: String, reason: WaitReason, message: String) {
        self.decisions.push(Decision::Wait { request, reason, message });
    }

    fn decline_everywhere(&mut self, world: &World, request: String, message: String) {
        self.decline_everywhere_releasing(world, request, message, Vec::new());
    }

    /// Declines in every pool of ours, giving the request's `release`d nodes back.
    fn decline_everywhere_releasing(
        &mut self,
        world: &World,
        request: String,
        message: String,
        release: Vec<String>,
    ) {
        let pools = world.pools.iter().map(|p| format!("{}/{}", p.provider, p.pool)).collect();
        self.decisions.push(Decision::Decline { request, pools, message, release });
    }

    /// A request we accepted: fulfil it when its nodes are ready, decline it when a launch
    /// failed, and launch again what was aborted.
    fn pending(&mut self, world: &World, request: &NodeRequest) {
        let name = request.name_any();
        let id = request.spec.request_id.as_str();
        let status = request.status.clone().unwrap_or_default();
        let (Some(provider), Some(pool_name)) = (status.provider.clone(), status.pool.clone()) else {
            return;
        };
        let allocated: Vec<&PoolNode> = world
            .nodes
            .iter()
            .map(|n| n.as_ref())
            .filter(|n| n.status.as_ref().and_then(|s| s.allocated_to.as_deref()) == Some(id))
            .filter(|n| n.metadata.deletion_timestamp.is_none())
            .collect();
        let release = |keep: &dyn Fn(&PoolNode) -> bool| -> Vec<String> {
            allocated.iter().filter(|n| keep(n)).map(|n| n.name_any()).collect()
        };
        // Its pool is gone (the Provider is being deleted, or the pool was removed): nothing
        // will complete it here, so decline it and let Zuul (or another launcher) have it.
        if !world.pools.iter().any(|p| p.provider == provider && p.pool == pool_name) {
            let alive = |n: &PoolNode| n.status.as_ref().is_some_and(|s| s.state != NodeState::Deleting);
            let message = format!("pool {provider}/{pool_name} is gone");
            self.decline_everywhere_releasing(world, name, message, release(&alive));
            return;
        }
        if let Some(failed) = allocated.iter().find(|n| launch_failed(n)) {
            let why = failed
                .status
                .as_ref()
                .and_then(|s| s.launch.as_ref())
                .and_then(|l| l.last_error.clone())
                .unwrap_or_else(|| "launch failed".into());
            let not_failed = |n: &PoolNode| !launch_failed(n);
            let message = format!("launching node {} failed: {why}", failed.name_any());
            self.decline_everywhere_releasing(world, name, message, release(&not_failed));
            return;
        }
        // Match the request's labels, in order, to its nodes.
        let mut matched: Vec<&PoolNode> = Vec::new();
        let mut missing: Vec<String> = Vec::new();
        for label in &request.spec.labels {
            let node = allocated.iter().copied().find(|n| {
                n.spec.labels.contains(label)
                    && n.status.as_ref().is_some_and(|s| {
                        matches!(s.state, NodeState::Init | NodeState::Building | NodeState::Ready)
                    })
                    && !matched.iter().any(|m| m.name_any() == n.name_any())
            });
            match node {
                Some(node) => matched.push(node),
                None => missing.push(label.clone()),
            }
        }
        if missing.is_empty() {
            let ready = matched.iter().all(|n| {
                let status = n.status.as_ref();
                status.is_some_and(|s| s.state == NodeState::Ready && s.unclaimed_by_zuul())
            });
            if ready {
                self.decisions.push(Decision::Assign {
                    request: name,
                    provider,
                    pool: pool_name,
                    nodes: matched.iter().map(|n| n.name_any()).collect(),
                });
            }
            return; // still launching
        }
        // Some launches were aborted (quota): launch again once the pool is not paused.
        let Some(pool) = world.pools.iter().find(|p| p.provider == provider && p.pool == pool_name) else {
            return;
        };
        let Some(launch) = &pool.launch else { return };
        if launch.paused.is_some() || !pool.usable {
            return;
        }
        let Some(need) = missing
            .iter()
            .map(|l| launch.footprints.get(l).map(|r| (l.clone(), r.clone())))
            .collect::<Option<Vec<_>>>()
        else {
            return;
        };
        let more = total(need.iter().map(|(_, r)| r));
        if self.capacity.fits(pool, launch, &more, need.len() as u32).is_ok() {
            self.capacity.take(pool, &more, need.len() as u32);
            self.decisions.push(Decision::Launch {
                request: name,
                provider,
                pool: pool_name,
                reuse: Vec::new(),
                launch: need,
            });
        }
    }

    /// Spare launches for labels below `minReady`: counted are unallocated nodes of the label
    /// that are ready or on their way (Nodepool counts ready ones and has its min-ready
    /// requests for the rest).
    fn spares(&mut self, world: &World) {
        for label in world.labels {
            let name = label.name_any();
            let want = label.spec.min_ready;
            if want == 0 {
                continue;
            }
            let spares: Vec<String> = world
                .nodes
                .iter()
                .filter(|n| n.metadata.deletion_timestamp.is_none() && n.spec.labels.contains(&name))
                .filter(|n| {
                    let status = n.status.as_ref();
                    status.is_none_or(|s| {
                        s.allocated_to.is_none()
                            && s.unclaimed_by_zuul()
                            && matches!(s.state, NodeState::Init | NodeState::Building | NodeState::Ready)
                    })
                })
                .map(|n| n.name_any())
                .collect();
            let have = spares.len() as u32;
            if have >= want {
                continue;
            }
            let mut pools: Vec<&PoolView> = world
                .pools
                .iter()
                .filter(|p| p.usable && p.labels.contains(&name))
                .filter(|p| {
                    p.launch.as_ref().is_some_and(|l| l.paused.is_none() && l.footprints.contains_key(&name))
                })
                .collect();
            pools.sort_by_key(|p| (p.priority, p.provider.clone(), p.pool.clone()));
            let mut short = want - have;
            for pool in pools {
                let launch = pool.launch.as_ref().expect("filtered on launch");
                let resources = launch.footprints[&name].clone();
                let mut count = 0;
                while count < short && self.capacity.fits(pool, launch, &resources.usage(), 1).is_ok() {
                    self.capacity.take(pool, &resources.usage(), 1);
                    count += 1;
                }
                if count > 0 {
                    self.decisions.push(Decision::LaunchSpare {
                        provider: pool.provider.clone(),
                        pool: pool.pool.clone(),
                        label: name.clone(),
                        resources: resources.clone(),
                        count,
                        spares: spares.clone(),
                    });
                    short -= count;
                }
                if short == 0 {
                    break;
                }
            }
        }
    }
}

impl Pass<'_> {
    /// Static slots back from use that no request took in this pass are registered afresh: at
    /// once if that scans their keys, else once no request took them for [`RECYCLE_GRACE`].
    fn recycle(&mut self, world: &World) {
        for node in world.nodes.iter().filter(|n| n.is_back_from_use()) {
            let name = node.name_any();
            if self.taken.contains(&name) {
                continue;
            }
            let waited = world.back_for.get(&name).copied().unwrap_or_default();
            if waited >= RECYCLE_GRACE || !reregisters_without_scan(world, node) {
                self.decisions.push(Decision::Recycle { node: name });
            } else {
                self.decisions.push(Decision::KeepForReuse { node: name, after: RECYCLE_GRACE - waited });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nodepool_crds::{
        NodeRequestSpec, NodeRequestState, PoolNodeSpec, PoolNodeStatus, TenantLimit, ZooKeeperView,
        provider::ResourceLimits,
    };

    use super::*;
    use crate::scheduler::capacity::tenant_budgets;

    fn request(id: &str, labels: &[&str], relative_priority: i64) -> Arc<NodeRequest> {
        let spec = NodeRequestSpec {
            request_id: id.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            relative_priority,
            reuse: true,
            ..Default::default()
        };
        Arc::new(NodeRequest::new(id, spec))
    }

    fn node(name: &str, provider: &str, labels: &[&str]) -> Arc<PoolNode> {
        let spec = PoolNodeSpec {
            provider: provider.into(),
            pool: "main".into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            ..Default::default()
        };
        let mut node = PoolNode::new(name, spec);
        node.status = Some(PoolNodeStatus {
            state: NodeState::Ready,
            zookeeper: Some(ZooKeeperView { node_id: Some(format!("id-{name}")), ..Default::default() }),
            ..Default::default()
        });
        Arc::new(node)
    }

    fn pool(provider: &str, priority: i32, labels: &[&str]) -> PoolView {
        PoolView {
            provider: provider.into(),
            pool: "main".into(),
            priority,
            labels: labels.iter().map(|l| l.to_string()).collect(),
            usable: true,
            launch: None,
            scanned_hosts: BTreeSet::new(),
        }
    }

    /// A pass without labels (no spare launches).
    fn plan(
        requests: &[Arc<NodeRequest>],
        nodes: &[Arc<PoolNode>],
        pools: &[PoolView],
        tenants: &mut [TenantBudget],
    ) -> Vec<Decision> {
        super::plan(
            &World { requests, nodes, pools, labels: &[], back_for: &HashMap::new(), now: Timestamp::now() },
            tenants,
        )
    }

    #[test]
    fn serves_in_priority_class_then_relative_priority_then_age() {
        let requests = [
            request("300-0000000001", &["l"], 0),
            request("200-0000000003", &["l"], 0),
            request("200-0000000002", &["l"], 1),
            request("200-0000000004", &["l"], 0),
        ];
        let nodes = [node("n1", "p", &["l"]), node("n2", "p", &["l"])];
        let decisions = plan(&requests, &nodes, &[pool("p", 100, &["l"])], &mut []);
        let served: Vec<&str> = decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Assign { request, .. } => Some(request.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(served, ["200-0000000003", "200-0000000004"]);
        assert!(matches!(&decisions[2], Decision::Wait { reason: WaitReason::NoFreeNodes, .. }));
    }

    #[test]
    fn nodes_come_in_label_order_from_one_pool() {
        let requests = [request("100-0000000001", &["b", "a", "b"], 0)];
        let nodes = [
            node("a1", "p", &["a"]),
            node("b1", "p", &["b"]),
            node("b2", "p", &["b"]),
            node("x", "q", &["a"]),
        ];
        let decisions =
            plan(&requests, &nodes, &[pool("p", 100, &["a", "b"]), pool("q", 100, &["a"])], &mut []);
        assert_eq!(
            decisions,
            [Decision::Assign {
                request: "100-0000000001".into(),
                provider: "p".into(),
                pool: "main".into(),
                nodes: vec!["b1".into(), "a1".into(), "b2".into()]
            }]
        );
    }

    #[test]
    fn unknown_label_is_declined_and_a_busy_one_waits() {
        let requests = [request("100-0000000001", &["nope"], 0), request("100-0000000002", &["l"], 0)];
        let decisions = plan(&requests, &[], &[pool("p", 100, &["l"])], &mut []);
        assert!(matches!(&decisions[0], Decision::Decline { message, .. } if message.contains("nope")));
        assert!(matches!(&decisions[1], Decision::Wait { .. }));
    }

    #[test]
    fn preferred_provider_then_pool_priority() {
        let nodes = [node("p1", "p", &["l"]), node("q1", "q", &["l"])];
        let pools = [pool("p", 10, &["l"]), pool("q", 20, &["l"])];
        let plain = plan(&[request("100-0000000001", &["l"], 0)], &nodes, &pools, &mut []);
        assert!(matches!(&plain[0], Decision::Assign { provider, .. } if provider == "p"));

        let mut preferring_q = (*request("100-0000000002", &["l"], 0)).clone();
        preferring_q.spec.preferred_provider = Some("q".into());
        let preferred = plan(&[Arc::new(preferring_q)], &nodes, &pools, &mut []);
        assert!(matches!(&preferred[0], Decision::Assign { provider, .. } if provider == "q"));
    }

    #[test]
    fn a_tenant_at_its_limit_waits_and_others_are_served() {
        let mut held = (*node("busy", "p", &["l"])).clone();
        held.status.as_mut().unwrap().tenant = Some("t1".into());
        held.status.as_mut().unwrap().allocated_to = Some("100-0000000000".into());
        let nodes = [Arc::new(held), node("n1", "p", &["l"]), node("n2", "p", &["l"])];
        let limit = TenantLimit::new(
            "t1",
            nodepool_crds::TenantLimitSpec {
                tenant: "t1".into(),
                limits: ResourceLimits { max_servers: Some(2), ..Default::default() },
            },
        );
        let mut budgets = tenant_budgets(&[Arc::new(limit)], &nodes);
        assert_eq!(budgets[0].used.servers, 1);
        let tenant_request = |id: &str, tenant: &str| {
            let mut r = (*request(id, &["l"], 0)).clone();
            r.spec.tenant = Some(tenant.into());
            Arc::new(r)
        };
        let requests = [
            tenant_request("100-0000000001", "t1"),
            tenant_request("100-0000000002", "t1"),
            tenant_request("100-0000000003", "t2"),
        ];
        let decisions = plan(&requests, &nodes, &[pool("p", 100, &["l"])], &mut budgets);
        assert!(matches!(&decisions[0], Decision::Assign { .. }), "{decisions:?}");
        assert!(
            matches!(&decisions[1], Decision::Wait { reason: WaitReason::TenantLimit, .. }),
            "{decisions:?}"
        );
        assert!(matches!(&decisions[2], Decision::Assign { .. }), "t2 has no limit: {decisions:?}");
    }

    #[test]
    fn locked_or_allocated_nodes_are_not_free() {
        let mut locked = (*node("n", "p", &["l"])).clone();
        locked.status.as_mut().unwrap().zookeeper.as_mut().unwrap().locked = true;
        assert!(!locked.is_free());
        let mut allocated = (*node("n", "p", &["l"])).clone();
        allocated.status.as_mut().unwrap().allocated_to = Some("100-0000000009".into());
        assert!(!allocated.is_free());
        let mut used = (*node("n", "p", &["l"])).clone();
        used.status.as_mut().unwrap().zookeeper.as_mut().unwrap().zuul_state = Some(NodeState::Used);
        assert!(!used.is_free());
        assert!(node("n", "p", &["l"]).is_free());
    }

    /// A static slot Zuul has used; `locked` while Zuul still holds it.
    fn back_from_use(name: &str, locked: bool) -> Arc<PoolNode> {
        let mut slot = (*node(name, "p", &["l"])).clone();
        slot.spec.static_host = Some(nodepool_crds::pool_node::StaticSlot { host: "h".into(), slot: 0 });
        let status = slot.status.as_mut().unwrap();
        status.allocated_to = Some("100-0000000001".into());
        let view = status.zookeeper.as_mut().unwrap();
        (view.zuul_state, view.locked) = (Some(NodeState::Used), locked);
        Arc::new(slot)
    }

    #[test]
    fn a_static_slot_back_from_use_goes_to_a_waiting_request_or_is_registered_afresh() {
        let (done, still_locked) = (back_from_use("done", false), back_from_use("locked", true));
        assert!(done.is_back_from_use() && !done.is_free());
        assert!(!still_locked.is_back_from_use(), "Zuul has not given it back yet");
        let nodes = [done.clone(), still_locked.clone()];
        let pools = [pool("p", 100, &["l"])];

        // A request waits: the slot's next registration and its allocation are one decision.
        let waiting = [request("100-0000000002", &["l"], 0)];
        let decisions = plan(&waiting, &nodes, &pools, &mut []);
        assert_eq!(
            decisions,
            [Decision::Assign {
                request: "100-0000000002".into(),
                provider: "p".into(),
                pool: "main".into(),
                nodes: vec!["done".into()],
            }]
        );
        // The slot goes before a ready node: its next registration and the allocation are one
        // write, and the ready node stays registered.
        let ready = node("ready", "p", &["l"]);
        let decisions = plan(&waiting, &[ready.clone(), done.clone()], &pools, &mut []);
        assert!(
            matches!(&decisions[..], [Decision::Assign { nodes, .. }] if nodes == &["done"]),
            "{decisions:?}"
        );
        // None waits: it is kept for the next request, then registered afresh on its own.
        let with_waited = |waited: Duration, pools: &[PoolView]| {
            let back_for = HashMap::from([("done".to_owned(), waited)]);
            let now = Timestamp::now();
            let world = World { requests: &[], nodes: &nodes, pools, labels: &[], back_for: &back_for, now };
            super::plan(&world, &mut [])
        };
        assert_eq!(
            with_waited(Duration::from_millis(100), &pools),
            [Decision::KeepForReuse {
                node: "done".into(),
                after: RECYCLE_GRACE - Duration::from_millis(100)
            }]
        );
        assert_eq!(with_waited(RECYCLE_GRACE, &pools), [Decision::Recycle { node: "done".into() }]);
        // A slot whose registration scans host keys is registered afresh at once, and a ready
        // node goes before it: the scan stays off the request's path.
        let mut scanning = pool("p", 100, &["l"]);
        scanning.scanned_hosts.insert("h".into());
        let scanning = [scanning];
        assert_eq!(with_waited(Duration::ZERO, &scanning), [Decision::Recycle { node: "done".into() }]);
        let decisions = plan(&waiting, &[done.clone(), ready], &scanning, &mut []);
        assert!(
            matches!(&decisions[0], Decision::Assign { nodes, .. } if nodes == &["ready"]),
            "{decisions:?}"
        );
        assert_eq!(decisions[1], Decision::Recycle { node: "done".into() });
        // Held by nobody, the old allocation does not count against the tenant any more.
        let limit = TenantLimit::new(
            "t",
            nodepool_crds::TenantLimitSpec {
                tenant: "t".into(),
                limits: nodepool_crds::provider::ResourceLimits {
                    max_servers: Some(1),
                    ..Default::default()
                },
            },
        );
        let mut tenant_done = (*done).clone();
        tenant_done.status.as_mut().unwrap().tenant = Some("t".into());
        let budgets = tenant_budgets(&[Arc::new(limit)], &[Arc::new(tenant_done)]);
        assert_eq!(budgets[0].used.servers, 0);
    }

    #[test]
    fn a_hand_out_whose_allocations_are_missing_is_undone_after_a_while() {
        let fulfilled = |allocation_id: Option<&str>, ago: u64| {
            let mut request = (*request("100-0000000001", &["l"], 0)).clone();
            request.status = Some(nodepool_crds::NodeRequestStatus {
                state: NodeRequestState::Fulfilled,
                state_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::now() - Duration::from_secs(ago),
                )),
                nodes: vec!["n".into()],
                allocation_id: allocation_id.map(str::to_owned),
                ..Default::default()
            });
            Arc::new(request)
        };
        let allocated = |allocation_id: &str| {
            let mut node = (*node("n", "p", &["l"])).clone();
            let status = node.status.as_mut().unwrap();
            status.allocated_to = Some("100-0000000001".into());
            status.allocation_id = Some(allocation_id.into());
            Arc::new(node)
        };
        let pools = [pool("p", 100, &["l"])];
        let undo = [Decision::Undo { request: "100-0000000001".into() }];
        let stale = STRANDED_AFTER.as_secs() + 1;
        assert_eq!(plan(&[fulfilled(Some("a1"), stale)], &[], &pools, &mut []), undo);
        assert_eq!(plan(&[fulfilled(Some("a1"), stale)], &[allocated("a0")], &pools, &mut []), undo);
        // Not yet: the operator that wrote it may still be reverting it.
        assert_eq!(plan(&[fulfilled(Some("a1"), 5)], &[], &pools, &mut []), []);
        // A node shows the allocation: handed out.
        assert_eq!(plan(&[fulfilled(Some("a1"), stale)], &[allocated("a1")], &pools, &mut []), []);
        // Fulfilled after its launches, without an allocation id: the allocations came first.
        assert_eq!(plan(&[fulfilled(None, stale)], &[], &pools, &mut []), []);
    }

    #[test]
    fn a_node_not_yet_in_zookeeper_is_free() {
        let mut unregistered = (*node("n", "p", &["l"])).clone();
        unregistered.status.as_mut().unwrap().zookeeper = None;
        assert!(unregistered.is_free(), "a node just launched");
        // A static slot back from use: the view is of its last registration (Zuul used it).
        let mut reregistered = (*node("n", "p", &["l"])).clone();
        let status = reregistered.status.as_mut().unwrap();
        status.registration = 1;
        let view = status.zookeeper.as_mut().unwrap();
        (view.registration, view.zuul_state, view.locked) = (0, Some(NodeState::Used), true);
        assert!(reregistered.is_free(), "the view of the last use says nothing of this one");
    }

    fn cloud_pool(max_servers: Option<u32>, labels: &[&str]) -> PoolView {
        let footprints = labels
            .iter()
            .map(|l| {
                (l.to_string(), NodeResources { cores: 2, ram: 1024, instances: 1, ..Default::default() })
            })
            .collect();
        PoolView {
            launch: Some(LaunchView {
                footprints,
                pool_limits: ResourceLimits { max_servers, ..Default::default() },
                ..Default::default()
            }),
            ..pool("c", 100, labels)
        }
    }

    fn launching(name: &str, request: &str, state: NodeState) -> Arc<PoolNode> {
        let mut node = (*node(name, "c", &["l"])).clone();
        let status = node.status.as_mut().unwrap();
        status.state = state;
        status.allocated_to = Some(request.into());
        status.resources = Some(NodeResources { cores: 2, ram: 1024, instances: 1, ..Default::default() });
        Arc::new(node)
    }

    fn pending(id: &str, labels: &[&str]) -> Arc<NodeRequest> {
        let mut request = (*request(id, labels, 0)).clone();
        request.status = Some(nodepool_crds::NodeRequestStatus {
            state: NodeRequestState::Pending,
            provider: Some("c".into()),
            pool: Some("main".into()),
            ..Default::default()
        });
        Arc::new(request)
    }

    #[test]
    fn a_cloud_pool_launches_within_its_limit_and_then_requests_wait() {
        let requests = [request("100-0000000001", &["l"], 0), request("100-0000000002", &["l"], 0)];
        let decisions = plan(&requests, &[], &[cloud_pool(Some(1), &["l"])], &mut []);
        assert!(
            matches!(&decisions[0], Decision::Launch { request, launch, reuse, .. }
                if request == "100-0000000001" && launch.len() == 1 && reuse.is_empty()),
            "{decisions:?}"
        );
        assert!(matches!(&decisions[1], Decision::Wait { reason: WaitReason::AtQuota, .. }), "{decisions:?}");
    }

    #[test]
    fn a_label_that_cannot_be_launched_is_declined_with_the_reason() {
        let mut pool = cloud_pool(None, &["l"]);
        let launch = pool.launch.as_mut().unwrap();
        launch.footprints.clear();
        launch.unlaunchable.insert("l".into(), "Image \"x\" does not exist".into());
        let decisions = plan(&[request("100-0000000001", &["l"], 0)], &[], &[pool], &mut []);
        assert!(
            matches!(&decisions[0], Decision::Decline { message, .. } if message.contains("does not exist")),
            "{decisions:?}"
        );
    }

    #[test]
    fn a_request_bigger_than_the_pool_could_ever_hold_is_declined() {
        let decisions =
            plan(&[request("100-0000000001", &["l", "l"], 0)], &[], &[cloud_pool(Some(1), &["l"])], &mut []);
        assert!(
            matches!(&decisions[0], Decision::Decline { message, .. } if message.contains("limits")),
            "{decisions:?}"
        );
    }

    #[test]
    fn a_pending_request_is_fulfilled_when_its_nodes_are_ready_and_declined_when_one_failed() {
        let id = "100-0000000001";
        let ready = [launching("a", id, NodeState::Ready), launching("b", id, NodeState::Ready)];
        let decisions = plan(&[pending(id, &["l", "l"])], &ready, &[cloud_pool(None, &["l"])], &mut []);
        assert!(matches!(&decisions[0], Decision::Assign { nodes, .. } if nodes.len() == 2), "{decisions:?}");

        let building = [launching("a", id, NodeState::Ready), launching("b", id, NodeState::Building)];
        assert!(
            plan(&[pending(id, &["l", "l"])], &building, &[cloud_pool(None, &["l"])], &mut []).is_empty()
        );

        let failed = [launching("a", id, NodeState::Ready), launching("b", id, NodeState::Failed)];
        let decisions = plan(&[pending(id, &["l", "l"])], &failed, &[cloud_pool(None, &["l"])], &mut []);
        assert!(
            matches!(&decisions[0], Decision::Decline { release, message, .. } if release == &["a"] && message.contains("b")),
            "{decisions:?}"
        );
    }

    #[test]
    fn our_pools_yield_to_another_launchers_better_or_preferred_pool() {
        let nodes = [node("p1", "p", &["l"])];
        let pools = [pool("p", 50, &["l"])];
        let other = |provider: &str, priority| nodepool_crds::node_request::OtherLauncherPool {
            id: format!("nodepool-{provider}"),
            provider: provider.into(),
            priority,
        };
        let with_others = |id: &str, others: Vec<nodepool_crds::node_request::OtherLauncherPool>| {
            let mut request = (*request(id, &["l"], 0)).clone();
            request.spec.other_launchers = others;
            Arc::new(request)
        };
        // A better-priority pool elsewhere takes it; ours waits, saying why.
        let decisions =
            plan(&[with_others("100-0000000001", vec![other("np", 10)])], &nodes, &pools, &mut []);
        assert!(
            matches!(&decisions[0], Decision::Wait { reason: WaitReason::OtherLauncher, message, .. } if message.contains("nodepool-np (priority 10)")),
            "{decisions:?}"
        );
        // A worse (or equal) one does not.
        let decisions =
            plan(&[with_others("100-0000000002", vec![other("np", 50)])], &nodes, &pools, &mut []);
        assert!(
            matches!(&decisions[0], Decision::Assign { provider, .. } if provider == "p"),
            "{decisions:?}"
        );
        // The preferred provider is only elsewhere: it goes there, whatever the priorities.
        let mut preferring = (*with_others("100-0000000003", vec![other("np", 90)])).clone();
        preferring.spec.preferred_provider = Some("np".into());
        let decisions = plan(&[Arc::new(preferring)], &nodes, &pools, &mut []);
        assert!(
            matches!(&decisions[0], Decision::Wait { reason: WaitReason::OtherLauncher, .. }),
            "{decisions:?}"
        );
    }

    #[test]
    fn a_failed_launch_already_being_deleted_still_declines_the_request() {
        let id = "100-0000000001";
        let mut torn_down = (*launching("b", id, NodeState::Deleting)).clone();
        let status = torn_down.status.as_mut().unwrap();
        status.conditions.push(conditions::condition(
            conditions::types::LAUNCHED,
            false,
            conditions::reasons::LAUNCH_FAILED,
            "3 attempt(s) failed",
            None,
        ));
        let nodes = [launching("a", id, NodeState::Ready), Arc::new(torn_down)];
        let decisions = plan(&[pending(id, &["l", "l"])], &nodes, &[cloud_pool(None, &["l"])], &mut []);
        assert!(
            matches!(&decisions[0], Decision::Decline { release, .. } if release == &["a"]),
            "{decisions:?}"
        );
    }

    #[test]
    fn a_pending_request_whose_pool_is_gone_is_declined_and_its_nodes_released() {
        let id = "100-0000000001";
        let nodes = [launching("a", id, NodeState::Ready), launching("b", id, NodeState::Deleting)];
        // `pending` is in pool c/main; only another provider's pool is left.
        let mut other = cloud_pool(None, &["l"]);
        other.provider = "other".into();
        let decisions = plan(&[pending(id, &["l", "l"])], &nodes, &[other], &mut []);
        assert!(
            matches!(&decisions[0], Decision::Decline { release, message, pools, .. }
                if release == &["a"] && message.contains("c/main is gone") && pools == &["other/main"]),
            "{decisions:?}"
        );
    }

    #[test]
    fn an_aborted_launch_is_replaced_once_the_pool_is_not_paused() {
        let id = "100-0000000001";
        let nodes = [launching("a", id, NodeState::Aborted)];
        let mut paused = cloud_pool(None, &["l"]);
        paused.launch.as_mut().unwrap().paused = Some("quota".into());
        assert!(plan(&[pending(id, &["l"])], &nodes, &[paused], &mut []).is_empty());
        let decisions = plan(&[pending(id, &["l"])], &nodes, &[cloud_pool(None, &["l"])], &mut []);
        assert!(
            matches!(&decisions[0], Decision::Launch { launch, .. } if launch.len() == 1),
            "{decisions:?}"
        );
    }

    #[test]
    fn min_ready_launches_spares_up_to_the_pool_limit() {
        let label =
            Arc::new(Label::new("l", nodepool_crds::LabelSpec { min_ready: 3, ..Default::default() }));
        let pools = [cloud_pool(Some(2), &["l"])];
        let back_for = HashMap::new();
        let world = World {
            requests: &[],
            nodes: &[],
            pools: &pools,
            labels: std::slice::from_ref(&label),
            back_for: &back_for,
            now: Timestamp::now(),
        };
        let decisions = super::plan(&world, &mut []);
        assert!(matches!(&decisions[..], [Decision::LaunchSpare { count: 2, .. }]), "{decisions:?}");
        // A ready, unallocated node counts as a spare.
        let spare = (*node("s", "c", &["l"])).clone();
        let nodes = [Arc::new(spare)];
        let world = World {
            requests: &[],
            nodes: &nodes,
            pools: &pools,
            labels: std::slice::from_ref(&label),
            back_for: &back_for,
            now: Timestamp::now(),
        };
        let decisions = super::plan(&world, &mut []);
        assert!(
            matches!(&decisions[..], [Decision::LaunchSpare { count: 1, spares, .. }] if spares == &["s"]),
            "{decisions:?}"
        );
    }
}
