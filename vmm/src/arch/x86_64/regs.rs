//! Initial vCPU state: registers for each boot protocol, FPU, local APIC.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

use super::boot::BootProtocol;
use super::gdt::{self, BOOT_GDT};
use super::layout::{BOOT_STACK_POINTER, GDT_ADDR, PML4_ADDR, PVH_START_INFO_ADDR, ZERO_PAGE_ADDR};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Local APIC register offsets and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// A KVM ioctl failed while setting up a vCPU.
#[derive(Debug, thiserror::Error)]
#[error("vCPU setup, {what}: {source}")]
pub struct RegsError {
    what: &'static str,
    source: kvm_ioctls::Error,
}

fn ctx(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError { what, source }
}

/// General-purpose registers of the boot vCPU.
pub fn setup_regs(vcpu: &VcpuFd, protocol: BootProtocol, entry: u64) -> Result<(), RegsError> {
    let regs = match protocol {
        BootProtocol::Pvh => kvm_regs { rflags: 0x2, rip: entry, rbx: PVH_START_INFO_ADDR, ..Default::default() },
        BootProtocol::Linux64 => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_ADDR,
            ..Default::default()
        },
    };
    vcpu.set_regs(&regs).map_err(ctx("KVM_SET_REGS"))
}

/// Segment and control registers of the boot vCPU.
pub fn setup_sregs(vcpu: &VcpuFd, protocol: BootProtocol) -> Result<(), RegsError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(ctx("KVM_GET_SREGS"))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    let data = gdt::segment(gdt::DATA_INDEX);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(gdt::TSS_INDEX);
    match protocol {
        BootProtocol::Pvh => {
            sregs.cs = gdt::segment(gdt::CODE32_INDEX);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootProtocol::Linux64 => {
            sregs.cs = gdt::segment(gdt::CODE64_INDEX);
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = X86_CR4_PAE;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    vcpu.set_sregs(&sregs).map_err(ctx("KVM_SET_SREGS"))
}

/// x87 control word and MXCSR at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(ctx("KVM_SET_FPU"))
}

fn lapic_reg(regs: &[std::os::raw::c_char; 1024], offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char; 1024], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *byte as std::os::raw::c_char;
    }
}

/// LINT0 as ExtINT and LINT1 as NMI, as firmware leaves them.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(ctx("KVM_GET_LAPIC"))?;
    let with_mode = |reg: u32, mode: u32| (reg & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
    set_lapic_reg(&mut lapic.regs, APIC_LVT0, with_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
    set_lapic_reg(&mut lapic.regs, APIC_LVT1, with_mode(lvt1, APIC_MODE_NMI));
    vcpu.set_lapic(&lapic).map_err(ctx("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapic_register_round_trip() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set_lapic_reg(&mut regs, APIC_LVT0, 0x0001_0700);
        assert_eq!(lapic_reg(&regs, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&regs, APIC_LVT1), 0);
    }
}
