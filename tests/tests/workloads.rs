//! Real server images under runc and kata-like, with the same scripted
//! checks and the same answers: Debian's nginx (default site, IPv4 and
//! IPv6), redis, postgresql (initdb as the postgres user, queries over
//! 127.0.0.1 and ::1), python3 (threads, multiprocessing with /dev/shm,
//! getrandom, asyncio, sqlite) and an Istio-style iptables redirect, in one
//! pod per handler through containerd's CRI plugin. The image is built by
//! scripts/make-workload-image.sh (debootstrap; tests/workloads/check.sh
//! holds the checks). `#[ignore]`d (it boots a microVM); scripts/test.sh
//! runs it.

use std::time::{Duration, Instant};

use k8s_cri::v1::{Capability, ImageSpec};
use test_infra::containerd::CRI_NAMESPACE;
use test_infra::cri::{Cri, Pods, Tmpfs};

const IMAGE: &str = "docker.io/library/kata-like-workloads:bookworm";
const HANDLERS: [&str; 2] = ["runc", test_infra::cri::HANDLER];
/// In the order they run: iptables redirects to nginx's port.
const CHECKS: [&str; 5] = ["nginx", "redis", "python", "iptables", "postgres"];

/// The checks to run: `KATA_LIKE_WORKLOADS` (comma-separated names, or
/// `all`, the default). scripts/test.sh leaves postgres out in CI: its
/// initdb starts dozens of processes, each half a second or more of
/// emulated guest kernel work here, about 6 minutes in all
/// (docs/benchmarks.md).
fn selected() -> Vec<&'static str> {
    let wanted = std::env::var("KATA_LIKE_WORKLOADS").unwrap_or_default();
    if wanted.is_empty() || wanted == "all" {
        return CHECKS.to_vec();
    }
    let names: Vec<&str> = wanted.split(',').map(str::trim).collect();
    for name in &names {
        assert!(CHECKS.contains(name), "KATA_LIKE_WORKLOADS: unknown check {name:?}; known: {CHECKS:?}");
    }
    CHECKS.iter().copied().filter(|c| names.contains(c)).collect()
}

fn image_tar() -> std::path::PathBuf {
    kata_like_runtime::artifacts::cache_dir().join("images/workloads.tar")
}

#[test]
#[ignore = "boots a microVM through containerd's CRI plugin"]
fn debian_server_images_behave_as_under_runc() {
    let test = "debian_server_images_behave_as_under_runc";
    let Some(cri) = Cri::for_test(test) else { return };
    let tar = image_tar();
    if !tar.exists() {
        // scripts/build.sh builds it; a bare `cargo test` may not have.
        test_infra::skip(test, &format!("{} is missing (scripts/build.sh builds it)", tar.display()));
        return;
    }
    let tar = tar.display().to_string();
    let import = cri.containerd.ctr(&["-n", CRI_NAMESPACE, "image", "import", &tar]).expect("ctr");
    assert!(import.status.success(), "import: {}", String::from_utf8_lossy(&import.stderr));

    // PGDATA on a memory-backed emptyDir (a tmpfs kubelet mounted; a tmpfs
    // in the guest for kata-like), as CI databases often run: on the
    // rootfs, initdb's writes each cross virtio-fs (docs/benchmarks.md).
    let volumes = tempfile::tempdir().expect("tmp");
    let pgdata = Tmpfs::empty_dir(volumes.path(), "pgdata", "256m");

    let mut answers = Vec::new();
    let mut pods = Pods::new(&cri);
    for handler in HANDLERS {
        let pod = cri.pod_config(&format!("kl-workloads-{handler}"));
        let id = cri.run_pod_with(&pod, handler).unwrap_or_else(|e| panic!("{handler}: {e}{}", cri.context()));
        pods.push(id.clone());
        let mut config = Cri::container_config("servers", &["sleep", "infinity"]);
        config.image = Some(ImageSpec { image: IMAGE.into(), ..Default::default() });
        let sc =
            config.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
        // What an Istio init container adds.
        sc.capabilities =
            Some(Capability { add_capabilities: vec!["NET_ADMIN".into(), "NET_RAW".into()], ..Default::default() });
        config.mounts = vec![Cri::mount(&pgdata.0, "/pgdata", false)];
        let container =
            cri.start_container(&id, &pod, config).unwrap_or_else(|e| panic!("{handler}: {e}{}", cri.context()));
        let mut lines = Vec::new();
        for check in selected() {
            let t = Instant::now();
            let (code, out, err) = cri
                .exec_sync_within(&container, &["/usr/local/bin/check.sh", check], 1200)
                .unwrap_or_else(|e| panic!("{handler}: {check}: {e}{}", cri.context()));
            eprintln!("{handler}: {check} ({:.1?}): {}{}", t.elapsed(), out.trim(), err.trim());
            lines.push(format!("{code} {}{}", out.trim(), err.trim()));
        }
        answers.push(lines);
    }
    let (runc, ours) = (&answers[0], &answers[1]);
    // The baseline first, so a broken image or host shows as such.
    let expected: Vec<&str> = [
        ("nginx", "0 nginx: 200 200"),
        ("redis", "0 redis: OK hello"),
        ("python", "0 python: threads=[0, 1, 2, 3] pool=285 lock=ok random=32 asyncio sqlite=4950"),
        ("iptables", "0 iptables: 1 200"),
        ("postgres", "0 postgres: PostgreSQL 42"),
    ]
    .into_iter()
    .filter(|(name, _)| selected().contains(name))
    .map(|(_, line)| line)
    .collect();
    assert_eq!(runc, &expected, "runc baseline");
    assert_eq!(ours, &expected, "kata-like{}", cri.context());
    pods.remove_all().unwrap_or_else(|e| panic!("remove pod: {e}{}", cri.context()));
    let left = cri.containerd.wait_clean(Duration::from_secs(60));
    assert!(left.is_empty(), "leftovers: {left:#?}{}", cri.context());
}
