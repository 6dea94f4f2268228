//! Docker and podman with kata-like as their OCI runtime, for the
//! runc-compatible CLI's tests: a private dockerd (its own containerd,
//! data root, exec root and socket, kata-like registered in daemon.json)
//! and a podman with its own root, runroot and containers.conf, both with a
//! busybox image imported from a rootfs built here. Dropping them stops the
//! daemons, kills what is left of their containers and removes their
//! directories.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The image both clients get (imported from [`busybox_rootfs`]).
pub const IMAGE: &str = "kata-like-busybox:latest";
/// The runtime name in Docker's daemon.json and podman's `--runtime`.
pub const RUNTIME: &str = "kata-like";
/// The same runtime with VM templates off (cold boots), in daemon.json.
pub const RUNTIME_COLD: &str = "kata-like-cold";

/// Debian's docker.io client (a `docker` earlier on PATH may be another).
fn docker_bin() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// Why Docker tests cannot run here, if they cannot.
pub fn docker_unavailable() -> Option<String> {
    missing(&["dockerd", "docker", "containerd"])
}

/// Why podman tests cannot run here, if they cannot.
pub fn podman_unavailable() -> Option<String> {
    missing(&["podman", "conmon"])
}

fn missing(programs: &[&str]) -> Option<String> {
    let absent: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| {
            Command::new("sh").args(["-c", &format!("command -v {p}")]).output().map_or(true, |o| !o.status.success())
        })
        .collect();
    (!absent.is_empty()).then(|| format!("{} not installed (scripts/install-deps.sh installs them)", absent.join(", ")))
}

/// A busybox root file system: Debian's static busybox with the applets
/// the tests use.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir rootfs");
    for d in ["proc", "sys", "dev", "tmp", "etc", "www"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox");
    for applet in ["sh", "echo", "sleep", "cat", "id", "tty", "ls", "httpd", "true", "ip", "wc", "head", "date"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("symlink");
    }
    std::fs::write(rootfs.join("www/index.html"), "hello from a kata-like microVM\n").expect("index");
    rootfs
}

/// The kata-like runtime config the clients' containers get: the suite's
/// VM templates, VM state under `state_root` (so a test sees what is left),
/// generous timeouts for the emulated guest kernel.
fn runtime_config(dir: &Path, state_root: &Path) -> PathBuf {
    runtime_config_named(dir, state_root, "kata-like.toml", "")
}

fn runtime_config_named(dir: &Path, state_root: &Path, name: &str, extra: &str) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        "memory_mib = 128\nboot_timeout_secs = 300\nrpc_timeout_secs = 240\nstate_root = \"{}\"\n{}{extra}",
        state_root.display(),
        crate::containerd::templated_runtime_config()
    );
    std::fs::write(&path, text).expect("runtime config");
    path
}

fn cli() -> PathBuf {
    crate::Artifacts::locate().map(|a| a.cli).unwrap_or_else(|e| panic!("{e}"))
}

/// What a finished container must not leave: kata-like processes (monitors,
/// VMMs, virtiofsd) whose command line names `needle`, mounts below it that
/// are the VM's (in `state_root`) or the container's (naming `id`; the
/// daemons' own mounts stay), VM state in `state_root` (boot-slot locks and
/// the empty control-socket directory aside), and the cgroups named.
fn leftovers(needle: &str, id: &str, state_root: &Path, cgroups: &[PathBuf]) -> Vec<String> {
    let mut found = Vec::new();
    for (pid, cmdline) in crate::processes() {
        if cmdline.contains(needle) && ["kata-like", "virtiofsd"].iter().any(|p| cmdline.contains(p)) {
            found.push(format!("process {pid}: {cmdline}"));
        }
    }
    let root = state_root.display().to_string();
    for target in crate::mounts_under(needle) {
        if target.starts_with(&root) || (!id.is_empty() && target.contains(id)) {
            found.push(format!("mount {target}"));
        }
    }
    for entry in std::fs::read_dir(state_root).into_iter().flatten().flatten() {
        let path = entry.path();
        let empty_dir = std::fs::read_dir(&path).map(|mut d| d.next().is_none()).unwrap_or(false);
        if entry.file_name() != "boot-slots" && !(entry.file_name() == "oci" && empty_dir) {
            found.push(format!("state {}", path.display()));
        }
    }
    for cgroup in cgroups.iter().filter(|c| c.exists()) {
        found.push(format!("cgroup {}", cgroup.display()));
    }
    found
}

fn wait_clean(timeout: Duration, mut left: impl FnMut() -> Vec<String>) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = left();
        if now.is_empty() || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The host cgroup directories of container `id` under `parent` (e.g.
/// "docker") in each v1 hierarchy we use, or the v2 one.
pub fn cgroup_dirs(parent: &str, id: &str) -> Vec<PathBuf> {
    if id.is_empty() {
        return Vec::new();
    }
    ["memory", "pids", "cpu", "blkio", "unified"]
        .iter()
        .map(|h| Path::new("/sys/fs/cgroup").join(h).join(parent).join(id))
        .collect()
}

/// A private dockerd.
#[derive(Debug)]
pub struct Docker {
    dir: tempfile::TempDir,
    containerd: Child,
    dockerd: Child,
    socket: PathBuf,
    /// VM state of its containers.
    pub state_root: PathBuf,
}

impl Docker {
    /// Starts containerd and dockerd (bridge networking with iptables, for
    /// `-p`), registers kata-like and imports the busybox image.
    pub fn start() -> Result<Docker, String> {
        let dir = tempfile::Builder::new().prefix("kl-docker-").tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        let state_root = d.join("vm-state");
        let config = runtime_config(d, &state_root);
        let cold = runtime_config_named(d, &state_root, "kata-like-cold.toml", crate::containerd::COLD_BOOT);
        let daemon_json = serde_json::json!({
            "runtimes": {
                RUNTIME: { "path": cli(), "runtimeArgs": ["--config", config] },
                RUNTIME_COLD: { "path": cli(), "runtimeArgs": ["--config", cold] },
            }
        });
        std::fs::write(d.join("daemon.json"), daemon_json.to_string()).map_err(|e| e.to_string())?;
        let log = |name: &str| std::fs::File::create(d.join(name)).map_err(|e| e.to_string());
        let ctd_socket = d.join("containerd.sock");
        let containerd = Command::new("containerd")
            .arg("--root")
            .arg(d.join("containerd/root"))
            .arg("--state")
            .arg(d.join("containerd/state"))
            .arg("--address")
            .arg(&ctd_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log("containerd.log")?)
            .spawn()
            .map_err(|e| format!("containerd: {e}"))?;
        wait_for(&ctd_socket, "containerd")?;
        let socket = d.join("docker.sock");
        let dockerd = Command::new("dockerd")
            .arg("--containerd")
            .arg(&ctd_socket)
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--iptables=true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log("dockerd.log")?)
            .spawn()
            .map_err(|e| format!("dockerd: {e}"))?;
        let docker = Docker { dir, containerd, dockerd, socket, state_root };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !docker.docker(&["info"]).status.success() {
            if Instant::now() > deadline {
                return Err(format!("dockerd did not come up:\n{}", docker.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let rootfs = busybox_rootfs(docker.dir.path());
        let imported = Command::new("sh")
            .arg("-c")
            .arg(format!("tar -C {} -c . | {} import - {IMAGE}", rootfs.display(), docker.client()))
            .output()
            .map_err(|e| e.to_string())?;
        if !imported.status.success() {
            return Err(format!("docker import: {}", String::from_utf8_lossy(&imported.stderr)));
        }
        Ok(docker)
    }

    /// `docker ARGS` against this daemon.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().expect("docker")
    }

    /// A `docker` command against this daemon.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(docker_bin());
        c.arg("-H").arg(format!("unix://{}", self.socket.display())).args(args);
        c
    }

    /// The client against this daemon, as a shell command prefix.
    pub fn client(&self) -> String {
        format!("{} -H unix://{}", docker_bin(), self.socket.display())
    }

    /// The last lines of dockerd's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until nothing of container `id` is left (see [`leftovers`]).
    pub fn wait_clean(&self, id: &str) -> Vec<String> {
        let needle = self.dir.path().display().to_string();
        let cgroups = cgroup_dirs("docker", id);
        wait_clean(Duration::from_secs(30), || leftovers(&needle, id, &self.state_root, &cgroups))
    }

    /// The full ID of container `name`.
    pub fn id(&self, name: &str) -> String {
        String::from_utf8_lossy(&self.docker(&["inspect", "-f", "{{.Id}}", name]).stdout).trim().to_string()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("{} ps -aq | xargs -r {} rm -f", self.client(), self.client()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        stop(&mut self.dockerd);
        stop(&mut self.containerd);
        kill_left(&self.dir.path().display().to_string());
    }
}

/// A podman with its own storage.
#[derive(Debug)]
pub struct Podman {
    dir: tempfile::TempDir,
    /// VM state of its containers.
    pub state_root: PathBuf,
    config: PathBuf,
}

impl Podman {
    /// Sets podman up (containers.conf: no default rlimits, which this
    /// host cannot raise; cgroupfs; file events) and imports the image.
    pub fn start() -> Result<Podman, String> {
        let dir = tempfile::Builder::new().prefix("kl-podman-").tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        let state_root = d.join("vm-state");
        let config = runtime_config(d, &state_root);
        std::fs::write(
            d.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .map_err(|e| e.to_string())?;
        let podman = Podman { dir, state_root, config };
        let rootfs = busybox_rootfs(podman.dir.path());
        let tar = podman.dir.path().join("rootfs.tar");
        let made = Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").status();
        if !made.is_ok_and(|s| s.success()) {
            return Err("tar of the busybox rootfs failed".into());
        }
        let imported = podman.podman(&["import", &tar.display().to_string(), IMAGE]);
        if !imported.status.success() {
            return Err(format!("podman import: {}", String::from_utf8_lossy(&imported.stderr)));
        }
        Ok(podman)
    }

    /// `podman ARGS` with its own storage and kata-like as the runtime.
    pub fn podman(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().expect("podman")
    }

    /// A `podman` command with its own storage and kata-like as the runtime.
    pub fn command(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--runtime")
            .arg(cli())
            .arg(format!("--runtime-flag=config={}", self.config.display()))
            .args(args);
        c
    }

    /// Waits until nothing of container `id` is left.
    pub fn wait_clean(&self, id: &str) -> Vec<String> {
        let needle = self.dir.path().display().to_string();
        let cgroups = if id.is_empty() { Vec::new() } else { cgroup_dirs("libpod_parent", &format!("libpod-{id}")) };
        wait_clean(Duration::from_secs(30), || leftovers(&needle, id, &self.state_root, &cgroups))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        kill_left(&self.dir.path().display().to_string());
        let d = self.dir.path();
        for t in crate::mounts_under(&d.display().to_string()).iter().rev() {
            let c = std::ffi::CString::new(t.as_str()).unwrap_or_default();
            // SAFETY: umount2 with a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = self.podman(&["system", "reset", "-f"]);
    }
}

fn wait_for(socket: &Path, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not create {}", socket.display()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILLs kata-like processes a failed test left (their VMs die with them).
fn kill_left(needle: &str) {
    for (pid, cmdline) in crate::processes() {
        if cmdline.contains(needle) && cmdline.contains("kata-like") {
            // SAFETY: kill(2) on a process of this test's own.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}
