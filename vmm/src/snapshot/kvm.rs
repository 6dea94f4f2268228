//! KVM state of the VM and its vCPUs: what KVM keeps in the kernel, read
//! with the KVM_GET_* ioctls and written back with KVM_SET_* into a new VM.
//!
//! The restore order follows the dependencies KVM documents (and
//! Firecracker uses): CPUID before anything that checks features, MP state
//! and registers, then the LAPIC before the MSRs (the TSC-deadline MSR
//! needs the LAPIC's mode), and pending events last.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vmm_sys_util::ioctl::ioctl_with_ref;

use super::SnapshotError;

/// KVM's state of the VM itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VmKvmState {
    /// PIC master, PIC slave, IO-APIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

/// One vCPU.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index.
    pub index: u8,
    /// CPUID as KVM applied it.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Running, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE state (the legacy 4 KiB KVM_GET_XSAVE area).
    pub xsave: kvm_xsave,
    /// Extended control registers, when KVM has them.
    pub xcrs: Option<kvm_xcrs>,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Local APIC.
    pub lapic: kvm_lapic_state,
    /// Model-specific registers: (index, value).
    pub msrs: Vec<(u32, u64)>,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub events: kvm_vcpu_events,
}

// kvm-ioctls only offers the vCPU device-attribute ioctls on aarch64.
vmm_sys_util::ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, kvm_bindings::KVMIO, 0xe1, kvm_bindings::kvm_device_attr);
vmm_sys_util::ioctl_iow_nr!(KVM_HAS_DEVICE_ATTR, kvm_bindings::KVMIO, 0xe3, kvm_bindings::kvm_device_attr);

/// The time-stamp counter.
const MSR_IA32_TSC: u32 = 0x10;

/// A restored TSC this close to the saved one (about a millisecond at
/// GHz rates) needs no correction.
const TSC_TOLERANCE: u64 = 10_000_000;

/// MSRs per KVM_GET/SET_MSRS call (kvm-bindings' `Msrs` holds at most 256).
const MSR_BATCH: usize = 200;

impl Clone for VcpuState {
    fn clone(&self) -> Self {
        VcpuState {
            index: self.index,
            cpuid: self.cpuid.clone(),
            mp_state: self.mp_state,
            regs: self.regs,
            sregs: self.sregs,
            // kvm_xsave ends in a flexible array (unused here), so it has
            // no derived Clone: copy the fixed region.
            xsave: kvm_xsave { region: self.xsave.region, ..Default::default() },
            xcrs: self.xcrs,
            debugregs: self.debugregs,
            lapic: self.lapic,
            msrs: self.msrs.clone(),
            events: self.events,
        }
    }
}

/// The MSRs worth saving: every one KVM lists as saveable.
pub fn msr_list(kvm: &Kvm) -> Result<Vec<u32>, SnapshotError> {
    Ok(kvm.get_msr_index_list().map_err(SnapshotError::kvm("KVM_GET_MSR_INDEX_LIST"))?.as_slice().to_vec())
}

/// Saves the VM-wide state. The vCPUs must be paused.
pub fn save_vm(vm: &VmFd) -> Result<VmKvmState, SnapshotError> {
    let mut irqchips = Vec::new();
    for chip_id in [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC] {
        let mut chip = kvm_irqchip { chip_id, ..Default::default() };
        vm.get_irqchip(&mut chip).map_err(SnapshotError::kvm(format!("KVM_GET_IRQCHIP {chip_id}")))?;
        irqchips.push(chip);
    }
    let pit = vm.get_pit2().map_err(SnapshotError::kvm("KVM_GET_PIT2"))?;
    let mut clock = vm.get_clock().map_err(SnapshotError::kvm("KVM_GET_CLOCK"))?;
    // KVM_SET_CLOCK takes only the value (and KVM_CLOCK_REALTIME, unused):
    // the guest clock resumes where it stopped.
    clock.flags = 0;
    Ok(VmKvmState { irqchips, pit, clock })
}

/// Writes the VM-wide state into a VM that has its IRQ chip and PIT.
pub fn restore_vm(vm: &VmFd, state: &VmKvmState) -> Result<(), SnapshotError> {
    if state.irqchips.len() != 3 {
        return Err(SnapshotError::State(format!("{} IRQ chips saved, expected 3", state.irqchips.len())));
    }
    for chip in &state.irqchips {
        vm.set_irqchip(chip).map_err(SnapshotError::kvm(format!("KVM_SET_IRQCHIP {}", chip.chip_id)))?;
    }
    vm.set_pit2(&state.pit).map_err(SnapshotError::kvm("KVM_SET_PIT2"))?;
    vm.set_clock(&state.clock).map_err(SnapshotError::kvm("KVM_SET_CLOCK"))?;
    Ok(())
}

/// Reads the MSRs in `list` that this vCPU lets us read. KVM stops a
/// KVM_GET_MSRS batch at the first MSR it refuses, so that one is skipped
/// and the rest read again.
fn read_msrs(fd: &VcpuFd, list: &[u32], index: u8) -> Result<Vec<(u32, u64)>, SnapshotError> {
    let mut out = Vec::with_capacity(list.len());
    let mut rest = list;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(MSR_BATCH)];
        let entries: Vec<kvm_msr_entry> =
            batch.iter().map(|&i| kvm_msr_entry { index: i, ..Default::default() }).collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|e| SnapshotError::State(format!("vCPU {index}: MSR list: {e:?}")))?;
        let read = fd.get_msrs(&mut msrs).map_err(SnapshotError::kvm(format!("vCPU {index}: KVM_GET_MSRS")))?;
        out.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        let skip = usize::from(read < batch.len());
        if skip == 1 {
            tracing::debug!(msr = format_args!("{:#x}", batch[read]), "MSR not readable; not saved");
        }
        rest = &rest[read + skip..];
    }
    Ok(out)
}

/// Saves a vCPU that is out of KVM_RUN with no exit pending.
pub fn save_vcpu(fd: &VcpuFd, index: u8, msr_list: &[u32]) -> Result<VcpuState, SnapshotError> {
    let what = |ioctl: &str| format!("vCPU {index}: {ioctl}");
    Ok(VcpuState {
        index,
        cpuid: fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(SnapshotError::kvm(what("KVM_GET_CPUID2")))?
            .as_slice()
            .to_vec(),
        mp_state: fd.get_mp_state().map_err(SnapshotError::kvm(what("KVM_GET_MP_STATE")))?,
        regs: fd.get_regs().map_err(SnapshotError::kvm(what("KVM_GET_REGS")))?,
        sregs: fd.get_sregs().map_err(SnapshotError::kvm(what("KVM_GET_SREGS")))?,
        xsave: fd.get_xsave().map_err(SnapshotError::kvm(what("KVM_GET_XSAVE")))?,
        xcrs: fd.get_xcrs().ok(),
        debugregs: fd.get_debug_regs().map_err(SnapshotError::kvm(what("KVM_GET_DEBUGREGS")))?,
        lapic: fd.get_lapic().map_err(SnapshotError::kvm(what("KVM_GET_LAPIC")))?,
        msrs: read_msrs(fd, msr_list, index)?,
        events: fd.get_vcpu_events().map_err(SnapshotError::kvm(what("KVM_GET_VCPU_EVENTS")))?,
    })
}

/// Writes a saved state into a freshly created vCPU.
pub fn restore_vcpu(fd: &VcpuFd, state: &VcpuState) -> Result<(), SnapshotError> {
    let index = state.index;
    let what = |ioctl: &str| format!("vCPU {index}: {ioctl}");
    let cpuid =
        CpuId::from_entries(&state.cpuid).map_err(|e| SnapshotError::State(format!("vCPU {index}: CPUID: {e:?}")))?;
    fd.set_cpuid2(&cpuid).map_err(SnapshotError::kvm(what("KVM_SET_CPUID2")))?;
    fd.set_mp_state(state.mp_state).map_err(SnapshotError::kvm(what("KVM_SET_MP_STATE")))?;
    fd.set_regs(&state.regs).map_err(SnapshotError::kvm(what("KVM_SET_REGS")))?;
    fd.set_sregs(&state.sregs).map_err(SnapshotError::kvm(what("KVM_SET_SREGS")))?;
    // SAFETY: KVM_SET_XSAVE reads the vCPU's uABI XSAVE size, which exceeds
    // the 4 KiB `kvm_xsave` only for dynamically enabled features (AMX)
    // granted with ARCH_REQ_XCOMP_GUEST_PERM; this VMM never asks for them,
    // so the kernel reads within `state.xsave`.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(SnapshotError::kvm(what("KVM_SET_XSAVE")))?;
    if let Some(xcrs) = &state.xcrs {
        fd.set_xcrs(xcrs).map_err(SnapshotError::kvm(what("KVM_SET_XCRS")))?;
    }
    fd.set_debug_regs(&state.debugregs).map_err(SnapshotError::kvm(what("KVM_SET_DEBUGREGS")))?;
    fd.set_lapic(&state.lapic).map_err(SnapshotError::kvm(what("KVM_SET_LAPIC")))?;
    let entries: Vec<kvm_msr_entry> =
        state.msrs.iter().map(|&(i, data)| kvm_msr_entry { index: i, data, ..Default::default() }).collect();
    for batch in entries.chunks(MSR_BATCH) {
        let msrs = Msrs::from_entries(batch).map_err(|e| SnapshotError::State(format!("vCPU {index}: MSRs: {e:?}")))?;
        let written = fd.set_msrs(&msrs).map_err(SnapshotError::kvm(what("KVM_SET_MSRS")))?;
        if written < batch.len() {
            return Err(SnapshotError::State(format!(
                "vCPU {index}: KVM refused to restore MSR {:#x}",
                batch[written].index
            )));
        }
    }
    fd.set_vcpu_events(&state.events).map_err(SnapshotError::kvm(what("KVM_SET_VCPU_EVENTS")))?;
    if let Some(&(_, saved)) = state.msrs.iter().find(|(i, _)| *i == MSR_IA32_TSC) {
        restore_tsc(fd, index, saved)?;
    }
    Ok(())
}

/// Makes the guest TSC continue from `saved`. A host write of the TSC MSR
/// is not enough everywhere (on nested PVM hosts the guest TSC stays the
/// host's), and a guest whose TSC jumped by the time since the snapshot
/// catches its clock up one second at a time (`second_overflow`), which is
/// emulated kernel work on nested hosts: a day-old template would spend
/// minutes on it. So the offset is set directly (KVM_VCPU_TSC_OFFSET),
/// where KVM has it and applies it (hardware KVM; not nested PVM).
fn restore_tsc(fd: &VcpuFd, index: u8, saved: u64) -> Result<(), SnapshotError> {
    use kvm_bindings::{kvm_device_attr, KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET};
    let guest_now = read_msrs(fd, &[MSR_IA32_TSC], index)?.first().map_or(0, |m| m.1);
    if guest_now.abs_diff(saved) < TSC_TOLERANCE {
        return Ok(());
    }
    let probe =
        kvm_device_attr { group: KVM_VCPU_TSC_CTRL, attr: u64::from(KVM_VCPU_TSC_OFFSET), ..Default::default() };
    // SAFETY: KVM_HAS_DEVICE_ATTR reads a kvm_device_attr, which `probe` is.
    let supported = unsafe { ioctl_with_ref(fd, KVM_HAS_DEVICE_ATTR(), &probe) } == 0;
    if !supported {
        tracing::warn!(
            vcpu = index,
            behind = guest_now.saturating_sub(saved),
            "KVM cannot set the guest TSC offset; the guest clock will catch up"
        );
        return Ok(());
    }
    // SAFETY: RDTSC has no preconditions on x86_64.
    let host_now = unsafe { std::arch::x86_64::_rdtsc() };
    let offset: u64 = saved.wrapping_sub(host_now);
    let attr = kvm_device_attr { addr: &offset as *const u64 as u64, ..probe };
    // SAFETY: KVM_SET_DEVICE_ATTR reads a kvm_device_attr whose `addr`
    // points to the u64 offset, alive for the call.
    if unsafe { ioctl_with_ref(fd, KVM_SET_DEVICE_ATTR(), &attr) } != 0 {
        return Err(SnapshotError::kvm(format!("vCPU {index}: KVM_VCPU_TSC_OFFSET"))(kvm_ioctls::Error::last()));
    }
    let after = read_msrs(fd, &[MSR_IA32_TSC], index)?.first().map_or(0, |m| m.1);
    if after.abs_diff(saved) < TSC_TOLERANCE {
        tracing::debug!(vcpu = index, saved, before = guest_now, "guest TSC offset restored");
    } else {
        // Seen on nested PVM hosts: the call succeeds, the TSC stays the host's.
        let khz = u64::from(fd.get_tsc_khz().unwrap_or(0)).max(1);
        tracing::warn!(
            vcpu = index,
            ahead_secs = after.saturating_sub(saved) / (khz * 1000),
            "KVM did not apply the guest TSC offset; the guest clock catches up by the time since the snapshot"
        );
    }
    Ok(())
}
