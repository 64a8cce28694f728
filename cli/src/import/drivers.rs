//! Which module reads a provider of each Nodepool driver this project has.

use super::{aws, gce, kubernetes, openshift, openshift_pods, provider::Read, static_hosts};

/// The reader of Nodepool's driver `driver` (`None`: a driver nodepool-operator does not have).
pub fn reader(driver: &str) -> Option<Read> {
    Some(match driver {
        "static" => static_hosts::import,
        "aws" => aws::import,
        "gce" => gce::import,
        "kubernetes" => kubernetes::import,
        "openshift" => openshift::import,
        "openshiftpods" => openshift_pods::import,
        _ => return None,
    })
}
