//! Quota: what a node holds, what is used, what is allowed, and the arithmetic on them, written
//! once here for the scheduler, the controllers and the status they write.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Resources other than servers, cores and memory, by key: an AWS Service Quotas code
/// (`L-1216C47A`, counted in vCPUs; an EBS code in GiB or IOPS), a Kubernetes extended resource
/// (`nvidia.com/gpu`). Zuul sees them in the node's `resources`, as Nodepool writes them.
pub type OtherResources = BTreeMap<String, u64>;

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
    /// Any other resource at once, by key (Nodepool's `max-resources`): on AWS a Service Quotas
    /// code such as `L-1216C47A: 64` (vCPUs of standard on-demand instances).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_resources: OtherResources,
}

/// Quota footprint of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeResources {
    pub cores: u32,
    /// MiB.
    pub ram: u64,
    pub instances: u32,
    /// What the node holds of other resources, by key (its instance type's vCPUs under the
    /// type's Service Quotas code, its volume's GiB under the volume type's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other: OtherResources,
}

impl NodeResources {
    /// What one node of these resources holds against quota: at least one server.
    pub fn usage(&self) -> ResourceUsage {
        ResourceUsage {
            servers: self.instances.max(1),
            cores: self.cores,
            ram: self.ram,
            other: self.other.clone(),
        }
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
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other: OtherResources,
}

// Quota arithmetic: written here once, on the types it measures.

impl ResourceUsage {
    /// Adds `more` to this usage.
    pub fn add(&mut self, more: &ResourceUsage) {
        self.servers += more.servers;
        self.cores += more.cores;
        self.ram += more.ram;
        for (key, amount) in &more.other {
            *self.other.entry(key.clone()).or_default() += amount;
        }
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
        check("ram (MiB)", self.max_ram, used.ram, more.ram)?;
        for (key, limit) in &self.max_resources {
            let of = |usage: &ResourceUsage| usage.other.get(key).copied().unwrap_or_default();
            check(key, Some(*limit), of(used), of(more))?;
        }
        Ok(())
    }

    /// These limits less what others use of them (a cloud account's quota less the instances
    /// this installation does not own). Unset limits stay unset.
    pub fn less(&self, used: &ResourceUsage) -> ResourceLimits {
        ResourceLimits {
            max_servers: self.max_servers.map(|max| max.saturating_sub(used.servers)),
            max_cores: self.max_cores.map(|max| max.saturating_sub(used.cores)),
            max_ram: self.max_ram.map(|max| max.saturating_sub(used.ram)),
            max_resources: self
                .max_resources
                .iter()
                .map(|(key, max)| {
                    (key.clone(), max.saturating_sub(used.other.get(key).copied().unwrap_or_default()))
                })
                .collect(),
        }
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
            max_resources: {
                let mut both = self.max_resources.clone();
                for (key, max) in &other.max_resources {
                    both.entry(key.clone()).and_modify(|m| *m = (*m).min(*max)).or_insert(*max);
                }
                both
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_admit_usage_up_to_each_limit_and_say_which_one_breaks() {
        let limits = ResourceLimits { max_servers: Some(3), max_cores: Some(8), ..Default::default() };
        let used = ResourceUsage { servers: 2, cores: 4, ram: 1 << 40, ..Default::default() };
        assert!(
            limits
                .admit(&used, &ResourceUsage { servers: 1, cores: 4, ram: 1 << 40, ..Default::default() })
                .is_ok()
        );
        let error = limits
            .admit(&used, &ResourceUsage { servers: 1, cores: 5, ram: 0, ..Default::default() })
            .unwrap_err();
        assert_eq!(error, "cores 9 of 8");
        let error = limits
            .admit(&used, &ResourceUsage { servers: 2, cores: 0, ram: 0, ..Default::default() })
            .unwrap_err();
        assert_eq!(error, "servers 4 of 3");
    }

    #[test]
    fn the_tightest_limits_take_the_smaller_of_each_and_any_set_one() {
        let a = ResourceLimits { max_servers: Some(3), max_ram: Some(100), ..Default::default() };
        let b = ResourceLimits { max_servers: Some(5), max_cores: Some(8), ..Default::default() };
        let tight = a.tightest(&b);
        assert_eq!(
            tight,
            ResourceLimits {
                max_servers: Some(3),
                max_cores: Some(8),
                max_ram: Some(100),
                ..Default::default()
            }
        );
    }

    #[test]
    fn usages_add_up() {
        let one = ResourceUsage { servers: 1, cores: 2, ram: 3, ..Default::default() };
        let sum: ResourceUsage = [one.clone(), one.clone()].iter().sum();
        assert_eq!(sum, ResourceUsage { servers: 2, cores: 4, ram: 6, ..Default::default() });
    }

    #[test]
    fn other_resources_are_limited_by_key_and_a_cloud_quota_is_less_what_others_use() {
        let code = "L-1216C47A".to_owned();
        let quota = ResourceLimits { max_resources: [(code.clone(), 32)].into(), ..Default::default() };
        let node =
            |vcpus| ResourceUsage { servers: 1, other: [(code.clone(), vcpus)].into(), ..Default::default() };
        let used: ResourceUsage = [node(8), node(8), node(8)].iter().sum();
        assert!(quota.admit(&used, &node(8)).is_ok(), "32 of 32");
        assert_eq!(quota.admit(&used, &node(10)).unwrap_err(), "L-1216C47A 34 of 32");
        assert!(quota.admit(&used, &ResourceUsage { servers: 1, ..Default::default() }).is_ok(), "no vCPUs");
        let unmanaged = node(4);
        let left = quota.less(&unmanaged);
        assert_eq!(left.max_resources[&code], 28);
        assert_eq!(left.max_servers, None, "an unset limit stays unset");
        let provider = ResourceLimits {
            max_resources: [(code.clone(), 16), ("x".into(), 1)].into(),
            ..Default::default()
        };
        let tight = left.tightest(&provider);
        assert_eq!(tight.max_resources, [(code, 16), ("x".into(), 1)].into());
    }
}
