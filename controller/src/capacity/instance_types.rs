//! A small table of common EC2 instance types: vCPUs, memory, architecture and an
//! approximate on-demand price, for templates of groups at zero (cluster-autoscaler's AWS
//! provider carries the full generated list; this covers the families SmartScale documents).

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceType {
    pub name: String,
    pub vcpu: i64,
    pub memory_mib: i64,
    pub arch: &'static str,
    /// us-east-1 Linux on-demand USD per hour (list price when the table was written); used by
    /// the `price` expander only when the caller gives no price.
    pub price: f64,
}

/// (family, arch, USD per vCPU-hour (per GiB-hour for burstable types), [(size, vcpu, GiB)]).
type Family = (
    &'static str,
    &'static str,
    f64,
    &'static [(&'static str, i64, i64)],
);

const BURST: &[(&str, i64, i64)] = &[
    ("nano", 2, 0),
    ("micro", 2, 1),
    ("small", 2, 2),
    ("medium", 2, 4),
    ("large", 2, 8),
    ("xlarge", 4, 16),
    ("2xlarge", 8, 32),
];
const GENERAL: &[(&str, i64, i64)] = &[
    ("large", 2, 8),
    ("xlarge", 4, 16),
    ("2xlarge", 8, 32),
    ("4xlarge", 16, 64),
    ("8xlarge", 32, 128),
    ("12xlarge", 48, 192),
    ("16xlarge", 64, 256),
    ("24xlarge", 96, 384),
];
const COMPUTE: &[(&str, i64, i64)] = &[
    ("large", 2, 4),
    ("xlarge", 4, 8),
    ("2xlarge", 8, 16),
    ("4xlarge", 16, 32),
    ("9xlarge", 36, 72),
    ("12xlarge", 48, 96),
    ("18xlarge", 72, 144),
    ("24xlarge", 96, 192),
];
const COMPUTE6: &[(&str, i64, i64)] = &[
    ("large", 2, 4),
    ("xlarge", 4, 8),
    ("2xlarge", 8, 16),
    ("4xlarge", 16, 32),
    ("8xlarge", 32, 64),
    ("12xlarge", 48, 96),
    ("16xlarge", 64, 128),
];
const MEMORY: &[(&str, i64, i64)] = &[
    ("large", 2, 16),
    ("xlarge", 4, 32),
    ("2xlarge", 8, 64),
    ("4xlarge", 16, 128),
    ("8xlarge", 32, 256),
    ("12xlarge", 48, 384),
    ("16xlarge", 64, 512),
    ("24xlarge", 96, 768),
];
const GRAVITON: &[(&str, i64, i64)] = &[
    ("medium", 1, 4),
    ("large", 2, 8),
    ("xlarge", 4, 16),
    ("2xlarge", 8, 32),
    ("4xlarge", 16, 64),
    ("8xlarge", 32, 128),
    ("12xlarge", 48, 192),
    ("16xlarge", 64, 256),
];

const FAMILIES: &[Family] = &[
    ("t3", "amd64", 0.0104, BURST),
    ("t3a", "amd64", 0.0094, BURST),
    ("t4g", "arm64", 0.0084, BURST),
    ("m5", "amd64", 0.048, GENERAL),
    ("m6i", "amd64", 0.048, GENERAL),
    ("m6a", "amd64", 0.0432, GENERAL),
    ("m7i", "amd64", 0.0504, GENERAL),
    ("m6g", "arm64", 0.0385, GRAVITON),
    ("m7g", "arm64", 0.0408, GRAVITON),
    ("c5", "amd64", 0.0425, COMPUTE),
    ("c6i", "amd64", 0.0425, COMPUTE6),
    ("c7i", "amd64", 0.04463, COMPUTE6),
    ("r5", "amd64", 0.063, MEMORY),
    ("r6i", "amd64", 0.063, MEMORY),
];

/// The size of an instance type, or a clear error for one the table does not know.
pub fn lookup(name: &str) -> Result<InstanceType> {
    let unknown = || {
        Error::Capacity(format!(
            "instance type {name:?} is not in SmartScale's table (t3, t3a, t4g, m5, m6i, m6a, m7i, m6g, m7g, c5, c6i, c7i, r5, r6i); \
             give the group a Ready node or tag its ASG with k8s.io/cluster-autoscaler/node-template/resources/cpu and .../memory"
        ))
    };
    let (family, size) = name.split_once('.').ok_or_else(unknown)?;
    let (_, arch, rate, sizes) = FAMILIES
        .iter()
        .find(|(f, ..)| *f == family)
        .ok_or_else(unknown)?;
    let (_, vcpu, gib) = sizes
        .iter()
        .find(|(s, ..)| *s == size)
        .ok_or_else(unknown)?;
    let memory_mib = if *gib == 0 { 512 } else { gib * 1024 };
    // Burstable types are priced by memory (every size up to large has 2 vCPUs), the others
    // by vCPU.
    let price = if std::ptr::eq(*sizes, BURST) {
        rate * memory_mib as f64 / 1024.0
    } else {
        rate * *vcpu as f64
    };
    Ok(InstanceType {
        name: name.to_string(),
        vcpu: *vcpu,
        memory_mib,
        arch,
        price,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_common_types() {
        let t = lookup("t3.medium").unwrap();
        assert_eq!((t.vcpu, t.memory_mib, t.arch), (2, 4096, "amd64"));
        assert!((t.price - 0.0416).abs() < 1e-9);
        assert_eq!(t.name, "t3.medium");
        let m = lookup("m6i.2xlarge").unwrap();
        assert_eq!((m.vcpu, m.memory_mib), (8, 32768));
        assert!((m.price - 0.384).abs() < 0.001);
        assert_eq!(lookup("c5.large").unwrap().memory_mib, 4096);
        assert_eq!(lookup("r5.xlarge").unwrap().memory_mib, 32768);
        assert_eq!(lookup("m7g.large").unwrap().arch, "arm64");
    }

    #[test]
    fn unknown_types_are_a_clear_error() {
        for bad in ["p4d.24xlarge", "m5.huge", "m5", ""] {
            let e = lookup(bad).unwrap_err().to_string();
            assert!(e.contains("not in SmartScale's table"), "{e}");
        }
    }
}
