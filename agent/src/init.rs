//! What the agent does as the guest's init before serving: the file systems
//! every later step expects, and the boot-timer marker.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use kata_like_protocol::{BOOT_TIMER_CMDLINE_KEY, BOOT_TIMER_MAGIC};
use nix::mount::{mount, MsFlags};

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// The guest's base mounts, in order. The initramfs root stays writable.
fn base_mounts() -> [Mount; 8] {
    [
        Mount { source: "proc", target: "/proc", fstype: "proc", flags: NOSUID_NODEV_NOEXEC, data: None },
        Mount { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NOSUID_NODEV_NOEXEC, data: None },
        Mount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        Mount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
            data: Some("newinstance,ptmxmode=0666,mode=0620"),
        },
        Mount {
            source: "shm",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
            data: Some("mode=1777"),
        },
        Mount {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
            data: Some("mode=1777"),
        },
        Mount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
            data: Some("mode=0755"),
        },
        Mount {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: NOSUID_NODEV_NOEXEC,
            data: Some("nsdelegate"),
        },
    ]
}

/// Mounts the base file systems. A failure is logged and boot goes on: the
/// agent can still answer and report what is missing.
pub fn mount_base() {
    for m in base_mounts() {
        if let Err(e) = std::fs::create_dir_all(m.target) {
            tracing::error!(target = m.target, error = %e, "cannot create mount point");
            continue;
        }
        if let Err(e) = mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            tracing::error!(target = m.target, fstype = m.fstype, error = %e, "mount failed");
        }
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        if !Path::new(link).exists() {
            let _ = std::os::unix::fs::symlink(target, link);
        }
    }
}

/// Parses the boot-timer address, hex with or without `0x`.
pub fn parse_addr(value: &str) -> Option<u64> {
    u64::from_str_radix(value.strip_prefix("0x").unwrap_or(value), 16).ok()
}

/// Writes the boot-timer marker so the VMM logs when user space started.
///
/// The marker is a store to the device page mapped from /dev/mem (read and
/// write on /dev/mem refuse non-RAM addresses); the store traps to the VMM as
/// an MMIO write, the same as Firecracker's boot timer.
///
/// It runs before /proc is mounted: the kernel passes unknown `key=value`
/// command-line parameters to init as environment variables, which is where
/// the address comes from. Logging is not set up yet, so a failure goes to
/// stderr (the console).
pub fn signal_boot_timer() {
    let Some(addr) = std::env::var(BOOT_TIMER_CMDLINE_KEY).ok().and_then(|v| parse_addr(&v)) else { return };
    if let Err(e) = write_mmio_byte(addr, BOOT_TIMER_MAGIC) {
        eprintln!("kata-like-agent: cannot write the boot-timer marker at {addr:#x}: {e}");
    }
}

fn write_mmio_byte(addr: u64, value: u8) -> std::io::Result<()> {
    let page_size = 4096u64;
    let page = addr & !(page_size - 1);
    let mem = OpenOptions::new().read(true).write(true).custom_flags(libc::O_SYNC).open("/dev/mem")?;
    let offset = libc::off_t::try_from(page).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a fresh shared mapping of one page of /dev/mem; we check the
    // result before use and unmap it before returning.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page_size as usize,
            libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            offset,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `ptr` maps a whole page and `addr - page` is inside it; a
    // volatile store because the target is a device register.
    unsafe {
        std::ptr::write_volatile(ptr.cast::<u8>().add((addr - page) as usize), value);
        libc::munmap(ptr, page_size as usize);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_timer_address_parses_with_or_without_prefix() {
        assert_eq!(parse_addr("0xd0000000"), Some(0xd000_0000));
        assert_eq!(parse_addr("d0000000"), Some(0xd000_0000));
        assert_eq!(parse_addr("zz"), None);
        assert_eq!(parse_addr(""), None);
    }

    #[test]
    fn the_key_reaches_init_as_an_environment_variable() {
        // The kernel keeps parameters with a '.' for modules instead.
        assert!(!BOOT_TIMER_CMDLINE_KEY.contains('.'));
    }

    #[test]
    fn base_mounts_cover_what_containers_need() {
        let targets: Vec<&str> = base_mounts().iter().map(|m| m.target).collect();
        for needed in ["/proc", "/sys", "/dev", "/dev/pts", "/tmp", "/run", "/sys/fs/cgroup"] {
            assert!(targets.contains(&needed), "{needed}");
        }
        let dev = targets.iter().position(|t| *t == "/dev").expect("/dev");
        let pts = targets.iter().position(|t| *t == "/dev/pts").expect("/dev/pts");
        assert!(dev < pts, "/dev before /dev/pts");
    }
}
