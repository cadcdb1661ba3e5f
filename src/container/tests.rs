//! The ordering rules of the container core (README, "Exits are never
//! lost"), each forced on purpose: a scripted runtime holds a call where a
//! test wants it, and processes die when the test routes their exit through
//! the reaper as its SIGCHLD loop would. No containerd, no runc, no root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::process::{StateError, Status};
use super::{lock, Container, CreateRequest};
use crate::error::Error;
use crate::events::recording::{self, Recorded};
use crate::options::RuntimeOptions;
use crate::reaper::{Exit, Owner, Reaper};
use crate::runtime::{CreateOpts, OciRuntime, RuntimeError, RuntimeIo};
use crate::stdio::StdioConfig;

/// Pids above any pid_max (at most 2^22): no signal or pidfd reaches a real process.
const FIRST_PID: i32 = 5_000_000;

struct Hold {
    entered: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

#[derive(Default)]
struct Script {
    calls: Vec<String>,
    holds: HashMap<&'static str, Hold>,
    /// The runtime's error message for an operation.
    fail: HashMap<&'static str, String>,
    /// `exec` leaves a process that has died before its pid file is read.
    exec_dies: Option<i32>,
}

/// A runtime that does what the script says and records every call.
struct Scripted {
    script: Mutex<Script>,
    next_pid: AtomicI32,
    reaper: Reaper,
}

impl Scripted {
    async fn step(&self, op: &'static str, call: String) -> Result<(), RuntimeError> {
        let (hold, fail) = {
            let mut s = lock(&self.script);
            s.calls.push(call);
            (s.holds.remove(op), s.fail.get(op).cloned())
        };
        if let Some(h) = hold {
            let _ = h.entered.send(());
            let _ = h.release.await;
        }
        match fail {
            Some(message) => Err(RuntimeError::Failed { binary: "scripted".into(), op, id: "c1".into(), message }),
            None => Ok(()),
        }
    }

    fn write_pid(&self, file: &Path) -> i32 {
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        std::fs::write(file, pid.to_string()).expect("pid file");
        pid
    }
}

#[async_trait::async_trait]
impl OciRuntime for Scripted {
    fn preflight(&self, _id: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn create(&self, id: &str, _bundle: &Path, opts: &CreateOpts, _io: RuntimeIo) -> Result<(), RuntimeError> {
        self.step("create", format!("create {id}")).await?;
        self.write_pid(&opts.pid_file);
        Ok(())
    }
    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.step("start", format!("start {id}")).await
    }
    async fn exec(&self, id: &str, _process: &Path, pid_file: &Path, _console: Option<&Path>, _io: RuntimeIo) -> Result<(), RuntimeError> {
        self.step("exec", format!("exec {id}")).await?;
        let pid = self.write_pid(pid_file);
        let dies = lock(&self.script).exec_dies.take();
        if let Some(status) = dies {
            self.reaper.route(Exit { pid, status });
        }
        Ok(())
    }
    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), RuntimeError> {
        self.step("kill", format!("kill {id} {signal}{}", if all { " --all" } else { "" })).await
    }
    async fn delete(&self, id: &str, _force: bool) -> Result<(), RuntimeError> {
        self.step("delete", format!("delete {id}")).await
    }
    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.step("pause", format!("pause {id}")).await
    }
    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.step("resume", format!("resume {id}")).await
    }
    async fn update(&self, id: &str, _resources: &Path) -> Result<(), RuntimeError> {
        self.step("update", format!("update {id}")).await
    }
    async fn checkpoint(&self, id: &str, _args: &[String]) -> Result<(), RuntimeError> {
        self.step("checkpoint", format!("checkpoint {id}")).await
    }
    async fn ps(&self, _id: &str) -> Result<Vec<i32>, RuntimeError> {
        Ok(Vec::new())
    }
}

struct Rig {
    c: Arc<Container>,
    rt: Arc<Scripted>,
    events: Recorded,
    exits: mpsc::UnboundedReceiver<(Owner, Exit)>,
    reaper: Reaper,
    dir: PathBuf,
}

static NEXT_BUNDLE: AtomicU32 = AtomicU32::new(0);

/// A created container `c1` (its init not started) with a scripted runtime.
async fn rig(own_pid_ns: bool) -> Rig {
    let dir = std::env::temp_dir().join(format!("keel-core-{}-{}", std::process::id(), NEXT_BUNDLE.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(dir.join("rootfs")).expect("bundle");
    let namespaces = if own_pid_ns { r#"[{"type":"pid"},{"type":"mount"}]"# } else { r#"[{"type":"mount"}]"# };
    let config = format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"process":{{"cwd":"/","args":["sh"],"user":{{"uid":0,"gid":0}}}},"linux":{{"namespaces":{namespaces}}}}}"#
    );
    std::fs::write(dir.join("config.json"), config).expect("config.json");
    let (reaper, exits) = Reaper::new();
    let (publisher, events) = recording::publisher();
    let rt = Arc::new(Scripted { script: Mutex::default(), next_pid: AtomicI32::new(FIRST_PID), reaper: reaper.clone() });
    let req = CreateRequest {
        namespace: "ns".into(),
        id: "c1".into(),
        bundle: dir.clone(),
        rootfs: Vec::new(),
        stdio: StdioConfig::default(),
        options: RuntimeOptions::default(),
        checkpoint: String::new(),
    };
    let (c, early) = Container::create_with(req, rt.clone(), reaper.clone(), publisher).await.expect("create");
    assert!(early.is_none());
    Rig { c, rt, events, exits, reaper, dir }
}

/// Waits for a held call to begin; a rule that never makes the call fails here.
async fn begun(entered: oneshot::Receiver<()>, what: &str) {
    match tokio::time::timeout(std::time::Duration::from_secs(5), entered).await {
        Ok(Ok(())) => {}
        _ => panic!("{what} was never called"),
    }
}

/// Lets spawned exit handling run to its end.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Rig {
    /// Process `pid` dies: the reaper collects it and hands it to its owner, as `serve` does.
    async fn die(&mut self, pid: i32, status: i32) {
        self.reaper.route(Exit { pid, status });
        while let Ok((owner, exit)) = self.exits.try_recv() {
            owner.deliver(exit);
        }
        settle().await;
    }

    async fn events(&mut self) -> Vec<String> {
        settle().await;
        self.events.take()
    }

    /// The next `op` call waits: returns (it has begun, let it go on).
    fn hold(&self, op: &'static str) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (entered_tx, entered) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        lock(&self.rt.script).holds.insert(op, Hold { entered: entered_tx, release: release_rx });
        (entered, release)
    }

    fn fail(&self, op: &'static str, message: &str) {
        lock(&self.rt.script).fail.insert(op, message.into());
    }

    fn calls(&self) -> Vec<String> {
        lock(&self.rt.script).calls.clone()
    }

    fn add_exec(&self, exec_id: &str) -> crate::error::Result<()> {
        self.c.add_exec(exec_id, StdioConfig::default(), br#"{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0}}"#.to_vec())
    }

    async fn started(&mut self) -> i32 {
        let pid = self.c.start("").await.expect("start init");
        assert_eq!(self.events().await, ["/tasks/start"]);
        pid
    }

    async fn exec_started(&mut self, exec_id: &str) -> i32 {
        self.add_exec(exec_id).expect("add exec");
        let pid = self.c.start(exec_id).await.expect("start exec");
        assert_eq!(self.events().await, ["/tasks/exec-added", "/tasks/exec-started"]);
        pid
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_exit_during_start_comes_after_the_start_event() {
    let mut r = rig(true).await;
    let pid = r.c.init().pid();
    let (entered, release) = r.hold("start");
    let c = r.c.clone();
    let start = tokio::spawn(async move { c.start("").await });
    begun(entered, "runtime start").await;
    r.die(pid, 3).await;
    assert_eq!(r.events().await, Vec::<String>::new(), "no exit while Start is at work");
    let _ = release.send(());
    assert_eq!(start.await.expect("join").expect("start"), pid);
    assert_eq!(r.events().await, ["/tasks/start", "/tasks/exit c1 3"]);
    assert_eq!(r.c.init().lock().status, Status::Stopped);
}

#[tokio::test(flavor = "current_thread")]
async fn an_execs_exit_comes_before_its_inits() {
    let mut r = rig(true).await;
    let init = r.started().await;
    let exec = r.exec_started("e1").await;
    r.die(init, 137).await;
    assert_eq!(r.events().await, Vec::<String>::new(), "the init's exit waits for the running exec's");
    // Reaped but not yet reported: its pid may be reused, so no signal goes out.
    let before = r.calls().len();
    assert!(matches!(r.c.kill("", 9, false).await, Err(Error::State(StateError::Finished { .. }))));
    assert_eq!(r.calls().len(), before, "a reaped init is never signalled");
    r.die(exec, 137).await;
    assert_eq!(r.events().await, ["/tasks/exit e1 137", "/tasks/exit c1 137"]);
}

#[tokio::test(flavor = "current_thread")]
async fn an_init_that_dies_while_an_exec_starts_holds_its_exit() {
    // containerd issue 10589: the held exit comes out once the starting exec
    // has failed; meanwhile the task still looks running.
    let mut r = rig(true).await;
    let init = r.started().await;
    r.add_exec("e1").expect("add e1");
    let (entered, release) = r.hold("exec");
    r.fail("exec", "container is stopped");
    let c = r.c.clone();
    let start = tokio::spawn(async move { c.start("e1").await });
    begun(entered, "runtime exec").await;
    r.die(init, 137).await;
    assert_eq!(r.events().await, ["/tasks/exec-added"], "no exit while an exec is starting");
    assert_eq!(r.c.init().lock().status, Status::Running, "State still says RUNNING");
    r.add_exec("e2").expect("an exec can still be added");
    match r.c.start("e2").await {
        Err(Error::State(StateError::InitNotRunning { exec, .. })) => assert_eq!(exec, "e2"),
        other => panic!("starting e2 must be refused: {other:?}"),
    }
    let _ = release.send(());
    assert!(start.await.expect("join").is_err(), "e1's runtime exec failed");
    assert_eq!(r.events().await, ["/tasks/exec-added", "/tasks/exit c1 137"]);
}

#[tokio::test(flavor = "current_thread")]
async fn an_exec_that_dies_before_its_pid_is_read_is_reported_after_its_start() {
    let mut r = rig(true).await;
    r.started().await;
    r.add_exec("e1").expect("add");
    lock(&r.rt.script).exec_dies = Some(5);
    r.c.start("e1").await.expect("start exec");
    assert_eq!(r.events().await, ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit e1 5"]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_kill_after_the_exit_is_not_found_and_never_reaches_the_runtime() {
    let mut r = rig(true).await;
    let init = r.started().await;
    // The runtime's words for a kill that lands just after the process died.
    r.fail("kill", "container not running");
    assert!(matches!(r.c.kill("", 15, false).await, Err(ref e) if e.code() == containerd_shim_protos::ttrpc::Code::NOT_FOUND));
    r.die(init, 143).await;
    assert_eq!(r.events().await, ["/tasks/exit c1 143"]);
    let before = r.calls().len();
    match r.c.kill("", 9, false).await {
        Err(Error::State(StateError::Finished { what })) => assert_eq!(what, "task c1"),
        other => panic!("kill after exit: {other:?}"),
    }
    assert_eq!(r.calls().len(), before, "a reaped pid is never signalled");
}

#[tokio::test(flavor = "current_thread")]
async fn a_host_pid_inits_exit_kills_the_rest_before_it_is_published() {
    let mut r = rig(false).await;
    let init = r.started().await;
    let (entered, release) = r.hold("kill");
    r.die(init, 0).await;
    begun(entered, "runtime kill --all").await;
    assert_eq!(r.calls().last().map(String::as_str), Some("kill c1 9 --all"));
    assert_eq!(r.events().await, Vec::<String>::new(), "the exit waits for the kill");
    let _ = release.send(());
    assert_eq!(r.events().await, ["/tasks/exit c1 0"]);
}

#[tokio::test(flavor = "current_thread")]
async fn execs_are_refused_once_the_init_exit_is_out() {
    let mut r = rig(true).await;
    let init = r.started().await;
    r.die(init, 1).await;
    assert_eq!(r.events().await, ["/tasks/exit c1 1"]);
    match r.add_exec("late") {
        Err(Error::State(StateError::Stopped { what })) => assert_eq!(what, "task c1"),
        other => panic!("exec after the exit: {other:?}"),
    }
    r.c.delete("").await.expect("delete");
    assert!(r.calls().contains(&"delete c1".to_string()));
}
