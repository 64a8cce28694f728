//! [`nodepool_driver::Cloud`] over pods in existing projects: an "instance" is a pod, named
//! `<project>/<pod>`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams},
};
use nodepool_crds::{
    ConnectionSettings, ConnectionType, ImageSpec,
    pool_node::NodeResources,
    provider::{Pool, PoolLabel, ResourceLimits},
};
use nodepool_driver::{
    Cloud, CloudError, Instance, InstanceSpec, InstanceState, KubernetesCredentials, NodeAccess,
    cloud::CloudResult, tags,
};
use nodepool_driver_kubernetes::{
    SERVICE_ACCOUNT, classify, create_or_get,
    objects::{self, PYTHON_PATH_ANNOTATION, SHELL_TYPE_ANNOTATION, label_value},
    settings::PodSettings,
};

use crate::BLOCK;

/// What Zuul gets to reach its pods: the provider's own account, as Nodepool hands it over.
pub struct Account {
    /// The API server URL handed to Zuul.
    pub api_url: String,
    pub skip_tls: bool,
    /// The cluster's CA, base64 PEM (`certificate-authority-data`).
    pub ca_crt: Option<String>,
    pub token: String,
}

/// One provider's projects.
pub struct OpenShiftPodsCloud {
    client: Client,
    provider: String,
    system_id: String,
    /// The projects (namespaces) pods are made in: the pools' names.
    projects: Vec<String>,
    account: Account,
}

impl OpenShiftPodsCloud {
    pub fn new(
        client: Client,
        provider: &str,
        system_id: &str,
        projects: Vec<String>,
        account: Account,
    ) -> Self {
        Self { client, provider: provider.to_owned(), system_id: system_id.to_owned(), projects, account }
    }

    fn label(label: &PoolLabel) -> CloudResult<PodSettings> {
        label
            .driver_settings
            .parse(BLOCK)?
            .ok_or_else(|| CloudError::Invalid(format!("label {} has no openshiftpods block", label.name)))
    }

    fn pods(&self, project: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), project)
    }

    /// Where the node of `pod` in `project` stands.
    fn look(&self, project: &str, pod: Pod) -> Instance {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let id = instance_id(project, &name);
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let mut instance =
            Instance::new(id, InstanceState::Pending, pod.metadata.labels.clone().unwrap_or_default());
        if pod.metadata.deletion_timestamp.is_some() {
            instance.state = InstanceState::Stopping;
            return instance;
        }
        let status = pod.status.unwrap_or_default();
        match status.phase.as_deref() {
            Some("Running") => {}
            Some("Failed") | Some("Succeeded") => {
                let why = status.message.or(status.reason).unwrap_or_else(|| "it stopped".into());
                instance.state = InstanceState::Failed(format!("pod {name}: {why}"));
                return instance;
            }
            _ => return instance,
        }
        let connection = ConnectionSettings {
            connection_type: Some(ConnectionType::Kubectl),
            python_path: Some(
                annotations.get(PYTHON_PATH_ANNOTATION).cloned().unwrap_or_else(|| "auto".into()),
            ),
            shell_type: annotations.get(SHELL_TYPE_ANNOTATION).cloned(),
            ..Default::default()
        };
        let credentials = KubernetesCredentials {
            host: self.account.api_url.clone(),
            namespace: project.to_owned(),
            // Only a name (Nodepool's): the token is the provider's own account's.
            user: SERVICE_ACCOUNT.into(),
            skip_tls: self.account.skip_tls,
            ca_crt: self.account.ca_crt.clone(),
            pod: Some(name.clone()),
            token: self.account.token.clone(),
        };
        instance.interface_ip = Some(name);
        instance.state = InstanceState::Running;
        instance.access = Some(NodeAccess { connection, kubernetes: Some(credentials) });
        instance
    }
}

/// `<project>/<pod>`.
fn instance_id(project: &str, pod: &str) -> String {
    format!("{project}/{pod}")
}

fn split_id(id: &str) -> CloudResult<(&str, &str)> {
    id.split_once('/').ok_or_else(|| CloudError::Invalid(format!("{id:?} is not <project>/<pod>")))
}

#[async_trait]
impl Cloud for OpenShiftPodsCloud {
    /// Creates the node's pod in the pool's project (an existing pod of the attempt is kept).
    async fn create(&self, spec: &InstanceSpec) -> CloudResult<Instance> {
        let mut settings = Self::label(&spec.label)?;
        if settings.image.is_none() {
            return Err(CloudError::Invalid(format!("label {} names no image", spec.label.name)));
        }
        let project = spec.pool.name.as_str();
        let name = objects::namespace_name(&spec.token);
        // What Zuul runs Ansible with, kept on the pod for a later look.
        if let Some(path) = &settings.python_path {
            settings.annotations.insert(PYTHON_PATH_ANNOTATION.to_owned(), path.clone());
        }
        if let Some(shell) = &settings.shell_type {
            settings.annotations.insert(SHELL_TYPE_ANNOTATION.to_owned(), shell.clone());
        }
        let pod = objects::pod(project, &name, &spec.tags, &settings).map_err(CloudError::Invalid)?;
        let pod = create_or_get(&self.pods(project), &name, &pod, "creating the pod").await?;
        tracing::info!(provider = %self.provider, project, pod = %name, node = %spec.node, "pod created");
        Ok(self.look(project, pod))
    }

    async fn get(&self, id: &str) -> CloudResult<Option<Instance>> {
        let (project, pod) = split_id(id)?;
        let found = self.pods(project).get_opt(pod).await.map_err(|e| classify("reading the pod", e))?;
        Ok(found.map(|pod| self.look(project, pod)))
    }

    async fn delete(&self, id: &str) -> CloudResult<()> {
        let (project, pod) = split_id(id)?;
        match self.pods(project).delete(pod, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(classify("deleting the pod", error)),
        }
    }

    /// This provider's pods in its projects (by their labels), for leak cleanup.
    async fn list_instances(&self) -> CloudResult<Vec<Instance>> {
        let selector = format!(
            "{}={},{}={}",
            tags::PROVIDER,
            label_value(&self.provider),
            tags::SYSTEM_ID,
            label_value(&self.system_id)
        );
        let mut instances = Vec::new();
        for project in &self.projects {
            let listed = self
                .pods(project)
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| classify("listing pods", e))?;
            for pod in listed.items {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let gone = pod.metadata.deletion_timestamp.is_some();
                let state = if gone { InstanceState::Stopping } else { InstanceState::Running };
                let labels: BTreeMap<String, String> = pod.metadata.labels.unwrap_or_default();
                instances.push(Instance::new(instance_id(project, &name), state, labels));
            }
        }
        Ok(instances)
    }

    /// No quota is asked of the cluster (limits are the pool's and the provider's); the call
    /// proves the cluster answers with these credentials.
    async fn quota_limits(&self, _pools: &[Pool]) -> CloudResult<ResourceLimits> {
        self.client.apiserver_version().await.map_err(|e| classify("asking the cluster's version", e))?;
        Ok(ResourceLimits::default())
    }

    /// A node holds what its container requests.
    async fn label_resources(&self, _pool: &Pool, label: &PoolLabel) -> CloudResult<NodeResources> {
        Self::label(label)?.footprint().map_err(CloudError::Invalid)
    }

    async fn resolve_image(&self, _image: &ImageSpec) -> CloudResult<String> {
        Err(CloudError::Invalid(
            "openshiftpods labels name their container image in pools[].labels[].openshiftpods.image".into(),
        ))
    }
}
