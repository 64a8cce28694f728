//! The JSON documents in ZooKeeper (zk-protocol.md §2), with Nodepool's defaults for missing keys.

use std::time::{SystemTime, UNIX_EPOCH};

use nodepool_crds::{NodeRequestState, NodeState};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, value::RawValue};

/// Seconds since the epoch as a float, like Python's `time.time()`.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// How much of a malformed document's problem is logged. serde's messages quote the offending
/// value: 10,000 malformed requests with 200 kB strings made 33 MB of log.
pub const LOGGED_EXCERPT: usize = 256;

/// At most [`LOGGED_EXCERPT`] bytes of `text`, for a log line.
pub fn log_excerpt(text: &str) -> String {
    excerpt(text, LOGGED_EXCERPT)
}

/// At most `limit` bytes of `text` (cut at a character boundary), saying how long it was.
pub fn excerpt(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

/// `/nodepool/requests/<id>`. Every one of the 13 keys is always written; `requestor_data` is kept
/// byte for byte (it carries 128-bit trace ids that a float would corrupt).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestDoc {
    pub state: NodeRequestState,
    #[serde(default)]
    pub state_time: f64,
    #[serde(default)]
    pub declined_by: Vec<String>,
    pub node_types: Vec<String>,
    #[serde(default)]
    pub nodes: Vec<String>,
    #[serde(default = "default_true")]
    pub reuse: bool,
    #[serde(default)]
    pub requestor: Option<String>,
    #[serde(default)]
    pub requestor_data: Option<Box<RawValue>>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub relative_priority: i64,
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default)]
    pub created_time: Option<f64>,
    #[serde(default)]
    pub tenant_name: Option<String>,
}

fn default_true() -> bool {
    true
}

impl RequestDoc {
    pub fn parse(data: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(data)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a request always serializes")
    }

    pub fn set_state(&mut self, state: NodeRequestState) {
        self.state = state;
        self.state_time = now();
    }
}

/// `/nodepool/nodes/<id>`: every key Nodepool writes, nulls included (Zuul indexes some directly).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeDoc {
    pub state: String,
    pub state_time: f64,
    pub created_time: f64,
    #[serde(rename = "type", deserialize_with = "string_or_list")]
    pub type_: Vec<String>,
    pub provider: Option<String>,
    pub pool: Option<String>,
    pub cloud: Option<String>,
    pub region: Option<String>,
    pub az: Option<String>,
    pub host_id: Option<String>,
    pub launcher: Option<String>,
    pub allocated_to: Option<String>,
    pub interface_ip: Option<String>,
    pub public_ipv4: Option<String>,
    pub private_ipv4: Option<String>,
    pub public_ipv6: Option<String>,
    pub hostname: Option<String>,
    pub connection_type: Option<String>,
    pub connection_port: Value,
    pub ssh_port: Value,
    pub username: Option<String>,
    pub python_path: Option<String>,
    pub shell_type: Option<String>,
    pub host_keys: Vec<String>,
    pub image_id: Option<String>,
    pub external_id: Value,
    pub attributes: Value,
    pub resources: Value,
    pub slot: Option<u32>,
    pub driver_data: Value,
    pub node_properties: Value,
    pub tenant_name: Option<String>,
    pub requestor: Option<String>,
    // Zuul's fields, carried over verbatim from the znode.
    pub user_data: Value,
    pub hold_job: Value,
    pub comment: Value,
    pub hold_expiration: Value,
}

/// `type` may be a bare string in old or fake records.
fn string_or_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(label) => vec![label],
        Value::Array(items) => items.into_iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    })
}

/// What Zuul writes to a node, read leniently from any node document.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ZuulFields {
    /// The node's state (`None` if missing or not one Nodepool knows).
    pub state: Option<NodeState>,
    pub allocated_to: Option<String>,
    pub user_data: Value,
    pub hold_job: Option<String>,
    pub comment: Option<String>,
    pub hold_expiration: Option<i64>,
    /// `driver_data.k8s.uid`: the PoolNode this znode mirrors, if we wrote it.
    pub pool_node_uid: Option<String>,
    /// `driver_data.k8s.namespace`: the namespace of that PoolNode (of the bridge that wrote it).
    pub namespace: Option<String>,
    /// `driver_data.k8s.registration`: which registration of the PoolNode (0 if not written).
    pub registration: u32,
}

impl ZuulFields {
    /// Reads a node document as loosely as Nodepool does; `None` for empty or non-object data.
    pub fn parse(data: &[u8]) -> Option<Self> {
        let Value::Object(doc) = serde_json::from_slice::<Value>(data).ok()? else { return None };
        let text = |key: &str| doc.get(key).and_then(Value::as_str).map(str::to_owned);
        let k8s = doc.get("driver_data").and_then(|d| d.get("k8s"));
        Some(ZuulFields {
            state: text("state").as_deref().and_then(NodeState::parse),
            allocated_to: text("allocated_to"),
            user_data: doc.get("user_data").cloned().unwrap_or(Value::Null),
            hold_job: text("hold_job"),
            comment: text("comment"),
            hold_expiration: doc.get("hold_expiration").and_then(hold_expiration),
            pool_node_uid: k8s.and_then(|k| k.get("uid")).and_then(Value::as_str).map(str::to_owned),
            namespace: k8s.and_then(|k| k.get("namespace")).and_then(Value::as_str).map(str::to_owned),
            registration: k8s
                .and_then(|k| k.get("registration"))
                .and_then(Value::as_u64)
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(0),
        })
    }
}

/// Nodepool coerces `hold_expiration` to int and falls back to 0 (no limit) when it cannot.
fn hold_expiration(value: &Value) -> Option<i64> {
    match value {
        Value::Null => None,
        Value::Number(n) => Some(n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).unwrap_or(0)),
        Value::String(s) => Some(s.trim().parse().unwrap_or(0)),
        _ => Some(0),
    }
}

/// `/nodepool/components/pool/<hostname><seq>`, written with sorted keys like Nodepool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolComponent {
    pub hostname: String,
    pub id: String,
    pub kind: String,
    pub model_api: u32,
    pub name: String,
    pub paused: bool,
    pub priority: i32,
    pub provider_name: String,
    pub state: String,
    pub supported_labels: Vec<String>,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requestor_data_round_trips_byte_for_byte() {
        let zuul = br#"{"requestor_data": {"build_set_uuid": "b1", "span_info": {"trace_id": 215843298479813297429837429834729834, "span_id": 1234567890123456789}}, "node_types": ["l", "l"], "requestor": "5f0c", "created_time": 1719912345.12, "provider": null, "state": "requested", "state_time": 1719912345.11, "relative_priority": 0, "event_id": "a3d", "tenant_name": "t1"}"#;
        let mut request = RequestDoc::parse(zuul).unwrap();
        assert!(request.reuse, "reuse defaults to true");
        assert!(request.nodes.is_empty() && request.declined_by.is_empty());
        request.set_state(NodeRequestState::Fulfilled);
        let written = String::from_utf8(request.to_bytes()).unwrap();
        assert!(written.contains(r#""trace_id": 215843298479813297429837429834729834"#), "{written}");
        let keys = serde_json::from_str::<serde_json::Map<String, Value>>(&written).unwrap();
        assert_eq!(keys.len(), 13, "all 13 request keys are written: {written}");
    }

    #[test]
    fn excerpts_are_bounded_and_say_the_size() {
        assert_eq!(excerpt("short", 10), "short");
        let long = "é".repeat(1000); // two bytes each: the cut must fall between characters
        let cut = excerpt(&long, 255);
        assert!(cut.len() < 300, "{}", cut.len());
        assert!(cut.ends_with("(2000 bytes in all)"), "{cut}");
    }

    #[test]
    fn zuul_fields_are_read_leniently() {
        let node = br#"{"state": "hold", "hold_expiration": "1", "hold_job": "t p j .*", "user_data": {"zuul_system": "x"}, "id": "0000000001", "driver_data": {"k8s": {"uid": "u-1"}}}"#;
        let fields = ZuulFields::parse(node).unwrap();
        assert_eq!(fields.state, Some(nodepool_crds::NodeState::Hold));
        assert_eq!(fields.hold_expiration, Some(1));
        assert_eq!(fields.pool_node_uid.as_deref(), Some("u-1"));
        assert_eq!(ZuulFields::parse(br#"{"hold_expiration": "soon"}"#).unwrap().hold_expiration, Some(0));
        assert_eq!(ZuulFields::parse(b""), None);
    }

    #[test]
    fn node_type_may_be_a_bare_string() {
        let mut doc = serde_json::to_value(NodeDoc::default()).unwrap();
        doc["type"] = Value::String("fake-label".into());
        let node: NodeDoc = serde_json::from_value(doc).unwrap();
        assert_eq!(node.type_, vec!["fake-label".to_owned()]);
    }
}
