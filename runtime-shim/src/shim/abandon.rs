//! A sandbox's first create that containerd will never know about.
//!
//! When containerd dies (crash, OOM kill, restart) while it waits for the
//! shim's first `Create`, its record of the task dies with the request: a
//! restarted containerd finds no task, and nobody would ever delete the
//! VM being created. `start` passes the identity of the containerd that
//! started the shim (pid and start time) to the server; while the first
//! create runs, the server watches it, and if that containerd is gone the
//! shim ends the sandbox and exits, leaving nothing (found by the fault
//! loop that kills containerd at random points). Creates in a sandbox
//! that already runs containers are not watched: ending the shim would
//! end the containers containerd does know.

use std::path::Path;
use std::time::Duration;

use super::bootstrap::{all_pids, identity, stat_fields, ADDRESS_FILE, CONTAINERD_ENV};

/// Whether the process `ident` (from [`identity`]) still runs (a zombie
/// does not).
fn alive(ident: &str) -> bool {
    let Some(pid) = ident.split(':').next().and_then(|p| p.parse::<u32>().ok()) else { return true };
    let zombie = stat_fields(pid).is_some_and(|f| f.first().is_some_and(|state| state == "Z"));
    !zombie && identity(pid).as_deref() == Some(ident)
}

fn recorded() -> Option<String> {
    std::env::var(CONTAINERD_ENV).ok().filter(|v| v.contains(':'))
}

/// Resolves once the containerd that started this shim is gone; never if
/// it is unknown (started by hand, or by an older `start`).
pub async fn containerd_gone() {
    let Some(ident) = recorded() else {
        return std::future::pending().await;
    };
    while alive(&ident) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Containers containerd has acted on after creating them (Start, Kill,
/// Delete): it knows them, whatever happens to it later.
static CLAIMED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Notes that containerd acted on container `id`.
pub fn claim(id: &str) {
    let mut claimed = CLAIMED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !claimed.iter().any(|c| c == id) {
        claimed.push(id.to_string());
    }
}

fn claimed(id: &str) -> bool {
    CLAIMED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().any(|c| c == id)
}

/// After the sandbox's first create, failed or not: it is watched until
/// containerd acts on it (Start, Kill, Delete; after a failed create
/// containerd deletes it and shuts the shim down). If that containerd dies
/// first and the sandbox holds no other container (`alone` says), nobody
/// ever will: the shim ends the sandbox and exits.
pub fn after_first_create<T, E>(
    first: bool,
    id: &str,
    bundle: &str,
    created: Result<T, E>,
    alone: impl Fn() -> bool + Send + 'static,
) -> Result<T, E> {
    if !first {
        return created;
    }
    // Nothing to watch when no containerd was recorded (started by hand).
    let Some(containerd) = recorded() else { return created };
    let (id, bundle) = (id.to_string(), std::path::PathBuf::from(bundle));
    tokio::spawn(async move {
        while !claimed(&id) {
            if !alive(&containerd) {
                if alone() {
                    abandon(&id, &bundle);
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    created
}

/// Ends the shim of a create containerd abandoned: kills its children (VMM,
/// virtiofsd; they would die with it anyway), removes the mounts and state
/// the sandbox has so far and the shim's socket, and exits.
pub fn abandon(id: &str, bundle: &Path) -> ! {
    log::warn!("containerd died while creating {id}; nobody will delete it: ending the sandbox");
    let me = std::process::id();
    let children: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&pid| stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(me))
        .collect();
    for pid in &children {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
    for _ in 0..100 {
        if children.iter().all(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::sandbox::cleanup_after_crash(id, bundle);
    if let Ok(address) = std::fs::read_to_string(bundle.join(ADDRESS_FILE)) {
        let _ = std::fs::remove_file(address.trim().trim_start_matches("unix://"));
    }
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_tell_live_processes_from_gone_ones() {
        let me = identity(std::process::id()).expect("our own identity");
        assert!(alive(&me));
        let (pid, start) = me.split_once(':').expect("pid:start");
        assert!(!alive(&format!("{pid}:{}", start.parse::<u64>().expect("ticks") + 1)), "a reused pid is not it");
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let ident = identity(child.id()).unwrap_or_else(|| format!("{}:0", child.id()));
        child.wait().expect("wait");
        assert!(!alive(&ident), "a reaped process is gone");
    }
}
