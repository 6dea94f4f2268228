//! `kata-like check`: can this host run kata-like? (Kata's `kata-ctl
//! check`.) Each line is one requirement: PASS, WARN (works, with a
//! limitation) or FAIL, and what to do about it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::RuntimeConfig;

/// The verdict of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Pass,
    /// Usable, with a limitation.
    Warn,
    /// kata-like cannot work until this is fixed.
    Fail,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The verdict.
    pub status: Status,
    /// What was checked.
    pub what: String,
    /// What was found.
    pub detail: String,
    /// How to fix it (WARN and FAIL).
    pub fix: Option<String>,
}

impl Finding {
    fn new(status: Status, what: &str, detail: impl Into<String>, fix: Option<&str>) -> Self {
        Finding { status, what: what.into(), detail: detail.into(), fix: fix.map(str::to_string) }
    }

    /// `PASS  what: detail` (and `      fix: ...` on the next line).
    pub fn render(&self) -> String {
        let tag = match self.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        let mut line = format!("{tag}  {}: {}", self.what, self.detail);
        if let Some(fix) = &self.fix {
            line.push_str(&format!("\n      fix: {fix}"));
        }
        line
    }
}

/// The first line of `program --version`, if it runs.
fn version_of(program: &Path) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success().then(|| text.lines().next().unwrap_or_default().trim().to_string())
}

/// Which KVM this is: nested PVM, nested hardware-assisted, or hardware.
fn kvm_kind(cpuinfo: &str, pvm_module: bool) -> &'static str {
    let nested = cpuinfo.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
    match (pvm_module, nested) {
        (true, _) => "nested (PVM: guest kernel code is emulated; boots take tens of seconds)",
        (false, true) => "nested (this host is itself a VM)",
        (false, false) => "hardware",
    }
}

fn check_kvm() -> Vec<Finding> {
    const WHAT: &str = "/dev/kvm";
    let kvm = match kvm_ioctls::Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            let fix = if Path::new("/dev/kvm").exists() {
                "run as root or add the user to the kvm group"
            } else {
                "enable virtualization in the firmware and load kvm_intel or kvm_amd (nested: enable nesting on the outer host)"
            };
            return vec![Finding::new(Status::Fail, WHAT, format!("cannot open: {e}"), Some(fix))];
        }
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kind = kvm_kind(&cpuinfo, Path::new("/sys/module/kvm_pvm").exists());
    let mut out =
        vec![Finding::new(Status::Pass, WHAT, format!("usable, API {}; KVM is {kind}", kvm.get_api_version()), None)];
    out.push(match kata_like_vmm_contract::kvm::missing_capability(&kvm) {
        None => Finding::new(Status::Pass, "KVM capabilities", "IRQ chip, PIT, irqfd, ioeventfd, user memory", None),
        Some(name) => {
            Finding::new(Status::Fail, "KVM capabilities", format!("KVM lacks {name}"), Some("use a newer host kernel"))
        }
    });
    out
}

fn check_file(what: &str, path: &Path, fix: &str) -> Finding {
    if path.is_file() {
        Finding::new(Status::Pass, what, path.display().to_string(), None)
    } else {
        Finding::new(Status::Fail, what, format!("{} not found", path.display()), Some(fix))
    }
}

fn check_cgroups() -> Finding {
    const WHAT: &str = "cgroups";
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let missing: Vec<&str> =
            ["cpu", "memory"].into_iter().filter(|c| !controllers.split_whitespace().any(|x| x == *c)).collect();
        if missing.is_empty() {
            Finding::new(Status::Pass, WHAT, format!("v2 ({})", controllers.trim()), None)
        } else {
            Finding::new(
                Status::Fail,
                WHAT,
                format!("v2 without {missing:?}"),
                Some("enable the cpu and memory controllers"),
            )
        }
    } else if root.join("memory").is_dir() && root.join("cpu").is_dir() {
        Finding::new(Status::Pass, WHAT, "v1 (cpu, memory hierarchies)", None)
    } else {
        Finding::new(
            Status::Fail,
            WHAT,
            "no cpu and memory controllers under /sys/fs/cgroup",
            Some("mount cgroup v2 on /sys/fs/cgroup"),
        )
    }
}

fn check_tun() -> Finding {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun") {
        Ok(_) => Finding::new(Status::Pass, "/dev/net/tun", "usable (pod NICs are taps)", None),
        Err(e) => Finding::new(
            Status::Warn,
            "/dev/net/tun",
            format!("cannot open: {e}; pods with a network cannot start"),
            Some("modprobe tun"),
        ),
    }
}

/// Where containerd finds shims: its PATH (ours, as this process sees it).
fn on_path(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(binary)).find(|p| p.is_file())
}

fn check_containerd(config_path: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    match on_path("containerd").and_then(|p| version_of(&p)) {
        Some(v) => out.push(Finding::new(Status::Pass, "containerd", v, None)),
        None => {
            out.push(Finding::new(
                Status::Warn,
                "containerd",
                "not installed; only `kata-like run` works",
                Some("scripts/setup.sh installs it (Debian's containerd)"),
            ));
            return out;
        }
    }
    out.push(match on_path("containerd-shim-kata-like-v2") {
        Some(p) => Finding::new(
            Status::Pass,
            "shim",
            format!("{} (ctr run --runtime io.containerd.kata-like.v2 works)", p.display()),
            None,
        ),
        None => Finding::new(
            Status::Fail,
            "shim",
            "containerd-shim-kata-like-v2 is not on PATH",
            Some("scripts/build.sh links it into /usr/local/bin"),
        ),
    });
    let config = std::fs::read_to_string(config_path).unwrap_or_default();
    out.push(if config.contains("io.containerd.kata-like.v2") {
        Finding::new(Status::Pass, "CRI runtime handler", format!("registered in {}", config_path.display()), None)
    } else {
        Finding::new(
            Status::Warn,
            "CRI runtime handler",
            format!("no runtime with runtime_type io.containerd.kata-like.v2 in {}", config_path.display()),
            Some("add the snippet from docs/kubernetes.md (section 2) for Kubernetes pods"),
        )
    });
    out
}

/// Whether templates exist for the configured shapes: the default sandbox
/// (no NIC) and the default pod (a NIC slot of MTU 1500).
fn check_templates(config: &RuntimeConfig) -> Vec<Finding> {
    use crate::sandbox::template;
    if !config.vm_templates {
        return vec![Finding::new(
            Status::Pass,
            "VM templates",
            "off (vm_templates = false): every sandbox boots cold",
            None,
        )];
    }
    let shapes = [
        (template::Shape::default_for(config), "kata-like snapshot create"),
        (template::Shape::default_pod_for(config), "kata-like snapshot create --nic"),
    ];
    shapes
        .into_iter()
        .map(|(shape, create)| {
            let what = format!("VM template ({shape})");
            match template::find(config, &shape) {
                Ok((dir, true)) => Finding::new(Status::Pass, &what, dir.display().to_string(), None),
                Ok((dir, false)) => Finding::new(
                    Status::Warn,
                    &what,
                    format!("none yet in {}: the first sandbox of this shape builds it (one cold boot)", dir.display()),
                    Some(create),
                ),
                Err(e) => Finding::new(Status::Warn, &what, format!("cannot tell: {e}"), None),
            }
        })
        .collect()
}

/// Runs every check against `config`.
pub fn run(config: &RuntimeConfig) -> Vec<Finding> {
    let mut out = check_kvm();
    out.push(check_file("VMM", &config.vmm, "scripts/build.sh builds kata-like-vmm"));
    if let Some(v) = version_of(&config.vmm) {
        if let Some(last) = out.last_mut() {
            last.detail = format!("{} ({v})", last.detail);
        }
    }
    out.push(check_file("guest kernel", &config.kernel, "scripts/build.sh builds it (guest-kernel/build.sh)"));
    out.push(check_file("guest initramfs", &config.initrd, "scripts/build.sh builds it (image-builder)"));
    out.push(match version_of(&config.virtiofsd) {
        Some(v) => Finding::new(Status::Pass, "virtiofsd", format!("{} ({v})", config.virtiofsd.display()), None),
        None => Finding::new(
            Status::Fail,
            "virtiofsd",
            format!("{} does not run", config.virtiofsd.display()),
            Some("scripts/install-deps.sh installs it (cargo install virtiofsd)"),
        ),
    });
    out.push(Finding::new(
        Status::Pass,
        "vsock",
        "no host module needed: the VMM's vsock device is userspace (hybrid vsock over a Unix socket)",
        None,
    ));
    out.push(check_tun());
    out.push(check_cgroups());
    out.extend(check_containerd(Path::new("/etc/containerd/config.toml")));
    out.extend(check_templates(config));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_reported_per_configured_shape() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut config = RuntimeConfig {
            template_dir: Some(dir.path().join("t")),
            ..crate::sandbox::template::tests::config_in(dir.path())
        };
        let found = check_templates(&config);
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|f| f.status == Status::Warn && f.detail.contains("none yet")), "{found:?}");
        assert_eq!(found[1].fix.as_deref(), Some("kata-like snapshot create --nic"));
        let (pod_dir, _) =
            crate::sandbox::template::find(&config, &crate::sandbox::template::Shape::default_pod_for(&config))
                .expect("key");
        std::fs::create_dir_all(&pod_dir).expect("mkdir");
        std::fs::write(pod_dir.join(kata_like_vmm_contract::snapshot::STATE_FILE), "x").expect("write");
        let found = check_templates(&config);
        assert_eq!((found[0].status, found[1].status), (Status::Warn, Status::Pass));
        assert!(found[1].what.contains("NIC slot (MTU 1500)"), "{}", found[1].what);
        config.vm_templates = false;
        assert!(check_templates(&config)[0].detail.contains("every sandbox boots cold"));
    }

    #[test]
    fn kvm_kind_tells_hardware_from_nested() {
        assert_eq!(kvm_kind("flags\t: fpu vme sse2\n", false), "hardware");
        assert!(kvm_kind("flags\t: fpu hypervisor sse2\n", false).starts_with("nested (this host"));
        assert!(kvm_kind("flags\t: fpu hypervisor\n", true).contains("PVM"));
    }

    #[test]
    fn findings_render_with_their_fix() {
        let f = Finding::new(Status::Fail, "virtiofsd", "/x does not run", Some("install it"));
        assert_eq!(f.render(), "FAIL  virtiofsd: /x does not run\n      fix: install it");
        assert_eq!(Finding::new(Status::Pass, "a", "b", None).render(), "PASS  a: b");
    }

    #[test]
    fn missing_files_fail_with_the_path() {
        let f = check_file("guest kernel", Path::new("/nonexistent/vmlinux"), "build it");
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("/nonexistent/vmlinux"));
    }
}
