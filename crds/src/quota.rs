//! Quota: what a node holds, what is used, what is allowed, and the arithmetic on them, written
//! once here for the scheduler, the controllers and the status they write.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Maximum resources in use at once. Unset means no limit beyond the cloud's own quota.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLimits {
    /// Servers (instances, or static slots) at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_servers: Option<u32>,
    /// vCPUs at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cores: Option<u32>,
    /// Memory at once, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ram: Option<u64>,
}

/// Quota footprint of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeResources {
    pub cores: u32,
    /// MiB.
    pub ram: u64,
    pub instances: u32,
}

impl NodeResources {
    /// What one node of these resources holds against quota: at least one server.
    pub fn usage(&self) -> ResourceUsage {
        ResourceUsage { servers: self.instances.max(1), cores: self.cores, ram: self.ram }
    }
}

/// Resources used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceUsage {
    pub servers: u32,
    pub cores: u32,
    /// MiB.
    pub ram: u64,
}

// Quota arithmetic: written here once, on the types it measures.

impl ResourceUsage {
    /// Adds `more` to this usage.
    pub fn add(&mut self, more: &ResourceUsage) {
        self.servers += more.servers;
        self.cores += more.cores;
        self.ram += more.ram;
    }
}

impl<'a> std::iter::Sum<&'a ResourceUsage> for ResourceUsage {
    fn sum<I: Iterator<Item = &'a ResourceUsage>>(usages: I) -> Self {
        usages.fold(Self::default(), |mut sum, usage| {
            sum.add(usage);
            sum
        })
    }
}

impl std::iter::Sum for ResourceUsage {
    fn sum<I: Iterator<Item = ResourceUsage>>(usages: I) -> Self {
        usages.fold(Self::default(), |mut sum, usage| {
            sum.add(&usage);
            sum
        })
    }
}

impl ResourceLimits {
    /// Whether `used + more` stays within these limits; otherwise which limit it breaks, e.g.
    /// `cores 12 of 8`.
    pub fn admit(&self, used: &ResourceUsage, more: &ResourceUsage) -> Result<(), String> {
        let check = |name: &str, limit: Option<u64>, used: u64, more: u64| match limit {
            Some(limit) if used + more > limit => Err(format!("{name} {} of {limit}", used + more)),
            _ => Ok(()),
        };
        check("servers", self.max_servers.map(u64::from), used.servers.into(), more.servers.into())?;
        check("cores", self.max_cores.map(u64::from), used.cores.into(), more.cores.into())?;
        check("ram (MiB)", self.max_ram, used.ram, more.ram)
    }

    /// The tighter of two sets of limits, field by field.
    pub fn tightest(&self, other: &ResourceLimits) -> ResourceLimits {
        fn min<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        ResourceLimits {
            max_servers: min(self.max_servers, other.max_servers),
            max_cores: min(self.max_cores, other.max_cores),
            max_ram: min(self.max_ram, other.max_ram),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_admit_usage_up_to_each_limit_and_say_which_one_breaks() {
        let limits = ResourceLimits { max_servers: Some(3), max_cores: Some(8), max_ram: None };
        let used = ResourceUsage { servers: 2, cores: 4, ram: 1 << 40 };
        assert!(limits.admit(&used, &ResourceUsage { servers: 1, cores: 4, ram: 1 << 40 }).is_ok());
        let error = limits.admit(&used, &ResourceUsage { servers: 1, cores: 5, ram: 0 }).unwrap_err();
        assert_eq!(error, "cores 9 of 8");
        let error = limits.admit(&used, &ResourceUsage { servers: 2, cores: 0, ram: 0 }).unwrap_err();
        assert_eq!(error, "servers 4 of 3");
    }

    #[test]
    fn the_tightest_limits_take_the_smaller_of_each_and_any_set_one() {
        let a = ResourceLimits { max_servers: Some(3), max_cores: None, max_ram: Some(100) };
        let b = ResourceLimits { max_servers: Some(5), max_cores: Some(8), max_ram: None };
        let tight = a.tightest(&b);
        assert_eq!(tight, ResourceLimits { max_servers: Some(3), max_cores: Some(8), max_ram: Some(100) });
    }

    #[test]
    fn usages_add_up() {
        let one = ResourceUsage { servers: 1, cores: 2, ram: 3 };
        let sum: ResourceUsage = [one.clone(), one.clone()].iter().sum();
        assert_eq!(sum, ResourceUsage { servers: 2, cores: 4, ram: 6 });
    }
}
