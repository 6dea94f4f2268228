//! KVM's own statistics of each vCPU (`KVM_GET_STATS_FD`, Linux 5.14+):
//! exits by kind, interrupts injected, page faults KVM handled, instructions
//! it emulated. The control socket returns them summed over the vCPUs
//! (`{"action":"stats"}`), so a benchmark can read what one guest operation
//! cost in VM exits (docs/benchmarks.md). debugfs has the same counters but
//! is not readable on every host (it is not on our nested CI machines).
//!
//! kvm-ioctls has no wrapper for this ioctl, hence the reader here: a
//! header, one descriptor per statistic, and the values, in one read-only
//! file per vCPU (`Documentation/virt/kvm/api.rst`, "KVM_GET_STATS_FD").

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

use kvm_ioctls::VcpuFd;
use std::os::unix::fs::FileExt;

/// `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xAECE;
/// `struct kvm_stats_header`: six u32.
const HEADER_SIZE: usize = 24;
/// `struct kvm_stats_desc` before its name.
const DESC_SIZE: usize = 16;
/// A longer name than this is not a KVM statistic we could be given.
const MAX_NAME: usize = 256;
/// Far more statistics than any KVM has (47 on 6.x x86).
const MAX_STATS: usize = 1024;
/// `KVM_STATS_TYPE_MASK` and `KVM_STATS_TYPE_CUMULATIVE`: counters that
/// only grow, the ones that can be summed over vCPUs and differenced.
const TYPE_MASK: u32 = 0xf;
const TYPE_CUMULATIVE: u32 = 0;

/// One vCPU's statistics file and where its scalar values live.
#[derive(Debug)]
pub struct VcpuStats {
    file: File,
    /// (name, byte offset of the value in the file).
    scalars: Vec<(String, u64)>,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("KVM statistics: {what}"))
}

impl VcpuStats {
    /// Opens the statistics of `vcpu` and reads their layout (once: it does
    /// not change while the vCPU lives). Takes the vCPU's lock in KVM, so
    /// call it before the vCPU runs.
    pub fn open(vcpu: &VcpuFd) -> io::Result<Self> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new
        // descriptor or -1; `vcpu` is a live vCPU descriptor (the type says
        // so), so a descriptor returned is KVM's new statistics file.
        let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the ioctl returned a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0)?;
        let name_size = u32_at(&header, 4) as usize;
        let count = u32_at(&header, 8) as usize;
        let desc_offset = u64::from(u32_at(&header, 16));
        let data_offset = u64::from(u32_at(&header, 20));
        if name_size > MAX_NAME || count > MAX_STATS {
            return Err(invalid(format!("{count} descriptors with {name_size}-byte names")));
        }
        let mut descs = vec![0u8; count * (DESC_SIZE + name_size)];
        file.read_exact_at(&mut descs, desc_offset)?;
        let scalars = descs
            .chunks_exact(DESC_SIZE + name_size)
            // One cumulative value: not a histogram, peak or instant value.
            .filter(|d| u16::from_le_bytes([d[6], d[7]]) == 1 && u32_at(d, 0) & TYPE_MASK == TYPE_CUMULATIVE)
            .map(|d| {
                let name = &d[DESC_SIZE..];
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                (String::from_utf8_lossy(&name[..end]).into_owned(), data_offset + u64::from(u32_at(d, 8)))
            })
            .collect();
        Ok(VcpuStats { file, scalars })
    }

    /// The current values.
    pub fn read(&self) -> io::Result<Vec<(String, u64)>> {
        self.scalars
            .iter()
            .map(|(name, at)| {
                let mut value = [0u8; 8];
                self.file.read_exact_at(&mut value, *at)?;
                Ok((name.clone(), u64::from_le_bytes(value)))
            })
            .collect()
    }
}

/// Every scalar statistic summed over `vcpus`.
pub fn sum(vcpus: &[VcpuStats]) -> io::Result<BTreeMap<String, u64>> {
    let mut total = BTreeMap::new();
    for vcpu in vcpus {
        for (name, value) in vcpu.read()? {
            let sum = total.entry(name).or_insert(0u64);
            *sum = sum.saturating_add(value);
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_vcpu_has_exit_counters_at_zero() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("skipped: no /dev/kvm here");
            return;
        };
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        let stats = VcpuStats::open(&vcpu).expect("KVM_GET_STATS_FD");
        let total = sum(&[stats]).expect("read");
        for name in ["exits", "io_exits", "mmio_exits", "halt_exits", "irq_injections"] {
            assert_eq!(total.get(name), Some(&0), "{name} of a vCPU that never ran: {total:?}");
        }
        assert!(!total.contains_key("halt_poll_success_hist"), "histograms are left out: {total:?}");
    }
}
