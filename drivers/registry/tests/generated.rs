//! What is generated from the registry must be checked in as generated, and every registered
//! driver must come with its settings schema and its docs.

use std::{collections::BTreeSet, fs, path::PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn checked_in_crds_match_the_code() {
    let dir = root().join("crds/generated");
    let mut expected_files = BTreeSet::new();
    for crd in nodepool_drivers::crds() {
        let name = nodepool_crds::crd_file_name(&crd);
        let on_disk = fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            on_disk == nodepool_crds::crd_yaml(&crd),
            "crds/generated/{name} is out of date: run `make crds`"
        );
        expected_files.insert(name);
    }
    let present: BTreeSet<String> = fs::read_dir(&dir)
        .expect("crds/generated exists")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(present, expected_files, "crds/generated holds files the code does not generate");
    for name in &expected_files {
        let chart =
            fs::read_to_string(root().join("charts/nodepool-operator/crds").join(name)).unwrap_or_default();
        let generated = fs::read_to_string(dir.join(name)).unwrap();
        assert!(chart == generated, "the chart's copy of {name} is out of date: run `make crds`");
    }
}

#[test]
fn checked_in_field_reference_matches_the_code() {
    let on_disk = fs::read_to_string(root().join("docs/reference/crds.md")).unwrap_or_default();
    assert!(
        on_disk == nodepool_crds::reference::markdown(&nodepool_drivers::crds()),
        "docs/reference/crds.md is out of date: run `make crds`"
    );
}

/// `kubectl apply` warns of every schema format the apiserver does not know (`uint32`, ...).
#[test]
fn every_schema_format_is_one_kubernetes_knows() {
    for crd in nodepool_drivers::crds() {
        let mut formats = Vec::new();
        nodepool_crds::schema_formats::all(&serde_json::to_value(&crd).unwrap(), &mut formats);
        let unknown: Vec<&String> =
            formats.iter().filter(|f| !nodepool_crds::schema_formats::KNOWN.contains(&f.as_str())).collect();
        assert!(
            unknown.is_empty(),
            "{}: formats Kubernetes does not know: {unknown:?}",
            nodepool_crds::crd_file_name(&crd)
        );
    }
}

/// A driver is one folder plus one registry line: the folder must exist under that name, the
/// driver must describe at least one settings block with a documented schema, and
/// `docs/drivers.md` must have its section.
#[test]
fn every_registered_driver_has_a_folder_a_settings_schema_and_docs() {
    let guide = fs::read_to_string(root().join("docs/drivers.md")).unwrap();
    let mut names = BTreeSet::new();
    for driver in nodepool_drivers::DRIVERS {
        let name = driver.name();
        assert!(names.insert(name), "driver {name} is registered twice");
        assert!(root().join("drivers").join(name).join("Cargo.toml").exists(), "no folder drivers/{name}");
        let shape = driver.shape();
        assert_eq!(shape.name, name, "the shape of {name} names another driver");
        let blocks: Vec<_> =
            [&shape.provider, &shape.pool, &shape.label, &shape.image].into_iter().flatten().collect();
        assert!(!blocks.is_empty(), "driver {name} has no settings schema");
        for block in blocks {
            let described = block.schema["description"].as_str().is_some_and(|d| !d.is_empty());
            assert!(described, "driver {name}: block {:?} has no description", block.key);
        }
        let heading = format!("(`drivers/{name}`");
        assert!(
            guide.lines().any(|line| line.starts_with("## ") && line.contains(&heading)),
            "docs/drivers.md has no section for driver {name} (a `## ...` heading with {heading})"
        );
        assert!(!driver.connection_types().is_empty(), "driver {name} names no connection type");
    }
}
