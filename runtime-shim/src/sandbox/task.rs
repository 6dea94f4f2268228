//! A task's lifecycle (a container's init or one of its exec processes):
//! created → running ⇄ paused → stopped, with the exit it ended with.
//!
//! [`Lifecycle`] owns the status and the exit notification together, so
//! there is one source of truth: once a process has exited it is stopped,
//! whatever start, pause or resume raced with the exit. Its guards return
//! [`CoreError::WrongState`], which the containerd adapter reports as
//! FAILED_PRECONDITION and the CLI as its own message. The standalone
//! state file records the same [`TaskStatus`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::error::CoreError;

/// Where a task is in its life; the OCI runtime spec's status names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Being set up (the standalone record before the container exists).
    Creating,
    /// Created in the guest, not started.
    Created,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// Exited (or never will run: its VM is gone).
    Stopped,
}

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal.
    pub status: u32,
    /// When, in nanoseconds since the epoch.
    pub at_ns: u64,
}

impl Exit {
    /// An exit with `status`, now.
    pub fn now(status: u32) -> Exit {
        Exit { status, at_ns: now_ns() }
    }
}

/// Nanoseconds since the epoch.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A task's status and exit, shared by every holder of a clone.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    status: Mutex<TaskStatus>,
    exit: watch::Sender<Option<Exit>>,
}

impl Lifecycle {
    /// A created task.
    pub fn created() -> Lifecycle {
        Lifecycle { inner: Arc::new(Inner { status: Mutex::new(TaskStatus::Created), exit: watch::Sender::new(None) }) }
    }

    fn set(&self, f: impl FnOnce(TaskStatus) -> TaskStatus) {
        let mut status = self.inner.status.lock().unwrap_or_else(PoisonError::into_inner);
        // An exited task stays stopped, whatever raced with its exit.
        *status = if self.exit().is_some() { TaskStatus::Stopped } else { f(*status) };
    }

    /// The current status ([`TaskStatus::Stopped`] once exited).
    pub fn status(&self) -> TaskStatus {
        if self.exit().is_some() {
            return TaskStatus::Stopped;
        }
        *self.inner.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How it ended, once it has.
    pub fn exit(&self) -> Option<Exit> {
        *self.inner.exit.borrow()
    }

    /// Whether it may start: only a created task may; `what` names it.
    pub fn check_start(&self, what: &str) -> Result<(), CoreError> {
        match self.status() {
            TaskStatus::Created => Ok(()),
            _ => Err(CoreError::WrongState(format!("{what} was already started"))),
        }
    }

    /// Whether it may be deleted: not while it runs or is paused.
    pub fn check_delete(&self, what: &str) -> Result<(), CoreError> {
        match self.status() {
            TaskStatus::Running | TaskStatus::Paused => {
                Err(CoreError::WrongState(format!("cannot delete running task {what}")))
            }
            _ => Ok(()),
        }
    }

    /// Whether a signal can still reach it (`what` names the process).
    pub fn check_signal(&self, what: &str) -> Result<(), CoreError> {
        match self.exit() {
            Some(_) => Err(CoreError::NotFound(format!("process {what} already finished"))),
            None => Ok(()),
        }
    }

    /// It started (it stays stopped if it exited meanwhile).
    pub fn started(&self) {
        self.set(|_| TaskStatus::Running);
    }

    /// It was frozen.
    pub fn paused(&self) {
        self.set(|_| TaskStatus::Paused);
    }

    /// It was thawed.
    pub fn resumed(&self) {
        self.set(|_| TaskStatus::Running);
    }

    /// Records its exit; true the first time only (an agent wait and the
    /// sandbox watcher may both report a process of a VM that died).
    pub fn finish(&self, exit: Exit) -> bool {
        let first = self.inner.exit.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(exit);
            true
        });
        self.set(|_| TaskStatus::Stopped);
        first
    }

    /// A watch on its exit that does not keep the task alive: once every
    /// [`Lifecycle`] clone is gone (the task was deleted unstarted), a
    /// waiter learns that it will never exit.
    pub fn exit_watch(&self) -> ExitWatch {
        ExitWatch(self.inner.exit.subscribe())
    }
}

/// See [`Lifecycle::exit_watch`].
#[derive(Debug)]
pub struct ExitWatch(watch::Receiver<Option<Exit>>);

impl ExitWatch {
    /// Waits until the task exits; None if it was dropped without exiting.
    pub async fn wait(mut self) -> Option<Exit> {
        self.0.wait_for(Option::is_some).await.map(|exit| *exit).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_goes_created_running_paused_running_stopped() {
        let task = Lifecycle::created();
        assert_eq!(task.status(), TaskStatus::Created);
        assert!(task.check_delete("c1").is_ok(), "a created task may be deleted");
        task.check_start("c1").expect("created tasks start");
        task.started();
        assert_eq!(task.status(), TaskStatus::Running);
        assert!(matches!(task.check_start("c1"), Err(CoreError::WrongState(m)) if m.contains("already started")));
        task.paused();
        assert_eq!(task.status(), TaskStatus::Paused);
        assert!(matches!(task.check_delete("c1"), Err(CoreError::WrongState(_))));
        task.resumed();
        assert!(task.finish(Exit { status: 3, at_ns: 7 }));
        assert!(!task.finish(Exit { status: 9, at_ns: 8 }), "the first exit wins");
        assert_eq!(task.exit(), Some(Exit { status: 3, at_ns: 7 }));
        assert_eq!(task.status(), TaskStatus::Stopped);
        assert!(task.check_delete("c1").is_ok());
        assert!(matches!(task.check_signal("c1"), Err(CoreError::NotFound(_))));
    }

    #[test]
    fn an_exit_during_start_or_resume_keeps_the_task_stopped() {
        let task = Lifecycle::created();
        let clone = task.clone();
        clone.finish(Exit::now(255));
        task.started();
        assert_eq!(task.status(), TaskStatus::Stopped);
        task.resumed();
        assert_eq!(task.status(), TaskStatus::Stopped);
    }

    #[test]
    fn waiters_see_the_exit() {
        let task = Lifecycle::created();
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let watch = task.exit_watch();
        task.finish(Exit { status: 143, at_ns: 1 });
        assert_eq!(rt.block_on(watch.wait()).map(|e| e.status), Some(143));
        let gone = Lifecycle::created();
        let watch = gone.exit_watch();
        drop(gone);
        assert_eq!(rt.block_on(watch.wait()), None, "a task dropped unstarted never exits");
    }

    #[test]
    fn statuses_have_the_oci_names() {
        assert_eq!(serde_json::to_string(&TaskStatus::Running).expect("json"), "\"running\"");
        assert_eq!(serde_json::from_str::<TaskStatus>("\"stopped\"").expect("parse"), TaskStatus::Stopped);
    }
}
