//! An unmodified Zuul 14.3 (its own client classes, driven by `e2e/zuul/zuul_driver.py`) gets
//! static nodes from the operator and the bridge exactly as it would from Nodepool 11.

use std::time::Duration;

use anyhow::{Context, Result};
use nodepool_e2e::stack::{Stack, json_lines};

fn scenario_results(output: &std::process::Output) -> Vec<(String, String)> {
    json_lines(output)
        .into_iter()
        .filter_map(|line| Some((line["scenario"].as_str()?.to_owned(), line["result"].as_str()?.to_owned())))
        .collect()
}

#[tokio::test]
async fn zuul_gets_static_nodes_like_from_nodepool() -> Result<()> {
    let stack = Stack::start("zuul-scenarios").await?;
    stack.apply_provider(stack.static_provider("lab", 2)).await?;
    let nodes = stack.wait_for_ready_nodes(3, Duration::from_secs(60)).await?;

    // Host keys come from a real SSH handshake with the sshd.
    for node in &nodes {
        assert_eq!(node.status.as_ref().unwrap().host_keys, stack.sshd.host_keys, "{:?}", node.metadata.name);
    }

    let output = stack.zuul(&["run-scenario", "all", "--timeout", "30"]).await?;
    let results = scenario_results(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let names: Vec<&str> = results.iter().map(|(name, _)| name.as_str()).collect();
    for expected in ["happy", "two-node", "unknown-label", "cancel", "revise", "autohold"] {
        assert!(names.contains(&expected), "scenario {expected} did not run; stderr:\n{stderr}");
    }
    for (name, result) in &results {
        assert_eq!(
            result,
            "pass",
            "scenario {name} failed:\n{}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    assert!(output.status.success(), "zuul_driver exited with {:?}", output.status);
    Ok(())
}

#[tokio::test]
async fn node_data_zuul_reads_is_complete() -> Result<()> {
    let stack = Stack::start("zuul-node-data").await?;
    stack.apply_provider(stack.static_provider("lab", 1)).await?;
    let nodes = stack.wait_for_ready_nodes(2, Duration::from_secs(60)).await?;
    let zk = stack.env.zookeeper(Some(&stack.chroot)).await?;
    let node = nodes.iter().find(|n| n.spec.labels == ["static-label"]).context("static-label node")?;
    let node_id = node.status.as_ref().unwrap().zookeeper.as_ref().unwrap().node_id.clone().unwrap();
    let (data, _) = zk.get_data(&format!("/nodepool/nodes/{node_id}")).await?;
    let doc: serde_json::Value = serde_json::from_slice(&data)?;
    // zk-protocol.md §6.8 / scenario 31: what Nodepool's static driver writes.
    assert_eq!(doc["state"], "ready");
    assert_eq!(doc["type"], serde_json::json!(["static-label"]));
    assert_eq!(doc["provider"], "lab");
    assert_eq!(doc["pool"], "main");
    assert_eq!(doc["launcher"], "static driver");
    assert_eq!(doc["hostname"], "127.0.0.1");
    assert_eq!(doc["interface_ip"], "127.0.0.1");
    assert_eq!(doc["external_id"], "127.0.0.1");
    assert_eq!(doc["username"], "zuul-worker");
    assert_eq!(doc["connection_type"], "ssh");
    assert_eq!(doc["connection_port"], stack.sshd.port);
    assert_eq!(doc["ssh_port"], stack.sshd.port);
    assert_eq!(doc["python_path"], "auto");
    assert_eq!(doc["shell_type"], serde_json::Value::Null);
    assert_eq!(doc["slot"], 0);
    assert_eq!(doc["attributes"], serde_json::json!({"executor-zone": "e2e"}));
    assert_eq!(doc["allocated_to"], serde_json::Value::Null);
    assert!(doc["host_keys"].as_array().is_some_and(|keys| !keys.is_empty()));
    for key in ["lock", "name", "label", "aliases"] {
        assert!(doc.get(key).is_none(), "{key} must not be written (Zuul turns keys into attributes)");
    }

    // The pool component Zuul reads for its labels API.
    let components = zk.list_children("/nodepool/components/pool").await?;
    assert_eq!(components.len(), 1, "{components:?}");
    let (data, _) = zk.get_data(&format!("/nodepool/components/pool/{}", components[0])).await?;
    let component: serde_json::Value = serde_json::from_slice(&data)?;
    assert_eq!(component["supported_labels"], serde_json::json!(["static-label", "static-single"]));
    assert_eq!(component["model_api"], 0);
    assert_eq!(component["provider_name"], "lab");
    assert!(component["id"].as_str().unwrap().starts_with("e2e-bridge-PoolWorker.lab-main-"));
    Ok(())
}

/// The leaf field paths one `managedFields` entry claims (`fieldsV1`, made of `f:`/`k:`/`v:` keys).
fn owned_paths(fields: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    let Some(map) = fields.as_object() else { return };
    let children: Vec<_> = map.iter().filter(|(key, _)| key.as_str() != ".").collect();
    if children.is_empty() {
        out.push(prefix.to_owned());
    }
    for (key, value) in children {
        owned_paths(value, &format!("{prefix}/{key}"), out);
    }
}

/// Each manager's leaf paths in an object, by manager name.
fn owners(object: &impl kube::Resource) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut owners = std::collections::BTreeMap::<String, Vec<String>>::new();
    for entry in object.meta().managed_fields.iter().flatten() {
        let manager = entry.manager.clone().unwrap_or_default();
        let fields = serde_json::to_value(&entry.fields_v1).unwrap_or_default();
        owned_paths(&fields, "", owners.entry(manager).or_default());
    }
    owners
}

/// The ownership rule, read from the apiserver's own bookkeeping: every field of a
/// NodeRequest and of a PoolNode is written by exactly one of the two components, Zuul's side
/// (`status.zookeeper`, the request's spec) by the bridge, the rest by the operator.
#[tokio::test]
async fn every_field_has_one_owner_the_operator_or_the_bridge() -> Result<()> {
    use kube::Api;
    use nodepool_crds::{BRIDGE_MANAGER, NodeRequest, OPERATOR_MANAGER, PoolNode};

    let stack = Stack::start("zuul-ownership").await?;
    stack.apply_provider(stack.static_provider("lab", 1)).await?;
    stack.wait_for_ready_nodes(2, Duration::from_secs(60)).await?;
    let mut zuul = nodepool_e2e::zuul::Zuul::connect(&stack).await?;
    let request_id = zuul.request(&["static-single"]).await?;
    assert_eq!(zuul.wait(&request_id, 60).await?["state"], "fulfilled");
    let requests: Api<NodeRequest> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let request = requests.get(&request_id).await?; // Zuul deletes it when it accepts the nodes
    let build = zuul.call("accept", serde_json::json!({"request_id": request_id})).await?["build"].clone();
    zuul.call("use", serde_json::json!({"build": build})).await?;

    let nodes: Api<PoolNode> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let node = nodepool_e2e::wait::until("a node in use", Duration::from_secs(30), async || {
        let listed = nodes.list(&Default::default()).await?.items;
        Ok(listed.into_iter().find(|n| {
            n.status.as_ref().and_then(|s| s.zuul_view()).and_then(|z| z.zuul_state)
                == Some(nodepool_crds::NodeState::InUse)
        }))
    })
    .await?;

    for (kind, owners) in [("NodeRequest", owners(&request)), ("PoolNode", owners(&node))] {
        let managers: Vec<&str> = owners.keys().map(String::as_str).collect();
        assert!(
            managers.iter().all(|m| [OPERATOR_MANAGER, BRIDGE_MANAGER].contains(m)),
            "{kind}: unexpected field managers {managers:?}"
        );
        let (operator, bridge) = (&owners[OPERATOR_MANAGER], &owners[BRIDGE_MANAGER]);
        let shared: Vec<&String> = operator.iter().filter(|path| bridge.contains(path)).collect();
        assert!(shared.is_empty(), "{kind}: fields owned by both: {shared:?}");
        let zuul_side = |p: &String| {
            p.starts_with("/f:status/f:zookeeper") || (kind == "NodeRequest" && p.starts_with("/f:spec/"))
        };
        assert!(bridge.iter().all(zuul_side), "{kind}: the bridge owns more than Zuul's side: {bridge:?}");
        assert!(
            operator.iter().all(|p| !p.starts_with("/f:status/f:zookeeper")),
            "{kind}: the operator owns part of Zuul's side: {operator:?}"
        );
    }
    let request_owners = owners(&request);
    assert!(request_owners[BRIDGE_MANAGER].iter().any(|p| p.starts_with("/f:spec/")), "{request_owners:?}");
    assert!(request_owners[BRIDGE_MANAGER].iter().all(|p| !p.starts_with("/f:status/f:state")));
    assert!(request_owners[OPERATOR_MANAGER].contains(&"/f:status/f:state".to_owned()), "{request_owners:?}");
    let node_owners = owners(&node);
    assert!(node_owners[OPERATOR_MANAGER].contains(&"/f:status/f:allocatedTo".to_owned()), "{node_owners:?}");
    assert!(
        node_owners[BRIDGE_MANAGER].contains(&"/f:status/f:zookeeper/f:zuulState".to_owned()),
        "{node_owners:?}"
    );
    zuul.call("return", serde_json::json!({"build": build})).await?;
    Ok(())
}

#[tokio::test]
async fn a_waiting_request_says_why_in_its_status_and_events() -> Result<()> {
    use k8s_openapi::api::core::v1::Event;
    use kube::{Api, api::ListParams};
    use nodepool_crds::{NodeRequest, conditions};

    let stack = Stack::start("zuul-waiting").await?;
    stack.apply_provider(stack.static_provider("lab", 1)).await?;
    stack.wait_for_ready_nodes(2, Duration::from_secs(60)).await?;
    let mut zuul = nodepool_e2e::zuul::Zuul::connect(&stack).await?;
    let first = zuul.request(&["static-single"]).await?;
    assert_eq!(zuul.wait(&first, 60).await?["state"], "fulfilled");
    let second = zuul.request(&["static-single"]).await?; // the only node is taken

    let requests: Api<NodeRequest> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let events: Api<Event> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (condition, event) = loop {
        let request = requests.get_opt(&second).await?;
        let condition = request
            .and_then(|r| r.status)
            .and_then(|s| conditions::find(&s.conditions, conditions::types::WAITING).cloned());
        let listed =
            events.list(&ListParams::default().fields(&format!("involvedObject.name={second}"))).await?;
        let event = listed.items.into_iter().find(|e| e.reason.as_deref() == Some("NoFreeNodes"));
        if (condition.is_some() && event.is_some()) || tokio::time::Instant::now() > deadline {
            break (condition, event);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let condition = condition.context("no Waiting condition")?;
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("True", "NoFreeNodes"));
    assert!(
        condition.message.contains("static-single") && condition.message.contains("lab/main"),
        "{}",
        condition.message
    );
    assert!(event.context("no NoFreeNodes event")?.message.unwrap_or_default().contains("static-single"));

    // Freeing the node serves the waiting request.
    zuul.run_build(&first).await?;
    assert_eq!(zuul.wait(&second, 60).await?["state"], "fulfilled");
    zuul.run_build(&second).await?;
    Ok(())
}

#[tokio::test]
async fn a_tenant_at_its_limit_waits_while_others_are_served() -> Result<()> {
    use kube::{
        Api,
        api::{Patch, PatchParams},
    };
    use nodepool_crds::TenantLimit;
    use serde_json::json;

    let stack = Stack::start("zuul-tenant-limit").await?;
    stack.apply_provider(stack.static_provider("lab", 3)).await?;
    stack.wait_for_ready_nodes(4, Duration::from_secs(60)).await?;
    let limits: Api<TenantLimit> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let limit = json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "TenantLimit", "metadata": {"name": "tenant-one"},
                       "spec": {"tenant": "tenant-one", "maxServers": 1}});
    limits.patch("tenant-one", &PatchParams::apply("e2e"), &Patch::Apply(&limit)).await?;

    let mut zuul = nodepool_e2e::zuul::Zuul::connect(&stack).await?;
    let request = |tenant: &str| json!({"labels": ["static-label"], "tenant": tenant});
    let first = zuul.call("request", request("tenant-one")).await?["request_id"].as_str().unwrap().to_owned();
    assert_eq!(zuul.wait(&first, 60).await?["state"], "fulfilled");
    let second =
        zuul.call("request", request("tenant-one")).await?["request_id"].as_str().unwrap().to_owned();
    let other = zuul.call("request", request("tenant-two")).await?["request_id"].as_str().unwrap().to_owned();
    assert_eq!(zuul.wait(&other, 60).await?["state"], "fulfilled", "another tenant is not held back");

    let waiting = zuul.call("get_request", json!({"request_id": second})).await?;
    assert_eq!(waiting["data"]["state"], "requested", "{waiting}");
    let declined = &waiting["data"]["declined_by"];
    assert!(declined.is_null() || declined == &json!([]), "tenant quota never declines: {waiting}");

    // Once tenant-one's first build returns its node, the waiting request is served.
    zuul.run_build(&first).await?;
    assert_eq!(zuul.wait(&second, 60).await?["state"], "fulfilled");
    zuul.run_build(&second).await?;
    zuul.run_build(&other).await?;
    Ok(())
}

#[tokio::test]
async fn a_broken_provider_says_why_and_the_others_keep_serving() -> Result<()> {
    use kube::Api;
    use nodepool_crds::{NodeRequest, Provider, conditions};
    use serde_json::json;

    let stack = Stack::start("zuul-isolation").await?;
    stack.apply_provider(stack.static_provider("lab", 1)).await?;
    // A cloud provider whose credentials Secret does not exist.
    stack
        .apply_provider(json!({
            "apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": "cloud"},
            "spec": {"driver": "aws", "aws": {"region": "us-east-1"}, "credentialsSecretRef": {"name": "missing"},
                     "pools": [{"name": "main", "labels": [{"name": "cloud-label", "instanceType": "t3.small"}]}]},
        }))
        .await?;
    stack.wait_for_ready_nodes(2, Duration::from_secs(60)).await?;
    let providers: Api<Provider> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let cloud = providers.get("cloud").await?;
        let ready =
            cloud.status.and_then(|s| conditions::find(&s.conditions, conditions::types::READY).cloned());
        if ready.is_some() || tokio::time::Instant::now() > deadline {
            break ready.context("no Ready condition on the broken provider")?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "CredentialsMissing"), "{ready:?}");
    assert!(ready.message.contains("missing"), "{}", ready.message);

    let mut zuul = nodepool_e2e::zuul::Zuul::connect(&stack).await?;
    // The static provider serves as usual.
    let served = zuul.request(&["static-label"]).await?;
    assert_eq!(zuul.wait(&served, 60).await?["state"], "fulfilled");
    zuul.run_build(&served).await?;
    // A label only the broken provider serves waits (it is not failed) and says why.
    let stuck = zuul.request(&["cloud-label"]).await?;
    let requests: Api<NodeRequest> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting = requests
            .get_opt(&stuck)
            .await?
            .and_then(|r| r.status)
            .and_then(|s| conditions::find(&s.conditions, conditions::types::WAITING).cloned());
        if let Some(waiting) = waiting {
            assert_eq!(waiting.reason, "ProvidersUnavailable", "{waiting:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request for the broken provider's label says nothing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let state = zuul.call("get_request", json!({"request_id": stuck})).await?;
    assert_eq!(state["data"]["state"], "requested", "{state}");
    Ok(())
}

/// Clusters without the apiserver's WatchList feature run both binaries with
/// `--streaming-lists=false` (a list, then a watch): Zuul is served the same way.
#[tokio::test]
async fn zuul_is_served_when_watches_list_then_watch() -> Result<()> {
    let mut stack = Stack::prepare("zuul-list-watch").await?;
    let (operator_http, bridge_http) = (stack.operator_http.to_string(), stack.bridge_http.to_string());
    let list_then_watch = ("NODEPOOL_STREAMING_LISTS", "false");
    stack.operator = Some(
        stack.spawn_operator("operator", &[list_then_watch, ("NODEPOOL_HTTP_ADDRESS", &operator_http)])?,
    );
    stack.bridge =
        Some(stack.spawn_bridge("bridge", &[list_then_watch, ("NODEPOOL_HTTP_ADDRESS", &bridge_http)])?);
    stack.apply_provider(stack.static_provider("lab", 1)).await?;
    stack.wait_for_ready_nodes(2, Duration::from_secs(60)).await?;
    let mut zuul = nodepool_e2e::zuul::Zuul::connect(&stack).await?;
    let request = zuul.request(&["static-label"]).await?;
    let outcome = zuul.wait(&request, 60).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let used_id = outcome["nodes"][0].as_str().context("the fulfilled node's id")?.to_owned();
    zuul.run_build(&request).await?;
    // The used slot is registered afresh, which needs the watches to keep delivering changes:
    // its next registration, under a new znode id, and the znode of its use is gone.
    let new_id =
        nodepool_e2e::wait::until("the used slot registered again", Duration::from_secs(60), async || {
            let nodes = stack.wait_for_ready_nodes(2, Duration::from_secs(60)).await?;
            Ok(nodes
                .iter()
                .filter_map(|n| n.status.as_ref())
                .find(|s| s.registration == 1)
                .and_then(|s| s.zuul_view()?.node_id.clone()))
        })
        .await?;
    assert_ne!(new_id, used_id, "a reused slot is a new node to Zuul");
    let zk = stack.env.zookeeper(Some(&stack.chroot)).await?;
    let used_znode = format!("/nodepool/nodes/{used_id}");
    assert!(zk.check_stat(&used_znode).await?.is_none(), "{used_znode} is still there");
    let second = zuul.request(&["static-label"]).await?;
    assert_eq!(zuul.wait(&second, 60).await?["state"], "fulfilled");
    Ok(())
}
