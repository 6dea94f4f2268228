//! A container's own devpts instance, mounted by the agent.
//!
//! runc opens a terminal container's pty inside the container's devpts
//! (after its mounts), so `tty` there prints `/dev/pts/0`. The agent opens
//! ptys before the container's process exists, so it mounts the instance
//! the spec asks for at /dev/pts itself, in its own namespace (with the
//! spec's options), binds that instance at the container's /dev/pts in
//! place of the spec's mount, and opens the container's ptys (the init's
//! and every exec's) from its ptmx. A pty is then /dev/pts/N inside the
//! container, and containers of one pod do not see each other's ptys.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::MntFlags;
use oci_spec::runtime::Spec;

use super::mounts::parse_options;

/// Where the agent mounts containers' devpts instances.
const ROOT: &str = "/run/kata-like-agent/pts";

/// If `spec` mounts devpts at /dev/pts: mounts an instance for container
/// `id` with the spec's options and turns that spec mount into a bind of
/// it. Returns the instance's directory.
pub fn prepare(id: &str, spec: &mut Spec) -> Result<Option<PathBuf>, String> {
    let Some(mut mounts) = spec.mounts().clone() else { return Ok(None) };
    let Some(m) =
        mounts.iter_mut().find(|m| m.destination() == Path::new("/dev/pts") && m.typ().as_deref() == Some("devpts"))
    else {
        return Ok(None);
    };
    let options = m.options().clone().unwrap_or_default();
    let parsed = parse_options(&options);
    let dir = Path::new(ROOT).join(id);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Every devpts mount is a new instance (Linux ≥ 4.7); `newinstance`
    // in the data is accepted and changes nothing.
    nix::mount::mount(Some("devpts"), &dir, Some("devpts"), parsed.flags, Some(parsed.data.as_str())).map_err(|e| {
        let _ = std::fs::remove_dir(&dir);
        format!("mounting devpts for /dev/pts ({}): {e}", options.join(","))
    })?;
    // The bind keeps the spec's flags (nosuid, noexec) on the container's
    // view; the instance's own options were set above.
    let mut bind = vec!["bind".to_string()];
    bind.extend(options.iter().filter(|o| matches!(o.as_str(), "nosuid" | "noexec" | "nodev" | "ro")).cloned());
    m.set_typ(Some("bind".into()));
    m.set_source(Some(dir.clone()));
    m.set_options(Some(bind));
    spec.set_mounts(Some(mounts));
    Ok(Some(dir))
}

/// A new pty: from the container's devpts instance `pts` if it has one,
/// else the agent's. Returns (master, slave, the slave's path).
pub fn open(pts: Option<&Path>) -> Result<(OwnedFd, OwnedFd, PathBuf), String> {
    let Some(dir) = pts else {
        let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
        let path = nix::unistd::ttyname(&pty.slave).map_err(|e| format!("ttyname: {e}"))?;
        return Ok((pty.master, pty.slave, path));
    };
    let ptmx = dir.join("ptmx");
    let master: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&ptmx)
        .map_err(|e| format!("{}: {e}", ptmx.display()))?
        .into();
    let mut unlock: libc::c_int = 0;
    let mut number: libc::c_uint = 0;
    // SAFETY: TIOCSPTLCK reads one int and TIOCGPTN writes one unsigned
    // int, both from/to locals that outlive the calls; `master` is open.
    let failed = unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) < 0
            || libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut number) < 0
    };
    if failed {
        return Err(format!("unlocking a pty of {}: {}", ptmx.display(), std::io::Error::last_os_error()));
    }
    let path = dir.join(number.to_string());
    let slave: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .into();
    Ok((master, slave, path))
}

/// Unmounts and removes a container's devpts instance (the container's own
/// bind of it went with its mount namespace).
pub fn release(dir: &Path) {
    if let Err(e) = nix::mount::umount2(dir, MntFlags::MNT_DETACH) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot unmount a container's devpts");
    }
    let _ = std::fs::remove_dir(dir);
}
