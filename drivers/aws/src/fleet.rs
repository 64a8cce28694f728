//! Launching through an EC2 Fleet (`CreateFleet`, type `instant`): EC2 picks one of the label's
//! instance types by the allocation strategy. Everything else about the instance is in a launch
//! template, made once per set of settings and named after them, so labels with the same settings
//! share it and a change of settings makes a new one (as Nodepool names its templates).

use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, FleetLaunchTemplateConfigRequest, FleetLaunchTemplateOverridesRequest,
    FleetLaunchTemplateSpecificationRequest, FleetOnDemandAllocationStrategy, FleetType,
    LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataOptionsRequest, LaunchTemplateInstanceNetworkInterfaceSpecificationRequest,
    OnDemandOptionsRequest, RequestLaunchTemplateData, ResourceType, SpotAllocationStrategy,
    SpotOptionsRequest, Tag, TagSpecification, TargetCapacitySpecificationRequest, VolumeType,
};
use base64::Engine;
use nodepool_driver::{CloudError, Instance, InstanceState, cloud::CloudResult, tags};

use crate::{
    AwsCloud, Launch,
    errors::{classify, classify_code},
    settings::{AwsFleet, FleetAllocation},
};

/// Launches the node's instance through an instant fleet.
pub async fn launch(
    cloud: &AwsCloud,
    launch: &Launch<'_>,
    fleet: &AwsFleet,
    spot: bool,
) -> CloudResult<Instance> {
    let template = launch_template(cloud, launch).await?;
    let prioritized = fleet.allocation_strategy == FleetAllocation::Prioritized;
    let overrides = fleet
        .instance_types
        .iter()
        .enumerate()
        .map(|(rank, instance_type)| {
            FleetLaunchTemplateOverridesRequest::builder()
                .instance_type(instance_type.as_str().into())
                .image_id(&launch.image_id)
                .set_availability_zone(launch.pool.availability_zone.clone())
                .set_priority(prioritized.then_some(rank as f64))
                .build()
        })
        .collect();
    let config = FleetLaunchTemplateConfigRequest::builder()
        .launch_template_specification(
            FleetLaunchTemplateSpecificationRequest::builder()
                .launch_template_name(&template)
                .version("$Latest")
                .build(),
        )
        .set_overrides(Some(overrides))
        .build();
    let capacity = if spot { DefaultTargetCapacityType::Spot } else { DefaultTargetCapacityType::OnDemand };
    let tagged = |kind: ResourceType| {
        TagSpecification::builder().resource_type(kind).set_tags(Some(launch.tags.clone())).build()
    };
    let mut request = cloud
        .client
        .create_fleet()
        .r#type(FleetType::Instant)
        .launch_template_configs(config)
        .target_capacity_specification(
            TargetCapacitySpecificationRequest::builder()
                .total_target_capacity(1)
                .default_target_capacity_type(capacity)
                .build(),
        )
        .tag_specifications(tagged(ResourceType::Instance))
        .tag_specifications(tagged(ResourceType::Volume));
    request = if spot {
        request.spot_options(SpotOptionsRequest::builder().allocation_strategy(spot_strategy(fleet)).build())
    } else {
        request.on_demand_options(
            OnDemandOptionsRequest::builder().allocation_strategy(on_demand_strategy(fleet)).build(),
        )
    };
    let output = request.send().await.map_err(|e| classify("CreateFleet", e))?;
    let id = output.instances().iter().flat_map(|i| i.instance_ids()).next();
    let Some(id) = id else {
        // An instant fleet that launched nothing says why in its error list.
        return Err(match output.errors().first() {
            Some(error) => classify_code(
                "CreateFleet",
                error.error_code().unwrap_or("Unknown"),
                error.error_message().unwrap_or_default(),
            ),
            None => CloudError::api("CreateFleet", "the fleet launched no instance and gave no error"),
        });
    };
    tracing::info!(node = %launch.spec.node, instance = %id, "fleet launched an instance");
    let tags =
        launch.tags.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned()))).collect();
    Ok(Instance::new(id.clone(), InstanceState::Pending, tags))
}

/// EC2's name for a strategy with on-demand capacity (spot-only ones: lowest price).
fn on_demand_strategy(fleet: &AwsFleet) -> FleetOnDemandAllocationStrategy {
    match fleet.allocation_strategy {
        FleetAllocation::Prioritized => FleetOnDemandAllocationStrategy::Prioritized,
        _ => FleetOnDemandAllocationStrategy::LowestPrice,
    }
}

fn spot_strategy(fleet: &AwsFleet) -> SpotAllocationStrategy {
    match fleet.allocation_strategy {
        FleetAllocation::LowestPrice => SpotAllocationStrategy::LowestPrice,
        FleetAllocation::Prioritized => SpotAllocationStrategy::CapacityOptimizedPrioritized,
        FleetAllocation::PriceCapacityOptimized => SpotAllocationStrategy::PriceCapacityOptimized,
        FleetAllocation::CapacityOptimized => SpotAllocationStrategy::CapacityOptimized,
        FleetAllocation::Diversified => SpotAllocationStrategy::Diversified,
    }
}

/// The launch template with the launch's settings, created if it does not exist yet.
async fn launch_template(cloud: &AwsCloud, launch: &Launch<'_>) -> CloudResult<String> {
    let Launch { spec, pool, aws, image_id, .. } = launch;
    let label = &spec.label;
    let mut data = RequestLaunchTemplateData::builder()
        .set_key_name(aws.key_name.clone())
        .set_ebs_optimized(aws.ebs_optimized.then_some(true));
    if let Some(user_data) = &label.user_data {
        data = data.user_data(base64::engine::general_purpose::STANDARD.encode(user_data));
    }
    match &pool.subnet_id {
        Some(subnet) => {
            data = data.network_interfaces(
                LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                    .device_index(0)
                    .subnet_id(subnet)
                    .set_groups(
                        (!pool.security_group_ids.is_empty()).then(|| pool.security_group_ids.clone()),
                    )
                    .associate_public_ip_address(pool.public_ip_address)
                    .set_ipv6_address_count(pool.public_ipv6.then_some(1))
                    .delete_on_termination(true)
                    .build(),
            )
        }
        None if !pool.security_group_ids.is_empty() => {
            data = data.set_security_group_ids(Some(pool.security_group_ids.clone()))
        }
        None => {}
    }
    if let Some(volume) = cloud.root_volume(image_id, label, aws).await?
        && let Some(ebs) = volume.ebs()
    {
        data = data.block_device_mappings(
            LaunchTemplateBlockDeviceMappingRequest::builder()
                .set_device_name(volume.device_name().map(str::to_owned))
                .ebs(
                    LaunchTemplateEbsBlockDeviceRequest::builder()
                        .set_volume_size(ebs.volume_size())
                        .set_volume_type(ebs.volume_type().map(|t| VolumeType::from(t.as_str())))
                        .set_iops(ebs.iops())
                        .set_throughput(ebs.throughput())
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        );
    }
    if let Some(profile) = &aws.iam_instance_profile {
        let spec = LaunchTemplateIamInstanceProfileSpecificationRequest::builder();
        data = data.iam_instance_profile(match profile.starts_with("arn:") {
            true => spec.arn(profile).build(),
            false => spec.name(profile).build(),
        });
    }
    if aws.imdsv2 {
        data = data.metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_tokens(LaunchTemplateHttpTokensState::Required)
                .build(),
        );
    }
    let data = data.build();
    // Named after what it holds: the same settings give the same template. FNV-1a, stable
    // across builds (std's hasher is not), so replicas and upgrades agree on the name.
    let hash = format!("{data:?}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let name = format!("nodepool-{}-{hash:016x}", cloud.settings.provider);
    if cloud.templates.lock().expect("lock").contains(&name) {
        return Ok(name);
    }
    let ownership = [tags::PROVIDER, tags::SYSTEM_ID]
        .into_iter()
        .zip([&cloud.settings.provider, &cloud.settings.system_id])
        .map(|(key, value)| Tag::builder().key(key).value(value).build())
        .collect();
    let created = cloud
        .client
        .create_launch_template()
        .launch_template_name(&name)
        .launch_template_data(data)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::LaunchTemplate)
                .set_tags(Some(ownership))
                .build(),
        )
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(error) => match classify("CreateLaunchTemplate", error) {
            // Made by an earlier launch (this process or another): the name says it is the same.
            CloudError::Invalid(message) if message.contains("AlreadyExists") => {}
            other => return Err(other),
        },
    }
    cloud.templates.lock().expect("lock").insert(name.clone());
    Ok(name)
}
