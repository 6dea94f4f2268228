//! Loading the kernel and initrd and writing the boot information.
//!
//! Two boot protocols:
//! * PVH: an uncompressed ELF `vmlinux` with a PVH note, mapped into guest
//!   RAM by [`super::vmlinux`], is entered in 32-bit protected mode with
//!   `%ebx` pointing at an `hvm_start_info`. This is the default: no
//!   decompressor runs in the (emulated, on nested hosts) guest.
//! * Linux 64-bit boot protocol: a bzImage (loaded by linux-loader) or an
//!   ELF without a PVH note is entered in long mode with `%rsi` pointing at
//!   `boot_params`.
//!
//! The initrd is mapped, not copied, like the vmlinux segments.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::BOOT_GDT;
use super::layout::*;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// xloadflags: the bzImage has a 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1;
const PAGE_SIZE: u64 = 0x1000;

/// Errors loading the kernel or initrd or writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened or read.
    #[error("kernel image {path}: {source}")]
    KernelOpen {
        /// Path of the kernel.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel is neither format we boot.
    #[error("kernel image {path} is not a loadable ELF vmlinux or bzImage: {reason}")]
    KernelFormat {
        /// Path of the kernel.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// The kernel does not fit in guest memory.
    #[error("kernel image {path} ends at {end:#x}, beyond the {ram_end:#x} bytes of low guest memory; give the VM more memory")]
    KernelTooLarge {
        /// Path of the kernel.
        path: PathBuf,
        /// End of the loaded kernel.
        end: u64,
        /// End of low RAM.
        ram_end: u64,
    },
    /// The initrd file cannot be opened or read.
    #[error("initrd {path}: {source}")]
    InitrdOpen {
        /// Path of the initrd.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The initrd does not fit between the kernel and the end of low RAM.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory above the kernel ({available} bytes free); give the VM more memory")]
    InitrdTooLarge {
        /// Path of the initrd.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Bytes available.
        available: u64,
    },
    /// The command line is invalid or too long.
    #[error("kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    /// Writing the boot information failed.
    #[error("writing boot parameters: {0}")]
    BootParams(#[from] linux_loader::configurator::Error),
    /// A guest memory access failed.
    #[error("writing boot data into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// Loading the command line failed.
    #[error("loading the kernel command line: {0}")]
    LoadCmdline(#[from] linux_loader::loader::Error),
}

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// 32-bit protected mode, `%ebx` = `hvm_start_info`.
    Pvh,
    /// 64-bit long mode, `%rsi` = `boot_params`.
    Linux64,
}

/// A kernel placed in guest memory.
#[derive(Clone, Debug)]
pub struct LoadedKernel {
    /// Entry point.
    pub entry: GuestAddress,
    /// Protocol to enter it with.
    pub protocol: BootProtocol,
    /// First byte after the kernel (including its BSS).
    pub end: u64,
    /// The bzImage setup header, if the kernel is a bzImage.
    setup_header: Option<setup_header>,
}

/// An initrd placed in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedInitrd {
    /// Where it starts.
    pub addr: GuestAddress,
    /// Its size in bytes.
    pub size: u64,
}

/// End of low RAM (below the MMIO gap) for a VM of `mem_size` bytes.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// Loads an ELF vmlinux (PVH entry when it has the note) or a bzImage.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path, mem_size: u64) -> Result<LoadedKernel, BootError> {
    let open_err = |source| BootError::KernelOpen { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(open_err)?;
    let mut magic = [0u8; 4];
    let is_elf = match file.read_exact(&mut magic) {
        Ok(()) => magic == *b"\x7fELF",
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
        Err(e) => return Err(open_err(e)),
    };
    let format_err = |reason: String| BootError::KernelFormat { path: path.to_path_buf(), reason };
    let high = Some(GuestAddress(HIGH_RAM_START));
    let ram_end = low_ram_end(mem_size);
    let kernel = if is_elf {
        let image = super::vmlinux::load(mem, &mut file, ram_end).map_err(|e| format_err(format!("ELF: {e}")))?;
        match image.pvh_entry {
            Some(entry) => LoadedKernel {
                entry: GuestAddress(entry),
                protocol: BootProtocol::Pvh,
                end: image.end,
                setup_header: None,
            },
            None => LoadedKernel {
                entry: GuestAddress(image.entry),
                protocol: BootProtocol::Linux64,
                end: image.end,
                setup_header: None,
            },
        }
    } else {
        let result = BzImage::load(mem, None, &mut file, high)
            .map_err(|e| format_err(format!("not ELF, and as a bzImage: {e}")))?;
        let header = result.setup_header.ok_or_else(|| format_err("bzImage without a setup header".into()))?;
        if header.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(format_err("bzImage has no 64-bit entry point (xloadflags)".into()));
        }
        LoadedKernel {
            entry: result.kernel_load.unchecked_add(0x200),
            protocol: BootProtocol::Linux64,
            end: result.kernel_end,
            setup_header: Some(header),
        }
    };
    if kernel.end > ram_end {
        return Err(BootError::KernelTooLarge { path: path.to_path_buf(), end: kernel.end, ram_end });
    }
    Ok(kernel)
}

/// Loads the initrd at the top of low RAM, page aligned, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
    mem_size: u64,
) -> Result<LoadedInitrd, BootError> {
    let open_err = |source| BootError::InitrdOpen { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let mut top = low_ram_end(mem_size);
    if let Some(header) = kernel.setup_header {
        if header.initrd_addr_max != 0 {
            top = top.min(u64::from(header.initrd_addr_max) + 1);
        }
    }
    let floor = kernel.end.next_multiple_of(PAGE_SIZE);
    let available = top.saturating_sub(floor);
    if size > available {
        return Err(BootError::InitrdTooLarge { path: path.to_path_buf(), size, available });
    }
    let addr = GuestAddress((top - size) & !(PAGE_SIZE - 1));
    crate::memory::map_file(mem, &file, 0, addr.0, size).map_err(|e| open_err(std::io::Error::other(e)))?;
    Ok(LoadedInitrd { addr, size })
}

/// The guest's RAM ranges as (start, length), for the e820/PVH memory map.
fn ram_map(mem_size: u64) -> Vec<(u64, u64)> {
    let low_end = low_ram_end(mem_size);
    let mut map = vec![(0, EBDA_START), (HIGH_RAM_START, low_end - HIGH_RAM_START)];
    if mem_size > MMIO_GAP_START {
        map.push((MMIO_GAP_END, mem_size - MMIO_GAP_START));
    }
    map
}

/// Writes the GDT, command line and protocol-specific boot information.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<LoadedInitrd>,
    mem_size: u64,
) -> Result<(), BootError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)?;
    let cmdline_size = cmdline.as_cstring()?.as_bytes_with_nul().len() as u32;
    match kernel.protocol {
        BootProtocol::Pvh => write_pvh_start_info(mem, initrd, mem_size),
        BootProtocol::Linux64 => {
            write_identity_map(mem)?;
            write_zero_page(mem, kernel, cmdline_size, initrd, mem_size)
        }
    }
}

fn write_pvh_start_info(mem: &GuestMemoryMmap, initrd: Option<LoadedInitrd>, mem_size: u64) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = ram_map(mem_size)
        .into_iter()
        .map(|(addr, size)| hvm_memmap_table_entry { addr, size, type_: E820_RAM, reserved: 0 })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { PVH_MODLIST_ADDR } else { 0 },
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_START_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry { paddr: initrd.addr.raw_value(), size: initrd.size, ..Default::default() };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams(&params, mem)?;
    Ok(())
}

/// Identity-maps the first 1 GiB with 2 MiB pages for the 64-bit entry.
fn write_identity_map(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    mem.write_obj(PDPT_ADDR | PRESENT_RW, GuestAddress(PML4_ADDR))?;
    mem.write_obj(PD_ADDR | PRESENT_RW, GuestAddress(PDPT_ADDR))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | PRESENT_RW | HUGE, GuestAddress(PD_ADDR + i * 8))?;
    }
    Ok(())
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_size: u32,
    initrd: Option<LoadedInitrd>,
    mem_size: u64,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(header) = kernel.setup_header {
        params.hdr = header;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_size;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr.raw_value() as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    for (i, (addr, size)) in ram_map(mem_size).into_iter().enumerate() {
        params.e820_table[i] = boot_e820_entry { addr, size, r#type: E820_RAM };
        params.e820_entries = i as u8 + 1;
    }
    let boot = BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams(&boot, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1 << 20;

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).expect("guest memory")
    }

    #[test]
    fn ram_map_skips_the_legacy_hole_and_the_mmio_gap() {
        assert_eq!(ram_map(128 * MIB), vec![(0, EBDA_START), (HIGH_RAM_START, 127 * MIB)]);
        let big = ram_map(4096 * MIB);
        assert_eq!(big[1], (HIGH_RAM_START, MMIO_GAP_START - HIGH_RAM_START));
        assert_eq!(big[2], (MMIO_GAP_END, 1024 * MIB));
    }

    #[test]
    fn missing_kernel_names_the_path() {
        let err = load_kernel(&mem(64 * MIB), Path::new("/nonexistent/vmlinux"), 64 * MIB).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    }

    #[test]
    fn garbage_kernel_is_rejected_with_the_reason() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(&[0x42; 8192]).expect("write");
        let err = load_kernel(&mem(64 * MIB), file.path(), 64 * MIB).unwrap_err();
        assert!(matches!(err, BootError::KernelFormat { .. }), "{err}");
        assert!(err.to_string().contains("bzImage"), "{err}");
    }

    #[test]
    fn truncated_elf_is_rejected() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(b"\x7fELF\x02\x01\x01").expect("write");
        let err = load_kernel(&mem(64 * MIB), file.path(), 64 * MIB).unwrap_err();
        assert!(err.to_string().contains("ELF"), "{err}");
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram() {
        let memory = mem(64 * MIB);
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(&[7u8; 10_000]).expect("write");
        let kernel = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            protocol: BootProtocol::Pvh,
            end: 0x200_0000,
            setup_header: None,
        };
        let initrd = load_initrd(&memory, file.path(), &kernel, 64 * MIB).expect("fits");
        assert_eq!(initrd.addr.raw_value() % PAGE_SIZE, 0);
        assert!(initrd.addr.raw_value() + initrd.size <= 64 * MIB);
        let byte: u8 = memory.read_obj(initrd.addr).expect("read");
        assert_eq!(byte, 7);
    }

    #[test]
    fn oversized_initrd_is_refused() {
        let memory = mem(64 * MIB);
        let file = tempfile::NamedTempFile::new().expect("temp file");
        file.as_file().set_len(40 * MIB).expect("grow");
        let kernel = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            protocol: BootProtocol::Pvh,
            end: 0x300_0000,
            setup_header: None,
        };
        let err = load_initrd(&memory, file.path(), &kernel, 64 * MIB).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooLarge { .. }), "{err}");
    }

    #[test]
    fn pvh_start_info_points_at_cmdline_memmap_and_initrd() {
        let memory = mem(64 * MIB);
        let kernel = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            protocol: BootProtocol::Pvh,
            end: 0x200_0000,
            setup_header: None,
        };
        let cmdline = Cmdline::try_from("console=ttyS0", CMDLINE_MAX_SIZE).expect("cmdline");
        let initrd = LoadedInitrd { addr: GuestAddress(0x300_0000), size: 4096 };
        write_boot_info(&memory, &kernel, &cmdline, Some(initrd), 64 * MIB).expect("boot info");
        let info: hvm_start_info = memory.read_obj(GuestAddress(PVH_START_INFO_ADDR)).expect("read");
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!((info.cmdline_paddr, info.memmap_entries, info.nr_modules), (CMDLINE_ADDR, 2, 1));
        let module: hvm_modlist_entry = memory.read_obj(GuestAddress(info.modlist_paddr)).expect("read");
        assert_eq!((module.paddr, module.size), (0x300_0000, 4096));
        let mut line = [0u8; 13];
        memory.read_slice(&mut line, GuestAddress(CMDLINE_ADDR)).expect("read");
        assert_eq!(&line, b"console=ttyS0");
    }
}
