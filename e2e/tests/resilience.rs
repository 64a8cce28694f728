//! Crashes and bad input: a bridge or operator killed mid-flight loses no request and duplicates
//! no node; a malformed request fails with a clear outcome and breaks nothing else.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context, Result};
use nodepool_e2e::{stack::Stack, zuul::Zuul};
use serde_json::json;
use zookeeper_client::{Acls, CreateMode};

const WAIT: u64 = 60;

async fn ready_stack(name: &str) -> Result<Stack> {
    let stack = Stack::start(name).await?;
    stack.apply_provider(stack.static_provider("lab", 2)).await?;
    stack.wait_for_ready_nodes(3, Duration::from_secs(60)).await?;
    Ok(stack)
}

/// The node znodes in the chroot (ids).
async fn node_ids(stack: &Stack) -> Result<BTreeSet<String>> {
    let zk = stack.env.zookeeper(Some(&stack.chroot)).await?;
    Ok(zk.list_children("/nodepool/nodes").await?.into_iter().collect())
}

/// Waits until ZooKeeper holds exactly `count` nodes for the stack (one per static slot).
async fn wait_for_node_count(stack: &Stack, count: usize) -> Result<BTreeSet<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ids = node_ids(stack).await?;
        if ids.len() == count || tokio::time::Instant::now() > deadline {
            return Ok(ids);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The two processes that can crash under a running Zuul.
#[derive(Clone, Copy, Debug)]
enum Component {
    Bridge,
    Operator,
}

fn kill(stack: &mut Stack, component: Component) {
    match component {
        Component::Bridge => stack.kill_bridge(),
        Component::Operator => stack.kill_operator(),
    }
}

fn restart(stack: &mut Stack, component: Component) -> Result<()> {
    match component {
        Component::Bridge => stack.start_bridge(),
        Component::Operator => stack.start_operator(),
    }
}

/// A request made and a node returned while `component` is down are handled once it is back,
/// with every slot in ZooKeeper exactly once afterwards, and serving goes on.
async fn killed_mid_flight_loses_nothing(name: &str, component: Component) -> Result<()> {
    let mut stack = ready_stack(name).await?;
    let mut zuul = Zuul::connect(&stack).await?;

    kill(&mut stack, component);
    let first = zuul.request(&["static-label"]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pending = zuul.call("get_request", json!({"request_id": first})).await?;
    assert_eq!(pending["data"]["state"], "requested", "{component:?} down: nothing decides");
    restart(&mut stack, component)?;
    let outcome = zuul.wait(&first, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    assert_eq!(outcome["requestor_data_preserved"], true, "{outcome}");

    let build = zuul.call("accept", json!({"request_id": first})).await?["build"].clone();
    zuul.call("use", json!({"build": build})).await?;
    kill(&mut stack, component);
    zuul.call("return", json!({"build": build})).await?;
    restart(&mut stack, component)?;
    let used_node = outcome["nodes"][0].as_str().context("node id")?.to_owned();
    let gone = zuul.call("wait_node_gone", json!({"node_id": used_node, "timeout": 30})).await?;
    assert_eq!(gone["gone"], true, "the used node was not recycled after the {component:?} restart");

    // Every slot is in ZooKeeper exactly once: nothing duplicated by the restarts.
    let ids = wait_for_node_count(&stack, 3).await?;
    assert_eq!(ids.len(), 3, "node znodes after restarts: {ids:?}");

    let second = zuul.request(&["static-label", "static-label"]).await?;
    assert_eq!(zuul.wait(&second, WAIT).await?["state"], "fulfilled");
    zuul.run_build(&second).await?;
    Ok(())
}

#[tokio::test]
async fn bridge_killed_mid_flight_loses_nothing() -> Result<()> {
    killed_mid_flight_loses_nothing("bridge-restart", Component::Bridge).await
}

#[tokio::test]
async fn operator_killed_mid_flight_loses_nothing() -> Result<()> {
    killed_mid_flight_loses_nothing("operator-restart", Component::Operator).await
}

#[tokio::test]
async fn malformed_requests_fail_or_are_ignored_without_harm() -> Result<()> {
    let stack = ready_stack("malformed").await?;
    let zk = stack.env.zookeeper(Some(&stack.chroot)).await?;
    let create = CreateMode::PersistentSequential.with_acls(Acls::anyone_all());

    // A JSON object without node_types: failed, declined by our pool, with its other keys kept.
    let doc = json!({"state": "requested", "state_time": 1.0, "requestor": "test", "custom": "kept"});
    let (_, sequence) = zk.create("/nodepool/requests/200-", doc.to_string().as_bytes(), &create).await?;
    let missing_labels = format!("/nodepool/requests/200-{sequence}");
    // Not JSON at all: nothing sensible can be written back; it must just not break anything.
    let (_, sequence) = zk.create("/nodepool/requests/200-", b"{not json", &create).await?;
    let garbage = format!("/nodepool/requests/200-{sequence}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let (data, _) = zk.get_data(&missing_labels).await?;
        let doc: serde_json::Value = serde_json::from_slice(&data)?;
        if doc["state"] == "failed" || tokio::time::Instant::now() > deadline {
            break doc;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["custom"], "kept");
    assert!(failed["declined_by"].as_array().is_some_and(|d| d.len() == 1), "{failed}");
    assert!(
        failed["node_types"].is_array() && failed["requestor_data"].is_null(),
        "keys Zuul reads: {failed}"
    );
    let (data, _) = zk.get_data(&garbage).await?;
    assert_eq!(data, b"{not json", "a request we cannot parse is left as it is");
    // Only the requester deletes requests; Zuul's own cache cannot parse the garbage one either.
    zk.delete(&missing_labels, None).await?;
    zk.delete(&garbage, None).await?;

    // A well-formed request right after is served as usual.
    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["static-label"]).await?;
    assert_eq!(zuul.wait(&request, WAIT).await?["state"], "fulfilled");
    zuul.run_build(&request).await?;
    assert!(stack.bridge.as_ref().is_some_and(|b| b.is_running()), "the bridge survived");
    Ok(())
}

#[tokio::test]
async fn debris_is_cleaned_up() -> Result<()> {
    let stack = ready_stack("cleanup").await?;
    let zk = stack.env.zookeeper(Some(&stack.chroot)).await?;
    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());

    // A node znode without data (what a lock on a just-deleted node leaves behind).
    zk.create("/nodepool/nodes/12345", b"", &persistent).await?;
    // The lock directory of a request that no longer exists.
    zk.mkdir("/nodepool/requests-lock/200-0000099999", &persistent).await?;
    // A served request keeps its lock directory until the request is deleted.
    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["static-label"]).await?;
    assert_eq!(zuul.wait(&request, WAIT).await?["state"], "fulfilled");
    let lock_dir = format!("/nodepool/requests-lock/{request}");
    assert!(
        zk.check_stat(&lock_dir).await?.is_some(),
        "the request lock directory exists while the request does"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let empty_node = zk.check_stat("/nodepool/nodes/12345").await?;
        let orphan_lock = zk.check_stat("/nodepool/requests-lock/200-0000099999").await?;
        if empty_node.is_none() && orphan_lock.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "debris left: node {empty_node:?}, lock {orphan_lock:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Accepting deletes the request; then its lock directory goes too.
    zuul.run_build(&request).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while zk.check_stat(&lock_dir).await?.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "lock directory of a deleted request was kept");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test]
async fn nodes_of_a_request_cancelled_after_fulfilment_are_released() -> Result<()> {
    let stack = ready_stack("cancel-fulfilled").await?;
    let mut zuul = Zuul::connect(&stack).await?;
    // static-single has exactly one node: the second request can only get it back.
    let first = zuul.request(&["static-single"]).await?;
    let outcome = zuul.wait(&first, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let node = outcome["nodes"][0].as_str().context("node id")?.to_owned();
    zuul.call("cancel", json!({"request_id": first})).await?; // the build was dequeued

    let second = zuul.request(&["static-single"]).await?;
    let outcome = zuul.wait(&second, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    assert_eq!(outcome["nodes"][0], node.as_str(), "the released node is handed out again");
    zuul.run_build(&second).await?;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_static_host_is_taken_out_until_it_answers() -> Result<()> {
    use kube::Api;
    use nodepool_crds::{NodeState, PoolNode, conditions};
    use nodepool_e2e::sshd::Sshd;

    let stack = Stack::start("unreachable").await?;
    let mut flaky = Sshd::start(&stack.dir.join("sshd-flaky"))?;
    stack
        .apply_provider(json!({
            "apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": "lab"},
            "spec": {"driver": "static", "pools": [{"name": "main", "hosts": [
                {"name": "127.0.0.1", "labels": ["static-label"], "connectionPort": stack.sshd.port},
                {"name": "localhost", "labels": ["flaky"], "connectionPort": flaky.port, "timeout": "1s"},
            ]}]},
        }))
        .await?;
    stack.wait_for_ready_nodes(2, Duration::from_secs(60)).await?;

    flaky.stop(); // the host goes down while its node is ready
    let mut zuul = Zuul::connect(&stack).await?;
    let waiting = zuul.request(&["flaky"]).await?;
    let nodes: Api<PoolNode> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let flaky_nodes: Vec<PoolNode> = nodes
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter(|n| n.spec.labels == ["flaky"])
            .collect();
        let unreachable = flaky_nodes.iter().any(|n| {
            n.status.as_ref().is_some_and(|s| {
                s.state == NodeState::Init
                    && conditions::find(&s.conditions, "Reachable").is_some_and(|c| c.status == "False")
            })
        });
        if unreachable {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead host's node was not taken out: {flaky_nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let state = zuul.call("get_request", json!({"request_id": waiting})).await?;
    assert_eq!(state["data"]["state"], "requested", "a dead host's node must not be handed out: {state}");

    // Other hosts are not held up.
    let other = zuul.request(&["static-label"]).await?;
    assert_eq!(zuul.wait(&other, WAIT).await?["state"], "fulfilled");
    zuul.run_build(&other).await?;

    // Once the host answers again, its slot is registered and the waiting request served.
    flaky.start_again()?;
    let outcome = zuul.wait(&waiting, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    zuul.run_build(&waiting).await?;
    Ok(())
}

#[tokio::test]
async fn an_operators_hold_keeps_a_node_out_until_released() -> Result<()> {
    use kube::{
        Api,
        api::{Patch, PatchParams},
    };
    use nodepool_crds::PoolNode;

    let stack = ready_stack("operator-hold").await?;
    let nodes: Api<PoolNode> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let single = nodes
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .find(|n| n.spec.labels == ["static-single"])
        .context("static-single node")?;
    let name = single.metadata.name.clone().unwrap();
    let old_id = single.status.and_then(|s| s.zookeeper).and_then(|z| z.node_id).context("node id")?;
    let hold = json!({"spec": {"hold": {"comment": "debugging the image"}}});
    nodes.patch(&name, &PatchParams::default(), &Patch::Merge(&hold)).await?;

    let mut zuul = Zuul::connect(&stack).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let node = zuul.call("get_node", json!({"node_id": old_id})).await?;
        if node["data"]["state"] == "hold" {
            assert_eq!(node["data"]["comment"], "debugging the image", "{node}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the node was not held: {node}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let request = zuul.request(&["static-single"]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = zuul.call("get_request", json!({"request_id": request})).await?;
    assert_eq!(waiting["data"]["state"], "requested", "a held node must not be handed out: {waiting}");

    // Releasing the hold returns the slot as a fresh node, which serves the waiting request.
    nodes.patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"hold": null}}))).await?;
    let outcome = zuul.wait(&request, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    assert_ne!(outcome["nodes"][0], old_id.as_str(), "a released hold comes back under a new id");
    zuul.run_build(&request).await?;
    Ok(())
}

/// An operator that stopped after a hand-out's `fulfilled` was written but before it undid it
/// (an allocation had failed) leaves a request `fulfilled` that none of its nodes shows. The
/// bridge does not tell Zuul of it, and the operator decides on the request again once it has
/// been so for a while.
#[tokio::test]
async fn a_stranded_hand_out_is_decided_again() -> Result<()> {
    let mut stack = ready_stack("stranded-hand-out").await?;
    let mut zuul = Zuul::connect(&stack).await?;
    stack.kill_operator();
    let request = zuul.request(&["static-label"]).await?;
    let api: kube::Api<nodepool_crds::NodeRequest> =
        kube::Api::namespaced(stack.client.clone(), &stack.namespace);
    nodepool_e2e::wait::until("the request mirrored", Duration::from_secs(WAIT), async || {
        Ok(api.get_opt(&request).await?.map(|_| ()))
    })
    .await?;
    // What the stopped operator left: `fulfilled` with a ready node whose allocation was never
    // written, long enough ago to count as stranded.
    let node = stack.nodes().await?.into_iter().find(|n| n.spec.labels.contains(&"static-label".into()));
    let node = node.context("a static-label node")?.metadata.name.context("node name")?;
    let long_ago = k8s_openapi::jiff::Timestamp::now() - Duration::from_secs(120);
    let status = json!({
        "apiVersion": "nodepool.dev/v1alpha1", "kind": "NodeRequest", "metadata": {"name": request},
        "status": {"state": "fulfilled", "stateTime": long_ago.to_string(), "provider": "lab",
                   "pool": "main", "nodes": [node], "allocationId": "never-written"},
    });
    let params = kube::api::PatchParams::apply("nodepool-operator").force();
    api.patch_status(&request, &params, &kube::api::Patch::Apply(&status)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = zuul.call("get_request", json!({"request_id": request})).await?;
    assert_eq!(waiting["data"]["state"], "requested", "the bridge told Zuul of an unallocated node");

    stack.start_operator()?;
    let outcome = zuul.wait(&request, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let handed_out = api.get(&request).await?.status.context("status")?;
    assert_ne!(handed_out.allocation_id.as_deref(), Some("never-written"), "{handed_out:?}");
    zuul.run_build(&request).await?;
    Ok(())
}
