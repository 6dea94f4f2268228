//! The host cgroup of a sandbox VM: the OCI spec's `linux.cgroupsPath`.
//!
//! runc puts a container's processes in that cgroup; for us the host-side
//! processes of a sandbox are the VMM and virtiofsd, so they go there. That
//! is what makes the pod's resource limits and accounting on the host see
//! the VM (kubelet's pod cgroup is its parent; containerd's PodSandboxStats
//! reads that parent), as Kata's `sandbox_cgroup_only`.
//!
//! Both processes join in `pre_exec`, before they allocate guest memory,
//! by writing "0" to descriptors of `cgroup.procs` opened beforehand (no
//! allocation after fork). systemd's `slice:prefix:name` form is turned
//! into the cgroupfs path systemd would use (see [`systemd_path`]).
//!
//! Hand-written: `cgroups-rs` pulls in a D-Bus stack (zbus) and an old nix
//! for what is mkdir, a write at exec and rmdir here, and neither it nor
//! youki's libcgroups offers the join-at-exec we need.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// The cgroup v1 controllers the VM's processes join: those that account
/// or limit what a VM uses (cpuset would need its cpus/mems initialised).
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "blkio"];

/// The cgroup root of the host.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup created for one sandbox, in every hierarchy it applies to.
#[derive(Debug)]
pub struct HostCgroup {
    /// The leaf directories, one per hierarchy.
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each, open for writing.
    procs: Vec<File>,
}

impl HostCgroup {
    /// Creates the cgroup `cgroups_path` names (None for an empty path or
    /// systemd's form). Errors name the path and what failed.
    pub fn create(cgroups_path: &str) -> Result<Option<HostCgroup>, String> {
        let Some(relative) = parse(cgroups_path)? else { return Ok(None) };
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cgroupsPath {cgroups_path}: reading /proc/self/mountinfo: {e}"))?;
        let roots = hierarchy_roots(&mountinfo);
        if roots.is_empty() {
            return Err(format!("cgroupsPath {cgroups_path}: no cgroup hierarchy is mounted"));
        }
        let mut cgroup = HostCgroup { dirs: Vec::new(), procs: Vec::new() };
        for root in roots {
            let dir = root.join(&relative);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cgroupsPath {cgroups_path}: creating {}: {e}", dir.display()))?;
            // The leaf is the sandbox's even if it existed (left by a
            // crashed run, or made by whoever wrote the spec): it goes with
            // the sandbox, as runc removes a container's cgroup. Parents
            // stay; a busy leaf is left and logged.
            cgroup.dirs.push(dir.clone());
            let procs = dir.join("cgroup.procs");
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(|e| format!("cgroupsPath {cgroups_path}: opening {}: {e}", procs.display()))?;
            cgroup.procs.push(file);
        }
        Ok(Some(cgroup))
    }

    /// Makes `command`'s process join this cgroup before it executes.
    pub fn join_on_exec(&self, command: &mut Command) {
        let fds: Vec<i32> = self.procs.iter().map(AsRawFd::as_raw_fd).collect();
        // SAFETY: write(2) is async-signal-safe; the closure only reads the
        // descriptor numbers it owns (no allocation). The files stay open
        // in `self`, which outlives the spawn (the caller holds it).
        unsafe {
            command.pre_exec(move || {
                for &fd in &fds {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}

/// Removes a cgroup directory once the tasks that just exited have left
/// it (a busy cgroup is logged and left; a missing one is fine).
fn remove_cgroup_dir(dir: &Path) {
    let mut result = std::fs::remove_dir(dir);
    // Exiting tasks leave the cgroup shortly after they are reaped; a
    // killed VMM with a large memfd can take seconds to be torn down.
    for _ in 0..200 {
        match &result {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(50));
                result = std::fs::remove_dir(dir);
            }
            _ => break,
        }
    }
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove the sandbox cgroup {}: {e}", dir.display()),
    }
}

/// Removes the leaf `cgroups_path` names in every hierarchy: the clean-up
/// after a shim that died without dropping its [`HostCgroup`].
pub fn remove_leftover(cgroups_path: &str) {
    let Ok(Some(relative)) = parse(cgroups_path) else { return };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for root in hierarchy_roots(&mountinfo) {
        remove_cgroup_dir(&root.join(&relative));
    }
}

/// Removes the sandbox's leaf directories, once its processes are gone.
impl Drop for HostCgroup {
    fn drop(&mut self) {
        self.procs.clear();
        for dir in self.dirs.drain(..).rev() {
            remove_cgroup_dir(&dir);
        }
    }
}

/// The path below each hierarchy's root; None for "" and systemd's form.
fn parse(cgroups_path: &str) -> Result<Option<PathBuf>, String> {
    if cgroups_path.is_empty() {
        return Ok(None);
    }
    let expanded;
    let cgroups_path = if !cgroups_path.starts_with('/') && cgroups_path.contains(':') {
        expanded = systemd_path(cgroups_path)?;
        expanded.as_str()
    } else {
        cgroups_path
    };
    let mut relative = PathBuf::new();
    for component in Path::new(cgroups_path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => relative.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("cgroupsPath {cgroups_path} must not contain '..'"));
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(format!("cgroupsPath {cgroups_path} names the root cgroup"));
    }
    Ok(Some(relative))
}

/// systemd's `slice:prefix:name` form as the cgroupfs path systemd gives
/// it (`a-b.slice:docker:ID` is `/a.slice/a-b.slice/docker-ID.scope`), so a
/// caller using the systemd cgroup driver finds the VM where it looks. The
/// directories are made directly: this host has no systemd to ask (runc's
/// driver asks systemd over D-Bus to make the same directories).
fn systemd_path(cgroups_path: &str) -> Result<String, String> {
    let bad = |why: &str| format!("cgroupsPath {cgroups_path} (systemd's slice:prefix:name form): {why}");
    let mut parts = cgroups_path.splitn(3, ':');
    let (slice, prefix, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(p), Some(n)) => (s, p, n),
        _ => return Err(bad("expected three parts")),
    };
    if name.is_empty() || [slice, prefix, name].iter().any(|p| p.contains('/')) {
        return Err(bad("a part is empty or has a '/'"));
    }
    let slice = if slice.is_empty() { "system.slice" } else { slice };
    let mut path = String::new();
    if slice != "-.slice" {
        let stem = slice.strip_suffix(".slice").ok_or_else(|| bad("the slice does not end in .slice"))?;
        if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
            return Err(bad("not a valid slice name"));
        }
        let mut sofar = String::new();
        for part in stem.split('-') {
            if !sofar.is_empty() {
                sofar.push('-');
            }
            sofar.push_str(part);
            path.push_str(&format!("/{sofar}.slice"));
        }
    }
    if name.ends_with(".slice") {
        path.push_str(&format!("/{name}"));
    } else if prefix.is_empty() {
        path.push_str(&format!("/{name}.scope"));
    } else {
        path.push_str(&format!("/{prefix}-{name}.scope"));
    }
    Ok(path)
}

/// The mount points of the hierarchies to join: the cgroup2 mount at the
/// cgroup root on a unified host, else each v1 hierarchy carrying one of
/// [`V1_CONTROLLERS`].
fn hierarchy_roots(mountinfo: &str) -> Vec<PathBuf> {
    let mut v1 = Vec::new();
    let mut unified = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        let (Some(mount_point), Some(fstype), Some(options)) =
            (fields.get(4), fields.get(sep + 1), fields.get(sep + 3))
        else {
            continue;
        };
        let mount_point = PathBuf::from(crate::mountinfo::unescape(mount_point));
        match *fstype {
            "cgroup2" if mount_point == Path::new(CGROUP_ROOT) => unified = Some(mount_point),
            "cgroup" if options.split(',').any(|o| V1_CONTROLLERS.contains(&o)) && !v1.contains(&mount_point) => {
                v1.push(mount_point);
            }
            _ => {}
        }
    }
    match unified {
        Some(root) => vec![root],
        None => v1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_below_the_root_and_never_climb() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("/kubepods/pod1/abc").unwrap(), Some(PathBuf::from("kubepods/pod1/abc")));
        assert_eq!(parse("default/abc").unwrap(), Some(PathBuf::from("default/abc")));
        assert_eq!(
            parse("kubepods-besteffort.slice:cri-containerd:abc").unwrap(),
            Some(PathBuf::from("kubepods.slice/kubepods-besteffort.slice/cri-containerd-abc.scope"))
        );
        assert_eq!(parse("system.slice:docker:abc").unwrap(), Some(PathBuf::from("system.slice/docker-abc.scope")));
        assert_eq!(parse(":podman:abc").unwrap(), Some(PathBuf::from("system.slice/podman-abc.scope")));
        assert!(parse("a--b.slice:x:y").unwrap_err().contains("slice"));
        assert!(parse("noslice:x:y").unwrap_err().contains(".slice"));
        assert!(parse("a.slice:x").unwrap_err().contains("three"));
        assert!(parse("/kubepods/../../etc").unwrap_err().contains(".."));
        assert!(parse("/").unwrap_err().contains("root"));
    }

    #[test]
    fn v1_hierarchies_with_our_controllers_are_found_once() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
32 25 0:28 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
33 25 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
34 25 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 25 0:31 / /sys/fs/cgroup/pids rw,relatime shared:1 - cgroup cgroup rw,pids";
        let roots: Vec<PathBuf> =
            ["memory", "cpu,cpuacct", "pids"].iter().map(|d| Path::new(CGROUP_ROOT).join(d)).collect();
        assert_eq!(hierarchy_roots(mountinfo), roots);
    }

    #[test]
    fn a_unified_host_has_one_hierarchy() {
        let mountinfo = "29 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(hierarchy_roots(mountinfo), vec![PathBuf::from(CGROUP_ROOT)]);
    }
}
