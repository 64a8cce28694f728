//! The static driver: hosts that already exist, each serving `maxParallelJobs` nodes ("slots").
//! Nothing is launched; a slot is registered once its host answers, and registered afresh after
//! every use. The framework scans host keys and checks hosts before a hand-out
//! (`nodepool_driver::keyscan`); this crate says which slots and hosts a provider has.

use std::time::Duration;

use nodepool_crds::{
    ConnectionSettings, GoDuration, Provider,
    driver_blocks::{BadBlock, Block, DriverShape},
    provider::Pool,
};
use nodepool_driver::{Driver, Slot, SlotHost, Supply};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default time a reachability check or key scan may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pool block of a static provider: `pools[].hosts`.
pub const HOSTS: &str = "hosts";

/// A static host, registered as `maxParallelJobs` nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticHost {
    /// Host name or IP address Zuul connects to; unique within the pool.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Labels this host serves.
    #[schemars(length(min = 1))]
    pub labels: Vec<String>,
    /// How Zuul logs in.
    #[serde(flatten)]
    pub connection: ConnectionSettings,
    /// Jobs the host runs at once; each is one node. Default 1.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_parallel_jobs: u32,
    /// Host keys to hand to Zuul instead of scanning (`<type> <base64>` each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_keys: Vec<String>,
    /// Overrides the pool's `hostKeyChecking` for this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_checking: Option<bool>,
    /// How long a reachability check or key scan may take. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
}

fn default_one() -> u32 {
    1
}

/// The schema of `pools[].hosts`: at least one host, names unique.
struct Hosts;

impl JsonSchema for Hosts {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StaticHosts".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = generator.subschema_for::<Vec<StaticHost>>();
        schema.insert(
            "description".into(),
            "The hosts of a static pool, each serving `maxParallelJobs` nodes.".into(),
        );
        schema.insert("minItems".into(), 1.into());
        schema.insert("x-kubernetes-list-type".into(), "map".into());
        schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["name"]));
        schema
    }
}

/// The static driver's descriptor.
pub struct Static;

impl Driver for Static {
    fn name(&self) -> &'static str {
        "static"
    }

    fn shape(&self) -> DriverShape {
        DriverShape {
            name: self.name(),
            needs_credentials: false,
            provider: None,
            pool: Some(Block::required::<Hosts>(HOSTS)),
            label: None,
            image: None,
        }
    }

    fn supply(&self) -> Supply {
        Supply::Slotted
    }

    fn pool_labels(&self, pool: &Pool) -> Vec<String> {
        hosts(pool).unwrap_or_default().into_iter().flat_map(|host| host.labels).collect()
    }

    fn slots(&self, provider: &Provider) -> Result<Vec<Slot>, BadBlock> {
        let mut slots = Vec::new();
        for pool in &provider.spec.pools {
            for host in hosts(pool)? {
                slots.extend((0..host.max_parallel_jobs).map(|slot| Slot {
                    pool: pool.name.clone(),
                    host: host.name.clone(),
                    slot,
                    labels: host.labels.clone(),
                }));
            }
        }
        Ok(slots)
    }

    fn slot_hosts(&self, pool: &Pool) -> Result<Vec<(String, SlotHost)>, BadBlock> {
        let hosts = hosts(pool)?.into_iter().map(|host| {
            let reach = SlotHost {
                connection: host.connection.with_defaults(),
                timeout: host.timeout.map(|t| t.0).unwrap_or(DEFAULT_TIMEOUT),
                host_key_checking: host.host_key_checking.unwrap_or(pool.host_key_checking),
                host_keys: host.host_keys,
            };
            (host.name, reach)
        });
        Ok(hosts.collect())
    }
}

/// The hosts of a pool (none when it has no `hosts` block).
pub fn hosts(pool: &Pool) -> Result<Vec<StaticHost>, BadBlock> {
    Ok(pool.driver_settings.parse(HOSTS)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(yaml: serde_json::Value) -> Provider {
        Provider::new("lab", serde_json::from_value(yaml).unwrap())
    }

    #[test]
    fn every_host_gets_max_parallel_jobs_slots() {
        let provider = provider(serde_json::json!({
            "driver": "static",
            "pools": [{"name": "a", "hosts": [
                {"name": "h1", "labels": ["x"], "maxParallelJobs": 2},
                {"name": "h2", "labels": ["x", "y"]},
            ]}]
        }));
        let slots = Static.slots(&provider).unwrap();
        let names: Vec<_> = slots.iter().map(|s| (s.host.as_str(), s.slot)).collect();
        assert_eq!(names, [("h1", 0), ("h1", 1), ("h2", 0)]);
        assert_eq!(slots[2].labels, ["x", "y"]);
        assert_eq!(Static.pool_labels(&provider.spec.pools[0]), ["x", "x", "y"]);
    }

    #[test]
    fn connection_defaults_are_nodepools() {
        let provider = provider(serde_json::json!({
            "driver": "static",
            "pools": [{"name": "a", "hosts": [{"name": "h", "labels": ["x"], "connectionPort": 2022}]}]
        }));
        let host = Static.slot_host(&provider, "a", "h").unwrap();
        assert_eq!(host.connection.username.as_deref(), Some("zuul"));
        assert_eq!(host.port(), 2022);
        assert_eq!(host.connection.python_path.as_deref(), Some("auto"));
        assert!(host.scans_keys());
        assert!(Static.slot_host(&provider, "a", "other").is_none());
    }

    #[test]
    fn a_host_that_is_not_reached_over_ssh_is_not_scanned() {
        let provider = provider(serde_json::json!({
            "driver": "static",
            "pools": [{"name": "a", "hosts": [{"name": "w", "labels": ["win"], "connectionType": "winrm", "connectionPort": 5986}]}]
        }));
        let host = Static.slot_host(&provider, "a", "w").unwrap();
        assert!(host.host_key_checking && !host.scans_keys());
    }
}
