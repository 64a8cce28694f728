//! The custom resources against a real kube-apiserver: installation, the examples, validation
//! messages, and the status subresource.

use anyhow::{Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
    core::{GroupVersionKind, Status},
};
use nodepool_crds::{Image, Label, Provider, ProviderStatus};
use nodepool_e2e::{TestEnv, cluster, tools};
use serde_json::{Value, json};

async fn setup(prefix: &str) -> Result<(TestEnv, Client, String)> {
    let env = TestEnv::shared().await?;
    let client = env.kube_client().await?;
    cluster::install_crds(&client).await?;
    let namespace = cluster::fresh_namespace(&client, prefix).await?;
    Ok((env, client, namespace))
}

fn dynamic_api(client: &Client, namespace: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(nodepool_crds::GROUP, nodepool_crds::VERSION, kind);
    let plural = format!("{}s", kind.to_lowercase());
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk_with_plural(&gvk, &plural))
}

#[tokio::test]
async fn every_crd_is_established_with_status_subresource_and_short_names() -> Result<()> {
    let (_env, client, _) = setup("crd-install").await?;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for (name, short) in [
        ("providers.nodepool.dev", "npp"),
        ("labels.nodepool.dev", "npl"),
        ("images.nodepool.dev", "npi"),
        ("noderequests.nodepool.dev", "npr"),
        ("poolnodes.nodepool.dev", "npn"),
        ("tenantlimits.nodepool.dev", "nptl"),
    ] {
        let crd = api.get(name).await?;
        let status = crd.status.context("CRD has no status")?;
        let established = status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} is not Established");
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{name} lacks /status"
        );
        assert_eq!(crd.spec.names.short_names.as_deref(), Some(&[short.to_owned()][..]));
        assert_eq!(crd.spec.names.categories.as_deref(), Some(&["nodepool".to_owned()][..]));
    }
    Ok(())
}

#[tokio::test]
async fn examples_apply_with_kubectl_and_read_back_typed() -> Result<()> {
    let (env, client, namespace) = setup("examples").await?;
    let examples = tools::repo_root().join("examples");
    let output = env.kubectl(
        ["apply", "-n", &namespace, "-f"].into_iter().map(Into::into).chain([examples.into_os_string()]),
    )?;
    assert!(output.status.success(), "kubectl apply failed: {}", String::from_utf8_lossy(&output.stderr));

    let providers: Api<Provider> = Api::namespaced(client.clone(), &namespace);
    let static_provider = providers.get("lab-static").await?;
    assert_eq!(static_provider.spec.driver.as_str(), "static");
    let hosts = nodepool_driver_static::hosts(&static_provider.spec.pools[0])?;
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0].max_parallel_jobs, 2);
    assert_eq!(hosts[1].connection.connection_port, Some(2222));
    // Defaults come from the schema, applied by the apiserver.
    assert_eq!(static_provider.spec.launch_retries, 3);
    assert_eq!(static_provider.spec.boot_timeout.to_string(), "1m");
    assert_eq!(hosts[1].max_parallel_jobs, 1);

    let aws = providers.get("aws-us-east-1").await?;
    let region = aws.spec.driver_settings.parse::<nodepool_driver_aws::settings::AwsProvider>("aws")?;
    assert_eq!(region.map(|a| a.region), Some("us-east-1".into()));
    assert_eq!(aws.spec.pools[0].labels.len(), 2);
    let gce = providers.get("gce-europe-west4").await?.spec.driver_settings;
    let gce = gce.parse::<nodepool_driver_gce::settings::GceProvider>("gce")?.context("gce block")?;
    assert_eq!(gce.zones.len(), 2);
    let simulated = providers.get("simulated").await?.spec.driver_settings;
    let simulated = simulated.parse::<nodepool_driver_simulated::SimulatedProvider>("simulated")?;
    assert_eq!(simulated.context("simulated block")?.capacity, Some(50));
    let pods = providers.get("ci-project").await?.spec;
    let pod = pods.pools[0].labels[0]
        .driver_settings
        .parse::<nodepool_driver_kubernetes::settings::PodSettings>("openshiftpods")?;
    assert_eq!(pod.context("openshiftpods block")?.image_pull_secrets, ["registry-secret"]);

    let labels: Api<Label> = Api::namespaced(client.clone(), &namespace);
    assert_eq!(labels.get("ubuntu-noble").await?.spec.min_ready, 2);
    let images: Api<Image> = Api::namespaced(client.clone(), &namespace);
    assert_eq!(images.get("ubuntu-noble").await?.spec.connection.username.as_deref(), Some("zuul"));

    let table = env.kubectl(["get", "providers", "-n", &namespace])?;
    let table = String::from_utf8(table.stdout)?;
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "DRIVER", "READY", "NODES", "AGE"] {
        assert!(header.contains(column), "`kubectl get providers` lacks {column}: {header}");
    }
    assert!(table.contains("lab-static") && table.contains("static"));
    Ok(())
}

/// `kubectl apply -f crds/generated/` must not warn: the apiserver warns of every schema format
/// it does not know (`unrecognized format "uint32"`), which schemars wrote for unsigned fields.
#[tokio::test]
async fn the_generated_crds_apply_without_warnings() -> Result<()> {
    let (env, _client, namespace) = setup("crd-warnings").await?;
    // As new CRDs in a group of their own: the apiserver warns of formats on create (on update
    // only of formats the old schema did not have), and a dry run creates nothing.
    let copies = env.info.dir.join(&namespace);
    std::fs::create_dir_all(&copies)?;
    for entry in std::fs::read_dir(tools::repo_root().join("crds/generated"))? {
        let entry = entry?;
        let yaml =
            std::fs::read_to_string(entry.path())?.replace("nodepool.dev", "format-check.nodepool.dev");
        std::fs::write(copies.join(entry.file_name()), yaml)?;
    }
    let args = ["create", "--dry-run=server", "-f"];
    let output = env.kubectl(args.into_iter().map(Into::into).chain([copies.into_os_string()]))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "kubectl apply failed: {stderr}");
    assert!(!stderr.contains("Warning"), "kubectl apply warned: {stderr}");
    Ok(())
}

/// Each invalid object, the kind it is, and a phrase the apiserver's message must contain.
fn invalid_objects() -> Vec<(&'static str, &'static str, Value)> {
    let provider = |spec: Value| json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": "bad"}, "spec": spec});
    let host = json!({"name": "h1", "labels": ["l"]});
    vec![
        (
            "unknown driver",
            "Unsupported value: \"openstack\"",
            provider(json!({"driver": "openstack", "pools": [{"name": "a"}]})),
        ),
        (
            "duplicate pool names",
            "Duplicate value",
            provider(json!({"driver": "simulated", "pools": [{"name": "a"}, {"name": "a"}]})),
        ),
        (
            "negative pool limit",
            "should be greater than or equal to 0",
            provider(json!({"driver": "simulated", "pools": [{"name": "a", "maxServers": -1}]})),
        ),
        (
            "duration without a unit",
            "spec.bootTimeout",
            provider(json!({"driver": "simulated", "bootTimeout": "10 minutes", "pools": [{"name": "a"}]})),
        ),
        (
            "aws provider without a region",
            "an aws provider needs spec.aws",
            provider(
                json!({"driver": "aws", "credentialsSecretRef": {"name": "s"}, "pools": [{"name": "a"}]}),
            ),
        ),
        (
            "aws provider with a malformed region",
            "spec.aws.region",
            provider(
                json!({"driver": "aws", "credentialsSecretRef": {"name": "s"}, "aws": {"region": "Virginia"}, "pools": [{"name": "a"}]}),
            ),
        ),
        (
            "cloud provider without credentials",
            "needs credentialsSecretRef",
            provider(
                json!({"driver": "gce", "gce": {"project": "p", "region": "r", "zones": ["z"]}, "pools": [{"name": "a"}]}),
            ),
        ),
        (
            "static pool without hosts",
            "every pool of a static provider needs pools[].hosts",
            provider(json!({"driver": "static", "pools": [{"name": "a"}]})),
        ),
        (
            "static pool with an empty host list",
            "spec.pools[0].hosts",
            provider(json!({"driver": "static", "pools": [{"name": "a", "hosts": []}]})),
        ),
        (
            "another driver's provider block",
            "spec.gce is only for a gce provider",
            provider(
                json!({"driver": "aws", "credentialsSecretRef": {"name": "s"}, "aws": {"region": "us-east-1"},
                       "gce": {"project": "p", "region": "r", "zones": ["z"]}, "pools": [{"name": "a"}]}),
            ),
        ),
        (
            "another driver's label block",
            "pools[].labels[].aws is only for an aws provider",
            provider(
                json!({"driver": "simulated", "pools": [{"name": "a", "labels": [{"name": "l", "aws": {}}]}]}),
            ),
        ),
        (
            "hosts in a cloud pool",
            "pools[].hosts is only for a static provider",
            provider(json!({"driver": "simulated", "pools": [{"name": "a", "hosts": [host]}]})),
        ),
        (
            "pool name that is not a DNS label",
            "spec.pools[0].name",
            provider(json!({"driver": "simulated", "pools": [{"name": "Main Pool"}]})),
        ),
        (
            "rate limit of zero",
            "rateLimit.requestsPerSecond must be positive",
            provider(
                json!({"driver": "simulated", "rateLimit": {"requestsPerSecond": 0}, "pools": [{"name": "a"}]}),
            ),
        ),
        (
            "image with both an id and filters",
            "either imageId or filters",
            json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Image", "metadata": {"name": "bad"},
                   "spec": {"aws": {"imageId": "ami-0abc", "filters": [{"name": "name", "values": ["x"]}]}}}),
        ),
        (
            "image for no cloud",
            "set spec.aws or spec.gce",
            json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Image", "metadata": {"name": "bad"}, "spec": {"username": "zuul"}}),
        ),
        (
            "label with negative min-ready",
            "spec.minReady",
            json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Label", "metadata": {"name": "bad"}, "spec": {"minReady": -2}}),
        ),
        (
            "request for no labels",
            "spec.labels",
            json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "NodeRequest", "metadata": {"name": "bad"},
                   "spec": {"requestId": "200-0000000001", "labels": []}}),
        ),
        (
            "node without a provider",
            "spec.provider",
            json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "PoolNode", "metadata": {"name": "bad"},
                   "spec": {"pool": "a", "labels": ["l"]}}),
        ),
    ]
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_a_clear_message() -> Result<()> {
    let (_env, client, namespace) = setup("invalid").await?;
    for (what, expected, object) in invalid_objects() {
        let kind = object["kind"].as_str().unwrap().to_owned();
        let api = dynamic_api(&client, &namespace, &kind);
        let object: DynamicObject = serde_json::from_value(object)?;
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => panic!("{what}: the apiserver accepted an invalid {kind}"),
            Err(kube::Error::Api(status)) => {
                let Status { code, message, .. } = *status;
                assert_eq!(code, 422, "{what}: {message}");
                assert!(message.contains(expected), "{what}: message {message:?} lacks {expected:?}");
            }
            Err(other) => panic!("{what}: unexpected error {other}"),
        }
        assert!(api.get_opt("bad").await?.is_none(), "{what}: a rejected object was stored");
    }
    Ok(())
}

#[tokio::test]
async fn a_providers_driver_cannot_change() -> Result<()> {
    let (_env, client, namespace) = setup("immutable").await?;
    let api = dynamic_api(&client, &namespace, "Provider");
    let provider = json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": "p"},
                          "spec": {"driver": "simulated", "pools": [{"name": "a"}]}});
    api.create(&PostParams::default(), &serde_json::from_value(provider)?).await?;
    let patch = json!({"spec": {"driver": "static", "pools": [{"name": "a", "hosts": [{"name": "h", "labels": ["l"]}]}]}});
    let error =
        api.patch("p", &PatchParams::default(), &Patch::Merge(&patch)).await.expect_err("driver changed");
    assert!(error.to_string().contains("spec.driver cannot be changed"), "{error}");
    Ok(())
}

#[tokio::test]
async fn status_is_written_only_through_the_status_subresource() -> Result<()> {
    let (_env, client, namespace) = setup("status").await?;
    let api: Api<Provider> = Api::namespaced(client.clone(), &namespace);
    let mut provider: Provider = serde_json::from_value(json!({
        "apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": "p"},
        "spec": {"driver": "simulated", "pools": [{"name": "a"}]},
        "status": {"observedGeneration": 7}
    }))?;
    let created = api.create(&PostParams::default(), &provider).await?;
    assert_eq!(created.status, None, "status in a create body must be ignored");

    // A write to the main resource leaves status alone.
    provider.metadata.resource_version = created.metadata.resource_version.clone();
    provider.status = Some(ProviderStatus { observed_generation: Some(9), ..Default::default() });
    let replaced = api.replace("p", &PostParams::default(), &provider).await?;
    assert_eq!(replaced.status, None, "status written through the main resource");

    // The status subresource writes status, and only status.
    let patch = json!({"spec": {"driver": "aws"}, "status": {"observedGeneration": 1}});
    let patched = api.patch_status("p", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    assert_eq!(patched.status.and_then(|s| s.observed_generation), Some(1));
    assert_eq!(patched.spec.driver.as_str(), "simulated", "spec written through /status");

    // The other kinds behave the same way.
    let objects = [
        ("Label", json!({"minReady": 1}), json!({"ready": 3})),
        ("Image", json!({"gce": {"family": "debian-12"}}), json!({"observedGeneration": 1})),
        ("NodeRequest", json!({"requestId": "200-0000000001", "labels": ["l"]}), json!({"state": "pending"})),
        ("PoolNode", json!({"provider": "p", "pool": "a", "labels": ["l"]}), json!({"state": "ready"})),
    ];
    for (kind, spec, status) in objects {
        let api = dynamic_api(&client, &namespace, kind);
        let object = json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": kind, "metadata": {"name": "s"},
                            "spec": spec, "status": status});
        let created = api.create(&PostParams::default(), &serde_json::from_value(object)?).await?;
        assert!(created.data.get("status").is_none(), "{kind}: status accepted on create");
        let main = api.patch("s", &PatchParams::default(), &Patch::Merge(&json!({"status": status}))).await?;
        assert!(main.data.get("status").is_none(), "{kind}: status written through the main resource");
        let via_status =
            api.patch_status("s", &PatchParams::default(), &Patch::Merge(&json!({"status": status}))).await?;
        let written = via_status.data.get("status").cloned().unwrap_or_default();
        for (field, value) in status.as_object().unwrap() {
            assert_eq!(written.get(field), Some(value), "{kind}: /status did not write status.{field}");
        }
    }
    Ok(())
}
