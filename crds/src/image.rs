//! `Image`: how to find a cloud image in each kind of cloud, and how to log in to it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::ConnectionSettings;

/// A cloud image, looked up per provider.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "nodepool.dev",
    version = "v1alpha1",
    kind = "Image",
    namespaced,
    status = "ImageStatus",
    shortname = "npi",
    category = "nodepool",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Username", type_ = "string", json_path = ".spec.username"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.aws) || has(self.gce)")
    .message("an Image says how to find it in at least one cloud: set spec.aws or spec.gce"))]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// How to find the image in AWS EC2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsImage>,
    /// How to find the image in Google Compute Engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gce: Option<GceImage>,
    /// How Zuul logs in to nodes booted from this image.
    #[serde(flatten)]
    pub connection: ConnectionSettings,
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

/// One `DescribeImages` filter, e.g. `name` = `ubuntu/images/*noble*`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AwsImageFilter {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub values: Vec<String>,
}

/// A GCE image: a named image, or the newest image of a family.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.image) != has(self.family)")
    .message("spec.gce takes either image or family, not both and not neither"))]
#[serde(rename_all = "camelCase")]
pub struct GceImage {
    /// Image name (or full self link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image family; the newest non-deprecated image in it is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Project that owns the image (e.g. `debian-cloud`). Defaults to the provider's project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// What is true of an image now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is true when every provider that uses the image resolved it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The concrete image per provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved: Vec<ResolvedImage>,
}

/// The concrete image one provider boots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedImage {
    pub provider: String,
    /// AMI id or GCE image self link.
    pub image_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Time>,
}
