//! Changing an object's finalizers without clobbering anyone else's.

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::de::DeserializeOwned;

/// Replaces `object`'s finalizer list with `finalizers` if it is still the one we read (a
/// JSON-patch `test`, so unrelated writes such as status updates do not make this fail, while
/// a finalizer another controller added meanwhile does). `manager` is the field manager the
/// apiserver records for the list.
pub async fn replace<K>(api: &Api<K>, object: &K, finalizers: Vec<String>, manager: &str) -> kube::Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let current = object.finalizers();
    let operations = if current.is_empty() {
        serde_json::json!([{"op": "add", "path": "/metadata/finalizers", "value": finalizers}])
    } else {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "replace", "path": "/metadata/finalizers", "value": finalizers},
        ])
    };
    let patch: json_patch::Patch = serde_json::from_value(operations).expect("a valid JSON patch");
    let params = PatchParams { field_manager: Some(manager.to_owned()), ..Default::default() };
    api.patch(&object.name_any(), &params, &Patch::Json::<()>(patch)).await?;
    Ok(())
}
