//! [`nodepool_driver::Cloud`] over OpenShift: an "instance" is a node's project.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::{Api, Client};
use nodepool_crds::{
    ConnectionSettings, ConnectionType, ImageSpec,
    pool_node::NodeResources,
    provider::{Pool, PoolLabel, ResourceLimits},
};
use nodepool_driver::{Cloud, CloudError, Instance, InstanceSpec, InstanceState, cloud::CloudResult, tags};
use nodepool_driver_kubernetes::{Cluster, SERVICE_ACCOUNT, classify, create_or_get, objects};

use crate::{
    BLOCK, RECORD,
    project::{self, Projects},
    settings::{OpenShiftLabel, OpenShiftLabelKind},
};

/// One provider's OpenShift cluster.
pub struct OpenShiftCloud {
    client: Client,
    cluster: Cluster,
    projects: Projects,
    provider: String,
    system_id: String,
}

impl OpenShiftCloud {
    pub fn new(cluster: Cluster, provider: &str, system_id: &str) -> Self {
        let client = cluster.client.clone();
        let projects = Projects::new(&client);
        Self { client, cluster, projects, provider: provider.to_owned(), system_id: system_id.to_owned() }
    }

    fn label(label: &PoolLabel) -> CloudResult<OpenShiftLabel> {
        label
            .driver_settings
            .parse(BLOCK)?
            .ok_or_else(|| CloudError::Invalid(format!("label {} has no openshift block", label.name)))
    }

    /// What the project's record says it is (`None` before it is written, or in a project that
    /// is not a node's).
    async fn record(&self, project: &str) -> CloudResult<Option<ConfigMap>> {
        let records: Api<ConfigMap> = Api::namespaced(self.client.clone(), project);
        match records.get_opt(RECORD).await {
            Ok(found) => Ok(found),
            Err(kube::Error::Api(status)) if status.code == 403 => Ok(None),
            Err(error) => Err(classify("reading the node's record", error)),
        }
    }

    /// Where the node of project `name` stands, read from its objects.
    async fn look(&self, name: &str, terminating: bool) -> CloudResult<Instance> {
        let record = self.record(name).await?;
        let tags = record.as_ref().and_then(|r| r.metadata.labels.clone()).unwrap_or_default();
        let data = record.and_then(|r| r.data).unwrap_or_default();
        let mut instance = Instance::new(name.to_owned(), InstanceState::Pending, tags);
        if terminating {
            instance.state = InstanceState::Stopping;
            return Ok(instance);
        }
        let pod = data.get("pod").cloned();
        let connection = ConnectionSettings {
            connection_type: Some(if pod.is_some() {
                ConnectionType::Kubectl
            } else {
                ConnectionType::Project
            }),
            python_path: Some(data.get("pythonPath").cloned().unwrap_or_else(|| "auto".into())),
            shell_type: data.get("shellType").cloned(),
            ..Default::default()
        };
        self.cluster.node_instance(instance, pod, connection).await
    }

    fn ours(&self, instance: &Instance) -> bool {
        let tag = |key: &str| instance.tags.get(key).map(String::as_str);
        tag(tags::PROVIDER) == Some(objects::label_value(&self.provider).as_str())
            && tag(tags::SYSTEM_ID) == Some(objects::label_value(&self.system_id).as_str())
    }
}

#[async_trait]
impl Cloud for OpenShiftCloud {
    /// Requests the node's project, then writes its record, service account and token Secret,
    /// admin binding, and the pod of a pod label; whatever exists already is kept.
    async fn create(&self, spec: &InstanceSpec) -> CloudResult<Instance> {
        let label = Self::label(&spec.label)?;
        if label.kind == OpenShiftLabelKind::Pod && label.pod.image.is_none() {
            return Err(CloudError::Invalid(format!("pod label {} names no image", spec.label.name)));
        }
        let name = objects::namespace_name(&spec.token);
        let pod = (label.kind == OpenShiftLabelKind::Pod).then(|| objects::pod_name(&spec.label.name));
        self.projects.request(&name, &spec.tags).await?;
        // The record first: from here on leak cleanup knows the project as ours.
        let record = project::record(
            &name,
            &spec.tags,
            label.kind,
            pod.as_deref(),
            label.pod.python_path.as_deref(),
            label.pod.shell_type.as_deref(),
        );
        let records: Api<ConfigMap> = Api::namespaced(self.client.clone(), &name);
        create_or_get(&records, RECORD, &record, "writing the node's record").await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        create_or_get(
            &accounts,
            SERVICE_ACCOUNT,
            &objects::service_account(&name),
            "creating the service account",
        )
        .await?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &name);
        create_or_get(&secrets, SERVICE_ACCOUNT, &objects::token_secret(&name), "creating the token Secret")
            .await?;
        let binding = project::admin_binding(&name);
        let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
            Api::namespaced(self.client.clone(), &name);
        create_or_get(&bindings, "admin-0", &binding, "making the service account the project's admin")
            .await?;
        if let Some(pod) = &pod {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &name);
            let body = objects::pod(&name, pod, &spec.tags, &label.pod).map_err(CloudError::Invalid)?;
            create_or_get(&pods, pod, &body, "creating the pod").await?;
        }
        tracing::info!(provider = %self.provider, project = %name, node = %spec.node, "project created");
        self.look(&name, false).await
    }

    async fn get(&self, id: &str) -> CloudResult<Option<Instance>> {
        match self.projects.get(id).await? {
            Some(project) => self.look(&project.name, project.terminating).await.map(Some),
            None => Ok(None),
        }
    }

    /// Deletes the project; everything in it goes with it.
    async fn delete(&self, id: &str) -> CloudResult<()> {
        self.projects.delete(id).await
    }

    /// The projects whose record says they are this provider's and installation's.
    async fn list_instances(&self) -> CloudResult<Vec<Instance>> {
        let mut ours = Vec::new();
        for project in self.projects.list().await? {
            let Some(record) = self.record(&project.name).await? else { continue };
            let state = if project.terminating { InstanceState::Stopping } else { InstanceState::Running };
            let instance = Instance::new(project.name, state, record.metadata.labels.unwrap_or_default());
            if self.ours(&instance) {
                ours.push(instance);
            }
        }
        Ok(ours)
    }

    /// A cluster has no quota to report here (limits are the pool's and the provider's; a pool's
    /// `maxServers` is Nodepool's `max-projects`); the call proves the account may
    /// request projects.
    async fn quota_limits(&self, _pools: &[Pool]) -> CloudResult<ResourceLimits> {
        self.projects.may_request().await?;
        Ok(ResourceLimits::default())
    }

    /// A node holds what its container requests (a project label: what the label says).
    async fn label_resources(&self, _pool: &Pool, label: &PoolLabel) -> CloudResult<NodeResources> {
        Self::label(label)?.pod.footprint().map_err(CloudError::Invalid)
    }

    async fn resolve_image(&self, _image: &ImageSpec) -> CloudResult<String> {
        Err(CloudError::Invalid(
            "openshift labels name their container image in pools[].labels[].openshift.image".into(),
        ))
    }
}
