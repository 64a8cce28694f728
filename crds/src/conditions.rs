//! Helpers for `status.conditions` (the standard `metav1.Condition`).

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// Condition types used across kinds.
pub mod types {
    /// The object is usable: a Provider can launch, an Image is resolved.
    pub const READY: &str = "Ready";
    /// A NodeRequest is waiting; the reason says for what.
    pub const WAITING: &str = "Waiting";
    /// A cloud PoolNode's launch: `True` (`Ready`) or `False` (`LaunchFailed`, `Aborted`).
    pub const LAUNCHED: &str = "Launched";
}

/// Reasons the operator writes that other parts act on.
pub mod reasons {
    /// A cloud node's launch failed for good (its `Launched` condition).
    pub const LAUNCH_FAILED: &str = "LaunchFailed";
}

/// The reasons of a NodeRequest's `Waiting` condition: why it waits (`True`), or how it stopped
/// waiting (`False`). Written by the scheduler, read by people and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaitReason {
    /// Left to another launcher's pool (the preferred provider's, or one of better priority).
    OtherLauncher,
    /// The request's tenant is at its `TenantLimit`.
    TenantLimit,
    /// Every pool that serves the labels is paused or its provider is not Ready.
    ProvidersUnavailable,
    /// The pools that could launch it are at a limit (theirs, the provider's, the cloud's).
    AtQuota,
    /// The pools that serve it have no free node now.
    NoFreeNodes,
    /// Nodes are being launched for it.
    Launching,
    /// A hand-out none of whose nodes showed its allocation was undone; decided again.
    HandOutUndone,
    /// Handed out (`False`: no longer waiting).
    Fulfilled,
    /// Declined by every pool (`False`).
    Declined,
}

impl WaitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OtherLauncher => "OtherLauncher",
            Self::TenantLimit => "TenantLimit",
            Self::ProvidersUnavailable => "ProvidersUnavailable",
            Self::AtQuota => "AtQuota",
            Self::NoFreeNodes => "NoFreeNodes",
            Self::Launching => "Launching",
            Self::HandOutUndone => "HandOutUndone",
            Self::Fulfilled => "Fulfilled",
            Self::Declined => "Declined",
        }
    }
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds a condition stamped with `observed_generation` and the current time.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Inserts or replaces the condition of the same type. The transition time is kept when the status
/// did not change, as Kubernetes conventions ask, so it says when the status last flipped.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = new;
        }
        None => conditions.push(new),
    }
}

/// The condition of the given type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_transition_time_while_status_is_unchanged() {
        let mut conditions = vec![];
        let mut first = condition(types::READY, false, "BadCredentials", "secret missing", Some(1));
        first.last_transition_time = Time("2020-01-01T00:00:00Z".parse().unwrap());
        set_condition(&mut conditions, first);
        set_condition(&mut conditions, condition(types::READY, false, "BadCredentials", "still", Some(2)));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].message, "still");
        assert_eq!(conditions[0].last_transition_time.0.to_string(), "2020-01-01T00:00:00Z");

        set_condition(&mut conditions, condition(types::READY, true, "Ready", "ok", Some(3)));
        assert_ne!(conditions[0].last_transition_time.0.to_string(), "2020-01-01T00:00:00Z");
        assert_eq!(find(&conditions, types::READY).unwrap().status, "True");
    }
}
