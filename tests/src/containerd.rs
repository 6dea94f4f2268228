//! A private containerd for the shim tests: Debian's containerd started
//! with its own root, state, socket and config (registering
//! `io.containerd.kata-like.v2`), the busybox test image imported, and
//! helpers to run `ctr` against it. Dropping it stops containerd and
//! removes its directories.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `max_concurrent_boots` of the test configuration.
pub const BOOT_SLOTS: usize = 2;

/// Boots logged by shims that waited for a boot slot, and for how long
/// (seconds), from the "sandbox VM ready … queued N us" lines.
pub fn queued_boots(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("sandbox VM ready"))
        .filter_map(|l| l.split("queued ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .map(|us| us as f64 / 1e6)
        .collect()
}

/// The runtime name containerd maps to our shim binary.
pub const RUNTIME: &str = "io.containerd.kata-like.v2";
/// The test image's name.
pub const IMAGE: &str = "docker.io/library/kata-like-busybox:latest";
/// The same running `sleep` forever: the CRI sandbox ("pause") image.
pub const IMAGE_PAUSE: &str = "docker.io/library/kata-like-busybox:pause";
/// The same with User `user` (1000:1000) and WorkingDir /home/user in its
/// image config.
pub const IMAGE_USER: &str = "docker.io/library/kata-like-busybox:user";

/// A running private containerd.
#[derive(Debug)]
pub struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    /// containerd's config, and the PATH and runtime config its shims get.
    config: PathBuf,
    path_env: String,
    kata_config: PathBuf,
    /// The runtime state root the shims use (per-test, to check leaks).
    pub kata_state: PathBuf,
}

/// The directory holding the containerd and ctr under test:
/// `$KATA_LIKE_CONTAINERD_BIN` (the version matrix,
/// scripts/containerd-versions.sh), else PATH's.
pub fn containerd_bin_dir() -> Option<PathBuf> {
    std::env::var_os("KATA_LIKE_CONTAINERD_BIN").map(PathBuf::from)
}

fn program(name: &str) -> PathBuf {
    containerd_bin_dir().map(|d| d.join(name)).unwrap_or_else(|| PathBuf::from(name))
}

/// The runtime config line that makes sandboxes restore the suite's shared
/// VM templates (`vm_templates` is on by default): every test containerd
/// has it unless its extra config names a `template_dir` of its own. A
/// cold-boot test adds `vm_templates = false` ([`COLD_BOOT`]).
pub fn templated_runtime_config() -> String {
    format!("template_dir = \"{}\"\n", crate::sandbox::template_dir().display())
}

/// Extra runtime config for the one cold-boot test of a path.
pub const COLD_BOOT: &str = "vm_templates = false\n";

fn image_tar() -> PathBuf {
    kata_like_runtime::artifacts::cache_dir().join("images/busybox.tar")
}

/// Why containerd tests cannot run, if they cannot.
pub fn unavailable() -> Option<String> {
    if Command::new(program("containerd")).arg("--version").output().is_err() {
        return Some(format!(
            "{} does not run (scripts/install-deps.sh installs containerd)",
            program("containerd").display()
        ));
    }
    if !image_tar().exists() {
        return Some(format!("{} is missing (scripts/build.sh builds it)", image_tar().display()));
    }
    if !kata_like_runtime::artifacts::default_virtiofsd().exists() {
        return Some("virtiofsd is not installed (scripts/install-deps.sh)".into());
    }
    None
}

impl Containerd {
    /// Starts containerd and imports the test image. The shims it starts
    /// find our binaries through PATH (target/release first) and use a
    /// runtime config whose state root is private to this instance.
    pub fn start() -> Result<Containerd, String> {
        Self::start_with(None, "")
    }

    /// A kata-like runtime config like this containerd's own, with
    /// `vm_templates = false`: `ctr run --runtime-config-path` with it
    /// boots that sandbox cold.
    pub fn cold_config(&self) -> PathBuf {
        self.kata_state.with_file_name("cold-config.toml")
    }

    /// [`Containerd::start`] with more lines in the kata-like runtime
    /// config (e.g. [`COLD_BOOT`]).
    pub fn start_with_runtime_config(extra: &str) -> Result<Containerd, String> {
        Self::start_with(None, extra)
    }

    /// [`Containerd::start`] with its CRI plugin set up for pods: CNI
    /// configs from `cni_conf_dir` (plugins from Debian's
    /// containernetworking-plugins), the test image as the sandbox image
    /// (imported into CRI's `k8s.io` namespace as well), a streaming server
    /// on 127.0.0.1, and `io.kata-like.*` pod annotations passed to us.
    /// `restrict_oom_score_adj`: this host (a container itself) may not
    /// lower oom_score_adj, which CRI asks for the sandbox (-998).
    /// `extra`: more kata-like runtime config lines (e.g. [`COLD_BOOT`]).
    pub fn start_cri(cni_conf_dir: &Path, extra: &str) -> Result<Containerd, String> {
        Self::start_with(Some(cni_conf_dir), extra)
    }

    fn start_with(cni_conf_dir: Option<&Path>, extra_runtime_config: &str) -> Result<Containerd, String> {
        let dir = tempfile::Builder::new().prefix("kl-containerd-").tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let kata_state = d.join("kata-state");
        let kata_config = d.join("kata-like.toml");
        // Generous timeouts: guest kernel work is emulated here, and a guest
        // booting beside others (containers starting in booted VMs) takes
        // twice as long. Two boot slots whatever the host's CPU count, so
        // the tests of queued boots know the limit.
        let base = format!(
            "state_root = \"{}\"\nmemory_mib = 128\nboot_timeout_secs = 1200\nrpc_timeout_secs = 240\n\
             max_concurrent_boots = {BOOT_SLOTS}\n",
            kata_state.display()
        );
        let templates =
            if extra_runtime_config.contains("template_dir") { String::new() } else { templated_runtime_config() };
        std::fs::write(&kata_config, format!("{base}{templates}{extra_runtime_config}")).map_err(|e| e.to_string())?;
        let bad_config = d.join("bad-config.toml");
        std::fs::write(&bad_config, "memory_mib = 128\nno_such_option = true\n").map_err(|e| e.to_string())?;
        let cold_config = d.join("cold-config.toml");
        std::fs::write(&cold_config, format!("{base}{COLD_BOOT}")).map_err(|e| e.to_string())?;
        let config = d.join("config.toml");
        let cri = cni_conf_dir.map(|conf| CriConfigs { conf_dir: conf, bad: &bad_config, cold: &cold_config });
        let text = daemon_config(containerd_version()?, &d.join("root"), &d.join("state"), &socket, cri);
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let release = crate::workspace_root().join("target/release");
        let mut path = format!("{}:", release.display());
        if let Some(bin) = containerd_bin_dir() {
            path.push_str(&format!("{}:", bin.display()));
        }
        path.push_str(&std::env::var("PATH").unwrap_or_default());
        let child = spawn_daemon(&config, &path, &kata_config, &d.join("containerd.log"), false)?;
        let c = Containerd { child, dir, socket, config, path_env: path, kata_config, kata_state };
        c.wait_ready()?;
        let tar = image_tar().display().to_string();
        let namespaces: &[&str] = if cni_conf_dir.is_some() { &["default", CRI_NAMESPACE] } else { &["default"] };
        for ns in namespaces {
            let import = c.ctr(&["-n", ns, "image", "import", &tar]).map_err(|e| e.to_string())?;
            if !import.status.success() {
                return Err(format!("image import into {ns}: {}", String::from_utf8_lossy(&import.stderr)));
            }
        }
        Ok(c)
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ctr(&["version"]).map(|o| !o.status.success()).unwrap_or(true) {
            if Instant::now() > deadline {
                return Err(format!("containerd did not start: {}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Stops containerd (SIGTERM, as a service manager does), leaving its
    /// shims running, and starts it again with the same config and state;
    /// its log continues in the same file.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop_daemon();
        self.child = spawn_daemon(&self.config, &self.path_env, &self.kata_config, &self.log_path(), true)?;
        self.wait_ready()
    }

    /// SIGKILLs containerd (a crash, the OOM killer) and starts it again.
    pub fn crash_and_restart(&mut self) -> Result<(), String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_daemon(&self.config, &self.path_env, &self.kata_config, &self.log_path(), true)?;
        self.wait_ready()
    }

    /// Stops containerd only (SIGTERM, then SIGKILL after 10 s).
    fn stop_daemon(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Processes of the shims this containerd started.
    pub fn shim_pids(&self) -> Vec<u32> {
        let socket = self.socket.display().to_string();
        crate::processes()
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains("containerd-shim-kata-like") && cmdline.contains(&socket))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// The containerd socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `ctr -a SOCKET ARGS...` to completion.
    pub fn ctr(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new(program("ctr")).arg("-a").arg(&self.socket).args(args).stdin(Stdio::null()).output()
    }

    /// A `ctr` command to customise (stdin, spawn).
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(program("ctr"));
        c.arg("-a").arg(&self.socket).args(args);
        c
    }

    /// Starts `ctr ARGS...` in the background with stdin and stdout closed
    /// and stderr piped (for its error, once it exits).
    pub fn spawn_ctr(&self, args: &[&str]) -> Result<Child, String> {
        self.ctr_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("ctr: {e}"))
    }

    /// `ctr run --rm --runtime kata-like IMAGE ID ARGS...`: stdout, stderr, code.
    pub fn run(&self, id: &str, extra: &[&str], args: &[&str]) -> (String, String, i32) {
        let mut all = vec!["run", "--rm", "--runtime", RUNTIME];
        all.extend_from_slice(extra);
        all.push(IMAGE);
        all.push(id);
        all.extend_from_slice(args);
        match self.ctr(&all) {
            Ok(out) => (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
                out.status.code().unwrap_or(-1),
            ),
            Err(e) => (String::new(), e.to_string(), -1),
        }
    }

    /// containerd's log (shim logs land there too).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// The last lines of containerd's log.
    pub fn log_tail(&self) -> String {
        kata_like_runtime::vm::tail(&self.log_path(), 30)
    }

    /// The lines of containerd's log (shims' included) containing `needle`.
    pub fn log_lines_with(&self, needle: &str) -> String {
        let text = std::fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        text.lines().filter(|l| l.contains(needle)).collect::<Vec<_>>().join("\n")
    }

    /// What a finished test must not leave behind: shim, VMM and virtiofsd
    /// processes, mounts and state under our private directory.
    pub fn leftovers(&self) -> Vec<String> {
        let needle = self.dir.path().display().to_string();
        let mut found = Vec::new();
        for (pid, cmdline) in crate::processes() {
            let ours = cmdline.contains(&needle) || cmdline.contains(&self.kata_state.display().to_string());
            if ours
                && ["kata-like-vmm", "virtiofsd", "containerd-shim-kata-like-v2"].iter().any(|p| cmdline.contains(p))
            {
                found.push(format!("process {pid}: {cmdline}"));
            }
        }
        for target in crate::mounts_under(&self.kata_state.display().to_string()) {
            found.push(format!("mount {target}"));
        }
        if let Ok(entries) = std::fs::read_dir(&self.kata_state) {
            // The host's boot slots (lock files) stay, as a lock directory
            // does, and so do VM templates (a cache).
            for e in entries.flatten().filter(|e| e.file_name() != "boot-slots" && e.file_name() != "templates") {
                found.push(format!("state {}", e.path().display()));
            }
        }
        found
    }

    /// Waits up to `timeout` for [`Containerd::leftovers`] to be empty.
    pub fn wait_clean(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.leftovers();
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop_daemon();
        // Shims outlive containerd by design; a failed test must not leave
        // its shims (and so, through PDEATHSIG, VMMs and virtiofsd) running.
        let socket = self.socket.display().to_string();
        for (pid, cmdline) in crate::processes() {
            if cmdline.contains("containerd-shim") && cmdline.contains(&socket) {
                // SAFETY: kill(2) on a shim this containerd started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.leftovers().iter().any(|l| l.starts_with("process")) {
            std::thread::sleep(Duration::from_millis(100));
        }
        // containerd leaves snapshot mounts behind on abrupt stops.
        for t in crate::mounts_under(&self.dir.path().display().to_string()).iter().rev() {
            let _ = nix_umount(t);
        }
    }
}

/// Starts containerd with `config`; shims get `path` and `kata_config`.
fn spawn_daemon(config: &Path, path: &str, kata_config: &Path, log: &Path, append: bool) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(log)
        .map_err(|e| e.to_string())?;
    Command::new(program("containerd"))
        .arg("--config")
        .arg(config)
        .env("PATH", path)
        .env("KATA_LIKE_CONFIG", kata_config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("start containerd: {e}"))
}

/// The containerd namespace of CRI's containers and images.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// A CRI runtime handler whose kata-like config has an unknown option.
pub const BAD_CONFIG_HANDLER: &str = "kata-like-bad-config";
/// A CRI runtime handler whose pods boot cold (`vm_templates = false`),
/// otherwise configured as `kata-like`.
pub const COLD_HANDLER: &str = "kata-like-cold";

/// The CRI parts of a test containerd's config.
struct CriConfigs<'a> {
    /// CNI configs.
    conf_dir: &'a Path,
    /// [`BAD_CONFIG_HANDLER`]'s kata-like config.
    bad: &'a Path,
    /// [`COLD_HANDLER`]'s.
    cold: &'a Path,
}

/// The (major, minor) version of the containerd under test.
pub fn containerd_version() -> Result<(u32, u32), String> {
    let out = Command::new(program("containerd")).arg("--version").output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "containerd github.com/containerd/containerd/v2 v2.1.9 …" or Debian's
    // "containerd containerd.io 1.6.20~ds1 …".
    let version = text.split_whitespace().nth(2).ok_or_else(|| format!("containerd --version: {text:?}"))?;
    let mut parts = version.trim_start_matches('v').split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (next(), next()) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => Err(format!("cannot read containerd's version from {text:?}")),
    }
}

/// containerd's config for the tests, in the layout the version wants
/// (docs/kubernetes.md): config version 2 for 1.x, version 3 for 2.x (the
/// CRI plugin split into `io.containerd.cri.v1.runtime` and
/// `io.containerd.cri.v1.images`; the streaming server stays in
/// `io.containerd.grpc.v1.cri`). With `cri`, its CNI configs and the
/// [`BAD_CONFIG_HANDLER`] and [`COLD_HANDLER`] runtimes.
fn daemon_config(version: (u32, u32), root: &Path, state: &Path, socket: &Path, cri: Option<CriConfigs>) -> String {
    let (config_version, runtime, images) = if version.0 >= 2 {
        (3, "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images")
    } else {
        (2, "io.containerd.grpc.v1.cri", "io.containerd.grpc.v1.cri")
    };
    let server = "io.containerd.grpc.v1.cri";
    let mut text = format!(
        "version = {config_version}\nroot = \"{}\"\nstate = \"{}\"\n[grpc]\n  address = \"{}\"\n",
        root.display(),
        state.display(),
        socket.display()
    );
    if version.0 >= 2 {
        text += &format!("[plugins.\"{images}\".pinned_images]\n  sandbox = \"{IMAGE_PAUSE}\"\n");
        text +=
            &format!("[plugins.\"{server}\"]\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n");
        text += &format!("[plugins.\"{runtime}\"]\n  restrict_oom_score_adj = true\n");
    } else {
        text += &format!(
            "[plugins.\"{server}\"]\n  restrict_oom_score_adj = true\n  sandbox_image = \"{IMAGE_PAUSE}\"\n  \
             stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n"
        );
    }
    let runtimes = format!("plugins.\"{runtime}\".containerd.runtimes");
    text += &format!("[{runtimes}.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n");
    let kata_like = |name: &str, config: Option<&Path>| {
        let mut block =
            format!("[{runtimes}.{name}]\n  runtime_type = \"{RUNTIME}\"\n  pod_annotations = [\"io.kata-like.*\"]\n");
        // The CRI sandbox mode (1.7: sandbox_mode, 2.x: sandboxer): the
        // pause container runs in the pod's VM, as on 1.6.
        if version.0 >= 2 {
            block += "  sandboxer = \"podsandbox\"\n";
        } else if version >= (1, 7) {
            block += "  sandbox_mode = \"podsandbox\"\n";
        }
        if let Some(config) = config {
            block += &format!("[{runtimes}.{name}.options]\n  ConfigPath = \"{}\"\n", config.display());
        }
        block
    };
    text += &kata_like("kata-like", None);
    if let Some(cri) = cri {
        // `bin_dirs` replaced `bin_dir` in containerd 2.1.
        let bin = if version >= (2, 1) { "bin_dirs = [\"/usr/lib/cni\"]" } else { "bin_dir = \"/usr/lib/cni\"" };
        text += &format!("[plugins.\"{runtime}\".cni]\n  {bin}\n  conf_dir = \"{}\"\n", cri.conf_dir.display());
        text += &kata_like(BAD_CONFIG_HANDLER, Some(cri.bad));
        text += &kata_like(COLD_HANDLER, Some(cri.cold));
    }
    text
}

fn nix_umount(target: &str) -> std::io::Result<()> {
    let c = std::ffi::CString::new(target).map_err(std::io::Error::other)?;
    // SAFETY: umount2 with a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
