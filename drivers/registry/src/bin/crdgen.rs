//! Writes the CustomResourceDefinitions, with every registered driver's settings blocks, to
//! `crds/generated/` (or the directory given), and the field reference generated from them to
//! `docs/reference/crds.md`. `make crds` runs it.

use std::{fs, path::PathBuf};

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| root.join("crds/generated"));
    fs::create_dir_all(&out)?;
    let crds = nodepool_drivers::crds();
    for crd in &crds {
        let path = out.join(nodepool_crds::crd_file_name(crd));
        fs::write(&path, nodepool_crds::crd_yaml(crd))?;
        println!("wrote {}", path.display());
    }
    let reference = root.join("docs/reference/crds.md");
    fs::create_dir_all(reference.parent().expect("docs/reference"))?;
    fs::write(&reference, nodepool_crds::reference::markdown(&crds))?;
    println!("wrote {}", reference.display());
    Ok(())
}
