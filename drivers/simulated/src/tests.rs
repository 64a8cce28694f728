//! The framework's state machines driven against the simulated cloud.

use std::{
    collections::BTreeSet,
    time::{Duration, SystemTime},
};

use nodepool_crds::{
    GoDuration,
    provider::{Pool, PoolLabel, ResourceLimits},
};
use nodepool_driver::{
    create::{self, LaunchResult, Next, Plan, Progress, Step},
    delete, leaks,
    tags::{self, TagContext},
};

use super::*;

fn label() -> PoolLabel {
    serde_json::from_value(serde_json::json!({"name": "sim", "instanceType": "medium"})).unwrap()
}

fn pool() -> Pool {
    serde_json::from_value(serde_json::json!({"name": "main", "labels": [{"name": "sim"}]})).unwrap()
}

fn cloud(key: &str, settings: SimulatedProvider) -> SimulatedCloud {
    SimulatedCloud::new(key, "sim", "test-system", settings)
}

fn plan(node: &str, retries: u32) -> Plan {
    let context = TagContext {
        system_id: "test-system".into(),
        provider: "sim".into(),
        pool: "main".into(),
        node: node.into(),
        label: "sim".into(),
        ..Default::default()
    };
    Plan {
        spec: InstanceSpec {
            token: String::new(),
            attempt: 1,
            node: node.into(),
            pool: pool(),
            label: label(),
            image_id: None,
            tags: tags::instance_tags(&label(), &context),
            first_try: false,
        },
        launch_retries: retries,
        boot_timeout: Duration::from_secs(60),
        launch_timeout: Duration::from_secs(3600),
        host_key_checking: false,
        ssh_port: 22,
        scan_timeout: Duration::from_secs(1),
        unsent_token: None,
    }
}

#[tokio::test]
async fn a_launch_without_latency_is_ready_at_once_and_deletes_cleanly() {
    let cloud = cloud("ready", SimulatedProvider::default());
    let mut progress = Progress::start(SystemTime::now());
    let Next::Ready { instance, host_keys } =
        create::advance(&cloud, &plan("n1", 3), &mut progress, SystemTime::now()).await
    else {
        panic!("not ready: {progress:?}")
    };
    assert!(host_keys.is_empty());
    assert_eq!(instance.node(), Some("n1"));
    assert_eq!(instance.tags[tags::SYSTEM_ID], "test-system");
    assert_eq!(cloud.live_instances(), 1);
    assert_eq!(delete::advance(&cloud, "n1", Some(&instance.id)).await, delete::Next::Gone);
    assert_eq!(cloud.live_instances(), 0);
}

#[tokio::test]
async fn failed_boots_are_retried_and_each_attempt_is_cleaned_up() {
    let settings = SimulatedProvider { failure_rate: Some(1.0), ..Default::default() };
    let cloud = cloud("failing", settings);
    let mut progress = Progress::start(SystemTime::now());
    let next = create::advance(&cloud, &plan("n1", 3), &mut progress, SystemTime::now()).await;
    let Next::Failed(message) = next else { panic!("expected a failure, got {next:?}") };
    assert!(message.starts_with("3 attempt(s) failed"), "{message}");
    assert!(message.contains("simulated boot failure"), "{message}");
    assert_eq!(progress.attempt, 3);
    assert_eq!(progress.failure, Some(LaunchResult::Status));
    assert_eq!(cloud.live_instances(), 0, "every failed attempt's instance is deleted");
}

#[tokio::test]
async fn over_quota_aborts_instead_of_failing() {
    let quota = ResourceLimits { max_servers: Some(1), ..Default::default() };
    let cloud = cloud("quota", SimulatedProvider { quota: Some(quota), ..Default::default() });
    let mut first = Progress::start(SystemTime::now());
    assert!(matches!(
        create::advance(&cloud, &plan("n1", 3), &mut first, SystemTime::now()).await,
        Next::Ready { .. }
    ));
    let mut second = Progress::start(SystemTime::now());
    let next = create::advance(&cloud, &plan("n2", 3), &mut second, SystemTime::now()).await;
    assert!(matches!(&next, Next::Aborted(message) if message.contains("quota")), "{next:?}");
    assert_eq!(second.failure.map(LaunchResult::as_str), Some("error.quota"));
    assert_eq!(first.failure, None);
    assert_eq!(cloud.live_instances(), 1);
}

#[tokio::test]
async fn repeating_a_step_after_a_crash_does_not_duplicate_the_instance() {
    let settings =
        SimulatedProvider { launch_latency: Some(GoDuration::from_secs(30)), ..Default::default() };
    let cloud = cloud("resume", settings);
    let stored = Progress::start(SystemTime::now());
    // The operator created the instance but died before storing the progress...
    let mut lost = stored.clone();
    assert!(matches!(
        create::advance(&cloud, &plan("n1", 3), &mut lost, SystemTime::now()).await,
        Next::Wait(_)
    ));
    assert_eq!(lost.step, Step::WaitRunning);
    // ...so the restarted one starts again from the stored state.
    let mut resumed = Progress::from_status(&stored.to_status()).expect("progress round-trips");
    assert!(matches!(
        create::advance(&cloud, &plan("n1", 3), &mut resumed, SystemTime::now()).await,
        Next::Wait(_)
    ));
    assert_eq!(resumed.instance_id, lost.instance_id);
    assert_eq!(cloud.live_instances(), 1);
}

#[tokio::test]
async fn a_boot_timeout_fails_the_attempt_and_deletes_its_instance() {
    let settings =
        SimulatedProvider { launch_latency: Some(GoDuration::from_secs(30)), ..Default::default() };
    let cloud = cloud("boot-timeout", settings);
    let mut plan = plan("n1", 1);
    plan.boot_timeout = Duration::from_secs(5);
    let start = SystemTime::now();
    let mut progress = Progress::start(start);
    assert!(matches!(create::advance(&cloud, &plan, &mut progress, start).await, Next::Wait(_)));
    let later = start + Duration::from_secs(6);
    let next = create::advance(&cloud, &plan, &mut progress, later).await;
    // The instance is stopping (deletion takes half the latency here), so the attempt waits
    // in clean-up before failing.
    assert!(matches!(next, Next::Wait(_)), "{next:?}");
    assert_eq!(progress.step, Step::CleanUp);
    assert!(progress.last_error.as_deref().unwrap_or_default().contains("boot timeout"));
    // The cause survives the round trip through the node's status, for the final result.
    let stored = Progress::from_status(&progress.to_status()).expect("progress round-trips");
    assert_eq!(stored.failure.map(LaunchResult::as_str), Some("error.servercreatetimeout"));
    assert_eq!(cloud.live_instances(), 0);
}

#[tokio::test]
async fn a_launch_past_its_launch_timeout_fails() {
    let settings =
        SimulatedProvider { launch_latency: Some(GoDuration::from_secs(30)), ..Default::default() };
    let cloud = cloud("launch-timeout", settings);
    let mut plan = plan("n1", 3);
    plan.launch_timeout = Duration::from_secs(10);
    let start = SystemTime::now();
    let mut progress = Progress::start(start);
    assert!(matches!(create::advance(&cloud, &plan, &mut progress, start).await, Next::Wait(_)));
    let next = create::advance(&cloud, &plan, &mut progress, start + Duration::from_secs(11)).await;
    assert!(matches!(&next, Next::Failed(message) if message.contains("launch timeout")), "{next:?}");
    // The instance is the delete state machine's to remove, found by its recorded id or its tag.
    assert_eq!(delete::advance(&cloud, "n1", None).await, delete::Next::Wait(delete::POLL));
    assert_eq!(cloud.live_instances(), 0);
}

#[tokio::test]
async fn leaked_instances_go_on_the_second_pass_and_owned_ones_never() {
    let cloud = cloud("leaks", SimulatedProvider::default());
    for node in ["kept", "leaked"] {
        let mut progress = Progress::start(SystemTime::now());
        assert!(matches!(
            create::advance(&cloud, &plan(node, 1), &mut progress, SystemTime::now()).await,
            Next::Ready { .. }
        ));
    }
    // An instance of another installation in the same account is never touched.
    let other = SimulatedCloud::new("leaks", "sim", "other-system", SimulatedProvider::default());
    let mut foreign_plan = plan("foreign", 1);
    foreign_plan.spec.tags.insert(tags::SYSTEM_ID.into(), "other-system".into());
    let mut progress = Progress::start(SystemTime::now());
    assert!(matches!(
        create::advance(&other, &foreign_plan, &mut progress, SystemTime::now()).await,
        Next::Ready { .. }
    ));

    let known = leaks::Owners { nodes: ["kept".to_owned()].into(), ..Default::default() };
    let first = leaks::pass(&cloud, &known, &BTreeSet::new()).await.unwrap();
    assert_eq!(first.suspected.len(), 1);
    assert!(first.deleted.is_empty());
    assert_eq!(cloud.live_instances(), 3);
    let second = leaks::pass(&cloud, &known, &first.suspected).await.unwrap();
    assert_eq!(second.deleted.len(), 1);
    assert_eq!(second.deleted[0].owner, Some(nodepool_driver::Owner::Node("leaked".into())));
    assert_eq!(cloud.live_instances(), 2);
}
