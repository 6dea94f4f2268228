//! Environment the VMM asks the agent to give everything it runs.
//!
//! On nested PVM hosts without CPUID faulting (AMD), guest user space reads
//! the host's CPUID and runs under the host's XCR0, so glibc uses AVX-512
//! state the guest kernel (which cannot run XSAVE there) does not save
//! across task switches. The VMM then puts `GLIBC_TUNABLES` on the kernel
//! command line (kata-like-vmm, `hide_unapplied_cpuid`); the kernel hands it
//! to init, the agent inherits it and passes it on here to containers and
//! `RunProcess` commands, unless their own environment sets it.

/// The inherited variables, read once.
fn inherited() -> &'static [String] {
    static VARS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    VARS.get_or_init(|| {
        std::env::var("GLIBC_TUNABLES").map(|v| vec![format!("GLIBC_TUNABLES={v}")]).unwrap_or_default()
    })
}

/// Adds the inherited variables `env` does not set itself.
pub fn add_inherited(env: &mut Vec<String>) {
    add_from(inherited(), env);
}

fn add_from(vars: &[String], env: &mut Vec<String>) {
    for var in vars {
        let key = var.split('=').next().unwrap_or_default();
        if !env.iter().any(|e| e.split('=').next() == Some(key)) {
            env.push(var.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_keeps_its_own_setting() {
        let vars = vec!["GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX".to_string()];
        let mut env = vec!["PATH=/bin".to_string()];
        add_from(&vars, &mut env);
        assert_eq!(env, ["PATH=/bin", "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX"]);
        let mut own = vec!["GLIBC_TUNABLES=mine".to_string()];
        add_from(&vars, &mut own);
        assert_eq!(own, ["GLIBC_TUNABLES=mine"]);
    }
}
