//! ZooKeeper restarted under a running system: long enough for the bridge's 10 s session to
//! expire while Zuul's 120 s session (and its node locks) survives. The bridge must start a new
//! session, resync, keep its hands off Zuul's locked nodes, and go on serving.
//!
//! This restarts the shared ZooKeeper, so it is the only test in this binary.

use std::time::Duration;

use anyhow::{Context, Result};
use nodepool_e2e::{stack::Stack, zuul::Zuul};
use serde_json::json;

#[tokio::test]
async fn zookeeper_restart_expires_the_bridge_session_and_loses_nothing() -> Result<()> {
    let mut stack = Stack::start("zk-restart").await?;
    stack.apply_provider(stack.static_provider("lab", 2)).await?;
    stack.wait_for_ready_nodes(3, Duration::from_secs(60)).await?;
    let mut zuul = Zuul::connect(&stack).await?;

    // A build holds a node (locked, in-use) across the outage.
    let running = zuul.request(&["static-label"]).await?;
    let outcome = zuul.wait(&running, 60).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let held_node = outcome["nodes"][0].as_str().context("node id")?.to_owned();
    let build = zuul.call("accept", json!({"request_id": running})).await?["build"].clone();
    zuul.call("use", json!({"build": build})).await?;

    // Down for longer than the bridge's session timeout (10 s), shorter than Zuul's (120 s).
    stack.env.restart_zookeeper(Duration::from_secs(13)).await?;

    // The held node is untouched: still in-use and locked by Zuul.
    let node = zuul.call("get_node", json!({"node_id": held_node})).await?;
    assert_eq!(node["data"]["state"], "in-use", "{node}");
    assert_eq!(node["locked"], true, "{node}");

    // New requests are served by the bridge's new session.
    let after = zuul.request(&["static-label"]).await?;
    let served = zuul.wait(&after, 90).await?;
    assert_eq!(served["state"], "fulfilled", "{served}");
    zuul.run_build(&after).await?;

    // The build that ran through the outage returns its node, which is recycled.
    zuul.call("return", json!({"build": build})).await?;
    let gone = zuul.call("wait_node_gone", json!({"node_id": held_node, "timeout": 30})).await?;
    assert_eq!(gone["gone"], true, "the node used across the outage was not recycled");
    stack.wait_for_ready_nodes(3, Duration::from_secs(60)).await?;
    Ok(())
}
