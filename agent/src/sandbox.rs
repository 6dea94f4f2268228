//! SetupSandbox: what the host gives a fresh guest before its first
//! container — entropy (the guest has no hardware RNG on our hosts, so its
//! CRNG would never initialise and getrandom() in containers would block),
//! the wall clock, the shared file system and the hostname.

use std::path::Path;

use kata_like_protocol::agent::{RestoredRequest, SetupSandboxRequest};

/// Where the shared file system (containers' rootfs) is mounted.
pub const SHARED_MOUNT: &str = kata_like_protocol::GUEST_SHARED_MOUNT;

/// Credits `entropy` to the kernel's pool (RNDADDENTROPY).
fn add_entropy(entropy: &[u8]) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    if entropy.is_empty() {
        return Ok(());
    }
    if entropy.len() > 4096 {
        return Err(format!("entropy: at most 4096 bytes, got {}", entropy.len()));
    }
    let random =
        std::fs::OpenOptions::new().write(true).open("/dev/random").map_err(|e| format!("/dev/random: {e}"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    info.extend_from_slice(entropy);
    info.resize(info.len().next_multiple_of(4), 0);
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    // SAFETY: the ioctl reads a rand_pool_info of the declared size from
    // `info`, which is that long and alive for the call.
    let r = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if r < 0 {
        return Err(format!("RNDADDENTROPY: {}", std::io::Error::last_os_error()));
    }
    // Once the CRNG is initialised, new input only reaches it at the next
    // scheduled reseed (up to a minute later); VMs restored from one
    // snapshot would share their random output until then. Reseed now.
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let r = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) };
    if r < 0 {
        return Err(format!("RNDRESEEDCRNG: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn set_clock(realtime_ns: u64) -> Result<(), String> {
    if realtime_ns == 0 {
        return Ok(());
    }
    let ts = nix::sys::time::TimeSpec::new((realtime_ns / 1_000_000_000) as i64, (realtime_ns % 1_000_000_000) as i64);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).map_err(|e| format!("set the clock: {e}"))
}

/// Applies a Restored request: fresh entropy (required: a restored guest
/// must not keep the snapshot's RNG state) and the wall clock.
pub fn restored(req: &RestoredRequest) -> Result<(), String> {
    if req.entropy.len() < 32 {
        return Err(format!("Restored needs at least 32 bytes of entropy, got {}", req.entropy.len()));
    }
    add_entropy(&req.entropy)?;
    set_clock(req.realtime_ns)?;
    tracing::info!("restored from a snapshot: RNG reseeded, clock set");
    Ok(())
}

/// Applies a SetupSandbox request.
pub fn setup(req: &SetupSandboxRequest, shared_root: &Path) -> Result<(), String> {
    add_entropy(&req.entropy)?;
    set_clock(req.realtime_ns)?;
    if let Err(e) = crate::network::loopback_up() {
        tracing::warn!(error = %e, "loopback stays down");
    }
    if !req.hostname.is_empty() {
        nix::unistd::sethostname(&req.hostname).map_err(|e| format!("hostname {:?}: {e}", req.hostname))?;
    }
    if !req.shared_fs_tag.is_empty() {
        std::fs::create_dir_all(shared_root).map_err(|e| format!("{}: {e}", shared_root.display()))?;
        if !crate::storage::mounted(shared_root) {
            nix::mount::mount(
                Some(req.shared_fs_tag.as_str()),
                shared_root,
                Some("virtiofs"),
                // No nosuid/nodev here: the share holds the containers'
                // rootfs, where setuid binaries must work as under runc;
                // each container's mounts carry the options its spec says.
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|e| format!("mount virtio-fs tag {:?} on {}: {e}", req.shared_fs_tag, shared_root.display()))?;
        }
    }
    tracing::info!(entropy = req.entropy.len(), shared = req.shared_fs_tag, "sandbox set up");
    Ok(())
}
