//! An `aws` provider: region, credentials, cloud images, pools and labels.

use std::collections::BTreeMap;

use nodepool_crds::provider::PoolLabel;
use nodepool_driver_aws::{
    ACCESS_KEY_ID, BLOCK, SECRET_ACCESS_KEY,
    settings::{AwsFleet, AwsImage, AwsImageFilter, AwsLabel, AwsPool, AwsProvider},
};

use super::{
    images::{CloudImage, connection},
    provider::{PoolDefaults, ProviderImport},
    yaml::{Field, Mapping},
};

/// Keys that only serve image upload (`diskimages`): there is no image upload here.
const UPLOAD: &[&str] =
    &["diskimages", "object-storage", "image-format", "image-import-timeout", "post-upload-hook"];

pub fn import(provider: &mut Mapping, import: &mut ProviderImport) {
    let notes = &mut import.draft.notes;
    let region = provider.take("region-name").and_then(|r| r.text(notes));
    let Some(region) = region else {
        notes.invalid(&import.field, "an aws provider needs region-name");
        return;
    };
    import.spec.driver_settings.insert(BLOCK, &AwsProvider { region, endpoint: None }).expect("serializes");
    if let Some(profile) = provider.take("profile-name") {
        notes.changed(&profile, "credentials come from the Secret below, not a boto3 profile");
    }
    import.credentials(
        &[ACCESS_KEY_ID, SECRET_ACCESS_KEY],
        "the AWS access key (or use AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE)",
    );
    if let Some(rate) = provider.take("rate") {
        import.rate(rate);
    }
    let notes = &mut import.draft.notes;
    for key in UPLOAD {
        provider.not_carried(
            key,
            "there is no image upload: import the AMI yourself and refer to it with an Image",
            notes,
        );
    }
    let max_resources = provider
        .take("max-resources")
        .map(|field| super::provider::max_resources(field, notes))
        .unwrap_or_default();
    let defaults = PoolDefaults {
        max_resources,
        max_servers: provider.take("max-servers").and_then(|v| v.int(notes)),
        max_cores: provider.take("max-cores").and_then(|v| v.int(notes)),
        max_ram: provider.take("max-ram").and_then(|v| v.int(notes)),
        host_key_checking: provider.take("host-key-checking").and_then(|v| v.flag(notes)),
        name_is_a_namespace: false,
    };
    let switches = Switches {
        public_ipv4: provider.take("public-ipv4").and_then(|v| v.flag(notes)),
        public_ipv6: provider.take("public-ipv6").and_then(|v| v.flag(notes)),
        use_internal_ip: provider.take("use-internal-ip").and_then(|v| v.flag(notes)),
    };
    let images = provider.take("cloud-images").map(|list| cloud_images(list, import)).unwrap_or_default();
    import.each_pool(provider, &defaults, |import, pool, out| {
        let notes = &mut import.draft.notes;
        let public =
            pool.take("public-ipv4").or_else(|| pool.take("public-ip-address")).and_then(|v| v.flag(notes));
        let settings = AwsPool {
            subnet_id: pool.take("subnet-id").and_then(|v| v.text(notes)),
            security_group_ids: pool
                .take("security-group-id")
                .and_then(|v| v.text(notes))
                .into_iter()
                .collect(),
            public_ip_address: public.or(switches.public_ipv4).unwrap_or(true),
            use_private_ip: pool
                .take("use-internal-ip")
                .and_then(|v| v.flag(notes))
                .or(switches.use_internal_ip)
                .unwrap_or(false),
            availability_zone: pool.take("availability-zone").and_then(|v| v.text(notes)),
            public_ipv6: pool
                .take("public-ipv6")
                .and_then(|v| v.flag(notes))
                .or(switches.public_ipv6)
                .unwrap_or(false),
        };
        out.driver_settings.insert(BLOCK, &settings).expect("serializes");
        let labels = pool.take("labels").map(|l| l.list(notes)).unwrap_or_default();
        out.labels = labels.into_iter().filter_map(|label| pool_label(label, &images, import)).collect();
    });
}

/// Provider-level switches that are defaults for every pool.
struct Switches {
    public_ipv4: Option<bool>,
    public_ipv6: Option<bool>,
    use_internal_ip: Option<bool>,
}

/// `cloud-images[]` → Images; Nodepool's image name → the Image's name.
fn cloud_images(list: Field, import: &mut ProviderImport) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for field in list.list(&mut import.draft.notes) {
        let here = field.clone();
        let notes = &mut import.draft.notes;
        let Some(mut image) = field.mapping(notes) else { continue };
        let Some(name) = image.take("name").and_then(|n| n.text(notes)) else {
            notes.invalid(&here, "a cloud image without a name");
            continue;
        };
        let connection = connection(&mut image, notes);
        let mut block =
            AwsImage { image_id: image.take("image-id").and_then(|v| v.text(notes)), ..Default::default() };
        if let Some(filters) = image.take("image-filters") {
            for filter in filters.list(notes) {
                let Some(mut filter) = filter.mapping(notes) else { continue };
                // Nodepool takes boto3's spelling too (`Name`, `Values`).
                let name = filter.take("name").or_else(|| filter.take("Name"));
                let name = name.and_then(|v| v.text(notes)).unwrap_or_default();
                let values = filter.take("values").or_else(|| filter.take("Values"));
                let values = values.map(|v| v.strings(notes)).unwrap_or_default();
                filter.finish(notes);
                block.filters.push(AwsImageFilter { name, values });
            }
        }
        image.finish(notes);
        if block.image_id.is_some() != block.filters.is_empty() {
            notes.invalid(&here, "a cloud image needs image-id or image-filters (one of them)");
            continue;
        }
        if let Some(id) = block.image_id.as_deref().filter(|id| !AwsImage::is_ami_id(id)) {
            notes.invalid(
                &here,
                format!("{id:?} is not an AMI id (ami-<hex>); the image and its labels are not carried"),
            );
            continue;
        }
        let block = serde_json::to_value(&block).expect("serializes");
        let cloud_image = CloudImage { name: name.clone(), connection, driver: BLOCK, block };
        if let Some(object) =
            import.draft.images.add(&import.name, cloud_image, &here, &mut import.draft.notes)
        {
            names.insert(name, object);
        }
    }
    names
}

fn pool_label(
    field: Field,
    images: &BTreeMap<String, String>,
    import: &mut ProviderImport,
) -> Option<PoolLabel> {
    let here = field.clone();
    let notes = &mut import.draft.notes;
    let mut label = field.mapping(notes)?;
    let name = label.take("name").and_then(|v| v.text(notes))?;
    let mut out = PoolLabel::named(&name);
    let mut unlaunchable = None;
    if let Some(image) = label.take("cloud-image").and_then(|v| v.text(notes)) {
        match images.get(&image) {
            Some(object) => out.image = Some(object.clone()),
            None => unlaunchable = Some(format!("its cloud image {image:?} was not carried")),
        }
    }
    if label.take("diskimage").is_some() {
        unlaunchable = Some("it boots a diskimage, and there is no image builder or upload here".into());
    }
    out.instance_type = label.take("instance-type").and_then(|v| v.text(notes));
    let fleet = label.take("fleet").and_then(|f| fleet(f, notes));
    if out.image.is_none() || (out.instance_type.is_none() && fleet.is_none()) {
        unlaunchable.get_or_insert_with(|| "it needs a cloud image and an instance type or a fleet".into());
    }
    out.volume_size_gb =
        label.take("volume-size").and_then(|v| v.count(notes)).map(|v| v.clamp(1, u32::MAX as u64) as u32);
    out.volume_type = label.take("volume-type").and_then(|v| v.text(notes));
    out.user_data = label.take("userdata").and_then(|v| v.text(notes));
    out.tags = label.take("tags").map(|v| v.string_map(notes)).unwrap_or_default();
    out.dynamic_tags = label.take("dynamic-tags").map(|v| v.string_map(notes)).unwrap_or_default();
    if let Some(field) = label.take("use-spot") {
        out.spot = field.flag(notes).unwrap_or(false);
        if out.spot {
            notes.changed(&field, "without spot capacity the launch falls back to on-demand");
        }
    }
    let mut aws = AwsLabel {
        key_name: label.take("key-name").and_then(|v| v.text(notes)),
        fleet,
        ..Default::default()
    };
    if let Some(profile) = label.take("iam-instance-profile").and_then(|v| v.mapping(notes)) {
        let mut profile = profile;
        aws.iam_instance_profile =
            profile.take("arn").or_else(|| profile.take("name")).and_then(|v| v.text(notes));
        profile.finish(notes);
    }
    // Nodepool left IMDS as the AMI has it unless told `required`; ours requires IMDSv2 unless
    // told otherwise, so anything but `required` is written as false.
    aws.imdsv2 = label.take("imdsv2").and_then(|v| v.text(notes)).is_some_and(|v| v == "required");
    aws.iops = label.take("iops").and_then(|v| v.count(notes)).map(|v| v.clamp(1, u32::MAX as u64) as u32);
    aws.throughput =
        label.take("throughput").and_then(|v| v.count(notes)).map(|v| v.clamp(1, u32::MAX as u64) as u32);
    aws.ebs_optimized = label.take("ebs-optimized").and_then(|v| v.flag(notes)).unwrap_or(false);
    aws.dedicated_host = label.take("dedicated-host").and_then(|v| v.flag(notes)).unwrap_or(false);
    label.finish(notes);
    if let Some(why) = unlaunchable {
        notes.not_carried(&here, format!("label {name:?} is not carried: {why}"));
        return None;
    }
    out.driver_settings.insert(BLOCK, &aws).expect("serializes");
    Some(out)
}

/// `fleet: {instance-types, allocation-strategy}` (Nodepool's names for the strategies).
fn fleet(field: Field, notes: &mut super::Notes) -> Option<AwsFleet> {
    let here = field.clone();
    let mut fleet = field.mapping(notes)?;
    let instance_types = fleet.take("instance-types").map(|v| v.strings(notes)).unwrap_or_default();
    let strategy = fleet.take("allocation-strategy").and_then(|v| v.text(notes));
    fleet.finish(notes);
    let allocation_strategy = strategy.as_deref().and_then(|s| serde_json::from_value(s.into()).ok());
    match (instance_types.is_empty(), allocation_strategy) {
        (false, Some(allocation_strategy)) => Some(AwsFleet { instance_types, allocation_strategy }),
        _ => {
            notes.invalid(
                &here,
                format!("a fleet needs instance-types and a known allocation-strategy, not {strategy:?}"),
            );
            None
        }
    }
}
