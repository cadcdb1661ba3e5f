//! Subreaper: collects every child of the shim and routes each exit to whoever
//! owns that pid.
//!
//! Two kinds of children exit here. Runtime commands (`runc create`, `runc
//! exec`, ...) are registered at spawn time, under the same lock the reaper
//! takes to route an exit, so their exit cannot slip past. Container processes
//! (init, execs) are reparented to us, and their pid is only known after the
//! runtime writes its pid file; an exit that arrives before that is kept by a
//! [`Subscription`] opened before the runtime call, and handed over when the
//! pid is claimed. Exits nobody owns or waits for are dropped, so nothing grows.

use crate::sync::lock;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

/// A child's exit as containerd reports it: the exit code, or 128 + signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exit {
    pub pid: i32,
    pub status: i32,
}

/// Receives the exits of the processes it claimed (a container).
pub trait ExitSink: Send + Sync {
    fn exited(self: Arc<Self>, exec_id: &str, exit: Exit);
}

/// Who a container process belongs to. The sink is held weakly and directly,
/// not looked up by id: an exit that lands before its container is listed
/// (between the runtime's create and the end of Create) still reaches it.
#[derive(Clone)]
pub struct Owner {
    pub sink: Weak<dyn ExitSink>,
    /// Empty for the container's init process.
    pub exec_id: String,
}

impl Owner {
    /// Hands the exit to its sink, if that still exists.
    pub fn deliver(self, exit: Exit) {
        match self.sink.upgrade() {
            Some(sink) => sink.exited(&self.exec_id, exit),
            None => log::debug!("exit of pid {} for a deleted container", exit.pid),
        }
    }
}

#[derive(Default)]
struct Inner {
    commands: HashMap<i32, oneshot::Sender<i32>>,
    processes: HashMap<i32, Owner>,
    subscriptions: HashMap<u64, Vec<Exit>>,
    next_subscription: u64,
    /// A hand-over to a new binary is under way: exits stay zombies, for
    /// the new binary's reaper to collect.
    held: bool,
    /// Exits sent to the exit stream and not yet delivered.
    undelivered: usize,
}

#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Mutex<Inner>>,
    exits: mpsc::UnboundedSender<(Owner, Exit)>,
}

/// The outcome of [`Reaper::claim`].
pub struct Claim {
    /// The pid had already exited.
    pub early: Option<Exit>,
    /// Where the kernel has pidfds (5.3+); `None` falls back to the plain pid.
    pub pidfd: Option<OwnedFd>,
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative return is a fresh fd that we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` through a pidfd: ESRCH once the process is gone, never to another.
pub fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal(fd, sig, NULL info, 0 flags).
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps exits of not-yet-claimed pids while a runtime call is under way.
pub struct Subscription {
    reaper: Reaper,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.reaper.lock().subscriptions.remove(&self.id);
    }
}

pub fn status_of(ws: WaitStatus) -> Option<Exit> {
    match ws {
        WaitStatus::Exited(pid, code) => Some(Exit { pid: pid.as_raw(), status: code }),
        WaitStatus::Signaled(pid, sig, _) => Some(Exit { pid: pid.as_raw(), status: 128 + sig as i32 }),
        _ => None,
    }
}

impl Reaper {
    /// Creates the reaper and the stream of container-process exits.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<(Owner, Exit)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Reaper { inner: Arc::default(), exits: tx }, rx)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not stop exits from being routed.
        lock(&self.inner)
    }

    /// Runs forever: every SIGCHLD drains all exited children.
    pub async fn run(self) -> std::io::Result<()> {
        let mut sigchld = signal(SignalKind::child())?;
        // A fresh shim has no children yet; one that took over from its
        // previous binary collects here what exited during the hand-over.
        let held = self.reap_all();
        if held > 0 {
            log::info!("collected {held} exits held over the upgrade");
        }
        loop {
            if sigchld.recv().await.is_none() {
                return Ok(());
            }
            self.reap_all();
        }
    }

    /// Collects every exited child; returns how many.
    fn reap_all(&self) -> usize {
        let mut n = 0;
        loop {
            if self.lock().held {
                return n;
            }
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return n,
                Ok(ws) => {
                    if let Some(exit) = status_of(ws) {
                        n += 1;
                        self.route(exit);
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid: {e}");
                    return n;
                }
            }
        }
    }

    /// Hands one collected exit to whoever waits for it (`reap_all`; tests
    /// of the container core call it to make a process exit at a chosen point).
    pub(crate) fn route(&self, exit: Exit) {
        let mut inner = self.lock();
        if let Some(tx) = inner.commands.remove(&exit.pid) {
            let _ = tx.send(exit.status);
        } else if let Some(owner) = inner.processes.remove(&exit.pid) {
            if self.exits.send((owner, exit)).is_ok() {
                inner.undelivered += 1;
            }
        } else if !inner.subscriptions.is_empty() {
            for buf in inner.subscriptions.values_mut() {
                buf.push(exit);
            }
        } else {
            log::debug!("reaped unowned pid {} (status {})", exit.pid, exit.status);
        }
    }

    /// Spawns a command whose exit status will be delivered on the returned
    /// receiver. The lock is held across fork/exec so the reaper cannot
    /// collect the child before its waiter exists.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Child, oneshot::Receiver<i32>)> {
        let mut inner = self.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        inner.commands.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    pub fn subscribe(&self) -> Subscription {
        let mut inner = self.lock();
        let id = inner.next_subscription;
        inner.next_subscription += 1;
        inner.subscriptions.insert(id, Vec::new());
        Subscription { reaper: self.clone(), id }
    }

    /// Makes `owner` the receiver of `pid`'s exit. If the pid already exited
    /// while `sub` was open, that exit is returned instead and the caller
    /// must handle it (after publishing whatever must precede it).
    ///
    /// Otherwise a pidfd is opened for it: under the lock the pid is not yet
    /// reaped, so it cannot have been recycled, and signals sent through the
    /// pidfd can never reach another process later.
    pub fn claim(&self, pid: i32, owner: Owner, sub: &Subscription) -> Claim {
        let mut inner = self.lock();
        let early = inner.subscriptions.get(&sub.id).and_then(|buf| buf.iter().find(|e| e.pid == pid).copied());
        if early.is_some() {
            return Claim { early, pidfd: None };
        }
        inner.processes.insert(pid, owner);
        Claim { early: None, pidfd: pidfd_open(pid) }
    }

    pub fn forget(&self, pid: i32) {
        self.lock().processes.remove(&pid);
    }

    /// Makes `owner` the receiver of `pid`'s exit, for a process this shim
    /// took over from its previous binary.
    pub fn adopt(&self, pid: i32, owner: Owner) {
        self.lock().processes.insert(pid, owner);
    }

    /// Called by the exit stream's consumer once an exit was delivered.
    pub fn delivered(&self) {
        let mut inner = self.lock();
        inner.undelivered = inner.undelivered.saturating_sub(1);
    }

    /// Stops (or restarts) collecting exits. Returns whether every exit
    /// collected so far has been delivered.
    pub fn hold(&self, held: bool) -> bool {
        let mut inner = self.lock();
        inner.held = held;
        inner.undelivered == 0
    }

    /// Runtime commands someone still waits for (a logger's exit nobody awaits).
    pub fn commands_running(&self) -> usize {
        self.lock().commands.values().filter(|tx| !tx.is_closed()).count()
    }

    /// Collects what exited while held.
    pub fn reap_now(&self) {
        self.reap_all();
    }
}

// The tests hold one lock across awaits on purpose (waitpid(-1) reaps any
// child of the test process: one reaper at a time), and their children are
// waited for by the reaper under test, which clippy cannot see.
#[cfg(test)]
#[allow(clippy::await_holding_lock, clippy::zombie_processes)]
mod tests {
    use super::*;
    use std::time::Duration;

    // waitpid(-1) reaps any child of the test process: one reaper at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        lock(&SERIAL)
    }

    /// Records what it is given.
    #[derive(Default)]
    struct Sink(Mutex<Vec<(String, Exit)>>);
    impl ExitSink for Sink {
        fn exited(self: Arc<Self>, exec_id: &str, exit: Exit) {
            self.0.lock().expect("sink").push((exec_id.to_string(), exit));
        }
    }

    fn owner(sink: &Arc<Sink>, exec: &str) -> Owner {
        let weak: Weak<Sink> = Arc::downgrade(sink);
        Owner { sink: weak, exec_id: exec.into() }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn command_exit_is_delivered_to_its_waiter_not_to_processes() {
        let _serial = serial();
        let (reaper, mut exits) = Reaper::new();
        tokio::spawn(reaper.clone().run());
        let (_child, rx) = reaper.spawn(Command::new("sh").args(["-c", "exit 5"])).expect("spawn sh");
        let status = tokio::time::timeout(Duration::from_secs(5), rx).await.expect("timely").expect("status");
        assert_eq!(status, 5);
        assert!(exits.try_recv().is_err(), "a runtime command's exit must not look like a container's");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn exit_before_claim_is_kept_by_the_subscription() {
        let _serial = serial();
        let (reaper, mut exits) = Reaper::new();
        tokio::spawn(reaper.clone().run());
        let sub = reaper.subscribe();
        // Not spawned through the reaper: stands for a process the runtime forked.
        let child = Command::new("sh").args(["-c", "exit 7"]).spawn().expect("spawn sh");
        let pid = child.id() as i32;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sink = Arc::new(Sink::default());
        let claim = reaper.claim(pid, owner(&sink, ""), &sub);
        assert_eq!(claim.early, Some(Exit { pid, status: 7 }));
        assert!(exits.try_recv().is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn claimed_pid_exit_reaches_the_exit_stream_with_its_owner() {
        let _serial = serial();
        let (reaper, mut exits) = Reaper::new();
        tokio::spawn(reaper.clone().run());
        let sub = reaper.subscribe();
        let child = Command::new("sh").args(["-c", "sleep 0.2; kill -9 $$"]).spawn().expect("spawn sh");
        let pid = child.id() as i32;
        let sink = Arc::new(Sink::default());
        let claim = reaper.claim(pid, owner(&sink, "e1"), &sub);
        assert_eq!(claim.early, None);
        assert!(claim.pidfd.is_some(), "this kernel has pidfd_open");
        drop(sub);
        let (who, exit) = tokio::time::timeout(Duration::from_secs(5), exits.recv()).await.expect("timely").expect("exit");
        assert_eq!(exit, Exit { pid, status: 137 });
        who.deliver(exit);
        assert_eq!(*sink.0.lock().expect("sink"), vec![("e1".to_string(), exit)]);
    }
}
