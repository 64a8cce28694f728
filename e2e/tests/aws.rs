//! The AWS EC2 driver against moto (`moto_server` on loopback), driven by Zuul's own client:
//! image resolution, launch → ready → use → delete, tags and volumes, leak cleanup, an operator
//! killed mid-launch, refused credentials, and web identity credentials traded with STS.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result};
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use k8s_openapi::api::core::v1::Secret;
use nodepool_crds::{Image, Label, PoolNode};
use nodepool_e2e::{
    moto::Moto,
    stack::{Stack, ready_condition},
    wait::until,
    zuul::Zuul,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// The credentials Secret `<name>-keys` and the Image `amazon-linux` an aws Provider `name` uses.
async fn aws_keys_and_image(stack: &Stack, name: &str, keys: (&str, &str)) -> Result<()> {
    stack
        .apply::<Secret>(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-keys")},
            "stringData": {"AWS_ACCESS_KEY_ID": keys.0, "AWS_SECRET_ACCESS_KEY": keys.1}}),
        )
        .await?;
    stack
        .apply::<Image>(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Image", "metadata": {"name": "amazon-linux"},
            "spec": {"username": "ec2-user", "aws": {"owners": ["amazon"],
                     "filters": [{"name": "name", "values": ["amzn2-ami-hvm-*-x86_64-gp2"]}]}}}))
        .await
}

/// An aws Provider `name` on `moto` with one pool `main` (host keys not checked) and `pool`'s
/// other settings (its `labels`, `aws`).
fn aws_provider_with(moto: &Moto, name: &str, pool: serde_json::Value) -> serde_json::Value {
    let mut main = json!({"name": "main", "hostKeyChecking": false});
    main.as_object_mut().expect("object").extend(pool.as_object().cloned().unwrap_or_default());
    json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": name},
        "spec": {"driver": "aws", "aws": {"region": nodepool_e2e::moto::REGION, "endpoint": moto.endpoint},
                 "credentialsSecretRef": {"name": format!("{name}-keys")}, "pools": [main]}})
}

/// Applies the credentials Secret, the Image and an aws Provider named `name` on `moto`.
async fn aws_provider(stack: &Stack, moto: &Moto, name: &str, keys: (&str, &str), label: &str) -> Result<()> {
    aws_keys_and_image(stack, name, keys).await?;
    stack
        .apply_provider(aws_provider_with(
            moto,
            name,
            json!({"maxCores": 64,
            "labels": [{"name": label, "image": "amazon-linux", "instanceType": "t3.micro",
                        "volumeSizeGb": 20, "volumeType": "gp3", "tags": {"team": "ci"},
                        "dynamicTags": {"zuul-tenant": "{request.tenant_name}"}}]}),
        ))
        .await
}

/// Instances in moto, by state, with their tags.
async fn instances(
    moto: &Moto,
    filters: Vec<Filter>,
) -> Result<Vec<(String, String, BTreeMap<String, String>)>> {
    let output = moto.ec2().describe_instances().set_filters(Some(filters)).send().await?;
    Ok(output
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            let tags = i
                .tags()
                .iter()
                .map(|t| (t.key().unwrap_or_default().to_owned(), t.value().unwrap_or_default().to_owned()))
                .collect();
            let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default();
            (i.instance_id().unwrap_or_default().to_owned(), state, tags)
        })
        .collect())
}

fn tag(key: &str, value: &str) -> Filter {
    Filter::builder().name(format!("tag:{key}")).values(value).build()
}

fn running() -> Filter {
    Filter::builder().name("instance-state-name").values("running").values("pending").build()
}

#[tokio::test]
async fn zuul_gets_ec2_instances_that_are_terminated_after_use() -> Result<()> {
    let stack = Stack::start("aws-launch").await?;
    let moto = Moto::start(&stack.dir.join("logs"))?;
    aws_provider(&stack, &moto, "aws", ("testing", "testing"), "aws-small").await?;
    let provider = stack.launchable("aws").await?;
    let label = &provider.status.as_ref().unwrap().pools[0].labels[0];
    // t3.micro as DescribeInstanceTypes says: 2 vCPUs, 1 GiB.
    assert_eq!(label.resources.as_ref().map(|r| (r.cores, r.ram)), Some((2, 1024)), "{label:?}");
    // The newest AMI matching the filters, as DescribeImages lists them.
    let images = moto
        .ec2()
        .describe_images()
        .owners("amazon")
        .filters(Filter::builder().name("name").values("amzn2-ami-hvm-*-x86_64-gp2").build())
        .send()
        .await?;
    let newest = images
        .images()
        .iter()
        .max_by_key(|i| i.creation_date().unwrap_or_default().to_owned())
        .context("no AMI in moto")?;
    assert_eq!(label.image_id.as_deref(), newest.image_id(), "{label:?}");

    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["aws-small"]).await?;
    let outcome = zuul.wait(&request, WAIT.as_secs()).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let nodes = stack.nodes().await?;
    assert_eq!(nodes.len(), 1);
    let node = &nodes[0];
    let status = node.status.as_ref().unwrap();
    let instance_id = status.external_id.clone().context("no instance id")?;
    assert!(instance_id.starts_with("i-"), "{instance_id}");
    assert_eq!(status.connection.as_ref().and_then(|c| c.username.as_deref()), Some("ec2-user"));
    assert!(status.interface_ip.is_some());

    let node_name = node.metadata.name.clone().unwrap();
    let found = instances(&moto, vec![tag("nodepool_node_id", &node_name)]).await?;
    assert_eq!(found.len(), 1, "exactly one instance for the node: {found:?}");
    let (id, state, tags) = &found[0];
    assert_eq!((id, state.as_str()), (&instance_id, "running"));
    assert_eq!(tags["nodepool_provider_name"], "aws");
    assert_eq!(tags["nodepool_pool_name"], "main");
    assert_eq!(tags["nodepool_node_label"], "aws-small");
    assert_eq!(tags["nodepool_system_id"], format!("nodepool-operator-{}", stack.namespace));
    assert_eq!(tags["team"], "ci");
    assert!(tags.contains_key("zuul-tenant"), "{tags:?}");
    let volumes = moto.ec2().describe_volumes().filters(tag("nodepool_node_id", &node_name)).send().await?;
    let volume = volumes.volumes().first().context("the instance's volume is tagged for the node")?;
    assert_eq!(volume.size(), Some(20));

    zuul.run_build(&request).await?;
    until("node deleted after use", WAIT, async || Ok(stack.nodes().await?.is_empty().then_some(()))).await?;
    let after = instances(&moto, vec![tag("nodepool_node_id", &node_name)]).await?;
    assert_eq!(after.iter().map(|i| i.1.as_str()).collect::<Vec<_>>(), ["terminated"]);
    Ok(())
}

async fn run_tagged(moto: &Moto, tags: &[(&str, &str)]) -> Result<String> {
    let tags: Vec<Tag> = tags.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect();
    let output = moto
        .ec2()
        .run_instances()
        .image_id("ami-760aaa0f")
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags)).build(),
        )
        .send()
        .await?;
    Ok(output.instances()[0].instance_id().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn leaked_instances_volumes_and_uploads_are_deleted_and_nothing_else() -> Result<()> {
    let stack = Stack::start("aws-leaks").await?;
    let moto = Moto::start(&stack.dir.join("logs"))?;
    aws_provider(&stack, &moto, "aws", ("testing", "testing"), "aws-small").await?;
    stack
        .apply::<Label>(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Label",
            "metadata": {"name": "aws-small"}, "spec": {"minReady": 1}}))
        .await?;
    stack.launchable("aws").await?;
    let spare: PoolNode = until("a spare node", WAIT, async || {
        Ok(stack
            .nodes()
            .await?
            .into_iter()
            .find(|n| n.status.as_ref().is_some_and(|s| s.state == nodepool_crds::NodeState::Ready)))
    })
    .await?;
    let spare_instance =
        spare.status.as_ref().and_then(|s| s.external_id.clone()).context("spare instance")?;

    let system = format!("nodepool-operator-{}", stack.namespace);
    let ghost = run_tagged(
        &moto,
        &[("nodepool_provider_name", "aws"), ("nodepool_system_id", &system), ("nodepool_node_id", "ghost")],
    )
    .await?;
    let foreign = run_tagged(
        &moto,
        &[
            ("nodepool_provider_name", "aws"),
            ("nodepool_system_id", "another-installation"),
            ("nodepool_node_id", "theirs"),
        ],
    )
    .await?;
    let untagged = run_tagged(&moto, &[("Name", "someone's pet")]).await?;
    let volume = moto
        .ec2()
        .create_volume()
        .availability_zone("us-east-1a")
        .size(8)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Volume)
                .tags(Tag::builder().key("nodepool_provider_name").value("aws").build())
                .tags(Tag::builder().key("nodepool_system_id").value(&system).build())
                .tags(Tag::builder().key("nodepool_node_id").value("ghost").build())
                .build(),
        )
        .send()
        .await?
        .volume_id()
        .unwrap_or_default()
        .to_owned();

    // Uploads: an AMI and a snapshot whose Image is gone, one whose Image exists, another
    // installation's.
    let ours = |image: &str| {
        vec![
            Tag::builder().key("nodepool_provider_name").value("aws").build(),
            Tag::builder().key("nodepool_system_id").value(&system).build(),
            Tag::builder().key("nodepool_image").value(image).build(),
        ]
    };
    let upload = |name: &'static str, tags: Vec<Tag>| {
        let (ec2, from) = (moto.ec2(), untagged.clone());
        async move {
            let output = ec2
                .create_image()
                .instance_id(from)
                .name(name)
                .tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::Image)
                        .set_tags(Some(tags))
                        .build(),
                )
                .send()
                .await?;
            anyhow::Ok(output.image_id().unwrap_or_default().to_owned())
        }
    };
    let retired_ami = upload("retired", ours("retired")).await?;
    let kept_ami = upload("kept", ours("amazon-linux")).await?;
    let mut theirs_tags = ours("retired");
    theirs_tags[1] = Tag::builder().key("nodepool_system_id").value("another-installation").build();
    let foreign_ami = upload("foreign", theirs_tags).await?;
    let retired_snapshot = moto
        .ec2()
        .create_snapshot()
        .volume_id(&volume)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .set_tags(Some(ours("retired")))
                .build(),
        )
        .send()
        .await?
        .snapshot_id()
        .unwrap_or_default()
        .to_owned();

    until("the leaked instance terminated", WAIT, async || {
        let found =
            instances(&moto, vec![Filter::builder().name("instance-id").values(&ghost).build()]).await?;
        Ok(found.first().is_some_and(|i| i.1 == "terminated").then_some(()))
    })
    .await?;
    until("the leaked volume deleted", WAIT, async || {
        let volumes = moto
            .ec2()
            .describe_volumes()
            .filters(Filter::builder().name("volume-id").values(&volume).build())
            .send()
            .await;
        Ok(volumes.map(|v| v.volumes().is_empty()).unwrap_or(true).then_some(()))
    })
    .await?;
    until("the leaked upload's AMI and snapshot deleted", WAIT, async || {
        let images = moto.ec2().describe_images().owners("self").send().await?;
        let left: Vec<&str> = images.images().iter().filter_map(|i| i.image_id()).collect();
        let snapshots = moto.ec2().describe_snapshots().owner_ids("self").send().await?;
        let snapshot_left = snapshots.snapshots().iter().any(|s| s.snapshot_id() == Some(&retired_snapshot));
        Ok((!left.contains(&retired_ami.as_str()) && !snapshot_left).then_some(()))
    })
    .await?;
    // Two more passes: what is owned, or not ours, is still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alive = instances(&moto, vec![running()]).await?;
    for kept in [&spare_instance, &foreign, &untagged] {
        assert!(alive.iter().any(|i| &i.0 == kept), "{kept} must not be touched; running: {alive:?}");
    }
    let images = moto.ec2().describe_images().owners("self").send().await?;
    let left: Vec<&str> = images.images().iter().filter_map(|i| i.image_id()).collect();
    for kept in [&kept_ami, &foreign_ami] {
        assert!(left.contains(&kept.as_str()), "{kept} must not be touched; images: {left:?}");
    }
    Ok(())
}

#[tokio::test]
async fn an_operator_killed_mid_launch_neither_leaks_nor_duplicates() -> Result<()> {
    let mut stack = Stack::start("aws-restart").await?;
    let moto = Moto::start(&stack.dir.join("logs"))?;
    aws_provider(&stack, &moto, "aws", ("testing", "testing"), "aws-small").await?;
    stack.launchable("aws").await?;
    let mut zuul = Zuul::connect(&stack).await?;
    let mut requests = Vec::new();
    for _ in 0..4 {
        requests.push(zuul.request(&["aws-small"]).await?);
    }
    // Kill the operator as soon as the first launch has begun.
    until("a launch under way", WAIT, async || Ok((!stack.nodes().await?.is_empty()).then_some(()))).await?;
    stack.kill_operator();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.start_operator()?;
    for request in &requests {
        let outcome = zuul.wait(request, WAIT.as_secs()).await?;
        assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    }
    // A node the killed operator created but never gave its allocation was never launched; it
    // is deleted after a grace period. Then, after two more leak passes: one live instance per
    // node, each tagged for its node.
    let nodes = until("one node per request", WAIT, async || {
        let nodes = stack.nodes().await?;
        Ok((nodes.len() == 4).then_some(nodes))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let live = instances(&moto, vec![tag("nodepool_provider_name", "aws"), running()]).await?;
    assert_eq!(live.len(), 4, "one instance per node, no duplicates or leftovers: {live:?}");
    for node in &nodes {
        let name = node.metadata.name.clone().unwrap();
        let mine: Vec<_> = live.iter().filter(|i| i.2.get("nodepool_node_id") == Some(&name)).collect();
        assert_eq!(mine.len(), 1, "node {name}: {mine:?}");
        assert_eq!(node.status.as_ref().and_then(|s| s.external_id.as_ref()), Some(&mine[0].0));
    }
    for request in &requests {
        zuul.run_build(request).await?;
    }
    until("every node deleted", WAIT, async || Ok(stack.nodes().await?.is_empty().then_some(()))).await?;
    let left = instances(&moto, vec![tag("nodepool_provider_name", "aws"), running()]).await?;
    assert!(left.is_empty(), "instances left behind: {left:?}");
    Ok(())
}

#[tokio::test]
async fn refused_credentials_make_the_provider_not_ready_and_others_keep_serving() -> Result<()> {
    let stack = Stack::start("aws-credentials").await?;
    let moto = Moto::start(&stack.dir.join("logs"))?;
    let (key, secret) = moto.require_credentials()?;
    aws_provider(&stack, &moto, "good", (&key, &secret), "good-label").await?;
    aws_provider(&stack, &moto, "bad", ("AKIAWRONGWRONGWRONG0", "not-the-secret"), "bad-label").await?;
    let refused = until("the bad provider refused", WAIT, async || {
        let provider = stack.provider("bad").await?;
        Ok(ready_condition(&provider).filter(|c| c.status == "False"))
    })
    .await?;
    assert_eq!(refused.reason, "CredentialsRefused", "{refused:?}");
    assert!(refused.message.contains("AuthFailure"), "{refused:?}");
    stack.launchable("good").await?;

    let mut zuul = Zuul::connect(&stack).await?;
    let served = zuul.request(&["good-label"]).await?;
    assert_eq!(zuul.wait(&served, WAIT.as_secs()).await?["state"], "fulfilled");
    let stuck = zuul.request(&["bad-label"]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = zuul.call("get_request", json!({"request_id": stuck})).await?;
    assert_eq!(
        waiting["data"]["state"], "requested",
        "a provider that is not Ready neither serves nor declines: {waiting}"
    );
    zuul.run_build(&served).await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_provider_deletes_its_instances_first() -> Result<()> {
    let stack = Stack::start("aws-provider-delete").await?;
    let moto = Moto::start(&stack.dir.join("logs"))?;
    aws_provider(&stack, &moto, "aws", ("testing", "testing"), "aws-small").await?;
    stack.launchable("aws").await?;
    let providers: kube::Api<nodepool_crds::Provider> =
        kube::Api::namespaced(stack.client.clone(), &stack.namespace);
    let provider = providers.get("aws").await?;
    assert!(
        provider.metadata.finalizers.iter().flatten().any(|f| f == "nodepool.dev/cloud-instances"),
        "{provider:?}"
    );

    // One node in use by a Zuul build, one ready spare.
    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["aws-small"]).await?;
    assert_eq!(zuul.wait(&request, WAIT.as_secs()).await?["state"], "fulfilled");
    let build = zuul.call("accept", json!({"request_id": request})).await?["build"].clone();
    zuul.call("use", json!({"build": build})).await?;
    stack
        .apply::<Label>(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Label",
            "metadata": {"name": "aws-small"}, "spec": {"minReady": 1}}))
        .await?;
    let ours = || vec![tag("nodepool_provider_name", "aws"), running()];
    until("an in-use node and a spare running", WAIT, async || {
        Ok((instances(&moto, ours()).await?.len() == 2).then_some(()))
    })
    .await?;
    let in_use = until("the in-use node", WAIT, async || {
        Ok(stack.nodes().await?.into_iter().find(|n| {
            n.status.as_ref().is_some_and(|s| s.current_state() == nodepool_crds::NodeState::InUse)
        }))
    })
    .await?;

    // Deleted: the spare goes at once and is not replaced; the node Zuul uses stays, and so
    // does the Provider, until Zuul returns it.
    providers.delete("aws", &Default::default()).await?;
    until("only the in-use node's instance left", WAIT, async || {
        let running = instances(&moto, ours()).await?;
        let nodes = stack.nodes().await?;
        Ok((running.len() == 1 && nodes.len() == 1).then_some(()))
    })
    .await?;
    assert_eq!(stack.nodes().await?[0].metadata.name, in_use.metadata.name);
    let deleting = providers.get("aws").await?;
    assert!(deleting.metadata.deletion_timestamp.is_some());

    zuul.call("return", json!({"build": build})).await?;
    until("the provider gone", WAIT, async || Ok(providers.get_opt("aws").await?.is_none().then_some(())))
        .await?;
    let left = instances(&moto, ours()).await?;
    assert!(left.is_empty(), "a deleted provider left instances running: {left:?}");
    assert!(stack.nodes().await?.is_empty());
    Ok(())
}

/// Web identity federation (IRSA): the Secret names a role and a token file, and the driver
/// trades the token for credentials with STS — moto's, through the SDK's standard
/// `AWS_ENDPOINT_URL_STS` setting — before it can launch anything.
#[tokio::test]
async fn web_identity_credentials_are_traded_with_sts_and_launch_instances() -> Result<()> {
    let mut stack = Stack::prepare("aws-web-identity").await?;
    let moto = Moto::start(&stack.dir.join("logs"))?;
    let address = stack.operator_http.to_string();
    stack.operator = Some(stack.spawn_operator(
        "operator",
        &[("NODEPOOL_HTTP_ADDRESS", &address), ("AWS_ENDPOINT_URL_STS", &moto.endpoint)],
    )?);
    stack.start_bridge()?;
    let token_file = stack.dir.join("web-identity-token");
    std::fs::write(
        &token_file,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bm9kZXBvb2wifQ.c2ln",
    )?;
    stack
        .apply::<Secret>(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "irsa"},
            "stringData": {"AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/nodepool",
                           "AWS_WEB_IDENTITY_TOKEN_FILE": token_file.to_string_lossy()}}))
        .await?;
    stack
        .apply_provider(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": "irsa"},
            "spec": {"driver": "aws", "aws": {"region": nodepool_e2e::moto::REGION, "endpoint": moto.endpoint},
                     "credentialsSecretRef": {"name": "irsa"},
                     "pools": [{"name": "main", "hostKeyChecking": false,
                        "labels": [{"name": "irsa-small", "image": "fixed-ami", "instanceType": "t3.micro"}]}]}}))
        .await?;
    stack
        .apply::<Image>(
            json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Image", "metadata": {"name": "fixed-ami"},
            "spec": {"aws": {"imageId": "ami-760aaa0f"}}}),
        )
        .await?;
    stack.launchable("irsa").await?;
    // moto's STS saw the role assumed with the token, under the driver's session name.
    let data: serde_json::Value =
        reqwest::get(format!("{}/moto-api/data.json", moto.endpoint)).await?.json().await?;
    let assumed = data["sts"]["AssumedRole"].as_array().cloned().unwrap_or_default();
    assert!(
        assumed.iter().any(|role| role["role_arn"] == "arn:aws:iam::123456789012:role/nodepool"
            && role["session_name"] == "nodepool-irsa"),
        "no role assumed through STS: {assumed:?}"
    );

    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["irsa-small"]).await?;
    let outcome = zuul.wait(&request, WAIT.as_secs()).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let node = stack.nodes().await?.pop().context("a node")?;
    let instance = node.status.as_ref().and_then(|s| s.external_id.clone()).context("instance id")?;
    let found = instances(&moto, vec![tag("nodepool_node_id", &node.metadata.name.clone().unwrap())]).await?;
    assert_eq!(found.iter().map(|i| i.0.as_str()).collect::<Vec<_>>(), [instance.as_str()]);
    zuul.run_build(&request).await?;
    Ok(())
}

/// `nodepool delete NODE --now` on a ready EC2 node goes through the delete path: when it
/// returns, the instance is terminated (not left to leak cleanup).
#[tokio::test]
async fn nodepool_delete_now_terminates_the_instance_before_it_returns() -> Result<()> {
    let stack = Stack::start("aws-delete-now").await?;
    let moto = Moto::start(&stack.dir.join("logs"))?;
    aws_provider(&stack, &moto, "aws", ("testing", "testing"), "aws-small").await?;
    stack
        .apply::<Label>(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Label",
            "metadata": {"name": "aws-small"}, "spec": {"minReady": 1}}))
        .await?;
    let ready = stack.wait_for_ready_nodes(1, WAIT).await?;
    let node_name = ready[0].metadata.name.clone().context("name")?;
    let found = instances(&moto, vec![tag("nodepool_node_id", &node_name)]).await?;
    assert_eq!(found.iter().map(|i| i.1.as_str()).collect::<Vec<_>>(), ["running"]);

    let kubeconfig = stack.env.info.kubeconfig.to_str().context("kubeconfig path")?;
    let output = std::process::Command::new(nodepool_e2e::stack::binary("nodepool")?)
        .args(["--kubeconfig", kubeconfig, "-n", &stack.namespace, "delete", &node_name, "--now"])
        .output()?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let after = instances(&moto, vec![tag("nodepool_node_id", &node_name)]).await?;
    assert_eq!(
        after.iter().map(|i| i.1.as_str()).collect::<Vec<_>>(),
        ["terminated"],
        "terminated on return"
    );
    Ok(())
}

/// A label with a dedicated host, EBS optimization, gp3 IOPS and throughput, on a pool with a
/// subnet that has an IPv6 range: the host is allocated for the node in the pool's zone and the
/// instance placed on it, RunInstances carries every setting, and after use the instance is
/// terminated and the host released. What was sent is read from moto's request recorder: moto
/// keeps no IOPS or throughput on its volumes, and assigns IPv6 addresses only for a top-level
/// `Ipv6AddressCount` (which EC2 refuses beside a network interface), not the interface's own.
#[tokio::test]
async fn dedicated_hosts_ebs_settings_and_ipv6_reach_ec2_and_the_host_is_released() -> Result<()> {
    let stack = Stack::start("aws-dedicated").await?;
    let moto = Moto::start(&stack.dir.join("logs"))?;
    let ec2 = moto.ec2();
    let vpc = ec2.create_vpc().cidr_block("10.9.0.0/16").amazon_provided_ipv6_cidr_block(true).send().await?;
    let vpc = vpc.vpc().context("vpc")?;
    let vpc_id = vpc.vpc_id().context("vpc id")?;
    let v6 =
        vpc.ipv6_cidr_block_association_set().first().and_then(|a| a.ipv6_cidr_block()).context("ipv6")?;
    let subnet_v6 = format!("{}/64", v6.split('/').next().context("cidr")?);
    let subnet = ec2
        .create_subnet()
        .vpc_id(vpc_id)
        .cidr_block("10.9.1.0/24")
        .ipv6_cidr_block(subnet_v6)
        .availability_zone("us-east-1a")
        .send()
        .await?;
    let subnet_id = subnet.subnet().and_then(|s| s.subnet_id()).context("subnet id")?.to_owned();
    aws_keys_and_image(&stack, "aws", ("testing", "testing")).await?;
    stack
        .apply_provider(aws_provider_with(&moto, "aws", json!({
            "aws": {"subnetId": subnet_id, "availabilityZone": "us-east-1a", "publicIpv6": true},
            "labels": [{"name": "aws-dedicated", "image": "amazon-linux", "instanceType": "m5.large",
                        "volumeType": "gp3", "volumeSizeGb": 30, "aws": {"dedicatedHost": true, "ebsOptimized": true,
                        "iops": 4000, "throughput": 250}}]})))
        .await?;
    stack.launchable("aws").await?;
    moto.start_recording().await?;

    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["aws-dedicated"]).await?;
    let outcome = zuul.wait(&request, WAIT.as_secs()).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let node = stack.nodes().await?.into_iter().next().context("the node")?;
    let node_name = node.metadata.name.clone().context("name")?;
    let status = node.status.clone().context("status")?;

    let hosts = ec2.describe_hosts().send().await?;
    let held: Vec<_> =
        hosts.hosts().iter().filter(|h| h.state().map(|s| s.as_str()) == Some("available")).collect();
    assert_eq!(held.len(), 1, "one host for the node: {hosts:?}");
    let host = held[0];
    let host_id = host.host_id().context("host id")?;
    assert_eq!(host.availability_zone(), Some("us-east-1a"));
    assert!(host.tags().iter().any(|t| t.key() == Some("nodepool_node_id") && t.value() == Some(&node_name)));
    let described =
        ec2.describe_instances().instance_ids(status.external_id.clone().context("id")?).send().await?;
    let instance = described.reservations()[0].instances()[0].clone();
    assert_eq!(instance.placement().and_then(|p| p.host_id()), Some(host_id));
    assert_eq!(instance.ebs_optimized(), Some(true));

    let recorded = moto.recorded_ec2_requests().await?;
    let run =
        recorded.iter().find(|(action, _)| action == "RunInstances").context("RunInstances recorded")?;
    let field = |name: &str| run.1.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(field("BlockDeviceMapping.1.Ebs.Iops"), Some("4000"), "{run:?}");
    assert_eq!(field("BlockDeviceMapping.1.Ebs.Throughput"), Some("250"));
    assert_eq!(field("BlockDeviceMapping.1.Ebs.VolumeType"), Some("gp3"));
    assert_eq!(field("Placement.Tenancy"), Some("host"));
    assert_eq!(field("NetworkInterface.1.Ipv6AddressCount"), Some("1"));
    assert_eq!(field("EbsOptimized"), Some("true"));

    // After use: the instance is terminated, then the host, its node gone, is released.
    zuul.run_build(&request).await?;
    until("node deleted after use", WAIT, async || Ok(stack.nodes().await?.is_empty().then_some(()))).await?;
    until("the host released", WAIT, async || {
        let hosts = ec2.describe_hosts().host_ids(host_id).send().await?;
        Ok(hosts.hosts().iter().all(|h| h.state().map(|s| s.as_str()) == Some("released")).then_some(()))
    })
    .await?;
    Ok(())
}

/// A fleet label (no `instanceType`): its footprint is the largest of its types, the launch goes
/// through an instant `CreateFleet` with the prioritized on-demand strategy over a launch
/// template made for the label (tagged for the provider), and the node holds what the type EC2
/// chose holds.
#[tokio::test]
async fn a_fleet_label_launches_through_create_fleet_and_the_node_holds_the_chosen_type() -> Result<()> {
    let stack = Stack::start("aws-fleet").await?;
    let moto = Moto::start(&stack.dir.join("logs"))?;
    aws_keys_and_image(&stack, "aws", ("testing", "testing")).await?;
    stack
        .apply_provider(aws_provider_with(
            &moto,
            "aws",
            json!({
            "labels": [{"name": "aws-fleet", "image": "amazon-linux", "volumeSizeGb": 20,
                        "aws": {"fleet": {"instanceTypes": ["t3.micro", "t3.large"],
                                          "allocationStrategy": "prioritized"}}}]}),
        ))
        .await?;
    let provider = stack.launchable("aws").await?;
    let label =
        provider.status.as_ref().context("status")?.pools[0].labels.iter().find(|l| l.name == "aws-fleet");
    let label = label.context("the fleet label's status")?;
    // t3.large is the larger: 2 vCPUs, 8 GiB.
    assert_eq!(label.resources.as_ref().map(|r| (r.cores, r.ram)), Some((2, 8192)), "{label:?}");
    moto.start_recording().await?;

    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["aws-fleet"]).await?;
    let outcome = zuul.wait(&request, WAIT.as_secs()).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let node = stack.nodes().await?.into_iter().next().context("the node")?;
    let status = node.status.clone().context("status")?;
    let id = status.external_id.clone().context("instance id")?;
    let described = moto.ec2().describe_instances().instance_ids(&id).send().await?;
    let chosen =
        described.reservations()[0].instances()[0].instance_type().context("type")?.as_str().to_owned();
    let expected = match chosen.as_str() {
        "t3.micro" => (2, 1024),
        "t3.large" => (2, 8192),
        other => anyhow::bail!("the fleet chose {other}, not one of the label's types"),
    };
    assert_eq!(status.resources.as_ref().map(|r| (r.cores, r.ram)), Some(expected), "the chosen type's");

    let recorded = moto.recorded_ec2_requests().await?;
    let fleet =
        recorded.iter().find(|(action, _)| action == "CreateFleet").context("CreateFleet recorded")?;
    let field = |name: &str| fleet.1.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(field("Type"), Some("instant"), "{fleet:?}");
    assert_eq!(field("OnDemandOptions.AllocationStrategy"), Some("prioritized"));
    assert_eq!(field("LaunchTemplateConfigs.1.Overrides.1.InstanceType"), Some("t3.micro"));
    assert_eq!(field("LaunchTemplateConfigs.1.Overrides.2.InstanceType"), Some("t3.large"));
    assert_eq!(field("TargetCapacitySpecification.TotalTargetCapacity"), Some("1"));
    let template =
        field("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateName").context("name")?;
    let templates = moto.ec2().describe_launch_templates().launch_template_names(template).send().await?;
    let tagged = templates.launch_templates().first().context("the launch template")?;
    assert!(
        tagged.tags().iter().any(|t| t.key() == Some("nodepool_provider_name") && t.value() == Some("aws"))
    );

    zuul.run_build(&request).await?;
    until("node deleted after use", WAIT, async || Ok(stack.nodes().await?.is_empty().then_some(()))).await?;
    let after =
        instances(&moto, vec![tag("nodepool_node_id", &node.metadata.name.clone().context("name")?)]).await?;
    assert_eq!(after.iter().map(|i| i.1.as_str()).collect::<Vec<_>>(), ["terminated"]);
    Ok(())
}

/// vCPUs of an instance type the quota test launches.
fn vcpus(instance_type: &str) -> u32 {
    match instance_type {
        "t3.micro" | "t3.small" => 2,
        "m5.2xlarge" => 8,
        other => panic!("the quota test launches no {other}"),
    }
}

/// The vCPUs the provider's pending and running instances hold in moto now.
async fn held_vcpus(ec2: &aws_sdk_ec2::Client, provider: &str) -> Result<u32> {
    let output = ec2
        .describe_instances()
        .filters(tag("nodepool_provider_name", provider))
        .filters(running())
        .send()
        .await?;
    Ok(output
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| vcpus(i.instance_type().map(|t| t.as_str()).unwrap_or_default()))
        .sum())
}

/// Service Quotas gives the account 32 vCPUs of standard on-demand instances, and an instance
/// that is not ours holds 2 of them; labels of 2 and 8 vCPUs take 40 requests (140 vCPUs). The
/// operator never asks for more than the 30 left, so EC2 (which refuses launches past the quota
/// with `VcpuLimitExceeded`, see `e2e/aws/moto_server.py`) refuses none, and the requests that
/// do not fit wait with `AtQuota` until nodes come back.
#[tokio::test]
async fn launches_stay_within_the_service_quota_less_what_others_hold() -> Result<()> {
    const CODE: &str = "L-1216C47A";
    let stack = Stack::start("aws-quota").await?;
    let moto = Moto::start_with_quotas(&stack.dir.join("logs"), &json!({"ec2": {CODE: 32}}))?;
    run_tagged(&moto, &[("owner", "another-team")]).await?; // t3.micro: 2 vCPUs, not ours
    aws_keys_and_image(&stack, "aws", ("testing", "testing")).await?;
    let labels = json!([{"name": "aws-2cpu", "image": "amazon-linux", "instanceType": "t3.small"},
                        {"name": "aws-8cpu", "image": "amazon-linux", "instanceType": "m5.2xlarge"}]);
    stack.apply_provider(aws_provider_with(&moto, "aws", json!({"labels": labels}))).await?;
    let provider = stack.launchable("aws").await?;
    let status = provider.status.clone().context("no status")?;
    let quota = status.quota.clone().context("no quota in the status")?;
    assert_eq!(quota.cloud.as_ref().map(|c| c.max_resources.clone()), Some([(CODE.to_owned(), 32)].into()));
    assert_eq!(quota.unmanaged.as_ref().and_then(|u| u.other.get(CODE).copied()), Some(2), "{quota:?}");
    let footprint = |label: usize| status.pools[0].labels[label].resources.clone().unwrap_or_default().other;
    assert_eq!((footprint(0), footprint(1)), ([(CODE.to_owned(), 2)].into(), [(CODE.to_owned(), 8)].into()));

    // Watches moto for the most vCPUs our instances hold at once.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let watcher = {
        let (peak, ec2) = (peak.clone(), moto.ec2());
        tokio::spawn(async move {
            loop {
                if let Ok(held) = held_vcpus(&ec2, "aws").await {
                    peak.fetch_max(held, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let mut zuul = Zuul::connect(&stack).await?;
    let mut requests = Vec::new();
    for i in 0..40 {
        requests.push(zuul.request(&[if i % 4 == 0 { "aws-8cpu" } else { "aws-2cpu" }]).await?);
    }
    let waiting = until("a request waiting at quota", WAIT, async || {
        let api: kube::Api<nodepool_crds::NodeRequest> =
            kube::Api::namespaced(stack.client.clone(), &stack.namespace);
        let listed = api.list(&Default::default()).await?;
        Ok(listed.items.into_iter().find_map(|r| {
            let waiting = nodepool_crds::conditions::find(
                &r.status?.conditions,
                nodepool_crds::conditions::types::WAITING,
            )?
            .clone();
            (waiting.reason == "AtQuota").then_some(waiting)
        }))
    })
    .await?;
    assert!(waiting.message.contains(CODE), "the message names the quota: {}", waiting.message);
    // Every request is served in the end, as nodes come back. Like Zuul, each build runs when its
    // nodes arrive, in whatever order that is (a later 2-vCPU request may fit before an 8-vCPU one).
    let (mut open, mut checked_resources) = (requests.clone(), false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while !open.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "requests never served: {open:?}");
        let mut still_open = Vec::new();
        for request in open {
            let outcome = match zuul.wait(&request, 1).await {
                Ok(outcome) => outcome,
                Err(error) if error.to_string().contains("TimeoutError") => {
                    still_open.push(request);
                    continue;
                }
                Err(error) => return Err(error),
            };
            assert_eq!(outcome["state"], "fulfilled", "{request}: {outcome}");
            if !checked_resources && requests.iter().position(|r| *r == request).is_some_and(|i| i % 4 == 0) {
                // Zuul reads the node's vCPUs under the quota code, as Nodepool writes them.
                let node = zuul.call("get_node", json!({"node_id": outcome["nodes"][0]})).await?;
                let resources = &node["data"]["resources"];
                assert_eq!((&resources[CODE], &resources["cores"]), (&json!(8), &json!(8)), "{node}");
                checked_resources = true;
            }
            zuul.run_build(&request).await?;
        }
        open = still_open;
    }
    assert!(checked_resources, "an 8-vCPU node was read through Zuul");
    watcher.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("the most vCPUs of ours at once: {peak}");
    assert!((8..=30).contains(&peak), "at most 32 - 2 vCPUs of ours at once, and some used: {peak}");
    let metrics = reqwest::get(format!("http://{}/metrics", stack.operator_http)).await?.text().await?;
    // Every launch ended `ready`: none was refused (`error.quota`) or failed.
    let other: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("nodepool_launches_total{") && !l.contains(r#"result="ready""#))
        .collect();
    assert!(other.is_empty(), "EC2 refused no launch for quota: {other:?}");
    let ready = metrics
        .lines()
        .filter(|l| l.starts_with("nodepool_launches_total") && l.contains(r#"result="ready""#));
    let launched: f64 = ready.filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
    assert_eq!(launched, 40.0, "{metrics}");
    Ok(())
}
