//! A built VM and its run loop.
//!
//! Threads: the calling thread runs the event-manager loop (device events,
//! guest reset, termination signals); one thread per vCPU runs KVM_RUN; an
//! optional sampler thread kicks the vCPUs for RIP samples. The run ends
//! when a vCPU fails, the guest resets or powers off, or the VMM gets
//! SIGTERM/SIGINT/SIGHUP; the returned [`ExitReason`] gives the exit status.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber};
use kvm_ioctls::VmFd;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::config::VmConfig;
use crate::devices::boot_timer::BootTimer;
use crate::devices::bus::lock;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::vsock::Vsock;
use crate::exit::{ExitReason, ExitSignal};
use crate::jail::seccomp::{self, SeccompMode, ThreadKind};
use crate::jail::{JailContents, JailError};
use crate::options::VmmOptions;
use crate::profiler::RipSampler;
use crate::symbols::KernelSymbols;
use crate::vcpu::Vcpu;

/// Signals that stop the VMM cleanly (socket removed, console flushed).
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

const SOURCE_EXIT: u32 = 0;
const SOURCE_RESET: u32 = 1;
const SOURCE_SIGNAL: u32 = 2;

/// `path` made absolute against the current directory (the jail binds
/// host paths at the same place).
fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Event-loop subscriber for the VM's life cycle: vCPU exits, the guest's
/// i8042 reset and host termination signals.
#[derive(Debug)]
pub struct VmmControl {
    exit: Arc<ExitSignal>,
    reset: EventFd,
    signals: OwnedFd,
}

impl VmmControl {
    /// Blocks [`STOP_SIGNALS`] in this thread (and the threads it spawns
    /// later) and receives them through a signalfd instead.
    pub fn new(exit: Arc<ExitSignal>, reset: EventFd) -> std::io::Result<Self> {
        // SAFETY: sigset_t is plain data initialised by sigemptyset; the
        // libc calls get valid pointers to it; signalfd returns a new fd we
        // own (checked below) or -1.
        let fd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signo in STOP_SIGNALS {
                libc::sigaddset(&mut set, signo);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor returned by signalfd.
        let signals = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(VmmControl { exit, reset, signals })
    }

    fn read_signal(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data; read fills at most its size
        // from our signalfd.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the buffer is `info`, `size` bytes long.
        let n =
            unsafe { libc::read(self.signals.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

impl MutEventSubscriber for VmmControl {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, data) in [
            (self.exit.event().as_raw_fd(), SOURCE_EXIT),
            (self.reset.as_raw_fd(), SOURCE_RESET),
            (self.signals.as_raw_fd(), SOURCE_SIGNAL),
        ] {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                tracing::error!(error = ?e, "cannot watch VM life-cycle events");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            SOURCE_EXIT => {
                let _ = self.exit.event().read();
            }
            SOURCE_RESET => {
                let _ = self.reset.read();
                tracing::info!("guest reset or powered off");
                self.exit.request(ExitReason::GuestShutdown);
            }
            SOURCE_SIGNAL => {
                if let Some(signo) = self.read_signal() {
                    tracing::info!(signal = signo, "stopping on signal");
                    self.exit.request(ExitReason::Signal(signo));
                }
            }
            other => tracing::warn!(source = other, "unknown life-cycle event"),
        }
    }
}

/// A VM ready to run, built by [`Vmm::build`] or [`Vmm::restore`].
pub struct Vmm {
    pub(crate) config: VmConfig,
    pub(crate) options: VmmOptions,
    // Kept open for the VM's lifetime: the vCPU and device fds belong to it.
    pub(crate) _vm: Arc<VmFd>,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) event_manager: EventManager<Arc<Mutex<dyn MutEventSubscriber>>>,
    // The event loop holds it too; kept here to make ownership explicit.
    pub(crate) _control: Arc<Mutex<VmmControl>>,
    pub(crate) exit: Arc<ExitSignal>,
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    pub(crate) vsock: Option<Arc<Mutex<Vsock>>>,
    pub(crate) fs: Vec<Arc<Mutex<Fs>>>,
    pub(crate) net: Vec<Arc<Mutex<Net>>>,
    pub(crate) balloon: Option<Arc<Mutex<Balloon>>>,
    pub(crate) sampler: Option<Arc<RipSampler>>,
    pub(crate) boot_timer: Arc<Mutex<BootTimer>>,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm").field("config", &self.config).field("vcpus", &self.vcpus.len()).finish()
    }
}

impl Vmm {
    /// Runs the VM until it ends and returns why. The vCPU threads are left
    /// running: the caller is expected to exit the process.
    pub fn run(mut self) -> ExitReason {
        let seccomp = self.options.seccomp;
        if let Err(e) = crate::pause::install_kick_handler() {
            self.exit.request(ExitReason::Fatal(format!("cannot install the vCPU kick signal handler: {e}")));
        }
        if seccomp != SeccompMode::Off {
            if let Err(e) = seccomp::install_sigsys_handler() {
                self.exit.request(ExitReason::Fatal(e.to_string()));
            }
        }
        for vcpu in std::mem::take(&mut self.vcpus) {
            if let Err(e) = vcpu.spawn(seccomp) {
                self.exit.request(ExitReason::Fatal(format!("cannot start a vCPU thread: {e}")));
            }
        }
        if let Some(sampler) = &self.sampler {
            if let Err(e) = sampler.start(self.exit.clone(), seccomp) {
                tracing::warn!(error = %e, "cannot start the RIP sampler");
            }
        }
        // Last: from here this thread creates no more threads.
        if let Err(e) = seccomp::install(ThreadKind::Vmm, seccomp) {
            self.exit.request(ExitReason::Fatal(e.to_string()));
        }
        let reason = loop {
            if let Some(reason) = self.exit.reason() {
                break reason;
            }
            if let Err(e) = self.event_manager.run() {
                self.exit.request(ExitReason::Fatal(format!("event loop failed: {e:?}")));
            }
        };
        self.finish(&reason);
        reason
    }

    /// What the jail must hold for the VM to go on running: the
    /// directories of the sockets the VMM serves (it removes them on exit;
    /// guest-initiated vsock connections go to `<uds>_<port>` beside the
    /// vsock socket) and of the RIP profile, writable; the kernel's
    /// System.map, read-only, for fault reports. Snapshots can only be
    /// written into those writable directories.
    pub fn jail_contents(&self) -> JailContents {
        let mut contents = JailContents::default();
        let parents = [
            self.config.vsock.as_ref().map(|v| v.uds_path.as_path()),
            self.options.api_sock.as_deref(),
            self.options.profile_rip.as_ref().map(|(path, _)| path.as_path()),
        ];
        for path in parents.into_iter().flatten() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                contents.writable(absolute(dir));
            }
        }
        if let Some(map) = self.config.kernel.parent().map(|d| d.join("System.map")).filter(|m| m.exists()) {
            contents.read_only(absolute(&map));
        }
        contents
    }

    /// Enters the jail configured in the options, if any. Must be called
    /// before [`Vmm::run`] (which starts the vCPU threads).
    pub fn enter_jail(&self) -> Result<(), JailError> {
        let Some(config) = &self.options.jail else { return Ok(()) };
        let contents = self.jail_contents();
        crate::jail::enter(config, &contents)?;
        tracing::info!(
            uid = config.uid,
            gid = config.gid,
            writable = ?contents.writable,
            read_only = ?contents.read_only,
            "jailed: own mount, network, IPC and UTS namespaces, no capabilities"
        );
        crate::jail::set_entered(contents);
        Ok(())
    }

    fn finish(&self, reason: &ExitReason) {
        lock(&self.serial).flush();
        if let Some(vsock) = &self.vsock {
            let mut vsock = lock(vsock);
            tracing::debug!(metrics = %vsock.metrics().summary(), "vsock");
            vsock.close_backend();
        }
        for fs in &self.fs {
            tracing::debug!(metrics = %lock(fs).metrics().summary(), "virtio-fs");
        }
        for net in &self.net {
            tracing::info!(metrics = %lock(net).metrics().summary(), "virtio-net");
        }
        if let Some(balloon) = &self.balloon {
            tracing::info!(metrics = %lock(balloon).metrics().summary(), "virtio-balloon");
        }
        if let (Some(sampler), Some((path, _))) = (&self.sampler, &self.options.profile_rip) {
            let symbols = KernelSymbols::for_kernel(&self.config.kernel);
            match sampler.write_report(path, symbols.as_ref()) {
                Ok(()) => tracing::info!(path = %path.display(), "RIP profile written"),
                Err(e) => tracing::warn!(error = %e, "cannot write the RIP profile"),
            }
        }
        let boot_us = lock(&self.boot_timer).fired_at().map(|d| d.as_micros() as u64);
        match reason {
            ExitReason::GuestShutdown => tracing::info!(boot_timer_us = ?boot_us, "VM shut down"),
            ExitReason::Signal(signo) => tracing::info!(signal = signo, "VM stopped by signal"),
            ExitReason::Fatal(why) => tracing::error!(boot_timer_us = ?boot_us, "VM failed: {why}"),
        }
    }
}
