//! The checked-in CRD YAML and field reference must be exactly what the code generates.

use std::{collections::BTreeSet, fs, path::PathBuf};

#[test]
fn checked_in_crds_match_the_code() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("generated");
    let mut expected_files = BTreeSet::new();
    for crd in nodepool_crds::all_crds() {
        let name = nodepool_crds::crd_file_name(&crd);
        let on_disk = fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            on_disk == nodepool_crds::crd_yaml(&crd),
            "crds/generated/{name} is out of date: run `cargo run -p nodepool-crds --bin nodepool-crdgen`"
        );
        expected_files.insert(name);
    }
    let present: BTreeSet<String> = fs::read_dir(&dir)
        .expect("crds/generated exists")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(present, expected_files, "crds/generated holds files the code does not generate");
}

#[test]
fn checked_in_field_reference_matches_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/reference/crds.md");
    let on_disk = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == nodepool_crds::reference::markdown(&nodepool_crds::all_crds()),
        "docs/reference/crds.md is out of date: run `make crds`"
    );
}

/// `kubectl apply` warns of every schema format the apiserver does not know (`uint32`, ...).
#[test]
fn every_schema_format_is_one_kubernetes_knows() {
    for crd in nodepool_crds::all_crds() {
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
