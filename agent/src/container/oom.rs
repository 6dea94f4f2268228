//! OOM kills: one inotify watch per container's memory.events; a rising
//! `oom_kill` counter queues an event for GetOomEvent (long poll).

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::cgroup::Cgroup;
use super::lock;

#[derive(Debug, Default)]
struct State {
    watches: HashMap<WatchDescriptor, (String, Cgroup, u64)>,
    queue: VecDeque<String>,
}

/// The OOM watcher.
#[derive(Debug)]
pub struct OomWatcher {
    inotify: Option<Inotify>,
    state: Mutex<State>,
    ready: Condvar,
}

impl OomWatcher {
    /// Starts the watcher thread; without inotify, OOM events are only
    /// reported with the exit status.
    pub fn start() -> Arc<OomWatcher> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC)
            .map_err(|e| tracing::warn!(error = %e, "no inotify: OOM events only at exit"))
            .ok();
        let watcher = Arc::new(OomWatcher { inotify, state: Mutex::new(State::default()), ready: Condvar::new() });
        if watcher.inotify.is_some() {
            let w = watcher.clone();
            let _ = std::thread::Builder::new().name("oom-watch".into()).spawn(move || w.run());
        }
        watcher
    }

    /// Watches container `id`'s cgroup.
    pub fn watch(&self, id: &str, cgroup: &Cgroup) {
        let Some(inotify) = &self.inotify else { return };
        match inotify.add_watch(&cgroup.memory_events_path(), AddWatchFlags::IN_MODIFY) {
            Ok(wd) => {
                lock(&self.state).watches.insert(wd, (id.to_string(), cgroup.clone(), cgroup.oom_kills()));
            }
            Err(e) => tracing::debug!(id, error = %e, "cannot watch memory.events"),
        }
    }

    /// Stops watching container `id`.
    pub fn unwatch(&self, id: &str) {
        let Some(inotify) = &self.inotify else { return };
        let mut state = lock(&self.state);
        let wds: Vec<WatchDescriptor> = state.watches.iter().filter(|(_, v)| v.0 == id).map(|(k, _)| *k).collect();
        for wd in wds {
            state.watches.remove(&wd);
            let _ = inotify.rm_watch(wd);
        }
    }

    /// Blocks until a container has an OOM kill and returns its id.
    pub fn next(&self) -> String {
        let mut state = lock(&self.state);
        loop {
            if let Some(id) = state.queue.pop_front() {
                return id;
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn run(&self) {
        let Some(inotify) = &self.inotify else { return };
        let _ = inotify.as_fd();
        loop {
            let events = match inotify.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "inotify read failed; OOM events only at exit");
                    return;
                }
            };
            let mut state = lock(&self.state);
            let mut fired = Vec::new();
            for event in events {
                if let Some((id, cgroup, seen)) = state.watches.get_mut(&event.wd) {
                    let now = cgroup.oom_kills();
                    if now > *seen {
                        *seen = now;
                        fired.push(id.clone());
                    }
                }
            }
            if !fired.is_empty() {
                state.queue.extend(fired);
                self.ready.notify_all();
            }
        }
    }
}
