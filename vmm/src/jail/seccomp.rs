//! seccomp filters of the VMM's threads (seccompiler, as Firecracker).
//!
//! Each thread installs its own filter once it is set up and before it
//! handles anything the guest controls: a vCPU thread before its first
//! KVM_RUN, the RIP sampler before its first kick, the VMM thread after it
//! started the others and before its event loop. After that no thread can
//! create threads or processes, execute a program, open network sockets,
//! mount, trace, or use an ioctl other than the KVM and socket ones listed
//! here; a `tgkill` can only reach this process's own threads.
//!
//! A system call outside the list raises SIGSYS (`SeccompAction::Trap`);
//! the handler writes `kata-like-vmm: seccomp: a <vmm|vcpu|rip-sampler>
//! thread made forbidden system call <nr>` to stderr (the VMM log) and exits with
//! [`EXIT_SECCOMP`]. `--seccomp=log` lets such calls through and has the
//! kernel log them (audit), for finding what a new code path needs;
//! `--seccomp=off` installs nothing.
//!
//! The lists are what `strace -f` saw each thread do after installing its
//! filter, through the VM test suite (cold boots with vsock, virtio-fs and
//! virtio-net, snapshots, restores, pause/resume, guest resets; see
//! docs/security.md for the command), plus the calls of paths the suite
//! reaches rarely (guest-initiated vsock connections, the RIP sampler's
//! sleep, allocation growth), each named below. The whole suite runs in
//! trap mode, so a missing call fails it with the message above.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_pit_state2,
    kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompFilter,
    SeccompRule,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iowr_nr};

/// Exit status of a VMM stopped by its seccomp filter (128 + SIGSYS, as if
/// the kernel had killed it).
pub const EXIT_SECCOMP: i32 = 128 + libc::SIGSYS;

const KVMIO: u32 = 0xAE;
// The ioctl numbers the VMM uses once its threads run (kvm-ioctls keeps its
// own private; these are the same definitions).
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_translation);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);

pub use kata_like_vmm_contract::SeccompMode;

/// The threads of the VMM, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The VMM thread: event loop, devices, control socket, snapshots.
    Vmm,
    /// A vCPU thread: KVM_RUN, register accesses (which activate devices
    /// and may move their queues), its own state for snapshots.
    Vcpu,
    /// The optional RIP sampler: sleeps and kicks vCPU threads.
    Sampler,
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules (a bug in the lists here).
    #[error("seccomp filter for {kind:?}: {source}")]
    Build {
        /// The thread kind.
        kind: ThreadKind,
        /// The error.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("installing the seccomp filter of {kind:?}: {source}")]
    Install {
        /// The thread kind.
        kind: ThreadKind,
        /// The error.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// A system call: its name (for `--print-seccomp`) and number.
pub type Syscall = (&'static str, libc::c_long);

/// `[(name, number), ...]` from `libc::SYS_*` names.
macro_rules! syscalls {
    ($($sys:ident),* $(,)?) => { [$((stringify!($sys), libc::$sys)),*] };
}

fn cond(arg: u8, op: Op, value: u64) -> Cond {
    // Argument indices and lengths here are constants below 6: always valid.
    Cond::new(arg, Len::Dword, op, value).unwrap_or_else(|e| panic!("seccomp condition on arg {arg}: {e}"))
}

fn rule(conds: Vec<Cond>) -> SeccompRule {
    SeccompRule::new(conds).unwrap_or_else(|e| panic!("seccomp rule: {e}"))
}

fn allow(rules: &mut Rules, syscalls: &[Syscall]) {
    for &(_, nr) in syscalls {
        rules.entry(nr).or_default();
    }
}

/// One rule per value of argument `arg` (any of them matches).
fn allow_arg_in(rules: &mut Rules, nr: libc::c_long, arg: u8, values: &[u64]) {
    let list = rules.entry(nr).or_default();
    list.extend(values.iter().map(|&v| rule(vec![cond(arg, Op::Eq, v)])));
}

/// What every thread does: memory, locks, time, signals, exiting, logging
/// to stderr and eventfd signalling.
const COMMON: &[Syscall] = &syscalls![
    SYS_read,
    SYS_write,
    SYS_close,
    SYS_statx,
    SYS_fstat,
    SYS_lseek,
    SYS_mmap,
    SYS_munmap,
    SYS_mremap,
    SYS_mprotect,
    SYS_madvise,
    SYS_brk,
    SYS_futex,
    SYS_sched_yield,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_nanosleep,
    SYS_rt_sigreturn,
    SYS_rt_sigprocmask,
    SYS_sigaltstack,
    SYS_restart_syscall,
    SYS_getpid,
    SYS_gettid,
    SYS_getrandom,
    SYS_exit,
    SYS_exit_group,
];

/// Device work, which runs on the VMM thread and, when a guest register
/// write activates a device, on a vCPU thread: Unix stream I/O (vsock host
/// ends, vhost-user messages with descriptors), the vsock muxer's own epoll
/// and timer, eventfds, and the console file (truncated at its size cap).
const DEVICE_IO: &[Syscall] = &syscalls![
    SYS_recvfrom,
    SYS_sendto,
    SYS_recvmsg,
    SYS_sendmsg,
    SYS_connect,
    SYS_shutdown,
    SYS_fcntl,
    SYS_epoll_ctl,
    SYS_epoll_wait,
    SYS_timerfd_settime,
    SYS_ftruncate,
];

/// What only the VMM thread does: accept host connections, write
/// snapshots and the profile, read KVM's statistics, remove its sockets on
/// exit.
const VMM_ONLY: &[Syscall] = &syscalls![
    SYS_accept4,
    SYS_setsockopt,
    SYS_openat,
    SYS_mkdir,
    SYS_unlink,
    SYS_rename,
    SYS_fsync,
    SYS_pwrite64,
    SYS_pread64,
];

const FIONBIO: u64 = libc::FIONBIO;

/// KVM ioctls on vCPU descriptors after the build: running, fault reports
/// (registers, address translation) and saving state for a snapshot.
fn vcpu_ioctls() -> Vec<u64> {
    [
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
        KVM_TRANSLATE(),
        KVM_GET_MSRS(),
        KVM_GET_LAPIC(),
        KVM_GET_CPUID2(),
        KVM_GET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_GET_DEBUGREGS(),
        KVM_GET_XSAVE(),
        KVM_GET_XCRS(),
        FIONBIO,
    ]
    .to_vec()
}

/// KVM ioctls on the VM descriptor (snapshots) and FIONBIO (std's
/// set_nonblocking on accepted sockets).
fn vmm_ioctls() -> Vec<u64> {
    [KVM_GET_IRQCHIP(), KVM_GET_CLOCK(), KVM_GET_PIT2(), FIONBIO].to_vec()
}

/// The allowed system calls of `kind`, with their argument conditions.
pub fn rules(kind: ThreadKind) -> Rules {
    let mut rules = Rules::new();
    allow(&mut rules, COMMON);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    // Signals only to our own threads: the vCPU kick, and SIGABRT for a
    // Rust abort (double panic), which ends the process anyway.
    let kick = vmm_sys_util::signal::SIGRTMIN() as u64;
    rules.entry(libc::SYS_tgkill).or_default().extend(
        [kick, libc::SIGABRT as u64].into_iter().map(|sig| rule(vec![cond(0, Op::Eq, pid), cond(2, Op::Eq, sig)])),
    );
    match kind {
        ThreadKind::Sampler => {}
        ThreadKind::Vcpu => {
            allow(&mut rules, DEVICE_IO);
            allow_arg_in(&mut rules, libc::SYS_socket, 0, &[libc::AF_UNIX as u64]);
            allow_arg_in(&mut rules, libc::SYS_ioctl, 1, &vcpu_ioctls());
            // Fault reports read System.map: read-only opens only.
            let read_only = (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC) as u64;
            rules.entry(libc::SYS_openat).or_default().push(rule(vec![cond(2, Op::MaskedEq(read_only), 0)]));
        }
        ThreadKind::Vmm => {
            allow(&mut rules, DEVICE_IO);
            allow(&mut rules, VMM_ONLY);
            allow_arg_in(&mut rules, libc::SYS_socket, 0, &[libc::AF_UNIX as u64]);
            // The balloon labels the guest RAM it gives back (smaps).
            allow_arg_in(&mut rules, libc::SYS_prctl, 0, &[libc::PR_SET_VMA as u64]);
            allow_arg_in(&mut rules, libc::SYS_ioctl, 1, &vmm_ioctls());
        }
    }
    rules
}

/// The allowed system calls of `kind` by name, those with argument
/// conditions described: what `kata-like-vmm --print-seccomp` shows.
pub fn describe(kind: ThreadKind) -> Vec<String> {
    let lists: &[&[Syscall]] = match kind {
        ThreadKind::Sampler => &[COMMON],
        ThreadKind::Vcpu => &[COMMON, DEVICE_IO],
        ThreadKind::Vmm => &[COMMON, DEVICE_IO, VMM_ONLY],
    };
    let mut names: Vec<String> =
        lists.iter().flat_map(|l| l.iter()).map(|(name, _)| name.trim_start_matches("SYS_").to_string()).collect();
    names.push("tgkill(own threads; SIGRTMIN, SIGABRT)".into());
    match kind {
        ThreadKind::Sampler => {}
        ThreadKind::Vcpu => {
            names.push("socket(AF_UNIX)".into());
            names.push(format!("ioctl({} KVM vCPU and socket requests)", vcpu_ioctls().len()));
            names.push("openat(read-only)".into());
        }
        ThreadKind::Vmm => {
            names.push("socket(AF_UNIX)".into());
            names.push(format!("ioctl({} KVM VM and socket requests)", vmm_ioctls().len()));
            names.push("prctl(PR_SET_VMA: labels guest RAM the balloon gave back)".into());
        }
    }
    names
}

/// The BPF program of `kind` under `mode` (None for [`SeccompMode::Off`]).
pub fn program(kind: ThreadKind, mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::Trap => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let build = |source| SeccompError::Build { kind, source };
    let filter = SeccompFilter::new(rules(kind), mismatch, SeccompAction::Allow, seccompiler::TargetArch::x86_64)
        .map_err(build)?;
    BpfProgram::try_from(filter).map(Some).map_err(build)
}

/// Installs the filter of `kind` on the calling thread.
pub fn install(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    if let Some(program) = program(kind, mode)? {
        seccompiler::apply_filter(&program).map_err(|source| SeccompError::Install { kind, source })?;
        THREAD_KIND.with(|k| k.set(kind.label()));
        tracing::debug!(?kind, syscalls = rules(kind).len(), "seccomp filter installed");
    }
    Ok(())
}

/// Writes `bytes` to stderr from a signal handler.
fn write_stderr(bytes: &[u8]) {
    // SAFETY: write(2) is async-signal-safe; the buffer is valid for its length.
    unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
}

/// Formats `n` in decimal into `buf`, returning the digits (no allocation).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

thread_local! {
    /// The filter this thread installed, for the SIGSYS report. A const
    /// initialiser and no destructor: reading it in a signal handler
    /// neither allocates nor makes a system call (the handler itself runs
    /// under the filter, so it may only use what every filter allows).
    static THREAD_KIND: std::cell::Cell<&'static str> = const { std::cell::Cell::new("unfiltered") };
}

impl ThreadKind {
    fn label(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Sampler => "rip-sampler",
        }
    }
}

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // siginfo_t for SIGSYS: si_signo, si_errno, si_code (3 ints, padded to
    // 16 bytes), then void *si_call_addr, int si_syscall.
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers;
    // the read stays within its 128 bytes.
    let nr = unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(24).cast::<libc::c_int>()) };
    let kind = THREAD_KIND.with(std::cell::Cell::get);
    let mut digits = [0u8; 20];
    write_stderr(b"kata-like-vmm: seccomp: a ");
    write_stderr(kind.as_bytes());
    write_stderr(b" thread made forbidden system call ");
    write_stderr(decimal(nr.max(0) as u64, &mut digits));
    write_stderr(b"; stopping the VM\n");
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(EXIT_SECCOMP) };
}

/// Installs the SIGSYS handler that reports a forbidden call.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is valid; we set a handler with
    // SA_SIGINFO whose signature matches, and an empty mask.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = sigsys_handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // From <linux/kvm.h> on x86_64.
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(KVM_TRANSLATE(), 0xc018_ae85);
        assert_eq!(KVM_GET_CLOCK(), 0x8030_ae7c);
    }

    #[test]
    fn every_filter_builds_and_threads_differ() {
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Sampler] {
            assert!(program(kind, SeccompMode::Trap).expect("builds").is_some());
            assert!(program(kind, SeccompMode::Off).expect("builds").is_none());
        }
        let (vmm, vcpu, sampler) = (rules(ThreadKind::Vmm), rules(ThreadKind::Vcpu), rules(ThreadKind::Sampler));
        for forbidden in [libc::SYS_execve, libc::SYS_clone, libc::SYS_clone3, libc::SYS_ptrace, libc::SYS_mount] {
            assert!(!vmm.contains_key(&forbidden) && !vcpu.contains_key(&forbidden), "{forbidden}");
        }
        assert!(vmm.contains_key(&libc::SYS_accept4) && !vcpu.contains_key(&libc::SYS_accept4));
        assert!(!sampler.contains_key(&libc::SYS_ioctl));
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Sampler] {
            assert_eq!(describe(kind).len(), rules(kind).len(), "{kind:?}: every allowed call is described once");
        }
    }

    #[test]
    fn decimal_formats_without_allocating() {
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(435, &mut buf), b"435");
        assert_eq!(decimal(u64::MAX, &mut buf), b"18446744073709551615");
    }

    /// A thread under the VMM filter is stopped by a forbidden call, with
    /// the message and exit status the VMM's parent sees. Runs in a child
    /// process, since the handler exits.
    #[test]
    fn a_forbidden_call_is_reported_and_ends_the_process() {
        use std::io::Read;
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes async-signal-safe calls and the
        // filter's own allocations before it exits; the parent waits for it.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: dup2 onto stderr in the child.
            unsafe { libc::dup2(fds[1], libc::STDERR_FILENO) };
            let ok = install_sigsys_handler().is_ok() && install(ThreadKind::Vmm, SeccompMode::Trap).is_ok();
            if ok {
                // SAFETY: a plain system call the filter forbids.
                unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) };
            }
            // SAFETY: leaving the child without running the test harness.
            unsafe { libc::_exit(3) };
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(fds[1]) };
        let mut status = 0;
        // SAFETY: waiting for our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let mut out = String::new();
        // SAFETY: the read end is ours and nothing else closes it.
        let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
        file.read_to_string(&mut out).expect("read");
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), EXIT_SECCOMP, "{out}");
        assert!(out.contains(&format!("forbidden system call {}", libc::SYS_ptrace)), "{out}");
    }
}
