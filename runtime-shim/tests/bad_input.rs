//! Hostile or malformed OCI specs and runtime configs through the real
//! `kata-like` CLI: each is refused with an error naming what is wrong, no
//! VM is started, and nothing is left on the host (state root, mounts,
//! processes). No KVM or root needed: everything is refused before a VM
//! would boot.

use std::path::Path;
use std::process::Command;

const CLI: &str = env!("CARGO_BIN_EXE_kata-like");

/// A runc-style bundle: `config.json` from `spec` and an empty rootfs.
fn bundle(dir: &Path, spec: &serde_json::Value) {
    std::fs::create_dir_all(dir.join("rootfs/bin")).expect("rootfs");
    std::fs::write(dir.join("config.json"), serde_json::to_vec(spec).expect("json")).expect("config.json");
}

/// A spec the checks accept, to break one field at a time.
fn base() -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "hostname": "box",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/", "env": ["PATH=/bin"]},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]}
    })
}

/// Runs `kata-like --root ROOT [--config CFG] run --bundle B ID`.
fn run(root: &Path, config: Option<&Path>, bundle: &Path, id: &str) -> (i32, String) {
    let mut cmd = Command::new(CLI);
    cmd.arg("--root").arg(root);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    // A config that would work, so only what the test breaks fails.
    let out =
        cmd.arg("run").arg("--bundle").arg(bundle).arg(id).env_remove("KATA_LIKE_CONFIG").output().expect("kata-like");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Nothing under `root` (no state, no mounts) and no VMM started for it.
fn assert_untouched(root: &Path, what: &str) {
    let entries: Vec<_> = std::fs::read_dir(root).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(entries.is_empty(), "{what}: left {entries:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(!mounts.contains(&root.display().to_string()), "{what}: a mount under {}", root.display());
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(
            !(cmdline.contains("kata-like-vmm") && cmdline.contains(&root.display().to_string())),
            "{what}: a VMM runs: {cmdline}"
        );
    }
}

#[test]
fn hostile_specs_are_refused_before_anything_starts() {
    type Edit = fn(&mut serde_json::Value);
    let table: &[(&str, Edit, &str)] = &[
        ("mount escaping with ..", |s| s["mounts"][0]["destination"] = "/../../etc".into(), "mounts[0].destination"),
        ("relative mount destination", |s| s["mounts"][0]["destination"] = "proc".into(), "absolute path"),
        ("rootfs outside the bundle", |s| s["root"]["path"] = "../../../etc".into(), "root.path"),
        (
            "huge RLIMIT_NOFILE",
            |s| s["process"]["rlimits"] = serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 1, "hard": u64::MAX}]),
            "RLIMIT_NOFILE",
        ),
        (
            "soft above hard",
            |s| s["process"]["rlimits"] = serde_json::json!([{"type": "RLIMIT_NPROC", "soft": 10, "hard": 5}]),
            "soft 10 exceeds hard 5",
        ),
        (
            "unknown rlimit",
            |s| s["process"]["rlimits"] = serde_json::json!([{"type": "RLIMIT_XYZ", "soft": 1, "hard": 1}]),
            "RLIMIT_XYZ",
        ),
        ("unknown namespace", |s| s["linux"]["namespaces"][0]["type"] = "nosuch".into(), "nosuch"),
        ("user namespace", |s| s["linux"]["namespaces"][0]["type"] = "user".into(), "not supported"),
        ("empty args", |s| s["process"]["args"] = serde_json::json!([]), "process.args"),
        ("relative cwd", |s| s["process"]["cwd"] = "tmp".into(), "process.cwd"),
        ("NUL in an argument", |s| s["process"]["args"] = serde_json::json!(["sh\u{0}x"]), "NUL"),
        ("bad env entry", |s| s["process"]["env"] = serde_json::json!(["=oops"]), "KEY=VALUE"),
        ("sysctl path escape", |s| s["linux"]["sysctl"] = serde_json::json!({"../../proc/x": "1"}), "linux.sysctl"),
        (
            "device outside /dev",
            |s| {
                s["linux"]["devices"] =
                    serde_json::json!([{"path": "/etc/shadow", "type": "c", "major": 1, "minor": 3}])
            },
            "not under /dev",
        ),
        (
            "hostname without a UTS namespace",
            |s| s["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}]),
            "uts",
        ),
        ("oom score out of range", |s| s["process"]["oomScoreAdj"] = 4000.into(), "oomScoreAdj"),
        ("not an object", |s| *s = serde_json::json!([1, 2, 3]), "config.json"),
    ];
    for (what, edit, wanted) in table {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).expect("root");
        let mut spec = base();
        edit(&mut spec);
        bundle(&dir.path().join("bundle"), &spec);
        let (code, stderr) = run(&root, None, &dir.path().join("bundle"), "hostile");
        assert_ne!(code, 0, "{what}: accepted");
        assert!(stderr.contains(wanted), "{what}: the error does not name {wanted:?}: {stderr}");
        assert_untouched(&root, what);
    }
}

#[test]
fn malformed_runtime_configs_are_refused_naming_the_file_and_field() {
    let table: &[(&str, &str, &str)] = &[
        ("unknown option", "memory_mib = 128\nno_such_option = true\n", "no_such_option"),
        ("wrong type", "vcpus = \"two\"\n", "vcpus"),
        ("out of range", "vcpus = 0\n", "vcpus must be"),
        ("too little memory", "memory_mib = 8\n", "memory_mib"),
        ("unknown cache mode", "virtiofsd_cache = \"sometimes\"\n", "virtiofsd_cache"),
        ("unknown seccomp mode", "vmm_seccomp = \"lax\"\n", "vmm_seccomp"),
        ("jailed as root", "jail_uid = 0\n", "jail_uid"),
        ("tiny console cap", "console_limit_bytes = 10\n", "console_limit_bytes"),
        ("not TOML", "vcpus = [\n", "kata-like config"),
        ("zero timeouts", "boot_timeout_secs = 0\n", "boot_timeout_secs"),
    ];
    for (what, text, wanted) in table {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).expect("root");
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, text).expect("config");
        bundle(&dir.path().join("bundle"), &base());
        let (code, stderr) = run(&root, Some(&config), &dir.path().join("bundle"), "badcfg");
        assert_ne!(code, 0, "{what}: accepted");
        assert!(
            stderr.contains(wanted) && stderr.contains(&config.display().to_string()),
            "{what}: the error does not name the file and {wanted:?}: {stderr}"
        );
        assert_untouched(&root, what);
    }
}
