//! Boots real microVMs: our VMM, our guest kernel, our agent as init.
//!
//! Each boot costs tens of seconds on nested hosts (guest kernel code is
//! emulated), so each test checks as much as it can per VM. Run with
//! `scripts/test.sh` or `cargo test -p kata-like-tests --test vm_boot -- --ignored`.

use std::process::Command;
use std::time::{Duration, Instant};

use kata_like_protocol::agent::RunProcessRequest;
use kata_like_runtime::vm::{SandboxError, SandboxVm};
use test_infra::{expected_kernel_suffix, host_is_nested_pvm, vm_test, vmm_processes_with};

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Unwraps an agent call, or fails with the guest console and VMM log: a
/// lost connection says little on its own.
fn ok<T, E: std::fmt::Display>(vm: &SandboxVm, what: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| {
        let console = vm.console();
        let console: Vec<&str> = console.lines().collect();
        let vmm_log = kata_like_runtime::vm::tail(&vm.state_dir().join("vmm.log"), 30);
        panic!(
            "{what}: {e}\n--- guest console (tail) ---\n{}\n--- VMM log (tail) ---\n{vmm_log}",
            console[console.len().saturating_sub(30)..].join("\n")
        )
    })
}

#[test]
#[ignore = "boots a microVM; run with scripts/test.sh or `-- --ignored`"]
fn vm_boots_serves_the_agent_and_powers_off() {
    let Some(artifacts) = vm_test("vm_boots_serves_the_agent_and_powers_off") else { return };
    let started = Instant::now();
    let vm = SandboxVm::start(&artifacts.vm_spec()).expect("the VM boots and the agent answers");
    let boot = vm.boot_times();
    eprintln!("boot: {boot:?} after {:?}", started.elapsed());

    // Health: our agent on our kernel, and not a stale cached kernel.
    let health = vm.health();
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
    assert!(
        health.kernel_release.ends_with(&expected_kernel_suffix()),
        "guest kernel {} is not built from the current config ({})",
        health.kernel_release,
        expected_kernel_suffix()
    );
    assert!(health.uptime_ms > 0);
    assert!(boot.first_kvm_run_us.is_some(), "the VMM logs its first KVM_RUN");
    assert!(boot.boot_timer_us.is_some(), "the agent wrote the boot-timer marker");

    // `uname -r` in the guest.
    let uname = ok(&vm, "uname runs", vm.run(&strings(&["uname", "-r"]), &[], "", &[]));
    assert_eq!(uname.exit_code, 0);
    assert_eq!(String::from_utf8_lossy(&uname.stdout).trim(), health.kernel_release);

    // A failing command: exit status, both streams, env, cwd and stdin.
    let script = "cat; echo \"$GREETING from $(pwd)\"; echo to-stderr >&2; exit 7";
    let failing = ok(
        &vm,
        "sh runs",
        vm.run(&strings(&["sh", "-c", script]), &strings(&["GREETING=hello", "PATH=/bin"]), "/tmp", b"piped in\n"),
    );
    assert_eq!(failing.exit_code, 7);
    assert_eq!(String::from_utf8_lossy(&failing.stdout), "piped in\nhello from /tmp\n");
    assert_eq!(failing.stderr, b"to-stderr\n");

    // Killed by a signal.
    let killed = ok(&vm, "sh runs", vm.run(&strings(&["sh", "-c", "kill -9 $$"]), &[], "", &[]));
    assert_eq!((killed.exit_code, killed.signal), (-1, 9));

    // Bad requests get ttrpc errors and PID 1 keeps serving.
    let missing = vm.run(&strings(&["/no/such/binary"]), &[], "", &[]).unwrap_err();
    assert!(missing.to_string().contains("not found"), "{missing}");
    let empty = vm.agent().run_process(&RunProcessRequest::new()).unwrap_err();
    assert!(empty.to_string().contains("args is empty"), "{empty}");
    let mut timed = RunProcessRequest::new();
    timed.args = strings(&["sleep", "60"]);
    timed.timeout_ms = 1000;
    let timed_out = ok(&vm, "sleep with a timeout", vm.agent().run_process(&timed));
    assert!(timed_out.timed_out && timed_out.signal == 9, "{timed_out:?}");
    ok(&vm, "the agent still answers", vm.agent().health());

    // The guest sees the VM we configured.
    let mem = ok(&vm, "grep runs", vm.run(&strings(&["grep", "MemTotal", "/proc/meminfo"]), &[], "", &[]));
    let kib: u64 =
        String::from_utf8_lossy(&mem.stdout).split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!((100_000..=131_072).contains(&kib), "MemTotal {kib} kB for a 128 MiB VM");

    // Power off through the agent: the VMM exits 0 and leaves nothing behind.
    let state = vm.state_dir().to_path_buf();
    let pid = vm.vmm_pid().expect("VMM pid");
    let status = vm.shutdown(Duration::from_secs(60)).expect("the VM powers off");
    assert!(status.success(), "VMM exit status {status}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "VMM process gone");
    assert!(!state.exists(), "state directory (vsock socket, logs) removed");
}

#[test]
#[ignore = "boots a microVM; run with scripts/test.sh or `-- --ignored`"]
fn cli_runs_a_command_on_two_vcpus_and_propagates_the_exit_code() {
    let Some(artifacts) = vm_test("cli_runs_a_command_on_two_vcpus_and_propagates_the_exit_code") else { return };
    let output = Command::new(&artifacts.cli)
        .args(["vm", "exec", "--vcpus", "2", "--timing"])
        .arg("--vmm")
        .arg(&artifacts.vmm)
        .arg("--kernel")
        .arg(&artifacts.kernel)
        .arg("--initrd")
        .arg(&artifacts.initrd)
        .args(["--", "sh", "-c", "grep -c ^processor /proc/cpuinfo; echo oops >&2; exit 3"])
        .output()
        .expect("kata-like runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "2\n", "both vCPUs came up (MP table, SIPI)");
    assert!(stderr.contains("oops"), "{stderr}");
    assert!(stderr.contains("guest init (boot timer)"), "{stderr}");
}

#[test]
#[ignore = "boots a microVM; run with scripts/test.sh or `-- --ignored`"]
fn bzimage_boots_and_an_in_guest_poweroff_ends_the_vmm_cleanly() {
    let Some(artifacts) = vm_test("bzimage_boots_and_an_in_guest_poweroff_ends_the_vmm_cleanly") else { return };
    let bzimage = artifacts.kernel.with_file_name("bzImage");
    if !bzimage.exists() {
        // The kernel cache always holds both; a custom KATA_LIKE_KERNEL may not.
        test_infra::skip(
            "bzimage_boots_and_an_in_guest_poweroff_ends_the_vmm_cleanly",
            &format!("no bzImage next to {}", artifacts.kernel.display()),
        );
        return;
    }
    let mut spec = artifacts.vm_spec();
    spec.kernel = bzimage;
    let vm = SandboxVm::start(&spec).expect("the bzImage boots through the 64-bit boot protocol");
    let uname = vm.run(&strings(&["uname", "-r"]), &[], "", &[]).expect("uname runs");
    assert!(String::from_utf8_lossy(&uname.stdout).contains("kata-like"));
    let pid = vm.vmm_pid().expect("pid");
    // `poweroff -f` calls reboot(2) directly: without ACPI our kernel turns
    // it into the i8042 reset (guest-kernel patch 0002). The RPC itself dies
    // with the guest; any other outcome is a failure.
    match vm.run(&strings(&["poweroff", "-f"]), &[], "", &[]) {
        Ok(resp) => panic!("poweroff returned instead of ending the VM: {resp:?}"),
        Err(SandboxError::Agent(e)) if !e.to_string().contains("rpc status") => {}
        Err(e) => panic!("poweroff could not run: {e}"),
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::path::Path::new(&format!("/proc/{pid}/stat")).exists() && Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(vm.state_dir().join("vmm.log")).unwrap_or_default();
    assert!(log.contains("VM shut down"), "the VMM saw a clean guest power-off:\n{log}");
    drop(vm);
}

#[test]
#[ignore = "boots a microVM; run with scripts/test.sh or `-- --ignored`"]
fn unemulatable_guest_instructions_are_reported_not_hung() {
    let Some(artifacts) = vm_test("unemulatable_guest_instructions_are_reported_not_hung") else { return };
    let mut spec = artifacts.vm_spec();
    spec.vmm_args = strings(&["--cpu-template", "host"]);
    let result = SandboxVm::start(&spec);
    if !host_is_nested_pvm() {
        // With hardware virtualization the host template simply works.
        let vm = result.expect("host CPU template boots on hardware KVM");
        vm.shutdown(Duration::from_secs(60)).expect("powers off");
        return;
    }
    // On nested PVM hosts the guest kernel uses XSAVE with the host template,
    // which the host's emulator cannot run: the VMM must say so and exit.
    let err = result.expect_err("the host template cannot boot on nested PVM");
    let text = err.to_string();
    assert!(matches!(err, SandboxError::Boot { .. }), "{text}");
    assert!(text.contains("VMM exited"), "the VMM ended by itself: {text}");
    assert!(text.contains("emulation failed") && text.contains("RIP 0x") && text.contains("code:"), "{text}");
}

#[test]
#[ignore = "starts the VMM; run with scripts/test.sh or `-- --ignored`"]
fn agent_timeout_kills_the_vm_and_cleans_up() {
    let Some(artifacts) = vm_test("agent_timeout_kills_the_vm_and_cleans_up") else { return };
    let mut spec = artifacts.vm_spec();
    spec.boot_timeout = Duration::from_secs(3);
    let state_parent = tempfile::tempdir().expect("tmp");
    spec.state_parent = Some(state_parent.path().to_path_buf());
    let err = SandboxVm::start(&spec).expect_err("no agent answers within 3 s");
    assert!(err.to_string().contains("did not answer within 3s"), "{err}");
    assert!(vmm_processes_with(&state_parent.path().to_string_lossy()).is_empty(), "the VMM was killed");
    assert_eq!(std::fs::read_dir(state_parent.path()).map(|d| d.count()).unwrap_or(1), 0, "state removed");
}

/// A persistent host tap with an address, removed on drop.
struct HostTap(String);

impl HostTap {
    fn create(name: &str, cidr: &str) -> Result<HostTap, String> {
        use test_infra::ip;
        ip(&["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"])?;
        let tap = HostTap(name.to_string());
        ip(&["addr", "add", cidr, "dev", name])?;
        ip(&["link", "set", name, "up"])?;
        Ok(tap)
    }
}

impl Drop for HostTap {
    fn drop(&mut self) {
        let _ = test_infra::ip(&["link", "del", &self.0]);
    }
}

#[test]
#[ignore = "boots a microVM; run with scripts/test.sh or `-- --ignored`"]
fn virtio_net_carries_tcp_between_guest_and_host() {
    const TEST: &str = "virtio_net_carries_tcp_between_guest_and_host";
    let Some(artifacts) = vm_test(TEST) else { return };
    let name = format!("klnet{}", std::process::id() % 100_000);
    let _tap = match HostTap::create(&name, "10.213.0.1/30") {
        Ok(tap) => tap,
        Err(e) => return test_infra::skip(TEST, &format!("cannot create a host tap: {e}")),
    };
    let (port, server) = test_infra::one_line_server("10.213.0.1", b"hello guest\n");

    let mut spec = artifacts.vm_spec();
    spec.vmm_args = strings(&["--net", &format!("tap={name},mac=02:00:0a:d5:00:02,mtu=1400")]);
    let vm = SandboxVm::start(&spec).expect("the VM boots with a NIC");
    let script = format!(
        "ip link set eth0 up && ip addr add 10.213.0.2/30 dev eth0 && \
         cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu && \
         echo hello host | busybox nc 10.213.0.1 {port}"
    );
    let mut req = RunProcessRequest::new();
    req.args = strings(&["sh", "-c", &script]);
    req.timeout_ms = 300_000;
    let out = ok(&vm, "nc in the guest", vm.agent().run_process(&req));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!((out.exit_code, out.timed_out), (0, false), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "02:00:0a:d5:00:02\n1400\nhello guest\n", "stderr: {stderr}");
    let (line, peer) = server.join().expect("server thread").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(line, "hello host\n");
    assert_eq!(peer.ip().to_string(), "10.213.0.2");
    vm.shutdown(Duration::from_secs(60)).expect("the VM powers off");
}
