//! Forking a container process: the parent builds a list of [`Step`]s from
//! the OCI spec (every string already a `CString`, every decision made), and
//! the child only walks the list with raw system calls, so nothing in it
//! allocates or takes a lock after `fork` in our multi-threaded agent.
//!
//! The child reports progress on a close-on-exec status pipe: a READY record
//! when it reaches [`Step::WaitStart`] (the container is "created"), an
//! error record `(step index, errno)` when a step fails, and nothing at all
//! when `execve` succeeds (the pipe just closes). The parent names the
//! failed step, so `mount proc on /proc: Operation not permitted` or
//! `execve /bin/nope: No such file or directory` reach the user.
//!
//! youki's `libcontainer` was considered: it drives a container through
//! intermediate processes and a state directory, re-execs or clones twice
//! per container, and pulls in systemd/D-Bus and seccomp dependencies. Each
//! extra process costs a second or more of emulated kernel work on our
//! nested hosts, and the agent is PID 1 of a static initramfs, so we keep
//! one fork per container process.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::caps::CapSets;

/// Marker record: setup done, waiting for the start signal.
const READY: u32 = u32::MAX;

/// One thing the child does, in order.
#[derive(Debug)]
pub enum Step {
    /// New session (and controlling terminal with [`Step::SetCtty`]).
    Setsid,
    /// dup2(fd, target).
    Dup2 { fd: RawFd, target: RawFd },
    /// TIOCSCTTY on fd 0.
    SetCtty,
    /// Writes "0" to an open cgroup.procs.
    JoinCgroup(RawFd),
    /// setns(fd, nstype).
    SetNs { fd: RawFd, nstype: libc::c_int, name: &'static str },
    /// unshare(flags).
    Unshare(libc::c_int),
    /// mount(2); `optional` failures with ENOENT are ignored.
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// mkdir(path, 0755); EEXIST is fine.
    Mkdir(CString),
    /// Creates an empty file (mount point for a file bind mount).
    Touch(CString),
    /// mknod(path, mode, dev); EEXIST is fine.
    Mknod { path: CString, mode: libc::mode_t, dev: libc::dev_t },
    /// symlink(target, link); EEXIST is fine.
    Symlink { target: CString, link: CString },
    /// chdir(path).
    Chdir(CString),
    /// Brings `lo` up in the (new) network namespace, as runc does.
    LoopbackUp,
    /// Moves the current directory onto / and chroots into it (runc's
    /// no-pivot path: the guest root is the initramfs, which pivot_root
    /// cannot leave).
    MoveRoot,
    /// Hides a path: /dev/null over a file, a read-only tmpfs over a dir;
    /// missing paths are skipped.
    Mask(CString),
    /// Bind-mounts a path read-only onto itself; missing paths are skipped.
    Readonly(CString),
    /// sethostname.
    Hostname(CString),
    /// Writes a value to a file (sysctls, oom_score_adj).
    WriteFile { path: CString, value: CString },
    /// setrlimit.
    Rlimit { resource: u32, soft: u64, hard: u64 },
    /// Drops every bounding capability not in the mask.
    Bounding(u64),
    /// PR_SET_KEEPCAPS, so capabilities survive setuid.
    KeepCaps,
    /// setgroups.
    Groups(Vec<libc::gid_t>),
    /// setgid.
    Gid(libc::gid_t),
    /// setuid.
    Uid(libc::uid_t),
    /// capset of effective/permitted/inheritable, then ambient raises.
    Caps(CapSets),
    /// PR_SET_NO_NEW_PRIVS.
    NoNewPrivs,
    /// Installs seccomp filters (`super::seccomp`), in order.
    Seccomp(Vec<seccompiler::BpfProgram>),
    /// umask.
    Umask(libc::mode_t),
    /// Blocks until a byte (or EOF) arrives on fd.
    WaitStart(RawFd),
    /// execve.
    Exec { path: CString, argv: Vec<CString>, envp: Vec<CString> },
}

impl Step {
    /// What the step does, for error messages.
    pub fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Step::Setsid => "setsid".into(),
            Step::Dup2 { target, .. } => format!("set up stdio fd {target}"),
            Step::SetCtty => "set the controlling terminal".into(),
            Step::JoinCgroup(_) => "join the container cgroup".into(),
            Step::SetNs { name, .. } => format!("join the container's {name} namespace"),
            Step::Unshare(flags) => format!("create namespaces (unshare {flags:#x})"),
            Step::Mount { source, target, fstype, .. } => format!(
                "mount {} ({}) on {}",
                source.as_ref().map(s).unwrap_or_default(),
                fstype.as_ref().map(s).unwrap_or_else(|| "bind/remount".into()),
                s(target)
            ),
            Step::Mkdir(p) => format!("create directory {}", s(p)),
            Step::Touch(p) => format!("create mount point {}", s(p)),
            Step::Mknod { path, .. } => format!("create device {}", s(path)),
            Step::Symlink { link, .. } => format!("create symlink {}", s(link)),
            Step::Chdir(p) => format!("chdir to {}", s(p)),
            Step::LoopbackUp => "bring up the loopback interface".into(),
            Step::MoveRoot => "move the rootfs to / and chroot".into(),
            Step::Mask(p) => format!("mask {}", s(p)),
            Step::Readonly(p) => format!("make {} read-only", s(p)),
            Step::Hostname(h) => format!("set hostname {}", s(h)),
            Step::WriteFile { path, .. } => format!("write {}", s(path)),
            Step::Rlimit { resource, .. } => format!("set rlimit {resource}"),
            Step::Bounding(_) => "drop bounding capabilities".into(),
            Step::KeepCaps => "keep capabilities across setuid".into(),
            Step::Groups(_) => "set additional groups".into(),
            Step::Gid(g) => format!("setgid {g}"),
            Step::Uid(u) => format!("setuid {u}"),
            Step::Caps(_) => "set capabilities".into(),
            Step::NoNewPrivs => "set no_new_privs".into(),
            Step::Seccomp(_) => "install the seccomp filter (linux.seccomp)".into(),
            Step::Umask(_) => "set umask".into(),
            Step::WaitStart(_) => "wait for start".into(),
            Step::Exec { path, .. } => format!("execve {}", s(path)),
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

fn check(ret: libc::c_int) -> Result<(), i32> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn ok_if_exists(ret: libc::c_int) -> Result<(), i32> {
    match check(ret) {
        Err(libc::EEXIST) => Ok(()),
        other => other,
    }
}

fn opt_ptr(c: &Option<CString>) -> *const libc::c_char {
    c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

/// SIOCGIFFLAGS/SIOCSIFFLAGS on `lo`: IFF_UP. Only system calls.
fn loopback_up() -> Result<(), i32> {
    // SAFETY: a socket, two ioctls on a zeroed ifreq that lives on the
    // stack for the calls, and close.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(errno());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut result = check(libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req));
        if result.is_ok() {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = check(libc::ioctl(sock, libc::SIOCSIFFLAGS, &req));
        }
        libc::close(sock);
        result
    }
}

/// Runs one step in the child. Only system calls; no allocation.
///
/// # Safety
/// Must only be called in a freshly forked child process.
unsafe fn run_step(
    step: &Step,
    argv_ptrs: &[*const libc::c_char],
    envp_ptrs: &[*const libc::c_char],
) -> Result<(), i32> {
    // SAFETY: for the whole body: every pointer passed below comes from a live
    // CString or slice owned by the plan, which outlives the child; the
    // calls are plain system calls on the child's own state.
    unsafe {
        match step {
            Step::Setsid => check(libc::setsid()),
            Step::Dup2 { fd, target } => check(libc::dup2(*fd, *target)),
            Step::SetCtty => check(libc::ioctl(0, libc::TIOCSCTTY, 0)),
            Step::JoinCgroup(fd) => {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(errno())
                }
            }
            Step::SetNs { fd, nstype, .. } => check(libc::setns(*fd, *nstype)),
            Step::Unshare(flags) => check(libc::unshare(*flags)),
            Step::Mount { source, target, fstype, flags, data } => check(libc::mount(
                opt_ptr(source),
                target.as_ptr(),
                opt_ptr(fstype),
                *flags,
                data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
            )),
            Step::Mkdir(p) => ok_if_exists(libc::mkdir(p.as_ptr(), 0o755)),
            Step::Touch(p) => {
                let fd = libc::open(p.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                if fd < 0 {
                    // A directory already there is fine for a bind target.
                    return if errno() == libc::EISDIR { Ok(()) } else { Err(errno()) };
                }
                libc::close(fd);
                Ok(())
            }
            Step::Mknod { path, mode, dev } => {
                if libc::mknod(path.as_ptr(), *mode, *dev) < 0 {
                    return ok_if_exists(-1);
                }
                // The agent's umask must not narrow the mode (/dev/null is 0666).
                check(libc::chmod(path.as_ptr(), *mode & 0o7777))
            }
            Step::LoopbackUp => loopback_up(),
            Step::Symlink { target, link } => ok_if_exists(libc::symlink(target.as_ptr(), link.as_ptr())),
            Step::Chdir(p) => check(libc::chdir(p.as_ptr())),
            Step::MoveRoot => {
                check(libc::mount(c".".as_ptr(), c"/".as_ptr(), std::ptr::null(), libc::MS_MOVE, std::ptr::null()))?;
                check(libc::chroot(c".".as_ptr()))?;
                check(libc::chdir(c"/".as_ptr()))
            }
            Step::Mask(p) => {
                let mut st: libc::stat = std::mem::zeroed();
                if libc::stat(p.as_ptr(), &mut st) < 0 {
                    return if errno() == libc::ENOENT { Ok(()) } else { Err(errno()) };
                }
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    check(libc::mount(
                        c"tmpfs".as_ptr(),
                        p.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_RDONLY,
                        std::ptr::null(),
                    ))
                } else {
                    check(libc::mount(
                        c"/dev/null".as_ptr(),
                        p.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))
                }
            }
            Step::Readonly(p) => {
                let r = libc::mount(
                    p.as_ptr(),
                    p.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                );
                if r < 0 {
                    return if errno() == libc::ENOENT { Ok(()) } else { Err(errno()) };
                }
                check(libc::mount(
                    p.as_ptr(),
                    p.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
                    std::ptr::null(),
                ))
            }
            Step::Hostname(h) => check(libc::sethostname(h.as_ptr(), h.as_bytes().len())),
            Step::WriteFile { path, value } => {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(errno());
                }
                let bytes = value.as_bytes();
                let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
                let e = errno();
                libc::close(fd);
                if n == bytes.len() as isize {
                    Ok(())
                } else {
                    Err(e)
                }
            }
            Step::Rlimit { resource, soft, hard } => {
                let lim = libc::rlimit { rlim_cur: *soft, rlim_max: *hard };
                check(libc::setrlimit(*resource, &lim))
            }
            Step::Bounding(keep) => {
                for cap in 0..=63u64 {
                    if keep & (1 << cap) == 0 {
                        // EINVAL: the kernel does not know this capability.
                        match check(libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0)) {
                            Ok(()) | Err(libc::EINVAL) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(())
            }
            Step::KeepCaps => check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0)),
            Step::Groups(groups) => check(libc::setgroups(groups.len(), groups.as_ptr())),
            Step::Gid(g) => check(libc::setgid(*g)),
            Step::Uid(u) => check(libc::setuid(*u)),
            Step::Caps(sets) => {
                #[repr(C)]
                struct Header {
                    version: u32,
                    pid: libc::c_int,
                }
                #[repr(C)]
                #[derive(Clone, Copy)]
                struct Data {
                    effective: u32,
                    permitted: u32,
                    inheritable: u32,
                }
                const VERSION_3: u32 = 0x2008_0522;
                let header = Header { version: VERSION_3, pid: 0 };
                let lo = |m: u64| m as u32;
                let hi = |m: u64| (m >> 32) as u32;
                let data = [
                    Data {
                        effective: lo(sets.effective),
                        permitted: lo(sets.permitted),
                        inheritable: lo(sets.inheritable),
                    },
                    Data {
                        effective: hi(sets.effective),
                        permitted: hi(sets.permitted),
                        inheritable: hi(sets.inheritable),
                    },
                ];
                if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) < 0 {
                    return Err(errno());
                }
                for cap in 0..=63u64 {
                    if sets.ambient & (1 << cap) != 0 {
                        check(libc::prctl(
                            libc::PR_CAP_AMBIENT,
                            libc::PR_CAP_AMBIENT_RAISE,
                            cap as libc::c_ulong,
                            0,
                            0,
                        ))?;
                    }
                }
                Ok(())
            }
            Step::NoNewPrivs => check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)),
            Step::Seccomp(programs) => {
                for program in programs {
                    let prog = libc::sock_fprog {
                        len: program.len() as libc::c_ushort,
                        // seccompiler's sock_filter is the kernel's layout.
                        filter: program.as_ptr() as *mut libc::sock_filter,
                    };
                    const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
                    if libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0 as libc::c_ulong, &prog) < 0 {
                        return Err(errno());
                    }
                }
                Ok(())
            }
            Step::Umask(m) => {
                libc::umask(*m);
                Ok(())
            }
            Step::WaitStart(fd) => {
                let mut byte = 0u8;
                loop {
                    let n = libc::read(*fd, (&mut byte as *mut u8).cast(), 1);
                    if n >= 0 {
                        break;
                    }
                    if errno() != libc::EINTR {
                        return Err(errno());
                    }
                }
                libc::close(*fd);
                Ok(())
            }
            Step::Exec { path, .. } => {
                libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
                Err(errno())
            }
        }
    }
}

/// The child's handler before exec: exit as the signal would.
extern "C" fn exit_on_signal(sig: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + sig) }
}

/// The child side: reset signals, run every step, report.
///
/// # Safety
/// Must only be called in a freshly forked child; never returns.
unsafe fn child(steps: &[Step], status_fd: RawFd, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> ! {
    // SAFETY: for the whole body: system calls on the child's own state with
    // pointers to live stack or plan data.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // As PID 1 of a new PID namespace the child would drop these (see
        // `super::signal`); until execve resets them, they end it as they
        // end runc's init.
        for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGUSR1, libc::SIGUSR2] {
            libc::signal(sig, exit_on_signal as *const () as libc::sighandler_t);
        }
        for (index, step) in steps.iter().enumerate() {
            if let Step::WaitStart(_) = step {
                let record = record(READY, 0);
                libc::write(status_fd, record.as_ptr().cast(), record.len());
            }
            if let Err(err) = run_step(step, argv, envp) {
                let record = record(index as u32, err);
                libc::write(status_fd, record.as_ptr().cast(), record.len());
                libc::_exit(127);
            }
        }
        libc::_exit(127)
    }
}

fn record(step: u32, errno: i32) -> [u8; 8] {
    let mut r = [0u8; 8];
    r[..4].copy_from_slice(&step.to_le_bytes());
    r[4..].copy_from_slice(&errno.to_le_bytes());
    r
}

/// What the status pipe said.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// Waiting at [`Step::WaitStart`].
    Ready,
    /// `execve` succeeded (the pipe closed without a record).
    Execed,
    /// Step `index` failed with `errno`.
    Failed { index: usize, errno: i32 },
}

/// Reads the next status record.
pub fn read_status(fd: &OwnedFd) -> Status {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Status::Failed { index: usize::MAX, errno: e as i32 },
        }
    }
    if got < buf.len() {
        return Status::Execed;
    }
    let step = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let errno = i32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if step == READY {
        Status::Ready
    } else {
        Status::Failed { index: step as usize, errno }
    }
}

/// Describes a failed status for the user.
pub fn describe_failure(steps: &[Step], index: usize, errno: i32) -> String {
    let what = steps.get(index).map(Step::describe).unwrap_or_else(|| "read the child's status".into());
    format!("{what}: {}", std::io::Error::from_raw_os_error(errno))
}

/// Which PID namespace the child goes into.
#[derive(Debug)]
pub enum PidNs {
    /// A new one (the container's init).
    New,
    /// The container's (exec): an open /proc/<pid>/ns/pid.
    Join(OwnedFd),
    /// The agent's own (spec without a PID namespace).
    Host,
}

/// Forks the child on a fresh thread (so that changing the PID namespace
/// for children does not touch the agent's other threads) and returns its
/// PID and the read end of its status pipe.
pub fn fork(steps: std::sync::Arc<Vec<Step>>, pid_ns: PidNs) -> Result<(i32, OwnedFd), String> {
    let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let handle = std::thread::Builder::new()
        .name("container-fork".into())
        .spawn(move || -> Result<i32, String> {
            match &pid_ns {
                PidNs::New => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
                    .map_err(|e| format!("create a PID namespace: {e}"))?,
                PidNs::Join(fd) => nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWPID)
                    .map_err(|e| format!("join the container's PID namespace: {e}"))?,
                PidNs::Host => {}
            }
            let (argv, envp): (Vec<*const libc::c_char>, Vec<*const libc::c_char>) =
                match steps.iter().find_map(|s| match s {
                    Step::Exec { argv, envp, .. } => Some((argv, envp)),
                    _ => None,
                }) {
                    Some((argv, envp)) => (
                        argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect(),
                        envp.iter().map(|e| e.as_ptr()).chain(std::iter::once(std::ptr::null())).collect(),
                    ),
                    None => return Err("internal: no exec step".into()),
                };
            // SAFETY: fork in a multi-threaded process; the child only runs
            // `child`, which makes system calls on data prepared above.
            match unsafe { libc::fork() } {
                -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
                // SAFETY: we are the freshly forked child.
                0 => unsafe { child(&steps, status_w.as_raw_fd(), &argv, &envp) },
                pid => Ok(pid),
            }
        })
        .map_err(|e| format!("cannot start the fork thread: {e}"))?;
    let pid = handle.join().map_err(|_| "the fork thread panicked".to_string())??;
    Ok((pid, status_r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn failures_name_the_step_and_success_closes_the_pipe() {
        let reaper = crate::reaper::shared_for_tests();
        let exec = |path: &std::ffi::CStr| Step::Exec { path: path.into(), argv: vec![path.into()], envp: vec![] };
        let steps = Arc::new(vec![Step::Chdir(c"/nonexistent-dir".into()), exec(c"/bin/true")]);
        let ((pid, _rx), status) = reaper.register(|| fork(steps.clone(), PidNs::Host)).expect("fork");
        assert!(pid > 0);
        match read_status(&status) {
            Status::Failed { index, errno } => {
                let msg = describe_failure(&steps, index, errno);
                assert!(msg.starts_with("chdir to /nonexistent-dir: No such file"), "{msg}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let steps = Arc::new(vec![exec(c"/bin/true")]);
        let ((_pid, rx), status) = reaper.register(|| fork(steps.clone(), PidNs::Host)).expect("fork");
        assert_eq!(read_status(&status), Status::Execed);
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(10)).expect("exit"),
            crate::reaper::ExitState::Exited(0)
        );
    }

    #[test]
    fn the_child_waits_for_start() {
        let reaper = crate::reaper::shared_for_tests();
        let (start_r, start_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let steps = Arc::new(vec![
            Step::WaitStart(start_r.as_raw_fd()),
            Step::Exec {
                path: c"/bin/sh".into(),
                argv: vec![c"sh".into(), c"-c".into(), c"exit 3".into()],
                envp: vec![],
            },
        ]);
        let ((_pid, rx), status) = reaper.register(|| fork(steps.clone(), PidNs::Host)).expect("fork");
        drop(start_r);
        assert_eq!(read_status(&status), Status::Ready);
        assert!(rx.try_recv().is_err(), "still waiting");
        nix::unistd::write(&start_w, b"s").expect("start");
        assert_eq!(read_status(&status), Status::Execed);
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(10)).expect("exit"),
            crate::reaper::ExitState::Exited(3)
        );
    }
}
