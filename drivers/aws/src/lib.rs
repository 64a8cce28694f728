//! The AWS EC2 driver: [`nodepool_driver::Cloud`] over `aws-sdk-ec2`.
//!
//! - Instances are created with `RunInstances`, tagged (instance and volumes) with the
//!   framework's ownership tags plus a launch token, and found again by that token, so a
//!   resumed launch adopts its instance instead of creating a second one. (EC2's own
//!   `ClientToken` would do the same, but moto does not honour it; the tag works everywhere.)
//! - Spot labels fall back to on-demand when EC2 has no spot capacity.
//! - Instance-type sizes come from `DescribeInstanceTypes` (cached: they never change).
//! - Images: a fixed AMI id is checked to exist; filters pick the newest matching AMI.
//! - Leaks: instances, detached volumes, dedicated hosts, and uploaded AMIs and snapshots
//!   tagged for the provider and installation whose node or `Image` is gone.

mod account;
mod descriptor;
mod errors;
mod fleet;
mod leaks;
pub mod quota;
pub mod settings;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use async_trait::async_trait;
use aws_sdk_ec2::{
    Client,
    config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider},
    types::{
        BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
        InstanceLifecycleType, InstanceMarketOptionsRequest, InstanceMetadataOptionsRequest,
        InstanceNetworkInterfaceSpecification, InstanceStateName, InstanceType, MarketType, Placement,
        ResourceType, Tag, TagSpecification, Tenancy, VolumeType,
    },
};
use base64::Engine;
use nodepool_crds::{
    ImageSpec,
    pool_node::NodeResources,
    provider::{Pool, PoolLabel, ResourceLimits, ResourceUsage},
};
use nodepool_driver::{
    Cloud, CloudError, Instance, InstanceSpec, InstanceState, LeakedResource, cloud::CloudResult,
    coalesce::Coalescer, tags,
};

use account::label_instance_types;
pub use descriptor::{ACCESS_KEY_ID, Aws, SECRET_ACCESS_KEY};
pub use errors::classify;
use settings::{AwsImage, AwsLabel, AwsPool};

/// The block of every AWS setting: `spec.aws`, `pools[].aws`, `pools[].labels[].aws`, and an
/// Image's `spec.aws`.
pub const BLOCK: &str = "aws";

/// Tag holding the launch token (`<node>-a<attempt>`), by which a resumed launch finds its instance.
pub const LAUNCH_TOKEN_TAG: &str = "nodepool_launch_token";

/// How the driver authenticates.
#[derive(Clone, Debug)]
pub enum AwsCredentials {
    /// An access key pair (and a session token for temporary credentials).
    Keys { access_key_id: String, secret_access_key: String, session_token: Option<String> },
    /// Web identity federation (IRSA): a role to assume with the token in a file.
    WebIdentity { role_arn: String, token_file: String },
}

/// Settings the driver is built from.
#[derive(Clone, Debug)]
pub struct AwsSettings {
    pub provider: String,
    pub system_id: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub credentials: AwsCredentials,
}

pub struct AwsCloud {
    pub(crate) client: Client,
    /// Service Quotas, where EC2 keeps the account's vCPU, host and volume quotas.
    quotas: aws_sdk_servicequotas::Client,
    pub(crate) settings: AwsSettings,
    /// vCPUs and MiB per instance type.
    instance_types: Mutex<HashMap<String, NodeResources>>,
    /// Root device name per AMI (for volume size and type).
    root_devices: Mutex<HashMap<String, String>>,
    /// Launch templates known to exist (fleet labels).
    templates: Mutex<std::collections::HashSet<String>>,
    /// Instance polls, launch-token lookups and terminations of many nodes, each made as one call.
    polls: Coalescer<String, Instance>,
    lookups: Coalescer<String, Instance>,
    terminations: Coalescer<String, ()>,
}

/// The least time between two coalesced calls of one kind: a lone poll waits at most this long,
/// and under load each call answers every node that polled meanwhile.
const COALESCE_SPACING: std::time::Duration = std::time::Duration::from_millis(200);
/// The same for terminations, which nothing waits on but quota: a longer spacing gathers more
/// nodes per `TerminateInstances`. At 200 ms, 80 calls ended 155 nodes (4 Zuul workers, release
/// build on moto); at 1 s, 21 ended 167, and EC2 calls per node fell from 2.2 to 1.7.
const TERMINATION_SPACING: std::time::Duration = std::time::Duration::from_secs(1);

/// The credentials every client of the provider signs with.
fn credentials_provider(settings: &AwsSettings, region: &Region) -> SharedCredentialsProvider {
    match &settings.credentials {
        AwsCredentials::Keys { access_key_id, secret_access_key, session_token } => {
            SharedCredentialsProvider::new(Credentials::new(
                access_key_id,
                secret_access_key,
                session_token.clone(),
                None,
                "nodepool-secret",
            ))
        }
        AwsCredentials::WebIdentity { role_arn, token_file } => {
            use aws_config::web_identity_token::{StaticConfiguration, WebIdentityTokenCredentialsProvider};
            let provider_config =
                aws_config::provider_config::ProviderConfig::default().with_region(Some(region.clone()));
            SharedCredentialsProvider::new(
                WebIdentityTokenCredentialsProvider::builder()
                    .static_configuration(StaticConfiguration {
                        web_identity_token_file: token_file.into(),
                        role_arn: role_arn.clone(),
                        session_name: format!("nodepool-{}", settings.provider),
                    })
                    .configure(&provider_config)
                    .build(),
            )
        }
    }
}

impl AwsCloud {
    pub fn new(settings: AwsSettings) -> Self {
        let region = Region::new(settings.region.clone());
        let credentials = credentials_provider(&settings, &region);
        let mut ec2 = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region.clone())
            .credentials_provider(credentials.clone());
        let mut quotas = aws_sdk_servicequotas::Config::builder()
            .behavior_version(aws_sdk_servicequotas::config::BehaviorVersion::latest())
            .region(region)
            .credentials_provider(credentials);
        if let Some(endpoint) = &settings.endpoint {
            ec2 = ec2.endpoint_url(endpoint);
            quotas = quotas.endpoint_url(endpoint);
        }
        Self {
            client: Client::from_conf(ec2.build()),
            quotas: aws_sdk_servicequotas::Client::from_conf(quotas.build()),
            settings,
            instance_types: Mutex::default(),
            root_devices: Mutex::default(),
            templates: Mutex::default(),
            polls: Coalescer::new(COALESCE_SPACING),
            lookups: Coalescer::new(COALESCE_SPACING),
            terminations: Coalescer::new(TERMINATION_SPACING),
        }
    }

    fn ownership_filters(&self) -> Vec<Filter> {
        vec![
            tag_filter(tags::PROVIDER, &self.settings.provider),
            tag_filter(tags::SYSTEM_ID, &self.settings.system_id),
        ]
    }

    async fn describe(&self, filters: Vec<Filter>, ids: Vec<String>) -> CloudResult<Vec<Instance>> {
        let mut pages = self
            .client
            .describe_instances()
            .set_filters((!filters.is_empty()).then_some(filters))
            .set_instance_ids((!ids.is_empty()).then_some(ids))
            .into_paginator()
            .send();
        let mut described = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("DescribeInstances", e))?;
            described.extend(page.reservations().iter().flat_map(|r| r.instances()).cloned());
        }
        // Every type's size is known before the instances are read, so each reports what it
        // holds (a fresh process, or a type a fleet chose that no label estimate asked for).
        let types: std::collections::BTreeSet<&str> =
            described.iter().filter_map(|i| i.instance_type()).map(|t| t.as_str()).collect();
        for instance_type in types {
            if let Err(error) = self.instance_type_resources(instance_type).await {
                tracing::warn!(instance_type, %error, "the size of an instance type is unknown");
            }
        }
        Ok(described.iter().map(|i| self.to_instance(i)).collect())
    }

    fn to_instance(&self, instance: &aws_sdk_ec2::types::Instance) -> Instance {
        let state = match instance.state().and_then(|s| s.name()) {
            Some(InstanceStateName::Pending) => InstanceState::Pending,
            Some(InstanceStateName::Running) => InstanceState::Running,
            Some(InstanceStateName::ShuttingDown) => InstanceState::Stopping,
            Some(InstanceStateName::Terminated) => InstanceState::Gone,
            Some(InstanceStateName::Stopping | InstanceStateName::Stopped) => {
                InstanceState::Failed("the instance stopped".into())
            }
            other => InstanceState::Failed(format!("unexpected state {other:?}")),
        };
        let tags: BTreeMap<String, String> = instance
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
            .collect();
        let public = instance.public_ip_address().map(str::to_owned);
        let private = instance.private_ip_address().map(str::to_owned);
        let use_private = tags.get(USE_PRIVATE_IP_TAG).is_some_and(|v| v == "true");
        let interface_ip = if use_private { private.clone() } else { public.clone().or(private.clone()) };
        let ipv6 = instance
            .network_interfaces()
            .iter()
            .flat_map(|n| n.ipv6_addresses())
            .find_map(|a| a.ipv6_address());
        Instance {
            id: instance.instance_id().unwrap_or_default().to_owned(),
            state,
            interface_ip,
            public_ipv4: public,
            private_ipv4: private,
            public_ipv6: ipv6.map(str::to_owned),
            region: Some(self.settings.region.clone()),
            az: instance.placement().and_then(|p| p.availability_zone()).map(str::to_owned),
            image_id: instance.image_id().map(str::to_owned),
            tags,
            access: None,
            // What its type holds (a fleet chose it; the label's footprint was the largest).
            resources: instance.instance_type().and_then(|t| {
                let size = self.instance_types.lock().expect("lock").get(t.as_str()).cloned()?;
                let placement = quota::Placement {
                    instance_type: t.as_str(),
                    spot: instance.instance_lifecycle() == Some(&InstanceLifecycleType::Spot),
                    dedicated_host: instance.placement().and_then(|p| p.host_id()).is_some(),
                };
                Some(quota::instance_footprint(&size, placement))
            }),
        }
    }

    /// The AMI's root device name (where the volume size and type go).
    async fn root_device(&self, image_id: &str) -> CloudResult<String> {
        if let Some(name) = self.root_devices.lock().expect("lock").get(image_id) {
            return Ok(name.clone());
        }
        let images = self
            .client
            .describe_images()
            .image_ids(image_id)
            .send()
            .await
            .map_err(|e| classify("DescribeImages", e))?;
        let name =
            images.images().first().and_then(|i| i.root_device_name()).unwrap_or("/dev/xvda").to_owned();
        self.root_devices.lock().expect("lock").insert(image_id.to_owned(), name.clone());
        Ok(name)
    }

    /// Launches the instance; a spot label falls back to on-demand when EC2 has no spot capacity.
    async fn launch_with_spot_fallback(&self, spec: &InstanceSpec) -> CloudResult<Instance> {
        if !spec.label.spot {
            return self.launch(spec, false).await;
        }
        match self.launch(spec, true).await {
            Err(error) if error.is_quota() => {
                tracing::info!(node = %spec.node, %error, "no spot capacity; launching on demand");
                self.launch(spec, false).await
            }
            other => other,
        }
    }

    /// One launch attempt: a fleet's, or one instance's.
    async fn launch(&self, spec: &InstanceSpec, spot: bool) -> CloudResult<Instance> {
        let pool: AwsPool = spec.pool.driver_settings.parse(BLOCK)?.unwrap_or_default();
        let aws: AwsLabel = spec.label.driver_settings.parse(BLOCK)?.unwrap_or_default();
        let image_id = spec
            .image_id
            .clone()
            .ok_or_else(|| CloudError::Invalid(format!("label {} has no image", spec.label.name)))?;
        let tags = instance_tags(spec, &pool);
        let launch = Launch { spec, pool, aws, image_id, tags };
        match &launch.aws.fleet {
            Some(fleet) => fleet::launch(self, &launch, fleet, spot).await,
            None => self.run_instance(&launch, spot).await,
        }
    }

    async fn run_instance(&self, launch: &Launch<'_>, spot: bool) -> Result<Instance, CloudError> {
        let Launch { spec, pool, aws, image_id, tags } = launch;
        let label = &spec.label;
        let instance_type = label
            .instance_type
            .clone()
            .ok_or_else(|| CloudError::Invalid(format!("label {} has no instanceType", label.name)))?;
        let tag_spec = |kind: ResourceType| {
            TagSpecification::builder().resource_type(kind).set_tags(Some(tags.clone())).build()
        };

        let mut request = self
            .client
            .run_instances()
            .image_id(image_id)
            .instance_type(InstanceType::from(instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .tag_specifications(tag_spec(ResourceType::Instance))
            .tag_specifications(tag_spec(ResourceType::Volume))
            .set_key_name(aws.key_name.clone())
            .set_ebs_optimized(aws.ebs_optimized.then_some(true));
        if let Some(user_data) = &label.user_data {
            request = request.user_data(base64::engine::general_purpose::STANDARD.encode(user_data));
        }
        match network_interface(pool) {
            Some(interface) => request = request.network_interfaces(interface),
            None if !pool.security_group_ids.is_empty() => {
                request = request.set_security_group_ids(Some(pool.security_group_ids.clone()));
            }
            None => {}
        }
        let mut placement = Placement::builder().set_availability_zone(pool.availability_zone.clone());
        if aws.dedicated_host {
            let host = self
                .dedicated_host(spec, &instance_type, pool, tag_spec(ResourceType::DedicatedHost))
                .await?;
            placement = placement.tenancy(Tenancy::Host).host_id(host);
        }
        if pool.availability_zone.is_some() || aws.dedicated_host {
            request = request.placement(placement.build());
        }
        if let Some(volume) = self.root_volume(image_id, label, aws).await? {
            request = request.block_device_mappings(volume);
        }
        if let Some(profile) = &aws.iam_instance_profile {
            let profile_spec = if profile.starts_with("arn:") {
                IamInstanceProfileSpecification::builder().arn(profile).build()
            } else {
                IamInstanceProfileSpecification::builder().name(profile).build()
            };
            request = request.iam_instance_profile(profile_spec);
        }
        if aws.imdsv2 {
            request = request.metadata_options(
                InstanceMetadataOptionsRequest::builder().http_tokens(HttpTokensState::Required).build(),
            );
        }
        if spot {
            request = request.instance_market_options(
                InstanceMarketOptionsRequest::builder().market_type(MarketType::Spot).build(),
            );
        }
        let output = request.send().await.map_err(|e| classify("RunInstances", e))?;
        let instance = output
            .instances()
            .first()
            .ok_or_else(|| CloudError::api("RunInstances", "the answer lists no instance"))?;
        Ok(self.to_instance(instance))
    }

    /// The root volume's size, type, IOPS and throughput, when the label sets any.
    pub(crate) async fn root_volume(
        &self,
        image_id: &str,
        label: &PoolLabel,
        aws: &AwsLabel,
    ) -> CloudResult<Option<BlockDeviceMapping>> {
        let wanted = label.volume_size_gb.is_some()
            || label.volume_type.is_some()
            || aws.iops.is_some()
            || aws.throughput.is_some();
        if !wanted {
            return Ok(None);
        }
        let device = self.root_device(image_id).await?;
        let ebs = EbsBlockDevice::builder()
            .set_volume_size(label.volume_size_gb.map(|g| g as i32))
            .set_volume_type(label.volume_type.as_deref().map(VolumeType::from))
            .set_iops(aws.iops.map(|i| i as i32))
            .set_throughput(aws.throughput.map(|t| t as i32))
            .delete_on_termination(true)
            .build();
        Ok(Some(BlockDeviceMapping::builder().device_name(device).ebs(ebs).build()))
    }

    /// The node's dedicated host: the one allocated for this launch attempt by an earlier try,
    /// or a new one. It is released by leak cleanup once its node is gone (a host cannot be
    /// released while its instance still runs).
    async fn dedicated_host(
        &self,
        spec: &InstanceSpec,
        instance_type: &str,
        pool: &AwsPool,
        tags: TagSpecification,
    ) -> CloudResult<String> {
        let zone = pool.availability_zone.clone().ok_or_else(|| {
            CloudError::Invalid(format!(
                "label {} has dedicatedHost, and pool {} sets no aws.availabilityZone to allocate it in",
                spec.label.name, spec.pool.name
            ))
        })?;
        if let Some(host) = self
            .our_hosts()
            .await?
            .into_iter()
            .find(|h| tag_of(h.tags(), LAUNCH_TOKEN_TAG) == Some(&spec.token))
        {
            return Ok(host.host_id().unwrap_or_default().to_owned());
        }
        let output = self
            .client
            .allocate_hosts()
            .availability_zone(zone)
            .instance_type(instance_type)
            .quantity(1)
            .tag_specifications(tags)
            .send()
            .await
            .map_err(|e| classify("AllocateHosts", e))?;
        let host = output.host_ids().first().cloned();
        host.ok_or_else(|| CloudError::api("AllocateHosts", "the answer lists no host"))
    }

    /// The dedicated hosts this provider and installation hold (not released). Filtered here
    /// rather than by EC2: an account holds few hosts.
    async fn our_hosts(&self) -> CloudResult<Vec<aws_sdk_ec2::types::Host>> {
        let mut pages = self.client.describe_hosts().into_paginator().send();
        let mut hosts = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("DescribeHosts", e))?;
            hosts.extend(
                page.hosts()
                    .iter()
                    .filter(|host| {
                        let held = host.state().is_some_and(|s| {
                            !matches!(s.as_str(), "released" | "released-permanent-failure")
                        });
                        held && self.owns(host.tags())
                    })
                    .cloned(),
            );
        }
        Ok(hosts)
    }

    /// vCPUs and memory of an instance type, from `DescribeInstanceTypes` (cached).
    async fn instance_type_resources(&self, instance_type: &str) -> CloudResult<NodeResources> {
        let instance_type = instance_type.to_owned();
        if let Some(resources) = self.instance_types.lock().expect("lock").get(&instance_type) {
            return Ok(resources.clone());
        }
        let output = self
            .client
            .describe_instance_types()
            .instance_types(InstanceType::from(instance_type.as_str()))
            .send()
            .await
            .map_err(|e| classify("DescribeInstanceTypes", e))?;
        let info = output.instance_types().first().ok_or_else(|| {
            CloudError::Invalid(format!("EC2 does not know instance type {instance_type:?}"))
        })?;
        let resources = NodeResources {
            cores: info.v_cpu_info().and_then(|v| v.default_v_cpus()).unwrap_or(0).max(0) as u32,
            ram: info.memory_info().and_then(|m| m.size_in_mib()).unwrap_or(0).max(0) as u64,
            instances: 1,
            ..Default::default()
        };
        self.instance_types.lock().expect("lock").insert(instance_type, resources.clone());
        Ok(resources)
    }

    /// Terminates instances; one EC2 no longer knows is already gone. A batch that EC2 refuses
    /// for an unknown id is sent again id by id, so the others still go.
    async fn terminate(&self, ids: Vec<String>) -> CloudResult<()> {
        let send = |ids: Vec<String>| async move {
            match self.client.terminate_instances().set_instance_ids(Some(ids)).send().await {
                Ok(_) => Ok(()),
                Err(error) => match classify("TerminateInstances", error) {
                    CloudError::Invalid(message) if message.contains("InvalidInstanceID") => Err(None),
                    error => Err(Some(error)),
                },
            }
        };
        match send(ids.clone()).await {
            Ok(()) => Ok(()),
            Err(Some(error)) => Err(error),
            Err(None) if ids.len() == 1 => Ok(()),
            Err(None) => {
                for id in ids {
                    if let Err(Some(error)) = send(vec![id]).await {
                        return Err(error);
                    }
                }
                Ok(())
            }
        }
    }

    /// Whether these tags mark a resource of this provider and installation.
    fn owns(&self, resource_tags: &[Tag]) -> bool {
        tag_of(resource_tags, tags::PROVIDER) == Some(&self.settings.provider)
            && tag_of(resource_tags, tags::SYSTEM_ID) == Some(&self.settings.system_id)
    }
}

/// The first network interface: the pool's subnet, security groups and addresses.
fn network_interface(pool: &AwsPool) -> Option<InstanceNetworkInterfaceSpecification> {
    let subnet = pool.subnet_id.as_ref()?;
    Some(
        InstanceNetworkInterfaceSpecification::builder()
            .device_index(0)
            .subnet_id(subnet)
            .set_groups((!pool.security_group_ids.is_empty()).then(|| pool.security_group_ids.clone()))
            .associate_public_ip_address(pool.public_ip_address)
            .set_ipv6_address_count(pool.public_ipv6.then_some(1))
            .delete_on_termination(true)
            .build(),
    )
}

/// The value of tag `key`.
fn tag_of<'a>(tags: &'a [Tag], key: &str) -> Option<&'a String> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value.as_ref())
}

/// The tags of the node's instance and volumes: the node's, and what a later look needs.
fn instance_tags(spec: &InstanceSpec, pool: &AwsPool) -> Vec<Tag> {
    let mut all_tags = spec.tags.clone();
    all_tags.insert(LAUNCH_TOKEN_TAG.into(), spec.token.clone());
    if pool.use_private_ip {
        all_tags.insert(USE_PRIVATE_IP_TAG.into(), "true".into());
    }
    all_tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

/// What one launch attempt needs, read once.
struct Launch<'a> {
    spec: &'a InstanceSpec,
    pool: AwsPool,
    aws: AwsLabel,
    image_id: String,
    /// The instance's and its volumes' tags.
    tags: Vec<Tag>,
}

/// Tag recording the pool's `usePrivateIp`, so the address choice survives a restart.
const USE_PRIVATE_IP_TAG: &str = "nodepool_use_private_ip";

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder().name(format!("tag:{key}")).values(value).build()
}

fn live_states() -> Filter {
    Filter::builder()
        .name("instance-state-name")
        .set_values(Some(
            ["pending", "running", "shutting-down", "stopping", "stopped"].map(String::from).to_vec(),
        ))
        .build()
}

#[async_trait]
impl Cloud for AwsCloud {
    async fn create(&self, spec: &InstanceSpec) -> CloudResult<Instance> {
        if spec.first_try {
            return self.launch_with_spot_fallback(spec).await;
        }
        let earlier = self
            .lookups
            .call(spec.token.clone(), |tokens| async move {
                let mut filters = self.ownership_filters();
                filters.push(
                    Filter::builder()
                        .name(format!("tag:{LAUNCH_TOKEN_TAG}"))
                        .set_values(Some(tokens))
                        .build(),
                );
                filters.push(live_states());
                let found = self.describe(filters, Vec::new()).await?;
                Ok(found
                    .into_iter()
                    .filter_map(|i| Some((i.tags.get(LAUNCH_TOKEN_TAG)?.clone(), i)))
                    .collect())
            })
            .await?;
        if let Some(existing) = earlier {
            tracing::info!(node = %spec.node, instance = %existing.id, "adopting the instance of an earlier try");
            return Ok(existing);
        }
        self.launch_with_spot_fallback(spec).await
    }

    /// Polls of many nodes at once are one `DescribeInstances` (an `instance-id` filter, which
    /// leaves out an id EC2 no longer knows instead of failing the call).
    async fn get(&self, id: &str) -> CloudResult<Option<Instance>> {
        self.polls
            .call(id.to_owned(), |ids| async move {
                let filter = Filter::builder().name("instance-id").set_values(Some(ids)).build();
                let found = self.describe(vec![filter], Vec::new()).await?;
                Ok(found.into_iter().map(|i| (i.id.clone(), i)).collect())
            })
            .await
    }

    /// Deletions of many nodes at once are one `TerminateInstances`.
    async fn delete(&self, id: &str) -> CloudResult<()> {
        self.terminations
            .call(id.to_owned(), |ids| async move { self.terminate(ids).await.map(|()| Vec::new()) })
            .await
            .map(|_| ())
    }

    async fn list_instances(&self) -> CloudResult<Vec<Instance>> {
        self.describe(self.ownership_filters(), Vec::new()).await
    }

    /// The account's Service Quotas for the codes the pools' labels count against (vCPUs per
    /// instance family, dedicated hosts, volume storage and IOPS), as `maxResources` keyed by code.
    /// A quota Service Quotas does not answer for stays unknown: launches then go on until EC2
    /// refuses one, which pauses the pool.
    async fn quota_limits(&self, pools: &[Pool]) -> CloudResult<ResourceLimits> {
        self.account_quota(pools).await
    }

    /// Every running instance and every volume of the account this provider does not own, by
    /// what it holds of the quota codes (Nodepool's unmanaged quota).
    async fn unmanaged_usage(&self) -> CloudResult<ResourceUsage> {
        self.unmanaged().await
    }

    /// What one node of the label holds: its instance type's vCPUs and memory, those vCPUs
    /// under the type's quota code (one host for a dedicated host), and its volume's GiB and
    /// IOPS. For a fleet, the largest of its types, code by code (quota is never overrun; the
    /// node then holds what the chosen type holds).
    async fn label_resources(&self, _pool: &Pool, label: &PoolLabel) -> CloudResult<NodeResources> {
        let aws: AwsLabel = label.driver_settings.parse(BLOCK)?.unwrap_or_default();
        let mut held = NodeResources { instances: 1, ..Default::default() };
        for instance_type in label_instance_types(label, &aws)? {
            let size = self.instance_type_resources(&instance_type).await?;
            let placement = quota::Placement {
                instance_type: &instance_type,
                spot: label.spot,
                dedicated_host: aws.dedicated_host,
            };
            let footprint = quota::instance_footprint(&size, placement);
            held.cores = held.cores.max(footprint.cores);
            held.ram = held.ram.max(footprint.ram);
            for (code, amount) in footprint.other {
                let most = held.other.entry(code).or_default();
                *most = (*most).max(amount);
            }
        }
        if let Some(volume_type) = &label.volume_type {
            let size = label.volume_size_gb.map(u64::from);
            held.other.extend(quota::volume_footprint(volume_type, size, aws.iops.map(u64::from)));
        }
        Ok(held)
    }

    /// A cheap call that proves the credentials work.
    async fn check_access(&self) -> CloudResult<()> {
        self.client
            .describe_instances()
            .set_filters(Some(self.ownership_filters()))
            .max_results(5)
            .send()
            .await
            .map_err(|e| classify("DescribeInstances", e))?;
        Ok(())
    }

    async fn resolve_image(&self, image: &ImageSpec) -> CloudResult<String> {
        let aws: AwsImage = image
            .driver_settings
            .parse(BLOCK)?
            .ok_or_else(|| CloudError::Invalid("the Image has no spec.aws".into()))?;
        let mut request =
            self.client.describe_images().set_owners((!aws.owners.is_empty()).then(|| aws.owners.clone()));
        match &aws.image_id {
            Some(id) => request = request.image_ids(id),
            None => {
                for filter in &aws.filters {
                    request = request.filters(
                        Filter::builder().name(&filter.name).set_values(Some(filter.values.clone())).build(),
                    );
                }
            }
        }
        let output = request.send().await.map_err(|e| classify("DescribeImages", e))?;
        let newest =
            output.images().iter().filter(|i| i.state().is_none_or(|s| s.as_str() == "available")).max_by(
                |a, b| a.creation_date().unwrap_or_default().cmp(b.creation_date().unwrap_or_default()),
            );
        match newest.and_then(|i| i.image_id()) {
            Some(id) => Ok(id.to_owned()),
            None => Err(CloudError::Invalid(match &aws.image_id {
                Some(id) => format!("AMI {id} does not exist or is not available"),
                None => format!(
                    "no available AMI matches the filters {:?} (owners {:?})",
                    aws.filters, aws.owners
                ),
            })),
        }
    }

    /// Detached volumes, dedicated hosts, and uploaded images (AMIs) and snapshots, tagged for
    /// this provider and installation.
    async fn list_other_resources(&self) -> CloudResult<Vec<LeakedResource>> {
        self.tagged_resources().await
    }

    async fn delete_other_resource(&self, resource: &LeakedResource) -> CloudResult<()> {
        self.delete_tagged(resource).await
    }
}
