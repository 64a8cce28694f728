//! Zuul 14.3.0's own unit tests, unmodified, against the operator and the bridge.
//!
//! `e2e/zuul/zuul_unit_tests.py` imports Zuul's test modules from its PyPI sdist and swaps
//! Zuul's `FakeNodepool` for a stand-in that, for each Zuul test, starts `nodepool-zk-bridge`
//! on that test's own random ZooKeeper chroot (`/test/<random>_<pid>_<test id>`, TLS) and
//! `nodepool-operator` in a fresh namespace, applies a static Provider serving
//! `ubuntu-xenial` with 4 slots on this test's sshd, waits until the 4 nodes are ready in
//! ZooKeeper, and pauses/unpauses the launcher by SIGSTOP/SIGCONT of both processes.
//! This test only provides the environment (apiserver, ZooKeeper, sshd, binaries) and
//! requires every selected Zuul test to pass.

use std::{path::Path, process::Output, time::Duration};

use anyhow::{Context, Result, bail};
use nodepool_e2e::{
    stack::{Stack, binary},
    tools,
};

/// Runs the Zuul unit tests `tests` (unittest names) with `extra` runner options; returns the
/// runner's output once it has finished.
async fn run_zuul_unit_tests(stack: &Stack, tests: &[&str], extra: &[&str]) -> Result<Output> {
    let script = tools::repo_root().join("e2e/zuul/zuul_unit_tests.py");
    let logs = stack.logs().join("zuul-unit-tests");
    let mut command = tokio::process::Command::new("python3");
    command
        .arg(&script)
        .arg("run")
        .arg("--testenv-json")
        .arg(stack.testenv_json()?)
        .arg("--operator")
        .arg(binary_or_env("nodepool-operator", "ZUUL_UNIT_TESTS_OPERATOR")?)
        .arg("--bridge")
        .arg(binary_or_env("nodepool-zk-bridge", "ZUUL_UNIT_TESTS_BRIDGE")?)
        .args(["--sshd-port", &stack.sshd.port.to_string()])
        .args(["--namespace-prefix", &stack.namespace])
        .arg("--logs")
        .arg(&logs)
        .arg("--results")
        .arg(logs.join("results.json"))
        .args(extra)
        .args(tests)
        .env("NODEPOOL_CACHE", tools::cache_dir())
        .kill_on_drop(true);
    // Generous: a from-scratch run installs Zuul and its test requirements into a venv first.
    tokio::time::timeout(Duration::from_secs(1800), command.output())
        .await
        .context("the Zuul unit tests did not finish within 30 minutes")?
        .with_context(|| format!("running {} (needs python3)", script.display()))
}

/// The workspace binary `name`, or the one `$var` names (to run Zuul's tests against another
/// build, e.g. an older commit's).
fn binary_or_env(name: &str, var: &str) -> Result<std::path::PathBuf> {
    match std::env::var_os(var) {
        Some(path) => Ok(path.into()),
        None => binary(name),
    }
}

/// `(passed, failed)` from the runner's last line, `N passed, N failed`.
fn summary(stdout: &str) -> Option<(usize, usize)> {
    let last = stdout.lines().rev().find(|line| !line.trim().is_empty())?;
    let (passed, failed) = last.split_once(" passed, ")?;
    Some((passed.trim().parse().ok()?, failed.strip_suffix(" failed")?.trim().parse().ok()?))
}

/// The status the runner printed for each test (`PASS <id> (<seconds> s)`, `FAIL ...`).
fn statuses(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|line| {
            let (status, rest) = line.split_once(' ')?;
            let id = rest.split_once(" (")?.0;
            ["PASS", "FAIL", "ERROR", "SKIP", "NOT-RUNNABLE"]
                .contains(&status)
                .then(|| (id.to_owned(), status.to_owned()))
        })
        .collect()
}

fn report(output: &Output, logs: &Path) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().collect();
    format!(
        "--- runner stdout ---\n{}\n--- runner stderr (last 60 lines) ---\n{}\n--- logs: {} ---",
        String::from_utf8_lossy(&output.stdout),
        tail[tail.len().saturating_sub(60)..].join("\n"),
        logs.display()
    )
}

/// Runs `tests` and requires each of `expected` to be reported and every test to pass.
async fn require_all_pass(stack: &Stack, tests: &[&str], expected: &[&str], extra: &[&str]) -> Result<()> {
    let output = run_zuul_unit_tests(stack, tests, extra).await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let report = report(&output, &stack.logs().join("zuul-unit-tests"));
    let Some((passed, failed)) = summary(&stdout) else {
        bail!("the runner printed no `N passed, N failed` line (exit {:?})\n{report}", output.status);
    };
    let statuses = statuses(&stdout);
    for test in expected {
        let status = statuses.iter().find(|(id, _)| id.ends_with(test)).map(|(_, status)| status.as_str());
        assert_eq!(status, Some("PASS"), "Zuul's {test} did not pass\n{report}");
    }
    assert_eq!(failed, 0, "{failed} of Zuul's unit tests failed\n{report}");
    assert_eq!(passed, statuses.len(), "not every selected test passed\n{report}");
    assert!(output.status.success(), "the runner exited with {:?}\n{report}", output.status);
    Ok(())
}

/// Zuul's `tests/unit/test_nodepool.py::TestNodepool`: a 2-node request is fulfilled and its
/// nodes go ready → in-use → used under Zuul's locks; a request made while the launcher is
/// paused is canceled cleanly; two requests made while paused are fulfilled in priority
/// order once it resumes.
#[tokio::test]
async fn zuuls_test_nodepool_passes_against_the_operator_and_the_bridge() -> Result<()> {
    let stack = Stack::prepare("zuul-unit").await?;
    require_all_pass(
        &stack,
        &["tests.unit.test_nodepool.TestNodepool"],
        &[
            "TestNodepool.test_node_request",
            "TestNodepool.test_node_request_canceled",
            "TestNodepool.test_node_request_priority",
        ],
        &["--labels", "ubuntu-xenial", "--slots", "4"],
    )
    .await
}

/// Zuul's scheduler-level tests that exercise node requests (priorities, relative priority,
/// pausing, reconfiguration with queued requests, autohold, semaphores, fail-fast) and use
/// nothing of FakeNodepool a real launcher cannot do truthfully. Each runs a whole Zuul
/// (`ZuulTestCase`: scheduler, executor, fake Gerrit) against its own operator and bridge.
///
/// Ignored by default: Zuul's harness needs MySQL (`mariadb-server`; the runner starts a
/// private instance on loopback), `bwrap` (`bubblewrap`) and the Ansible installations of
/// `zuul-manage-ansible` (`zuul_unit_tests.py install --ansible`, about 1.6 GB), which
/// `e2e/scripts/install-deps.sh` does not install.
#[tokio::test]
#[ignore = "needs mariadb-server, bubblewrap and `zuul_unit_tests.py install --ansible`"]
async fn zuuls_scheduler_node_request_tests_pass_against_the_operator_and_the_bridge() -> Result<()> {
    const SCHEDULER: &[&str] = &[
        "TestScheduler.test_jobs_executed",
        "TestScheduler.test_nodepool_pipeline_priority",
        "TestScheduler.test_nodepool_relative_priority_gate",
        "TestScheduler.test_nodepool_project_removal",
        "TestScheduler.test_nodepool_cleanup",
        "TestScheduler.test_live_reconfiguration_queued_node_requests",
        "TestScheduler.test_reconfigure_window_fixed_requests",
        "TestScheduler.test_autohold_padding",
        "TestScheduler.test_autohold_ignores_aborted_jobs",
        "TestScheduler.test_autohold_hold_expiration",
        "TestScheduler.test_autohold_list",
        "TestScheduler.test_autohold_info",
        "TestScheduler.test_autohold_delete",
        "TestScheduler.test_autohold_request_expiration",
        "TestScheduler.test_autohold_change",
        "TestScheduler.test_autohold_ref",
        "TestSemaphore.test_semaphore_one",
        "TestSemaphore.test_semaphore_resources_first",
        "TestSemaphore.test_semaphore_abandon_pending_node_request",
        "TestSemaphore.test_semaphore_abandon_pending_execution",
        "TestSchedulerFailFast.test_fail_fast",
        "TestSchedulerFailFast.test_fail_fast_no_cancel_completed",
        "TestSchedulerAutoholdHoldExpiration.test_autohold_max_hold_custom",
        "TestSchedulerAutoholdHoldExpiration.test_autohold_max_hold_custom_invalid",
        "TestSchedulerAutoholdHoldExpiration.test_autohold_max_hold_default",
    ];
    let mut names: Vec<String> = SCHEDULER.iter().map(|t| format!("tests.unit.test_scheduler.{t}")).collect();
    names.push("tests.unit.test_sos.TestScaleOutScheduler.test_nodepool_relative_priority_gate".into());
    names
        .push("tests.unit.test_v3.TestProvidesRequiresMysql.test_provides_requires_shared_queue_slow".into());
    let tests: Vec<&str> = names.iter().map(String::as_str).collect();
    let stack = Stack::prepare("zuul-unit-sched").await?;
    // Zuul's fixtures ask for many labels (FakeNodepool serves any): one static host serves them
    // all, with enough slots for the tests that hold several builds at once.
    let options = ["--mysql", "private", "--ansible", "--labels", "auto", "--slots", "10"];
    require_all_pass(&stack, &tests, &tests, &options).await
}

#[test]
fn the_runner_summary_is_parsed() {
    let stdout = "PASS tests.unit.test_nodepool.TestNodepool.test_node_request (7.1 s)\n\
                  FAIL tests.unit.test_nodepool.TestNodepool.test_node_request_priority (8.0 s)\n    \
                  Traceback ...\n\n  PASS x\n1 passed, 1 failed\n";
    assert_eq!(summary(stdout), Some((1, 1)));
    assert_eq!(
        statuses(stdout),
        vec![
            ("tests.unit.test_nodepool.TestNodepool.test_node_request".to_owned(), "PASS".to_owned()),
            (
                "tests.unit.test_nodepool.TestNodepool.test_node_request_priority".to_owned(),
                "FAIL".to_owned()
            ),
        ]
    );
}
