//! The GCE driver, through the real `google-cloud-compute-v1` client, against the Compute
//! Engine test double (`e2e/gce/gce_double.py`), driven by Zuul's own client: image families,
//! machine-type sizes and regional quota, launch → ready → use → delete, a capacity error that
//! aborts the launch and pauses the pool, and refused credentials.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Secret;
use nodepool_crds::Image;
use nodepool_e2e::{
    gce::{GceDouble, PROJECT, REGION, ZONE},
    stack::{Stack, ready_condition},
    wait::until,
    zuul::Zuul,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// The credentials Secret, the Image and a gce Provider named `name` on `double`.
async fn gce_provider(stack: &Stack, double: &GceDouble, name: &str, key: &serde_json::Value) -> Result<()> {
    stack
        .apply::<Secret>(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-key")},
            "stringData": {"credentials.json": key.to_string()}}),
        )
        .await?;
    stack
        .apply::<Image>(
            json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Image", "metadata": {"name": "debian"},
            "spec": {"username": "debian", "gce": {"family": "debian-12", "project": "debian-cloud"}}}),
        )
        .await?;
    stack
        .apply_provider(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": name},
            "spec": {"driver": "gce", "gce": {"project": PROJECT, "region": REGION, "zones": [ZONE], "endpoint": double.endpoint},
                     "credentialsSecretRef": {"name": format!("{name}-key")},
                     "pools": [{"name": "main", "hostKeyChecking": false, "gce": {"externalIp": true},
                        "labels": [{"name": "gce-small", "image": "debian", "instanceType": "e2-small",
                                    "volumeSizeGb": 20, "volumeType": "pd-balanced",
                                    "tags": {"team": "ci"}, "gce": {"networkTags": ["zuul"]}}]}]}}))
        .await
}

#[tokio::test]
async fn zuul_gets_gce_instances_that_are_deleted_after_use() -> Result<()> {
    let stack = Stack::start("gce-launch").await?;
    let double = GceDouble::start(&stack.dir.join("logs"), 0.5)?;
    let key = double.service_account("nodepool")?;
    double.control(
        "POST",
        "/double/quota",
        json!({"project": PROJECT, "region": REGION, "limits": {"CPUS": 24, "INSTANCES": 10}}),
    )?;
    gce_provider(&stack, &double, "gce", &key).await?;
    let provider = stack.launchable("gce").await?;
    let status = provider.status.as_ref().unwrap();
    let label = &status.pools[0].labels[0];
    assert_eq!(label.resources.as_ref().map(|r| (r.cores, r.ram)), Some((2, 2048)), "e2-small: {label:?}");
    // The newest image of the family.
    assert!(
        label.image_id.as_deref().unwrap_or_default().ends_with("/debian-12-bookworm-v20241009"),
        "{label:?}"
    );
    // The region's quota, as regions.get reports it.
    let cloud = status.quota.as_ref().and_then(|q| q.cloud.clone()).context("no cloud quota")?;
    assert_eq!((cloud.max_cores, cloud.max_servers), (Some(24), Some(10)));

    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["gce-small", "gce-small"]).await?;
    let outcome = zuul.wait(&request, WAIT.as_secs()).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let nodes = stack.nodes().await?;
    assert_eq!(nodes.len(), 2);
    let state = double.state()?;
    let instances = state["instances"].as_array().context("instances")?;
    assert_eq!(instances.len(), 2, "one instance per node: {instances:?}");
    for node in &nodes {
        let name = node.metadata.name.clone().unwrap();
        let status = node.status.as_ref().unwrap();
        let id = status.external_id.clone().context("instance id")?;
        assert!(id.starts_with(&format!("{ZONE}/{name}-a1")), "{id}");
        assert!(
            status.interface_ip.as_deref().unwrap_or_default().starts_with("127.1."),
            "the NAT address: {status:?}"
        );
        assert_eq!(status.connection.as_ref().and_then(|c| c.username.as_deref()), Some("debian"));
        let instance = instances
            .iter()
            .find(|i| i["resource"]["labels"]["nodepool_node_id"] == json!(name))
            .with_context(|| format!("no instance labelled for {name}"))?;
        let labels = &instance["resource"]["labels"];
        assert_eq!(labels["nodepool_provider_name"], "gce");
        assert_eq!(labels["team"], "ci");
        assert_eq!(instance["resource"]["tags"]["items"], json!(["zuul"]));
        assert!(
            instance["resource"]["machineType"]
                .as_str()
                .unwrap_or_default()
                .ends_with("/machineTypes/e2-small")
        );
        assert_eq!(instance["bootDisk"]["sizeGb"], json!(20.0), "{}", instance["bootDisk"]);
        assert_eq!(instance["bootDisk"]["type"], "pd-balanced", "{}", instance["bootDisk"]);
    }

    zuul.run_build(&request).await?;
    until("nodes deleted after use", WAIT, async || Ok(stack.nodes().await?.is_empty().then_some(())))
        .await?;
    until("instances gone", WAIT, async || {
        Ok(double.state()?["instances"].as_array().is_some_and(|i| i.is_empty()).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_zone_out_of_capacity_aborts_the_launch_and_pauses_the_pool() -> Result<()> {
    let stack = Stack::start("gce-capacity").await?;
    let double = GceDouble::start(&stack.dir.join("logs"), 0.2)?;
    let key = double.service_account("nodepool")?;
    gce_provider(&stack, &double, "gce", &key).await?;
    stack.launchable("gce").await?;
    double.control("POST", "/double/capacity", json!({"zone": ZONE, "exhausted": true}))?;

    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["gce-small"]).await?;
    let pool = until("the pool paused", WAIT, async || {
        let provider = stack.provider("gce").await?;
        Ok(provider.status.and_then(|s| s.pools.into_iter().next()).filter(|p| p.paused))
    })
    .await?;
    assert!(
        pool.paused_reason.as_deref().unwrap_or_default().contains("ZONE_RESOURCE_POOL_EXHAUSTED"),
        "{pool:?}"
    );
    // Not a failure: the request is still Nodepool-`pending`, waiting for capacity.
    let pending = zuul.call("get_request", json!({"request_id": request})).await?;
    assert_eq!(pending["data"]["state"], "pending", "{pending}");
    Ok(())
}

#[tokio::test]
async fn refused_credentials_make_the_provider_not_ready() -> Result<()> {
    let stack = Stack::start("gce-credentials").await?;
    let double = GceDouble::start(&stack.dir.join("logs"), 0.2)?;
    let key = double.service_account("revoked")?;
    let email = key["client_email"].as_str().context("client_email")?.to_owned();
    double.control("DELETE", &format!("/double/service-accounts/{email}"), json!({}))?;
    gce_provider(&stack, &double, "gce", &key).await?;
    let refused = until("the provider refused", WAIT, async || {
        Ok(ready_condition(&stack.provider("gce").await?)
            .filter(|c| c.status == "False" && c.reason != "CredentialsMissing"))
    })
    .await?;
    assert_eq!(refused.reason, "CredentialsRefused", "{refused:?}");
    Ok(())
}
