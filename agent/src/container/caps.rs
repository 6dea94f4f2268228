//! Linux capability names (as OCI specs spell them) to numbers, and the
//! bit sets the container process gets.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// Capability names by number (include/uapi/linux/capability.h).
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The number of capability `name` ("CAP_CHOWN" or "chown").
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    NAMES.iter().position(|n| *n == full).map(|i| i as u32)
}

fn mask(set: Option<&Capabilities>) -> Result<u64, String> {
    let mut bits = 0u64;
    for cap in set.into_iter().flatten() {
        let name = cap_name(cap);
        let n = number(&name).ok_or_else(|| format!("unknown capability {name}"))?;
        bits |= 1 << n;
    }
    Ok(bits)
}

fn cap_name(cap: &Capability) -> String {
    // oci-spec serialises capabilities as their OCI names.
    serde_json::to_value(cap).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| format!("{cap:?}"))
}

/// The five capability sets of a process, as bit masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSets {
    /// Bounding set.
    pub bounding: u64,
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
}

impl CapSets {
    /// The sets of an OCI process; no `capabilities` means none at all.
    pub fn from_spec(caps: Option<&LinuxCapabilities>) -> Result<CapSets, String> {
        let Some(caps) = caps else { return Ok(CapSets::default()) };
        Ok(CapSets {
            bounding: mask(caps.bounding().as_ref())?,
            effective: mask(caps.effective().as_ref())?,
            permitted: mask(caps.permitted().as_ref())?,
            inheritable: mask(caps.inheritable().as_ref())?,
            ambient: mask(caps.ambient().as_ref())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_kernel_numbers() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("net_raw"), Some(13));
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
    }

    #[test]
    fn spec_sets_become_masks() {
        let caps: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_KILL","CAP_CHOWN"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]}"#,
        )
        .expect("caps");
        let sets = CapSets::from_spec(Some(&caps)).expect("sets");
        assert_eq!(sets.bounding, (1 << 5) | 1);
        assert_eq!(sets.effective, 1 << 5);
        assert_eq!(sets.ambient, 0);
    }
}
