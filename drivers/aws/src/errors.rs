//! EC2 error codes, sorted into what the lifecycle does about them.

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use nodepool_driver::CloudError;

/// Codes meaning the account's limits forbid the launch.
const QUOTA: &[&str] =
    &["InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded", "VolumeLimitExceeded"];
/// Codes meaning EC2 has no capacity right now.
const CAPACITY: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "SpotMaxPriceTooLow",
];
/// Codes meaning the credentials were refused.
const AUTH: &[&str] = &[
    "AuthFailure",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
];
/// Codes asking us to slow down.
const THROTTLED: &[&str] = &["RequestLimitExceeded", "Throttling", "ThrottlingException"];

/// Sorts an SDK error by its EC2 error code; the message keeps operation, code and text.
pub fn classify<E, R>(operation: &'static str, error: SdkError<E, R>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (code, message) = match &error {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            (inner.code().map(str::to_owned), inner.message().map(str::to_owned))
        }
        _ => (None, None),
    };
    let Some(code) = code else {
        // Timeouts, connection errors, unparseable answers: worth trying again.
        let detail = aws_sdk_ec2::error::DisplayErrorContext(&error).to_string();
        return CloudError::api(operation, detail);
    };
    classify_code(operation, &code, &message.unwrap_or_default())
}

/// Sorts an EC2 error code (from an SDK error, or from an answer's error list as `CreateFleet`
/// gives them).
pub fn classify_code(operation: &'static str, code: &str, message: &str) -> CloudError {
    let text = format!("{operation}: {code}: {message}");
    let is = |codes: &[&str]| codes.contains(&code);
    if is(QUOTA) {
        CloudError::Quota(text)
    } else if is(CAPACITY) {
        CloudError::Capacity(text)
    } else if is(AUTH) {
        CloudError::Auth(text)
    } else if is(THROTTLED) {
        CloudError::Throttled(text)
    } else if code.starts_with("Invalid") || code.ends_with(".NotFound") || code == "MissingParameter" {
        CloudError::Invalid(text)
    } else {
        CloudError::api(operation, format!("{code}: {text}"))
    }
}
