//! `labels[]` → `Label` objects (min-ready, max-ready-age).

use nodepool_crds::{GoDuration, Label, LabelSpec};

use super::{Draft, manifest, names, origin, yaml::Field};

pub fn import(field: Field, draft: &mut Draft) {
    let here = field.clone();
    let Some(mut label) = field.mapping(&mut draft.notes) else { return };
    let notes = &mut draft.notes;
    let Some(name) = label.take("name").and_then(|n| n.text(notes)) else {
        notes.invalid(&here, "a label without a name");
        label.finish(notes);
        return;
    };
    let mut spec = LabelSpec::default();
    if let Some(field) = label.take("min-ready") {
        match field.int(notes) {
            Some(n) if n < 0 => notes.not_carried(
                &field,
                "min-ready -1 (label disabled) has no counterpart: to stop serving a label, remove it from the pools",
            ),
            Some(n) => spec.min_ready = n.min(10_000) as u32,
            None => {}
        }
    }
    if let Some(field) = label.take("max-ready-age")
        && let Some(seconds) = field.count(notes).filter(|s| *s > 0)
    {
        spec.max_ready_age = Some(GoDuration::from_secs(seconds));
    }
    label.finish(notes);
    if !names::is_object_name(&name) {
        // Pools serve the label by its own name; only the Label object needs a Kubernetes name,
        // and an object under another name would not be this label's.
        if spec != LabelSpec::default() {
            notes.not_carried(
                &here,
                format!("{name:?} is not a valid object name, so it cannot have a Label (min-ready, max-ready-age); pools still serve it"),
            );
        }
        return;
    }
    if !draft.taken.insert(("Label", name.clone())) {
        draft.notes.invalid(&here, format!("label {name:?} is defined twice; the first counts"));
        return;
    }
    draft.labels.push((origin(&here), manifest(&Label::new(&name, spec))));
}
