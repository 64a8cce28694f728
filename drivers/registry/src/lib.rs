//! Every driver of this build, in one list. Adding a driver is one line here (plus its folder
//! under `drivers/` and its workspace member); the operator finds drivers by name here, the CRD
//! generator writes their settings blocks from here, and a test checks each has its docs.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use nodepool_crds::{Provider, driver_blocks};
use nodepool_driver::{CloudUnavailable, Driver};

/// The registered drivers, in the order the docs list them.
pub static DRIVERS: &[&dyn Driver] = &[
    &nodepool_driver_static::Static,
    &nodepool_driver_aws::Aws,
    &nodepool_driver_gce::Gce,
    &nodepool_driver_kubernetes::Kubernetes,
    &nodepool_driver_openshift::OpenShift,
    &nodepool_driver_openshiftpods::OpenShiftPods,
    &nodepool_driver_simulated::Simulated,
];

/// The driver named `name`.
pub fn find(name: &str) -> Option<&'static dyn Driver> {
    DRIVERS.iter().copied().find(|driver| driver.name() == name)
}

/// A provider's driver; an error naming it when this build has none of that name (only an object
/// stored by a build with more drivers can have one).
pub fn of(provider: &Provider) -> Result<&'static dyn Driver, CloudUnavailable> {
    find(provider.spec.driver.as_str())
        .ok_or_else(|| CloudUnavailable::UnknownDriver(provider.spec.driver.to_string()))
}

/// Every CustomResourceDefinition, with every driver's settings blocks: what is installed and
/// checked in under `crds/generated/`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let shapes: Vec<_> = DRIVERS.iter().map(|driver| driver.shape()).collect();
    driver_blocks::with_driver_blocks(nodepool_crds::base_crds(), &shapes)
}
