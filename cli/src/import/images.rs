//! `cloud-images[]` of every provider → shared `Image` objects. Nodepool's images belong to one
//! provider; ours are shared, each with a block per driver. Two providers' images of one name
//! become one Image when they agree, and two Images when they do not.

use nodepool_crds::{ConnectionSettings, DriverBlocks, Image, ImageSpec};

use super::{
    manifest, names,
    notes::Notes,
    origin,
    yaml::{Field, Mapping},
};

#[derive(Default)]
pub struct Images {
    /// In the order first defined, with where each came from.
    images: Vec<(String, String, ImageSpec)>,
}

/// One provider's image, before it is given an object.
pub struct CloudImage {
    /// Nodepool's name for it (`cloud-images[].name`).
    pub name: String,
    pub connection: ConnectionSettings,
    /// The driver's block key (`aws`) and its settings.
    pub driver: &'static str,
    pub block: serde_json::Value,
}

impl Images {
    /// The name of the Image that carries `image` for provider `provider`: an existing Image
    /// that agrees with it, or a new one.
    pub fn add(
        &mut self,
        provider: &str,
        image: CloudImage,
        field: &Field,
        notes: &mut Notes,
    ) -> Option<String> {
        let candidates = [image.name.clone(), format!("{provider}-{}", image.name)];
        for (attempt, wanted) in candidates.iter().enumerate() {
            let Some(name) = names::object_name(wanted) else { continue };
            match self.images.iter_mut().find(|(existing, _, _)| *existing == name) {
                None => {
                    let mut spec = ImageSpec {
                        connection: image.connection.clone(),
                        driver_settings: DriverBlocks::default(),
                    };
                    spec.driver_settings.insert(image.driver, &image.block).expect("JSON serializes");
                    self.images.push((name.clone(), origin(field), spec));
                }
                Some((_, _, spec)) => {
                    let block: Option<serde_json::Value> =
                        spec.driver_settings.parse(image.driver).ok().flatten();
                    let agrees = spec.connection == image.connection
                        && block.as_ref().is_none_or(|b| *b == image.block);
                    if !agrees {
                        continue;
                    }
                    spec.driver_settings.insert(image.driver, &image.block).expect("JSON serializes");
                }
            }
            if attempt > 0 || name != image.name {
                notes.changed(
                    field,
                    format!("carried as Image {name:?} (Images are shared by all providers)"),
                );
            }
            return Some(name);
        }
        notes.invalid(field, format!("image {:?} cannot be given an object name", image.name));
        None
    }

    pub fn into_objects(self) -> impl Iterator<Item = (String, serde_json::Value)> {
        self.images.into_iter().map(|(name, origin, spec)| (origin, manifest(&Image::new(&name, spec))))
    }
}

/// An image's connection settings, with Nodepool's port for WinRM written out (ours is 22).
pub fn connection(image: &mut Mapping, notes: &mut Notes) -> ConnectionSettings {
    let mut settings = ConnectionSettings {
        username: image.take("username").and_then(|v| v.text(notes)),
        python_path: image.take("python-path").and_then(|v| v.text(notes)),
        shell_type: image.take("shell-type").and_then(|v| v.text(notes)),
        connection_port: image
            .take("connection-port")
            .and_then(|v| v.count(notes))
            .map(|p| p.clamp(1, 65535) as u16),
        connection_type: None,
    };
    if let Some(field) = image.take("connection-type") {
        match field.text(notes).map(|t| serde_json::from_value(t.into())) {
            Some(Ok(kind)) => settings.connection_type = Some(kind),
            Some(Err(_)) => notes.invalid(&field, "connection-type is ssh, winrm or network_cli here"),
            None => {}
        }
    }
    if settings.connection_type == Some(nodepool_crds::ConnectionType::Winrm)
        && settings.connection_port.is_none()
    {
        settings.connection_port = Some(5986);
    }
    settings
}
