//! vCPU threads: one per vCPU, each looping on KVM_RUN and dispatching port
//! and MMIO exits to the buses. Any exit we cannot handle ends the VM with a
//! report naming the guest RIP, its kernel symbol and the code bytes there,
//! instead of hanging.

use std::sync::Arc;

use kvm_bindings::{kvm_run, KVM_EXIT_INTERNAL_ERROR, KVM_INTERNAL_ERROR_EMULATION};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::boot::BootProtocol;
use crate::arch::x86_64::{cpuid, regs};
use crate::clock;
use crate::devices::Bus;
use crate::exit::{ExitReason, ExitSignal};
use crate::jail::seccomp::{SeccompMode, ThreadKind};
use crate::pause::PauseGate;
use crate::profiler::RipSampler;
use crate::snapshot::{self, SnapshotError, VcpuState};
use crate::symbols::KernelSymbols;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("vCPU {index}: {what}: {source}")]
    Kvm {
        /// vCPU index.
        index: u8,
        /// The operation.
        what: &'static str,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// Register setup failed.
    #[error("vCPU {index}: {source}")]
    Regs {
        /// vCPU index.
        index: u8,
        /// The error.
        source: regs::RegsError,
    },
}

/// Where the boot vCPU starts.
#[derive(Clone, Copy, Debug)]
pub struct BootEntry {
    /// Boot protocol.
    pub protocol: BootProtocol,
    /// Entry point.
    pub entry: u64,
}

/// One vCPU and what it needs to run.
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    mem: GuestMemoryMmap,
    exit: Arc<ExitSignal>,
    symbols: Arc<std::sync::OnceLock<Option<KernelSymbols>>>,
    kernel_path: std::path::PathBuf,
    sampler: Option<Arc<RipSampler>>,
    gate: Arc<PauseGate>,
    msr_list: Arc<Vec<u32>>,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").field("index", &self.index).finish()
    }
}

/// Shared, read-only context of all vCPUs.
#[derive(Clone, Debug)]
pub struct VcpuContext {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Guest memory (for fault reports).
    pub mem: GuestMemoryMmap,
    /// Where to report the end of the VM.
    pub exit: Arc<ExitSignal>,
    /// The kernel image, whose System.map names RIPs.
    pub kernel_path: std::path::PathBuf,
    /// Optional RIP sampler.
    pub sampler: Option<Arc<RipSampler>>,
    /// Where vCPUs park for snapshots.
    pub gate: Arc<PauseGate>,
    /// The MSRs a snapshot saves.
    pub msr_list: Arc<Vec<u32>>,
}

impl Vcpu {
    /// Configures vCPU `index` of `count`: CPUID, FPU, LAPIC and, for the
    /// boot vCPU, the entry registers. Secondary vCPUs wait for INIT/SIPI.
    pub fn new(
        fd: VcpuFd,
        index: u8,
        count: u8,
        template: cpuid::CpuTemplate,
        supported: &kvm_bindings::CpuId,
        boot: Option<BootEntry>,
        ctx: &VcpuContext,
    ) -> Result<Self, VcpuError> {
        let kvm = |what| move |source| VcpuError::Kvm { index, what, source };
        let regs_err = |source| VcpuError::Regs { index, source };
        fd.set_cpuid2(&cpuid::vcpu_cpuid(template, supported, index, count)).map_err(kvm("KVM_SET_CPUID2"))?;
        regs::setup_fpu(&fd).map_err(regs_err)?;
        regs::setup_lapic(&fd).map_err(regs_err)?;
        if let Some(boot) = boot {
            regs::setup_sregs(&fd, boot.protocol).map_err(regs_err)?;
            regs::setup_regs(&fd, boot.protocol, boot.entry).map_err(regs_err)?;
        }
        Ok(Vcpu::wrap(fd, index, ctx))
    }

    /// A vCPU resumed from a snapshot's state.
    pub fn restore(fd: VcpuFd, state: &VcpuState, ctx: &VcpuContext) -> Result<Self, SnapshotError> {
        snapshot::kvm::restore_vcpu(&fd, state)?;
        Ok(Vcpu::wrap(fd, state.index, ctx))
    }

    fn wrap(fd: VcpuFd, index: u8, ctx: &VcpuContext) -> Self {
        Vcpu {
            fd,
            index,
            pio: ctx.pio.clone(),
            mmio: ctx.mmio.clone(),
            mem: ctx.mem.clone(),
            exit: ctx.exit.clone(),
            symbols: Arc::new(std::sync::OnceLock::new()),
            kernel_path: ctx.kernel_path.clone(),
            sampler: ctx.sampler.clone(),
            gate: ctx.gate.clone(),
            msr_list: ctx.msr_list.clone(),
        }
    }

    /// The CPUID KVM actually gives this vCPU (KVM_GET_CPUID2).
    pub fn effective_cpuid(&self) -> Result<kvm_bindings::CpuId, VcpuError> {
        self.fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(|source| VcpuError::Kvm {
            index: self.index,
            what: "KVM_GET_CPUID2",
            source,
        })
    }

    /// This vCPU's KVM statistics (exit counters). Opening takes the vCPU's
    /// lock in KVM (call it before the vCPU runs); the file it returns is
    /// then readable from any thread at any time.
    pub fn stats(&self) -> std::io::Result<crate::kvm_stats::VcpuStats> {
        crate::kvm_stats::VcpuStats::open(&self.fd)
    }

    /// Runs the vCPU on a new thread named `vcpu<N>`, under the vCPU
    /// seccomp filter.
    pub fn spawn(self, seccomp: SeccompMode) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name(format!("vcpu{}", self.index)).spawn(move || self.run(seccomp))
    }

    fn run(mut self, seccomp: SeccompMode) {
        // Before the first KVM_RUN: everything after it is guest-driven.
        if let Err(e) = crate::jail::seccomp::install(ThreadKind::Vcpu, seccomp) {
            self.exit.request(ExitReason::Fatal(format!("vCPU {}: {e}", self.index)));
            return;
        }
        if let Some(sampler) = &self.sampler {
            sampler.register_current_thread();
        }
        let immediate_exit = std::ptr::addr_of_mut!(self.fd.get_kvm_run().immediate_exit);
        self.gate.register(self.index, immediate_exit);
        if let Err(what) = self.run_loop() {
            let report = format!("vCPU {}: {what}; {}", self.index, self.describe_rip());
            self.exit.request(ExitReason::Fatal(report));
        }
        // Before the kvm_run page is unmapped with the VcpuFd.
        self.gate.unregister(self.index);
    }

    fn run_loop(&mut self) -> Result<(), String> {
        let mut first = true;
        loop {
            if first && self.index == 0 {
                first = false;
                tracing::info!(
                    us_since_start = clock::since_start().as_micros() as u64,
                    monotonic_ns = clock::monotonic_ns(),
                    "first KVM_RUN"
                );
            }
            if self.exit.reason().is_some() {
                return Ok(());
            }
            if self.gate.pause_requested() {
                self.pause_here();
                continue;
            }
            let mut kicked = false;
            let outcome = match self.fd.run() {
                Ok(exit) => dispatch(&self.pio, &self.mmio, &self.exit, exit),
                Err(e) if e.errno() == libc::EINTR => {
                    kicked = true;
                    Ok(())
                }
                Err(e) if e.errno() == libc::EAGAIN => Ok(()),
                Err(e) => Err(Some(format!("KVM_RUN failed: {e}"))),
            };
            match outcome {
                Ok(()) => {}
                Err(Some(what)) => return Err(what),
                Err(None) => return Err(internal_error(self.fd.get_kvm_run())),
            }
            if kicked {
                // A RIP sample or a pause (looked at above). A pause request
                // may leave immediate_exit set after this vCPU already
                // parked and resumed: clear it.
                self.fd.set_kvm_immediate_exit(0);
                self.sample();
            }
        }
    }

    /// Stops for a snapshot: lets KVM finish the exit just handled without
    /// running guest code, saves the state, and parks until resumed.
    fn pause_here(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        let mut outcome = Err("KVM_RUN kept exiting".to_string());
        // Completing string I/O can exit again; a few rounds always settle.
        for _ in 0..64 {
            match self.fd.run() {
                Err(e) if e.errno() == libc::EINTR => {
                    outcome = Ok(());
                    break;
                }
                Err(e) if e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    outcome = Err(format!("KVM_RUN failed: {e}"));
                    break;
                }
                Ok(exit) => {
                    if let Err(e) = dispatch(&self.pio, &self.mmio, &self.exit, exit) {
                        outcome = Err(e.unwrap_or_else(|| "KVM internal error".into()));
                        break;
                    }
                }
            }
        }
        self.fd.set_kvm_immediate_exit(0);
        let saved = outcome
            .and_then(|()| snapshot::kvm::save_vcpu(&self.fd, self.index, &self.msr_list).map_err(|e| e.to_string()));
        self.gate.park(self.index, saved);
    }

    fn sample(&self) {
        if let Some(sampler) = &self.sampler {
            if let Ok(regs) = self.fd.get_regs() {
                sampler.record(self.index, regs.rip);
            }
        }
    }

    /// "RIP 0x... (symbol+off), code: bytes" for fault reports.
    fn describe_rip(&self) -> String {
        let Ok(regs) = self.fd.get_regs() else { return "registers unavailable".into() };
        let linear = self.fd.get_sregs().map(|s| s.cs.base).unwrap_or(0).wrapping_add(regs.rip);
        let symbol = self
            .symbols
            .get_or_init(|| KernelSymbols::for_kernel(&self.kernel_path))
            .as_ref()
            .and_then(|s| s.lookup(regs.rip))
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        let code = match self.fd.translate_gva(linear) {
            Ok(t) if t.valid != 0 => {
                let mut bytes = [0u8; 16];
                match self.mem.read_slice(&mut bytes, GuestAddress(t.physical_address)) {
                    Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "),
                    Err(_) => format!("unreadable at gpa {:#x}", t.physical_address),
                }
            }
            _ => "untranslatable RIP".into(),
        };
        format!("RIP {:#x}{symbol}, RSP {:#x}, code: {code}", regs.rip, regs.rsp)
    }
}

/// Handles one exit. `Err(Some(why))` ends the VM; `Err(None)` is
/// KVM_EXIT_INTERNAL_ERROR, described from kvm_run once the exit's borrow of
/// the vCPU ends.
fn dispatch(pio: &Bus, mmio: &Bus, exit_signal: &ExitSignal, exit: VcpuExit<'_>) -> Result<(), Option<String>> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                // Unclaimed ports float high, as on real hardware.
                data.fill(0xff);
            }
            Ok(())
        }
        VcpuExit::IoOut(port, data) => {
            pio.write(u64::from(port), data);
            Ok(())
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                tracing::debug!(addr, "MMIO read of an unassigned address");
                data.fill(0);
            }
            Ok(())
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                tracing::debug!(addr, "MMIO write to an unassigned address");
            }
            Ok(())
        }
        VcpuExit::Shutdown => Err(Some("the guest triple-faulted (KVM_EXIT_SHUTDOWN)".into())),
        VcpuExit::Hlt => Err(Some("the guest halted with no interrupt source (KVM_EXIT_HLT)".into())),
        VcpuExit::FailEntry(reason, cpu) => {
            Err(Some(format!("KVM could not enter the guest (hardware entry failure {reason:#x} on CPU {cpu})")))
        }
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN | kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                exit_signal.request(ExitReason::GuestShutdown);
                Ok(())
            }
            other => Err(Some(format!("guest system event {other} (crash)"))),
        },
        VcpuExit::InternalError => Err(None),
        other => Err(Some(format!("unhandled KVM exit {other:?}"))),
    }
}

/// Describes KVM_EXIT_INTERNAL_ERROR from the kvm_run area.
fn internal_error(run: &kvm_run) -> String {
    if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
        return "KVM internal error".into();
    }
    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
    // active member of the union.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let kind = if internal.suberror == KVM_INTERNAL_ERROR_EMULATION {
        "instruction emulation failed (the host cannot emulate a guest instruction; check the CPU template)"
    } else {
        "KVM internal error"
    };
    let n = (internal.ndata as usize).min(internal.data.len());
    format!("{kind}, KVM_EXIT_INTERNAL_ERROR suberror {} data {:x?}", internal.suberror, &internal.data[..n])
}
