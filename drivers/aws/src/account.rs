//! The account's quota and what others use of it: Service Quotas for the codes the pools'
//! labels count against, and the instances and volumes of the account that are not this
//! provider's (Nodepool's unmanaged quota).

use std::collections::{BTreeSet, HashMap};

use aws_sdk_ec2::types::{Filter, InstanceLifecycleType};
use nodepool_crds::provider::{Pool, PoolLabel, ResourceLimits, ResourceUsage};
use nodepool_driver::{Cloud, CloudError, cloud::CloudResult};

use crate::{
    AwsCloud, BLOCK, classify,
    quota::{self, Service},
    settings::AwsLabel,
};

impl AwsCloud {
    /// The account's Service Quotas for the codes the pools' labels count against (vCPUs per
    /// instance family, dedicated hosts, volume storage and IOPS), as `maxResources` keyed by code.
    /// A quota Service Quotas does not answer for stays unknown: launches then go on until EC2
    /// refuses one, which pauses the pool.
    pub(crate) async fn account_quota(&self, pools: &[Pool]) -> CloudResult<ResourceLimits> {
        self.check_access().await?;
        let wanted = label_codes(pools)?;
        let mut limits = ResourceLimits::default();
        let services: BTreeSet<Service> = wanted.iter().map(|code| quota::service_of(code)).collect();
        for service in services {
            let values = match self.service_quotas(service).await {
                Ok(values) => values,
                Err(error) => {
                    tracing::warn!(provider = %self.settings.provider, service = service.code(), %error,
                        "Service Quotas does not answer; that service's quotas stay unknown");
                    continue;
                }
            };
            for code in wanted.iter().filter(|code| quota::service_of(code) == service) {
                match values.get(*code) {
                    Some(value) => {
                        limits.max_resources.insert((*code).to_owned(), quota::limit(code, *value));
                    }
                    None => tracing::warn!(provider = %self.settings.provider, code,
                        "Service Quotas has no such quota for this account; it stays unknown"),
                }
            }
        }
        Ok(limits)
    }

    /// Every running instance and every volume of the account this provider does not own, by
    /// what it holds of the quota codes (Nodepool's unmanaged quota).
    pub(crate) async fn unmanaged(&self) -> CloudResult<ResourceUsage> {
        let mut usage = ResourceUsage::default();
        let holding_vcpus = Filter::builder()
            .name("instance-state-name")
            .set_values(Some(["pending", "running", "shutting-down", "stopping"].map(String::from).to_vec()))
            .build();
        let mut pages = self.client.describe_instances().filters(holding_vcpus).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("DescribeInstances", e))?;
            for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                let Some(instance_type) = instance.instance_type().map(|t| t.as_str().to_owned()) else {
                    continue;
                };
                if self.owns(instance.tags()) {
                    continue;
                }
                let size = self.instance_type_resources(&instance_type).await?;
                let placement = quota::Placement {
                    instance_type: &instance_type,
                    spot: instance.instance_lifecycle() == Some(&InstanceLifecycleType::Spot),
                    dedicated_host: instance.placement().and_then(|p| p.host_id()).is_some(),
                };
                usage.add(&quota::instance_footprint(&size, placement).usage());
            }
        }
        let mut pages = self.client.describe_volumes().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("DescribeVolumes", e))?;
            for volume in page.volumes().iter().filter(|v| !self.owns(v.tags())) {
                let Some(volume_type) = volume.volume_type() else { continue };
                let held = quota::volume_footprint(
                    volume_type.as_str(),
                    volume.size().map(|s| s.max(0) as u64),
                    volume.iops().map(|i| i.max(0) as u64),
                );
                usage.add(&ResourceUsage { other: held, ..Default::default() });
            }
        }
        Ok(usage)
    }

    /// Every quota of one Service Quotas service, by code (`ListServiceQuotas`, all pages).
    async fn service_quotas(&self, service: Service) -> CloudResult<HashMap<String, f64>> {
        let mut pages =
            self.quotas.list_service_quotas().service_code(service.code()).into_paginator().send();
        let mut values = HashMap::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("ListServiceQuotas", e))?;
            for quota in page.quotas() {
                if let (Some(code), Some(value)) = (quota.quota_code(), quota.value()) {
                    values.insert(code.to_owned(), value);
                }
            }
        }
        Ok(values)
    }
}

/// The instance types a label may launch: its fleet's, or its one `instanceType`.
pub(crate) fn label_instance_types(label: &PoolLabel, aws: &AwsLabel) -> CloudResult<Vec<String>> {
    match &aws.fleet {
        Some(fleet) => Ok(fleet.instance_types.clone()),
        None => label
            .instance_type
            .clone()
            .map(|t| vec![t])
            .ok_or_else(|| CloudError::Invalid(format!("label {} has no instanceType", label.name))),
    }
}

/// The quota codes the pools' labels count against.
fn label_codes(pools: &[Pool]) -> CloudResult<BTreeSet<&'static str>> {
    let mut codes = BTreeSet::new();
    for label in pools.iter().flat_map(|p| &p.labels) {
        let aws: AwsLabel = label.driver_settings.parse(BLOCK)?.unwrap_or_default();
        // A label without an instance type says so in its own status; quota is still read.
        for instance_type in label_instance_types(label, &aws).unwrap_or_default() {
            let placement = quota::Placement {
                instance_type: &instance_type,
                spot: label.spot,
                dedicated_host: aws.dedicated_host,
            };
            codes.extend(quota::code(placement));
        }
        if let Some(volume_type) = &label.volume_type {
            codes.extend(quota::volume_type_codes(volume_type));
        }
    }
    Ok(codes)
}
