//! EC2's quotas as AWS Service Quotas keeps them: which quota code a running instance, a
//! dedicated host or a volume counts against, and in what unit. No API maps an instance type to
//! its code; these tables are read off the Service Quotas console ("Running On-Demand Standard
//! (A, C, D, H, I, M, R, T, Z) instances", counted in vCPUs), as Nodepool's are.

use std::collections::BTreeSet;

use nodepool_crds::quota::{NodeResources, OtherResources};

/// The Service Quotas service that holds a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    /// Running instances' vCPUs, dedicated hosts.
    Ec2,
    /// Volume storage and provisioned IOPS.
    Ebs,
}

impl Service {
    /// The `ServiceCode` Service Quotas takes.
    pub fn code(self) -> &'static str {
        match self {
            Self::Ec2 => "ec2",
            Self::Ebs => "ebs",
        }
    }
}

/// vCPUs of running instances per instance family: (family, on-demand code, spot code). A
/// family is the letters before a type's first digit (`m5.large`: `m`; `u-6tb1.metal`: `u-`).
const INSTANCE_CODES: &[(&str, &str, Option<&str>)] = &[
    ("a", "L-1216C47A", Some("L-34B43A08")),
    ("c", "L-1216C47A", Some("L-34B43A08")),
    ("d", "L-1216C47A", Some("L-34B43A08")),
    ("h", "L-1216C47A", Some("L-34B43A08")),
    ("i", "L-1216C47A", Some("L-34B43A08")),
    ("m", "L-1216C47A", Some("L-34B43A08")),
    ("r", "L-1216C47A", Some("L-34B43A08")),
    ("t", "L-1216C47A", Some("L-34B43A08")),
    ("z", "L-1216C47A", Some("L-34B43A08")),
    ("dl", "L-6E869C2A", Some("L-85EED4F7")),
    ("f", "L-74FC7D96", Some("L-88CF9481")),
    ("g", "L-DB2E81BA", Some("L-3819A6DF")),
    ("vt", "L-DB2E81BA", Some("L-3819A6DF")),
    ("u-", "L-43DA4232", None),
    ("inf", "L-1945791B", Some("L-B5D1601B")),
    ("p", "L-417A185B", Some("L-7212CCBC")),
    ("x", "L-7295265B", Some("L-E3A00192")),
    ("trn", "L-2C3B7624", Some("L-6B0D517C")),
    ("hpc", "L-F7808C92", None),
];

/// Dedicated hosts per host family (the part of the type before the dot), counted in hosts.
const HOST_CODES: &[(&str, &str)] = &[
    ("a1", "L-949445B0"),
    ("c3", "L-8D142A2E"),
    ("c4", "L-E4BF28E0"),
    ("c5", "L-81657574"),
    ("c5a", "L-03F01FD8"),
    ("c5d", "L-C93F66A2"),
    ("c5n", "L-20F13EBD"),
    ("c6a", "L-D75D2E84"),
    ("c6g", "L-A749B537"),
    ("c6gd", "L-545AED39"),
    ("c6gn", "L-5E3A299D"),
    ("c6i", "L-5FA3355A"),
    ("c6id", "L-1BBC5241"),
    ("c6in", "L-6C2C40CC"),
    ("c7a", "L-698B67E5"),
    ("c7g", "L-13B8FCE8"),
    ("c7gd", "L-EF58B059"),
    ("c7gn", "L-97677CE3"),
    ("c7i", "L-587AA6E3"),
    ("d2", "L-8B27377A"),
    ("dl1", "L-AD667A3D"),
    ("f1", "L-5C4CD236"),
    ("g3", "L-DE82EABA"),
    ("g3s", "L-9675FDCD"),
    ("g4ad", "L-FD8E9B9A"),
    ("g4dn", "L-CAE24619"),
    ("g5", "L-A6E7FE5E"),
    ("g5g", "L-4714FFEA"),
    ("g6", "L-B88B9D6B"),
    ("gr6", "L-E68C3AFF"),
    ("h1", "L-84391ECC"),
    ("i2", "L-6222C1B6"),
    ("i3", "L-8E60B0B1"),
    ("i3en", "L-77EE2B11"),
    ("i4g", "L-F62CBADB"),
    ("i4i", "L-0300530D"),
    ("im4gn", "L-93155D6F"),
    ("inf", "L-5480EFD2"),
    ("inf2", "L-E5BCF7B5"),
    ("is4gen", "L-CB4F5825"),
    ("m3", "L-3C82F907"),
    ("m4", "L-EF30B25E"),
    ("m5", "L-8B7BF662"),
    ("m5a", "L-B10F70D6"),
    ("m5ad", "L-74F41837"),
    ("m5d", "L-8CCBD91B"),
    ("m5dn", "L-DA07429F"),
    ("m5n", "L-24D7D4AD"),
    ("m5zn", "L-BD9BD803"),
    ("m6a", "L-80F2B67F"),
    ("m6g", "L-D50A37FA"),
    ("m6gd", "L-84FB37AA"),
    ("m6i", "L-D269BEFD"),
    ("m6id", "L-FDB0A352"),
    ("m6idn", "L-9721EDD9"),
    ("m6in", "L-D037CF10"),
    ("m7a", "L-4740F819"),
    ("m7g", "L-9126620E"),
    ("m7gd", "L-F8516154"),
    ("m7i", "L-30E31217"),
    ("mac1", "L-A8448DC5"),
    ("mac2", "L-5D8DADF5"),
    ("mac2-m2", "L-B90B5B66"),
    ("mac2-m2pro", "L-14F120D1"),
    ("p2", "L-2753CF59"),
    ("p3", "L-A0A19F79"),
    ("p3dn", "L-B601B3B6"),
    ("p4d", "L-86A789C3"),
    ("p5", "L-5136197D"),
    ("r3", "L-B7208018"),
    ("r4", "L-313524BA"),
    ("r5", "L-EA4FD6CF"),
    ("r5a", "L-8FE30D52"),
    ("r5ad", "L-EC7178B6"),
    ("r5b", "L-A2D59C67"),
    ("r5d", "L-8814B54F"),
    ("r5dn", "L-4AB14223"),
    ("r5n", "L-52EF324A"),
    ("r6a", "L-BC1589C5"),
    ("r6g", "L-B6D6065D"),
    ("r6gd", "L-EF284EFB"),
    ("r6i", "L-F13A970A"),
    ("r6id", "L-B89271A9"),
    ("r6idn", "L-C4EABC2C"),
    ("r6in", "L-EA99608B"),
    ("r7a", "L-4D15192B"),
    ("r7g", "L-67B8B4C7"),
    ("r7gd", "L-01137DCE"),
    ("r7i", "L-55E05032"),
    ("r7iz", "L-BC9FCC71"),
    ("t3", "L-1586174D"),
    ("trn1", "L-5E4FB836"),
    ("trn1n", "L-39926A58"),
    ("u-12tb1", "L-D6994875"),
    ("u-18tb1", "L-5F7FD336"),
    ("u-24tb1", "L-FACBE655"),
    ("u-3tb1", "L-7F5506AB"),
    ("u-6tb1", "L-89870E8E"),
    ("u-9tb1", "L-98E1FFAC"),
    ("u7in-16tb", "L-75B9BECB"),
    ("u7in-24tb", "L-CA51381E"),
    ("u7in-32tb", "L-9D28191F"),
    ("vt1", "L-A68CFBF7"),
    ("x1", "L-DE3D9563"),
    ("x1e", "L-DEF8E115"),
    ("x2gd", "L-5CC9EA82"),
    ("x2idn", "L-A84ABF80"),
    ("x2iedn", "L-D0AA08B1"),
    ("x2iezn", "L-888B4496"),
    ("z1d", "L-F035E935"),
];

/// Volume quotas per volume type: (type, storage code in TiB, provisioned IOPS code).
const VOLUME_CODES: &[(&str, &str, Option<&str>)] = &[
    ("gp2", "L-D18FCD1D", None),
    ("gp3", "L-7A658B76", None),
    ("io1", "L-FD252861", Some("L-B3A130E6")),
    ("io2", "L-09BD8365", Some("L-8D977E7E")),
    ("sc1", "L-17AF77E8", None),
    ("st1", "L-82ACEF56", None),
    ("standard", "L-9CF3C2EB", None),
];

/// Service Quotas gives volume storage in TiB; volumes are sized, and counted here, in GiB.
const GIB_PER_TIB: f64 = 1024.0;

/// The code a running instance of this type counts its vCPUs against.
pub fn instance_code(instance_type: &str, spot: bool) -> Option<&'static str> {
    let family: String = instance_type.chars().take_while(|c| !c.is_ascii_digit()).collect();
    let (_, on_demand, spot_code) = INSTANCE_CODES.iter().find(|(f, _, _)| *f == family)?;
    if spot { *spot_code } else { Some(on_demand) }
}

/// The code a dedicated host for this instance type counts against.
pub fn host_code(instance_type: &str) -> Option<&'static str> {
    let family = instance_type.split('.').next()?;
    HOST_CODES.iter().find(|(f, _)| *f == family).map(|(_, code)| *code)
}

/// The storage and IOPS codes of a volume type.
fn volume_codes(volume_type: &str) -> Option<(&'static str, Option<&'static str>)> {
    VOLUME_CODES.iter().find(|(t, _, _)| *t == volume_type).map(|(_, storage, iops)| (*storage, *iops))
}

/// The service that holds a code of these tables.
pub fn service_of(code: &str) -> Service {
    if VOLUME_CODES.iter().any(|(_, storage, iops)| *storage == code || *iops == Some(code)) {
        Service::Ebs
    } else {
        Service::Ec2
    }
}

/// A quota's value as a limit in the unit footprints count: GiB for volume storage (Service
/// Quotas says TiB), else as given (vCPUs, hosts, IOPS).
pub fn limit(code: &str, value: f64) -> u64 {
    let storage = VOLUME_CODES.iter().any(|(_, storage, _)| *storage == code);
    let value = if storage { value * GIB_PER_TIB } else { value };
    value.max(0.0).min(u64::MAX as f64) as u64
}

/// How one instance is launched, as far as quota cares.
#[derive(Clone, Copy, Debug)]
pub struct Placement<'a> {
    pub instance_type: &'a str,
    pub spot: bool,
    pub dedicated_host: bool,
}

/// The code an instance launched so counts against (its vCPUs' or its host's).
pub fn code(placement: Placement<'_>) -> Option<&'static str> {
    if placement.dedicated_host {
        host_code(placement.instance_type)
    } else {
        instance_code(placement.instance_type, placement.spot)
    }
}

/// What an instance of `size` (its type's vCPUs and memory) holds, launched so: its vCPUs under
/// the family's code, or one host under the host family's (a dedicated host's instance does not
/// count against the vCPU quota).
pub fn instance_footprint(size: &NodeResources, placement: Placement<'_>) -> NodeResources {
    let mut held = NodeResources { other: OtherResources::new(), ..size.clone() };
    if let Some(code) = code(placement) {
        let amount = if placement.dedicated_host { 1 } else { u64::from(size.cores) };
        held.other.insert(code.to_owned(), amount);
    }
    held
}

/// What a volume holds: its GiB under the type's storage code and its provisioned IOPS under
/// the type's IOPS code.
pub fn volume_footprint(volume_type: &str, size_gib: Option<u64>, iops: Option<u64>) -> OtherResources {
    let mut held = OtherResources::new();
    if let Some((storage, iops_code)) = volume_codes(volume_type) {
        if let Some(size) = size_gib {
            held.insert(storage.to_owned(), size);
        }
        if let (Some(code), Some(iops)) = (iops_code, iops) {
            held.insert(code.to_owned(), iops);
        }
    }
    held
}

/// The codes a volume type counts against.
pub fn volume_type_codes(volume_type: &str) -> BTreeSet<&'static str> {
    volume_codes(volume_type)
        .map(|(storage, iops)| [Some(storage), iops].into_iter().flatten().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_types_map_to_their_familys_vcpu_code() {
        assert_eq!(instance_code("m5.large", false), Some("L-1216C47A"));
        assert_eq!(instance_code("t3.small", true), Some("L-34B43A08"));
        assert_eq!(instance_code("inf2.xlarge", false), Some("L-1945791B"));
        assert_eq!(instance_code("u-6tb1.metal", false), Some("L-43DA4232"));
        assert_eq!(instance_code("u-6tb1.metal", true), None, "no spot quota for high memory");
        assert_eq!(instance_code("q9.large", false), None);
        assert_eq!(host_code("m5.large"), Some("L-8B7BF662"));
        assert_eq!(host_code("zz1.large"), None);
    }

    #[test]
    fn footprints_count_vcpus_hosts_and_volume_gib() {
        let size = NodeResources { cores: 8, ram: 32768, instances: 1, ..Default::default() };
        let on_demand = Placement { instance_type: "m5.2xlarge", spot: false, dedicated_host: false };
        assert_eq!(instance_footprint(&size, on_demand).other, [("L-1216C47A".to_owned(), 8)].into());
        let host = Placement { dedicated_host: true, ..on_demand };
        assert_eq!(instance_footprint(&size, host).other, [("L-8B7BF662".to_owned(), 1)].into());
        let volume = volume_footprint("io2", Some(100), Some(3000));
        assert_eq!(volume, [("L-09BD8365".to_owned(), 100), ("L-8D977E7E".to_owned(), 3000)].into());
        assert_eq!(service_of("L-09BD8365"), Service::Ebs);
        assert_eq!(service_of("L-1216C47A"), Service::Ec2);
        assert_eq!(limit("L-7A658B76", 50.0), 51_200, "TiB to GiB");
        assert_eq!(limit("L-1216C47A", 32.0), 32);
    }
}
