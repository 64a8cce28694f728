//! The status page at `/`: providers with their health and quota use, labels with ready /
//! min-ready / in-use nodes, waiting requests and why they wait, and launch failures, from the
//! operator's caches. One self-contained HTML document (no script, style or font fetched from
//! anywhere), refreshing itself every few seconds, readable on a phone.

use std::fmt::Write as _;

use kube::ResourceExt;
use nodepool_crds::{
    Label, NodeRequest, NodeState, PoolNode, Provider,
    conditions::{self, types},
};

/// How often the page reloads itself, in seconds.
const REFRESH_SECONDS: u32 = 5;

/// What the page shows, as the caches hold it now.
pub struct Snapshot<'a> {
    pub namespace: &'a str,
    pub providers: Vec<&'a Provider>,
    pub labels: Vec<&'a Label>,
    pub requests: Vec<&'a NodeRequest>,
    pub nodes: Vec<&'a PoolNode>,
}

pub fn render(snapshot: &Snapshot) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>nodepool-operator: {ns}</title><style>{STYLE}</style></head><body>\
         <h1>nodepool-operator <small>{ns}</small></h1>",
        ns = escape(snapshot.namespace),
    );
    providers(&mut page, &snapshot.providers);
    labels(&mut page, &snapshot.labels, &snapshot.nodes);
    waiting(&mut page, &snapshot.requests);
    failures(&mut page, &snapshot.nodes);
    let _ = writeln!(
        page,
        "<footer>Refreshes every {REFRESH_SECONDS} s. Also: <a href=\"/node-list\">/node-list</a> <a href=\"/request-list\">/request-list</a> <a href=\"/label-list\">/label-list</a> <a href=\"/metrics\">/metrics</a></footer></body></html>"
    );
    page
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1rem;color:#222}\
h1 small{color:#666;font-weight:normal}h2{margin-top:1.5rem;font-size:1.1rem}\
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}\
.wrap{overflow-x:auto}.ok{color:#176f2c}.bad{color:#b00020}.muted{color:#666}footer{margin-top:2rem;color:#666;font-size:.8rem}";

fn providers(page: &mut String, providers: &[&Provider]) {
    section(page, "Providers", &["Provider", "Driver", "Ready", "Nodes", "Quota used"], providers.is_empty());
    for provider in providers {
        let status = provider.status.clone().unwrap_or_default();
        let ready = conditions::find(&status.conditions, types::READY);
        let health = match ready {
            Some(c) if c.status == "True" => {
                format!("<span class=\"ok\">ready</span> <span class=\"muted\">{}</span>", escape(&c.reason))
            }
            Some(c) => format!("<span class=\"bad\">{}</span>: {}", escape(&c.reason), escape(&c.message)),
            None => "<span class=\"muted\">not checked yet</span>".into(),
        };
        let nodes = status.nodes.map(|n| {
            let states: Vec<String> =
                n.by_state.iter().map(|(state, count)| format!("{count} {}", state.as_str())).collect();
            format!("{} ({})", n.total, states.join(", "))
        });
        let quota = status.quota.map(|q| {
            let limit = |value: Option<u64>| value.map(|v| format!(" of {v}")).unwrap_or_default();
            let limits = q.limits.unwrap_or_default();
            format!(
                "{} servers{}, {} cores{}, {} MiB{}",
                q.used.servers,
                limit(limits.max_servers.map(u64::from)),
                q.used.cores,
                limit(limits.max_cores.map(u64::from)),
                q.used.ram,
                limit(limits.max_ram)
            )
        });
        row(
            page,
            &[
                escape(&provider.name_any()),
                escape(provider.spec.driver.as_str()),
                health,
                escape(&nodes.unwrap_or_default()),
                escape(&quota.unwrap_or_default()),
            ],
        );
    }
    page.push_str("</tbody></table></div>");
}

fn labels(page: &mut String, labels: &[&Label], nodes: &[&PoolNode]) {
    section(page, "Labels", &["Label", "Ready", "Min ready", "In use", "Providers"], labels.is_empty());
    for label in labels {
        let name = label.name_any();
        let status = label.status.clone().unwrap_or_default();
        // Counted from the node cache, so the page is current (the Label's status is
        // refreshed every few seconds).
        let count = |state| crate::scheduler::views::count_in_state(nodes.iter().copied(), &name, state);
        let (ready, in_use) = (count(NodeState::Ready) as u32, count(NodeState::InUse));
        let short = ready < label.spec.min_ready;
        let ready = format!("<span class=\"{}\">{ready}</span>", if short { "bad" } else { "ok" });
        row(
            page,
            &[
                escape(&name),
                ready,
                label.spec.min_ready.to_string(),
                in_use.to_string(),
                escape(&status.providers.join(", ")),
            ],
        );
    }
    page.push_str("</tbody></table></div>");
}

fn waiting(page: &mut String, requests: &[&NodeRequest]) {
    let mut waiting: Vec<(&NodeRequest, &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition)> =
        requests
            .iter()
            .filter(|r| r.is_open() || r.is_pending())
            .filter_map(|r| {
                let status = r.status.as_ref()?;
                conditions::find(&status.conditions, types::WAITING)
                    .filter(|c| c.status == "True")
                    .map(|c| (*r, c))
            })
            .collect();
    waiting.sort_by(|a, b| a.0.spec.order().cmp(&b.0.spec.order()));
    section(page, "Waiting requests", &["Request", "Labels", "Tenant", "Why"], waiting.is_empty());
    for (request, condition) in waiting {
        row(
            page,
            &[
                escape(&request.spec.request_id),
                escape(&request.spec.labels.join(", ")),
                escape(request.spec.tenant.as_deref().unwrap_or("")),
                format!("<b>{}</b>: {}", escape(&condition.reason), escape(&condition.message)),
            ],
        );
    }
    page.push_str("</tbody></table></div>");
}

fn failures(page: &mut String, nodes: &[&PoolNode]) {
    let failed: Vec<(&PoolNode, &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition)> = nodes
        .iter()
        .filter_map(|n| {
            let status = n.status.as_ref()?;
            conditions::find(&status.conditions, types::LAUNCHED)
                .filter(|c| c.status == "False")
                .map(|c| (*n, c))
        })
        .collect();
    section(page, "Launch failures", &["Node", "Provider", "Label", "Why"], failed.is_empty());
    for (node, condition) in failed {
        row(
            page,
            &[
                escape(&node.name_any()),
                escape(&format!("{}/{}", node.spec.provider, node.spec.pool)),
                escape(&node.spec.labels.join(", ")),
                format!("<b>{}</b>: {}", escape(&condition.reason), escape(&condition.message)),
            ],
        );
    }
    page.push_str("</tbody></table></div>");
}

/// A section's heading and table head; `empty` says "none" instead of rows to come.
fn section(page: &mut String, title: &str, headers: &[&str], empty: bool) {
    let _ = write!(page, "<h2>{title}</h2><div class=\"wrap\"><table><thead><tr>");
    for header in headers {
        let _ = write!(page, "<th>{header}</th>");
    }
    page.push_str("</tr></thead><tbody>");
    if empty {
        let _ = write!(page, "<tr><td colspan=\"{}\" class=\"muted\">none</td></tr>", headers.len());
    }
}

/// One row of cells that are already HTML.
fn row(page: &mut String, cells: &[String]) {
    page.push_str("<tr>");
    for cell in cells {
        let _ = write!(page, "<td>{cell}</td>");
    }
    page.push_str("</tr>");
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_objects_is_escaped() {
        assert_eq!(escape("<b>\"x\" & y</b>"), "&lt;b&gt;&quot;x&quot; &amp; y&lt;/b&gt;");
        let page = render(&Snapshot {
            namespace: "<ns>",
            providers: vec![],
            labels: vec![],
            requests: vec![],
            nodes: vec![],
        });
        assert!(page.contains("&lt;ns&gt;") && !page.contains("<ns>"));
        assert!(!page.contains("http://") && !page.contains("https://"), "nothing is fetched from outside");
    }
}
