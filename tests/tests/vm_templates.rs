//! `vm_templates = true` through a real containerd: `ctr run` starts its
//! container in a VM restored from a template snapshot. Boots microVMs:
//! `#[ignore]`d, run by scripts/test.sh.

use std::time::Duration;

use test_infra::containerd::Containerd;

fn count(c: &Containerd, needle: &str) -> usize {
    c.log_lines_with(needle).lines().count()
}

#[test]
#[ignore = "boots a microVM through containerd"]
fn ctr_run_starts_containers_from_a_restored_vm_template() {
    const TEST: &str = "ctr_run_starts_containers_from_a_restored_vm_template";
    if test_infra::vm_test(TEST).is_none() {
        return;
    }
    if let Some(reason) = test_infra::containerd::unavailable() {
        return test_infra::skip(TEST, &reason);
    }
    // A template directory of its own: this test watches the first use
    // build the template.
    let templates = tempfile::tempdir().expect("tmp");
    let config = format!("template_dir = \"{}\"\n", templates.path().display());
    let c = Containerd::start_with_runtime_config(&config).unwrap_or_else(|e| panic!("{e}"));
    let script = "echo hello; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                  date +%Y; test -d /proc/1 && echo ok";
    let year = {
        let out = std::process::Command::new("date").arg("+%Y").output().expect("date");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    // The first run builds the template (one cold boot), then restores it.
    let (out1, err1, code1) = c.run("tpl-one", &[], &["sh", "-c", script]);
    assert_eq!(code1, 0, "stderr: {err1}\n{}", c.log_tail());
    assert_eq!(count(&c, "VM template"), 1, "one template built:\n{}", c.log_lines_with("template"));
    assert_eq!(count(&c, "restored from template"), 1, "{}", c.log_lines_with("template"));

    // The second run restores the same template: no boot at all.
    let (out2, err2, code2) = c.run("tpl-two", &[], &["sh", "-c", script]);
    assert_eq!(code2, 0, "stderr: {err2}\n{}", c.log_tail());
    assert_eq!(count(&c, "VM template"), 1, "the template is reused:\n{}", c.log_lines_with("template"));
    assert_eq!(count(&c, "restored from template"), 2, "{}", c.log_lines_with("template"));
    assert_eq!(count(&c, "booting cold"), 0, "no fallback: {}", c.log_lines_with("cold"));

    for out in [&out1, &out2] {
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0], "hello");
        assert_eq!(lines[2], year, "the guest clock was set after the restore");
        assert_eq!(lines[3], "ok");
    }
    assert_ne!(out1.lines().nth(1), out2.lines().nth(1), "two restores of one snapshot have different RNG output");

    // A damaged template (one byte of guest RAM flipped in its memory
    // file) is refused by name, discarded, and the container boots cold.
    let template = std::fs::read_dir(templates.path())
        .expect("template dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("state").exists())
        .expect("the template");
    let memory = template.join("memory");
    let mut bytes = std::fs::read(&memory).expect("memory file");
    let at = bytes.iter().position(|&b| b != 0).expect("a data page");
    bytes[at] ^= 0xff;
    std::fs::write(&memory, bytes).expect("damage");
    let (out3, err3, code3) = c.run("tpl-three", &[], &["sh", "-c", "echo cold-after-damage"]);
    assert_eq!((code3, out3.as_str()), (0, "cold-after-damage\n"), "stderr: {err3}\n{}", c.log_tail());
    // The shim's warning spans lines (it quotes the VMM's error): from
    // "restoring template" to "discarding it and booting cold".
    let log = std::fs::read_to_string(c.log_path()).unwrap_or_default();
    let refused = log
        .rfind("restoring template")
        .and_then(|from| log[from..].find("discarding it and booting cold").map(|to| &log[from..from + to]))
        .unwrap_or_default();
    assert!(refused.contains("checksum mismatch") && refused.contains("memory"), "refused by name: {refused:?}");
    assert!(!template.exists(), "the damaged template is discarded");

    let left = c.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "leftovers: {left:#?}\n{}", c.log_tail());
}

/// Issue 16: container specs far above a page reach the agent intact
/// through containerd, the shim's client, the VMM's vsock device and the
/// agent: a 64 KiB environment variable, `--privileged` (every host device
/// in the spec) and a 1 MiB spec (sixteen 64 KiB variables). The VMs are
/// restored from the suite's shared template.
#[test]
#[ignore = "boots microVMs through containerd"]
fn ctr_run_carries_large_specs_intact() {
    const TEST: &str = "ctr_run_carries_large_specs_intact";
    if test_infra::vm_test(TEST).is_none() {
        return;
    }
    if let Some(reason) = test_infra::containerd::unavailable() {
        return test_infra::skip(TEST, &reason);
    }
    let c = Containerd::start().unwrap_or_else(|e| panic!("{e}"));

    // One 64 KiB variable: its length and that every byte is an 'x'.
    let big = format!("BIG={}", "x".repeat(64 * 1024));
    let (out, err, code) = c.run(
        "spec-64k",
        &["--env", &big],
        &["sh", "-c", "echo len=${#BIG}; case $BIG in *[!x]*) echo damaged;; *) echo clean;; esac"],
    );
    assert_eq!(code, 0, "64 KiB env: stderr: {err}\n{}", c.log_tail());
    assert_eq!(out, "len=65536\nclean\n", "64 KiB env");

    // --privileged: the spec lists every host device.
    let host_devices = std::fs::read_dir("/dev").map(|d| d.count()).unwrap_or(0);
    let (out, err, code) = c.run("spec-privileged", &["--privileged"], &["sh", "-c", "echo privileged ok"]);
    assert_eq!(code, 0, "--privileged ({host_devices} host /dev entries): stderr: {err}\n{}", c.log_tail());
    assert_eq!(out, "privileged ok\n");

    // A 1 MiB spec: sixteen 64 KiB variables of different letters.
    let vars: Vec<String> =
        (0..16u8).map(|i| format!("V{i}={}", char::from(b'a' + i).to_string().repeat(64 * 1024))).collect();
    let mut extra = Vec::new();
    for var in &vars {
        extra.extend(["--env", var.as_str()]);
    }
    let pairs: Vec<String> = (0..16u8).map(|i| format!("{i}:{}", char::from(b'a' + i))).collect();
    let script = format!(
        "for p in {}; do i=${{p%:*}}; l=${{p#*:}}; eval v=\\$V$i; \
         if [ -z \"$(printf %s \"$v\" | tr -d $l)\" ]; then r=clean; else r=damaged; fi; \
         printf '%s:%s ' ${{#v}} $r; done; echo",
        pairs.join(" ")
    );
    let (out, err, code) = c.run("spec-1mib", &extra, &["sh", "-c", &script]);
    assert_eq!(code, 0, "1 MiB spec: stderr: {err}\n{}", c.log_tail());
    let expected: String = (0..16).map(|_| "65536:clean ").collect::<String>() + "\n";
    assert_eq!(out, expected, "each variable whole and of one letter");

    let left = c.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "leftovers: {left:#?}\n{}", c.log_tail());
}
