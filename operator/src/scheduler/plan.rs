//! Deciding which requests get which nodes, as a pure function of what is in the caches, in
//! Nodepool's order (zk-protocol.md §6.2, §6.3):
//!
//! 1. requests by priority class (`100` < `200` < `300` < `900`), relative priority, then age;
//! 2. for each, the pools that serve every label, preferred provider first, then pool priority;
//! 3. the first such pool with a free ready node per label gets the request (all nodes of one
//!    request from one pool); otherwise the request waits, and if no pool of ours serves its
//!    labels at all, it is declined.

use std::{
    cmp::Ordering,
    collections::{BTreeSet, HashSet},
};

use kube::ResourceExt;
use nodepool_crds::{
    NodeRequest, NodeRequestState, NodeState, PoolNode, Provider, TenantLimit, conditions,
    provider::{ResourceLimits, ResourceUsage},
};

/// What the scheduler does with one request in this pass.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Hand these nodes (names, in label order) from `provider/pool` to the request.
    Assign { request: String, provider: String, pool: String, nodes: Vec<String> },
    /// Leave it waiting, saying why.
    Wait { request: String, reason: &'static str, message: String },
    /// None of our pools can ever serve it.
    Decline { request: String, pools: Vec<String>, message: String },
}

/// A pool of ours, as the scheduler sees it.
#[derive(Clone, Debug)]
pub struct PoolView {
    pub provider: String,
    pub pool: String,
    pub priority: i32,
    pub labels: BTreeSet<String>,
    /// False when the provider is paused or not Ready: the pool keeps its labels (so requests
    /// are not declined) but takes nothing new.
    pub usable: bool,
}

/// What one tenant may use and uses, as the scheduler tracks it through a pass.
#[derive(Clone, Debug)]
pub struct TenantBudget {
    pub tenant: String,
    pub limits: ResourceLimits,
    pub used: ResourceUsage,
}

impl TenantBudget {
    /// Whether `more` still fits.
    fn fits(&self, more: &ResourceUsage) -> bool {
        let within =
            |limit: Option<u64>, used: u64, more: u64| limit.is_none_or(|limit| used + more <= limit);
        within(self.limits.max_servers.map(u64::from), self.used.servers.into(), more.servers.into())
            && within(self.limits.max_cores.map(u64::from), self.used.cores.into(), more.cores.into())
            && within(self.limits.max_ram, self.used.ram, more.ram)
    }

    fn add(&mut self, more: &ResourceUsage) {
        self.used.servers += more.servers;
        self.used.cores += more.cores;
        self.used.ram += more.ram;
    }
}

/// What a set of nodes holds against quota: one server each, plus their cores and memory.
pub fn footprint<'a>(nodes: impl IntoIterator<Item = &'a PoolNode>) -> ResourceUsage {
    let mut usage = ResourceUsage::default();
    for node in nodes {
        usage.servers += 1;
        if let Some(resources) = node.status.as_ref().and_then(|s| s.resources.as_ref()) {
            usage.cores += resources.cores;
            usage.ram += resources.ram;
        }
    }
    usage
}

/// Every tenant's limits with what its nodes hold now (any provider, any state).
pub fn tenant_budgets(
    limits: &[std::sync::Arc<TenantLimit>],
    nodes: &[std::sync::Arc<PoolNode>],
) -> Vec<TenantBudget> {
    limits
        .iter()
        .map(|limit| {
            let tenant = limit.spec.tenant.clone();
            let held = nodes.iter().map(|n| n.as_ref()).filter(|n| {
                n.status.as_ref().and_then(|s| s.tenant.as_deref()) == Some(tenant.as_str())
                    && n.status.as_ref().is_none_or(|s| s.state != NodeState::Deleted)
            });
            TenantBudget { used: footprint(held), limits: limit.spec.limits.clone(), tenant }
        })
        .collect()
}

/// Every pool of every Provider.
pub fn pools(providers: &[std::sync::Arc<Provider>]) -> Vec<PoolView> {
    let mut pools = Vec::new();
    for provider in providers {
        let ready = provider
            .status
            .as_ref()
            .and_then(|s| conditions::find(&s.conditions, conditions::types::READY))
            .is_none_or(|c| c.status != "False");
        for pool in &provider.spec.pools {
            let labels = match &pool.hosts {
                Some(hosts) => hosts.iter().flat_map(|h| h.labels.iter().cloned()).collect(),
                None => pool.labels.iter().map(|l| l.name.clone()).collect(),
            };
            pools.push(PoolView {
                provider: provider.name_any(),
                pool: pool.name.clone(),
                priority: pool.priority.or(provider.spec.priority).unwrap_or(100),
                labels,
                usable: ready && !provider.spec.paused,
            });
        }
    }
    pools
}

/// Whether the scheduler still has to decide on `request`.
pub fn is_open(request: &NodeRequest) -> bool {
    request.metadata.deletion_timestamp.is_none()
        && request.status.as_ref().is_none_or(|s| s.state == NodeRequestState::Requested)
}

/// Nodepool's request order: priority class, relative priority, then sequence (age).
pub fn request_order(a: &NodeRequest, b: &NodeRequest) -> Ordering {
    let key = |r: &NodeRequest| {
        let (class, sequence) = r.spec.request_id.split_once('-').unwrap_or(("", ""));
        (class.to_owned(), r.spec.relative_priority, sequence.to_owned())
    };
    key(a).cmp(&key(b))
}

/// Whether a node can be handed to a request right now.
pub fn is_free(node: &PoolNode) -> bool {
    let Some(status) = &node.status else { return false };
    let zookeeper = status.zookeeper.as_ref();
    node.metadata.deletion_timestamp.is_none()
        && status.state == NodeState::Ready
        && status.allocated_to.is_none()
        && zookeeper.is_some_and(|z| z.node_id.is_some() && !z.locked && z.zuul_state.is_none())
}

/// Decides on every open request, in order. Nodes assigned earlier in the pass are not offered
/// again.
pub fn plan(
    requests: &[std::sync::Arc<NodeRequest>],
    nodes: &[std::sync::Arc<PoolNode>],
    pools: &[PoolView],
    tenants: &mut [TenantBudget],
) -> Vec<Decision> {
    let mut open: Vec<&NodeRequest> = requests.iter().map(|r| r.as_ref()).filter(|r| is_open(r)).collect();
    open.sort_by(|a, b| request_order(a, b));
    let mut taken: HashSet<String> = HashSet::new();
    let mut free: Vec<&PoolNode> = nodes.iter().map(|n| n.as_ref()).filter(|n| is_free(n)).collect();
    free.sort_by_key(|n| n.metadata.creation_timestamp.clone().map(|t| t.0));

    let mut decisions = Vec::new();
    for request in open {
        let name = request.name_any();
        let labels = &request.spec.labels;
        let mut candidates: Vec<&PoolView> =
            pools.iter().filter(|p| labels.iter().all(|label| p.labels.contains(label))).collect();
        if candidates.is_empty() {
            let missing: BTreeSet<&String> =
                labels.iter().filter(|l| !pools.iter().any(|p| p.labels.contains(*l))).collect();
            let message = if missing.is_empty() {
                format!("no single pool serves all of {labels:?}")
            } else {
                format!("no provider serves label(s) {missing:?}")
            };
            let pools = pools.iter().map(|p| format!("{}/{}", p.provider, p.pool)).collect();
            decisions.push(Decision::Decline { request: name, pools, message });
            continue;
        }
        let preferred = request.spec.preferred_provider.as_deref();
        candidates.sort_by_key(|p| {
            (Some(p.provider.as_str()) != preferred, p.priority, p.provider.clone(), p.pool.clone())
        });
        let mut assigned = None;
        for pool in candidates.iter().filter(|p| p.usable) {
            let mut chosen: Vec<&PoolNode> = Vec::new();
            for label in labels {
                let found = free.iter().find(|n| {
                    n.spec.provider == pool.provider
                        && n.spec.pool == pool.pool
                        && n.spec.labels.contains(label)
                        && !taken.contains(&n.name_any())
                        && !chosen.iter().any(|c| c.name_any() == n.name_any())
                });
                match found {
                    Some(node) => chosen.push(node),
                    None => break,
                }
            }
            if chosen.len() == labels.len() {
                assigned = Some((pool, chosen));
                break;
            }
        }
        // A tenant at its limit waits (Nodepool never declines for tenant quota).
        let budget = request.spec.tenant.as_ref().and_then(|t| tenants.iter_mut().find(|b| &b.tenant == t));
        if let (Some((_, chosen)), Some(budget)) = (&assigned, budget) {
            let need = footprint(chosen.iter().copied());
            if !budget.fits(&need) {
                let message = format!(
                    "tenant {} is at its limit (uses {} servers, {} cores, {} MiB)",
                    budget.tenant, budget.used.servers, budget.used.cores, budget.used.ram
                );
                decisions.push(Decision::Wait { request: name, reason: "TenantLimit", message });
                continue;
            }
            budget.add(&need);
        }
        match assigned {
            Some((pool, chosen)) => {
                let nodes: Vec<String> = chosen.iter().map(|n| n.name_any()).collect();
                taken.extend(nodes.iter().cloned());
                decisions.push(Decision::Assign {
                    request: name,
                    provider: pool.provider.clone(),
                    pool: pool.pool.clone(),
                    nodes,
                });
            }
            None => {
                let (reason, message) = if candidates.iter().all(|p| !p.usable) {
                    (
                        "ProvidersUnavailable",
                        format!("every pool serving {labels:?} is paused or its provider is not Ready"),
                    )
                } else {
                    let names: Vec<String> =
                        candidates.iter().map(|p| format!("{}/{}", p.provider, p.pool)).collect();
                    ("NoFreeNodes", format!("waiting for free nodes for {labels:?} in {}", names.join(", ")))
                };
                decisions.push(Decision::Wait { request: name, reason, message });
            }
        }
    }
    decisions
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nodepool_crds::{NodeRequestSpec, PoolNodeSpec, PoolNodeStatus, ZooKeeperView};

    use super::*;

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
        }
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
        assert!(matches!(&decisions[2], Decision::Wait { reason: "NoFreeNodes", .. }));
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
        assert!(matches!(&decisions[1], Decision::Wait { reason: "TenantLimit", .. }), "{decisions:?}");
        assert!(matches!(&decisions[2], Decision::Assign { .. }), "t2 has no limit: {decisions:?}");
    }

    #[test]
    fn locked_allocated_or_unregistered_nodes_are_not_free() {
        let mut locked = (*node("n", "p", &["l"])).clone();
        locked.status.as_mut().unwrap().zookeeper.as_mut().unwrap().locked = true;
        assert!(!is_free(&locked));
        let mut allocated = (*node("n", "p", &["l"])).clone();
        allocated.status.as_mut().unwrap().allocated_to = Some("100-0000000009".into());
        assert!(!is_free(&allocated));
        let mut unregistered = (*node("n", "p", &["l"])).clone();
        unregistered.status.as_mut().unwrap().zookeeper = None;
        assert!(!is_free(&unregistered));
        assert!(is_free(&node("n", "p", &["l"])));
    }
}
