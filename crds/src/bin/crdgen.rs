//! Writes the CustomResourceDefinitions to `crds/generated/` (or the directory given), and the
//! field reference generated from them to `docs/reference/crds.md`.

use std::{fs, path::PathBuf};

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("generated"));
    fs::create_dir_all(&out)?;
    for crd in nodepool_crds::all_crds() {
        let path = out.join(nodepool_crds::crd_file_name(&crd));
        fs::write(&path, nodepool_crds::crd_yaml(&crd))?;
        println!("wrote {}", path.display());
    }
    let reference = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/reference/crds.md");
    fs::create_dir_all(reference.parent().expect("docs/reference"))?;
    fs::write(&reference, nodepool_crds::reference::markdown(&nodepool_crds::all_crds()))?;
    println!("wrote {}", reference.display());
    Ok(())
}
