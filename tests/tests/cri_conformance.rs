//! Kubernetes behaviours as kubelet drives them through containerd's CRI
//! plugin, each run under runc and under kata-like side by side, so a
//! difference is a kata-like bug (or a documented VM limit, asserted as a
//! clear refusal). `#[ignore]`d (they boot microVMs); scripts/test.sh runs
//! them.

use std::time::{Duration, Instant};

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use test_infra::cri::{Cri, Pods, Tmpfs};

/// The handlers every behaviour runs under: the baseline first.
const HANDLERS: [&str; 2] = ["runc", test_infra::cri::HANDLER];

fn setup(test: &str) -> Option<Cri> {
    Cri::for_test(test)
}

fn ctx(cri: &Cri) -> String {
    cri.context()
}

/// A pod of `handler` named `<name>-<handler>`: its id and config.
fn pod(cri: &Cri, name: &str, handler: &str, edit: impl FnOnce(&mut PodSandboxConfig)) -> (String, PodSandboxConfig) {
    let mut config = cri.pod_config(&format!("{name}-{handler}"));
    edit(&mut config);
    let id = cri.run_pod_with(&config, handler).unwrap_or_else(|e| panic!("RunPodSandbox {handler}: {e}{}", ctx(cri)));
    (id, config)
}

fn start(cri: &Cri, pod: &(String, PodSandboxConfig), config: ContainerConfig) -> String {
    let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    cri.start_container(&pod.0, &pod.1, config).unwrap_or_else(|e| panic!("start {name}: {e}{}", ctx(cri)))
}

fn finish(cri: &Cri, mut pods: Pods) {
    pods.remove_all().unwrap_or_else(|e| panic!("remove pod: {e}{}", ctx(cri)));
    let left = cri.containerd.wait_clean(Duration::from_secs(60));
    assert!(left.is_empty(), "leftovers: {left:#?}{}", ctx(cri));
}

/// StopContainer right after StartContainer: the SIGTERM reaches the
/// process (exit 143 from its trap, not SIGKILL's 137 after the grace
/// period), and StopContainer of a container that already stopped returns.
#[test]
#[ignore = "boots a microVM through containerd's CRI plugin"]
fn sigterm_right_after_start_is_delivered_and_stopping_a_stopped_container_succeeds() {
    let Some(cri) = setup("sigterm_right_after_start_is_delivered_and_stopping_a_stopped_container_succeeds") else {
        return;
    };
    let mut pods = Pods::new(&cri);
    for handler in HANDLERS {
        let p = pod(&cri, "kl-term", handler, |_| {});
        pods.push(p.0.clone());
        let term = Cri::container_config("term", &["sh", "-c", "trap 'exit 143' TERM; sleep 600 & wait"]);
        let id = start(&cri, &p, term);
        let t = Instant::now();
        cri.stop_container(&id, 60).unwrap_or_else(|e| panic!("{handler}: stop: {e}{}", ctx(&cri)));
        let stop_took = t.elapsed();
        let status = cri.container_status(&id).unwrap_or_else(|e| panic!("{handler}: status: {e}"));
        assert_eq!(status.exit_code, 143, "{handler}: the SIGTERM sent right after start reached the trap: {status:?}");
        let t = Instant::now();
        cri.stop_container(&id, 60).unwrap_or_else(|e| panic!("{handler}: stop of a stopped container: {e}"));
        eprintln!("{handler}: stop right after start {stop_took:?}, stop of a stopped container {:?}", t.elapsed());

        let quick = start(&cri, &p, Cri::container_config("quick", &["true"]));
        let status = cri.wait_exited(&quick, Duration::from_secs(300)).unwrap_or_else(|e| panic!("{handler}: {e}"));
        assert_eq!(status.exit_code, 0, "{handler}: {status:?}");
        let t = Instant::now();
        cri.stop_container(&quick, 60).unwrap_or_else(|e| panic!("{handler}: stop of an exited container: {e}"));
        eprintln!("{handler}: stop of an exited container {:?}", t.elapsed());
    }
    finish(&cri, pods);
}

/// A static probe, built with the host's C compiler: `probe euid` prints
/// its effective uid (a setuid-root copy shows whether setuid works),
/// `probe setcap FILE` gives FILE cap_net_bind_service=ep (a
/// `security.capability` xattr), `probe as UID PROG ARGS…` runs PROG as UID.
fn probe(dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    const SOURCE: &str = r#"
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "euid")) { printf("euid=%d\n", (int)geteuid()); return 0; }
    if (argc == 3 && !strcmp(argv[1], "setcap")) {
        /* struct vfs_cap_data, revision 2, effective: cap 10 permitted */
        unsigned int data[5] = { 0x02000001, 1u << 10, 0, 0, 0 };
        if (setxattr(argv[2], "security.capability", data, sizeof data, 0)) { printf("setcap=%s\n", strerror(errno)); return 1; }
        printf("setcap=ok\n"); return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "as")) {
        int uid = atoi(argv[2]);
        if (setgroups(0, NULL) || setgid(uid) || setuid(uid)) { perror("drop"); return 1; }
        execv(argv[3], argv + 3); perror("exec"); return 1;
    }
    fprintf(stderr, "usage\n"); return 2;
}
"#;
    let src = dir.join("probe.c");
    std::fs::write(&src, SOURCE).map_err(|e| e.to_string())?;
    let bin = dir.join("probe");
    let out = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(|e| format!("cc: {e}"))?;
    if !out.status.success() {
        return Err(format!("cc -static: {}", String::from_utf8_lossy(&out.stderr)));
    }
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o4755)).map_err(|e| e.to_string())?;
    Ok(bin)
}

fn as_user(config: &mut ContainerConfig, uid: i64) {
    let sc = config.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
    sc.run_as_user = Some(k8s_cri::v1::Int64Value { value: uid });
}

fn share_pids(ns: &mut Option<k8s_cri::v1::NamespaceOption>) {
    if let Some(ns) = ns.as_mut() {
        ns.pid = k8s_cri::v1::NamespaceMode::Pod as i32;
    }
}

/// One pod per handler with what kubelet asks of a pod's kernel view and
/// mounts: pod sysctls, a shared PID namespace, setuid binaries, a
/// read-only volume with a writable submount, a bidirectional mount, the
/// default devices for a non-root user. The same checks, the same answers.
#[test]
#[ignore = "boots a microVM through containerd's CRI plugin"]
fn pod_sysctls_shared_pids_setuid_mounts_and_devices_behave_as_under_runc() {
    let Some(cri) = setup("pod_sysctls_shared_pids_setuid_mounts_and_devices_behave_as_under_runc") else { return };
    let host = tempfile::tempdir().expect("tmp");
    let probe = probe(host.path());
    // A read-only volume whose source has a writable tmpfs below it.
    let ro_vol = host.path().join("ro-vol");
    let _ro_sub = Tmpfs::new(ro_vol.join("scratch"), "8m", false);
    // A bidirectional mount needs a shared host mount.
    let bidir = Tmpfs::new(host.path().join("bidir"), "8m", true);
    let local_profile = host.path().join("no-mkdir.json");
    std::fs::write(
        &local_profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    )
    .expect("write the profile");
    let mut pods = Pods::new(&cri);
    let mut answers = Vec::new();
    for handler in HANDLERS {
        let _ = std::fs::remove_file(bidir.0.join("f"));
        let p = pod(&cri, "kl-kernel", handler, |c| {
            let linux = c.linux.get_or_insert_with(Default::default);
            linux.sysctls.insert("kernel.shm_rmid_forced".into(), "1".into());
            linux.sysctls.insert("fs.mqueue.msg_max".into(), "64".into());
            share_pids(&mut linux.security_context.get_or_insert_with(Default::default).namespace_options);
        });
        pods.push(p.0.clone());
        let mut first = Cri::container_config("first", &["sleep", "601"]);
        share_pids(
            &mut first
                .linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
                .namespace_options,
        );
        let _first = start(&cri, &p, first);

        let mut user = Cri::container_config("user", &["sleep", "600"]);
        as_user(&mut user, 1000);
        share_pids(
            &mut user
                .linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
                .namespace_options,
        );
        user.mounts = vec![Cri::mount(&ro_vol, "/ro", true), {
            let mut m = Cri::mount(&bidir.0, "/bidir", false);
            m.propagation = k8s_cri::v1::MountPropagation::PropagationBidirectional as i32;
            m
        }];
        if let Ok(bin) = &probe {
            user.mounts.push(Cri::mount(bin.parent().expect("dir"), "/probe", false));
        }
        let user = start(&cri, &p, user);
        let run = |script: &str| -> String {
            let (code, out, err) =
                cri.exec_sync(&user, &["sh", "-c", script]).unwrap_or_else(|e| panic!("{handler}: {script}: {e}"));
            format!("{code}:{}{}", out.trim(), err.trim())
        };
        let mut got = vec![
            ("sysctl kernel.shm_rmid_forced", run("cat /proc/sys/kernel/shm_rmid_forced")),
            ("sysctl fs.mqueue.msg_max", run("cat /proc/sys/fs/mqueue/msg_max")),
            (
                "another container's process",
                run("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done 2>/dev/null | grep -cx 'sleep 601 '"),
            ),
            ("pid 1 is the pod's, not a container's", run("tr '\\0' ' ' < /proc/1/cmdline | grep -c 'sleep 60[01]'; true")),
            ("write /dev/null as uid 1000", run("echo x > /dev/null && echo ok")),
            (
                "devices are 0666",
                run("stat -c '%a %n' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty | tr '\\n' ' '"),
            ),
            ("ro volume refuses a write", run("touch /ro/file 2>/dev/null && echo wrote || echo refused")),
            ("its tmpfs submount takes one", run("touch /ro/scratch/file && echo wrote")),
            ("bidirectional mount is writable", run("echo from-$KL_TEST > /bidir/f && cat /bidir/f")),
        ];
        match &probe {
            Ok(_) => got.push(("setuid-root binary", run("/probe/probe euid"))),
            Err(why) => eprintln!("setuid check skipped: no static C program ({why})"),
        }
        // File capabilities on the rootfs (virtio-fs xattrs): set as root,
        // effective for an unprivileged user.
        if let Ok(bin) = &probe {
            let caps = start(&cri, &p, {
                let mut c = Cri::container_config("filecaps", &["sleep", "600"]);
                c.mounts.push(Cri::mount(bin.parent().expect("dir"), "/probe", false));
                c
            });
            let (code, out, err) = cri
                .exec_sync(
                    &caps,
                    &[
                        "sh",
                        "-c",
                        "mkdir -p /tmp/fc && cp /bin/busybox /tmp/fc/busybox && /probe/probe setcap /tmp/fc/busybox && \
                         /probe/probe as 1000 /tmp/fc/busybox grep CapEff /proc/self/status",
                    ],
                )
                .unwrap_or_else(|e| panic!("{handler}: filecaps: {e}"));
            got.push(("file capability on the rootfs", format!("{code}:{}{}", out.trim(), err.trim())));
        }
        // Seccomp: the runtime's default profile, and a Localhost one that
        // makes mkdir fail with EACCES, for the init and for execs.
        for (name, profile) in [("seccomp-default", None), ("seccomp-local", Some(&local_profile))] {
            let mut c = Cri::container_config(name, &["sleep", "600"]);
            let sc = c.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
            sc.seccomp = Some(k8s_cri::v1::SecurityProfile {
                profile_type: match profile {
                    None => k8s_cri::v1::security_profile::ProfileType::RuntimeDefault as i32,
                    Some(_) => k8s_cri::v1::security_profile::ProfileType::Localhost as i32,
                },
                localhost_ref: profile.map(|p| p.display().to_string()).unwrap_or_default(),
            });
            let id = start(&cri, &p, c);
            let run = |script: &str| -> String {
                let (code, out, err) =
                    cri.exec_sync(&id, &["sh", "-c", script]).unwrap_or_else(|e| panic!("{handler}: {script}: {e}"));
                format!("{code}:{}{}", out.trim(), err.trim())
            };
            got.push((
                "seccomp mode of the init and of an exec",
                run("grep Seccomp: /proc/1/status /proc/self/status | tr -s '\\t ' ' '"),
            ));
            got.push(("mkdir under the profile", run("mkdir /tmp/made 2>&1; echo $?")));
        }
        let on_host = std::fs::read_to_string(bidir.0.join("f")).unwrap_or_default();
        got.push(("bidirectional mount seen on the host", on_host.trim().to_string()));
        eprintln!("{handler}: {got:#?}");
        answers.push((handler, got));
    }
    let (runc, ours) = (&answers[0].1, &answers[1].1);
    // The baseline is what we expect, so a broken host shows as such.
    assert_eq!(runc[0].1, "0:1", "runc baseline: {runc:#?}");
    if let Some((_, caps)) = runc.iter().find(|(what, _)| what.starts_with("file capability")) {
        assert!(caps.contains("0000000000000400"), "runc baseline: cap_net_bind_service effective: {caps:?}");
    }
    for ((what, theirs), (_, mine)) in runc.iter().zip(ours) {
        assert_eq!(mine, theirs, "{what}: kata-like answers {mine:?}, runc {theirs:?}{}", ctx(&cri));
    }
    finish(&cri, pods);
}

/// ExecSync with a deadline: the call ends with DeadlineExceeded and the
/// timed-out process is gone from the container.
#[test]
#[ignore = "boots a microVM through containerd's CRI plugin"]
fn exec_sync_deadline_ends_the_call_and_the_process() {
    let Some(cri) = setup("exec_sync_deadline_ends_the_call_and_the_process") else { return };
    let mut pods = Pods::new(&cri);
    for handler in HANDLERS {
        let p = pod(&cri, "kl-deadline", handler, |_| {});
        pods.push(p.0.clone());
        let id = start(&cri, &p, Cri::container_config("app", &["sleep", "600"]));
        // Warm: the first exec in a fresh VM pays for paging in.
        cri.exec_sync(&id, &["true"]).unwrap_or_else(|e| panic!("{handler}: {e}"));
        let req = k8s_cri::v1::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sleep".into(), "77".into()],
            timeout: 1,
        };
        let t = Instant::now();
        let result = cri.call(|mut c| async move { c.exec_sync(req).await });
        let took = t.elapsed();
        let err = result.expect_err("the deadline passes");
        assert!(
            err.code() == tonic::Code::DeadlineExceeded || err.message().contains("deadline exceeded"),
            "{handler}: {err:?}"
        );
        let (_, left, _) = cri
            .exec_sync(&id, &["sh", "-c", "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done"])
            .unwrap_or_else(|e| panic!("{handler}: {e}"));
        assert!(!left.lines().any(|l| l.trim() == "sleep 77"), "{handler}: the timed-out process is left: {left}");
        eprintln!("{handler}: ExecSync with a 1 s deadline returned after {took:?}: {}", err.message());
    }
    // Where kata-like's time went: the shim's phase lines for the timed-out
    // exec (containerd starts its timer once the exec's Start returns).
    let log = std::fs::read_to_string(cri.containerd.log_path()).unwrap_or_default();
    let phase = |l: &&str| l.contains("msg=\"phase ");
    let killed = log.lines().filter(phase).find(|l| l.contains("phase kill-request") && l.ends_with(" 9\""));
    let exec = killed.and_then(|l| l.trim_end_matches(" 9\"").rsplit(' ').next()).unwrap_or("?");
    let phases: Vec<&str> = log.lines().filter(phase).filter(|l| l.contains(exec)).collect();
    eprintln!("kata-like, the timed-out exec's phases: {phases:#?}");
    finish(&cri, pods);
}

/// Waits (at most five minutes: a slow VM, not a timed assertion) until
/// the container has written `file` in the shared volume; its contents.
fn wait_for_file(file: &std::path::Path, handler: &str) -> String {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(300) {
        if let Ok(s) = std::fs::read_to_string(file) {
            if s.ends_with('\n') {
                return s.trim().to_string();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{handler}: {} never appeared", file.display());
}

/// Host changes to a volume reach the container as under runc: a file
/// rewritten in place is read anew on its next open (the guest must not
/// serve its cached pages: guest-kernel patch 0008 keeps them only when
/// the file's size and mtime are unchanged), and a kubelet-style atomic
/// update of a configMap volume (`..data` symlink swapped by rename) is
/// seen once virtiofsd's entry timeout (1 s) has passed.
#[test]
#[ignore = "boots a microVM through containerd's CRI plugin"]
fn host_changes_to_a_volume_are_seen_in_the_container() {
    let Some(cri) = setup("host_changes_to_a_volume_are_seen_in_the_container") else { return };
    let mut pods = Pods::new(&cri);
    for handler in HANDLERS {
        let vol = tempfile::tempdir().expect("tmp");
        let v = vol.path();
        std::fs::write(v.join("conf"), "one\n").expect("write conf");
        let cm = v.join("cm");
        std::fs::create_dir_all(cm.join("..v1")).expect("mkdir");
        std::fs::write(cm.join("..v1/key"), "old\n").expect("write key");
        std::os::unix::fs::symlink("..v1", cm.join("..data")).expect("symlink");
        std::os::unix::fs::symlink("..data/key", cm.join("key")).expect("symlink");

        let p = pod(&cri, "kl-hostchange", handler, |_| {});
        pods.push(p.0.clone());
        // The second loop re-opens conf with the shell's `read` (no fork),
        // so its opens come faster than any attribute timeout: it ends
        // only if an open sees the host's new contents. (It waits for
        // "two", not for "not one": a read racing the host's write can see
        // a torn line, under runc too: "owo" was seen once.)
        let script = "read a < /v/conf; echo \"$a\" > /v/before; \
                      while read b < /v/conf && [ \"$b\" != two ]; do :; done; echo \"$b\" > /v/after; \
                      while [ ! -e /v/go ]; do sleep 0.1; done; cat /v/cm/key > /v/cm-after; sleep 600";
        let mut c = Cri::container_config("reader", &["sh", "-c", script]);
        c.mounts = vec![Cri::mount(v, "/v", false)];
        let _id = start(&cri, &p, c);

        assert_eq!(wait_for_file(&v.join("before"), handler), "one", "{handler}");
        // In place, same size: only the mtime tells the guest.
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new().write(true).open(v.join("conf")).expect("open conf"),
            b"two\n",
        )
        .expect("rewrite conf");
        assert_eq!(wait_for_file(&v.join("after"), handler), "two", "{handler}: the in-place change");

        // kubelet's atomic writer: new directory, `..data` replaced by rename.
        std::fs::create_dir_all(cm.join("..v2")).expect("mkdir");
        std::fs::write(cm.join("..v2/key"), "new\n").expect("write key");
        std::os::unix::fs::symlink("..v2", cm.join("..data_tmp")).expect("symlink");
        std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).expect("rename");
        std::fs::remove_dir_all(cm.join("..v1")).expect("rm old");
        // virtiofsd's entry timeout under cache=auto (docs/kubernetes.md).
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(v.join("go"), "").expect("go");
        assert_eq!(wait_for_file(&v.join("cm-after"), handler), "new", "{handler}: the configMap-style update");
    }
    finish(&cri, pods);
}
