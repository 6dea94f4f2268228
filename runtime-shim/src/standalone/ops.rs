//! The runc commands around a running container: `pause`, `resume`, `ps`,
//! `update`, `list`, `events` and `features`.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::{link, state, status_name, CoreError, Options, State, TaskStatus};

/// `pause`: freezes the container's processes (in the guest).
pub fn pause(opts: &Options, id: &str) -> Result<(), CoreError> {
    let root = opts.root();
    let record = root.load(id)?;
    if record.status != TaskStatus::Running {
        return Err(CoreError::WrongState(format!("container {id} is not running")));
    }
    link(opts, &record)?.client().pause_container(id).map_err(CoreError::Agent)?;
    let marker = root.dir(id).join(state::PAUSED);
    std::fs::write(&marker, b"").map_err(|e| CoreError::Failed(format!("{}: {e}", marker.display())))
}

/// `resume`: thaws a paused container.
pub fn resume(opts: &Options, id: &str) -> Result<(), CoreError> {
    let root = opts.root();
    let record = root.load(id)?;
    if record.status != TaskStatus::Paused {
        return Err(CoreError::WrongState(format!("container {id} is not paused")));
    }
    link(opts, &record)?.client().resume_container(id).map_err(CoreError::Agent)?;
    let _ = std::fs::remove_file(root.dir(id).join(state::PAUSED));
    Ok(())
}

/// The container's host processes: its monitor and its execs' host
/// processes (the guest's processes have no host PIDs).
fn host_pids(opts: &Options, record: &State) -> Vec<u32> {
    let mut pids = Vec::new();
    if record.pid != 0 {
        pids.push(record.pid);
    }
    let execs = opts.root().dir(&record.id).join("execs");
    for entry in std::fs::read_dir(execs).into_iter().flatten().flatten() {
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
            if state::monitor_alive(pid, 0) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// `ps`: the container's host processes, as JSON (`--format json`: their
/// PIDs) or as `ps` shows them (`ps_args`, default `-ef`).
pub fn ps(opts: &Options, id: &str, json: bool, ps_args: &[String]) -> Result<String, CoreError> {
    let record = opts.root().load(id)?;
    if record.status == TaskStatus::Stopped {
        return Err(CoreError::WrongState(format!("container {id} is not running")));
    }
    let pids = host_pids(opts, &record);
    if json {
        return serde_json::to_string(&pids).map_err(CoreError::failed);
    }
    let args: Vec<String> = if ps_args.is_empty() { vec!["-ef".into()] } else { ps_args.to_vec() };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .map_err(|e| CoreError::Failed(format!("running ps: {e}")))?;
    if !out.status.success() {
        return Err(CoreError::Failed(format!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let pid_col = header
        .split_whitespace()
        .position(|c| c == "PID")
        .ok_or_else(|| CoreError::Invalid(format!("ps {}: no PID column", args.join(" "))))?;
    let mut shown = vec![header.to_string()];
    shown.extend(
        lines
            .filter(|l| {
                l.split_whitespace().nth(pid_col).and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| pids.contains(&p))
            })
            .map(String::from),
    );
    Ok(shown.join("\n"))
}

/// `update`'s flags (runc's), applied over `--resources`' JSON.
#[derive(Clone, Debug, Default)]
pub struct UpdateArgs {
    /// OCI LinuxResources JSON: a file, or "-" for stdin.
    pub resources: Option<PathBuf>,
    /// Memory limit (bytes, or with k/m/g).
    pub memory: Option<String>,
    /// Memory reservation.
    pub memory_reservation: Option<String>,
    /// Memory + swap limit.
    pub memory_swap: Option<String>,
    /// CPU shares.
    pub cpu_shares: Option<u64>,
    /// CFS quota (µs).
    pub cpu_quota: Option<i64>,
    /// CFS period (µs).
    pub cpu_period: Option<u64>,
    /// CPUs.
    pub cpuset_cpus: Option<String>,
    /// Memory nodes.
    pub cpuset_mems: Option<String>,
    /// Task limit.
    pub pids_limit: Option<i64>,
    /// Block I/O weight.
    pub blkio_weight: Option<u16>,
}

/// A size as runc takes it: bytes, or a number with b/k/m/g (either case,
/// optional trailing "b"); -1 for unlimited.
pub fn parse_size(s: &str) -> Result<i64, CoreError> {
    let bad = || CoreError::Invalid(format!("invalid size {s:?}: use bytes or a number with k, m or g"));
    if s == "-1" {
        return Ok(-1);
    }
    let lower = s.trim().to_ascii_lowercase();
    let trimmed = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, mult) = match trimmed.chars().last() {
        Some('k') => (&trimmed[..trimmed.len() - 1], 1i64 << 10),
        Some('m') => (&trimmed[..trimmed.len() - 1], 1 << 20),
        Some('g') => (&trimmed[..trimmed.len() - 1], 1 << 30),
        _ => (trimmed, 1),
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    let bytes = n * mult as f64;
    if bytes > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as i64)
}

/// The LinuxResources JSON `update` sends.
fn resources(args: &UpdateArgs) -> Result<Value, CoreError> {
    let mut r: Value = match &args.resources {
        Some(path) => {
            let mut raw = Vec::new();
            if path.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_end(&mut raw)
                    .map_err(|e| CoreError::Invalid(format!("--resources -: {e}")))?;
            } else {
                raw = std::fs::read(path)
                    .map_err(|e| CoreError::Invalid(format!("--resources {}: {e}", path.display())))?;
            }
            serde_json::from_slice(&raw).map_err(|e| CoreError::Invalid(format!("--resources: {e}")))?
        }
        None => json!({}),
    };
    if !r.is_object() {
        return Err(CoreError::Invalid("--resources: not a JSON object".into()));
    }
    if let Some(m) = &args.memory {
        r["memory"]["limit"] = json!(parse_size(m)?);
    }
    if let Some(m) = &args.memory_reservation {
        r["memory"]["reservation"] = json!(parse_size(m)?);
    }
    if let Some(m) = &args.memory_swap {
        r["memory"]["swap"] = json!(parse_size(m)?);
    }
    if let Some(v) = args.cpu_shares {
        r["cpu"]["shares"] = json!(v);
    }
    if let Some(v) = args.cpu_quota {
        r["cpu"]["quota"] = json!(v);
    }
    if let Some(v) = args.cpu_period {
        r["cpu"]["period"] = json!(v);
    }
    if let Some(v) = &args.cpuset_cpus {
        r["cpu"]["cpus"] = json!(v);
    }
    if let Some(v) = &args.cpuset_mems {
        r["cpu"]["mems"] = json!(v);
    }
    if let Some(v) = args.pids_limit {
        r["pids"]["limit"] = json!(v);
    }
    if let Some(v) = args.blkio_weight {
        r["blockIO"]["weight"] = json!(v);
    }
    unset_zeros(&mut r);
    // The same checks as a spec's resources get.
    serde_json::from_value::<oci_spec::runtime::LinuxResources>(r.clone())
        .map_err(|e| CoreError::Invalid(format!("resources: {e}")))?;
    Ok(r)
}

/// runc's update reads 0 (and "") as "not given": Docker sends every
/// field, unset ones as 0 (a CPU quota of 0 would be refused by the
/// kernel). Such fields are dropped, so the guest changes only the others.
fn unset_zeros(r: &mut Value) {
    for group in ["cpu", "memory", "pids", "blockIO"] {
        if let Some(fields) = r.get_mut(group).and_then(Value::as_object_mut) {
            fields.retain(|_, v| !(v.as_i64() == Some(0) || v.as_u64() == Some(0) || v.as_str() == Some("")));
            if fields.is_empty() {
                r.as_object_mut().map(|o| o.remove(group));
            }
        }
    }
}

/// `update`: changes the container's resource limits (enforced in the
/// guest, where its processes are).
pub fn update(opts: &Options, id: &str, args: &UpdateArgs) -> Result<(), CoreError> {
    let resources = resources(args)?;
    let record = opts.root().load(id)?;
    if !matches!(record.status, TaskStatus::Created | TaskStatus::Running | TaskStatus::Paused) {
        return Err(CoreError::WrongState(format!("container {id} is not running")));
    }
    let mut req = kata_like_protocol::agent::UpdateContainerRequest::new();
    req.container_id = id.to_string();
    req.resources_json = serde_json::to_vec(&resources).map_err(CoreError::failed)?;
    link(opts, &record)?.client().update_container(&req).map_err(CoreError::Agent)
}

/// `list`'s output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListFormat {
    /// runc's table.
    Table,
    /// A JSON array of states.
    Json,
    /// IDs only (`-q`).
    Quiet,
}

/// `list`: the containers under the root.
pub fn list(opts: &Options, format: ListFormat) -> Result<String, CoreError> {
    let root = opts.root();
    let mut states = Vec::new();
    for entry in std::fs::read_dir(&opts.root).into_iter().flatten().flatten() {
        if let Some(id) = entry.file_name().to_str() {
            if let Ok(state) = root.load(id) {
                states.push(state);
            }
        }
    }
    states.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    Ok(match format {
        ListFormat::Quiet => states.iter().map(|s| s.id.clone()).collect::<Vec<_>>().join("\n"),
        ListFormat::Json => serde_json::to_string(&states).map_err(CoreError::failed)?,
        ListFormat::Table => {
            let mut out =
                format!("{:<20} {:<8} {:<10} {:<40} {:<24} {}", "ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER");
            for s in &states {
                out.push_str(&format!(
                    "\n{:<20} {:<8} {:<10} {:<40} {:<24} {}",
                    s.id,
                    s.pid,
                    status_name(s.status),
                    s.bundle,
                    s.created,
                    s.owner
                ));
            }
            out
        }
    })
}

/// One `events --stats` record: runc's `stats` event with what the guest
/// reports for the container's cgroup.
fn stats_event(opts: &Options, record: &State) -> Result<Value, CoreError> {
    let stats = link(opts, record)?.client().stats_container(&record.id).map_err(CoreError::Agent)?;
    let memory = &stats.memory;
    let get = |m: &std::collections::HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    Ok(json!({
        "type": "stats",
        "id": record.id,
        "data": {
            "cpu": { "usage": {
                "total": get(&stats.cpu, "usage_usec") * 1000,
                "user": get(&stats.cpu, "user_usec") * 1000,
                "kernel": get(&stats.cpu, "system_usec") * 1000,
            }},
            "memory": {
                "usage": { "usage": get(memory, "usage"), "limit": get(memory, "limit") },
                "swap": { "usage": get(memory, "swap_usage"), "limit": get(memory, "swap_limit") },
                "raw": memory,
            },
            "pids": { "current": stats.pids_current, "limit": stats.pids_limit },
        }
    }))
}

/// `events`: with `stats_once`, prints one stats event; else one every
/// `interval` until the container stops.
pub fn events(opts: &Options, id: &str, stats_once: bool, interval: Duration) -> Result<(), CoreError> {
    let root = opts.root();
    loop {
        let record = root.load(id)?;
        if !matches!(record.status, TaskStatus::Created | TaskStatus::Running | TaskStatus::Paused) {
            if stats_once {
                return Err(CoreError::WrongState(format!("container {id} is not running")));
            }
            return Ok(());
        }
        println!("{}", stats_event(opts, &record)?);
        if stats_once {
            return Ok(());
        }
        std::thread::sleep(interval.max(Duration::from_millis(100)));
    }
}

/// `features`: the runtime-spec features document of this CLI.
pub fn features() -> Value {
    crate::features::features(crate::features::Frontend::Cli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_runc_takes_them() {
        assert_eq!(parse_size("64m").ok(), Some(64 << 20));
        assert_eq!(parse_size("1G").ok(), Some(1 << 30));
        assert_eq!(parse_size("512kb").ok(), Some(512 << 10));
        assert_eq!(parse_size("4096").ok(), Some(4096));
        assert_eq!(parse_size("-1").ok(), Some(-1));
        for bad in ["", "m", "-5m", "12x", "1e400g"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dockers_unset_zeros_are_not_sent() {
        let file = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(
            file.path(),
            r#"{"memory":{"limit":67108864,"swap":67108864,"reservation":0},"cpu":{"shares":0,"quota":0,"period":0,"cpus":"","mems":""},"pids":{"limit":0},"blockIO":{"weight":0}}"#,
        )
        .expect("write");
        let args = UpdateArgs { resources: Some(file.path().to_path_buf()), ..Default::default() };
        assert_eq!(resources(&args).expect("ok"), json!({"memory": {"limit": 67108864, "swap": 67108864}}));
        let args = UpdateArgs { memory: Some("lots".into()), ..Default::default() };
        assert!(resources(&args).unwrap_err().to_string().contains("lots"));
        std::fs::write(file.path(), "[]").expect("write");
        let args = UpdateArgs { resources: Some(file.path().to_path_buf()), ..Default::default() };
        assert!(resources(&args).unwrap_err().to_string().contains("not a JSON object"));
    }
}
