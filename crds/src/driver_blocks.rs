//! Where each driver's own settings live in the custom resources.
//!
//! A `Provider`, each of its pools and pool labels, and an `Image` carry one settings block per
//! driver (`spec.aws`, `pools[].hosts`, `pools[].labels[].gce`, ...). This crate does not know the
//! drivers: the blocks are kept as written ([`DriverBlocks`]) and each driver reads its own with
//! [`DriverBlocks::parse`]. The registry of drivers (`drivers/registry`) describes every block
//! with a [`DriverShape`], and [`with_driver_blocks`] writes them into the CRDs: the block's typed
//! schema, `spec.driver`'s list of names, and the rules that tie each block to its driver. A
//! new driver adds rules for itself only; no rule names two drivers.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

/// Driver settings blocks as written, keyed by block name. Flattened into the object that holds
/// them, so `spec.aws` stays where users write it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DriverBlocks(BTreeMap<String, Value>);

/// A block that does not match its driver's settings (the apiserver's schema normally stops
/// that; an object written before a field was added can still have it).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {source}")]
pub struct BadBlock {
    pub key: String,
    #[source]
    pub source: serde_json::Error,
}

impl DriverBlocks {
    /// Sets the block `key` to `settings` (tools that write objects, such as `nodepool import`).
    pub fn insert<T: Serialize>(&mut self, key: &str, settings: &T) -> Result<(), serde_json::Error> {
        self.0.insert(key.to_owned(), serde_json::to_value(settings)?);
        Ok(())
    }

    /// The block `key`, parsed as the driver's settings type; `None` when it is not set.
    pub fn parse<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, BadBlock> {
        self.0
            .get(key)
            .filter(|value| !value.is_null())
            .map(|value| serde_json::from_value(value.clone()))
            .transpose()
            .map_err(|source| BadBlock { key: key.to_owned(), source })
    }
}

/// The blocks add no properties of their own: [`with_driver_blocks`] writes one per driver.
impl JsonSchema for DriverBlocks {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DriverBlocks".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "object" })
    }
}

/// One driver's settings blocks, as the registry describes them.
#[derive(Clone, Debug)]
pub struct DriverShape {
    /// The value of `spec.driver`.
    pub name: &'static str,
    /// The driver reads a credentials Secret: `spec.credentialsSecretRef` is required.
    pub needs_credentials: bool,
    /// `spec.<key>` of the Provider.
    pub provider: Option<Block>,
    /// `spec.pools[].<key>`.
    pub pool: Option<Block>,
    /// `spec.pools[].labels[].<key>`.
    pub label: Option<Block>,
    /// `spec.<key>` of an Image: how to find the image in this driver's cloud.
    pub image: Option<Block>,
}

/// One settings block: where it goes, its schema, and whether a provider of the driver must set it.
#[derive(Clone, Debug)]
pub struct Block {
    pub key: &'static str,
    /// The block's OpenAPI schema, as the CRD derive writes it ([`block_schema`]).
    pub schema: Value,
    pub required: bool,
}

impl Block {
    /// An optional block of type `T`.
    pub fn of<T: JsonSchema>(key: &'static str) -> Self {
        Self { key, schema: block_schema::<T>(), required: false }
    }

    /// A block every provider (or every pool) of the driver must set.
    pub fn required<T: JsonSchema>(key: &'static str) -> Self {
        Self { required: true, ..Self::of::<T>(key) }
    }
}

/// The schema of `T` as kube's CRD derive writes schemas: inlined, OpenAPI 3, structural.
pub fn block_schema<T: JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .with_transform(kube::core::schema::OptionalEnum)
        .with_transform(kube::core::schema::OptionalIntOrString)
        .into_generator();
    let mut schema =
        serde_json::to_value(generator.into_root_schema_for::<T>()).expect("a schema serializes");
    if let Value::Object(map) = &mut schema {
        map.remove("title");
    }
    schema
}

/// The CRDs with every driver's blocks and rules written in. `Provider` and `Image` are changed;
/// the other kinds pass through.
pub fn with_driver_blocks(
    crds: Vec<CustomResourceDefinition>,
    drivers: &[DriverShape],
) -> Vec<CustomResourceDefinition> {
    crds.into_iter()
        .map(|crd| {
            let kind = crd.spec.names.kind.clone();
            let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
            let spec = &mut value["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
            match kind.as_str() {
                "Provider" => provider_blocks(spec, drivers),
                "Image" => image_blocks(spec, drivers),
                _ => return crd,
            }
            let crd = serde_json::from_value(value).expect("a CRD with driver blocks deserializes");
            crate::schema_formats::kubernetes_only(crd)
        })
        .collect()
}

fn provider_blocks(spec: &mut Value, drivers: &[DriverShape]) {
    let names: Vec<&str> = drivers.iter().map(|d| d.name).collect();
    spec["properties"]["driver"]["enum"] = json!(names);
    let mut rules = Vec::new();
    for driver in drivers {
        let name = driver.name;
        let a = if name.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
        let is = format!("self.driver == '{name}'");
        if driver.needs_credentials {
            rules.push(rule(
                format!("!({is}) || has(self.credentialsSecretRef)"),
                format!("{a} {name} provider needs credentialsSecretRef naming the Secret that holds its credentials"),
            ));
        }
        if let Some(block) = &driver.provider {
            let key = block.key;
            add_property(spec, block);
            if block.required {
                rules.push(rule(
                    format!("!({is}) || has(self.{key})"),
                    format!("{a} {name} provider needs spec.{key}"),
                ));
            }
            rules.push(rule(
                format!("!has(self.{key}) || {is}"),
                format!("spec.{key} is only for {a} {name} provider"),
            ));
        }
        if let Some(block) = &driver.pool {
            let key = block.key;
            add_property(&mut spec["properties"]["pools"]["items"], block);
            if block.required {
                rules.push(rule(
                    format!("!({is}) || self.pools.all(p, has(p.{key}))"),
                    format!("every pool of {a} {name} provider needs pools[].{key}"),
                ));
            }
            rules.push(rule(
                format!("{is} || self.pools.all(p, !has(p.{key}))"),
                format!("pools[].{key} is only for {a} {name} provider"),
            ));
        }
        if let Some(block) = &driver.label {
            let key = block.key;
            add_property(&mut spec["properties"]["pools"]["items"]["properties"]["labels"]["items"], block);
            rules.push(rule(
                format!("{is} || self.pools.all(p, !has(p.labels) || p.labels.all(l, !has(l.{key})))"),
                format!("pools[].labels[].{key} is only for {a} {name} provider"),
            ));
        }
    }
    append_rules(spec, rules);
}

fn image_blocks(spec: &mut Value, drivers: &[DriverShape]) {
    let blocks: Vec<&Block> = drivers.iter().filter_map(|d| d.image.as_ref()).collect();
    for block in &blocks {
        add_property(spec, block);
    }
    let keys: Vec<&str> = blocks.iter().map(|b| b.key).collect();
    // Each block is its own driver's; the "at least one" rule lists them all by necessity.
    let any = keys.iter().map(|k| format!("has(self.{k})")).collect::<Vec<_>>().join(" || ");
    let named = keys.iter().map(|k| format!("spec.{k}")).collect::<Vec<_>>().join(" or ");
    if !keys.is_empty() {
        append_rules(
            spec,
            vec![rule(any, format!("an Image says how to find it in at least one cloud: set {named}"))],
        );
    }
}

fn add_property(object: &mut Value, block: &Block) {
    object["properties"][block.key] = block.schema.clone();
}

fn rule(rule: String, message: String) -> Value {
    json!({ "rule": rule, "message": message })
}

fn append_rules(object: &mut Value, rules: Vec<Value>) {
    let existing = object["x-kubernetes-validations"].as_array().cloned().unwrap_or_default();
    if existing.is_empty() && rules.is_empty() {
        return;
    }
    object["x-kubernetes-validations"] = Value::Array(existing.into_iter().chain(rules).collect());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, JsonSchema)]
    struct Settings {
        region: String,
    }

    #[test]
    fn a_block_parses_as_its_drivers_settings_and_says_where_it_is_wrong() {
        let blocks: DriverBlocks =
            serde_json::from_value(json!({"x": {"region": "r"}, "y": {"region": 3}})).unwrap();
        assert_eq!(blocks.parse::<Settings>("x").unwrap().unwrap().region, "r");
        assert!(blocks.parse::<Settings>("z").unwrap().is_none());
        let error = blocks.parse::<Settings>("y").unwrap_err();
        assert!(error.to_string().starts_with("y: "), "{error}");
    }

    #[test]
    fn each_rule_names_one_driver() {
        let shape = |name| DriverShape {
            name,
            needs_credentials: true,
            provider: Some(Block::required::<Settings>(name)),
            pool: Some(Block::of::<Settings>(name)),
            label: Some(Block::of::<Settings>(name)),
            image: Some(Block::of::<Settings>(name)),
        };
        let drivers = [shape("one"), shape("two"), shape("three")];
        let crds = with_driver_blocks(vec![<crate::Provider as kube::CustomResourceExt>::crd()], &drivers);
        let value = serde_json::to_value(&crds[0]).unwrap();
        let spec = &value["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["driver"]["enum"], json!(["one", "two", "three"]));
        assert_eq!(spec["properties"]["two"]["required"], json!(["region"]));
        let rules = spec["x-kubernetes-validations"].as_array().unwrap();
        for rule in rules.iter().filter_map(|r| r["rule"].as_str()) {
            let named = ["one", "two", "three"].iter().filter(|d| rule.contains(&format!("'{d}'"))).count();
            assert!(named <= 1, "rule names several drivers: {rule}");
        }
    }
}
