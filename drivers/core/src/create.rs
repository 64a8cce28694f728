//! The create state machine: one node, attempt by attempt.
//!
//! ```text
//!   create ──▶ wait-running ──▶ scan-keys ──▶ ready
//!     │             │               │
//!     └─────────────┴───────────────┴──▶ clean-up (delete this attempt's instance, wait gone)
//!                                            └──▶ create (next attempt) | failed (no attempts left)
//! ```
//!
//! [`advance`] takes as many steps as it can without waiting and returns what the caller should
//! do next. The [`Progress`] it works on is stored by the operator in the node's status after
//! every call; creating is idempotent per attempt token, so repeating a step after a crash never
//! creates a second instance.

use std::time::{Duration, SystemTime};

use nodepool_crds::pool_node::LaunchProgress;

use crate::cloud::{Cloud, Instance, InstanceSpec, InstanceState};

pub use nodepool_crds::pool_node::{LaunchResult, LaunchStep as Step};

#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// From 1.
    pub attempt: u32,
    pub step: Step,
    /// When this attempt started (boot timeout).
    pub attempt_started: SystemTime,
    /// When the first attempt started (launch timeout).
    pub launch_started: SystemTime,
    /// This attempt's instance, once the cloud gave it an id.
    pub instance_id: Option<String>,
    pub last_error: Option<String>,
    /// What ended the last failed attempt (the result of the launch if it fails).
    pub failure: Option<LaunchResult>,
}

impl Progress {
    pub fn start(now: SystemTime) -> Self {
        Self {
            attempt: 1,
            step: Step::Create,
            attempt_started: now,
            launch_started: now,
            instance_id: None,
            last_error: None,
            failure: None,
        }
    }

    /// Reads the progress stored in a node's status; `None` if there is none or it is unreadable.
    /// Progress written before the typed fields (in `driverData`) is still read.
    pub fn from_status(stored: &LaunchProgress) -> Option<Self> {
        let legacy = stored.driver_data.as_ref();
        let legacy_time =
            |key: &str| legacy.and_then(|d| d.get(key)).and_then(|v| v.as_f64()).map(|s| (s * 1000.0) as i64);
        let time = |millis: i64| SystemTime::UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64);
        Some(Self {
            attempt: stored.attempt.max(1),
            step: stored.step,
            attempt_started: time(stored.attempt_started_ms.or_else(|| legacy_time("attemptStarted"))?),
            launch_started: time(stored.launch_started_ms.or_else(|| legacy_time("launchStarted"))?),
            instance_id: stored.instance_id.clone().or_else(|| {
                legacy.and_then(|d| d.get("instanceId")).and_then(|v| v.as_str()).map(str::to_owned)
            }),
            last_error: stored.last_error.clone(),
            failure: stored.failure.or_else(|| {
                let text = legacy.and_then(|d| d.get("failure")).and_then(|v| v.as_str())?;
                LaunchResult::ALL.into_iter().find(|r| r.as_str() == text)
            }),
        })
    }

    /// The form stored in the node's status.
    pub fn to_status(&self) -> LaunchProgress {
        let millis =
            |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        LaunchProgress {
            attempt: self.attempt,
            step: self.step,
            // Whole seconds, as the apiserver stores a Time: the value read back compares equal.
            started_at: k8s_openapi::jiff::Timestamp::from_second(millis(self.attempt_started) / 1000)
                .ok()
                .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
            attempt_started_ms: Some(millis(self.attempt_started)),
            launch_started_ms: Some(millis(self.launch_started)),
            instance_id: self.instance_id.clone(),
            failure: self.failure,
            last_error: self.last_error.clone(),
            driver_data: None,
        }
    }

    /// The idempotency token (and instance name) of this attempt.
    pub fn token(&self, node: &str) -> String {
        format!("{node}-a{}", self.attempt)
    }
}

/// Everything about a launch that does not change between attempts.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The instance to create; `token` is replaced per attempt.
    pub spec: InstanceSpec,
    pub launch_retries: u32,
    pub boot_timeout: Duration,
    pub launch_timeout: Duration,
    /// Scan SSH host keys before the node is ready: the pool's `hostKeyChecking`, for nodes
    /// reached over SSH.
    pub host_key_checking: bool,
    pub ssh_port: u16,
    /// How long one key scan may take.
    pub scan_timeout: Duration,
    /// The token of a create the caller knows was never sent (a node its own process created,
    /// on its first try); that create is sent with [`InstanceSpec::first_try`] set.
    pub unsent_token: Option<String>,
}

/// What the caller should do after [`advance`].
#[derive(Debug)]
pub enum Next {
    /// Store the progress and call again after this long.
    Wait(Duration),
    /// The node is ready.
    Ready { instance: Box<Instance>, host_keys: Vec<String> },
    /// No attempts or time left; the node has failed. Its instance (if any) still has to be
    /// deleted by the delete state machine.
    Failed(String),
    /// The cloud is out of quota or capacity: the node is aborted and the pool should pause.
    Aborted(String),
}

/// How often a pending instance is looked at.
pub const POLL: Duration = Duration::from_secs(1);
/// Retrying a call the cloud refused for a passing reason.
pub const RETRY: Duration = Duration::from_secs(5);
/// Steps taken in one call at most, so one launch never holds a worker for long.
const MAX_STEPS: usize = 16;

/// Returns from `advance` with the outcome of a failed attempt, or carries on stepping.
/// Takes the launch as far as it goes without waiting.
pub async fn advance(cloud: &dyn Cloud, plan: &Plan, progress: &mut Progress, now: SystemTime) -> Next {
    for _ in 0..MAX_STEPS {
        if elapsed(progress.launch_started, now) > plan.launch_timeout && progress.step != Step::CleanUp {
            let message = format!("launch timeout ({:?}) reached", plan.launch_timeout);
            progress.last_error = Some(message.clone());
            progress.failure = Some(LaunchResult::ServerCreateTimeout);
            return Next::Failed(message);
        }
        let next = match progress.step {
            Step::Create => create(cloud, plan, progress, now).await,
            Step::WaitRunning => wait_running(cloud, plan, progress, now).await,
            Step::ScanKeys => scan_keys(cloud, plan, progress, now).await,
            Step::CleanUp => clean_up(cloud, plan, progress, now).await,
        };
        if let Some(next) = next {
            return next;
        }
    }
    Next::Wait(Duration::ZERO)
}

// Each step returns what the caller should do next, or `None` to take the next step now.

/// Asks the cloud for this attempt's instance (idempotent per attempt token).
async fn create(cloud: &dyn Cloud, plan: &Plan, progress: &mut Progress, now: SystemTime) -> Option<Next> {
    let node = &plan.spec.node;
    let mut spec = plan.spec.clone();
    spec.token = progress.token(node);
    spec.attempt = progress.attempt;
    spec.first_try = plan.unsent_token.as_deref() == Some(spec.token.as_str());
    match cloud.create(&spec).await {
        Ok(instance) => {
            tracing::info!(node = %node, instance = %instance.id, attempt = progress.attempt, "instance requested");
            progress.instance_id = Some(instance.id.clone());
            progress.step = Step::WaitRunning;
            if instance.state == InstanceState::Pending {
                return Some(Next::Wait(POLL));
            }
        }
        Err(error) if error.is_quota() => {
            progress.last_error = Some(error.to_string());
            progress.failure = Some(match error {
                crate::CloudError::Quota(_) => LaunchResult::Quota,
                _ => LaunchResult::Capacity,
            });
            return Some(Next::Aborted(error.to_string()));
        }
        Err(error) if error.is_transient() => {
            tracing::warn!(node = %node, %error, "creating the instance failed; retrying");
            progress.last_error = Some(error.to_string());
            return Some(Next::Wait(RETRY));
        }
        Err(error) => return fail_attempt(progress, plan, LaunchResult::Unknown, error.to_string(), now),
    }
    None
}

/// Waits for the instance to run and have an address; fails the attempt on an error state, a refusal, or the boot timeout.
async fn wait_running(
    cloud: &dyn Cloud,
    plan: &Plan,
    progress: &mut Progress,
    now: SystemTime,
) -> Option<Next> {
    let Some(id) = progress.instance_id.clone() else {
        progress.step = Step::Create;
        return None;
    };
    match cloud.get(&id).await {
        Ok(Some(instance)) if instance.state == InstanceState::Running => {
            // A machine needs an address; a node the driver describes (a namespace) may have none.
            if instance.interface_ip.is_none() && instance.access.is_none() {
                return fail_attempt(
                    progress,
                    plan,
                    LaunchResult::IpAdd,
                    format!("instance {id} has no address"),
                    now,
                );
            }
            // Host keys are an SSH machine's; a node the driver describes has none.
            if !plan.host_key_checking || instance.access.is_some() {
                return Some(Next::Ready { instance: Box::new(instance), host_keys: Vec::new() });
            }
            progress.step = Step::ScanKeys;
        }
        Ok(Some(Instance { state: InstanceState::Refused(reason), .. })) => {
            progress.last_error = Some(reason.clone());
            progress.failure = Some(LaunchResult::of_refusal(&reason));
            return Some(Next::Aborted(reason));
        }
        Ok(Some(Instance { state: InstanceState::Failed(reason), .. })) => {
            return fail_attempt(
                progress,
                plan,
                LaunchResult::Status,
                format!("instance {id} failed: {reason}"),
                now,
            );
        }
        Ok(Some(Instance { state: InstanceState::Pending, .. })) => {
            if elapsed(progress.attempt_started, now) > plan.boot_timeout {
                let message =
                    format!("instance {id} not running after boot timeout ({:?})", plan.boot_timeout);
                return fail_attempt(progress, plan, LaunchResult::ServerCreateTimeout, message, now);
            }
            return Some(Next::Wait(POLL));
        }
        Ok(_) => {
            return fail_attempt(
                progress,
                plan,
                LaunchResult::Status,
                format!("instance {id} disappeared"),
                now,
            );
        }
        Err(error) => {
            progress.last_error = Some(error.to_string());
            return Some(Next::Wait(RETRY));
        }
    }
    None
}

/// Reads the running instance's SSH host keys, within the boot timeout.
async fn scan_keys(cloud: &dyn Cloud, plan: &Plan, progress: &mut Progress, now: SystemTime) -> Option<Next> {
    let Some(id) = progress.instance_id.clone() else {
        progress.step = Step::Create;
        return None;
    };
    let instance = match cloud.get(&id).await {
        Ok(Some(instance)) if instance.state == InstanceState::Running => instance,
        Ok(_) => {
            return fail_attempt(
                progress,
                plan,
                LaunchResult::Status,
                format!("instance {id} stopped running"),
                now,
            );
        }
        Err(error) => {
            progress.last_error = Some(error.to_string());
            return Some(Next::Wait(RETRY));
        }
    };
    let address = instance.interface_ip.clone().unwrap_or_default();
    match crate::keyscan::scan_host_keys(&address, plan.ssh_port, plan.scan_timeout).await {
        Ok(host_keys) => Some(Next::Ready { instance: Box::new(instance), host_keys }),
        Err(error) if elapsed(progress.attempt_started, now) > plan.boot_timeout => {
            let message = format!("no SSH host keys from {address} within the boot timeout: {error}");
            fail_attempt(progress, plan, LaunchResult::Keyscan, message, now)
        }
        Err(error) => {
            progress.last_error = Some(error.to_string());
            Some(Next::Wait(POLL))
        }
    }
}

/// Deletes a failed attempt's instance and waits until it is gone, then starts the next attempt (or fails the launch when none is left).
async fn clean_up(cloud: &dyn Cloud, plan: &Plan, progress: &mut Progress, now: SystemTime) -> Option<Next> {
    let node = &plan.spec.node;
    let Some(id) = progress.instance_id.clone() else {
        next_attempt(progress, now);
        return None;
    };
    match crate::delete::delete_and_check(cloud, &id).await {
        Ok(true) => {
            tracing::info!(node = %node, instance = %id, "failed attempt cleaned up");
            if progress.attempt >= plan.launch_retries {
                let message = progress.last_error.clone().unwrap_or_else(|| "launch failed".into());
                return Some(Next::Failed(format!(
                    "{} attempt(s) failed; last: {message}",
                    progress.attempt
                )));
            }
            next_attempt(progress, now);
        }
        Ok(false) => return Some(Next::Wait(POLL)),
        Err(error) => {
            tracing::warn!(node = %node, instance = %id, %error, "cleaning up a failed attempt failed; retrying");
            return Some(Next::Wait(RETRY));
        }
    }
    None
}

fn elapsed(since: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or_default()
}

/// Ends this attempt: its instance is cleaned up before the next one starts (or, with no
/// instance, the next one starts at once). `None`: carry on stepping.
fn fail_attempt(
    progress: &mut Progress,
    plan: &Plan,
    result: LaunchResult,
    message: String,
    now: SystemTime,
) -> Option<Next> {
    tracing::warn!(node = %plan.spec.node, attempt = progress.attempt, result = result.as_str(), error = %message, "launch attempt failed");
    progress.last_error = Some(message.clone());
    progress.failure = Some(result);
    if progress.instance_id.is_some() {
        progress.step = Step::CleanUp;
        return None;
    }
    if progress.attempt >= plan.launch_retries {
        return Some(Next::Failed(format!("{} attempt(s) failed; last: {message}", progress.attempt)));
    }
    next_attempt(progress, now);
    None
}

fn next_attempt(progress: &mut Progress, now: SystemTime) {
    progress.attempt += 1;
    progress.step = Step::Create;
    progress.attempt_started = now;
    progress.instance_id = None;
}
