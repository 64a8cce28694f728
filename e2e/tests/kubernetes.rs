//! The Kubernetes driver against the test environment's real kube-apiserver and
//! kube-controller-manager (which fills in service-account tokens and deletes namespaces): Zuul's
//! own client gets a namespace node, the credentials it is handed work in that namespace and
//! nowhere else, and the namespace, its token Secret and the node go after use. A pod label's
//! pod cannot run here (there is no kubelet in this environment), so its launch fails at the
//! boot timeout and is cleaned up.

use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::{Api, api::PostParams};
use nodepool_e2e::{cluster, stack::Stack, wait::until, zuul::Zuul};
use serde_json::json;

const WAIT: u64 = 90;

/// The environment's admin kubeconfig with its files inlined, as a user would put it in a Secret.
fn inline_kubeconfig(stack: &Stack) -> Result<String> {
    Ok(cluster::inline_kubeconfig_files(&std::fs::read_to_string(&stack.env.info.kubeconfig)?))
}

async fn wait_until<T>(what: &str, check: impl AsyncFnMut() -> Result<Option<T>>) -> Result<T> {
    until(what, Duration::from_secs(WAIT), check).await
}

async fn provider(stack: &Stack) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "cluster"},
        "stringData": {"kubeconfig": inline_kubeconfig(stack)?},
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    stack
        .apply_provider(json!({
            "apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider",
            "metadata": {"name": "k8s"},
            "spec": {
                "driver": "kubernetes",
                "credentialsSecretRef": {"name": "cluster"},
                "launchRetries": 1, "bootTimeout": "5s",
                "kubernetes": {},
                "pools": [{"name": "main", "labels": [
                    {"name": "k8s-namespace", "kubernetes": {"type": "namespace", "cpu": 1, "memory": 512,
                        "extraResources": {"example.com/dongle": 1}}},
                    {"name": "k8s-pod", "kubernetes": {"type": "pod", "image": "debian:bookworm", "shellType": "sh",
                        "volumes": [{"name": "cache", "emptyDir": {}}],
                        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}},
                ]}],
            },
        }))
        .await?;
    stack.launchable("k8s").await?;
    Ok(())
}

#[tokio::test]
async fn zuul_gets_a_namespace_whose_credentials_work_there_only_and_it_goes_after_use() -> Result<()> {
    let stack = Stack::start("k8s-namespace").await?;
    provider(&stack).await?;
    let labels = stack.provider("k8s").await?.status.context("status")?.pools[0].labels.clone();
    let namespace_label = labels.iter().find(|l| l.name == "k8s-namespace").context("label status")?;
    assert!(namespace_label.launchable, "{namespace_label:?}");
    assert_eq!(namespace_label.resources.as_ref().map(|r| (r.cores, r.ram)), Some((1, 512)));
    let extra = namespace_label.resources.as_ref().and_then(|r| r.other.get("example.com/dongle").copied());
    assert_eq!(extra, Some(1), "extraResources count against quota");

    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["k8s-namespace"]).await?;
    let outcome = zuul.wait(&request, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let accepted = zuul.call("accept", json!({"request_id": request})).await?;
    let node = accepted["nodes"][0].clone();
    assert_eq!(node["connection_type"], "namespace", "{node}");
    assert_eq!(node["interface_ip"], serde_json::Value::Null, "{node}");
    assert_eq!(node["username"], serde_json::Value::Null, "{node}");
    assert_eq!(node["python_path"], "auto", "{node}");
    let credentials = &node["connection_port"];
    let namespace = credentials["namespace"].as_str().context("namespace in the credentials")?.to_owned();
    assert_eq!(credentials["name"], namespace.as_str());
    assert_eq!(credentials["user"], "zuul-worker");
    assert_eq!(credentials["skiptls"], false);
    assert_eq!(credentials["host"], stack.env.info.apiserver.trim_end_matches('/'), "{credentials}");
    let token = credentials["token"].as_str().context("token")?.to_owned();
    let ca = credentials["ca_crt"].as_str().context("ca_crt")?;

    // The PoolNode says where the token is, never the token itself.
    let nodes = stack.nodes().await?;
    let status = nodes[0].status.clone().context("node status")?;
    let access = status.kubernetes.clone().context("status.kubernetes")?;
    assert_eq!(access.namespace, namespace);
    assert_eq!(status.external_id.as_deref(), Some(namespace.as_str()));
    assert!(!serde_json::to_string(&status)?.contains(&token), "the token is in the node's status");

    // Zuul's credentials, used as Zuul builds its kubeconfig from them: allowed in the node's
    // namespace, refused anywhere else.
    let host = credentials["host"].as_str().context("host")?;
    let as_zuul =
        cluster::client_with_token(host, &token, &base64::engine::general_purpose::STANDARD.decode(ca)?)?;
    let config_map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "from-the-job"}}))?;
    Api::<ConfigMap>::namespaced(as_zuul.clone(), &namespace)
        .create(&PostParams::default(), &config_map)
        .await?;
    let elsewhere = Api::<ConfigMap>::namespaced(as_zuul.clone(), &stack.namespace)
        .create(&PostParams::default(), &config_map)
        .await;
    assert!(matches!(elsewhere, Err(kube::Error::Api(ref e)) if e.code == 403), "{elsewhere:?}");

    // After use the node, its namespace and its token Secret go.
    let build = accepted["build"].clone();
    zuul.call("use", json!({"build": build})).await?;
    zuul.call("return", json!({"build": build})).await?;
    let namespaces: Api<Namespace> = Api::all(stack.client.clone());
    wait_until("the node's namespace deleted", async || {
        let gone =
            namespaces.get_opt(&namespace).await?.is_none_or(|n| n.metadata.deletion_timestamp.is_some());
        Ok(gone.then_some(()))
    })
    .await?;
    wait_until("the node deleted", async || Ok(stack.nodes().await?.is_empty().then_some(()))).await?;
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), &stack.namespace);
    wait_until("the token Secret deleted with its node", async || {
        Ok(secrets.get_opt(&access.token_secret).await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_pod_that_never_runs_fails_its_launch_at_the_boot_timeout_and_is_cleaned_up() -> Result<()> {
    let stack = Stack::start("k8s-pod").await?;
    provider(&stack).await?;
    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["k8s-pod"]).await?;
    // The pod is made as Nodepool makes it, in a namespace of its own; without a kubelet it
    // stays pending.
    let namespaces: Api<Namespace> = Api::all(stack.client.clone());
    let selector = "nodepool_provider_name=k8s,nodepool_node_label=k8s-pod";
    let namespace = wait_until("the pod's namespace", async || {
        let listed = namespaces.list(&kube::api::ListParams::default().labels(selector)).await?;
        Ok(listed.items.into_iter().next().and_then(|n| n.metadata.name))
    })
    .await?;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(stack.client.clone(), &namespace);
    let pod = wait_until("the pod", async || Ok(pods.get_opt("k8s-pod").await?)).await?;
    let spec = pod.spec.context("pod spec")?;
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.containers[0].image.as_deref(), Some("debian:bookworm"));
    assert_eq!(spec.containers[0].args, Some(vec!["while true; do sleep 30; done;".to_owned()]));
    // The label's volume and mount, as the apiserver stored them.
    assert_eq!(
        spec.volumes.as_ref().map(|v| v.iter().any(|v| v.name == "cache" && v.empty_dir.is_some())),
        Some(true)
    );
    let mounts = spec.containers[0].volume_mounts.clone().unwrap_or_default();
    assert!(mounts.iter().any(|m| m.name == "cache" && m.mount_path == "/cache"), "{mounts:?}");

    let outcome = zuul.wait(&request, WAIT).await?;
    assert_eq!(outcome["state"], "failed", "{outcome}");
    wait_until("the failed attempt's namespace deleted", async || {
        let listed = namespaces.list(&kube::api::ListParams::default().labels(selector)).await?;
        Ok(listed.items.iter().all(|n| n.metadata.deletion_timestamp.is_some()).then_some(()))
    })
    .await?;
    // The failed node itself goes once the request it was launched for is declined.
    wait_until("the failed node deleted", async || Ok(stack.nodes().await?.is_empty().then_some(()))).await?;
    Ok(())
}
