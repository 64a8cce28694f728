//! [`nodepool_driver::Cloud`] over a Kubernetes cluster: an "instance" is a node's namespace.

use async_trait::async_trait;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Secret, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, ListParams, PostParams, PropagationPolicy},
};
use nodepool_crds::{
    ConnectionSettings, ImageSpec,
    pool_node::NodeResources,
    provider::{Pool, PoolLabel, ResourceLimits},
};
use nodepool_driver::{
    Cloud, CloudError, Instance, InstanceSpec, InstanceState, NodeAccess, cloud::CloudResult, tags,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    BLOCK, Cluster, SERVICE_ACCOUNT, objects,
    settings::{KubernetesLabel, LabelKind},
};

/// One provider's cluster.
pub struct KubernetesCloud {
    client: Client,
    cluster: Cluster,
    provider: String,
    system_id: String,
}

impl KubernetesCloud {
    pub fn new(cluster: Cluster, provider: &str, system_id: &str) -> Self {
        let client = cluster.client.clone();
        Self { client, cluster, provider: provider.to_owned(), system_id: system_id.to_owned() }
    }

    fn label(label: &PoolLabel) -> CloudResult<KubernetesLabel> {
        label
            .driver_settings
            .parse(BLOCK)?
            .ok_or_else(|| CloudError::Invalid(format!("label {} has no kubernetes block", label.name)))
    }

    /// Where the node of `namespace` stands, read from its objects.
    async fn look(&self, namespace: Namespace) -> CloudResult<Instance> {
        let name = namespace.metadata.name.clone().unwrap_or_default();
        let annotations = namespace.metadata.annotations.clone().unwrap_or_default();
        let tags = namespace.metadata.labels.clone().unwrap_or_default();
        let mut instance = Instance::new(name.clone(), InstanceState::Pending, tags);
        let terminating = namespace.metadata.deletion_timestamp.is_some()
            || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
        if terminating {
            instance.state = InstanceState::Stopping;
            return Ok(instance);
        }
        let pod = annotations.get(objects::POD_ANNOTATION).cloned();
        let kind = if pod.is_some() { LabelKind::Pod } else { LabelKind::Namespace };
        let connection = ConnectionSettings {
            connection_type: Some(objects::connection_type(kind)),
            python_path: Some(
                annotations.get(objects::PYTHON_PATH_ANNOTATION).cloned().unwrap_or_else(|| "auto".into()),
            ),
            shell_type: annotations.get(objects::SHELL_TYPE_ANNOTATION).cloned(),
            ..Default::default()
        };
        self.cluster.node_instance(instance, pod, connection).await
    }
}

#[async_trait]
impl Cloud for KubernetesCloud {
    /// Creates the node's namespace, service account and token Secret, role and binding, and
    /// the pod of a pod label; whatever exists already is kept.
    async fn create(&self, spec: &InstanceSpec) -> CloudResult<Instance> {
        let label = Self::label(&spec.label)?;
        if label.kind == LabelKind::Pod && label.pod.image.is_none() {
            return Err(CloudError::Invalid(format!("pod label {} names no image", spec.label.name)));
        }
        let name = objects::namespace_name(&spec.token);
        let pod = (label.kind == LabelKind::Pod).then(|| objects::pod_name(&spec.label.name));
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace = objects::namespace(&name, &spec.tags, &label, pod.as_deref());
        let namespace = create_or_get(&namespaces, &name, &namespace, "creating the namespace").await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        let account = objects::service_account(&name);
        create_or_get(&accounts, SERVICE_ACCOUNT, &account, "creating the service account").await?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &name);
        create_or_get(&secrets, SERVICE_ACCOUNT, &objects::token_secret(&name), "creating the token Secret")
            .await?;
        let role = objects::role(&name, label.kind);
        let roles: Api<Role> = Api::namespaced(self.client.clone(), &name);
        create_or_get(&roles, &object_name(&role), &role, "creating the role").await?;
        let binding = objects::role_binding(&name, label.kind);
        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), &name);
        create_or_get(&bindings, &object_name(&binding), &binding, "creating the role binding").await?;
        if let Some(pod) = &pod {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &name);
            let body = objects::pod(&name, pod, &spec.tags, &label.pod).map_err(CloudError::Invalid)?;
            create_or_get(&pods, pod, &body, "creating the pod").await?;
        }
        tracing::info!(provider = %self.provider, namespace = %name, node = %spec.node, "namespace created");
        self.look(namespace).await
    }

    async fn get(&self, id: &str) -> CloudResult<Option<Instance>> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        match namespaces.get_opt(id).await.map_err(|e| classify("reading the namespace", e))? {
            Some(namespace) => self.look(namespace).await.map(Some),
            None => Ok(None),
        }
    }

    /// Deletes the namespace; everything in it goes with it.
    async fn delete(&self, id: &str) -> CloudResult<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let params =
            DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
        match namespaces.delete(id, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(classify("deleting the namespace", error)),
        }
    }

    async fn list_instances(&self) -> CloudResult<Vec<Instance>> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let selector = format!(
            "{}={},{}={}",
            tags::PROVIDER,
            objects::label_value(&self.provider),
            tags::SYSTEM_ID,
            objects::label_value(&self.system_id)
        );
        let listed = namespaces
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| classify("listing namespaces", e))?;
        Ok(listed
            .items
            .into_iter()
            .map(|namespace| {
                let gone = namespace.metadata.deletion_timestamp.is_some();
                let state = if gone { InstanceState::Stopping } else { InstanceState::Running };
                let name = namespace.metadata.name.clone().unwrap_or_default();
                Instance::new(name, state, namespace.metadata.labels.unwrap_or_default())
            })
            .collect())
    }

    /// A cluster has no quota to report here (limits are the pool's and the provider's); the
    /// call proves the cluster answers with these credentials.
    async fn quota_limits(&self, _pools: &[Pool]) -> CloudResult<ResourceLimits> {
        self.client.apiserver_version().await.map_err(|e| classify("asking the cluster's version", e))?;
        Ok(ResourceLimits::default())
    }

    /// A node holds what its container requests (a namespace label: what the label says).
    async fn label_resources(&self, _pool: &Pool, label: &PoolLabel) -> CloudResult<NodeResources> {
        Self::label(label)?.pod.footprint().map_err(CloudError::Invalid)
    }

    async fn resolve_image(&self, _image: &ImageSpec) -> CloudResult<String> {
        Err(CloudError::Invalid(
            "kubernetes labels name their container image in pools[].labels[].kubernetes.image".into(),
        ))
    }
}

impl Cluster {
    /// A node's namespace (or project) `instance`, running once its service account's token
    /// is filled in and its pod (if any) runs, with what Zuul is handed to reach it; pending or
    /// failed until then.
    pub async fn node_instance(
        &self,
        mut instance: Instance,
        pod: Option<String>,
        connection: ConnectionSettings,
    ) -> CloudResult<Instance> {
        let namespace = instance.id.clone();
        let Some((token, ca)) = service_account_token(&self.client, &namespace).await? else {
            return Ok(instance); // the token controller has not filled it in yet
        };
        if let Some(pod_name) = &pod {
            match pod_phase(&self.client, &namespace, pod_name).await? {
                PodPhase::Running => instance.interface_ip = Some(pod_name.clone()),
                PodPhase::Starting => return Ok(instance),
                PodPhase::Ended(why) => {
                    instance.state = InstanceState::Failed(why);
                    return Ok(instance);
                }
            }
        }
        let credentials = self.credentials(&namespace, token, &ca, pod);
        instance.state = InstanceState::Running;
        instance.access = Some(NodeAccess { connection, kubernetes: Some(credentials) });
        Ok(instance)
    }
}

/// The token and CA certificate of the node's service account, once the cluster's token
/// controller has filled in its Secret.
async fn service_account_token(client: &Client, namespace: &str) -> CloudResult<Option<(String, Vec<u8>)>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret =
        secrets.get_opt(SERVICE_ACCOUNT).await.map_err(|e| classify("reading the token Secret", e))?;
    let data = secret.and_then(|s| s.data).unwrap_or_default();
    Ok(match (data.get("token"), data.get("ca.crt")) {
        (Some(token), Some(ca)) => Some((String::from_utf8_lossy(&token.0).into_owned(), ca.0.clone())),
        _ => None,
    })
}

/// Where a node's pod stands.
enum PodPhase {
    Running,
    /// Scheduled, pulling, starting: not there yet.
    Starting,
    /// Gone, failed or finished: the launch attempt failed, for this reason.
    Ended(String),
}

async fn pod_phase(client: &Client, namespace: &str, pod: &str) -> CloudResult<PodPhase> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let Some(found) = pods.get_opt(pod).await.map_err(|e| classify("reading the pod", e))? else {
        return Ok(PodPhase::Ended(format!("pod {pod} is gone")));
    };
    let status = found.status.unwrap_or_default();
    Ok(match status.phase.as_deref() {
        Some("Running") => PodPhase::Running,
        Some("Failed") | Some("Succeeded") => {
            let why = status.message.or(status.reason).unwrap_or_else(|| "it stopped".into());
            PodPhase::Ended(format!("pod {pod}: {why}"))
        }
        _ => PodPhase::Starting,
    })
}

fn object_name<K: Resource>(object: &K) -> String {
    object.meta().name.clone().unwrap_or_default()
}

/// Creates `object` unless one of its name exists; returns what the cluster holds.
pub async fn create_or_get<K>(api: &Api<K>, name: &str, object: &K, operation: &'static str) -> CloudResult<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            api.get(name).await.map_err(|e| classify(operation, e))
        }
        Err(error) => Err(classify(operation, error)),
    }
}

/// What a failed call means for the launch.
pub fn classify(operation: &'static str, error: kube::Error) -> CloudError {
    match &error {
        kube::Error::Api(status) => match status.code {
            403 if status.message.contains("exceeded quota") => CloudError::Quota(status.message.clone()),
            401 | 403 => CloudError::Auth(format!("{operation}: {}", status.message)),
            429 => CloudError::Throttled(status.message.clone()),
            400 | 422 => CloudError::Invalid(format!("{operation}: {}", status.message)),
            _ => CloudError::api(operation, &error),
        },
        _ => CloudError::api(operation, &error),
    }
}
