//! The virtiofsd child of a sandbox: the real virtiofsd (crates.io),
//! sharing one host directory with the guest over vhost-user.
//!
//! * Sandbox: `--sandbox=namespace` (its own mount, PID and network
//!   namespaces, pivoted into the shared directory), so it can only see the
//!   shared directory. It works here as root.
//! * Cache: `--cache=auto` by default (configurable): the guest caches
//!   attributes and data for a short time and revalidates on open, the
//!   trade-off Kata also makes; `never` would send every read through the
//!   emulated guest kernel and virtiofsd again, which costs us far more
//!   than on real hardware. Container rootfs are only written from the
//!   guest, so close-to-open consistency is enough. virtiofsd's `auto`
//!   leaves out `FOPEN_KEEP_CACHE`, which made the guest drop a file's
//!   page cache at every open (every exec re-read its binary and
//!   libraries); our guest kernel keeps it when the attributes fetched at
//!   open show the file unchanged (guest-kernel patch 0008).
//! * Extended attributes: `--xattr` with [`XATTR_MAP`], so file
//!   capabilities (`security.capability`, e.g. Debian's `ping`), POSIX ACLs
//!   and `user.*` attributes work in containers as under runc; every other
//!   name (`trusted.*`, `security.selinux`, IMA/EVM) is refused to the guest
//!   and hidden from it. What this means for the host: docs/security.md.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// virtiofsd's `--xattrmap`: the extended attributes the guest may see and
/// set, passed through unchanged; all others are refused.
pub const XATTR_MAP: &str = ":ok:all:user.:: :ok:all:security.capability:: :ok:all:system.posix_acl_access:: \
                             :ok:all:system.posix_acl_default:: :bad:all:::";

/// What virtiofsd shares and how.
#[derive(Clone, Debug)]
pub struct SharedFs {
    /// The virtiofsd binary.
    pub virtiofsd: PathBuf,
    /// The host directory the guest sees.
    pub dir: PathBuf,
    /// The guest's mount tag.
    pub tag: String,
    /// `--cache` mode.
    pub cache: String,
    /// Further virtiofsd arguments.
    pub extra_args: Vec<String>,
}

/// How long virtiofsd may take to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Refuses a socket path the kernel cannot bind.
pub fn check_socket_path(socket: &Path) -> Result<(), String> {
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "socket path {} is {len} bytes; Unix sockets allow {MAX_SOCKET_PATH} (use a shorter state_root)",
            socket.display()
        ));
    }
    Ok(())
}

/// Starts virtiofsd on `socket`, logging to `log`, and waits for its socket.
pub fn start(
    fs: &SharedFs,
    socket: &Path,
    log: &Path,
    cgroup: Option<&crate::vm::cgroup::HostCgroup>,
) -> Result<Child, String> {
    check_socket_path(socket)?;
    if !fs.virtiofsd.exists() {
        return Err(format!(
            "virtiofsd {} does not exist (scripts/setup.sh installs it; or set virtiofsd in the config)",
            fs.virtiofsd.display()
        ));
    }
    if !fs.dir.is_dir() {
        return Err(format!("shared directory {} does not exist", fs.dir.display()));
    }
    let log_file = std::fs::File::create(log).map_err(|e| format!("virtiofsd log {}: {e}", log.display()))?;
    let _ = std::fs::remove_file(socket);
    let mut command = Command::new(&fs.virtiofsd);
    command
        .arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", fs.dir.display()))
        .arg(format!("--cache={}", fs.cache))
        .arg("--sandbox=namespace")
        .arg("--xattr")
        .arg(format!("--xattrmap={XATTR_MAP}"))
        .args(&fs.extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    if let Some(cgroup) = cgroup {
        cgroup.join_on_exec(&mut command);
    }
    let mut child =
        crate::vm::child::spawn_tied(command).map_err(|e| format!("cannot start {}: {e}", fs.virtiofsd.display()))?;
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    while !socket.exists() {
        if let Ok(Some(status)) = crate::vm::child::try_wait(&mut child) {
            return Err(format!(
                "virtiofsd exited ({status}) before creating its socket: {}",
                super::log::tail(log, 5)
            ));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = crate::vm::child::wait(&mut child);
            return Err(format!("virtiofsd did not create {} within {SOCKET_TIMEOUT:?}", socket.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}
