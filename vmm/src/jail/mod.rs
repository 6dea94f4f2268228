//! Confinement of the VMM process: the jail it enters once the VM is built,
//! and the seccomp filter each of its threads installs ([`seccomp`]).
//!
//! The jail is Firecracker's jailer done in-process, after the VM is built
//! and before any guest code runs:
//!
//! 1. new mount, network, IPC and UTS namespaces (the VMM needs no network:
//!    its taps are already open, its sockets are path-bound Unix sockets);
//! 2. a fresh tmpfs root holding only what the running VMM still opens by
//!    path — its own writable directory (vsock socket, guest-initiated
//!    vsock connections `<uds>_<port>`, control socket, snapshots, the RIP
//!    profile) and the kernel's System.map (read-only, for fault reports);
//!    everything else the VM needs (`/dev/kvm`, kernel, initrd, virtiofsd
//!    sockets, taps, snapshot files being restored, the console) was opened
//!    by the build and stays reachable only through those descriptors;
//! 3. `pivot_root` into it, the old root detached;
//! 4. an unprivileged uid/gid, no supplementary groups, every capability
//!    gone (bounding, ambient, effective, permitted, inheritable),
//!    `no_new_privs`, not dumpable, no core files; the parent-death signal
//!    is set again (a credential change clears it).
//!
//! Doing it in-process instead of in a separate jailer binary that execs
//! the VMM: the VMM is dynamically linked, so a jail entered before exec
//! would need the loader and libraries copied in, and the build step needs
//! `/dev/kvm`, the kernel and virtiofsd's socket anyway. The only input
//! handled before the jail is the host's own (configuration, kernel,
//! snapshot); guest input starts with the first KVM_RUN, after it.

pub mod seccomp;

use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Where and as whom the VMM is jailed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailConfig {
    /// An empty directory the jail's root file system is mounted on (in
    /// the VMM's own mount namespace only; the host sees it empty).
    pub root: PathBuf,
    /// The user the VMM runs as.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

/// What the jail holds: paths bound at their host paths, so the VMM's
/// configuration stays valid inside.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JailContents {
    /// Files or directories bound read-only.
    pub read_only: Vec<PathBuf>,
    /// Directories bound read-write.
    pub writable: Vec<PathBuf>,
}

impl JailContents {
    fn add(list: &mut Vec<PathBuf>, path: PathBuf) {
        if !list.contains(&path) {
            list.push(path);
        }
    }

    /// Adds a read-only file or directory (once).
    pub fn read_only(&mut self, path: impl Into<PathBuf>) {
        Self::add(&mut self.read_only, path.into());
    }

    /// Adds a writable directory (once).
    pub fn writable(&mut self, path: impl Into<PathBuf>) {
        Self::add(&mut self.writable, path.into());
    }

    /// Whether `path` lies in one of the writable directories.
    pub fn is_writable(&self, path: &Path) -> bool {
        self.writable.iter().any(|dir| path.starts_with(dir))
    }
}

/// What the jail the VMM entered holds, for the control socket to refuse
/// snapshot paths outside it with a clear message.
static ENTERED: std::sync::OnceLock<JailContents> = std::sync::OnceLock::new();

/// Records what the jail holds (once, after [`enter`]).
pub fn set_entered(contents: JailContents) {
    let _ = ENTERED.set(contents);
}

/// Whether this VMM can write at `path`: always when it is not jailed.
pub fn may_write(path: &Path) -> Result<(), String> {
    match ENTERED.get() {
        Some(jail) if !jail.is_writable(path) => Err(format!(
            "{} is outside the VMM's jail; it can write only below {}",
            path.display(),
            jail.writable.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        )),
        _ => Ok(()),
    }
}

/// Why the VMM could not enter its jail. Each names the step.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A system call of the jail set-up failed.
    #[error("jail: {what}: {source}")]
    Sys {
        /// The step.
        what: String,
        /// The error.
        source: nix::Error,
    },
    /// The jail set-up is impossible as asked.
    #[error("jail: {0}")]
    Invalid(String),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

/// The number of threads of this process (/proc/self/stat, field 20).
fn thread_count() -> Result<usize, JailError> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| JailError::Invalid(format!("reading /proc/self/stat: {e}")))?;
    // The command name (field 2) may hold spaces: count after its ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    after
        .split_whitespace()
        .nth(17)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| JailError::Invalid("cannot read the thread count from /proc/self/stat".into()))
}

/// `root` joined with absolute `path`, refusing `..`.
fn inside(root: &Path, path: &Path) -> Result<PathBuf, JailError> {
    if !path.is_absolute() {
        return Err(JailError::Invalid(format!("{} is not an absolute path", path.display())));
    }
    let mut out = root.to_path_buf();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(JailError::Invalid(format!("{} must not contain '..'", path.display())));
            }
        }
    }
    Ok(out)
}

/// Binds host `source` at the same path below `root`, read-only or not.
fn bind(root: &Path, source: &Path, read_only: bool) -> Result<(), JailError> {
    let meta = std::fs::metadata(source)
        .map_err(|e| JailError::Invalid(format!("{} (to bind into the jail): {e}", source.display())))?;
    let target = inside(root, source)?;
    let parent = target.parent().unwrap_or(root);
    std::fs::create_dir_all(parent)
        .map_err(|e| JailError::Invalid(format!("creating {} in the jail: {e}", parent.display())))?;
    let created = if meta.is_dir() {
        std::fs::create_dir_all(&target)
    } else {
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&target).map(drop)
    };
    created.map_err(|e| JailError::Invalid(format!("creating {} in the jail: {e}", target.display())))?;
    // Not recursive: mounts below `source` (a sandbox's shared rootfs
    // binds, say) stay outside the jail.
    mount(Some(source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(sys(format!("bind {} into the jail", source.display())))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    flags |= MsFlags::MS_NOEXEC;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
        .map_err(sys(format!("restrict the bind of {}", source.display())))
}

/// Enters the jail. The process must have one thread (unshare and setuid
/// act on the calling thread only) and must be root.
pub fn enter(config: &JailConfig, contents: &JailContents) -> Result<(), JailError> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(JailError::Invalid(format!(
            "the VMM has {threads} threads; it must jail itself before starting any"
        )));
    }
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
        .map_err(sys("unshare mount, network, IPC and UTS namespaces (needs root)"))?;
    // Nothing mounted from here on propagates back to the host.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(sys("make / private"))?;
    let root = &config.root;
    std::fs::create_dir_all(root).map_err(|e| JailError::Invalid(format!("jail root {}: {e}", root.display())))?;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m,nr_inodes=1024"),
    )
    .map_err(sys(format!("mount the jail root on {}", root.display())))?;
    for path in &contents.read_only {
        bind(root, path, true)?;
    }
    for path in &contents.writable {
        bind(root, path, false)?;
    }
    pivot_into(root)?;
    drop_privileges(config, parent)?;
    Ok(())
}

/// Makes `root` the root directory and detaches the old one.
fn pivot_into(root: &Path) -> Result<(), JailError> {
    nix::unistd::chdir(root).map_err(sys(format!("chdir {}", root.display())))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one, at
    // "/", where it can be detached without a directory to put it in.
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root into the jail"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the host's root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("make the jail root read-only"))
}

fn prctl(what: &str, option: libc::c_int, arg: libc::c_ulong) -> Result<(), JailError> {
    // SAFETY: the prctl options used here take integer arguments only.
    let rc = unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc < 0 {
        return Err(JailError::Sys { what: what.to_string(), source: nix::Error::last() });
    }
    Ok(())
}

/// Switches to the jail's uid/gid and drops every capability for good.
fn drop_privileges(config: &JailConfig, parent: libc::pid_t) -> Result<(), JailError> {
    use caps::CapSet;
    // While we still hold CAP_SETPCAP: nothing regained through exec.
    for cap in caps::all() {
        caps::drop(None, CapSet::Bounding, cap)
            .map_err(|e| JailError::Invalid(format!("dropping {cap} from the bounding set: {e}")))?;
    }
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| JailError::Invalid(format!("clearing ambient capabilities: {e}")))?;
    prctl("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS, 1)?;
    nix::unistd::setgroups(&[]).map_err(sys("setgroups []"))?;
    let gid = nix::unistd::Gid::from_raw(config.gid);
    let uid = nix::unistd::Uid::from_raw(config.uid);
    nix::unistd::setresgid(gid, gid, gid).map_err(sys(format!("setresgid {}", config.gid)))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(sys(format!("setresuid {}", config.uid)))?;
    // A non-root uid has lost them already; uid 0 keeps them until here.
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::clear(None, set).map_err(|e| JailError::Invalid(format!("clearing {set:?} capabilities: {e}")))?;
    }
    let left =
        caps::read(None, CapSet::Permitted).map_err(|e| JailError::Invalid(format!("reading capabilities: {e}")))?;
    if let Some(cap) = left.iter().next() {
        return Err(JailError::Invalid(format!("capability {cap} survived the drop")));
    }
    // The credential change cleared these.
    prctl("PR_SET_PDEATHSIG", libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)?;
    prctl("PR_SET_DUMPABLE", libc::PR_SET_DUMPABLE, 0)?;
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        // The parent died before the death signal was armed again.
        return Err(JailError::Invalid("the parent process exited while the VMM entered its jail".into()));
    }
    let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } != 0 {
        return Err(JailError::Sys { what: "RLIMIT_CORE 0".into(), source: nix::Error::last() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_the_jail_never_climb() {
        let root = Path::new("/jail");
        assert_eq!(
            inside(root, Path::new("/run/kata-like/x/vmm")).expect("ok"),
            Path::new("/jail/run/kata-like/x/vmm")
        );
        assert!(inside(root, Path::new("/run/../etc")).unwrap_err().to_string().contains(".."));
        assert!(inside(root, Path::new("relative")).unwrap_err().to_string().contains("absolute"));
    }

    #[test]
    fn contents_are_listed_once_and_writability_is_by_prefix() {
        let mut contents = JailContents::default();
        contents.writable("/run/kl/a/vmm");
        contents.writable("/run/kl/a/vmm");
        contents.read_only("/k/System.map");
        assert_eq!(contents.writable.len(), 1);
        assert!(contents.is_writable(Path::new("/run/kl/a/vmm/snapshot")));
        assert!(!contents.is_writable(Path::new("/run/kl/a/vmmx")));
        assert!(!contents.is_writable(Path::new("/k/System.map")));
    }

    #[test]
    fn this_test_process_has_threads_and_is_refused() {
        // The test harness runs tests on threads: enter() must refuse
        // before touching anything.
        let _other = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(500)));
        let config = JailConfig { root: "/nonexistent-jail".into(), uid: 65534, gid: 65534 };
        let err = enter(&config, &JailContents::default()).unwrap_err().to_string();
        assert!(err.contains("threads"), "{err}");
    }
}
