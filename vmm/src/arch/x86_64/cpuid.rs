//! CPUID templates given to the guest with KVM_SET_CPUID2.
//!
//! * [`CpuTemplate::Conservative`] (default): an allow-list of features,
//!   intersected with what KVM supports. It hides every feature whose
//!   instructions the guest *kernel* would execute in ring 0 and that the
//!   instruction emulator of nested (PVM) KVM hosts cannot run: CX16
//!   (SLUB's cmpxchg16b), the XSAVE family (xrstor in FPU init), POPCNT
//!   (hweight), SMAP/SMEP (clac/stac), FSGSBASE, PCID/INVPCID, RDRAND/RDSEED,
//!   ERMS/FSRM (byte-wise `rep movsb`, slow to emulate), 3DNowPrefetch
//!   (prefetchw), AVX*, and the speculation-control and PMU interfaces. User
//!   space runs natively either way; it just sees fewer optional features.
//! * [`CpuTemplate::Host`]: what KVM supports, unchanged but for topology;
//!   for hosts with hardware virtualization.
//!
//! A feature missing from a leaf the allow-list does not name is off: the
//! template only grows when someone checks a feature is safe to expose.
//!
//! Some KVM hosts do not apply the template: nested PVM KVM forces leaves 1,
//! 7 and 0xD to the host's values (guest user space runs natively there, so
//! the host cannot hide them). [`hidden_but_visible`] finds the features
//! the template hides that KVM left visible; the VMM then hides them from
//! the guest kernel with `clearcpuid=`, which is what keeps the kernel off
//! instructions the emulator cannot run.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

pub use kata_like_vmm_contract::CpuTemplate;

const fn bits(list: &[u32]) -> u32 {
    let mut mask = 0;
    let mut i = 0;
    while i < list.len() {
        mask |= 1 << list[i];
        i += 1;
    }
    mask
}

/// Leaf 1 EDX: fpu vme de pse tsc msr pae cx8 apic sep pge cmov pat pse36
/// clflush mmx fxsr sse sse2 htt. Not: mce mtrr mca ds acpi ss tm pbe.
const LEAF1_EDX: u32 = bits(&[0, 1, 2, 3, 4, 5, 6, 8, 9, 11, 13, 15, 16, 17, 19, 23, 24, 25, 26, 28]);
/// Leaf 1 ECX: sse3 pclmulqdq ssse3 sse4.1 sse4.2 movbe aes (user-space only
/// in our kernel config), tsc-deadline, hypervisor.
const LEAF1_ECX: u32 = bits(&[0, 1, 9, 19, 20, 22, 24, 25, 31]);
/// Leaf 7.0 EBX: bmi1 bmi2 adx sha (user-space only).
const LEAF7_EBX: u32 = bits(&[3, 8, 19, 29]);
/// Leaf 6 EAX: ARAT (the local APIC timer keeps running in idle).
const LEAF6_EAX: u32 = bits(&[2]);
/// Leaf 0x8000_0001 ECX: lahf_lm.
const EXT1_ECX: u32 = bits(&[0]);
/// Leaf 0x8000_0001 EDX: the leaf-1 mirror bits plus syscall nx mmxext
/// pdpe1gb rdtscp lm.
const EXT1_EDX: u32 = (LEAF1_EDX & 0x0183_f3ff) | bits(&[11, 20, 22, 26, 27, 29]);
/// Leaf 0x8000_0007 EDX: invariant TSC.
const EXT7_EDX: u32 = bits(&[8]);
/// Leaf 0x8000_0008 EBX: XSAVEERPTR, "FXSAVE saves the error pointers". A
/// behaviour flag, not an instruction: without it Linux assumes AMD's
/// FXSAVE leak bug and runs fnclex/emms/fildl on every FPU restore, which
/// nested hosts cannot emulate.
const EXT8_EBX: u32 = bits(&[2]);
/// KVM paravirt features (leaf 0x4000_0001 EAX): clocksource, nop io delay,
/// clocksource2, PV EOI, clocksource stable. Not: async PF, steal time, PV
/// unhalt, poll control, sched yield, and no hypercall-based features (PV
/// send IPI, PV TLB flush): on nested PVM hosts the KVM_HC_SEND_IPI
/// hypercall never delivers, hanging SMP bring-up; IPIs through the
/// in-kernel LAPIC work everywhere.
const KVM_FEATURES: u32 = bits(&[0, 1, 3, 6, 24]);

const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;

/// Leaves kept (filtered) by the conservative template; others are zeroed.
fn conservative_filter(entry: &mut kvm_cpuid_entry2) {
    let keep = |entry: &mut kvm_cpuid_entry2, eax: u32, ebx: u32, ecx: u32, edx: u32| {
        entry.eax &= eax;
        entry.ebx &= ebx;
        entry.ecx &= ecx;
        entry.edx &= edx;
    };
    match (entry.function, entry.index) {
        // Vendor and maximum leaf.
        (0x0, _) | (0x8000_0000, _) => {}
        (0x1, _) => keep(entry, u32::MAX, u32::MAX, LEAF1_ECX, LEAF1_EDX),
        (0x6, _) => keep(entry, LEAF6_EAX, 0, 0, 0),
        // Max sub-leaf 0; no sub-leaf 1 features.
        (0x7, 0) => keep(entry, 0, LEAF7_EBX, 0, 0),
        // Cache and topology descriptions: informational, no instructions.
        (0x2 | 0x4 | 0xb | 0x8000_0005 | 0x8000_0006 | 0x8000_001d, _) => {}
        (0x8000_0001, _) => keep(entry, u32::MAX, u32::MAX, EXT1_ECX, EXT1_EDX),
        (0x8000_0002..=0x8000_0004, _) => {}
        (0x8000_0007, _) => keep(entry, 0, 0, 0, EXT7_EDX),
        // Address sizes; of EBX's AMD features only XSAVEERPTR.
        (0x8000_0008, _) => keep(entry, u32::MAX, EXT8_EBX, 0, 0),
        (KVM_CPUID_SIGNATURE, _) => {}
        (KVM_CPUID_FEATURES, _) => keep(entry, KVM_FEATURES, 0, 0, 0),
        _ => keep(entry, 0, 0, 0, 0),
    }
}

/// Builds the CPUID of vCPU `index` (of `count`) from KVM's supported CPUID.
pub fn vcpu_cpuid(template: CpuTemplate, supported: &CpuId, index: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        if template == CpuTemplate::Conservative {
            conservative_filter(entry);
        }
        apply_topology(entry, index, count);
    }
    cpuid
}

/// Per-vCPU identity: APIC IDs and logical processor counts.
fn apply_topology(entry: &mut kvm_cpuid_entry2, index: u8, count: u8) {
    match entry.function {
        0x1 => {
            // EBX[31:24] initial APIC ID, EBX[23:16] logical processors.
            entry.ebx = (entry.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
            if count > 1 {
                entry.edx |= 1 << 28;
            } else {
                entry.edx &= !(1 << 28);
            }
        }
        // x2APIC topology: EDX is the x2APIC ID of this vCPU.
        0xb | 0x1f => entry.edx = u32::from(index),
        _ => {}
    }
}

/// Linux capability words (arch/x86/include/asm/cpufeatures.h) by the CPUID
/// register they mirror: (leaf, sub-leaf, register index eax=0..edx=3, word).
const KERNEL_CAP_WORDS: [(u32, u32, usize, u32); 13] = [
    (0x1, 0, 3, 0),
    (0x8000_0001, 0, 3, 1),
    (0x1, 0, 2, 4),
    (0x8000_0001, 0, 2, 6),
    (0x7, 0, 1, 9),
    (0xd, 1, 0, 10),
    (0x7, 1, 0, 12),
    (0x8000_0008, 0, 1, 13),
    (0x6, 0, 0, 14),
    (0x8000_000a, 0, 3, 15),
    (0x7, 0, 2, 16),
    (0x8000_0007, 0, 1, 17),
    (0x7, 0, 3, 18),
];

fn register(cpuid: &CpuId, function: u32, index: u32, reg: usize) -> u32 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
        .map_or(0, |e| [e.eax, e.ebx, e.ecx, e.edx][reg])
}

/// Kernel capability bit numbers (for `clearcpuid=`) of features that
/// `wanted` hides but `effective` (read back with KVM_GET_CPUID2) shows.
pub fn hidden_but_visible(wanted: &CpuId, effective: &CpuId) -> Vec<u32> {
    let mut bits = Vec::new();
    for (function, index, reg, word) in KERNEL_CAP_WORDS {
        let extra = register(effective, function, index, reg) & !register(wanted, function, index, reg);
        bits.extend((0..32).filter(|bit| extra & (1 << bit) != 0).map(|bit| word * 32 + bit));
    }
    bits
}

/// Linux's capability number of XSAVE (leaf 1 ECX bit 26, word 4).
const CAP_XSAVE: u32 = 4 * 32 + 26;

/// glibc's settings that keep its string and memory functions off AVX
/// state, for [`user_vector_state_unprotected`] guests.
///
/// Clearing the AVX feature bits is not enough: glibc (2.36, Debian 12)
/// picks `memcpy`/`memmove` by its *preference* bit
/// `AVX_Fast_Unaligned_Load`, which the `-AVX*` entries leave set, so
/// every memcpy of more than 32 bytes still ran `__memmove_avx_unaligned_erms`
/// (ymm registers). In the guest a task switch loses the upper ymm halves,
/// and the agent's static glibc copied request buffers with NUL runs in
/// them: CreateContainer requests from about 5 KiB up failed to decode
/// ("control character (\u0000-\u001F) found", "Incorrect tag").
/// Checked with gdb on a static binary under these tunables: memcpy
/// resolves to `__memmove_sse2_unaligned_erms` only with the last entry.
pub const GLIBC_NO_AVX_TUNABLES: &str = "glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,\
-AVX_VNNI,-AVX_Fast_Unaligned_Load";

/// The host's XCR0 (enabled XSAVE state components), 0 without OSXSAVE.
pub fn host_xcr0() -> u64 {
    let leaf1 = std::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 27) == 0 {
        return 0;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV(0) is valid when CR4.OSXSAVE is set, which CPUID
    // leaf 1 ECX bit 27 reports; it only reads XCR0.
    unsafe { std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Whether guest user space can use vector state its kernel does not save
/// across task switches: XSAVE is hidden from the guest kernel (it switches
/// tasks with FXSAVE: x87 and SSE only), yet KVM left XSAVE visible, and
/// the host has AVX-class state enabled. Seen on nested PVM hosts on AMD,
/// where guest user code runs natively under the host's XCR0 and reads the
/// host's CPUID (no CPUID faulting): glibc then picks AVX-512 string
/// functions whose registers other tasks clobber, and programs crash at
/// random under concurrency.
pub fn user_vector_state_unprotected(hidden_bits: &[u32], host_xcr0: u64) -> bool {
    hidden_bits.contains(&CAP_XSAVE) && host_xcr0 & !0b11 != 0
}

/// Renders a CPUID table, one entry per line (for `--print-cpuid`).
pub fn render(cpuid: &CpuId) -> String {
    cpuid
        .as_slice()
        .iter()
        .map(|e| {
            format!(
                "{:08x}.{:x}: eax={:08x} ebx={:08x} ecx={:08x} edx={:08x}\n",
                e.function, e.index, e.eax, e.ebx, e.ecx, e.edx
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// The supported CPUID this project's nested (PVM) AMD hosts report.
    fn nested_amd_host() -> CpuId {
        CpuId::from_entries(&[
            entry(0x0, 0, [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            entry(0x1, 0, [0x00a0_0f11, 0x0102_0800, 0x8120_2000, 0x078b_fbff]),
            entry(0x7, 0, [0, 0x0180_0002, 0x4, 0xa800_0000]),
            entry(0xd, 0, [0x207, 0x988, 0x988, 0]),
            entry(0x8000_0001, 0, [0x00a0_0f11, 0x4000_0000, 0x0040_0393, 0x23d3_fbff]),
            entry(0x8000_0008, 0, [0x3030, 0x110a_d205, 0x7001, 0]),
            entry(KVM_CPUID_FEATURES, 0, [0x0100_7efb, 0, 0, 0]),
        ])
        .expect("small cpuid")
    }

    fn find(cpuid: &CpuId, function: u32) -> kvm_cpuid_entry2 {
        *cpuid.as_slice().iter().find(|e| e.function == function).expect("leaf present")
    }

    #[test]
    fn glibc_tunables_clear_every_avx_selector() {
        let list = GLIBC_NO_AVX_TUNABLES.strip_prefix("glibc.cpu.hwcaps=").expect("one hwcaps tunable");
        let entries: Vec<&str> = list.split(',').collect();
        // What glibc 2.36's ifunc selectors test before picking a ymm/zmm
        // variant: the usable AVX bits, and memmove's preference bit.
        for selector in ["-AVX", "-AVX2", "-AVX512F", "-AVX512VL", "-AVX512BW", "-AVX_Fast_Unaligned_Load"] {
            assert!(entries.contains(&selector), "{selector} missing from {GLIBC_NO_AVX_TUNABLES}");
        }
        assert!(entries.iter().all(|e| e.starts_with('-') && !e.contains(char::is_whitespace)), "{list}");
    }

    #[test]
    fn unswitched_vector_state_needs_xsave_hidden_and_avx_on_the_host() {
        assert!(user_vector_state_unprotected(&[12, CAP_XSAVE], 0xe7));
        assert!(!user_vector_state_unprotected(&[12, CAP_XSAVE], 0b11), "x87 and SSE only: FXSAVE covers it");
        assert!(!user_vector_state_unprotected(&[12], 0xe7), "KVM hid XSAVE itself (CPUID faulting)");
    }

    #[test]
    fn conservative_hides_what_the_emulator_cannot_run() {
        let cpuid = vcpu_cpuid(CpuTemplate::Conservative, &nested_amd_host(), 0, 1);
        let leaf1 = find(&cpuid, 0x1);
        for (bit, name) in [
            (13, "cx16"),
            (23, "popcnt"),
            (26, "xsave"),
            (27, "osxsave"),
            (28, "avx"),
            (30, "rdrand"),
            (21, "x2apic"),
            (17, "pcid"),
        ] {
            assert_eq!(leaf1.ecx & (1 << bit), 0, "{name} must be hidden");
        }
        assert_ne!(leaf1.ecx & (1 << 24), 0, "tsc-deadline timer is kept");
        assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor bit is kept");
        assert_eq!(leaf1.edx & (1 << 7), 0, "mce hidden");
        let leaf7 = find(&cpuid, 0x7);
        assert_eq!((leaf7.eax, leaf7.ebx & !LEAF7_EBX, leaf7.ecx, leaf7.edx), (0, 0, 0, 0));
        let xsave = find(&cpuid, 0xd);
        assert_eq!((xsave.eax, xsave.ebx, xsave.ecx, xsave.edx), (0, 0, 0, 0));
        let ext1 = find(&cpuid, 0x8000_0001);
        assert_eq!(ext1.ecx, 1, "only lahf_lm of the AMD extras");
        assert_ne!(ext1.edx & (1 << 29), 0, "long mode");
        assert_eq!(find(&cpuid, 0x8000_0008).ebx, 1 << 2, "only xsaveerptr");
        assert_eq!(find(&cpuid, KVM_CPUID_FEATURES).eax, 0x0100_004b);
    }

    #[test]
    fn host_template_passes_features_through() {
        let cpuid = vcpu_cpuid(CpuTemplate::Host, &nested_amd_host(), 0, 1);
        assert_ne!(find(&cpuid, 0x1).ecx & (1 << 13), 0);
        assert_eq!(find(&cpuid, 0xd).eax, 0x207);
    }

    #[test]
    fn topology_is_per_vcpu() {
        let cpuid = vcpu_cpuid(CpuTemplate::Conservative, &nested_amd_host(), 3, 4);
        let leaf1 = find(&cpuid, 0x1);
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_eq!(leaf1.ebx & 0xffff, 0x0800, "clflush size kept");
        assert_ne!(leaf1.edx & (1 << 28), 0, "htt with more than one vCPU");
    }

    #[test]
    fn features_kvm_kept_visible_become_clearcpuid_bits() {
        let wanted = vcpu_cpuid(CpuTemplate::Conservative, &nested_amd_host(), 0, 1);
        // What PVM hands back: leaf 1 ECX with popcnt (23), xsave (26), cx16
        // (13); leaf 7 EBX with fsgsbase (0) and smep (7); 0xd.1 xsaveopt.
        let mut effective = wanted.clone();
        for e in effective.as_mut_slice() {
            match e.function {
                0x1 => e.ecx |= (1 << 23) | (1 << 26) | (1 << 13),
                0x7 => e.ebx |= 1 | (1 << 7),
                _ => {}
            }
        }
        let mut bits = hidden_but_visible(&wanted, &effective);
        bits.sort_unstable();
        assert_eq!(bits, vec![4 * 32 + 13, 4 * 32 + 23, 4 * 32 + 26, 9 * 32, 9 * 32 + 7]);
        assert!(hidden_but_visible(&wanted, &wanted).is_empty(), "hardware KVM applies the template");
    }

    #[test]
    fn template_names_parse() {
        assert_eq!("host".parse::<CpuTemplate>(), Ok(CpuTemplate::Host));
        assert!("fast".parse::<CpuTemplate>().unwrap_err().contains("fast"));
    }
}
