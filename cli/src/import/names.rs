//! Nodepool's names as Kubernetes names: providers, labels, images and tenants become object
//! names (RFC 1123 subdomains), pools DNS labels.

/// `name` as an object name: lowercase letters, digits, `-` and `.`, other characters `-`,
/// starting and ending alphanumeric, at most 253 characters. `None` when nothing is left.
pub fn object_name(name: &str) -> Option<String> {
    sanitize(name, 253, true)
}

/// `name` as a DNS label (a pool name): the same without dots, at most 63 characters.
pub fn dns_label(name: &str) -> Option<String> {
    sanitize(name, 63, false)
}

/// Whether `name` is a valid object name as it is.
pub fn is_object_name(name: &str) -> bool {
    object_name(name).as_deref() == Some(name)
}

fn sanitize(name: &str, max: usize, dots: bool) -> Option<String> {
    let mapped: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || (dots && c == '.') { c } else { '-' })
        .collect();
    let trimmed: String =
        mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric()).chars().take(max).collect();
    let trimmed = trimmed.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned();
    (!trimmed.is_empty()).then_some(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_kubernetes_names() {
        assert_eq!(object_name("aws-us-east-1").as_deref(), Some("aws-us-east-1"));
        assert_eq!(object_name("Fedora_40").as_deref(), Some("fedora-40"));
        assert_eq!(object_name("ubuntu.noble").as_deref(), Some("ubuntu.noble"));
        assert_eq!(dns_label("main_pool.a").as_deref(), Some("main-pool-a"));
        assert_eq!(object_name("__"), None);
        assert!(is_object_name("fake-label") && !is_object_name("Fake"));
    }
}
