//! The host side of virtio-net: a Linux tap device with virtio-net headers
//! (`IFF_VNET_HDR`), so frames move between the tap and the virtqueues
//! without translation.
//!
//! Written here rather than taken from a crate: the tap crates on crates.io
//! (`tun`, `tun-tap`, `tidy-tuntap`) either hide the fd behind an async
//! runtime or do not set the vnet header size, and what we need is four
//! ioctls on a file descriptor (Firecracker and Cloud Hypervisor keep theirs
//! in-tree for the same reason).
//!
//! The tap lives in the pod's network namespace. The shim opens it there and
//! passes the descriptor ([`Tap::from_fd`]), so the VMM needs neither the
//! namespace nor CAP_NET_ADMIN; [`Tap::open`] attaches by name in the
//! VMM's own namespace (standalone use, tests).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;

/// Errors setting up the tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// /dev/net/tun cannot be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(io::Error),
    /// The interface name is unusable.
    #[error("tap name {0:?} must be 1 to 15 bytes without '/' or NUL")]
    BadName(String),
    /// An ioctl failed.
    #[error("tap {what} failed: {source}")]
    Ioctl {
        /// The ioctl.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The descriptor is not a tap with virtio-net headers.
    #[error("fd {fd} is not a tap device with IFF_VNET_HDR and IFF_NO_PI (flags {flags:#x})")]
    NotVnetTap {
        /// The descriptor.
        fd: RawFd,
        /// Its TUNGETIFF flags.
        flags: i32,
    },
}

/// An open tap queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn ioctl_err(what: &'static str) -> impl FnOnce(io::Error) -> TapError {
    move |source| TapError::Ioctl { what, source }
}

/// Runs `ioctl(fd, request, arg)`.
fn ioctl<T>(fd: RawFd, request: libc::Ioctl, arg: *mut T) -> io::Result<()> {
    // SAFETY: every caller passes a request whose argument type is `T`
    // (ifreq or c_int) and a pointer to a live, properly sized value.
    let rc = unsafe { libc::ioctl(fd, request, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn ifreq(name: &str, flags: i32) -> libc::ifreq {
    // SAFETY: ifreq is plain data (arrays and a union of integers and
    // pointers); all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    req
}

impl Tap {
    /// Attaches to (or creates) tap `name` in this process's namespace.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0']) {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = ifreq(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req).map_err(ioctl_err("TUNSETIFF"))?;
        Tap::configure(file)
    }

    /// Takes over an open tap descriptor (opened by the shim in the pod's
    /// network namespace with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, TapError> {
        Tap::configure(File::from(fd))
    }

    fn configure(file: File) -> Result<Tap, TapError> {
        let fd = file.as_raw_fd();
        let mut req = ifreq("", 0);
        ioctl(fd, libc::TUNGETIFF, &mut req).map_err(ioctl_err("TUNGETIFF"))?;
        // SAFETY: TUNGETIFF filled in the flags member of the union.
        let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
        let wanted = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if flags & wanted != wanted {
            return Err(TapError::NotVnetTap { fd, flags });
        }
        let name: String = req.ifr_name.iter().take_while(|&&c| c != 0).map(|&c| c as u8 as char).collect();
        // virtio 1.x headers carry num_buffers: 12 bytes, not the legacy 10.
        let mut size = VNET_HDR_LEN as libc::c_int;
        ioctl(fd, libc::TUNSETVNETHDRSZ, &mut size).map_err(ioctl_err("TUNSETVNETHDRSZ"))?;
        // No offloads: we offer the guest none, so every frame the tap hands
        // us is complete and checksummed, and we accept no GSO from it.
        // SAFETY: TUNSETOFFLOAD takes its argument by value; 0 is "none".
        let rc = unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
        if rc < 0 {
            return Err(TapError::Ioctl { what: "TUNSETOFFLOAD", source: io::Error::last_os_error() });
        }
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(TapError::Ioctl { what: "fcntl(O_NONBLOCK)", source: io::Error::last_os_error() });
            }
        }
        Ok(Tap { file, name })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor, to hand to a VMM (`--net fd=N`).
    pub fn into_fd(self) -> OwnedFd {
        OwnedFd::from(self.file)
    }
}

impl super::device::Backend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let n = self.file.write(frame)?;
        if n != frame.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, format!("tap took {n} of {} bytes", frame.len())));
        }
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_ioctl() {
        for bad in ["", "a/b", "sixteen-bytes-xx", "nul\0"] {
            assert!(matches!(Tap::open(bad), Err(TapError::BadName(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_descriptor_that_is_not_a_tap_is_refused() {
        let file = File::open("/dev/null").expect("open");
        let err = Tap::from_fd(OwnedFd::from(file)).unwrap_err();
        assert!(matches!(err, TapError::Ioctl { what: "TUNGETIFF", .. }), "{err}");
    }

    #[test]
    fn a_vnet_tap_is_configured_when_tun_is_usable() {
        // Creating a tap needs CAP_NET_ADMIN and /dev/net/tun; without them
        // this test has nothing to check and says so.
        let name = format!("kltest{}", std::process::id() % 100_000);
        match Tap::open(&name) {
            Ok(tap) => assert_eq!(tap.name(), name),
            Err(TapError::OpenTun(e)) => eprintln!("skipped: /dev/net/tun unavailable: {e}"),
            Err(TapError::Ioctl { what: "TUNSETIFF", source }) => eprintln!("skipped: cannot create a tap: {source}"),
            Err(e) => panic!("{e}"),
        }
    }
}

/// A Unix datagram socket as the network side: it keeps frame boundaries
/// as a tap does. The tap's stand-in in unit tests and fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Debug)]
pub struct DatagramBackend(pub std::os::unix::net::UnixDatagram);

#[cfg(any(test, feature = "fuzzing"))]
impl super::Backend for DatagramBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.0.send(frame).map(drop)
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }
}
