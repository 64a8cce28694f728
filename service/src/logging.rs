//! Log output: `RUST_LOG` picks what is logged (default `info`), `json` picks the format; and
//! the spans that put a request's and a node's ids on every line logged while working on them.

use kube::ResourceExt;
use nodepool_crds::{NodeRequest, PoolNode};
use tracing::{Span, field::Empty};

/// Installs the global `tracing` subscriber, writing to stderr.
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colour only on a terminal: in a file or a pipe the escape codes are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        // One JSON object per line, span fields (request and node ids) flattened into it.
        builder.json().flatten_event(true).with_current_span(true).init()
    } else {
        builder.init()
    }
}

/// The span for work on one PoolNode: its name, and the znode id and request it stands for, as
/// far as they are known.
pub fn node_span(node: &PoolNode) -> Span {
    let span = tracing::info_span!("node", node = %node.name_any(), node_id = Empty, request = Empty);
    let status = node.status.as_ref();
    if let Some(id) = status.and_then(|s| s.zookeeper.as_ref()).and_then(|z| z.node_id.as_deref()) {
        span.record("node_id", id);
    }
    if let Some(request) = status.and_then(|s| s.allocated_to.as_deref()) {
        span.record("request", request);
    }
    span
}

/// The span for work on one NodeRequest: Zuul's request id.
pub fn request_span(request: &NodeRequest) -> Span {
    tracing::info_span!("request", request = %request.spec.request_id)
}
