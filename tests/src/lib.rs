//! Test infrastructure: finding the artefacts (VMM, kernel, initrd, CLI),
//! deciding whether VM tests can run here, and booting guests.
//!
//! VM tests are `#[ignore]`d so that `cargo test` stays fast; run them with
//! `scripts/test.sh` or `cargo test -p kata-like-tests -- --ignored`.
//! Artefacts come from `KATA_LIKE_{VMM,KERNEL,INITRD,CLI}` (set by
//! scripts/test.sh), else from the defaults `scripts/setup.sh` installs.
//!
//! A test that cannot run prints why, records the reason in
//! `$KATA_LIKE_TEST_REPORT` (which scripts/test.sh summarises), and passes
//! as skipped, unless `KATA_LIKE_REQUIRE_VM=1` (set by CI on machines with
//! KVM), where a skip is a failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod bench;
pub mod containerd;
pub mod cri;
pub mod cri_stream;
pub mod docker;
pub mod netns;
pub mod sandbox;

use kata_like_runtime::artifacts;
use kata_like_runtime::vm::VmSpec;

/// The paths a VM test needs.
#[derive(Clone, Debug)]
pub struct Artifacts {
    /// `kata-like-vmm`.
    pub vmm: PathBuf,
    /// `kata-like` (the CLI).
    pub cli: PathBuf,
    /// Guest vmlinux.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initrd: PathBuf,
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn from_env_or(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

/// A workspace binary, preferring the release build.
fn built_binary(name: &str) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let release = target.join("release").join(name);
    if release.exists() {
        release
    } else {
        target.join("debug").join(name)
    }
}

impl Artifacts {
    /// Locates every artefact; the error says which is missing.
    pub fn locate() -> Result<Artifacts, String> {
        let found = Artifacts {
            vmm: from_env_or("KATA_LIKE_VMM", built_binary("kata-like-vmm")),
            cli: from_env_or("KATA_LIKE_CLI", built_binary("kata-like")),
            kernel: from_env_or("KATA_LIKE_KERNEL", artifacts::default_kernel()),
            initrd: from_env_or("KATA_LIKE_INITRD", artifacts::default_initrd()),
        };
        for (what, path) in
            [("VMM", &found.vmm), ("CLI", &found.cli), ("kernel", &found.kernel), ("initrd", &found.initrd)]
        {
            if !path.exists() {
                return Err(format!("{what} not found at {} (run scripts/setup.sh)", path.display()));
            }
        }
        Ok(found)
    }

    /// A VM spec with the test defaults: 1 vCPU, 128 MiB, 5 minutes to boot
    /// (guest kernel code is emulated on nested hosts).
    pub fn vm_spec(&self) -> VmSpec {
        VmSpec {
            vmm: self.vmm.clone(),
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            vcpus: 1,
            memory_mib: 128,
            extra_cmdline: None,
            boot_timeout: Duration::from_secs(300),
            state_parent: None,
            vmm_args: vec![],
            state_dir: None,
            shared: None,
            net: None,
            balloon: true,
            cgroup: None,
            restore_from: None,
            confinement: kata_like_runtime::vm::Confinement::default_for_this_process(),
        }
    }
}

/// Why VM tests cannot run on this machine, if they cannot.
pub fn vm_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (KVM, and later containerd, need root here)".into());
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Some(format!("/dev/kvm is not usable: {e}"));
    }
    None
}

/// Records and prints a skip, or fails when `KATA_LIKE_REQUIRE_VM=1`.
pub fn skip(test: &str, reason: &str) {
    if std::env::var("KATA_LIKE_REQUIRE_VM").is_ok_and(|v| v == "1") {
        panic!("{test}: cannot run ({reason}) but KATA_LIKE_REQUIRE_VM=1");
    }
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(report) = std::env::var_os("KATA_LIKE_TEST_REPORT") {
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(report) {
            let _ = writeln!(file, "SKIPPED {test}: {reason}");
        }
    }
}

/// The artefacts when VM tests can run here; otherwise records the skip of
/// `test` and returns None.
pub fn vm_test(test: &str) -> Option<Artifacts> {
    if let Some(reason) = vm_unavailable() {
        skip(test, &reason);
        return None;
    }
    match Artifacts::locate() {
        Ok(found) => Some(found),
        Err(reason) => {
            skip(test, &reason);
            None
        }
    }
}

/// The kernel release suffix the current guest-kernel config produces
/// (`-kata-like.<config-version>`): a stale cached kernel has another.
pub fn expected_kernel_suffix() -> String {
    let version = std::fs::read_to_string(workspace_root().join("guest-kernel/config-version")).unwrap_or_default();
    format!("-kata-like.{}", version.trim())
}

/// Whether this host's KVM is nested PVM (kvm_pvm loaded), where the guest
/// kernel is emulated and KVM ignores parts of the CPUID template.
pub fn host_is_nested_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Every process with its command line (arguments joined by spaces).
pub fn processes() -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&raw).replace('\0', " ")))
        })
        .collect()
}

/// Mount points of this mount namespace whose path starts with `prefix`,
/// in mount order.
pub fn mounts_under(prefix: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|t| t.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// kata-like-vmm processes still running whose command line mentions `needle`.
pub fn vmm_processes_with(needle: &str) -> Vec<u32> {
    processes_with(&["kata-like-vmm", needle])
}

/// PIDs of processes whose command line contains every one of `needles`.
pub fn processes_with(needles: &[&str]) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, cmdline)| needles.iter().all(|n| cmdline.contains(n)))
        .map(|(pid, _)| pid)
        .collect()
}

/// Processes running `program` (the file name of argv[0]) whose command
/// line contains all of `needles`. Unlike [`processes_with`], a VMM whose
/// arguments name `virtiofsd.sock` is not taken for virtiofsd.
pub fn processes_of(program: &str, needles: &[&str]) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, cmdline)| {
            let argv0 = cmdline.split(' ').next().unwrap_or("");
            std::path::Path::new(argv0).file_name().is_some_and(|n| n == program)
                && needles.iter().all(|n| cmdline.contains(n))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Runs `ip ARGS`: its stdout, or an error naming the command and stderr.
pub fn ip(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// What [`one_line_server`] yields: the line read and the peer.
pub type OneLine = std::thread::JoinHandle<Result<(String, std::net::SocketAddr), String>>;

/// A TCP server on `ip` (port chosen by the kernel) for one connection from
/// a guest: it waits up to ten minutes (guest boots are slow here), reads a
/// line, answers `reply`, and yields the line and the peer's address.
pub fn one_line_server(ip: &str, reply: &'static [u8]) -> (u16, OneLine) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind on {ip}: {e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"));
    listener.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
    let server = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        let (stream, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(format!("no connection from the guest: {e}")),
            }
        };
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).map_err(|e| e.to_string())?;
        (&stream).write_all(reply).map_err(|e| e.to_string())?;
        Ok((line, peer))
    });
    (port, server)
}
