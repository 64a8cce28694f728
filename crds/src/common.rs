//! Small types shared by several kinds.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A duration written like Go's `time.Duration` and Kubernetes' `metav1.Duration`, restricted to
/// whole numbers: `90s`, `10m`, `1h30m`, `500ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GoDuration(pub Duration);

/// The pattern the apiserver checks, so a bad duration is refused at apply time.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: use whole numbers with units ms, s, m or h, e.g. \"90s\" or \"1h30m\"")]
pub struct InvalidDuration(String);

impl GoDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
}

impl FromStr for GoDuration {
    type Err = InvalidDuration;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidDuration(text.to_owned());
        let mut rest = text;
        let mut total = Duration::ZERO;
        if rest.is_empty() {
            return Err(invalid());
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
            if digits == 0 {
                return Err(invalid());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            rest = &rest[digits..];
            let (unit, millis) = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)]
                .into_iter()
                .find(|(unit, _)| rest.starts_with(unit) && !(*unit == "m" && rest.starts_with("ms")))
                .ok_or_else(invalid)?;
            rest = &rest[unit.len()..];
            let part = number.checked_mul(millis).ok_or_else(invalid)?;
            total = total.checked_add(Duration::from_millis(part)).ok_or_else(invalid)?;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        let (hours, rest) = (millis / 3_600_000, millis % 3_600_000);
        let (minutes, rest) = (rest / 60_000, rest % 60_000);
        let (seconds, millis) = (rest / 1_000, rest % 1_000);
        for (value, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")] {
            if value > 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

impl TryFrom<String> for GoDuration {
    type Error = InvalidDuration;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<GoDuration> for String {
    fn from(duration: GoDuration) -> Self {
        duration.to_string()
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

/// A key in a Secret in the same namespace as the object that refers to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key within the Secret; when unset the driver reads its documented default keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// How Zuul's executor connects to a node (`ansible_connection`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConnectionType {
    #[default]
    #[serde(rename = "ssh")]
    Ssh,
    #[serde(rename = "winrm")]
    Winrm,
    #[serde(rename = "network_cli")]
    NetworkCli,
    // A pod, reached with `kubectl exec` (Nodepool's Kubernetes and OpenShift pod labels). Plain
    // comments, not doc comments: documented variants turn the schema's `enum` into a `oneOf`.
    #[serde(rename = "kubectl")]
    Kubectl,
    // A Kubernetes namespace the job gets credentials for.
    #[serde(rename = "namespace")]
    Namespace,
    // An OpenShift project the job gets credentials for.
    #[serde(rename = "project")]
    Project,
}

impl ConnectionType {
    /// The string written to the node's `connection_type` in ZooKeeper.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ssh => "ssh",
            Self::Winrm => "winrm",
            Self::NetworkCli => "network_cli",
            Self::Kubectl => "kubectl",
            Self::Namespace => "namespace",
            Self::Project => "project",
        }
    }

    /// Whether the node is a machine Zuul logs in to over SSH, so its host keys can be scanned.
    pub fn is_ssh(self) -> bool {
        self == Self::Ssh
    }
}

/// How to log in to a node; each field falls back to Nodepool's default when unset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSettings {
    /// Login user (`ansible_user`). Default `zuul`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Default `ssh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_type: Option<ConnectionType>,
    /// SSH or WinRM port. Default 22.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub connection_port: Option<u16>,
    /// `ansible_python_interpreter`. Default `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_path: Option<String>,
    /// `ansible_shell_type`, e.g. `sh`, `cmd` or `powershell`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell_type: Option<String>,
}

impl ConnectionSettings {
    /// Nodepool's defaults: user `zuul` over SSH on port 22, Python found by Ansible.
    pub fn nodepool_defaults() -> Self {
        Self {
            username: Some("zuul".into()),
            connection_type: Some(ConnectionType::Ssh),
            connection_port: Some(22),
            python_path: Some("auto".into()),
            shell_type: None,
        }
    }

    /// These settings with every unset field at Nodepool's default.
    pub fn with_defaults(&self) -> Self {
        self.or(&Self::nodepool_defaults())
    }

    /// Fills every unset field from `fallback` (for example a host's settings over its image's).
    pub fn or(&self, fallback: &ConnectionSettings) -> ConnectionSettings {
        ConnectionSettings {
            username: self.username.clone().or_else(|| fallback.username.clone()),
            connection_type: self.connection_type.or(fallback.connection_type),
            connection_port: self.connection_port.or(fallback.connection_port),
            python_path: self.python_path.clone().or_else(|| fallback.python_path.clone()),
            shell_type: self.shell_type.clone().or_else(|| fallback.shell_type.clone()),
        }
    }
}

/// A free-form JSON object (for example Nodepool's `node-attributes`), kept as the user wrote it.
pub fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A list of free-form JSON objects (for example Kubernetes pod volumes), kept as written.
pub fn free_form_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    })
}

/// Any JSON value, kept as written.
pub fn free_form_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_durations() {
        for (text, secs) in [("90s", 90), ("10m", 600), ("1h30m", 5400), ("0s", 0), ("2h", 7200)] {
            let parsed: GoDuration = text.parse().unwrap();
            assert_eq!(parsed.0, Duration::from_secs(secs), "{text}");
        }
        assert_eq!("1500ms".parse::<GoDuration>().unwrap().0, Duration::from_millis(1500));
        assert_eq!(GoDuration::from_secs(5400).to_string(), "1h30m");
        assert_eq!("1500ms".parse::<GoDuration>().unwrap().to_string(), "1s500ms");
    }

    #[test]
    fn rejects_bad_durations() {
        for text in ["", "10", "s", "1.5h", "-1s", "10d", "1h 30m", "99999999999999999999h"] {
            assert!(text.parse::<GoDuration>().is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn connection_settings_fall_back_field_by_field() {
        let host = ConnectionSettings { username: Some("ci".into()), ..Default::default() };
        let image = ConnectionSettings {
            username: Some("zuul".into()),
            connection_port: Some(2222),
            ..Default::default()
        };
        let merged = host.or(&image);
        assert_eq!(merged.username.as_deref(), Some("ci"));
        assert_eq!(merged.connection_port, Some(2222));
    }
}
