//! Guest physical memory layout of a kata-like microVM on x86_64.
//!
//! ```text
//! 0x0000_0500  GDT (PVH and 64-bit boot)
//! 0x0000_6000  PVH hvm_start_info, module list, memory map
//! 0x0000_7000  Linux boot_params ("zero page", bzImage / 64-bit boot)
//! 0x0000_8ff0  boot stack (64-bit boot)
//! 0x0000_9000  identity page tables (64-bit boot)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (EBDA; reserved, not RAM)
//! 0x0010_0000  RAM continues; the kernel loads at its ELF address (16 MiB)
//!              ... initrd at the top of low RAM
//! 0xc000_0000  MMIO gap: boot timer, virtio-mmio devices, IO-APIC, LAPIC
//! 0x1_0000_0000 RAM above 4 GiB when the VM has more than 3 GiB
//! ```

/// GDT used at boot.
pub const GDT_ADDR: u64 = 0x500;
/// PVH `hvm_start_info`.
pub const PVH_START_INFO_ADDR: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_ADDR: u64 = 0x6100;
/// Linux `boot_params` for the 64-bit boot protocol.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the 64-bit boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the identity map used by the 64-bit boot protocol.
pub const PML4_ADDR: u64 = 0x9000;
/// PDPT of the identity map.
pub const PDPT_ADDR: u64 = 0xa000;
/// Page directory of the identity map (2 MiB pages, first 1 GiB).
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line the x86 kernel accepts (COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA, where the MP table lives; RAM below it.
pub const EBDA_START: u64 = 0x9fc00;
/// RAM resumes here after the legacy hole.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (no RAM in [gap start, 4 GiB)).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// The boot-timer device (Firecracker-style: the guest writes a magic byte).
pub const BOOT_TIMER_ADDR: u64 = 0xd000_0000;
/// Size of the boot-timer MMIO window.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// First virtio-mmio device; the next ones follow every `VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_1000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IO-APIC (in-kernel).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC (in-kernel).
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// TSS area for KVM on Intel hosts (KVM_SET_TSS_ADDR), in the MMIO gap.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// COM1 I/O ports and IRQ.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1 IRQ.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 keyboard controller ports (0x60..=0x64), used for guest reset.
pub const I8042_PORT: u16 = 0x60;
/// First IRQ handed to virtio-mmio devices.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last IRQ the IO-APIC has (24 pins).
pub const IRQ_MAX: u32 = 23;
/// Smallest guest memory we accept: the kernel loads at 16 MiB and needs
/// room above it for itself, its allocations and the initrd.
pub const MIN_MEMORY_MIB: u32 = 32;
