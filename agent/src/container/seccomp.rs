//! `linux.seccomp` → BPF programs, with `seccompiler` (names resolved by
//! the `syscalls` crate): pure Rust, so the agent stays a static binary
//! without libseccomp.
//!
//! A seccompiler filter has one action on match and one on mismatch; an
//! OCI profile has a default action and rules with actions of their own.
//! The kernel runs every installed filter and takes the most restrictive
//! result (KILL > TRAP > ERRNO > TRACE > LOG > ALLOW), so a profile becomes
//! one filter "any rule matches → ALLOW, else the default action" plus one
//! filter per other action "its rules match → that action, else ALLOW".
//! A syscall matching a rule gets the rule's action; any other gets the
//! default. As libseccomp (and so runc) does, syscall names this
//! architecture does not know are skipped, and rules whose action is the
//! default action add nothing.

use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

fn action(a: LinuxSeccompAction, errno: Option<u32>, what: &str) -> Result<SeccompAction, String> {
    let errno = errno.unwrap_or(libc::EPERM as u32);
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => SeccompAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(format!(
                "linux.seccomp: {what}: SCMP_ACT_NOTIFY is not supported (no seccomp agent can reach into the VM)"
            ))
        }
    })
}

fn rule(syscall: &LinuxSyscall, name: &str) -> Result<Vec<SeccompRule>, String> {
    let Some(args) = syscall.args().as_ref().filter(|a| !a.is_empty()) else { return Ok(Vec::new()) };
    let mut conditions = Vec::with_capacity(args.len());
    for arg in args {
        let index = u8::try_from(arg.index())
            .ok()
            .filter(|i| *i < 6)
            .ok_or_else(|| format!("linux.seccomp: {name}: argument index {} is not 0-5", arg.index()))?;
        let (op, value) = match arg.op() {
            LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
            LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
            LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
            LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
            LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
            LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
            // (arg & value) == valueTwo
            LinuxSeccompOperator::ScmpCmpMaskedEq => {
                (SeccompCmpOp::MaskedEq(arg.value()), arg.value_two().unwrap_or_default())
            }
        };
        conditions.push(
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                .map_err(|e| format!("linux.seccomp: {name}: {e}"))?,
        );
    }
    Ok(vec![SeccompRule::new(conditions).map_err(|e| format!("linux.seccomp: {name}: {e}"))?])
}

/// Adds `rules` for syscall `nr` to `map` (no rules: unconditional, which
/// absorbs any conditional rules).
fn add(map: &mut BTreeMap<i64, Vec<SeccompRule>>, nr: i64, rules: Vec<SeccompRule>) {
    match map.get_mut(&nr) {
        Some(existing) if existing.is_empty() => {}
        Some(_) if rules.is_empty() => {
            map.insert(nr, Vec::new());
        }
        Some(existing) => existing.extend(rules),
        None => {
            map.insert(nr, rules);
        }
    }
}

fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(rules, mismatch, matched, ARCH).map_err(|e| format!("linux.seccomp: {e}"))?;
    BpfProgram::try_from(filter).map_err(|e| format!("linux.seccomp: {e}"))
}

/// Compiles a profile into the programs to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, String> {
    let default = action(profile.default_action(), profile.default_errno_ret(), "defaultAction")?;
    let mut any_rule = BTreeMap::new();
    let mut by_action: Vec<(SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)> = Vec::new();
    for syscall in profile.syscalls().clone().unwrap_or_default() {
        let what = syscall.names().first().cloned().unwrap_or_default();
        let act = action(syscall.action(), syscall.errno_ret(), &what)?;
        if act == default {
            continue;
        }
        for name in syscall.names() {
            let Ok(sysno) = syscalls::Sysno::from_str(name) else {
                tracing::debug!(name, "seccomp: unknown syscall skipped");
                continue;
            };
            let nr = i64::from(sysno.id());
            let rules = rule(&syscall, name)?;
            add(&mut any_rule, nr, rules.clone());
            if act != SeccompAction::Allow {
                match by_action.iter_mut().find(|(a, _)| *a == act) {
                    Some((_, map)) => add(map, nr, rules),
                    None => {
                        let mut map = BTreeMap::new();
                        add(&mut map, nr, rules);
                        by_action.push((act.clone(), map));
                    }
                }
            }
        }
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(program(any_rule, default, SeccompAction::Allow)?);
    }
    for (act, rules) in by_action {
        programs.push(program(rules, SeccompAction::Allow, act)?);
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn a_profile_becomes_one_filter_per_action() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read","write","no_such_syscall"],"action":"SCMP_ACT_ALLOW"},
                {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        let programs = compile(&p).expect("compiles");
        // default ERRNO(EPERM) + ERRNO(ENOSYS); mkdir's ERRNO is the default's.
        assert_eq!(programs.len(), 2);
        let allow_all = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
        );
        assert_eq!(compile(&allow_all).expect("compiles").len(), 1);
    }

    #[test]
    fn what_cannot_be_expressed_is_named() {
        let notify = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mount"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        let err = compile(&notify).unwrap_err();
        assert!(err.contains("mount") && err.contains("SCMP_ACT_NOTIFY"), "{err}");
        let bad_arg = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["kill"],"action":"SCMP_ACT_ERRNO","args":[{"index":7,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        let err = compile(&bad_arg).unwrap_err();
        assert!(err.contains("kill") && err.contains("index 7"), "{err}");
    }
}
