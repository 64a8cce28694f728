//! `TenantLimit`: how much one Zuul tenant may use at once, across every provider (Nodepool's
//! `tenant-resource-limits`). A request from a tenant at its limit waits; it is never declined.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::provider::{ResourceLimits, ResourceUsage};

/// The limits of one Zuul tenant.
#[derive(CustomResource, JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "nodepool.dev",
    version = "v1alpha1",
    kind = "TenantLimit",
    namespaced,
    status = "TenantLimitStatus",
    shortname = "nptl",
    category = "nodepool",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Max-Servers", type_ = "integer", json_path = ".spec.maxServers"),
    printcolumn(name = "Servers", type_ = "integer", json_path = ".status.used.servers"),
    printcolumn(name = "Max-Cores", type_ = "integer", json_path = ".spec.maxCores", priority = 1),
    printcolumn(name = "Cores", type_ = "integer", json_path = ".status.used.cores", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TenantLimitSpec {
    /// The Zuul tenant name, as Zuul writes it in `tenant_name`.
    #[schemars(length(min = 1))]
    pub tenant: String,
    /// Servers, vCPUs and memory (MiB) the tenant's nodes may hold at once; unset is unlimited.
    #[serde(flatten)]
    pub limits: ResourceLimits,
}

/// What the tenant uses now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantLimitStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub used: ResourceUsage,
}
