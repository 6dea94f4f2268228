//! The on-disk record of a standalone container: `<root>/<id>/state.json`,
//! the OCI runtime state plus what `kill` and `delete` need (the monitor
//! process, the VM's vsock socket).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sandbox::{CoreError, TaskStatus};

/// The OCI runtime-spec version our state follows.
pub const OCI_VERSION: &str = "1.0.2";

/// OCI runtime state (runtime-spec "State"), with kata-like extras. The
/// OCI fields come first, in runc's order; `kata-like state` prints them
/// (and the extras, which OCI callers ignore).
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// OCI runtime-spec version.
    pub oci_version: String,
    /// Container ID.
    pub id: String,
    /// creating, created, running, paused or stopped.
    pub status: TaskStatus,
    /// The container's host process (see `monitor.rs`): it lives as long
    /// as the container's init in the guest and ends with its status; 0
    /// before it exists and once it has ended.
    pub pid: u32,
    /// Absolute bundle path.
    pub bundle: String,
    /// The container's root file system on the host.
    #[serde(default)]
    pub rootfs: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// The user that created it ("root").
    #[serde(default)]
    pub owner: String,
    /// The spec's annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The host process that owns the VM (the same as `pid` once it runs).
    pub monitor_pid: u32,
    /// Its start time (/proc/PID/stat field 22), so a reused PID is not
    /// taken for it.
    #[serde(default)]
    pub monitor_start: u64,
    /// The container's init as a PID of the guest.
    #[serde(default)]
    pub guest_pid: u32,
    /// The VM's state directory (vsock socket, logs, shared directory).
    #[serde(default)]
    pub vm_dir: PathBuf,
    /// The monitor's control socket (`start`).
    #[serde(default)]
    pub control: PathBuf,
    /// The container's host cgroup (`linux.cgroupsPath`, as the host has it).
    #[serde(default)]
    pub cgroups_path: String,
    /// Exit status once stopped (code, or 128 + signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
}

/// Where containers' directories live.
#[derive(Clone, Debug)]
pub struct Root(pub PathBuf);

impl Root {
    /// The directory of container `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.0.join(id)
    }

    /// The name of container `id`'s VM state directory under the
    /// configuration's `state_root`: short and distinct per root and ID
    /// (Docker's root and 64-digit IDs would not leave room for the VM's
    /// socket names in a directory below the root).
    pub fn vm_name(&self, id: &str) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.0, id).hash(&mut h);
        format!("oci-{:016x}", h.finish())
    }

    /// Reads container `id`'s state; a monitor that is gone makes a
    /// running container stopped.
    pub fn load(&self, id: &str) -> Result<State, CoreError> {
        check_id(id)?;
        let path = self.dir(id).join("state.json");
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CoreError::NotFound(format!("container {id} does not exist")))
            }
            Err(e) => return Err(CoreError::Failed(format!("{}: {e}", path.display()))),
        };
        let mut state: State =
            serde_json::from_slice(&raw).map_err(|e| CoreError::Failed(format!("{}: {e}", path.display())))?;
        if state.status != TaskStatus::Stopped && !monitor_alive(state.monitor_pid, state.monitor_start) {
            state.status = TaskStatus::Stopped;
            state.pid = 0;
        }
        if state.status == TaskStatus::Running && self.dir(id).join(PAUSED).exists() {
            state.status = TaskStatus::Paused;
        }
        Ok(state)
    }

    /// Writes `state` (atomically: a reader never sees half a file).
    pub fn save(&self, state: &State) -> Result<(), CoreError> {
        let path = self.dir(&state.id).join("state.json");
        let tmp = path.with_extension("json.tmp");
        let raw = serde_json::to_vec_pretty(state).map_err(|e| CoreError::Failed(e.to_string()))?;
        std::fs::write(&tmp, raw)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| CoreError::Failed(format!("{}: {e}", path.display())))
    }
}

/// Container IDs name directories: no separators, no dot names.
pub fn check_id(id: &str) -> Result<(), CoreError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CoreError::Invalid(format!("invalid container ID {id:?}: use letters, digits and . _ - +")))
    }
}

/// In a container's directory: present while it is paused.
pub const PAUSED: &str = "paused";

/// Whether `pid` is still a `kata-like` process started at `start` (0:
/// any start time), not a reused PID. A zombie (ended, not yet reaped by
/// its subreaper) is not alive.
pub fn monitor_alive(pid: u32, start: u64) -> bool {
    if pid == 0 {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let exe = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    if !Path::new(std::str::from_utf8(exe).unwrap_or_default()).ends_with("kata-like") {
        return false;
    }
    match process_start(pid) {
        Some((state, started)) => state != 'Z' && (start == 0 || started == start),
        None => false,
    }
}

/// A process's state letter and start time (/proc/PID/stat fields 3 and 22).
pub fn process_start(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    Some((state, fields.get(19)?.parse().ok()?))
}

/// Now, RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm; pulling in chrono for one timestamp is
/// not worth it).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_would_escape_the_root_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "a b", "x\0"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        for good in ["c1", "my-container_2.v+1"] {
            assert!(check_id(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }

    #[test]
    fn state_round_trips_and_a_dead_monitor_means_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Root(dir.path().to_path_buf());
        std::fs::create_dir_all(root.dir("c1")).expect("mkdir");
        let state = State {
            oci_version: OCI_VERSION.into(),
            id: "c1".into(),
            status: TaskStatus::Running,
            pid: 7,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: now_rfc3339(),
            owner: "root".into(),
            annotations: HashMap::new(),
            // PID 1 exists but is not kata-like.
            monitor_pid: 1,
            monitor_start: 0,
            guest_pid: 7,
            vm_dir: PathBuf::from("/run/x"),
            control: PathBuf::from("/run/x.sock"),
            cgroups_path: String::new(),
            exit_status: None,
        };
        root.save(&state).expect("save");
        let loaded = root.load("c1").expect("load");
        assert_eq!(loaded.status, TaskStatus::Stopped);
        assert_eq!(loaded.pid, 0, "a stopped container has no process");
        assert_eq!(loaded.guest_pid, 7);
        assert!(matches!(root.load("nope"), Err(CoreError::NotFound(_))));
    }
}
