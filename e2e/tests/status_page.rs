//! The operator's status page, rendered by a real browser (Debian's Chromium, headless) against a
//! running stack: the provider and its health, a label with its min-ready, and a request waiting
//! at its tenant's limit with the reason. A phone-sized screenshot is kept beside the stack's
//! logs as the test's artefact.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use kube::Api;
use nodepool_crds::{Label, NodeRequest, TenantLimit, conditions};
use nodepool_e2e::{stack::Stack, zuul::Zuul};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// Runs headless Chromium with the flags this machine's closed network needs.
fn chromium(profile: &Path, args: &[&str]) -> Result<std::process::Output> {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .context("running chromium (install it with e2e/scripts/install-deps.sh)")?;
    if !output.status.success() {
        bail!("chromium {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(output)
}

#[tokio::test]
async fn the_status_page_shows_providers_labels_and_why_requests_wait_in_a_real_browser() -> Result<()> {
    let stack = Stack::start("status-page").await?;
    stack.apply_provider(stack.static_provider("lab", 1)).await?;
    stack
        .apply::<Label>(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "Label",
            "metadata": {"name": "static-label"}, "spec": {"minReady": 1}}))
        .await?;
    stack
        .apply::<TenantLimit>(json!({"apiVersion": "nodepool.dev/v1alpha1", "kind": "TenantLimit",
            "metadata": {"name": "tenant-one"}, "spec": {"tenant": "tenant-one", "maxServers": 0}}))
        .await?;
    stack.wait_for_ready_nodes(2, WAIT).await?;

    // Zuul's tenant may hold no node: its request waits, and says so.
    let mut zuul = Zuul::connect(&stack).await?;
    let request = zuul.request(&["static-label"]).await?;
    let requests: Api<NodeRequest> = Api::namespaced(stack.client.clone(), &stack.namespace);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let waiting = requests.list(&Default::default()).await?.items.into_iter().any(|r| {
            r.spec.request_id == request
                && r.status.as_ref().is_some_and(|s| {
                    conditions::find(&s.conditions, conditions::types::WAITING)
                        .is_some_and(|c| c.status == "True" && c.reason == "TenantLimit")
                })
        });
        if waiting {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("request {request} never said it waits for its tenant's limit");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let url = format!("http://{}/", stack.operator_http);
    let profile = tempfile_dir(&stack, "chromium-profile")?;
    let dom = chromium(&profile, &["--dump-dom", &url])?;
    let dom = String::from_utf8(dom.stdout)?;
    for expected in
        ["<h2>Providers</h2>", "<td>lab</td>", "<td>static</td>", ">ready<", "<td>static-label</td>"]
    {
        assert!(dom.contains(expected), "the rendered page lacks {expected:?}:\n{dom}");
    }
    assert!(dom.contains(&format!("<td>{request}</td>")), "the waiting request is not listed:\n{dom}");
    // static-label: one slot ready (counted from the nodes), min-ready 1, none in use.
    let label_row = "<tr><td>static-label</td><td><span class=\"ok\">1</span></td><td>1</td><td>0</td>";
    assert!(dom.contains(label_row), "the label's counts are not current:\n{dom}");
    assert!(dom.contains("<b>TenantLimit</b>: tenant tenant-one is at its limit"), "no reason:\n{dom}");
    assert!(dom.contains("http-equiv=\"refresh\""), "the page does not refresh itself");

    // A phone-sized screenshot, kept with the stack's logs.
    let screenshot = stack.dir.join("status-page.png");
    let flag = format!("--screenshot={}", screenshot.display());
    chromium(&profile, &["--window-size=412,915", &flag, &url])?;
    let size = std::fs::metadata(&screenshot).with_context(|| format!("{}", screenshot.display()))?.len();
    assert!(size > 10_000, "the screenshot {} is only {size} bytes", screenshot.display());
    Ok(())
}

fn tempfile_dir(stack: &Stack, name: &str) -> Result<std::path::PathBuf> {
    let dir = stack.dir.join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
