//! An `openshift` provider: context, credentials (a kubeconfig), `max-projects` as every pool's
//! `maxServers` (as Nodepool applies it), and project or pod labels.

use nodepool_crds::provider::PoolLabel;
use nodepool_driver_kubernetes::DEFAULT_KEY;
use nodepool_driver_openshift::{
    BLOCK,
    settings::{OpenShiftLabel, OpenShiftLabelKind, OpenShiftProvider},
};

use super::{
    kubernetes::{LabelDefaults, label_defaults, pod_settings},
    provider::{PoolDefaults, ProviderImport, last_count_of},
    yaml::{Field, Mapping},
};

pub fn import(provider: &mut Mapping, import: &mut ProviderImport) {
    let notes = &mut import.draft.notes;
    let settings =
        OpenShiftProvider { context: provider.take("context").and_then(|v| v.text(notes)), api_url: None };
    import.spec.driver_settings.insert(BLOCK, &settings).expect("serializes");
    import.credentials(
        &[DEFAULT_KEY],
        "a kubeconfig for OpenShift whose user may request projects (or remove credentialsSecretRef to use the operator's own account)",
    );
    let notes = &mut import.draft.notes;
    // Nodepool reads max-projects (else max-servers) as every pool's default max-servers.
    let max_servers = last_count_of(provider, &["max-servers", "max-projects"], notes);
    let defaults = PoolDefaults { max_servers, ..Default::default() };
    import.each_pool(provider, &defaults, |import, pool, out| {
        let notes = &mut import.draft.notes;
        let defaults = label_defaults(pool, notes);
        let labels = pool.take("labels").map(|l| l.list(notes)).unwrap_or_default();
        out.labels = labels
            .into_iter()
            .filter_map(|label| pool_label(label, &defaults, &mut import.draft.notes))
            .collect();
    });
}

fn pool_label(field: Field, defaults: &LabelDefaults, notes: &mut super::Notes) -> Option<PoolLabel> {
    let here = field.clone();
    let mut label = field.mapping(notes)?;
    let name = label.take("name").and_then(|v| v.text(notes))?;
    let kind = match label.take("type").and_then(|v| v.text(notes)).as_deref() {
        Some("project") => OpenShiftLabelKind::Project,
        Some("pod") => OpenShiftLabelKind::Pod,
        other => {
            notes.invalid(&here, format!("label {name:?}: type must be project or pod, not {other:?}"));
            label.finish(notes);
            return None;
        }
    };
    let settings = OpenShiftLabel { kind, pod: pod_settings(&mut label, defaults, notes) };
    label.finish(notes);
    if settings.kind == OpenShiftLabelKind::Pod && settings.pod.image.is_none() {
        notes.invalid(&here, format!("pod label {name:?} has no image"));
        return None;
    }
    let mut out = PoolLabel::named(&name);
    out.driver_settings.insert(BLOCK, &settings).expect("serializes");
    Some(out)
}
