//! Contracts between crates that do not depend on each other (the VMM does
//! not link the agent protocol). Fast; no VM.

#[test]
fn boot_timer_abi_matches_between_vmm_and_agent() {
    assert_eq!(kata_like_vmm::devices::boot_timer::MAGIC, kata_like_protocol::BOOT_TIMER_MAGIC);
    assert_eq!(kata_like_vmm::devices::boot_timer::CMDLINE_KEY, kata_like_protocol::BOOT_TIMER_CMDLINE_KEY);
}

#[test]
fn default_cmdline_names_only_parameters_our_kernel_knows_or_init_ignores() {
    let cmdline = kata_like_vmm::config::DEFAULT_CMDLINE;
    // The patched-in options of guest-kernel/patches must be on by default.
    for option in ["slub_nosysfs", "module_nosysfs", "reboot=k", "panic=-1", "quiet"] {
        assert!(cmdline.split_whitespace().any(|p| p == option), "{option} in {cmdline}");
    }
    let patches = std::fs::read_dir(test_infra::workspace_root().join("guest-kernel/patches")).expect("patches dir");
    let text: String = patches.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect();
    for option in ["slub_nosysfs", "module_nosysfs"] {
        assert!(text.contains(&format!("__setup(\"{option}\"")), "{option} is defined by a guest-kernel patch");
    }
}
