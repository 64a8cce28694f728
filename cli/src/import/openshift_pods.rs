//! An `openshiftpods` provider: context, credentials (a kubeconfig with a token), and pools named
//! after the projects their pods go in.

use nodepool_crds::provider::PoolLabel;
use nodepool_driver_kubernetes::DEFAULT_KEY;
use nodepool_driver_openshiftpods::{BLOCK, settings::OpenShiftPodsProvider};

use super::{
    kubernetes::{label_defaults, pod_settings},
    provider::{PoolDefaults, ProviderImport, last_count_of},
    yaml::{Field, Mapping},
};

pub fn import(provider: &mut Mapping, import: &mut ProviderImport) {
    let notes = &mut import.draft.notes;
    let settings = OpenShiftPodsProvider {
        context: provider.take("context").and_then(|v| v.text(notes)),
        api_url: None,
    };
    import.spec.driver_settings.insert(BLOCK, &settings).expect("serializes");
    import.credentials(&[DEFAULT_KEY], "a kubeconfig whose user has a token (Zuul is handed that token)");
    let notes = &mut import.draft.notes;
    // Nodepool's defaults for every pool's max-servers (it reads max-projects and max-servers, and
    // ignores its documented max-pods; all three are taken here).
    let max_servers = last_count_of(provider, &["max-pods", "max-projects", "max-servers"], notes);
    let defaults = PoolDefaults { max_servers, name_is_a_namespace: true, ..Default::default() };
    import.each_pool(provider, &defaults, |import, pool, out| {
        let notes = &mut import.draft.notes;
        if let Some(max) = pool.take("max-pods").and_then(|v| v.int(notes)).filter(|v| *v >= 0) {
            out.max_servers = Some(max.min(u32::MAX as i64) as u32);
        }
        let defaults = label_defaults(pool, notes);
        let labels = pool.take("labels").map(|l| l.list(notes)).unwrap_or_default();
        out.labels = labels
            .into_iter()
            .filter_map(|label| pool_label(label, &defaults, &mut import.draft.notes))
            .collect();
    });
}

fn pool_label(
    field: Field,
    defaults: &super::kubernetes::LabelDefaults,
    notes: &mut super::Notes,
) -> Option<PoolLabel> {
    let here = field.clone();
    let mut label = field.mapping(notes)?;
    let name = label.take("name").and_then(|v| v.text(notes))?;
    let settings = pod_settings(&mut label, defaults, notes);
    label.finish(notes);
    if settings.image.is_none() {
        notes.invalid(&here, format!("label {name:?} has no image"));
        return None;
    }
    let mut out = PoolLabel::named(&name);
    out.driver_settings.insert(BLOCK, &settings).expect("serializes");
    Some(out)
}
