//! A `gce` provider: project, region, zone, credentials, cloud images, pools and labels.

use std::collections::BTreeMap;

use nodepool_crds::provider::PoolLabel;
use nodepool_driver_gce::{
    BLOCK, DEFAULT_KEY,
    settings::{GceImage, GceLabel, GcePool, GceProvider},
};

use super::{
    images::{CloudImage, connection},
    provider::{PoolDefaults, ProviderImport},
    yaml::{Field, Mapping},
};

/// Nodepool's GCE label defaults, written out: unset, GCE's own defaults would apply here.
const VOLUME_SIZE_GB: u32 = 10;
const VOLUME_TYPE: &str = "pd-standard";

/// A carried cloud image: the Image's name, and the `ssh-keys` metadata its `key` becomes.
struct Carried {
    image: String,
    ssh_keys: Option<String>,
}

pub fn import(provider: &mut Mapping, import: &mut ProviderImport) {
    let notes = &mut import.draft.notes;
    let project = provider.take("project").and_then(|v| v.text(notes));
    let region = provider.take("region").and_then(|v| v.text(notes));
    let zone = provider.take("zone").and_then(|v| v.text(notes));
    let (Some(project), Some(region), Some(zone)) = (project, region, zone) else {
        notes.invalid(&import.field, "a gce provider needs project, region and zone");
        return;
    };
    let settings = GceProvider { project, region, zones: vec![zone], endpoint: None };
    import.spec.driver_settings.insert(BLOCK, &settings).expect("serializes");
    import.credentials(&[DEFAULT_KEY], "a service-account key (JSON)");
    if let Some(rate) = provider.take("rate").or_else(|| provider.take("rate-limit")) {
        import.rate(rate);
    }
    provider.take("rate-limit");
    let images = provider.take("cloud-images").map(|list| cloud_images(list, import)).unwrap_or_default();
    import.each_pool(provider, &PoolDefaults::default(), |import, pool, out| {
        let notes = &mut import.draft.notes;
        let mut settings = GcePool { external_ip: true, ..Default::default() };
        if let Some(field) = pool.take("use-internal-ip")
            && field.flag(notes) == Some(true)
        {
            settings.external_ip = false;
            notes.changed(&field, "the instance gets no external address at all (Nodepool kept it and connected to the internal one)");
        }
        out.driver_settings.insert(BLOCK, &settings).expect("serializes");
        let labels = pool.take("labels").map(|l| l.list(notes)).unwrap_or_default();
        out.labels = labels.into_iter().filter_map(|label| pool_label(label, &images, import)).collect();
    });
}

fn cloud_images(list: Field, import: &mut ProviderImport) -> BTreeMap<String, Carried> {
    let mut carried = BTreeMap::new();
    for field in list.list(&mut import.draft.notes) {
        let here = field.clone();
        let notes = &mut import.draft.notes;
        let Some(mut image) = field.mapping(notes) else { continue };
        let Some(name) = image.take("name").and_then(|n| n.text(notes)) else {
            notes.invalid(&here, "a cloud image without a name");
            continue;
        };
        let connection = connection(&mut image, notes);
        let block = GceImage {
            image: image.take("image-id").and_then(|v| v.text(notes)),
            family: image.take("image-family").and_then(|v| v.text(notes)),
            project: image.take("image-project").and_then(|v| v.text(notes)),
        };
        let key = image.take("key").and_then(|v| v.text(notes));
        image.finish(notes);
        if block.image.is_some() == block.family.is_some() {
            notes.invalid(&here, "a cloud image needs image-id or image-family (one of them)");
            continue;
        }
        let ssh_keys = key.map(|key| format!("{}:{key}", connection.username.as_deref().unwrap_or("zuul")));
        let block = serde_json::to_value(&block).expect("serializes");
        let cloud_image = CloudImage { name: name.clone(), connection, driver: BLOCK, block };
        if let Some(object) =
            import.draft.images.add(&import.name, cloud_image, &here, &mut import.draft.notes)
        {
            carried.insert(name, Carried { image: object, ssh_keys });
        }
    }
    carried
}

fn pool_label(
    field: Field,
    images: &BTreeMap<String, Carried>,
    import: &mut ProviderImport,
) -> Option<PoolLabel> {
    let here = field.clone();
    let notes = &mut import.draft.notes;
    let mut label = field.mapping(notes)?;
    let name = label.take("name").and_then(|v| v.text(notes))?;
    let mut out = PoolLabel::named(&name);
    let mut gce = GceLabel::default();
    let image = label.take("cloud-image").and_then(|v| v.text(notes));
    let carried = image.as_ref().and_then(|image| images.get(image));
    if let Some(carried) = carried {
        out.image = Some(carried.image.clone());
        if let Some(keys) = &carried.ssh_keys {
            gce.metadata.insert("ssh-keys".into(), keys.clone());
        }
    }
    out.instance_type = label.take("instance-type").and_then(|v| v.text(notes));
    let size = label.take("volume-size").and_then(|v| v.count(notes));
    out.volume_size_gb = Some(size.map_or(VOLUME_SIZE_GB, |s| s.clamp(1, u32::MAX as u64) as u32));
    out.volume_type =
        Some(label.take("volume-type").and_then(|v| v.text(notes)).unwrap_or_else(|| VOLUME_TYPE.into()));
    label.finish(notes);
    if carried.is_none() || out.instance_type.is_none() {
        notes.not_carried(
            &here,
            format!("label {name:?} is not carried: it needs a carried cloud image and an instance type"),
        );
        return None;
    }
    out.driver_settings.insert(BLOCK, &gce).expect("serializes");
    Some(out)
}
