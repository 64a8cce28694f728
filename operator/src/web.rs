//! Nodepool's web endpoints, served from the operator's caches (no apiserver read per page):
//! `/node-list`, `/request-list`, `/label-list`, `/image-list`, `/dib-image-list` and `/ready`;
//! and the status page for people at `/`.
//! A plain-text table by default, JSON with `Accept: application/json` or a `.json` suffix, and
//! Nodepool's query parameters `fields=` (columns by JSON key) and, on `/node-list`, `node_id=`.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use kube::runtime::reflector::Store;
use nodepool_crds::{Image, Label, NodeRequest, PoolNode, Provider};
use nodepool_service::{
    listing,
    table::{Output, Table},
};

/// The caches the pages are made from, set once the operator's caches exist.
#[derive(Default)]
pub struct Listings(OnceLock<Stores>);

pub struct Stores {
    pub namespace: String,
    pub providers: Store<Provider>,
    pub nodes: Store<PoolNode>,
    pub requests: Store<NodeRequest>,
    pub labels: Store<Label>,
    pub images: Store<Image>,
}

impl Listings {
    pub fn observe(&self, stores: Stores) {
        let _ = self.0.set(stores);
    }
}

/// The routes, to serve beside `/metrics` and the probes.
pub fn router(listings: Arc<Listings>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/ready", get(ready))
        .route("/{page}", get(page))
        .with_state(listings)
}

async fn ready(State(listings): State<Arc<Listings>>) -> Response {
    match listings.0.get() {
        Some(_) => (StatusCode::OK, "OK\n").into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response(),
    }
}

/// The status page for people (`crate::status_page`).
async fn status_page(State(listings): State<Arc<Listings>>) -> Response {
    let Some(stores) = listings.0.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response();
    };
    let (providers, labels, requests, nodes) =
        (stores.providers.state(), stores.labels.state(), stores.requests.state(), stores.nodes.state());
    let snapshot = crate::status_page::Snapshot {
        namespace: &stores.namespace,
        providers: providers.iter().map(|p| p.as_ref()).collect(),
        labels: labels.iter().map(|l| l.as_ref()).collect(),
        requests: requests.iter().map(|r| r.as_ref()).collect(),
        nodes: nodes.iter().map(|n| n.as_ref()).collect(),
    };
    let body = crate::status_page::render(&snapshot);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

async fn page(
    State(listings): State<Arc<Listings>>,
    Path(page): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let query = query_parameters(&uri);
    let (name, json_suffix) = match page.strip_suffix(".json") {
        Some(name) => (name, true),
        None => (page.as_str(), false),
    };
    let Some(stores) = listings.0.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response();
    };
    let mut table = match name {
        "node-list" => listing::nodes(stores.nodes.state().iter().map(|n| n.as_ref()), true),
        "request-list" => listing::requests(stores.requests.state().iter().map(|r| r.as_ref())),
        "label-list" => listing::labels(stores.labels.state().iter().map(|l| l.as_ref())),
        "image-list" => listing::images(stores.images.state().iter().map(|i| i.as_ref())),
        // Nodepool's diskimage builds; this project boots cloud images it does not build.
        "dib-image-list" => Table::new(&["ID", "Image", "Builder", "Formats", "State", "Age"]),
        _ => return (StatusCode::NOT_FOUND, format!("no page {page:?}\n")).into_response(),
    };
    if let Some(id) = query.get("node_id").filter(|_| name == "node-list") {
        table = table.filter("id", id);
    }
    if let Some(fields) = query.get("fields") {
        table = table.select(&fields.split(',').map(str::trim).collect::<Vec<_>>());
    }
    let json = json_suffix
        || headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|accept| accept.contains("application/json"));
    let (output, content_type) = match json {
        true => (Output::Json, "application/json"),
        false => (Output::Table, "text/plain; charset=utf-8"),
    };
    match table.render(output) {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}

/// `?fields=id,state&node_id=0000000001` as a map (values are ids and column names: no escapes
/// beyond `%2C` for a comma are expected; others are kept as written).
fn query_parameters(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .into_iter()
        .flat_map(|query| query.split('&'))
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.replace("%2C", ",").replace("%2c", ",")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_read_as_nodepool_writes_them() {
        let uri: Uri = "/node-list?fields=id,state&node_id=0000000001".parse().unwrap();
        let query = query_parameters(&uri);
        assert_eq!(query["fields"], "id,state");
        assert_eq!(query["node_id"], "0000000001");
        let escaped: Uri = "/node-list?fields=id%2Cstate".parse().unwrap();
        assert_eq!(query_parameters(&escaped)["fields"], "id,state");
    }
}
