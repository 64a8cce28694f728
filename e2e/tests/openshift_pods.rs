//! The OpenShift pods driver against the test environment's real kube-apiserver and
//! kube-controller-manager: the provider's account is a service account that may only manage
//! pods in one namespace (the "project", the pool's name). Zuul's own client gets a pod node
//! whose credentials are that account's token, which works on the pod's project and nowhere
//! else, and the pod goes after use. There is no kubelet here (the Helm-on-a-kubelet issue),
//! so the test writes the pod's `Running` phase through the status subresource, as a kubelet
//! would; that a container really starts is not tested.

use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use k8s_openapi::api::{
    core::v1::{Pod, Secret, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use nodepool_e2e::{
    cluster,
    stack::{Stack, ready_condition},
    wait::until,
    zuul::Zuul,
};
use serde_json::json;

const WAIT: u64 = 90;

async fn wait_until<T>(what: &str, check: impl AsyncFnMut() -> Result<Option<T>>) -> Result<T> {
    until(what, Duration::from_secs(WAIT), check).await
}

/// A service account `launcher` in `project` that may manage pods there and nothing else; its
/// long-lived token and the cluster's CA (PEM), once the token controller filled them in.
async fn project_account(stack: &Stack, project: &str) -> Result<(String, Vec<u8>)> {
    let create = PostParams::default();
    let accounts: Api<ServiceAccount> = Api::namespaced(stack.client.clone(), project);
    accounts.create(&create, &serde_json::from_value(json!({"metadata": {"name": "launcher"}}))?).await?;
    let roles: Api<Role> = Api::namespaced(stack.client.clone(), project);
    let role = json!({"metadata": {"name": "pods"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
    ]});
    roles.create(&create, &serde_json::from_value(role)?).await?;
    let bindings: Api<RoleBinding> = Api::namespaced(stack.client.clone(), project);
    let binding = json!({"metadata": {"name": "launcher-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods"},
        "subjects": [{"kind": "ServiceAccount", "name": "launcher", "namespace": project}]});
    bindings.create(&create, &serde_json::from_value(binding)?).await?;
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), project);
    let secret = json!({"metadata": {"name": "launcher-token",
        "annotations": {"kubernetes.io/service-account.name": "launcher"}},
        "type": "kubernetes.io/service-account-token"});
    secrets.create(&create, &serde_json::from_value(secret)?).await?;
    wait_until("the launcher's token", async || {
        let data = secrets.get("launcher-token").await?.data.unwrap_or_default();
        Ok(match (data.get("token"), data.get("ca.crt")) {
            (Some(token), Some(ca)) => Some((String::from_utf8(token.0.clone())?, ca.0.clone())),
            _ => None,
        })
    })
    .await
}

#[tokio::test]
async fn zuul_gets_a_pod_in_the_project_with_the_providers_token_and_it_goes_after_use() -> Result<()> {
    let stack = Stack::start("openshift-pods").await?;
    let project = cluster::fresh_namespace(&stack.client, "project").await?;
    let (token, ca) = project_account(&stack, &project).await?;
    let engine = base64::engine::general_purpose::STANDARD;
    let server = stack.env.info.apiserver.trim_end_matches('/').to_owned();
    kubeconfig_secret(&stack, "cluster", &cluster::token_kubeconfig(&server, &token, &ca)?).await?;
    apply_provider(&stack, "osp", "cluster", &project, "os-pod").await?;
    let provider = stack.launchable("osp").await?;
    let label = &provider.status.context("status")?.pools[0].labels[0];
    assert_eq!(label.resources.as_ref().map(|r| (r.cores, r.ram)), Some((1, 256)), "{label:?}");

    // The pod is made in the project; without a kubelet, the test reports it running.
    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["os-pod"]).await?;
    let pods: Api<Pod> = Api::namespaced(stack.client.clone(), &project);
    let selector = "nodepool_provider_name=osp,nodepool_node_label=os-pod";
    let pod = wait_until("the pod", async || {
        Ok(pods.list(&ListParams::default().labels(selector)).await?.items.into_iter().next())
    })
    .await?;
    let pod_name = pod.metadata.name.clone().context("pod name")?;
    let spec = pod.spec.clone().context("pod spec")?;
    assert_eq!(spec.containers[0].image.as_deref(), Some("debian:bookworm"));
    assert_eq!(spec.image_pull_secrets.unwrap_or_default()[0].name, "registry");
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let running = json!({"status": {"phase": "Running"}});
    pods.patch_status(&pod_name, &PatchParams::default(), &Patch::Merge(&running)).await?;

    let outcome = zuul.wait(&request, WAIT).await?;
    assert_eq!(outcome["state"], "fulfilled", "{outcome}");
    let accepted = zuul.call("accept", json!({"request_id": request})).await?;
    let node = accepted["nodes"][0].clone();
    assert_eq!(node["connection_type"], "kubectl", "{node}");
    assert_eq!(node["interface_ip"], pod_name.as_str(), "{node}");
    assert_eq!(node["shell_type"], "sh", "{node}");
    let credentials = &node["connection_port"];
    assert_eq!(credentials["namespace"], project.as_str(), "{credentials}");
    assert_eq!(credentials["pod"], pod_name.as_str());
    assert_eq!(credentials["host"], server.as_str());
    assert_eq!(credentials["skiptls"], false);
    assert_eq!(credentials["token"], token.as_str(), "the provider's own token, as Nodepool hands it over");
    let handed_ca = engine.decode(credentials["ca_crt"].as_str().context("ca_crt")?)?;

    // What Zuul is handed works as Zuul uses it: the pod in its project, nothing elsewhere.
    let as_zuul = cluster::client_with_token(&server, &token, &handed_ca)?;
    Api::<Pod>::namespaced(as_zuul.clone(), &project).get(&pod_name).await?;
    let elsewhere = Api::<Pod>::namespaced(as_zuul, &stack.namespace).list(&ListParams::default()).await;
    assert!(matches!(elsewhere, Err(kube::Error::Api(ref e)) if e.code == 403), "{elsewhere:?}");

    // After use the pod and the node go.
    let build = accepted["build"].clone();
    zuul.call("use", json!({"build": build})).await?;
    zuul.call("return", json!({"build": build})).await?;
    wait_until("the pod deleted", async || {
        Ok(pods
            .get_opt(&pod_name)
            .await?
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(()))
    })
    .await?;
    wait_until("the node deleted", async || Ok(stack.nodes().await?.is_empty().then_some(()))).await?;
    Ok(())
}

async fn kubeconfig_secret(stack: &Stack, name: &str, kubeconfig: &str) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let secret = json!({"metadata": {"name": name}, "stringData": {"kubeconfig": kubeconfig}});
    secrets.create(&PostParams::default(), &serde_json::from_value(secret)?).await?;
    Ok(())
}

/// An openshiftpods provider `name` with one pool (the project) serving `label`.
async fn apply_provider(stack: &Stack, name: &str, secret: &str, project: &str, label: &str) -> Result<()> {
    stack
        .apply_provider(json!({
            "apiVersion": "nodepool.dev/v1alpha1", "kind": "Provider", "metadata": {"name": name},
            "spec": {
                "driver": "openshiftpods",
                "credentialsSecretRef": {"name": secret},
                "launchRetries": 1, "bootTimeout": "60s",
                "openshiftpods": {},
                "pools": [{"name": project, "labels": [{"name": label, "openshiftpods": {
                    "image": "debian:bookworm", "imagePullSecrets": ["registry"], "cpu": 1, "memory": 256,
                    "shellType": "sh"}}]}],
            },
        }))
        .await
}

/// A refused token makes its provider `Ready=False` (`CredentialsRefused`), a kubeconfig without
/// a token (client certificates only) too (`BadSettings`: Zuul would have nothing to use), and a
/// good provider beside them keeps serving.
#[tokio::test]
async fn a_refused_or_missing_token_makes_the_provider_not_ready_and_others_keep_serving() -> Result<()> {
    let stack = Stack::start("openshift-pods-refused").await?;
    let project = cluster::fresh_namespace(&stack.client, "project").await?;
    let (token, ca) = project_account(&stack, &project).await?;
    let server = stack.env.info.apiserver.trim_end_matches('/').to_owned();
    kubeconfig_secret(&stack, "good", &cluster::token_kubeconfig(&server, &token, &ca)?).await?;
    kubeconfig_secret(&stack, "refused", &cluster::token_kubeconfig(&server, "not-a-token", &ca)?).await?;
    let certificates = std::fs::read_to_string(&stack.env.info.kubeconfig)?;
    kubeconfig_secret(&stack, "no-token", &cluster::inline_kubeconfig_files(&certificates)).await?;
    apply_provider(&stack, "good", "good", &project, "good-pod").await?;
    apply_provider(&stack, "refused", "refused", &project, "refused-pod").await?;
    apply_provider(&stack, "no-token", "no-token", &project, "no-token-pod").await?;

    for (name, reason, says) in
        [("refused", "CredentialsRefused", "Unauthorized"), ("no-token", "BadSettings", "has no token")]
    {
        let condition = wait_until(&format!("{name} not ready"), async || {
            Ok(ready_condition(&stack.provider(name).await?).filter(|c| c.status == "False"))
        })
        .await?;
        assert_eq!(condition.reason, reason, "{condition:?}");
        assert!(condition.message.contains(says), "{condition:?}");
    }
    stack.launchable("good").await?;
    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["good-pod"]).await?;
    let pods: Api<Pod> = Api::namespaced(stack.client.clone(), &project);
    let pod = wait_until("the good provider's pod", async || {
        Ok(pods
            .list(&ListParams::default().labels("nodepool_provider_name=good"))
            .await?
            .items
            .into_iter()
            .next())
    })
    .await?;
    let running = json!({"status": {"phase": "Running"}});
    pods.patch_status(
        &pod.metadata.name.context("pod name")?,
        &PatchParams::default(),
        &Patch::Merge(&running),
    )
    .await?;
    assert_eq!(zuul.wait(&request, WAIT).await?["state"], "fulfilled");
    Ok(())
}
