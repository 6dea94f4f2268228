//! The Intel MultiProcessor Specification 1.4 table.
//!
//! Without ACPI, this table is how the guest kernel finds its vCPUs, the
//! IO-APIC and the ISA interrupt routing. It is written into the EBDA, where
//! the kernel scans for the `_MP_` floating pointer. No maintained crate
//! writes MP tables (Firecracker and Cloud Hypervisor keep theirs in-tree),
//! so this one is ours; the layout is fixed by the specification.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, IRQ_MAX};

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than fit in the EBDA window.
    #[error("the MP table has room for {max} vCPUs, {requested} requested")]
    TooManyCpus {
        /// Largest supported count.
        max: u8,
        /// Requested count.
        requested: u8,
    },
    /// Guest memory write failed.
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// vCPUs that fit in the 1 KiB between `EBDA_START` and 640 KiB.
pub const MAX_CPUS: u8 = 32;

const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6 signature and the FPU + APIC feature flags, as QEMU reports.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LOCALINT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)).wrapping_neg()
}

/// Serializes the floating pointer and the configuration table for
/// `num_cpus` vCPUs, to be placed at `EBDA_START`.
pub fn build(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus { max: MAX_CPUS, requested: num_cpus });
    }
    let ioapic_id = num_cpus + 1;
    let table_addr = EBDA_START as u32 + 16;

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION]);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    // ISA IRQ n arrives on IO-APIC pin n, except IRQ 0 (the PIT), which KVM's
    // default routing wires to pin 2, like PC firmware does.
    for irq in 0..=IRQ_MAX as u8 {
        if irq == 2 {
            continue;
        }
        let pin = if irq == 0 { 2 } else { irq };
        entries.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, pin]);
        count += 1;
    }
    // LINT0 is ExtINT (the 8259), LINT1 is NMI, on every local APIC.
    entries.extend_from_slice(&[ENTRY_LOCALINT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCALINT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"KATALIKE");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(16 + table.len());
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr.to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(4); // spec revision
    floating.push(0); // checksum, below
    floating.extend_from_slice(&[0; 5]); // features: a configuration table is present
    floating[10] = checksum(&floating[..16]);
    floating.extend_from_slice(&table);
    Ok(floating)
}

/// Writes the MP table for `num_cpus` vCPUs at `EBDA_START`.
pub fn write(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_pointers_are_valid() {
        for cpus in [1, 2, MAX_CPUS] {
            let bytes = build(cpus).expect("table");
            assert!(EBDA_START as usize + bytes.len() <= 0xa0000, "{cpus} cpus fit below 640 KiB");
            assert_eq!(&bytes[0..4], b"_MP_");
            assert_eq!(sum(&bytes[..16]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
            assert_eq!(ptr as u64, EBDA_START + 16);
            let table = &bytes[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]);
            // cpus + bus + ioapic + 23 interrupts + 2 local interrupts
            assert_eq!(count, u16::from(cpus) + 1 + 1 + 23 + 2);
        }
    }

    #[test]
    fn only_the_first_cpu_boots() {
        let bytes = build(3).expect("table");
        let cpu = |n: usize| &bytes[16 + 44 + n * 20..16 + 44 + (n + 1) * 20];
        assert_eq!((cpu(0)[0], cpu(0)[1], cpu(0)[3]), (ENTRY_PROCESSOR, 0, 3));
        assert_eq!((cpu(2)[1], cpu(2)[3]), (2, 1));
    }

    #[test]
    fn cpu_count_is_bounded() {
        assert!(build(0).is_err());
        assert!(matches!(build(MAX_CPUS + 1), Err(MptableError::TooManyCpus { .. })));
    }
}
