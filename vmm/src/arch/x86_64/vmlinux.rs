//! Loading an uncompressed ELF `vmlinux` by *mapping* its PT_LOAD segments
//! into guest RAM (see [`crate::memory::map_file`]) instead of copying them.
//!
//! linux-loader's `Elf` loader copies every segment, which here costs ~10 ms
//! of page faults before the first guest instruction and a private copy of
//! the kernel per VM; mapping costs neither. linux-loader's ELF type
//! definitions are used; the walk over program headers and the PVH note is
//! ours (linux-loader keeps its note parser private). Segments whose file
//! offset and address are not page-congruent are copied instead.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::elf::{Elf64_Ehdr, Elf64_Nhdr, Elf64_Phdr, PT_LOAD, PT_NOTE};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::memory;

const EM_X86_64: u16 = 62;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PAGE_SIZE: u64 = 4096;

/// What the loader learned from the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vmlinux {
    /// ELF entry point (64-bit boot protocol).
    pub entry: u64,
    /// PVH entry point from the Xen PHYS32_ENTRY note, if any.
    pub pvh_entry: Option<u64>,
    /// First byte after the highest segment (including BSS).
    pub end: u64,
}

fn read_obj<T: ByteValued + Default>(file: &mut File, offset: u64) -> Result<T, String> {
    let mut obj = T::default();
    file.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    file.read_exact(obj.as_mut_slice()).map_err(|e| format!("truncated at offset {offset:#x}: {e}"))?;
    Ok(obj)
}

fn check_header(ehdr: &Elf64_Ehdr) -> Result<(), String> {
    if ehdr.e_ident[..4] != *b"\x7fELF" {
        return Err("no ELF magic".into());
    }
    if ehdr.e_ident[4] != 2 || ehdr.e_ident[5] != 1 {
        return Err("not a 64-bit little-endian ELF".into());
    }
    if ehdr.e_machine != EM_X86_64 {
        return Err(format!("ELF machine {} is not x86-64", ehdr.e_machine));
    }
    if usize::from(ehdr.e_phentsize) != std::mem::size_of::<Elf64_Phdr>() {
        return Err(format!("unexpected program header size {}", ehdr.e_phentsize));
    }
    Ok(())
}

/// Finds the PVH entry in a PT_NOTE segment.
fn pvh_entry(file: &mut File, note: &Elf64_Phdr) -> Result<Option<u64>, String> {
    let align4 = |n: u32| u64::from(n).next_multiple_of(4);
    let mut at = note.p_offset;
    let end = note.p_offset.checked_add(note.p_filesz).ok_or("note segment overflows")?;
    while at + std::mem::size_of::<Elf64_Nhdr>() as u64 <= end {
        let nhdr: Elf64_Nhdr = read_obj(file, at)?;
        let name_at = at + std::mem::size_of::<Elf64_Nhdr>() as u64;
        let desc_at = name_at + align4(nhdr.n_namesz);
        if nhdr.n_type == XEN_ELFNOTE_PHYS32_ENTRY && nhdr.n_namesz == 4 {
            let name: [u8; 4] = read_obj(file, name_at)?;
            if name == *b"Xen\0" {
                return Ok(Some(if nhdr.n_descsz >= 8 {
                    read_obj::<u64>(file, desc_at)?
                } else {
                    u64::from(read_obj::<u32>(file, desc_at)?)
                }));
            }
        }
        at = desc_at + align4(nhdr.n_descsz);
    }
    Ok(None)
}

/// Maps (or copies) the segments of `file` into `mem` below `ram_end`.
pub fn load(mem: &GuestMemoryMmap, file: &mut File, ram_end: u64) -> Result<Vmlinux, String> {
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let ehdr: Elf64_Ehdr = read_obj(file, 0)?;
    check_header(&ehdr)?;
    let mut image = Vmlinux { entry: ehdr.e_entry, pvh_entry: None, end: 0 };
    // End of the last page a mapping replaced: a segment starting inside it
    // is copied, so two mappings never fight over one page.
    let mut mapped_until = 0u64;
    for i in 0..u64::from(ehdr.e_phnum) {
        let phdr: Elf64_Phdr = read_obj(file, ehdr.e_phoff + i * std::mem::size_of::<Elf64_Phdr>() as u64)?;
        match phdr.p_type {
            PT_NOTE if image.pvh_entry.is_none() => image.pvh_entry = pvh_entry(file, &phdr)?,
            PT_LOAD if phdr.p_filesz > 0 || phdr.p_memsz > 0 => {
                let mem_end = phdr.p_paddr.checked_add(phdr.p_memsz).ok_or("segment address overflows")?;
                let file_end = phdr.p_offset.checked_add(phdr.p_filesz).ok_or("segment offset overflows")?;
                if phdr.p_filesz > phdr.p_memsz || file_end > file_len {
                    return Err(format!("segment {i} lies outside the file"));
                }
                if mem_end > ram_end {
                    return Err(format!(
                        "segment {i} ends at {mem_end:#x}, beyond the {ram_end:#x} bytes of low guest memory"
                    ));
                }
                if phdr.p_offset % PAGE_SIZE == phdr.p_paddr % PAGE_SIZE && phdr.p_paddr >= mapped_until {
                    memory::map_file(mem, file, phdr.p_offset, phdr.p_paddr, phdr.p_filesz)
                        .map_err(|e| e.to_string())?;
                    mapped_until = (phdr.p_paddr + phdr.p_filesz).next_multiple_of(PAGE_SIZE);
                } else {
                    file.seek(SeekFrom::Start(phdr.p_offset)).map_err(|e| e.to_string())?;
                    mem.read_exact_volatile_from(GuestAddress(phdr.p_paddr), file, phdr.p_filesz as usize)
                        .map_err(|e| format!("segment {i}: {e}"))?;
                }
                // BSS (memsz beyond filesz) is fresh, zeroed guest RAM.
                image.end = image.end.max(mem_end);
            }
            _ => {}
        }
    }
    if image.end == 0 {
        return Err("no loadable segment".into());
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An ELF64 x86-64 image: one PT_LOAD of `data` at `paddr` (file offset
    /// `offset`), memsz `data.len() + bss`, and optionally a PVH note.
    fn image(offset: u64, paddr: u64, data: &[u8], bss: u64, pvh: Option<u32>) -> tempfile::NamedTempFile {
        let mut ehdr = Elf64_Ehdr::default();
        ehdr.e_ident[..6].copy_from_slice(b"\x7fELF\x02\x01");
        ehdr.e_machine = EM_X86_64;
        ehdr.e_entry = paddr;
        ehdr.e_phoff = 64;
        ehdr.e_phentsize = std::mem::size_of::<Elf64_Phdr>() as u16;
        ehdr.e_phnum = 2;
        let load = Elf64_Phdr {
            p_type: PT_LOAD,
            p_offset: offset,
            p_paddr: paddr,
            p_filesz: data.len() as u64,
            p_memsz: data.len() as u64 + bss,
            ..Default::default()
        };
        let mut note_bytes = Vec::new();
        if let Some(entry) = pvh {
            let nhdr = Elf64_Nhdr { n_namesz: 4, n_descsz: 4, n_type: XEN_ELFNOTE_PHYS32_ENTRY };
            note_bytes.extend_from_slice(nhdr.as_slice());
            note_bytes.extend_from_slice(b"Xen\0");
            note_bytes.extend_from_slice(&entry.to_le_bytes());
        }
        let note =
            Elf64_Phdr { p_type: PT_NOTE, p_offset: 0x400, p_filesz: note_bytes.len() as u64, ..Default::default() };
        let mut bytes = vec![0u8; (offset as usize + data.len()).max(0x1000) + 0x1000];
        bytes[..64].copy_from_slice(ehdr.as_slice());
        bytes[64..120].copy_from_slice(load.as_slice());
        bytes[120..176].copy_from_slice(note.as_slice());
        bytes[0x400..0x400 + note_bytes.len()].copy_from_slice(&note_bytes);
        bytes[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        // Bytes after the segment in the file must not reach the guest.
        bytes[offset as usize + data.len()] = 0xee;
        let mut file = tempfile::NamedTempFile::new().expect("tmp");
        file.write_all(&bytes).expect("write");
        file
    }

    fn mem() -> GuestMemoryMmap {
        crate::memory::create(64 << 20).expect("memory")
    }

    #[test]
    fn maps_segments_and_finds_the_pvh_entry() {
        let mem = mem();
        let file = image(0x1000, 0x100_0000, b"kernel text", 0x3000, Some(0x100_0040));
        let image = load(&mem, &mut file.reopen().expect("open"), 64 << 20).expect("load");
        assert_eq!(image, Vmlinux { entry: 0x100_0000, pvh_entry: Some(0x100_0040), end: 0x100_0000 + 11 + 0x3000 });
        let mut got = [0u8; 12];
        mem.read_slice(&mut got, GuestAddress(0x100_0000)).expect("read");
        assert_eq!(&got, b"kernel text\0", "the byte after the segment is zero, not 0xee");
    }

    #[test]
    fn unaligned_segments_are_copied() {
        let mem = mem();
        let file = image(0x1010, 0x100_0000, b"abc", 0, None);
        let image = load(&mem, &mut file.reopen().expect("open"), 64 << 20).expect("load");
        assert_eq!(image.pvh_entry, None);
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(0x100_0000)).expect("read");
        assert_eq!(&got, b"abc\0");
    }

    #[test]
    fn hostile_headers_are_refused() {
        let mem = mem();
        let too_high = image(0x1000, 0x3ff_f000, b"x", 0x10_0000, None);
        let err = load(&mem, &mut too_high.reopen().expect("open"), 64 << 20).unwrap_err();
        assert!(err.contains("beyond"), "{err}");
        let mut truncated = tempfile::NamedTempFile::new().expect("tmp");
        truncated.write_all(b"\x7fELF\x02\x01\x01").expect("write");
        assert!(load(&mem, &mut truncated.reopen().expect("open"), 64 << 20).unwrap_err().contains("truncated"));
    }
}
