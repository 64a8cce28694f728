//! The AWS driver's settings blocks: `spec.aws` (account), `pools[].aws`, `pools[].labels[].aws`,
//! and an Image's `spec.aws`.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// AWS account-level settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsProvider {
    /// Region, e.g. `us-east-1`.
    #[schemars(length(min = 1), regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: String,
    /// Endpoint override (tests, or private endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// AWS pool settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,
    /// Give instances a public IP address. Default true.
    #[serde(default = "default_true")]
    pub public_ip_address: bool,
    /// Connect to the private address even when a public one exists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_private_ip: bool,
    /// Required by labels with `dedicatedHost` (a host is allocated in one zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// Give instances an IPv6 address from the subnet (Nodepool's `public-ipv6`); needs `subnetId`
    /// of a subnet with an IPv6 range.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_ipv6: bool,
}

/// AWS label settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsLabel {
    /// EC2 key pair name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// IAM instance profile name or ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_instance_profile: Option<String>,
    /// Require IMDSv2 tokens. Default true.
    #[serde(default = "default_true")]
    pub imdsv2: bool,
    /// Launch EBS-optimized instances.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ebs_optimized: bool,
    /// Provisioned IOPS of the root volume (`io1`, `io2`, `gp3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub iops: Option<u32>,
    /// Throughput of a `gp3` root volume, MiB/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub throughput: Option<u32>,
    /// Run each node on a dedicated host of its own, allocated for it in the pool's
    /// `availabilityZone` and released after the node (Nodepool's `dedicated-host`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dedicated_host: bool,
    /// Launch through an EC2 Fleet (`CreateFleet`, type `instant`) that picks one of several
    /// instance types, instead of the label's `instanceType` (Nodepool's `fleet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<AwsFleet>,
}

/// The instance types an EC2 Fleet may choose from, and how it chooses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsFleet {
    #[schemars(length(min = 1))]
    pub instance_types: Vec<String>,
    pub allocation_strategy: FleetAllocation,
}

/// EC2 Fleet's allocation strategies, with Nodepool's names. `prioritized` takes the types in
/// the order listed; spot-only strategies fall back to `lowest-price` for on-demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FleetAllocation {
    LowestPrice,
    Prioritized,
    PriceCapacityOptimized,
    CapacityOptimized,
    Diversified,
}

/// An AWS image: a fixed AMI id, or the newest AMI that matches filters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.imageId) != (has(self.filters) && size(self.filters) > 0)")
    .message("spec.aws takes either imageId or filters, not both and not neither"))]
#[serde(rename_all = "camelCase")]
pub struct AwsImage {
    /// A fixed AMI id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^ami-[0-9a-f]+$"))]
    pub image_id: Option<String>,
    /// `DescribeImages` filters; the newest matching image wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<AwsImageFilter>,
    /// Image owners to search (account ids, `self`, `amazon`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
}

impl AwsImage {
    /// Whether `id` is an AMI id as `imageId` takes it (the schema's pattern `^ami-[0-9a-f]+$`).
    pub fn is_ami_id(id: &str) -> bool {
        id.strip_prefix("ami-")
            .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    }
}

/// One `DescribeImages` filter, e.g. `name` = `ubuntu/images/*noble*`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AwsImageFilter {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub values: Vec<String>,
}

fn default_true() -> bool {
    true
}
