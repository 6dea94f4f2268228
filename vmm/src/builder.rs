//! `VmConfig` → [`Vmm`]: two recipes, each its own sequence of steps, on
//! steps they share (as Firecracker's `build_microvm_for_boot` and
//! `build_microvm_from_snapshot`).
//!
//! [`Vmm::build`] boots a new VM:
//! 1. KVM and the VM; fresh guest memory registered with KVM.
//! 2. In-kernel IRQ chip (PIC + IO-APIC + LAPICs) and PIT.
//! 3. Kernel, initrd, MP table.
//! 4. Devices: COM1, i8042, boot timer, virtio-vsock, virtio-fs,
//!    virtio-net (irqfd + ioeventfds), each adding its command-line
//!    parameters.
//! 5. vCPUs with the CPUID template, the boot vCPU at the kernel entry;
//!    then the finished command line and the boot protocol data.
//! 6. The event loop's life-cycle control and control socket.
//!
//! [`Vmm::restore`] resumes a snapshot's VM in a new VMM process:
//! 1. The saved state; its configuration with the new host ends.
//! 2. KVM and the VM; guest memory from the snapshot's memory file (the
//!    guest's kernel, initrd and MP table are in it).
//! 3. IRQ chip and PIT, then their saved state.
//! 4. The same devices in the same MMIO slots; COM1 and the virtio
//!    transports in their saved state.
//! 5. vCPUs in their saved state.
//! 6. As step 6 of the boot.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::api::{ApiServer, Controller};
use crate::arch::x86_64::layout::*;
use crate::arch::x86_64::{boot, mptable};
use crate::config::{ConfigError, VmConfig};
use crate::devices::boot_timer::BootTimer;
use crate::devices::i8042::I8042;
use crate::devices::serial::{self, SerialDevice};
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{Net, NetError, Tap, TapError};
use crate::devices::virtio::vsock::device::VsockError;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{IrqTrigger, VirtioDevice};
use crate::devices::{Bus, BusError, EventFdTrigger};
use crate::exit::ExitSignal;
use crate::memory::{self, MemoryError};
use crate::options::VmmOptions;
use crate::pause::PauseGate;
use crate::profiler::RipSampler;
use crate::snapshot::{self, SnapshotError, TransportSnapshot, VmState};
use crate::vcpu::{BootEntry, Vcpu, VcpuContext, VcpuError};
use crate::vmm::{Vmm, VmmControl};

/// What a restore replaces in the snapshot's configuration: the host ends
/// of the devices, which belong to the new VMM process.
#[derive(Clone, Debug, Default)]
pub struct RestoreOverrides {
    /// The vsock device's Unix socket.
    pub vsock_uds: Option<PathBuf>,
    /// virtio-fs devices: same tags, in the same order, new sockets.
    pub fs: Vec<crate::config::FsConfig>,
    /// virtio-net devices: as many as the snapshot has.
    pub net: Vec<crate::config::NetConfig>,
    /// The console.
    pub serial: Option<crate::devices::serial::SerialOutput>,
    /// The console file's size cap.
    pub serial_limit: Option<u64>,
}

impl RestoreOverrides {
    /// The snapshot's configuration with the new host ends. The guest saw
    /// the snapshot's devices, so the set of devices must stay the same.
    pub fn apply(&self, mut config: VmConfig) -> Result<VmConfig, String> {
        if let Some(uds) = &self.vsock_uds {
            let vsock = config.vsock.as_mut().ok_or("the snapshot's VM has no vsock device")?;
            vsock.uds_path = uds.clone();
        }
        let saved_tags: Vec<&str> = config.fs.iter().map(|f| f.tag.as_str()).collect();
        let new_tags: Vec<&str> = self.fs.iter().map(|f| f.tag.as_str()).collect();
        if saved_tags != new_tags {
            return Err(format!(
                "the snapshot's VM has virtio-fs devices {saved_tags:?}; the restore must pass --fs TAG=SOCKET for exactly those (got {new_tags:?})"
            ));
        }
        config.fs = self.fs.clone();
        if self.net.len() != config.net.len() {
            return Err(format!(
                "the snapshot's VM has {} virtio-net devices; the restore must pass --net for each (got {})",
                config.net.len(),
                self.net.len()
            ));
        }
        config.net = self.net.clone();
        if let Some(serial) = &self.serial {
            config.serial = serial.clone();
        }
        if let Some(limit) = self.serial_limit {
            config.serial_limit_bytes = limit;
        }
        Ok(config)
    }
}

/// Why a VM could not be built. Every variant names the thing at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// /dev/kvm cannot be used.
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user open /dev/kvm?)")]
    Kvm(kvm_ioctls::Error),
    /// KVM lacks something we need.
    #[error("KVM lacks {0}")]
    KvmCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    KvmIoctl {
        /// The operation.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory setup failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel or initrd loading failed.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// The MP table could not be written.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// The console output could not be opened.
    #[error("serial output {path}: {source}")]
    Serial {
        /// The output.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The vsock device could not be created.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// A virtio-fs device could not reach its virtiofsd.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A virtio-net device could not be created.
    #[error("net device {index}: {source}")]
    Net {
        /// Index in the configuration.
        index: usize,
        /// The error.
        source: NetError,
    },
    /// A virtio-net device's tap could not be opened.
    #[error("net device {index}: {source}")]
    Tap {
        /// Index in the configuration.
        index: usize,
        /// The error.
        source: TapError,
    },
    /// Device placement failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// An eventfd or thread could not be created.
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// vCPU setup failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The event loop could not be set up.
    #[error("event loop: {0:?}")]
    EventManager(event_manager::Error),
    /// The snapshot to restore is unusable.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The snapshot does not fit the restore's devices.
    #[error("cannot restore: {0}")]
    Restore(String),
    /// The control socket could not be created.
    #[error("control socket {}: {source}", path.display())]
    Api {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::KvmIoctl { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    move |source| BuildError::Io { what, source }
}

fn eventfd(what: &'static str) -> Result<EventFd, BuildError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(io_err(what))
}

/// Checks that KVM has every capability this VMM needs.
pub fn check_kvm(kvm: &Kvm) -> Result<(), BuildError> {
    // The same list `kata-like check` asks, from the contract crate.
    match kata_like_vmm_contract::kvm::missing_capability(kvm) {
        Some(name) => Err(BuildError::KvmCapability(name)),
        None => Ok(()),
    }
}

/// Registers `device` at MMIO slot `slot` with its irqfd and ioeventfds and
/// adds its `virtio_mmio.device=` parameter to the command line.
fn attach_virtio<D>(
    vm: &VmFd,
    mem: &vm_memory::GuestMemoryMmap,
    mmio: &mut Bus,
    cmdline: &mut Cmdline,
    slot: u32,
    device: Arc<Mutex<D>>,
    interrupt: Arc<IrqTrigger>,
) -> Result<Arc<Mutex<MmioTransport>>, BuildError>
where
    D: VirtioDevice + 'static,
{
    let base = VIRTIO_MMIO_BASE + u64::from(slot) * VIRTIO_MMIO_SIZE;
    let irq = VIRTIO_IRQ_BASE + slot;
    vm.register_irqfd(interrupt.irqfd(), irq).map_err(kvm_err("KVM_IRQFD for a virtio device"))?;
    {
        let dev = crate::devices::bus::lock(&device);
        for (index, evt) in dev.queue_events().iter().enumerate() {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET), index as u32)
                .map_err(kvm_err("KVM_IOEVENTFD for a virtio queue"))?;
        }
    }
    let transport = Arc::new(Mutex::new(MmioTransport::new(mem.clone(), device, interrupt)));
    mmio.insert(transport.clone(), base, VIRTIO_MMIO_SIZE)?;
    cmdline
        .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, vm_memory::GuestAddress(base), irq, None)
        .map_err(boot::BootError::Cmdline)?;
    Ok(transport)
}

impl Vmm {
    /// Boots a new VM from `config`, ready to [`Vmm::run`]: the boot
    /// recipe.
    pub fn build(config: VmConfig, options: VmmOptions) -> Result<Vmm, BuildError> {
        config.validate()?;
        let mem_size = u64::from(config.memory_mib) << 20;

        // 1. KVM, VM, fresh memory.
        let (kvm, vm) = create_vm()?;
        let mem = memory::create(mem_size)?;
        memory::register(&vm, &mem)?;
        step("VM and memory");

        // 2. Interrupt controllers and timer.
        create_irqchip_and_pit(&vm)?;
        step("irqchip and PIT");

        // 3. Kernel, initrd, MP table. The command line is written in step
        //    5, once the devices have added their parameters.
        let kernel = boot::load_kernel(&mem, &config.kernel, mem_size)?;
        let initrd = match &config.initrd {
            Some(path) => Some(boot::load_initrd(&mem, path, &kernel, mem_size)?),
            None => None,
        };
        mptable::write(&mem, config.vcpus)?;
        step("kernel, initrd, MP table");

        // 4. Devices.
        let mut cmdline = configured_cmdline(&config)?;
        let (serial_irq, serial_out) = serial_ends(&vm, &config)?;
        let serial = SerialDevice::new(serial_irq, serial_out);
        let devices = attach_devices(&config, &vm, &mem, &mut cmdline, serial)?;
        step("devices");

        // 5. vCPUs, the boot vCPU at the kernel entry; the command line and
        //    boot protocol data.
        let ctx = vcpu_context(&kvm, &config, &options, &mem, &devices)?;
        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for index in 0..config.vcpus {
            let fd = vm.create_vcpu(u64::from(index)).map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let entry = (index == 0).then_some(BootEntry { protocol: kernel.protocol, entry: kernel.entry.0 });
            vcpus.push(Vcpu::new(fd, index, config.vcpus, config.cpu_template, &supported, entry, &ctx)?);
        }
        hide_unapplied_cpuid(&vcpus, config.cpu_template, &supported, config.vcpus, &mut cmdline)?;
        boot::write_boot_info(&mem, &kernel, &cmdline, initrd, mem_size)?;
        step("vCPUs and boot info");

        // 6. Life-cycle control and control socket.
        let vmm = into_vmm(config, options, vm, mem, vcpus, ctx, devices)?;
        log_cmdline(&cmdline);
        Ok(vmm)
    }

    /// Rebuilds the VM a snapshot directory holds, ready to [`Vmm::run`]
    /// from where it was paused, with the host ends in `overrides`: the
    /// restore recipe.
    pub fn restore(dir: &Path, overrides: &RestoreOverrides, options: VmmOptions) -> Result<Vmm, BuildError> {
        // 1. The saved state and the configuration it is restored with.
        let state = snapshot::format::read(&dir.join(snapshot::STATE_FILE))?;
        let config = restore_config(&state, overrides)?;
        let mem_size = u64::from(config.memory_mib) << 20;

        // 2. KVM, VM, the snapshot's memory. The memory file's checksum is
        //    computed on a thread of its own meanwhile, and waited for
        //    before the VM is handed over to run (step 6).
        let memory_file = dir.join(snapshot::MEMORY_FILE);
        let crc32 = (!options.skip_snapshot_check).then_some(state.memory_crc32);
        if crc32.is_none() {
            tracing::warn!("the snapshot's memory file is not checked (--skip-snapshot-check)");
        }
        let check = crc32.map(|crc32| snapshot::memory::spawn_check(&memory_file, crc32));
        let (kvm, vm) = create_vm()?;
        let mem = snapshot::memory::restore(&memory_file, mem_size)?;
        memory::register(&vm, &mem)?;
        step("VM and memory");

        // 3. Interrupt controllers and timer, in their saved state before
        //    any device can raise an interrupt into them.
        create_irqchip_and_pit(&vm)?;
        snapshot::kvm::restore_vm(&vm, &state.kvm)?;
        step("irqchip and PIT");

        // 4. Devices, as the snapshot's VM had them.
        let mut cmdline = configured_cmdline(&config)?;
        let (serial_irq, serial_out) = serial_ends(&vm, &config)?;
        let serial = SerialDevice::from_snapshot(serial_irq, serial_out, &state.serial)
            .map_err(io_err("restoring the serial device"))?;
        let devices = attach_devices(&config, &vm, &mem, &mut cmdline, serial)?;
        restore_transports(&devices.transports, &state.transports)?;
        step("devices");

        // 5. vCPUs.
        let ctx = vcpu_context(&kvm, &config, &options, &mem, &devices)?;
        let mut vcpus = Vec::with_capacity(state.vcpus.len());
        for (index, saved) in (0..config.vcpus).zip(&state.vcpus) {
            let fd = vm.create_vcpu(u64::from(index)).map_err(kvm_err("KVM_CREATE_VCPU"))?;
            vcpus.push(Vcpu::restore(fd, saved, &ctx)?);
        }
        for transport in &devices.transports {
            crate::devices::bus::lock(transport).vcpus_restored();
        }
        step("vCPUs");

        // 6. The memory checked; life-cycle control and control socket.
        if let Some(check) = check {
            check.wait()?;
        }
        step("memory checksum");
        let vmm = into_vmm(config, options, vm, mem, vcpus, ctx, devices)?;
        tracing::info!("VM restored from a snapshot");
        log_cmdline(&cmdline);
        Ok(vmm)
    }
}

/// Logs (at debug level) that the build step `name` is done, with the
/// time since the VMM started.
fn step(name: &str) {
    tracing::debug!(us_since_start = crate::clock::since_start().as_micros() as u64, "build: {name}")
}

/// Logs the command line the guest kernel was given (or, restored, the one
/// its configuration and devices make).
fn log_cmdline(cmdline: &Cmdline) {
    tracing::info!(cmdline = %cmdline.as_cstring().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default(), "kernel command line");
}

/// KVM, checked for what this VMM needs, and a new VM on it.
fn create_vm() -> Result<(Kvm, VmFd), BuildError> {
    let kvm = Kvm::new().map_err(BuildError::Kvm)?;
    check_kvm(&kvm)?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    Ok((kvm, vm))
}

/// The in-kernel interrupt controllers (PIC, IO-APIC, LAPICs) and PIT.
fn create_irqchip_and_pit(vm: &VmFd) -> Result<(), BuildError> {
    vm.set_tss_address(KVM_TSS_ADDR).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(())
}

/// The configured command line, to which the devices add their parameters.
fn configured_cmdline(config: &VmConfig) -> Result<Cmdline, BuildError> {
    Cmdline::try_from(&config.cmdline, CMDLINE_MAX_SIZE).map_err(|e| BuildError::Boot(boot::BootError::Cmdline(e)))
}

/// The configuration of a snapshot's VM with the host ends in `overrides`,
/// checked against the state saved with it.
fn restore_config(state: &VmState, overrides: &RestoreOverrides) -> Result<VmConfig, BuildError> {
    let config = overrides.apply(state.config.clone()).map_err(BuildError::Restore)?;
    config.validate()?;
    if state.memory_size != u64::from(config.memory_mib) << 20 {
        return Err(BuildError::Restore(format!(
            "the state holds {} bytes of RAM but its configuration says {} MiB",
            state.memory_size, config.memory_mib
        )));
    }
    if state.vcpus.len() != usize::from(config.vcpus) {
        return Err(BuildError::Restore(format!(
            "the state holds {} vCPUs but its configuration says {}",
            state.vcpus.len(),
            config.vcpus
        )));
    }
    Ok(config)
}

/// COM1's ends, new or restored alike: its interrupt (an irqfd on its IRQ
/// line) and its output.
fn serial_ends(vm: &VmFd, config: &VmConfig) -> Result<(EventFdTrigger, Box<dyn Write + Send>), BuildError> {
    let irq = eventfd("serial eventfd")?;
    vm.register_irqfd(&irq, SERIAL_IRQ).map_err(kvm_err("KVM_IRQFD for COM1"))?;
    let out = serial::open_output(&config.serial, config.serial_limit_bytes)
        .map_err(|source| BuildError::Serial { path: format!("{:?}", config.serial), source })?;
    Ok((EventFdTrigger::new(irq), out))
}

/// The devices of a VM, on their buses and in its event loop.
struct Devices {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    event_manager: EventManager<Arc<Mutex<dyn MutEventSubscriber>>>,
    exit: Arc<ExitSignal>,
    /// Raised by the i8042 when the guest resets or powers off.
    reset_evt: EventFd,
    serial: Arc<Mutex<SerialDevice>>,
    boot_timer: Arc<Mutex<BootTimer>>,
    /// Every virtio device's transport: vsock, then virtio-fs, then
    /// virtio-net, then the balloon, in configuration order (the order a
    /// snapshot saves).
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    vsock: Option<Arc<Mutex<Vsock>>>,
    fs: Vec<Arc<Mutex<Fs>>>,
    net: Vec<Arc<Mutex<Net>>>,
    balloon: Option<Arc<Mutex<Balloon>>>,
}

/// Puts COM1 (`serial`), the i8042, the boot timer and the configured
/// virtio devices on the buses and into a new event loop. Each virtio
/// device has a fixed MMIO slot (vsock 0, then virtio-fs, then
/// virtio-net, then the balloon), so a restored VM's devices sit where the
/// guest saw them.
fn attach_devices(
    config: &VmConfig,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    cmdline: &mut Cmdline,
    serial: SerialDevice,
) -> Result<Devices, BuildError> {
    let exit = Arc::new(ExitSignal::new().map_err(io_err("exit eventfd"))?);
    let mut pio = Bus::new();
    let mut mmio = Bus::new();

    let serial = Arc::new(Mutex::new(serial));
    pio.insert(serial.clone(), u64::from(SERIAL_PORT), 8)?;

    let reset_evt = eventfd("reset eventfd")?;
    let reset_trigger = EventFdTrigger::new(reset_evt.try_clone().map_err(io_err("reset eventfd"))?);
    pio.insert(Arc::new(Mutex::new(I8042::new(reset_trigger))), u64::from(I8042_PORT), 5)?;

    let boot_timer = Arc::new(Mutex::new(BootTimer::new()));
    mmio.insert(boot_timer.clone(), BOOT_TIMER_ADDR, BOOT_TIMER_SIZE)?;
    cmdline
        .insert(crate::devices::boot_timer::CMDLINE_KEY, &format!("{BOOT_TIMER_ADDR:#x}"))
        .map_err(boot::BootError::Cmdline)?;

    let mut event_manager: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> =
        EventManager::new().map_err(BuildError::EventManager)?;
    let mut transports = Vec::new();
    let mut vsock = None;
    if let Some(vsock_config) = &config.vsock {
        let interrupt = Arc::new(IrqTrigger::new(eventfd("vsock irqfd")?));
        let device =
            Arc::new(Mutex::new(Vsock::new(vsock_config.guest_cid, &vsock_config.uds_path, interrupt.clone())?));
        transports.push(attach_virtio(vm, mem, &mut mmio, cmdline, 0, device.clone(), interrupt)?);
        event_manager.add_subscriber(device.clone());
        vsock = Some(device);
    }
    let mut fs = Vec::new();
    for (index, fs_config) in config.fs.iter().enumerate() {
        let interrupt = Arc::new(IrqTrigger::new(eventfd("virtio-fs irqfd")?));
        let device = Arc::new(Mutex::new(Fs::new(&fs_config.tag, &fs_config.socket, interrupt.clone())?));
        let slot = 1 + index as u32;
        transports.push(attach_virtio(vm, mem, &mut mmio, cmdline, slot, device.clone(), interrupt)?);
        event_manager.add_subscriber(device.clone());
        fs.push(device);
    }
    let mut net = Vec::new();
    for (index, net_config) in config.net.iter().enumerate() {
        let tap = open_tap(net_config).map_err(|source| BuildError::Tap { index, source })?;
        let mac = crate::devices::virtio::net::parse_mac(&net_config.mac).unwrap_or_default();
        let interrupt = Arc::new(IrqTrigger::new(eventfd("virtio-net irqfd")?));
        let device = Net::new(mac, net_config.mtu, Box::new(tap), interrupt.clone())
            .map_err(|source| BuildError::Net { index, source })?;
        let device = Arc::new(Mutex::new(device));
        let slot = 1 + crate::config::MAX_FS_DEVICES as u32 + index as u32;
        transports.push(attach_virtio(vm, mem, &mut mmio, cmdline, slot, device.clone(), interrupt)?);
        event_manager.add_subscriber(device.clone());
        net.push(device);
    }
    let balloon = if config.balloon {
        let interrupt = Arc::new(IrqTrigger::new(eventfd("virtio-balloon irqfd")?));
        let device = Arc::new(Mutex::new(Balloon::new(interrupt.clone()).map_err(io_err("balloon eventfds"))?));
        let slot = 1 + (crate::config::MAX_FS_DEVICES + crate::config::MAX_NET_DEVICES) as u32;
        transports.push(attach_virtio(vm, mem, &mut mmio, cmdline, slot, device.clone(), interrupt)?);
        event_manager.add_subscriber(device.clone());
        // Report free blocks of 512 KiB and up: the guest only reports while
        // 32 blocks of this order are free above its low watermark (guest
        // kernel patch 0009 lets the command line set it).
        cmdline
            .insert(
                "page_reporting.page_reporting_order",
                &crate::devices::virtio::balloon::REPORTING_ORDER.to_string(),
            )
            .map_err(boot::BootError::Cmdline)?;
        Some(device)
    } else {
        None
    };
    Ok(Devices {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        event_manager,
        exit,
        reset_evt,
        serial,
        boot_timer,
        transports,
        vsock,
        fs,
        net,
        balloon,
    })
}

/// Puts each virtio transport into the state the snapshot saved for the
/// device in its slot.
fn restore_transports(transports: &[Arc<Mutex<MmioTransport>>], saved: &[TransportSnapshot]) -> Result<(), BuildError> {
    if saved.len() != transports.len() {
        return Err(BuildError::Restore(format!(
            "the snapshot has {} virtio devices, the restored VM {}",
            saved.len(),
            transports.len()
        )));
    }
    for (index, (transport, saved)) in transports.iter().zip(saved).enumerate() {
        crate::devices::bus::lock(transport)
            .restore(saved)
            .map_err(|e| BuildError::Restore(format!("virtio device {index}: {e}")))?;
    }
    Ok(())
}

/// What every vCPU shares: the buses, guest memory, the exit signal, the
/// gate snapshots park them at, the MSRs a snapshot saves and the optional
/// RIP sampler.
fn vcpu_context(
    kvm: &Kvm,
    config: &VmConfig,
    options: &VmmOptions,
    mem: &GuestMemoryMmap,
    devices: &Devices,
) -> Result<VcpuContext, BuildError> {
    let sampler = match &options.profile_rip {
        Some((_, interval)) => Some(RipSampler::new(*interval).map_err(io_err("RIP sampler signal handler"))?),
        None => None,
    };
    Ok(VcpuContext {
        pio: devices.pio.clone(),
        mmio: devices.mmio.clone(),
        mem: mem.clone(),
        exit: devices.exit.clone(),
        kernel_path: config.kernel.clone(),
        sampler,
        gate: Arc::new(PauseGate::default()),
        msr_list: Arc::new(snapshot::kvm::msr_list(kvm)?),
    })
}

/// The last step of both recipes: the life-cycle control (vCPU exits,
/// guest reset, stop signals) and, with a control socket, its server join
/// the event loop, and the parts become a [`Vmm`].
fn into_vmm(
    config: VmConfig,
    options: VmmOptions,
    vm: VmFd,
    mem: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    ctx: VcpuContext,
    devices: Devices,
) -> Result<Vmm, BuildError> {
    let Devices { mut event_manager, exit, reset_evt, serial, boot_timer, transports, vsock, fs, net, balloon, .. } =
        devices;
    let control = Arc::new(Mutex::new(VmmControl::new(exit.clone(), reset_evt).map_err(io_err("signal handling"))?));
    event_manager.add_subscriber(control.clone());
    let vm = Arc::new(vm);
    if let Some(path) = &options.api_sock {
        // KVM's exit counters for `{"action":"stats"}`; a host without
        // KVM_GET_STATS_FD (before Linux 5.14) just has none to report.
        let kvm_stats = vcpus
            .iter()
            .filter_map(|vcpu| {
                vcpu.stats().map_err(|e| tracing::debug!(error = %e, "no KVM statistics for a vCPU")).ok()
            })
            .collect();
        let controller =
            Controller::new(vm.clone(), mem, ctx.gate, vcpus.len(), transports, serial.clone(), config.clone())
                .with_kvm_stats(kvm_stats);
        let server =
            ApiServer::bind(path, controller).map_err(|source| BuildError::Api { path: path.clone(), source })?;
        event_manager.add_subscriber(Arc::new(Mutex::new(server)));
    }
    Ok(Vmm {
        config,
        options,
        _vm: vm,
        vcpus,
        event_manager,
        _control: control,
        exit,
        serial,
        vsock,
        fs,
        net,
        balloon,
        sampler: ctx.sampler,
        boot_timer,
    })
}

/// The tap of a net device: opened by name, or taken over from the
/// descriptor our parent passed.
fn open_tap(config: &crate::config::NetConfig) -> Result<Tap, TapError> {
    match (&config.tap, config.tap_fd) {
        (Some(name), _) => Tap::open(name),
        (None, Some(fd)) => {
            // SAFETY: F_GETFD only inspects the descriptor table entry.
            if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(TapError::NotVnetTap { fd, flags: 0 });
            }
            // SAFETY: the configuration hands this inherited descriptor to
            // the device (validated: >= 3 and open); nothing else in the VMM
            // uses it, and Tap::from_fd checks it is a vnet tap.
            Tap::from_fd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
        }
        (None, None) => Err(TapError::BadName(String::new())),
    }
}

/// Hides from the guest kernel, with `clearcpuid=`, the CPUID features the
/// conservative template removes but KVM kept visible (nested PVM hosts
/// force leaves 1, 7 and 0xD to host values). On hardware KVM the read-back
/// matches and nothing is added.
fn hide_unapplied_cpuid(
    vcpus: &[Vcpu],
    template: crate::arch::x86_64::cpuid::CpuTemplate,
    supported: &kvm_bindings::CpuId,
    count: u8,
    cmdline: &mut Cmdline,
) -> Result<(), BuildError> {
    // The host template is pass-through by definition: nothing to hide.
    if template == crate::arch::x86_64::cpuid::CpuTemplate::Host {
        return Ok(());
    }
    let Some(boot_vcpu) = vcpus.first() else { return Ok(()) };
    let wanted = crate::arch::x86_64::cpuid::vcpu_cpuid(template, supported, 0, count);
    let bits = crate::arch::x86_64::cpuid::hidden_but_visible(&wanted, &boot_vcpu.effective_cpuid()?);
    if bits.is_empty() {
        return Ok(());
    }
    tracing::info!(
        count = bits.len(),
        "KVM does not apply the CPUID template to every leaf (nested host?); hiding the rest with clearcpuid="
    );
    let list: Vec<String> = bits.iter().map(u32::to_string).collect();
    cmdline.insert("clearcpuid", &list.join(",")).map_err(boot::BootError::Cmdline)?;
    let xcr0 = crate::arch::x86_64::cpuid::host_xcr0();
    if crate::arch::x86_64::cpuid::user_vector_state_unprotected(&bits, xcr0) {
        // The kernel hands unknown `KEY=value` parameters to init as its
        // environment; the agent passes this one on to what it runs.
        tracing::warn!(
            host_xcr0 = format_args!("{xcr0:#x}"),
            "guest user space sees AVX state its kernel cannot switch (no CPUID faulting on this host); \
             keeping glibc off it with GLIBC_TUNABLES"
        );
        cmdline
            .insert_str(format!("GLIBC_TUNABLES={}", crate::arch::x86_64::cpuid::GLIBC_NO_AVX_TUNABLES))
            .map_err(boot::BootError::Cmdline)?;
    }
    Ok(())
}
