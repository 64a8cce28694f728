//! Log output: `RUST_LOG` picks what is logged (default `info`), `json` picks the format.

/// Installs the global `tracing` subscriber, writing to stderr.
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        // One JSON object per line, span fields (request and node ids) flattened into it.
        builder.json().flatten_event(true).with_current_span(true).init()
    } else {
        builder.init()
    }
}
