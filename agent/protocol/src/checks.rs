//! Checks of what the host asks of the agent, in one place for both ends.
//!
//! The shim and `kata-like run` run them before they boot a VM or send a
//! request, so a bad or hostile OCI spec fails at once, naming the field,
//! with nothing started or mounted on the host. The agent runs them again
//! on what arrives: it is where the spec is applied. What needs the guest's
//! file system (the executable exists, a bind source exists) stays in the
//! agent. The fuzz targets call these too (fuzz/).

use std::path::{Component, Path};

use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Process, Spec};

/// Largest OCI spec (or process) accepted: ttrpc's message limit is 4 MiB.
pub const MAX_SPEC_BYTES: usize = 4 << 20;
/// Largest RLIMIT_NOFILE: the guest kernel's `fs.nr_open`.
pub const MAX_NOFILE: u64 = 1 << 20;
/// Longest hostname (HOST_NAME_MAX).
const MAX_HOSTNAME: usize = 64;
/// Most supplementary groups (NGROUPS_MAX).
const MAX_GROUPS: usize = 65_536;

/// Parses and checks a container's OCI spec (`config.json` bytes).
pub fn oci_spec(json: &[u8]) -> Result<Spec, String> {
    if json.len() > MAX_SPEC_BYTES {
        return Err(format!("the OCI spec is {} bytes; at most {MAX_SPEC_BYTES} are accepted", json.len()));
    }
    let spec: Spec = serde_json::from_slice(json).map_err(|e| format!("invalid OCI spec: {e}"))?;
    spec_fields(&spec)?;
    Ok(spec)
}

/// Parses and checks an exec'd process (OCI `process` JSON).
pub fn oci_process(json: &[u8]) -> Result<Process, String> {
    if json.len() > MAX_SPEC_BYTES {
        return Err(format!("the OCI process is {} bytes; at most {MAX_SPEC_BYTES} are accepted", json.len()));
    }
    let process: Process = serde_json::from_slice(json).map_err(|e| format!("invalid OCI process: {e}"))?;
    process_fields(&process, "process")?;
    Ok(process)
}

fn no_nul(what: &str, s: &str) -> Result<(), String> {
    if s.contains('\0') {
        return Err(format!("{what} {s:?} contains a NUL byte"));
    }
    Ok(())
}

/// An absolute path that names no `..` component.
fn contained_absolute(what: &str, path: &str) -> Result<(), String> {
    no_nul(what, path)?;
    if !path.starts_with('/') {
        return Err(format!("{what} {path:?} must be an absolute path"));
    }
    if Path::new(path).components().any(|c| c == Component::ParentDir) {
        return Err(format!("{what} {path:?} must not contain '..'"));
    }
    Ok(())
}

/// Checks a process: arguments, environment, working directory, limits.
pub fn process_fields(process: &Process, at: &str) -> Result<(), String> {
    let args = process.args().clone().unwrap_or_default();
    match args.first() {
        None => return Err(format!("{at}.args must not be empty")),
        Some(first) if first.is_empty() => return Err(format!("{at}.args[0] must not be empty")),
        _ => {}
    }
    for (i, arg) in args.iter().enumerate() {
        no_nul(&format!("{at}.args[{i}]"), arg)?;
    }
    for entry in process.env().clone().unwrap_or_default() {
        if !entry.contains('=') || entry.starts_with('=') || entry.contains('\0') {
            return Err(format!("{at}.env entry {entry:?} is not KEY=VALUE"));
        }
    }
    let cwd = process.cwd().to_string_lossy();
    if !cwd.starts_with('/') {
        return Err(format!("{at}.cwd {cwd:?} must be an absolute path"));
    }
    no_nul(&format!("{at}.cwd"), &cwd)?;
    for rl in process.rlimits().clone().unwrap_or_default() {
        if rl.soft() > rl.hard() {
            return Err(format!("{at}.rlimits {:?}: soft {} exceeds hard {}", rl.typ(), rl.soft(), rl.hard()));
        }
        if rl.typ() == PosixRlimitType::RlimitNofile && rl.hard() > MAX_NOFILE {
            return Err(format!(
                "{at}.rlimits RLIMIT_NOFILE: hard {} exceeds the guest's fs.nr_open ({MAX_NOFILE})",
                rl.hard()
            ));
        }
    }
    if let Some(adj) = process.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return Err(format!("{at}.oomScoreAdj {adj} is outside -1000..=1000"));
        }
    }
    let groups = process.user().additional_gids().as_ref().map_or(0, Vec::len);
    if groups > MAX_GROUPS {
        return Err(format!("{at}.user.additionalGids has {groups} groups; at most {MAX_GROUPS}"));
    }
    Ok(())
}

/// Checks everything in a spec that can be checked without the rootfs.
pub fn spec_fields(spec: &Spec) -> Result<(), String> {
    if let Some(process) = spec.process() {
        process_fields(process, "process")?;
    }
    if let Some(root) = spec.root() {
        let path = root.path().to_string_lossy();
        no_nul("root.path", &path)?;
        if path.is_empty() || Path::new(path.as_ref()).components().any(|c| c == Component::ParentDir) {
            return Err(format!("root.path {path:?} must name the rootfs without '..'"));
        }
    }
    for (i, m) in spec.mounts().clone().unwrap_or_default().iter().enumerate() {
        let destination = m.destination().to_string_lossy();
        contained_absolute(&format!("mounts[{i}].destination"), &destination)?;
        if let Some(source) = m.source() {
            no_nul(&format!("mounts[{i}].source"), &source.to_string_lossy())?;
        }
        for option in m.options().clone().unwrap_or_default() {
            no_nul(&format!("mounts[{i}].options"), &option)?;
        }
    }
    let linux = spec.linux().as_ref();
    let namespaces = linux.and_then(|l| l.namespaces().clone()).unwrap_or_default();
    let mut seen = Vec::new();
    for ns in &namespaces {
        match ns.typ() {
            LinuxNamespaceType::User | LinuxNamespaceType::Time => {
                return Err(format!("linux.namespaces: {:?} namespaces are not supported", ns.typ()));
            }
            typ if seen.contains(&typ) => return Err(format!("linux.namespaces: {typ:?} is listed twice")),
            typ => seen.push(typ),
        }
    }
    if let Some(hostname) = spec.hostname().as_ref().filter(|h| !h.is_empty()) {
        no_nul("hostname", hostname)?;
        if hostname.len() > MAX_HOSTNAME {
            return Err(format!("hostname is {} bytes; at most {MAX_HOSTNAME}", hostname.len()));
        }
        if linux.is_some() && !seen.contains(&LinuxNamespaceType::Uts) {
            return Err("hostname is set but the spec has no uts namespace".into());
        }
    }
    let Some(linux) = linux else { return Ok(()) };
    for key in linux.sysctl().clone().unwrap_or_default().keys() {
        let ok = !key.is_empty()
            && !key.contains("..")
            && key
                .split(['.', '/'])
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        if !ok {
            return Err(format!("linux.sysctl: bad key {key:?}"));
        }
    }
    for device in linux.devices().clone().unwrap_or_default() {
        let path = device.path().to_string_lossy();
        contained_absolute("linux.devices path", &path)?;
        if !path.starts_with("/dev/") {
            return Err(format!("linux.devices: {path} is not under /dev"));
        }
    }
    for path in linux.masked_paths().clone().unwrap_or_default() {
        contained_absolute("linux.maskedPaths entry", &path)?;
    }
    for path in linux.readonly_paths().clone().unwrap_or_default() {
        contained_absolute("linux.readonlyPaths entry", &path)?;
    }
    if let Some(memory) = linux.resources().as_ref().and_then(|r| r.memory().as_ref()) {
        for (what, value) in [("limit", memory.limit()), ("reservation", memory.reservation()), ("swap", memory.swap())]
        {
            if let Some(v) = value.filter(|v| *v < -1) {
                return Err(format!("linux.resources.memory.{what} {v} is negative (-1 means unlimited)"));
            }
        }
    }
    Ok(())
}

/// Parses a payload as one request type.
pub type Decoder = fn(&[u8]) -> Result<(), protobuf::Error>;

/// The decode check of RPC `method`: parses the payload as its request
/// type. None for a method this table does not know.
pub fn request_decoder(method: &str) -> Option<Decoder> {
    use crate::agent::*;
    fn parse<T: protobuf::Message>(payload: &[u8]) -> Result<(), protobuf::Error> {
        T::parse_from_bytes(payload).map(drop)
    }
    Some(match method {
        "Health" => parse::<HealthRequest>,
        "RunProcess" => parse::<RunProcessRequest>,
        "Shutdown" => parse::<ShutdownRequest>,
        "SetupSandbox" => parse::<SetupSandboxRequest>,
        "Restored" => parse::<RestoredRequest>,
        "CreateContainer" => parse::<CreateContainerRequest>,
        "ExecProcess" => parse::<ExecProcessRequest>,
        "SignalProcess" => parse::<SignalProcessRequest>,
        "ResizeTty" => parse::<ResizeTtyRequest>,
        "UpdateContainer" => parse::<UpdateContainerRequest>,
        "StartContainer" | "PauseContainer" | "ResumeContainer" | "ListPids" | "StatsContainer" | "RemoveContainer" => {
            parse::<ContainerRequest>
        }
        "WaitProcess" | "CloseStdin" => parse::<ProcessRequest>,
        "GetOomEvent" => parse::<Empty>,
        "ConfigureNetwork" => parse::<ConfigureNetworkRequest>,
        "Echo" => parse::<EchoRequest>,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROCESS: &str = r#""process":{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/"}"#;
    const LINUX: &str = r#""linux":{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"uts"}]}"#;

    fn spec_with(extra: &str) -> String {
        format!(r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},{PROCESS}{extra}}}"#)
    }

    /// Hostile or malformed specs, each refused with the field named.
    #[test]
    fn hostile_specs_are_refused_naming_the_field() {
        oci_spec(spec_with(&format!(",{LINUX}")).as_bytes()).expect("the base spec is fine");
        let table: &[(&str, &str)] = &[
            (r#","mounts":[{"destination":"/../../etc","type":"bind","source":"/tmp"}]"#, "mounts[0].destination"),
            (r#","mounts":[{"destination":"relative","type":"tmpfs"}]"#, "must be an absolute path"),
            (&format!(r#","hostname":"x",{LINUX}"#), ""),
            (r#","linux":{"sysctl":{"kernel/../../x":"1"}}"#, "linux.sysctl"),
            (r#","linux":{"devices":[{"path":"/etc/passwd","type":"c","major":1,"minor":3}]}"#, "not under /dev"),
            (r#","linux":{"maskedPaths":["/proc/../etc"]}"#, "maskedPaths"),
            (r#","linux":{"resources":{"memory":{"limit":-5}}}"#, "memory.limit -5"),
            (r#","linux":{"namespaces":[{"type":"mount"},{"type":"user"}]}"#, "not supported"),
            (r#","linux":{"namespaces":[{"type":"mount"},{"type":"mount"}]}"#, "listed twice"),
            (r#","linux":{"namespaces":[{"type":"sideways"}]}"#, "invalid OCI spec"),
        ];
        for (extra, wanted) in table {
            let json = spec_with(extra);
            let result = oci_spec(json.as_bytes());
            if wanted.is_empty() {
                result.expect("allowed");
                continue;
            }
            let err = result.expect_err(extra);
            assert!(err.contains(wanted), "{extra}: {err}");
        }
        let root = r#"{"ociVersion":"1.0.2","root":{"path":"../../../etc"}}"#;
        assert!(oci_spec(root.as_bytes()).unwrap_err().contains("root.path"));
        let no_uts = r#"{"ociVersion":"1.0.2","hostname":"h","linux":{"namespaces":[{"type":"mount"}]}}"#;
        assert!(oci_spec(no_uts.as_bytes()).unwrap_err().contains("no uts namespace"));
        let huge = vec![b' '; MAX_SPEC_BYTES + 1];
        assert!(oci_spec(&huge).unwrap_err().contains("at most"));
    }

    #[test]
    fn hostile_processes_are_refused_naming_the_field() {
        let table: &[(&str, &str)] = &[
            (r#"{"user":{"uid":0,"gid":0},"args":[],"cwd":"/"}"#, "process.args must not be empty"),
            (r#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"relative"}"#, "process.cwd"),
            (r#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/","env":["NOEQUALS"]}"#, "not KEY=VALUE"),
            (r#"{"user":{"uid":0,"gid":0},"args":["sh\u0000x"],"cwd":"/"}"#, "NUL"),
            (
                r#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/","rlimits":[{"type":"RLIMIT_NOFILE","soft":4,"hard":2}]}"#,
                "soft 4 exceeds hard 2",
            ),
            (
                r#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/","rlimits":[{"type":"RLIMIT_NOFILE","soft":1,"hard":18446744073709551615}]}"#,
                "fs.nr_open",
            ),
            (
                r#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/","rlimits":[{"type":"RLIMIT_BOGUS","soft":1,"hard":1}]}"#,
                "invalid OCI process",
            ),
            (r#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/","oomScoreAdj":5000}"#, "oomScoreAdj"),
        ];
        for (json, wanted) in table {
            let err = oci_process(json.as_bytes()).expect_err(json);
            assert!(err.contains(wanted), "{json}: {err}");
        }
        let huge_ok = r#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/","rlimits":[{"type":"RLIMIT_CPU","soft":18446744073709551615,"hard":18446744073709551615}]}"#;
        oci_process(huge_ok.as_bytes()).expect("unlimited CPU time is fine");
    }

    #[test]
    fn every_method_has_a_decoder_and_garbage_is_refused() {
        for method in ["Health", "RunProcess", "CreateContainer", "WaitProcess", "GetOomEvent", "ConfigureNetwork"] {
            let decode = request_decoder(method).expect(method);
            decode(&[]).expect("an empty message decodes");
            assert!(decode(&[0xff; 16]).is_err(), "{method}");
        }
        assert!(request_decoder("NoSuchMethod").is_none());
    }
}
