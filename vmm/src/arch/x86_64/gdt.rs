//! The boot GDT: one table serves both boot protocols.
//!
//! | index | selector | descriptor                                   |
//! |-------|----------|----------------------------------------------|
//! | 0     | 0x00     | null                                         |
//! | 1     | 0x08     | 32-bit flat code (PVH entry)                 |
//! | 2     | 0x10     | 64-bit code (`__BOOT_CS` of the 64-bit boot) |
//! | 3     | 0x18     | flat data (`__BOOT_DS`)                      |
//! | 4     | 0x20     | 32-bit TSS, limit 0x67 (PVH requires an active TSS) |

use kvm_bindings::kvm_segment;

/// Index of the 32-bit code segment.
pub const CODE32_INDEX: u8 = 1;
/// Index of the 64-bit code segment.
pub const CODE64_INDEX: u8 = 2;
/// Index of the data segment.
pub const DATA_INDEX: u8 = 3;
/// Index of the TSS.
pub const TSS_INDEX: u8 = 4;

/// Builds a descriptor from the access/flags word (`flags`: bits 0-7 the
/// access byte, bits 12-15 the granularity/size nibble), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The table, in index order.
pub const BOOT_GDT: [u64; 5] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let raw = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff)) as u32;
    // With the granularity bit the limit counts 4 KiB pages.
    if entry & (1 << 55) != 0 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

fn bit(entry: u64, n: u32) -> u8 {
    ((entry >> n) & 1) as u8
}

/// The KVM segment register value for descriptor `index` of [`BOOT_GDT`].
pub fn segment(index: u8) -> kvm_segment {
    let entry = BOOT_GDT[usize::from(index)];
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(entry, 47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: bit(entry, 55),
        avl: bit(entry, 52),
        padding: 0,
        unusable: u8::from(bit(entry, 47) == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_well_known_encodings() {
        assert_eq!(BOOT_GDT[1], 0x00cf_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[4], 0x0000_8b00_0000_0067);
    }

    #[test]
    fn segments_decode_flat_4g() {
        let code32 = segment(CODE32_INDEX);
        assert_eq!((code32.base, code32.limit, code32.selector), (0, 0xffff_ffff, 0x08));
        assert_eq!((code32.db, code32.l, code32.type_, code32.present), (1, 0, 0xb, 1));
        let code64 = segment(CODE64_INDEX);
        assert_eq!((code64.l, code64.db, code64.selector), (1, 0, 0x10));
        let data = segment(DATA_INDEX);
        assert_eq!((data.type_, data.s, data.selector), (3, 1, 0x18));
        let tss = segment(TSS_INDEX);
        assert_eq!((tss.limit, tss.type_, tss.s, tss.g), (0x67, 0xb, 0, 0));
    }
}
