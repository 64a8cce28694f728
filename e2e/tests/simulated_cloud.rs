//! Cloud launches through the driver framework, on the simulated cloud, driven by Zuul's own
//! client: launch → ready → use → delete, min-ready, failed launches, pool limits and the
//! cloud refusing a launch for capacity (abort, pause, resume).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use nodepool_crds::{Label, NodeState, PoolNode, Provider};
use nodepool_e2e::{stack::Stack, zuul::Zuul};
use serde_json::json;

const WAIT: u64 = 60;

/// Waits until `check` holds for the stack's nodes.
async fn wait_nodes(stack: &Stack, what: &str, check: impl Fn(&[PoolNode]) -> bool) -> Result<Vec<PoolNode>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(WAIT);
    loop {
        let nodes = stack.nodes().await?;
        if check(&nodes) {
            return Ok(nodes);
        }
        if tokio::time::Instant::now() > deadline {
            let states: Vec<String> = nodes
                .iter()
                .map(|n| {
                    format!(
                        "{}={:?}",
                        n.metadata.name.clone().unwrap_or_default(),
                        n.status.as_ref().map(|s| s.state)
                    )
                })
                .collect();
            bail!("{what}: not reached after {WAIT}s; nodes: {states:?}; logs in {}", stack.dir.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn state(node: &PoolNode) -> NodeState {
    node.status.as_ref().map(|s| s.state).unwrap_or_default()
}

fn pools(max_servers: Option<u32>) -> serde_json::Value {
    json!([{
        "name": "main", "hostKeyChecking": false, "maxServers": max_servers,
        "nodeAttributes": {"executor-zone": "sim"},
        "labels": [{"name": "sim-small", "instanceType": "small"}, {"name": "sim-large", "instanceType": "large"},
                   {"name": "sim-bogus", "instanceType": "no-such-flavor"}],
    }])
}

async fn provider_ready(stack: &Stack, name: &str) -> Result<Provider> {
    let api: kube::Api<Provider> = kube::Api::namespaced(stack.client.clone(), &stack.namespace);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(WAIT);
    loop {
        let provider = api.get(name).await?;
        let ready = provider.status.as_ref().and_then(|s| {
            nodepool_crds::conditions::find(&s.conditions, nodepool_crds::conditions::types::READY).cloned()
        });
        if ready.as_ref().is_some_and(|c| c.status == "True")
            && provider.status.as_ref().is_some_and(|s| !s.pools.is_empty())
        {
            return Ok(provider);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("provider {name} not Ready: {ready:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn zuul_gets_launched_nodes_and_they_are_deleted_after_use() -> Result<()> {
    let stack = Stack::start("sim-launch").await?;
    stack.apply_provider(stack.simulated_provider("sim", json!({"pools": pools(None)}))).await?;
    let provider = provider_ready(&stack, "sim").await?;
    let pool = &provider.status.as_ref().unwrap().pools[0];
    let small = pool.labels.iter().find(|l| l.name == "sim-small").context("sim-small status")?;
    assert!(small.launchable);
    assert_eq!(small.resources.as_ref().map(|r| (r.cores, r.ram)), Some((1, 1024)));
    let bogus = pool.labels.iter().find(|l| l.name == "sim-bogus").context("sim-bogus status")?;
    assert!(!bogus.launchable);
    assert!(bogus.message.as_deref().unwrap_or_default().contains("no-such-flavor"), "{bogus:?}");
    assert!(stack.nodes().await?.is_empty(), "nothing is launched before it is asked for");

    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["sim-small", "sim-large"]).await?;
    let outcome = zuul.wait(&request, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    assert_eq!(outcome["requestor_data_preserved"], true, "{outcome}");
    let nodes = stack.nodes().await?;
    assert_eq!(nodes.len(), 2, "one launch per label");
    for node in &nodes {
        let status = node.status.as_ref().unwrap();
        assert_eq!(status.state, NodeState::Ready);
        assert!(status.external_id.as_deref().unwrap_or_default().starts_with("sim-"), "{status:?}");
        assert!(status.interface_ip.is_some());
        assert_eq!(status.allocated_to.as_deref(), Some(request.as_str()));
        assert_eq!(status.attributes.as_ref().unwrap()["executor-zone"], "sim");
    }
    // Zuul sees nodes in label order, with the cloud's data.
    let accepted = zuul.call("accept", json!({"request_id": request})).await?;
    let build = accepted["build"].clone();
    let zuul_nodes = accepted["nodes"].as_array().context("build nodes")?;
    assert_eq!(zuul_nodes[0]["type"], json!(["sim-small"]));
    assert_eq!(zuul_nodes[1]["type"], json!(["sim-large"]));
    assert_eq!(zuul_nodes[0]["provider"], "sim");
    assert_eq!(zuul_nodes[0]["connection_port"], 22);
    zuul.call("use", json!({"build": build})).await?;
    zuul.call("return", json!({"build": build})).await?;
    wait_nodes(&stack, "used nodes deleted", |nodes| nodes.is_empty()).await?;

    // A label whose flavor the cloud does not know is declined with the reason.
    let bad = zuul.request(&["sim-bogus"]).await?;
    let outcome = zuul.wait(&bad, WAIT).await?;
    assert_eq!(outcome["state"], "failed", "{outcome}");
    Ok(())
}

#[tokio::test]
async fn min_ready_keeps_spare_nodes_and_requests_use_them() -> Result<()> {
    let stack = Stack::start("sim-min-ready").await?;
    stack.apply_provider(stack.simulated_provider("sim", json!({"pools": pools(None)}))).await?;
    stack
        .apply::<Label>(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Label",
            "metadata": {"name": "sim-small"}, "spec": {"minReady": 2}}))
        .await?;
    let spare = |nodes: &[PoolNode]| {
        nodes
            .iter()
            .filter(|n| {
                state(n) == NodeState::Ready
                    && n.status.as_ref().is_some_and(|s| s.allocated_to.is_none())
                    && n.status
                        .as_ref()
                        .and_then(|s| s.zookeeper.as_ref())
                        .is_some_and(|z| z.node_id.is_some())
            })
            .count()
    };
    let before = wait_nodes(&stack, "two spare nodes", |nodes| spare(nodes) == 2).await?;
    assert_eq!(before.len(), 2, "exactly minReady nodes are launched");

    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["sim-small"]).await?;
    let outcome = zuul.wait(&request, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let after =
        wait_nodes(&stack, "spares replenished", |nodes| spare(nodes) == 2 && nodes.len() == 3).await?;
    let served = after
        .iter()
        .find(|n| n.status.as_ref().and_then(|s| s.allocated_to.as_deref()) == Some(request.as_str()))
        .context("the node handed out")?;
    assert!(
        before.iter().any(|n| n.metadata.name == served.metadata.name),
        "the request was served from a spare node, not a new launch"
    );
    Ok(())
}

#[tokio::test]
async fn failed_launches_are_retried_then_the_request_is_declined() -> Result<()> {
    let stack = Stack::start("sim-failures").await?;
    let spec = json!({"pools": pools(None), "launchRetries": 2, "simulated": {"failureRate": 1.0}});
    stack.apply_provider(stack.simulated_provider("sim", spec)).await?;
    provider_ready(&stack, "sim").await?;
    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["sim-small"]).await?;
    let outcome = zuul.wait(&request, WAIT).await?;
    assert_eq!(outcome["state"], "failed", "{outcome}");
    assert!(outcome["declined_by"].as_array().is_some_and(|d| !d.is_empty()), "{outcome}");
    // The failed node is deleted (its instances were cleaned up attempt by attempt).
    wait_nodes(&stack, "failed node deleted", |nodes| nodes.is_empty()).await?;
    Ok(())
}

#[tokio::test]
async fn pool_limits_make_requests_wait_and_capacity_errors_pause_the_pool() -> Result<()> {
    let stack = Stack::start("sim-quota").await?;
    // The pool allows two servers, but the cloud has room for one: the second launch is refused
    // by the cloud (aborted, pool paused) and succeeds once the first node is gone.
    let spec = json!({"pools": pools(Some(2)), "simulated": {"capacity": 1}});
    stack.apply_provider(stack.simulated_provider("sim", spec)).await?;
    provider_ready(&stack, "sim").await?;
    let mut zuul = Zuul::connect(&stack).await?;

    let first = zuul.request(&["sim-small"]).await?;
    assert_eq!(zuul.wait(&first, WAIT).await?["state"], "fulfilled");
    let second = zuul.request(&["sim-small"]).await?;
    // The third only once the second is accepted: submitted together, either may be mirrored
    // (and so accepted) first.
    nodepool_e2e::wait::until("the second request accepted", Duration::from_secs(WAIT), async || {
        let request = zuul.call("get_request", json!({"request_id": second})).await?;
        Ok((request["data"]["state"] != "requested").then_some(()))
    })
    .await?;
    let third = zuul.request(&["sim-small"]).await?;
    // The second is accepted and its launch aborted; the third waits for the pool's limit.
    let api: kube::Api<Provider> = kube::Api::namespaced(stack.client.clone(), &stack.namespace);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(WAIT);
    loop {
        let provider = api.get("sim").await?;
        let pool = provider.status.as_ref().and_then(|s| s.pools.first().cloned()).unwrap_or_default();
        if pool.paused {
            assert!(pool.paused_reason.as_deref().unwrap_or_default().contains("capacity"), "{pool:?}");
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the pool never paused: {pool:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Zuul and other launchers see the pause in the pool component, as from Nodepool.
    let zk = stack.env.zookeeper(Some(&stack.chroot)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut paused = false;
        for child in zk.list_children("/nodepool/components/pool").await? {
            let (data, _) = zk.get_data(&format!("/nodepool/components/pool/{child}")).await?;
            let component: serde_json::Value = serde_json::from_slice(&data)?;
            paused |= component["provider_name"] == "sim" && component["paused"] == true;
        }
        if paused {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the pool component never said paused");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waiting = zuul.call("get_request", json!({"request_id": third})).await?;
    assert_eq!(waiting["data"]["state"], "requested", "{waiting}");

    zuul.run_build(&first).await?;
    let outcome = zuul.wait(&second, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    zuul.run_build(&second).await?;
    let outcome = zuul.wait(&third, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    Ok(())
}

/// `reuse` with `maxUses: 2` (Zuul launcher's semantics): a used node goes back to service under
/// a new ZooKeeper id and the same instance, is handed to the next request, and after its second
/// use is deleted; a label without `reuse` deletes after one use.
#[tokio::test]
async fn a_reused_node_serves_again_under_a_new_id_until_its_max_uses() -> Result<()> {
    let stack = Stack::start("sim-reuse").await?;
    let pools = json!([{"name": "main", "hostKeyChecking": false, "labels": [
        {"name": "sim-reused", "instanceType": "small", "reuse": true, "maxUses": 2, "maxAge": "1h"},
    ]}]);
    stack.apply_provider(stack.simulated_provider("sim", json!({"pools": pools}))).await?;
    provider_ready(&stack, "sim").await?;
    let mut zuul = Zuul::connect(&stack).await?;

    let mut seen = Vec::new();
    for use_number in 1..=2 {
        let request = zuul.request(&["sim-reused"]).await?;
        let outcome = zuul.wait(&request, WAIT).await?;
        assert_eq!(outcome["state"], "fulfilled", "use {use_number}: {outcome}");
        let accepted = zuul.call("accept", json!({"request_id": request})).await?;
        let node = &accepted["nodes"][0];
        seen.push((node["id"].as_str().context("node id")?.to_owned(), stack.nodes().await?));
        let build = accepted["build"].clone();
        zuul.call("use", json!({"build": build})).await?;
        zuul.call("return", json!({"build": build})).await?;
        if use_number == 1 {
            wait_nodes(&stack, "the used node back in service", |nodes| {
                nodes.len() == 1
                    && nodes[0]
                        .status
                        .as_ref()
                        .is_some_and(|s| s.registration == 1 && s.state == NodeState::Ready)
            })
            .await?;
        }
    }
    let (first_id, first_nodes) = &seen[0];
    let (second_id, second_nodes) = &seen[1];
    assert_ne!(first_id, second_id, "a new ZooKeeper id for the second use");
    assert_eq!(first_nodes.len(), 1);
    assert_eq!(second_nodes.len(), 1, "no second launch");
    let instance = |nodes: &Vec<PoolNode>| nodes[0].status.as_ref().and_then(|s| s.external_id.clone());
    assert_eq!(instance(first_nodes), instance(second_nodes), "the same instance serves again");
    wait_nodes(&stack, "deleted after its second use", |nodes| nodes.is_empty()).await?;
    Ok(())
}

/// The bridge is slowed down (a pause point) between reading a node and recording it, only
/// where it records a withdrawn request's nodes, while Zuul's events for the same node keep
/// coming. That record read the node while Zuul held its lock, and used to land after the newer
/// one: a held node then looked locked and not held, and a node the executor gave back unused
/// looked locked for good, so it was never returned to service. Two writers of one node's view
/// now take turns, each reading ZooKeeper in its turn, so the last record is the newest.
#[tokio::test]
async fn what_zuul_last_did_to_a_node_is_what_the_pool_node_shows() -> Result<()> {
    let mut stack = Stack::prepare("sim-view-order").await?;
    stack.start_operator()?;
    stack.start_bridge_with(&[(
        nodepool_service::failpoint::PAUSE_VARIABLE,
        "bridge-withdrawal-node-read=1500ms",
    )])?;
    stack.apply_provider(stack.simulated_provider("sim", json!({"pools": pools(None)}))).await?;
    provider_ready(&stack, "sim").await?;
    let mut zuul = Zuul::connect(&stack).await?;
    let view = |node: &PoolNode| node.status.as_ref().and_then(|s| s.zuul_view().cloned());

    // Held: accept, hold and return within the pause.
    let hold_request = zuul.call("autohold", json!({"job": "held-job"})).await?["hold_request_id"].clone();
    let held = zuul.request(&["sim-small"]).await?;
    let outcome = zuul.wait(&held, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let held_id = outcome["nodes"][0].as_str().context("node id")?.to_owned();
    let build = zuul.call("accept", json!({"request_id": held})).await?["build"].clone();
    zuul.call("hold", json!({"build": build, "hold_request_id": hold_request})).await?;
    zuul.call("return", json!({"build": build})).await?;

    // Given back unused (an executor that gave up before the build ran): released after 5 s.
    let unused = zuul.request(&["sim-small"]).await?;
    let outcome = zuul.wait(&unused, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let unused_id = outcome["nodes"][0].as_str().context("node id")?.to_owned();
    let build = zuul.call("accept", json!({"request_id": unused})).await?["build"].clone();
    zuul.call("release", json!({"build": build})).await?;

    let of = |nodes: &[PoolNode], id: &str| {
        nodes.iter().find(|n| view(n).and_then(|v| v.node_id).as_deref() == Some(id)).cloned()
    };
    let settled = wait_nodes(&stack, "the held node held and the unused one back in service", |nodes| {
        let held = of(nodes, &held_id).and_then(|n| view(&n));
        let unused = of(nodes, &unused_id);
        held.is_some_and(|v| v.zuul_state == Some(NodeState::Hold) && !v.locked)
            && unused.is_some_and(|n| {
                n.status.as_ref().is_some_and(|s| s.allocated_to.is_none() && s.state == NodeState::Ready)
            })
    })
    .await?;
    // Both pauses are over by now; nothing older lands afterwards.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let nodes = stack.nodes().await?;
    let held_view = of(&nodes, &held_id).and_then(|n| view(&n)).context("the held node")?;
    assert_eq!((held_view.zuul_state, held_view.locked), (Some(NodeState::Hold), false), "{held_view:?}");
    let zk = zuul.call("get_node", json!({"node_id": held_id})).await?;
    assert_eq!(zk["data"]["state"], "hold", "{zk}");
    let unused_node = of(&nodes, &unused_id).context("the unused node")?;
    assert_eq!(unused_node.status.as_ref().and_then(|s| s.allocated_to.clone()), None);
    assert_eq!(settled.len(), nodes.len(), "no other node came or went");
    Ok(())
}
