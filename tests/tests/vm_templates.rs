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
    let c = Containerd::start_with_runtime_config("vm_templates = true\n").unwrap_or_else(|e| panic!("{e}"));
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

    let left = c.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "leftovers: {left:#?}\n{}", c.log_tail());
}
