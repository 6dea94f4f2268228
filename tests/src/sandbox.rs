//! Sandboxes as the shim starts them (virtiofsd, VMM, agent set-up), for
//! tests that need a guest but are not about booting one: the VM is
//! restored from a VM template shared by the whole suite, so it costs a
//! restore (seconds here) instead of a cold boot (tens of seconds). The
//! first test to ask builds the template (one cold boot); templates are
//! keyed by the VMM, kernel and initramfs, so a rebuilt artefact gets a
//! new one (`kata_like_runtime::sandbox::template`).

use std::path::PathBuf;

use kata_like_runtime::config::RuntimeConfig;
use kata_like_runtime::sandbox::{BootOptions, Sandbox};

use crate::Artifacts;

/// Where the suite's VM templates live: `$KATA_LIKE_TEST_TEMPLATES`, else
/// `target/test-templates` (removed with the build directory).
pub fn template_dir() -> PathBuf {
    std::env::var_os("KATA_LIKE_TEST_TEMPLATES").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::workspace_root().join("target"));
        target.join("test-templates")
    })
}

/// The runtime config of test sandboxes: the artefacts under test, the
/// suite's template directory, state under `state_root`, and the generous
/// timeouts an emulated guest kernel needs on nested hosts.
pub fn runtime_config(artifacts: &Artifacts, state_root: PathBuf) -> RuntimeConfig {
    RuntimeConfig {
        vmm: artifacts.vmm.clone(),
        kernel: artifacts.kernel.clone(),
        initrd: artifacts.initrd.clone(),
        memory_mib: 128,
        boot_timeout_secs: 1200,
        rpc_timeout_secs: 240,
        vm_templates: true,
        template_dir: Some(template_dir()),
        state_root,
        ..RuntimeConfig::default()
    }
}

/// A running sandbox, destroyed (VM, virtiofsd, state) when dropped.
#[derive(Debug)]
pub struct TestSandbox {
    /// The shim's sandbox.
    pub sandbox: Sandbox,
    /// The config it was started with.
    pub config: RuntimeConfig,
    _state_root: tempfile::TempDir,
}

impl TestSandbox {
    /// Starts sandbox `id` from the suite's VM template (built on first use).
    pub fn start(artifacts: &Artifacts, id: &str) -> Result<TestSandbox, String> {
        let state_root = tempfile::Builder::new().prefix("kl-sb-").tempdir().map_err(|e| e.to_string())?;
        let config = runtime_config(artifacts, state_root.path().to_path_buf());
        let opts = BootOptions {
            pod_sysctls: Default::default(),
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            netns: None,
            setup: Default::default(),
            cgroups_path: String::new(),
            boot_slots: None,
        };
        let sandbox = Sandbox::start(&config, id, opts, None).map_err(|e| e.to_string())?;
        Ok(TestSandbox { sandbox, config, _state_root: state_root })
    }
}

impl Drop for TestSandbox {
    fn drop(&mut self) {
        self.sandbox.destroy();
    }
}
