//! OCI spec → the [`Step`]s that create a container process. Everything
//! that can be checked is checked here, before any fork, so bad specs get
//! an error naming the field.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use super::caps::CapSets;
use super::launch::{PidNs, Step};
use super::mounts::{parse_options, root_propagation};
use super::paths::{find_executable, secure_join};

fn cstr(what: &str, s: impl Into<Vec<u8>>) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte"))
}

fn cpath(p: &Path) -> Result<CString, String> {
    cstr(&p.display().to_string(), p.as_os_str().as_encoded_bytes().to_vec())
}

/// Sets the process's `oom_score_adj`: the spec's, else 0. Never inherited:
/// the agent's own is -1000 (the OOM killer must pick a container, never
/// the agent). Written before the namespaces and root change, through the
/// guest's /proc, which the container may not mount.
fn oom_step(process: &Process, steps: &mut Vec<Step>) -> Result<(), String> {
    let adj = process.oom_score_adj().unwrap_or(0);
    if !(-1000..=1000).contains(&adj) {
        return Err(format!("process.oomScoreAdj {adj} is outside -1000..=1000"));
    }
    steps
        .push(Step::WriteFile { path: cstr("oom", "/proc/self/oom_score_adj")?, value: cstr("oom", adj.to_string())? });
    Ok(())
}

/// The stdio of a new process: fds to dup onto 0, 1, 2, and the pty slave
/// when it has a terminal.
#[derive(Debug)]
pub struct StdioFds {
    /// Descriptors for fd 0, 1, 2.
    pub fds: [OwnedFd; 3],
    /// Path of the pty slave (bound to /dev/console), with a terminal.
    pub console: Option<PathBuf>,
}

/// Everything a fork needs, with the descriptors the steps refer to kept
/// open until the fork is done.
#[derive(Debug)]
pub struct Plan {
    /// The steps.
    pub steps: Vec<Step>,
    /// PID namespace of the child.
    pub pid_ns: PidNs,
    /// Descriptors referenced by raw number in `steps`.
    pub keep: Vec<OwnedFd>,
}

fn process_steps(
    process: &Process,
    root_for_lookup: &Path,
    steps: &mut Vec<Step>,
    start: Option<RawFd>,
    seccomp: &[seccompiler::BpfProgram],
) -> Result<(), String> {
    let no_new_privs = process.no_new_privileges().unwrap_or(false);
    let args = process.args().clone().unwrap_or_default();
    let program = args.first().filter(|a| !a.is_empty()).ok_or("process.args must not be empty")?;
    // Arguments, environment, cwd and limits were checked with the rest of
    // the spec (kata_like_protocol::checks) before any plan is made.
    let mut env = process.env().clone().unwrap_or_default();
    crate::host_env::add_inherited(&mut env);
    let cwd = process.cwd().to_string_lossy().into_owned();
    let exe = find_executable(root_for_lookup, program, &env, &cwd)?;

    if let Some(rlimits) = process.rlimits() {
        for rl in rlimits {
            let resource = rlimit_number(&format!("{:?}", rl.typ()))
                .ok_or_else(|| format!("process.rlimits: unknown type {:?}", rl.typ()))?;
            steps.push(Step::Rlimit { resource, soft: rl.soft(), hard: rl.hard() });
        }
    }
    let caps = CapSets::from_spec(process.capabilities().as_ref()).map_err(|e| format!("process.capabilities: {e}"))?;
    // As runc: without no_new_privs installing a filter needs
    // CAP_SYS_ADMIN, so it goes in before the capabilities are dropped;
    // with it, as late as possible (right before execve).
    if !seccomp.is_empty() && !no_new_privs {
        steps.push(Step::Seccomp(seccomp.to_vec()));
    }
    steps.push(Step::Bounding(caps.bounding));
    let user = process.user();
    if user.uid() != 0 {
        steps.push(Step::KeepCaps);
    }
    steps.push(Step::Groups(user.additional_gids().clone().unwrap_or_default()));
    steps.push(Step::Gid(user.gid()));
    steps.push(Step::Uid(user.uid()));
    steps.push(Step::Caps(caps));
    if no_new_privs {
        steps.push(Step::NoNewPrivs);
    }
    steps.push(Step::Umask(user.umask().unwrap_or(0o022)));
    steps.push(Step::Chdir(cstr("process.cwd", cwd)?));
    if let Some(fd) = start {
        steps.push(Step::WaitStart(fd));
    }
    if !seccomp.is_empty() && no_new_privs {
        steps.push(Step::Seccomp(seccomp.to_vec()));
    }
    steps.push(Step::Exec {
        path: cstr("process.args[0]", exe)?,
        argv: args.iter().map(|a| cstr("process.args", a.as_str())).collect::<Result<_, _>>()?,
        envp: env.iter().map(|e| cstr("process.env", e.as_str())).collect::<Result<_, _>>()?,
    });
    Ok(())
}

fn rlimit_number(debug_name: &str) -> Option<u32> {
    // oci-spec's Debug names are `RlimitNofile`; OCI JSON says `RLIMIT_NOFILE`.
    let name = debug_name.to_ascii_uppercase().replace('_', "");
    let name = name.trim_start_matches("RLIMIT");
    Some(match name {
        "CPU" => libc::RLIMIT_CPU,
        // (names below without '_': MSGQUEUE, SIGPENDING, RTPRIO, RTTIME)
        "FSIZE" => libc::RLIMIT_FSIZE,
        "DATA" => libc::RLIMIT_DATA,
        "STACK" => libc::RLIMIT_STACK,
        "CORE" => libc::RLIMIT_CORE,
        "RSS" => libc::RLIMIT_RSS,
        "NPROC" => libc::RLIMIT_NPROC,
        "NOFILE" => libc::RLIMIT_NOFILE,
        "MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "AS" => libc::RLIMIT_AS,
        "LOCKS" => libc::RLIMIT_LOCKS,
        "SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "NICE" => libc::RLIMIT_NICE,
        "RTPRIO" => libc::RLIMIT_RTPRIO,
        "RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

fn stdio_steps(stdio: &StdioFds, steps: &mut Vec<Step>) {
    steps.push(Step::Setsid);
    for (target, fd) in stdio.fds.iter().enumerate() {
        steps.push(Step::Dup2 { fd: fd.as_raw_fd(), target: target as RawFd });
    }
    if stdio.console.is_some() {
        steps.push(Step::SetCtty);
    }
}

/// mkdir -p of `path` below `root` (both host paths), as steps.
fn mkdir_steps(root: &Path, path: &Path, steps: &mut Vec<Step>) -> Result<(), String> {
    let rel = path.strip_prefix(root).map_err(|_| format!("{} escapes the rootfs", path.display()))?;
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        steps.push(Step::Mkdir(cpath(&cur)?));
    }
    Ok(())
}

const DEFAULT_DEVICES: [(&str, u64, u64); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

fn dev_steps(spec: &Spec, dev: &Path, steps: &mut Vec<Step>) -> Result<(), String> {
    for (name, major, minor) in DEFAULT_DEVICES {
        steps.push(Step::Mknod {
            path: cpath(&dev.join(name))?,
            mode: libc::S_IFCHR | 0o666,
            dev: libc::makedev(major as u32, minor as u32),
        });
    }
    for device in spec.linux().as_ref().and_then(|l| l.devices().clone()).unwrap_or_default() {
        let path = device.path().to_string_lossy().into_owned();
        let name = path.strip_prefix("/dev/").ok_or_else(|| format!("linux.devices: {path} is not under /dev"))?;
        let kind = match format!("{:?}", device.typ()).as_str() {
            "C" | "U" => libc::S_IFCHR,
            "B" => libc::S_IFBLK,
            "P" => libc::S_IFIFO,
            other => return Err(format!("linux.devices {path}: unsupported type {other}")),
        };
        let target = secure_join(dev, name)?;
        if let Some(parent) = target.parent() {
            mkdir_steps(dev, parent, steps)?;
        }
        steps.push(Step::Mknod {
            path: cpath(&target)?,
            mode: kind | device.file_mode().unwrap_or(0o666),
            dev: libc::makedev(device.major() as u32, device.minor() as u32),
        });
    }
    for (target, link) in [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ] {
        steps.push(Step::Symlink { target: cstr(target, target)?, link: cpath(&dev.join(link))? });
    }
    Ok(())
}

fn mount_steps(spec: &Spec, rootfs: &Path, steps: &mut Vec<Step>) -> Result<(), String> {
    for (i, m) in spec.mounts().clone().unwrap_or_default().iter().enumerate() {
        let dest = m.destination().to_string_lossy().into_owned();
        if dest.is_empty() {
            return Err(format!("mounts[{i}].destination is empty"));
        }
        let target = secure_join(rootfs, &dest)?;
        let opts = parse_options(&m.options().clone().unwrap_or_default());
        let fstype = m.typ().clone().unwrap_or_default();
        let bind = opts.bind || fstype == "bind";
        let source = m.source().as_ref().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if bind {
            let meta = std::fs::metadata(&source)
                .map_err(|e| format!("mounts[{i}] ({dest}): bind source {source:?} in the guest: {e}"))?;
            if meta.is_dir() {
                mkdir_steps(rootfs, &target, steps)?;
            } else {
                if let Some(parent) = target.parent() {
                    mkdir_steps(rootfs, parent, steps)?;
                }
                steps.push(Step::Touch(cpath(&target)?));
            }
            let flags = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
            steps.push(Step::Mount {
                source: Some(cstr("mount source", source)?),
                target: cpath(&target)?,
                fstype: None,
                flags: flags.bits(),
                data: None,
            });
            let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
            if !extra.is_empty() {
                steps.push(Step::Mount {
                    source: None,
                    target: cpath(&target)?,
                    fstype: None,
                    flags: (MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra).bits(),
                    data: None,
                });
            }
        } else {
            if fstype.is_empty() {
                return Err(format!("mounts[{i}] ({dest}): type is required for a non-bind mount"));
            }
            // On the guest's cgroup v2 hierarchy, "cgroup" means cgroup2.
            let fstype = if fstype == "cgroup" { "cgroup2".to_string() } else { fstype };
            mkdir_steps(rootfs, &target, steps)?;
            let data = if fstype == "cgroup2" { String::new() } else { opts.data.clone() };
            steps.push(Step::Mount {
                source: Some(cstr("mount source", if source.is_empty() { fstype.clone() } else { source })?),
                target: cpath(&target)?,
                fstype: Some(cstr("mount type", fstype.as_str())?),
                flags: opts.flags.bits(),
                data: if data.is_empty() { None } else { Some(cstr("mount options", data)?) },
            });
            if target == rootfs.join("dev") && fstype == "tmpfs" {
                dev_steps(spec, &target, steps)?;
            }
        }
        if !opts.propagation.is_empty() {
            steps.push(Step::Mount {
                source: None,
                target: cpath(&target)?,
                fstype: None,
                flags: opts.propagation.bits(),
                data: None,
            });
        }
    }
    Ok(())
}

/// The steps of a container's init process. `rootfs` is the rootfs in the
/// guest, `cgroup_procs` the container cgroup's `cgroup.procs`, `start` the
/// read end the child waits on before exec.
pub fn init_plan(
    spec: &Spec,
    rootfs: &Path,
    stdio: &StdioFds,
    cgroup_procs: OwnedFd,
    start: OwnedFd,
    seccomp: &[seccompiler::BpfProgram],
) -> Result<Plan, String> {
    let process = spec.process().as_ref().ok_or("the spec has no process")?;
    let linux = spec.linux().as_ref().ok_or("the spec has no linux section")?;
    let mut steps = Vec::new();
    let mut keep = Vec::new();
    stdio_steps(stdio, &mut steps);
    steps.push(Step::JoinCgroup(cgroup_procs.as_raw_fd()));
    keep.push(cgroup_procs);
    oom_step(process, &mut steps)?;

    let mut pid_ns = PidNs::Host;
    let mut unshare = 0;
    let mut has_mount = false;
    for ns in linux.namespaces().clone().unwrap_or_default() {
        let (flag, name) = match ns.typ() {
            LinuxNamespaceType::Pid => (libc::CLONE_NEWPID, "pid"),
            LinuxNamespaceType::Network => (libc::CLONE_NEWNET, "network"),
            LinuxNamespaceType::Mount => (libc::CLONE_NEWNS, "mount"),
            LinuxNamespaceType::Ipc => (libc::CLONE_NEWIPC, "ipc"),
            LinuxNamespaceType::Uts => (libc::CLONE_NEWUTS, "uts"),
            LinuxNamespaceType::Cgroup => (libc::CLONE_NEWCGROUP, "cgroup"),
            other => return Err(format!("linux.namespaces: {other:?} namespaces are not supported")),
        };
        has_mount |= flag == libc::CLONE_NEWNS;
        match ns.path() {
            Some(path) => {
                let fd: OwnedFd = std::fs::File::open(path)
                    .map_err(|e| format!("linux.namespaces {name}: {}: {e}", path.display()))?
                    .into();
                if flag == libc::CLONE_NEWPID {
                    pid_ns = PidNs::Join(fd);
                } else {
                    steps.push(Step::SetNs { fd: fd.as_raw_fd(), nstype: flag, name });
                    keep.push(fd);
                }
            }
            None if flag == libc::CLONE_NEWPID => pid_ns = PidNs::New,
            None => unshare |= flag,
        }
    }
    if !has_mount {
        return Err("linux.namespaces: a mount namespace is required (the rootfs is set up in it)".into());
    }
    steps.push(Step::Unshare(unshare));
    if unshare & libc::CLONE_NEWNET != 0 {
        steps.push(Step::LoopbackUp);
    }

    let propagation = root_propagation(linux.rootfs_propagation().as_deref())?;
    // MS_MOVE refuses a mount whose parent mount is shared (EINVAL), and
    // the rootfs's parent may be a virtio-fs submount the guest kernel
    // mounts on first access: with a shared root propagation the tree is
    // private until the move, and the new root gets the spec's propagation
    // right after it.
    let shared_root = propagation.contains(MsFlags::MS_SHARED);
    let before_move = if shared_root { MsFlags::MS_PRIVATE | MsFlags::MS_REC } else { propagation };
    steps.push(Step::Mount {
        source: None,
        target: cstr("/", "/")?,
        fstype: None,
        flags: before_move.bits(),
        data: None,
    });
    let root = cpath(rootfs)?;
    steps.push(Step::Mount {
        source: Some(root.clone()),
        target: root.clone(),
        fstype: None,
        flags: (MsFlags::MS_BIND | MsFlags::MS_REC).bits(),
        data: None,
    });
    mount_steps(spec, rootfs, &mut steps)?;
    if let Some(console) = &stdio.console {
        let target = rootfs.join("dev/console");
        steps.push(Step::Touch(cpath(&target)?));
        steps.push(Step::Mount {
            source: Some(cpath(console)?),
            target: cpath(&target)?,
            fstype: None,
            flags: MsFlags::MS_BIND.bits(),
            data: None,
        });
    }
    steps.push(Step::Chdir(root));
    steps.push(Step::MoveRoot);
    if shared_root {
        steps.push(Step::Mount {
            source: None,
            target: cstr("/", "/")?,
            fstype: None,
            flags: propagation.bits(),
            data: None,
        });
    }
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        steps.push(Step::Mount {
            source: None,
            target: cstr("/", "/")?,
            fstype: None,
            flags: (MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC).bits(),
            data: None,
        });
    }
    // Sysctls before the read-only paths (/proc/sys is one), as runc.
    for (key, value) in linux.sysctl().clone().unwrap_or_default() {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        steps.push(Step::WriteFile { path: cstr("linux.sysctl", path)?, value: cstr("linux.sysctl", value)? });
    }
    for p in linux.masked_paths().clone().unwrap_or_default() {
        steps.push(Step::Mask(cstr("linux.maskedPaths", p)?));
    }
    for p in linux.readonly_paths().clone().unwrap_or_default() {
        steps.push(Step::Readonly(cstr("linux.readonlyPaths", p)?));
    }
    if let Some(hostname) = spec.hostname().as_ref().filter(|h| !h.is_empty()) {
        steps.push(Step::Hostname(cstr("hostname", hostname.as_str())?));
    }
    let start_fd = start.as_raw_fd();
    keep.push(start);
    process_steps(process, rootfs, &mut steps, Some(start_fd), seccomp)?;
    Ok(Plan { steps, pid_ns, keep })
}

/// The steps of an exec'd process joining the namespaces and cgroup of the
/// container whose init is `init_pid`.
pub fn exec_plan(
    process: &Process,
    init_pid: i32,
    rootfs: &Path,
    stdio: &StdioFds,
    cgroup_procs: OwnedFd,
    seccomp: &[seccompiler::BpfProgram],
) -> Result<Plan, String> {
    let mut steps = Vec::new();
    let mut keep = Vec::new();
    stdio_steps(stdio, &mut steps);
    steps.push(Step::JoinCgroup(cgroup_procs.as_raw_fd()));
    keep.push(cgroup_procs);
    oom_step(process, &mut steps)?;
    let own = |name: &str| std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
    let mut pid_ns = PidNs::Host;
    // The mount namespace last: the others are opened through /proc.
    for (name, flag) in [
        ("pid", libc::CLONE_NEWPID),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("mnt", libc::CLONE_NEWNS),
    ] {
        let path = format!("/proc/{init_pid}/ns/{name}");
        let theirs = std::fs::read_link(&path).map_err(|e| format!("the container's init is gone ({path}: {e})"))?;
        if Some(&theirs) == own(name).as_ref() {
            continue; // shared with the agent: nothing to join
        }
        let fd: OwnedFd = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?.into();
        if flag == libc::CLONE_NEWPID {
            pid_ns = PidNs::Join(fd);
        } else {
            steps.push(Step::SetNs { fd: fd.as_raw_fd(), nstype: flag, name: static_name(name) });
            keep.push(fd);
        }
    }
    process_steps(process, rootfs, &mut steps, None, seccomp)?;
    Ok(Plan { steps, pid_ns, keep })
}

fn static_name(name: &str) -> &'static str {
    match name {
        "ipc" => "ipc",
        "uts" => "uts",
        "net" => "network",
        "cgroup" => "cgroup",
        _ => "mount",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("spec {json}: {e}"))
    }

    fn fds() -> StdioFds {
        let null = || -> OwnedFd { std::fs::File::open("/dev/null").expect("null").into() };
        StdioFds { fds: [null(), null(), null()], console: None }
    }

    fn rootfs() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("bin")).expect("mkdir");
        std::fs::write(dir.path().join("bin/sh"), b"x").expect("write");
        std::fs::set_permissions(dir.path().join("bin/sh"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    fn null_fd() -> OwnedFd {
        std::fs::File::open("/dev/null").expect("null").into()
    }

    const BASE: &str = r#""ociVersion":"1.0.2","root":{"path":"rootfs"},"linux":{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"uts"}]}"#;

    #[test]
    fn a_plain_spec_plans_mounts_user_and_exec() {
        let root = rootfs();
        let s = spec(&format!(
            r#"{{{BASE},"hostname":"box","process":{{"args":["sh","-c","true"],"env":["PATH=/bin"],"cwd":"/","user":{{"uid":1000,"gid":1000}},"rlimits":[{{"type":"RLIMIT_NOFILE","hard":1024,"soft":1024}}]}},
            "mounts":[{{"destination":"/proc","type":"proc","source":"proc"}},{{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755"]}}]}}"#
        ));
        let plan = init_plan(&s, root.path(), &fds(), null_fd(), null_fd(), &[]).expect("plan");
        assert!(matches!(plan.pid_ns, PidNs::New));
        let described: Vec<String> = plan.steps.iter().map(Step::describe).collect();
        let has = |needle: &str| described.iter().any(|d| d.contains(needle));
        assert!(has("mount proc (proc) on"), "{described:?}");
        assert!(has("create device") && has("/dev/null"), "{described:?}");
        assert!(has("set hostname box") && has("setuid 1000") && has("execve /bin/sh"), "{described:?}");
        assert!(has(&format!("set rlimit {}", libc::RLIMIT_NOFILE)), "{described:?}");
        assert!(has("write /proc/self/oom_score_adj"), "the agent's -1000 is never inherited: {described:?}");
        let wait = described.iter().position(|d| d == "wait for start").expect("waits");
        assert_eq!(wait + 1, described.len() - 1, "exec follows the wait");
    }

    #[test]
    fn bad_specs_are_named() {
        let root = rootfs();
        let plan = |json: String| init_plan(&spec(&json), root.path(), &fds(), null_fd(), null_fd(), &[]).unwrap_err();
        let err = plan(format!(r#"{{{BASE},"process":{{"user":{{"uid":0,"gid":0}},"args":["nope"],"cwd":"/"}}}}"#));
        assert!(err.contains("\"nope\" not found"), "{err}");
        let err = plan(format!(r#"{{{BASE},"process":{{"user":{{"uid":0,"gid":0}},"args":[],"cwd":"/"}}}}"#));
        assert!(err.contains("process.args"), "{err}");
        let err = plan(format!(
            r#"{{{BASE},"process":{{"user":{{"uid":0,"gid":0}},"args":["sh"],"cwd":"/"}},"mounts":[{{"destination":"/x","type":"bind","source":"/nonexistent-src","options":["rbind"]}}]}}"#
        ));
        assert!(err.contains("/nonexistent-src"), "{err}");
        let userns = r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/"},"linux":{"namespaces":[{"type":"mount"},{"type":"user"}]}}"#;
        let err = plan(userns.to_string());
        assert!(err.contains("not supported"), "{err}");
    }
}
