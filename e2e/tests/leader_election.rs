//! Two replicas of each binary, as the Helm chart runs them with `replicas: 2`: one leads and
//! works, the other stands by (ready, but doing nothing), and takes over when the leader shuts
//! down, because a clean shutdown releases the Lease.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use nodepool_e2e::{
    process::StopOnDrop,
    prometheus::get,
    stack::{Stack, free_address},
    wait,
    zuul::Zuul,
};

/// Long enough that a takeover within the test's waits proves the lease was released, not
/// left to expire.
const LEASE_SECONDS: &str = "90";
const WAIT: Duration = Duration::from_secs(45);
/// The bridges' ZooKeeper session timeout (ZooKeeper's default maximum, 20 ticks of 2 s)...
const ZK_SESSION_SECONDS: &str = "40";
/// ...and a wait well inside it.
const FAST: Duration = Duration::from_secs(20);

async fn holder(stack: &Stack, lease: &str) -> Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(stack.client.clone(), &stack.namespace);
    Ok(leases.get_opt(lease).await?.and_then(|l| l.spec).and_then(|s| s.holder_identity))
}

async fn wait_holder(stack: &Stack, lease: &str, expected: &str) -> Result<()> {
    wait::until(&format!("{expected} holding {lease}"), WAIT, async || {
        Ok((holder(stack, lease).await?.as_deref() == Some(expected)).then_some(()))
    })
    .await
}

/// The hosts named in the pool components registered in ZooKeeper.
async fn component_hosts(stack: &Stack) -> Result<Vec<String>> {
    let zk = stack.env.zookeeper(Some(&stack.chroot)).await?;
    let mut hosts = Vec::new();
    for child in zk.list_children("/nodepool/components/pool").await.unwrap_or_default() {
        let (data, _) = zk.get_data(&format!("/nodepool/components/pool/{child}")).await?;
        let doc: serde_json::Value = serde_json::from_slice(&data)?;
        hosts.push(doc["hostname"].as_str().unwrap_or_default().to_owned());
    }
    hosts.sort();
    hosts.dedup();
    Ok(hosts)
}

/// The environment of one replica under leader election.
fn replica<'a>(pod: &'a str, address: &'a str) -> [(&'a str, &'a str); 5] {
    [
        ("NODEPOOL_LEADER_ELECTION", "true"),
        ("NODEPOOL_LEADER_ELECTION_LEASE_DURATION", LEASE_SECONDS),
        ("POD_NAME", pod),
        ("NODEPOOL_HOSTNAME", pod),
        ("NODEPOOL_HTTP_ADDRESS", address),
    ]
}

async fn fulfilled(zuul: &mut Zuul) -> Result<()> {
    let request = zuul.request(&["static-label"]).await?;
    let outcome = zuul.wait(&request, 60).await?;
    anyhow::ensure!(outcome["state"] == "fulfilled", "{outcome}");
    zuul.run_build(&request).await?;
    Ok(())
}

#[tokio::test]
async fn one_replica_leads_and_the_standby_takes_over_on_shutdown() -> Result<()> {
    let stack = Stack::prepare("leader-election").await?;
    let operator_lease = format!("nodepool-operator-{}", stack.namespace);
    let bridge_lease = format!("nodepool-zk-bridge-{}", stack.namespace);
    let addresses: Vec<String> =
        (0..4).map(|_| free_address().map(|a| a.to_string())).collect::<Result<_>>()?;
    let [a, b, c, d] = [&addresses[0], &addresses[1], &addresses[2], &addresses[3]].map(String::as_str);

    // The first of each leads; the second waits.
    let operator_a = StopOnDrop(stack.spawn_operator("operator-a", &replica("operator-a", a))?);
    wait_holder(&stack, &operator_lease, "operator-a").await?;
    let operator_b = StopOnDrop(stack.spawn_operator("operator-b", &replica("operator-b", b))?);
    // A session timeout far beyond the waits below: ephemeral znodes that vanish within them
    // were deleted by a closed session, not by an expired one.
    let bridge = |pod, address| {
        let mut env = replica(pod, address).to_vec();
        env.push(("NODEPOOL_ZOOKEEPER_SESSION_TIMEOUT", ZK_SESSION_SECONDS));
        stack.spawn_bridge(pod, &env).map(StopOnDrop)
    };
    let bridge_a = bridge("bridge-a", c)?;
    wait_holder(&stack, &bridge_lease, "bridge-a").await?;
    let bridge_b = bridge("bridge-b", d)?;

    stack.apply_provider(stack.static_provider("lab", 1)).await?;
    stack.wait_for_ready_nodes(2, WAIT).await?;
    let mut zuul = Zuul::connect(&stack).await?;
    fulfilled(&mut zuul).await?;

    // The standbys are ready (so a rolling update can go on) but do nothing: no caches, no
    // ZooKeeper session, no pool components of their own.
    for address in [b, d] {
        let (status, report) = get(address.parse()?, "/readyz").await?;
        assert_eq!(status, 200, "standby {address}: {report}");
    }
    let (_, standby_operator) = get(b.parse()?, "/metrics").await?;
    assert!(
        !standby_operator.contains("nodepool_nodes{"),
        "the standby operator has no caches:\n{standby_operator}"
    );
    let (_, leader_operator) = get(a.parse()?, "/metrics").await?;
    assert!(leader_operator.contains("nodepool_nodes{"), "{leader_operator}");
    let (_, standby_bridge) = get(d.parse()?, "/metrics").await?;
    assert!(standby_bridge.contains("nodepool_zookeeper_sessions_total 0"), "{standby_bridge}");
    assert_eq!(component_hosts(&stack).await?, ["bridge-a"]);
    assert_eq!(holder(&stack, &operator_lease).await?.as_deref(), Some("operator-a"));

    // A clean shutdown (SIGTERM, as Kubernetes sends) releases both leases: the standbys take
    // over long before the leases would have expired, and serve Zuul.
    operator_a.stop(Duration::from_secs(10));
    bridge_a.stop(Duration::from_secs(10));
    wait_holder(&stack, &operator_lease, "operator-b").await?;
    wait_holder(&stack, &bridge_lease, "bridge-b").await?;
    // bridge-a's components went with its closed session, long before it could have expired.
    wait::until("only bridge-b's pool components", FAST, async || {
        Ok((component_hosts(&stack).await? == ["bridge-b"]).then_some(()))
    })
    .await?;
    fulfilled(&mut zuul).await.context("served after the takeover")?;
    let log = std::fs::read_to_string(stack.logs().join("operator-a.log"))?;
    assert!(log.contains("leadership released"), "operator-a.log:\n{log}");
    let log = std::fs::read_to_string(stack.logs().join("bridge-a.log"))?;
    assert!(log.contains("ZooKeeper session closed"), "bridge-a.log:\n{log}");

    operator_b.stop(Duration::from_secs(10));
    bridge_b.stop(Duration::from_secs(10));
    Ok(())
}

#[tokio::test]
async fn a_crashed_leaders_lease_expires_and_the_standby_takes_over() -> Result<()> {
    let mut stack = Stack::prepare("leader-crash").await?;
    stack.start_bridge()?; // one bridge, without election: this test is about the operator
    let lease = format!("nodepool-operator-{}", stack.namespace);
    let (a, b) = (free_address()?.to_string(), free_address()?.to_string());
    let short = |pod: &'static str, address: &str| -> Result<_> {
        let mut env = replica(pod, address).to_vec();
        env.retain(|(key, _)| *key != "NODEPOOL_LEADER_ELECTION_LEASE_DURATION");
        env.push(("NODEPOOL_LEADER_ELECTION_LEASE_DURATION", "4"));
        stack.spawn_operator(pod, &env).map(StopOnDrop)
    };
    let operator_a = short("operator-a", &a)?;
    wait_holder(&stack, &lease, "operator-a").await?;
    let operator_b = short("operator-b", &b)?;
    // SIGKILL: no release; the standby must wait out the lease, then take it.
    operator_a.stop(Duration::ZERO);
    wait_holder(&stack, &lease, "operator-b").await?;
    stack.apply_provider(stack.static_provider("lab", 1)).await?;
    stack.wait_for_ready_nodes(2, WAIT).await.context("the new leader works")?;
    let log = std::fs::read_to_string(stack.logs().join("operator-b.log"))?;
    assert!(log.contains("taking over an expired lease"), "operator-b.log:\n{log}");
    operator_b.stop(Duration::from_secs(10));
    Ok(())
}
