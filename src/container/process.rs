//! One process of a container (its init or an exec) and its state machine.
//! Every state change goes through [`Process::transition`].

use crate::sync::lock;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use containerd_shim_protos::ttrpc::Code;

use crate::error::Result;
use crate::reaper::Exit;
use crate::stdio::{IoHandle, StdioConfig};

/// What a process's state refuses (from [`Process::check`] and
/// [`Process::transition`]), naming the process and its state.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("{what} is already starting")]
    AlreadyStarting { what: String },
    #[error("{what}: process already finished")]
    Finished { what: String },
    #[error("{what}: process not started")]
    NotStarted { what: String },
    #[error("cannot exec in {what}: it is stopped")]
    Stopped { what: String },
    #[error("cannot start exec {exec} of {what}: the init process is not running")]
    InitNotRunning { exec: String, what: String },
    #[error("cannot {verb} {what}: it is {state}")]
    Refused { verb: &'static str, what: String, state: &'static str },
    #[error("{what} is {from}: cannot move it to {to}")]
    Transition { what: String, from: &'static str, to: &'static str },
}

impl StateError {
    /// containerd and the CRI plugin take NotFound from a kill as "already
    /// dead" (runc-v2's checkKillError); every other refusal is a precondition.
    pub fn code(&self) -> Code {
        match self {
            StateError::Finished { .. } => Code::NOT_FOUND,
            _ => Code::FAILED_PRECONDITION,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// What a request asks of a process (see [`Process::check`]).
#[derive(Clone, Copy, Debug)]
pub enum Op<'a> {
    Start,
    Kill,
    Delete,
    /// Checked on the init: may an exec be added?
    AddExec,
    /// Checked on the init: may exec `.0` start?
    StartExec(&'a str),
    Pause,
    Resume,
    Update,
    Stats,
    Checkpoint,
}

impl Op<'_> {
    fn verb(self) -> &'static str {
        match self {
            Op::Start | Op::StartExec(_) => "start",
            Op::Kill => "kill",
            Op::Delete => "delete",
            Op::AddExec => "exec in",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Update => "update",
            Op::Stats => "collect stats of",
            Op::Checkpoint => "checkpoint",
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
    starting: bool,
    pending_exit: Option<Exit>,
    /// The pid is gone (reaped): signals must not reach a recycled pid.
    reaped: bool,
    /// Signals go through this when the kernel has pidfds.
    pub pidfd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

impl State {
    pub fn reaped(&self) -> bool {
        self.reaped
    }

    /// The process was collected. During a Start the exit is held (returns
    /// `None`) until [`State::end_start`] hands it back.
    pub fn reaped_now(&mut self, exit: Exit) -> Option<Exit> {
        self.reaped = true;
        if self.starting {
            self.pending_exit = Some(exit);
            None
        } else {
            Some(exit)
        }
    }

    /// Holds an exit that came with the Start itself (the process died
    /// before its pid was claimed).
    pub fn hold_exit(&mut self, exit: Exit) {
        self.pending_exit = Some(exit);
    }

    /// Ends a Start; returns an exit that arrived meanwhile.
    pub fn end_start(&mut self) -> Option<Exit> {
        self.starting = false;
        self.pending_exit.take()
    }
}

/// The state a restored process starts in (see [`Process::restored`]).
pub(super) struct Restored {
    pub status: Status,
    pub pid: i32,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
    pub reaped: bool,
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

    /// A process taken over from the shim's previous binary, in the state
    /// it left it (never mid-Start: a hand-over waits for Starts to end).
    pub(super) fn restored(exec_id: &str, stdio: StdioConfig, spec: Vec<u8>, st: Restored) -> Self {
        let p = Process::new(exec_id, stdio, spec);
        {
            let mut s = p.lock();
            s.status = st.status;
            s.pid = st.pid;
            s.exit_status = st.exit_status;
            s.exited_at = st.exited_at;
            s.reaped = st.reaped;
            s.pidfd = st.pidfd;
        }
        if matches!(st.status, Status::Stopped | Status::Deleted) {
            p.done.send_replace(true);
        }
        p
    }

    /// Whether a Start is at work (or holds an exit) on this process.
    pub(super) fn starting(&self) -> bool {
        let st = self.lock();
        st.starting || st.pending_exit.is_some()
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
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
            (Created, Running)
                | (Created, Stopped)
                | (Created, Deleted)
                | (Running, Paused)
                | (Running, Stopped)
                | (Paused, Running)
                | (Paused, Stopped)
                | (Stopped, Deleted)
        );
        if !ok {
            return Err(StateError::Transition { what: self.describe(container), from: st.status.name(), to: to.name() }.into());
        }
        st.status = to;
        if matches!(to, Stopped | Deleted) {
            self.done.send_replace(true);
        }
        Ok(())
    }

    /// The one table of what each state allows, and what a refusal is.
    /// Besides `status`, two facts decide: a Start at work (`starting`) and
    /// an exit collected but not yet reported (`reaped` while still running:
    /// the init's exit held for an exec, or an exit during Start).
    pub fn check(&self, st: &State, op: Op, container: &str) -> Result<()> {
        self.refusal(st, op, container).map_or(Ok(()), |e| Err(e.into()))
    }

    fn refusal(&self, st: &State, op: Op, container: &str) -> Option<StateError> {
        use Status::*;
        let what = || self.describe(container);
        let s = st.status;
        let gone = st.reaped || matches!(s, Stopped | Deleted);
        match op {
            Op::Start if st.starting => Some(StateError::AlreadyStarting { what: what() }),
            Op::Start if s == Created => None,
            // A reaped pid may have been reused: never signalled again.
            Op::Kill if gone => Some(StateError::Finished { what: what() }),
            Op::Kill if !self.is_init() && st.pid == 0 => Some(StateError::NotStarted { what: what() }),
            Op::Kill => None,
            Op::Delete if matches!(s, Created | Stopped) => None,
            // An init whose exit is held still looks running: an exec may be
            // added (containerd issue 10589), but not started.
            Op::AddExec if !matches!(s, Stopped | Deleted) => None,
            Op::AddExec => Some(StateError::Stopped { what: what() }),
            Op::StartExec(exec) if gone => Some(StateError::InitNotRunning { exec: exec.to_string(), what: what() }),
            Op::StartExec(_) => None,
            Op::Pause if s == Running => None,
            Op::Resume if s == Paused => None,
            Op::Update | Op::Stats if matches!(s, Created | Running | Paused) => None,
            Op::Checkpoint if matches!(s, Running | Paused) => None,
            _ => Some(StateError::Refused { verb: op.verb(), what: what(), state: s.name() }),
        }
    }

    /// Checks and marks a Start: exits that arrive until [`State::end_start`] are held.
    pub fn begin_start(&self, st: &mut State, container: &str) -> Result<()> {
        self.check(st, Op::Start, container)?;
        st.starting = true;
        Ok(())
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
        *lock(&self.io) = Some(Arc::new(io));
    }

    pub fn io(&self) -> Option<Arc<IoHandle>> {
        lock(&self.io).clone()
    }

    pub fn close_io(&self) {
        lock(&self.io).take();
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

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::ttrpc::Code;

    fn state(status: Status, starting: bool, reaped: bool) -> State {
        State { status, pid: 7, exit_status: 0, exited_at: None, starting, pending_exit: None, reaped, pidfd: None }
    }

    /// The conformance rules in one screen: the gRPC code (0 = allowed) of
    /// each operation on the init in each phase.
    #[test]
    fn what_each_state_allows() {
        let init = Process::new("", StdioConfig::default(), Vec::new());
        let phases = [
            ("created", state(Status::Created, false, false)),
            ("starting", state(Status::Created, true, false)),
            ("running", state(Status::Running, false, false)),
            ("exit held", state(Status::Running, false, true)),
            ("paused", state(Status::Paused, false, false)),
            ("stopped", state(Status::Stopped, false, true)),
        ];
        let fp = Code::FAILED_PRECONDITION as i32;
        let nf = Code::NOT_FOUND as i32;
        #[rustfmt::skip]
        let table: [(Op, [i32; 6]); 9] = [
            //                   created starting running held paused stopped
            (Op::Start,          [0,  fp, fp, fp, fp, fp]),
            (Op::Kill,           [0,  0,  0,  nf, 0,  nf]),
            (Op::Delete,         [0,  0,  fp, fp, fp, 0 ]),
            (Op::AddExec,        [0,  0,  0,  0,  0,  fp]),
            (Op::StartExec("e"), [0,  0,  0,  fp, 0,  fp]),
            (Op::Pause,          [fp, fp, 0,  0,  fp, fp]),
            (Op::Resume,         [fp, fp, fp, fp, 0,  fp]),
            (Op::Update,         [0,  0,  0,  0,  0,  fp]),
            (Op::Checkpoint,     [fp, fp, 0,  0,  0,  fp]),
        ];
        for (op, want) in table {
            for ((phase, st), want) in phases.iter().zip(want) {
                let got = init.check(st, op, "c1").map(|_| 0).unwrap_or_else(|e| e.code() as i32);
                assert_eq!(got, want, "{op:?} on a {phase} init");
            }
        }
        // An exec that never started cannot be signalled.
        let exec = Process::new("e1", StdioConfig::default(), Vec::new());
        let err = exec.check(&State { pid: 0, ..state(Status::Created, false, false) }, Op::Kill, "c1").expect_err("not started");
        assert!(err.to_string().contains("exec e1 of task c1: process not started"), "{err}");
    }
}
