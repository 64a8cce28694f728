//! What a cloud driver provides: one call per cloud operation, none of them waiting for the cloud
//! to finish anything.

use std::collections::BTreeMap;

use async_trait::async_trait;
use nodepool_crds::{
    ImageSpec,
    pool_node::NodeResources,
    provider::{Pool, PoolLabel, ResourceLimits, ResourceUsage},
};

/// Everything the cloud needs to create one instance for one launch attempt.
#[derive(Clone, Debug)]
pub struct InstanceSpec {
    /// Unique per node and attempt (`<node>-a<attempt>`): the instance name where the cloud has
    /// names, the idempotency token where it has those. Creating twice with the same token
    /// yields the same instance, which is what makes a resumed launch safe.
    pub token: String,
    /// The launch attempt, from 1 (drivers with several zones try them in turn).
    pub attempt: u32,
    /// The `PoolNode` the instance is for.
    pub node: String,
    pub pool: Pool,
    pub label: PoolLabel,
    /// The resolved image (AMI id, GCE image link); `None` where the driver needs none.
    pub image_id: Option<String>,
    /// Every tag or label to put on the instance and its volumes (see [`crate::tags`]).
    pub tags: BTreeMap<String, String>,
    /// No create with this token can have reached the cloud before, so a driver need not look
    /// for an instance an earlier try made (see [`crate::create::Plan::unsent_token`]).
    pub first_try: bool,
}

/// Where an instance stands, in the driver-independent terms the state machines use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceState {
    /// Being created or booting.
    Pending,
    /// Running: addresses are known.
    Running,
    /// Being deleted.
    Stopping,
    /// Gone, or terminated and only still listed.
    Gone,
    /// The cloud gave up on it (boot error, failed operation); it must be deleted.
    Failed(String),
    /// The cloud accepted the create but then refused it for quota or capacity (GCE reports
    /// that in the insert's operation): the instance never existed. The launch is aborted.
    Refused(String),
}

/// An instance as the cloud reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The cloud's id (instance id, or instance name where names are ids).
    pub id: String,
    pub state: InstanceState,
    /// The address Zuul should connect to, chosen by the driver from the pool settings.
    pub interface_ip: Option<String>,
    pub public_ipv4: Option<String>,
    pub private_ipv4: Option<String>,
    pub public_ipv6: Option<String>,
    pub region: Option<String>,
    pub az: Option<String>,
    pub image_id: Option<String>,
    /// The instance's tags (labels on GCE), as stored.
    pub tags: BTreeMap<String, String>,
    /// How Zuul reaches a node that is not a machine it logs in to with the image's settings (a
    /// Kubernetes namespace or pod); `None` for machines.
    pub access: Option<NodeAccess>,
    /// What the instance holds, where the driver knows it better than the label's footprint (an
    /// EC2 Fleet chose the instance type); `None`: the label's.
    pub resources: Option<NodeResources>,
}

/// How Zuul reaches a node the driver describes itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAccess {
    /// Connection type (`namespace`, `kubectl`, ...), Python path and shell type.
    pub connection: nodepool_crds::ConnectionSettings,
    /// For Kubernetes-type nodes: the credentials Zuul builds its kubeconfig from.
    pub kubernetes: Option<KubernetesCredentials>,
}

/// Where and as whom Zuul reaches a Kubernetes namespace or pod. The operator keeps the token in
/// a Secret the node owns and the rest in the node's status.
#[derive(Clone, PartialEq, Eq)]
pub struct KubernetesCredentials {
    /// API server URL.
    pub host: String,
    pub namespace: String,
    /// Service account name.
    pub user: String,
    pub skip_tls: bool,
    /// CA bundle, base64 PEM.
    pub ca_crt: Option<String>,
    /// The pod of a `kubectl` node.
    pub pod: Option<String>,
    /// The service account's token.
    pub token: String,
}

/// Never prints the token.
impl std::fmt::Debug for KubernetesCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesCredentials")
            .field("host", &self.host)
            .field("namespace", &self.namespace)
            .field("user", &self.user)
            .field("skip_tls", &self.skip_tls)
            .field("pod", &self.pod)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Instance {
    /// An instance known only by its id, state and tags (drivers fill in what else they know).
    pub fn new(id: String, state: InstanceState, tags: BTreeMap<String, String>) -> Self {
        Self {
            id,
            state,
            interface_ip: None,
            public_ipv4: None,
            private_ipv4: None,
            public_ipv6: None,
            region: None,
            az: None,
            image_id: None,
            tags,
            access: None,
            resources: None,
        }
    }

    /// The `PoolNode` the instance was created for, from its tags.
    pub fn node(&self) -> Option<&str> {
        self.tags.get(crate::tags::NODE_ID).map(String::as_str)
    }
}

/// A resource other than an instance (a volume, say) tagged for the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakedResource {
    pub kind: ResourceKind,
    pub id: String,
    /// What its tags say it belongs to, if anything.
    pub owner: Option<Owner>,
}

/// What a resource of ours belongs to, as its tags say: an instance or volume to a node
/// ([`crate::tags::NODE_ID`]), an uploaded image or its snapshot to an `Image`
/// ([`crate::tags::IMAGE`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Node(String),
    Image(String),
}

/// The kinds of cloud resource leak cleanup knows: instances, and what drivers list besides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    Instance,
    Volume,
    DedicatedHost,
    /// An uploaded image (an AMI).
    Image,
    /// A snapshot (an AMI's, or one an import made).
    Snapshot,
}

impl ResourceKind {
    /// The name in logs and in the `kind` label of the leak metric.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Instance => "instance",
            ResourceKind::Volume => "volume",
            ResourceKind::DedicatedHost => "dedicated-host",
            ResourceKind::Image => "image",
            ResourceKind::Snapshot => "snapshot",
        }
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a cloud call failed, in the terms the lifecycle acts on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloudError {
    /// The account's quota does not allow it: the node is aborted (not failed) and the pool
    /// pauses until quota frees up.
    #[error("over quota: {0}")]
    Quota(String),
    /// The cloud has no capacity for it right now; treated like quota.
    #[error("insufficient capacity: {0}")]
    Capacity(String),
    /// The credentials were refused: the provider is not Ready.
    #[error("credentials refused: {0}")]
    Auth(String),
    /// The cloud asked us to slow down; the call is retried later.
    #[error("throttled by the cloud: {0}")]
    Throttled(String),
    /// The request is wrong and retrying it will not help (unknown instance type, bad image).
    #[error("{0}")]
    Invalid(String),
    /// Anything else (network errors, 5xx): retried later.
    #[error("{operation} failed: {message}")]
    Api { operation: &'static str, message: String },
}

/// A settings block that does not match its driver's type: the launch cannot go ahead as set.
impl From<nodepool_crds::driver_blocks::BadBlock> for CloudError {
    fn from(error: nodepool_crds::driver_blocks::BadBlock) -> Self {
        CloudError::Invalid(error.to_string())
    }
}

impl CloudError {
    pub fn api(operation: &'static str, message: impl ToString) -> Self {
        Self::Api { operation, message: message.to_string() }
    }

    /// A short name for how it failed (a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Quota(_) => "quota",
            Self::Capacity(_) => "capacity",
            Self::Auth(_) => "auth",
            Self::Throttled(_) => "throttled",
            Self::Invalid(_) => "invalid",
            Self::Api { .. } => "api",
        }
    }

    /// Whether the launch should abort the node and pause the pool.
    pub fn is_quota(&self) -> bool {
        matches!(self, Self::Quota(_) | Self::Capacity(_))
    }

    /// Whether the same call may succeed later without anything changing on our side.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Throttled(_) | Self::Api { .. } | Self::Auth(_))
    }
}

pub type CloudResult<T> = Result<T, CloudError>;

/// One cloud account as a driver sees it. Every call is a single request to the cloud; waiting
/// is the state machines' business.
#[async_trait]
pub trait Cloud: Send + Sync + 'static {
    /// Starts creating an instance. Idempotent per `spec.token`: a second call with the same
    /// token returns the instance the first one created, in whatever state it is.
    async fn create(&self, spec: &InstanceSpec) -> CloudResult<Instance>;

    /// The instance with this id, or `None` once it is gone.
    async fn get(&self, id: &str) -> CloudResult<Option<Instance>>;

    /// Starts deleting an instance. Deleting one that is already gone is not an error.
    async fn delete(&self, id: &str) -> CloudResult<()>;

    /// Every instance tagged for this provider and installation (see [`crate::tags`]),
    /// including ones being deleted.
    async fn list_instances(&self) -> CloudResult<Vec<Instance>>;

    /// The account's own limits (instances, vCPUs, memory, and other resources by key) for what
    /// `pools` launch; unset fields are unlimited.
    async fn quota_limits(&self, pools: &[Pool]) -> CloudResult<ResourceLimits>;

    /// What the account's resources that this provider does not own (another installation's,
    /// another user's) hold of the quota [`Cloud::quota_limits`] reports. Default: nothing.
    async fn unmanaged_usage(&self) -> CloudResult<ResourceUsage> {
        Ok(ResourceUsage::default())
    }

    /// What one node of `label` in `pool` holds against quota.
    async fn label_resources(&self, pool: &Pool, label: &PoolLabel) -> CloudResult<NodeResources>;

    /// The concrete image an `Image` stands for in this cloud (newest match for filters).
    async fn resolve_image(&self, image: &ImageSpec) -> CloudResult<String>;

    /// Resources other than instances tagged for this provider (volumes, ...). Default: none.
    async fn list_other_resources(&self) -> CloudResult<Vec<LeakedResource>> {
        Ok(Vec::new())
    }

    /// Deletes one resource found by [`Cloud::list_other_resources`].
    async fn delete_other_resource(&self, resource: &LeakedResource) -> CloudResult<()> {
        Err(CloudError::Invalid(format!("cannot delete a {} here", resource.kind)))
    }

    /// A cheap call that proves the credentials work (default: the quota call).
    async fn check_access(&self) -> CloudResult<()> {
        self.quota_limits(&[]).await.map(|_| ())
    }
}
