//! Pod networking with a real VM: a network namespace left the way CNI's
//! bridge plugin leaves one (a veth `eth0` with the pod's address and a
//! default route, its peer on the host), `network::attach` (tap + tc
//! redirect), and a microVM whose NIC is that tap. Traffic between the host
//! and the guest then crosses veth → tc → tap → virtio-net and back.
//!
//! Run with `scripts/test.sh` or
//! `cargo test -p kata-like-tests --test pod_network -- --ignored`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kata_like_protocol::agent::RunProcessRequest;
use kata_like_runtime::network::{self, IpNet, TAP_NAME};
use kata_like_runtime::vm::{NetDevice, SandboxVm};
use test_infra::netns::PodNetns;
use test_infra::{ip, skip, vm_test};

#[test]
#[ignore = "boots a microVM; run with scripts/test.sh or `-- --ignored`"]
fn a_vm_on_the_pod_tap_talks_tcp_through_the_cni_veth() {
    const TEST: &str = "a_vm_on_the_pod_tap_talks_tcp_through_the_cni_veth";
    let Some(artifacts) = vm_test(TEST) else { return };
    let tag = std::process::id() % 100_000;
    let ns = match PodNetns::create(tag, "10.215.0.1/24", "10.215.0.2/24", "10.215.0.1") {
        Ok(ns) => ns,
        Err(e) => return skip(TEST, &format!("cannot create a network namespace with a veth: {e}")),
    };

    // What CNI configured is what the guest must get.
    let pod = network::attach(Path::new(&ns.path())).expect("attach to the pod namespace");
    let veth_mac = ip(&["-n", &ns.name, "-o", "link", "show", "eth0"]).expect("eth0");
    assert_eq!(pod.interface.name, "eth0");
    assert!(veth_mac.contains(&format!("link/ether {}", pod.interface.mac)), "{veth_mac} vs {}", pod.interface.mac);
    assert_eq!(pod.interface.addresses, vec![IpNet { addr: "10.215.0.2".parse().expect("ip"), prefix: 24 }]);
    let gateway = "10.215.0.1".parse().ok();
    assert!(pod.routes.iter().any(|r| r.dest.is_none() && r.gateway == gateway), "{:?}", pod.routes);
    assert!(pod.routes.iter().any(|r| r.dest.as_ref().is_some_and(|d| d.to_string() == "10.215.0.0/24")));
    let filters = Command::new("ip")
        .args(["netns", "exec", &ns.name, "tc", "filter", "show", "dev", "eth0", "ingress"])
        .output()
        .expect("tc");
    let filters = String::from_utf8_lossy(&filters.stdout);
    assert!(filters.contains("mirred") && filters.contains(TAP_NAME), "eth0 ingress redirects to the tap:\n{filters}");

    let (port, server) = test_infra::one_line_server("10.215.0.1", b"hello pod\n");

    let mut spec = artifacts.vm_spec();
    let mac = pod.interface.mac.clone();
    let mtu = pod.interface.mtu;
    let pod_request = pod.guest_request();
    spec.net = Some(NetDevice { tap: Arc::new(pod.tap), mac: mac.clone(), mtu: pod.interface.mtu });
    let vm = SandboxVm::start(&spec).expect("the VM boots on the pod's tap");
    // A NIC the guest does not have is named, and nothing breaks.
    let mut wrong = pod_request.clone();
    wrong.interfaces[0].mac = "02:00:00:00:00:99".into();
    let err = vm.agent().configure_network(&wrong).unwrap_err();
    assert!(err.to_string().contains("no guest interface has MAC 02:00:00:00:00:99"), "{err}");
    // The agent configures what attach() read from the namespace.
    let request = pod_request;
    vm.agent().configure_network(&request).unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", vm.console()));
    let script = format!(
        "ip -o -4 addr show dev eth0; ip route; cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; \
         echo hello host | busybox nc 10.215.0.1 {port}"
    );
    let mut req = RunProcessRequest::new();
    req.args = vec!["sh".into(), "-c".into(), script];
    req.timeout_ms = 300_000;
    let out = vm.agent().run_process(&req).unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", vm.console()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!((out.exit_code, out.timed_out), (0, false), "stderr: {stderr}\nconsole:\n{}", vm.console());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("inet 10.215.0.2/24"), "{stdout}");
    assert!(stdout.contains("default via 10.215.0.1 dev eth0"), "{stdout}");
    assert!(stdout.ends_with(&format!("{mac}\n{mtu}\nhello pod\n")), "stdout: {stdout}\nstderr: {stderr}");
    let (line, peer) = server.join().expect("server thread").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(line, "hello host\n");
    assert_eq!(peer.ip().to_string(), "10.215.0.2", "the guest speaks with the pod's address");

    vm.shutdown(Duration::from_secs(60)).expect("the VM powers off");
    drop(spec);
    // The tap was not persistent: it went with the VMM's descriptor.
    let links = ip(&["-n", &ns.name, "-o", "link", "show"]).expect("links");
    assert!(!links.contains(TAP_NAME), "the tap outlived the VM:\n{links}");
}
