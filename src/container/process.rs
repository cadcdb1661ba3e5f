//! One process of a container (its init or an exec) and its state machine.
//! Every state change goes through [`Process::transition`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::reaper::Exit;
use crate::stdio::{IoHandle, StdioConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
    Deleted,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
            Status::Deleted => "deleted",
        }
    }
}

#[derive(Debug)]
pub struct State {
    pub status: Status,
    pub pid: i32,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
    /// A Start is between its runtime call and its start event: an exit that
    /// arrives now is held until the event is out, so /tasks/exit never
    /// precedes /tasks/start.
    pub starting: bool,
    pub pending_exit: Option<Exit>,
    /// The pid is gone (reaped): signals must not reach a recycled pid.
    pub reaped: bool,
    /// Signals go through this when the kernel has pidfds.
    pub pidfd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

pub struct Process {
    /// Empty for the container's init.
    pub exec_id: String,
    pub stdio: StdioConfig,
    /// An exec's OCI process (JSON) as containerd sent it.
    pub spec: Vec<u8>,
    state: Mutex<State>,
    done: watch::Sender<bool>,
    io: Mutex<Option<Arc<IoHandle>>>,
}

/// How long output may stay open after its process exited (held by a child
/// that outlived it) before the copy is cut so the exit can be reported.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

impl Process {
    pub fn new(exec_id: &str, stdio: StdioConfig, spec: Vec<u8>) -> Self {
        Process {
            exec_id: exec_id.to_string(),
            stdio,
            spec,
            state: Mutex::new(State {
                status: Status::Created,
                pid: 0,
                exit_status: 0,
                exited_at: None,
                starting: false,
                pending_exit: None,
                reaped: false,
                pidfd: None,
            }),
            done: watch::channel(false).0,
            io: Mutex::new(None),
        }
    }

    pub fn is_init(&self) -> bool {
        self.exec_id.is_empty()
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pid(&self) -> i32 {
        self.lock().pid
    }

    pub fn describe(&self, container: &str) -> String {
        if self.is_init() {
            format!("task {container}")
        } else {
            format!("exec {} of task {container}", self.exec_id)
        }
    }

    /// The one place a process changes state.
    pub fn transition(&self, st: &mut State, to: Status, container: &str) -> Result<()> {
        use Status::*;
        let ok = matches!(
            (st.status, to),
            (Created, Running) | (Created, Stopped) | (Created, Deleted) | (Running, Paused) | (Running, Stopped) | (Paused, Running) | (Paused, Stopped) | (Stopped, Deleted)
        );
        if !ok {
            return Err(Error::FailedPrecondition(format!(
                "{} is {}: cannot move it to {}",
                self.describe(container),
                st.status.name(),
                to.name()
            )));
        }
        st.status = to;
        if matches!(to, Stopped | Deleted) {
            self.done.send_replace(true);
        }
        Ok(())
    }

    /// Fails unless the process is in one of `allowed`, naming what it is.
    pub fn require(&self, st: &State, allowed: &[Status], action: &str, container: &str) -> Result<()> {
        if allowed.contains(&st.status) {
            return Ok(());
        }
        let what = self.describe(container);
        Err(match st.status {
            Status::Stopped | Status::Deleted if action == "kill" => Error::NotFound(format!("{what}: process already finished")),
            s => Error::FailedPrecondition(format!("cannot {action} {what}: it is {}", s.name())),
        })
    }

    pub fn set_exited(&self, exit: Exit, container: &str) {
        let mut st = self.lock();
        st.exit_status = exit.status as u32;
        st.exited_at = Some(SystemTime::now());
        st.reaped = true;
        st.pidfd = None;
        if st.status != Status::Stopped && st.status != Status::Deleted {
            if let Err(e) = self.transition(&mut st, Status::Stopped, container) {
                log::error!("{e}");
            }
        }
    }

    pub fn set_io(&self, io: IoHandle) {
        *self.io.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(io));
    }

    pub fn io(&self) -> Option<Arc<IoHandle>> {
        self.io.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn close_io(&self) {
        self.io.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    pub async fn drain_io(&self) {
        if let Some(io) = self.io() {
            io.drain(DRAIN_LIMIT).await;
        }
    }

    /// Resolves once the process has stopped (or was deleted).
    pub async fn wait(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
}
