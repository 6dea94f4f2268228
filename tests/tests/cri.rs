//! Kubernetes pods through containerd's CRI plugin (what kubelet drives),
//! with CNI bridge networking: one microVM per pod. `#[ignore]`d (they boot
//! microVMs); scripts/test.sh runs them.

use std::io::{Read, Write};
use std::time::Duration;

use k8s_cri::v1::{
    AttachRequest, ContainerStatsRequest, ExecRequest, LinuxContainerResources, PodSandboxStatsRequest,
    PortForwardRequest, UpdateContainerResourcesRequest,
};
use test_infra::containerd::{BAD_CONFIG_HANDLER, COLD_HANDLER};
use test_infra::cri::{Cri, Tmpfs};
use test_infra::cri_stream::Session;

fn setup(test: &str) -> Option<Cri> {
    Cri::for_test(test)
}

fn ctx(cri: &Cri) -> String {
    cri.context()
}

/// An HTTP GET from the host; the body.
fn http_get(ip: &str, port: u16) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{ip}:{port}").parse().map_err(|e| format!("{e}"))?,
        Duration::from_secs(30),
    )
    .map_err(|e| format!("connect {ip}:{port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    Ok(reply.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

/// The NAT rules in the network namespace a containerd port-forward error
/// names (`… network namespace "/var/run/netns/cni-…" …`), for diagnosis.
fn netns_nat_rules(error: &str) -> String {
    let Some(path) = error.split('"').find(|p| p.starts_with("/var/run/netns/")) else {
        return "(no namespace in the error)".into();
    };
    let name = path.trim_start_matches("/var/run/netns/");
    test_infra::ip(&["netns", "exec", name, "iptables", "-t", "nat", "-S"]).unwrap_or_else(|e| e)
}

#[test]
#[ignore = "boots microVMs through containerd's CRI plugin"]
fn pods_run_their_containers_in_one_vm_each_with_network_volumes_logs_stats_and_oom() {
    let Some(cri) = setup("pods_run_their_containers_in_one_vm_each_with_network_volumes_logs_stats_and_oom") else {
        return;
    };
    let netns_before = Cri::cni_netns();
    let host = tempfile::tempdir().expect("tmp");
    let data = host.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let config_file = host.path().join("app.conf");
    std::fs::write(&config_file, "setting=1\n").expect("write");
    let empty_dir = Tmpfs::empty_dir(host.path(), "cache", "16m");

    let pod_a = cri.pod_config("kl-pod-a");
    let a = cri.run_pod(&pod_a).unwrap_or_else(|e| panic!("RunPodSandbox: {e}{}", ctx(&cri)));
    let ip_a = cri.pod_ip(&a).unwrap_or_else(|e| panic!("{e}{}", ctx(&cri)));
    assert!(ip_a.starts_with(&cri.network.prefix), "pod IP {ip_a} from the CNI subnet {}.0/24", cri.network.prefix);
    let state = cri.containerd.kata_state.display().to_string();
    assert_eq!(test_infra::vmm_processes_with(&state).len(), 1, "one VM for the pod");

    let mut server = Cri::container_config(
        "server",
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    );
    server.mounts = vec![Cri::mount(&empty_dir.0, "/cache", false)];
    let server = cri.start_container(&a, &pod_a, server).unwrap_or_else(|e| panic!("server: {e}{}", ctx(&cri)));

    // Shares the pod's network (localhost), a rw hostPath, a ro file, the
    // memory emptyDir and /dev/shm with the server.
    let mut sidecar = Cri::container_config(
        "sidecar",
        &[
            "sh",
            "-c",
            "until wget -q -O /data/fetched http://127.0.0.1:8080/; do sleep 1; done; \
             echo fetched $(cat /data/fetched); cat /config/app.conf; echo to-stderr >&2; \
             while read line; do echo got-$line; done",
        ],
    );
    sidecar.stdin = true;
    sidecar.mounts = vec![
        Cri::mount(&data, "/data", false),
        Cri::mount(&config_file, "/config/app.conf", true),
        Cri::mount(&empty_dir.0, "/cache", false),
    ];
    let sidecar = cri.start_container(&a, &pod_a, sidecar).unwrap_or_else(|e| panic!("sidecar: {e}{}", ctx(&cri)));
    assert_eq!(test_infra::vmm_processes_with(&state).len(), 1, "the pod's containers share its VM");

    // Localhost between the two containers; the result on the host volume.
    let fetched = data.join("fetched");
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while std::fs::read_to_string(&fetched).map_or(true, |s| s.is_empty()) {
        assert!(std::time::Instant::now() < deadline, "the sidecar never fetched from the server{}", ctx(&cri));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(std::fs::read_to_string(&fetched).expect("read"), "hello-from-kl-pod-a\n");

    // CRI log files, in containerd's line format.
    let log = cri.log_file("kl-pod-a", "sidecar");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut text = String::new();
    while !text.contains("to-stderr") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        text = std::fs::read_to_string(&log).unwrap_or_default();
    }
    let lines: Vec<&str> = text.lines().collect();
    let has = |stream: &str, content: &str| {
        lines.iter().any(|l| {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            f.len() == 4 && f[1] == stream && f[2] == "F" && f[3] == content && f[0].contains('T')
        })
    };
    assert!(has("stdout", "fetched hello-from-kl-pod-a"), "stdout line in {}: {text:?}", log.display());
    assert!(has("stdout", "setting=1"), "{text:?}");
    assert!(has("stderr", "to-stderr"), "{text:?}");

    // ExecSync (few: each costs seconds of emulated guest kernel work):
    // the pod's hostname and DNS, /dev/shm as containerd sized it, and the
    // pod-shared memory volumes; then read-only and shared from the other
    // container.
    let exec = |id: &str, cmd: &str| {
        cri.exec_sync(id, &["sh", "-c", cmd]).unwrap_or_else(|e| panic!("exec {cmd:?}: {e}{}", ctx(&cri)))
    };
    let (code, out, _) = exec(
        &server,
        "hostname; cat /etc/resolv.conf; grep ' /dev/shm ' /proc/mounts; echo shm-data > /dev/shm/x && echo cache-data > /cache/y",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("kl-pod-a\n"), "the pod's hostname: {out}");
    assert!(out.contains(&format!("nameserver {}.1", cri.network.prefix)), "{out}");
    assert!(out.contains("search kl-test.svc.cluster.local"), "{out}");
    let shm = out.lines().find(|l| l.split(' ').nth(1) == Some("/dev/shm")).unwrap_or_default();
    assert!(shm.starts_with("tmpfs ") && shm.contains("size=65536k"), "/dev/shm as containerd sized it: {shm:?}");
    let (code, out, _) = exec(&sidecar, "cat /dev/shm/x /cache/y; (echo changed > /config/app.conf) 2>&1; echo rc=$?");
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("shm-data\ncache-data\n"), "/dev/shm and the memory emptyDir are the pod's: {out}");
    assert!(out.contains("Read-only file system") && out.ends_with("rc=1\n"), "a read-only mount took a write: {out}");
    assert_eq!(std::fs::read_to_string(&config_file).expect("read"), "setting=1\n");
    assert!(!empty_dir.0.join("y").exists(), "the memory emptyDir lives in guest RAM, not on the host tmpfs");

    // Host → pod TCP, over the CNI bridge, through the tap into the VM.
    assert_eq!(http_get(&ip_a, 8080).unwrap_or_else(|e| panic!("{e}{}", ctx(&cri))), "hello-from-kl-pod-a\n");

    // kubectl port-forward: CRI PortForward, then containerd's streaming
    // server connects to localhost:8080 in the pod's network namespace,
    // which the shim carries into the guest's localhost.
    let req = PortForwardRequest { pod_sandbox_id: a.clone(), port: vec![8080] };
    let url = cri.call(|mut c| async move { c.port_forward(req).await }).expect("PortForward").url;
    let reply = Session::open(&url, "?port=8080")
        .and_then(|s| s.forward(8080, b"GET / HTTP/1.0\r\n\r\n"))
        .unwrap_or_else(|e| {
            let shim = cri.containerd.log_lines_with("port-forward");
            let nat = netns_nat_rules(&e);
            panic!("port-forward: {e}\n--- shim port-forward lines ---\n{shim}\n--- NAT rules in the pod netns ---\n{nat}{}", ctx(&cri))
        });
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.") && reply.ends_with("\r\n\r\nhello-from-kl-pod-a\n"), "{reply:?}");

    // kubectl exec -i: a streaming Exec with stdin, stdout, stderr and the
    // exit code in the final status.
    let req = ExecRequest {
        container_id: server.clone(),
        cmd: ["sh", "-c", "read x; echo got-$x; echo to-stderr >&2; exit 3"].map(String::from).to_vec(),
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let url = cri.call(|mut c| async move { c.exec(req).await }).expect("Exec").url;
    let outcome = Session::open(&url, "")
        .and_then(|mut s| s.send(0, b"ping\n").map(|()| s))
        .and_then(Session::outcome)
        .unwrap_or_else(|e| panic!("exec stream: {e}{}", ctx(&cri)));
    assert_eq!((outcome.stdout.as_str(), outcome.stderr.as_str()), ("got-ping\n", "to-stderr\n"), "{outcome:?}");
    assert_eq!(outcome.exit_code(), Some(3), "{outcome:?}");

    // kubectl attach: the sidecar's stdin and stdout, live.
    let req = AttachRequest { container_id: sidecar.clone(), stdin: true, stdout: true, stderr: true, tty: false };
    let url = cri.call(|mut c| async move { c.attach(req).await }).expect("Attach").url;
    let mut attached = Session::open(&url, "").unwrap_or_else(|e| panic!("attach: {e}{}", ctx(&cri)));
    attached.send(0, b"attached\n").expect("send");
    let echoed = attached.read_until(1, "got-attached\n").unwrap_or_else(|e| panic!("attach: {e}{}", ctx(&cri)));
    assert!(echoed.contains("got-attached\n"), "{echoed:?}");
    drop(attached);

    // Stats, and a resource update seen inside the guest.
    let stats_req = ContainerStatsRequest { container_id: server.clone() };
    let stats =
        cri.call(|mut c| async move { c.container_stats(stats_req).await }).expect("stats").stats.expect("stats");
    let memory = stats.memory.and_then(|m| m.working_set_bytes).map(|v| v.value).unwrap_or(0);
    let cpu = stats.cpu.and_then(|c| c.usage_core_nano_seconds).map(|v| v.value).unwrap_or(0);
    assert!(memory > 0 && cpu > 0, "working set {memory}, cpu {cpu}");

    // PodSandboxStats: containerd reads the pod's host cgroup, where the
    // VMM and virtiofsd run (in the sandbox's cgroup below it).
    let parent = cri.cgroups.parent("kl-pod-a");
    for pid in test_infra::vmm_processes_with(&state) {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        assert!(cgroups.contains(&format!("{parent}/")), "the VMM {pid} is in the pod cgroup {parent}: {cgroups}");
    }
    let pod_stats_req = PodSandboxStatsRequest { pod_sandbox_id: a.clone() };
    let pod_stats = cri
        .call(|mut c| async move { c.pod_sandbox_stats(pod_stats_req).await })
        .unwrap_or_else(|e| panic!("PodSandboxStats: {e}{}", ctx(&cri)));
    let linux = pod_stats.stats.and_then(|s| s.linux).expect("linux pod stats");
    let pod_memory = linux.memory.and_then(|m| m.working_set_bytes).map(|v| v.value).unwrap_or(0);
    let pod_cpu = linux.cpu.and_then(|c| c.usage_core_nano_seconds).map(|v| v.value).unwrap_or(0);
    // The VM's own memory: the guest RAM this pod wrote, the VMM and
    // virtiofsd. Pages of the pod template the guest only reads are page
    // cache shared by every pod of the node, charged once, not per pod
    // (docs/design.md, "Template memory"), so this is well below the VM size.
    assert!(
        pod_memory > 8 << 20 && pod_memory > memory,
        "the pod's working set includes the VM's own memory: {pod_memory} bytes (container: {memory})"
    );
    assert!(pod_cpu > 0, "pod cpu {pod_cpu}");
    let update = UpdateContainerResourcesRequest {
        container_id: server.clone(),
        linux: Some(LinuxContainerResources { memory_limit_in_bytes: 96 << 20, ..Default::default() }),
        ..Default::default()
    };
    cri.call(|mut c| async move { c.update_container_resources(update).await })
        .unwrap_or_else(|e| panic!("update: {e}{}", ctx(&cri)));
    let (_, limit, _) = exec(&server, "cat /sys/fs/cgroup/memory.max");
    assert_eq!(limit.trim(), (96u64 << 20).to_string(), "the guest cgroup got the new limit");

    // Exit codes, and a container restarted in the same pod (attempt 1).
    for (attempt, code) in [(0u32, 3), (1, 0)] {
        let mut c = Cri::container_config("job", &["sh", "-c", &format!("echo attempt {attempt}; exit {code}")]);
        if let Some(m) = c.metadata.as_mut() {
            m.attempt = attempt;
        }
        c.log_path = format!("job-{attempt}.log");
        let id = cri.start_container(&a, &pod_a, c).unwrap_or_else(|e| panic!("job: {e}{}", ctx(&cri)));
        let status = cri.wait_exited(&id, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}{}", ctx(&cri)));
        assert_eq!(status.exit_code, code, "{status:?}");
        let log = std::fs::read_to_string(cri.log_file("kl-pod-a", &format!("job-{attempt}"))).unwrap_or_default();
        assert!(log.contains(&format!("stdout F attempt {attempt}")), "{log:?}");
        cri.remove_container(&id).unwrap_or_else(|e| panic!("remove job: {e}{}", ctx(&cri)));
    }

    // OOM: a container over its memory limit is reported OOMKilled. One
    // 64 MiB read buffer touches each page once: every guest page fault is
    // emulated here (~10 ms), so a small limit and no re-copying keep this
    // near a minute (a doubling shell string took over 3 min under CI load).
    let mut hog = Cri::container_config("hog", &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    Cri::memory_limit(&mut hog, 12 << 20);
    let hog = cri.start_container(&a, &pod_a, hog).unwrap_or_else(|e| panic!("hog: {e}{}", ctx(&cri)));
    let status = cri.wait_exited(&hog, Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e}{}", ctx(&cri)));
    assert_eq!((status.reason.as_str(), status.exit_code), ("OOMKilled", 137), "{status:?}");

    // A container that cannot start: the error says why; the pod lives on.
    let bad = Cri::container_config("bad", &["/no/such/binary"]);
    let err = cri.start_container(&a, &pod_a, bad).expect_err("a missing binary cannot start");
    assert!(err.message().contains("/no/such/binary"), "{err}");

    // Pod → pod over the bridge, between two VMs (pod a still serves after
    // the failed container).
    // Pod b boots cold (the CRI path's cold-boot test); pod a was restored
    // from the pod template, so this also shows the restored NIC took pod
    // a's MAC (the bridge delivers to it) and addresses.
    let pod_b = cri.pod_config("kl-pod-b");
    let b = cri.run_pod_with(&pod_b, COLD_HANDLER).unwrap_or_else(|e| panic!("RunPodSandbox b: {e}{}", ctx(&cri)));
    assert_ne!(cri.pod_ip(&b).expect("ip b"), ip_a);
    assert_eq!(test_infra::vmm_processes_with(&state).len(), 2, "one VM per pod");
    let fetch = format!("until wget -q -O - http://{ip_a}:8080/; do sleep 1; done");
    let client = cri.start_container(&b, &pod_b, Cri::container_config("client", &["sh", "-c", &fetch]));
    let client = client.unwrap_or_else(|e| panic!("client: {e}{}", ctx(&cri)));
    let status = cri.wait_exited(&client, Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e}{}", ctx(&cri)));
    assert_eq!(status.exit_code, 0);
    let log = std::fs::read_to_string(cri.log_file("kl-pod-b", "client")).unwrap_or_default();
    assert!(log.contains("stdout F hello-from-kl-pod-a"), "pod b fetched from pod a: {log:?}");

    // Stop and remove: nothing is left (VMs, shims, virtiofsd, mounts,
    // state, the pods' veths on the bridge, their network namespaces).
    cri.stop_container(&sidecar, 1).unwrap_or_else(|e| panic!("stop: {e}{}", ctx(&cri)));
    for pod in [&b, &a] {
        cri.remove_pod(pod).unwrap_or_else(|e| panic!("remove pod: {e}{}", ctx(&cri)));
    }
    let left = cri.containerd.wait_clean(Duration::from_secs(60));
    assert!(left.is_empty(), "leftovers: {left:#?}{}", ctx(&cri));
    assert!(cri.network.ports().is_empty(), "veths left on {}: {:?}", cri.network.bridge, cri.network.ports());
    let restored = cri.containerd.log_lines_with("restored from template");
    assert_eq!(restored.lines().count(), 1, "pod a restored, pod b cold:\n{restored}");
    let new_netns: Vec<String> = Cri::cni_netns().into_iter().filter(|n| !netns_before.contains(n)).collect();
    assert!(new_netns.is_empty(), "network namespaces left: {new_netns:?}");
    for pod in ["kl-pod-a", "kl-pod-b"] {
        let left = cri.cgroups.children(pod);
        assert!(left.is_empty(), "sandbox cgroups left in pod {pod}: {left:?}");
    }
}

#[test]
#[ignore = "starts containerd's CRI plugin and our shim"]
fn bad_pod_configs_are_refused_with_the_reason_and_leave_nothing() {
    let Some(cri) = setup("bad_pod_configs_are_refused_with_the_reason_and_leave_nothing") else { return };
    let netns_before = Cri::cni_netns();

    // A VM-size annotation the runtime config does not enable.
    let mut pod = cri.pod_config("kl-bad-annotation");
    pod.annotations.insert("io.kata-like.vm.memory_mib".into(), "512".into());
    let err = cri.run_pod(&pod).expect_err("an annotation the config does not enable");
    assert!(err.message().contains("io.kata-like.vm.memory_mib is not enabled"), "{err}");

    // A runtime handler whose kata-like config has an unknown option.
    let pod = cri.pod_config("kl-bad-handler");
    let req = k8s_cri::v1::RunPodSandboxRequest { config: Some(pod), runtime_handler: BAD_CONFIG_HANDLER.into() };
    let err = cri.call(|mut c| async move { c.run_pod_sandbox(req).await }).expect_err("a bad runtime config");
    assert!(err.message().contains("no_such_option"), "{err}");

    // Host namespaces a VM cannot share, refused by their Kubernetes names.
    for (name, option) in [("kl-host-net", "hostNetwork"), ("kl-host-pid", "hostPID"), ("kl-host-ipc", "hostIPC")] {
        let mut pod = cri.pod_config(name);
        let linux = pod.linux.get_or_insert_with(Default::default);
        let ns = linux
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options
            .get_or_insert_with(Default::default);
        let node = k8s_cri::v1::NamespaceMode::Node as i32;
        match option {
            "hostNetwork" => ns.network = node,
            "hostPID" => ns.pid = node,
            _ => ns.ipc = node,
        }
        let err = cri.run_pod(&pod).expect_err(option);
        assert!(err.message().contains(&format!("{option} is not supported by kata-like")), "{option}: {err}");
    }

    // An unknown handler.
    let pod = cri.pod_config("kl-no-handler");
    let req = k8s_cri::v1::RunPodSandboxRequest { config: Some(pod), runtime_handler: "no-such-handler".into() };
    let err = cri.call(|mut c| async move { c.run_pod_sandbox(req).await }).expect_err("an unknown handler");
    assert!(err.message().contains("no-such-handler"), "{err}");

    let left = cri.containerd.wait_clean(Duration::from_secs(60));
    assert!(left.is_empty(), "leftovers: {left:#?}{}", ctx(&cri));
    assert!(cri.network.ports().is_empty(), "veths left: {:?}", cri.network.ports());
    let new_netns: Vec<String> = Cri::cni_netns().into_iter().filter(|n| !netns_before.contains(n)).collect();
    assert!(new_netns.is_empty(), "network namespaces left: {new_netns:?}");
}

/// The CRI smoke test the containerd version matrix runs on every version:
/// a pod, a container in it, ExecSync, its log, stop and remove, nothing
/// left.
#[test]
#[ignore = "boots a microVM through containerd's CRI plugin"]
fn pod_smoke_run_exec_logs_stop_remove() {
    let Some(cri) = setup("pod_smoke_run_exec_logs_stop_remove") else { return };
    // Two pods restored from one pod template: each has its own identity.
    let mut ids = Vec::new();
    let mut identities = Vec::new();
    for name in ["kl-smoke", "kl-smoke-2"] {
        let pod = cri.pod_config(name);
        let id = cri.run_pod(&pod).unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}{}", ctx(&cri)));
        let app = Cri::container_config("app", &["sh", "-c", "echo hello-from-app; exec sleep 600"]);
        let app = cri.start_container(&id, &pod, app).unwrap_or_else(|e| panic!("app: {e}{}", ctx(&cri)));
        let (code, out, err) =
            cri.exec_sync(&app, &["sh", "-c", "echo exec-$((6*7))"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((code, out.as_str(), err.as_str()), (0, "exec-42\n", ""), "ExecSync{}", ctx(&cri));
        let script = "cat /sys/class/net/eth0/address; ip -o -4 addr show eth0 | awk '{print $4}'; \
                      head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo";
        let (code, out, err) = cri.exec_sync(&app, &["sh", "-c", script]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(code, 0, "{out}{err}");
        let lines: Vec<String> = out.lines().map(str::to_string).collect();
        assert_eq!(lines.len(), 3, "mac, address, random bytes: {out:?}");
        let ip = cri.pod_ip(&id).unwrap_or_else(|e| panic!("{e}{}", ctx(&cri)));
        assert!(lines[1].starts_with(&format!("{ip}/")), "the guest has the pod's IP {ip}: {out:?}");
        assert_ne!(lines[0], "02:6b:6c:00:00:01", "the guest NIC took the pod's MAC, not the template's");
        identities.push(lines);
        ids.push((id, app));
    }
    let restored = cri.containerd.log_lines_with("restored from template");
    assert_eq!(restored.lines().count(), 2, "both pods restored from the pod template:\n{restored}");
    for (i, what) in ["MAC", "IP", "RNG output"].iter().enumerate() {
        assert_ne!(identities[0][i], identities[1][i], "two pods restored from one template share their {what}");
    }
    let (other, other_app) = ids.pop().expect("two pods");
    cri.stop_container(&other_app, 1).unwrap_or_else(|e| panic!("stop: {e}{}", ctx(&cri)));
    cri.remove_pod(&other).unwrap_or_else(|e| panic!("remove pod: {e}{}", ctx(&cri)));
    let (id, app) = ids.pop().expect("a pod");
    let log = cri.log_file("kl-smoke", "app");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("stdout F hello-from-app") {
        assert!(std::time::Instant::now() < deadline, "log {}: {:?}", log.display(), std::fs::read_to_string(&log));
        std::thread::sleep(Duration::from_millis(250));
    }
    cri.stop_container(&app, 1).unwrap_or_else(|e| panic!("stop: {e}{}", ctx(&cri)));
    cri.remove_container(&app).unwrap_or_else(|e| panic!("remove: {e}{}", ctx(&cri)));
    cri.remove_pod(&id).unwrap_or_else(|e| panic!("remove pod: {e}{}", ctx(&cri)));
    let left = cri.containerd.wait_clean(Duration::from_secs(60));
    assert!(left.is_empty(), "leftovers: {left:#?}{}", ctx(&cri));
    assert!(cri.network.ports().is_empty(), "veths left on {}: {:?}", cri.network.bridge, cri.network.ports());
}
