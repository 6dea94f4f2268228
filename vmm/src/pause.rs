//! Pausing the vCPUs for a snapshot, and resuming them.
//!
//! The VMM thread asks every vCPU thread to stop; each one leaves KVM_RUN,
//! lets KVM finish the exit it was handling (one more KVM_RUN with
//! `immediate_exit` set: "the kernel side will first finish incomplete
//! operations and then check for pending signals", KVM API doc), saves its
//! own registers and parks until it is resumed. Getting a vCPU out of
//! KVM_RUN takes two things, because a signal sent while the thread is in
//! user space between two KVM_RUNs would otherwise be lost: the requester
//! sets `immediate_exit` in the vCPU's `kvm_run` page (KVM_RUN then returns
//! EINTR at once) and sends the kick signal (which ends a KVM_RUN already in
//! progress).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::snapshot::VcpuState;

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only interrupts KVM_RUN (EINTR); the vCPU loop looks at why.
}

/// Installs the handler of the signal that kicks vCPUs out of KVM_RUN
/// (SIGRTMIN; the RIP sampler uses it too).
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(SIGRTMIN(), kick_handler).map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Sends the kick signal to a vCPU thread.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a registered vCPU thread that has not returned
    // (threads unregister before they end), and SIGRTMIN has a handler.
    unsafe { libc::pthread_kill(thread, SIGRTMIN()) };
}

/// A running vCPU thread as the requester sees it.
struct Registered {
    thread: libc::pthread_t,
    /// `kvm_run.immediate_exit` of this vCPU, valid while registered.
    immediate_exit: *mut u8,
}

// SAFETY: the pointer targets the vCPU's kvm_run mapping, which stays mapped
// while the vCPU is registered (the thread unregisters, under the same lock,
// before its VcpuFd is dropped); it is only written with volatile stores.
unsafe impl Send for Registered {}

#[derive(Default)]
struct State {
    requested: bool,
    /// Bumped by each pause, so a parked thread tells a resume from the
    /// next pause.
    epoch: u64,
    reports: BTreeMap<u8, Result<VcpuState, String>>,
}

/// Shared between the VMM thread and the vCPU threads.
#[derive(Default)]
pub struct PauseGate {
    requested: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
    threads: Mutex<BTreeMap<u8, Registered>>,
}

impl std::fmt::Debug for PauseGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PauseGate").field("requested", &self.requested.load(Ordering::SeqCst)).finish()
    }
}

fn relock<T>(r: std::sync::LockResult<T>) -> T {
    r.unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PauseGate {
    /// Called by vCPU thread `index` before its first KVM_RUN.
    pub fn register(&self, index: u8, immediate_exit: *mut u8) {
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        relock(self.threads.lock()).insert(index, Registered { thread, immediate_exit });
    }

    /// Called by vCPU thread `index` before it ends (and unmaps kvm_run).
    pub fn unregister(&self, index: u8) {
        relock(self.threads.lock()).remove(&index);
    }

    /// Whether the vCPUs should stop (checked before each KVM_RUN).
    pub fn pause_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Called by a vCPU thread that stopped: hands over its state and
    /// blocks until [`PauseGate::resume`].
    pub fn park(&self, index: u8, saved: Result<VcpuState, String>) {
        let mut state = relock(self.state.lock());
        let epoch = state.epoch;
        state.reports.insert(index, saved);
        self.changed.notify_all();
        while state.requested && state.epoch == epoch {
            state = relock(self.changed.wait(state));
        }
    }

    /// Stops `count` vCPUs and returns their states, in index order. Fails
    /// (and resumes whoever stopped) when one cannot save its state or they
    /// do not all stop within `timeout`.
    pub fn pause(&self, count: usize, timeout: Duration) -> Result<Vec<VcpuState>, String> {
        {
            let mut state = relock(self.state.lock());
            state.requested = true;
            state.epoch += 1;
            state.reports.clear();
        }
        self.requested.store(true, Ordering::SeqCst);
        for registered in relock(self.threads.lock()).values() {
            // SAFETY: registered pointers stay valid under this lock (see
            // `Registered`); KVM reads the byte at its next KVM_RUN.
            unsafe { std::ptr::write_volatile(registered.immediate_exit, 1) };
            kick(registered.thread);
        }
        let deadline = Instant::now() + timeout;
        let mut state = relock(self.state.lock());
        while state.reports.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let stopped = state.reports.len();
                drop(state);
                self.resume();
                return Err(format!("only {stopped} of {count} vCPUs stopped within {timeout:?}"));
            }
            state = relock(self.changed.wait_timeout(state, left)).0;
        }
        let reports = std::mem::take(&mut state.reports);
        drop(state);
        let mut saved = Vec::with_capacity(count);
        for (index, report) in reports {
            match report {
                Ok(vcpu) => saved.push(vcpu),
                Err(e) => {
                    self.resume();
                    return Err(format!("vCPU {index}: {e}"));
                }
            }
        }
        Ok(saved)
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        self.requested.store(false, Ordering::SeqCst);
        let mut state = relock(self.state.lock());
        state.requested = false;
        state.reports.clear();
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn fake_state(index: u8) -> VcpuState {
        VcpuState { index, ..VcpuState::default() }
    }

    /// Two "vCPU" threads that poll the gate like the real loop does.
    fn spawn_vcpus(gate: &Arc<PauseGate>, fail: Option<u8>) -> Vec<std::thread::JoinHandle<u32>> {
        (0..2u8)
            .map(|index| {
                let gate = gate.clone();
                std::thread::spawn(move || {
                    let mut exit_flag = 0u8;
                    gate.register(index, &mut exit_flag);
                    let mut parks = 0;
                    for _ in 0..400 {
                        if gate.pause_requested() {
                            let saved = if fail == Some(index) {
                                Err("KVM_GET_MSRS failed".into())
                            } else {
                                Ok(fake_state(index))
                            };
                            gate.park(index, saved);
                            parks += 1;
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    gate.unregister(index);
                    parks
                })
            })
            .collect()
    }

    #[test]
    fn pause_collects_every_vcpu_and_resume_releases_them() {
        install_kick_handler().expect("handler");
        let gate = Arc::new(PauseGate::default());
        let threads = spawn_vcpus(&gate, None);
        let states = gate.pause(2, Duration::from_secs(10)).expect("both stop");
        assert_eq!(states.iter().map(|s| s.index).collect::<Vec<_>>(), vec![0, 1]);
        gate.resume();
        let again = gate.pause(2, Duration::from_secs(10)).expect("a second pause works");
        assert_eq!(again.len(), 2);
        gate.resume();
        for t in threads {
            assert!(t.join().expect("thread") >= 2, "each vCPU parked twice");
        }
    }

    #[test]
    fn a_vcpu_that_cannot_save_fails_the_pause_and_all_resume() {
        install_kick_handler().expect("handler");
        let gate = Arc::new(PauseGate::default());
        let threads = spawn_vcpus(&gate, Some(1));
        let err = gate.pause(2, Duration::from_secs(10)).expect_err("vCPU 1 fails");
        assert!(err.contains("vCPU 1: KVM_GET_MSRS failed"), "{err}");
        assert!(!gate.pause_requested());
        for t in threads {
            t.join().expect("threads finish: nobody stays parked");
        }
    }

    #[test]
    fn missing_vcpus_time_out() {
        let gate = PauseGate::default();
        let err = gate.pause(1, Duration::from_millis(50)).expect_err("nobody answers");
        assert!(err.contains("0 of 1"), "{err}");
        assert!(!gate.pause_requested(), "the request is withdrawn");
    }
}
