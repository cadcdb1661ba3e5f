//! A container: its init process, its execs, and the operations on them.
//! No lock here is held across a runtime call or any await.

mod control;
mod create;
mod exec;
mod exit;
pub mod handover;
pub mod process;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use containerd_shim_protos::events::task::{TaskOOM, TaskStart};

pub use create::CreateRequest;
pub use process::StateError;
use process::{Op, Process, Status};

use crate::cgroups::oom::OomMonitor;
use crate::cgroups::Cgroup;
use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::options::RuntimeOptions;
use crate::reaper::{ExitSink, Owner, Reaper};
use crate::runtime::OciRuntime;
use crate::stdio;
use crate::sync::lock;

#[derive(Default)]
struct ExitGate {
    /// Execs started (or starting) whose exit is not yet published.
    running_execs: usize,
    /// The init's exit, held while execs are still to be reported.
    held_init: Option<crate::reaper::Exit>,
}

pub struct Container {
    /// Handed to the reaper as the owner of this container's processes.
    me: Weak<Container>,
    pub id: String,
    pub namespace: String,
    pub bundle: PathBuf,
    runtime: Arc<dyn OciRuntime>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    gate: Mutex<ExitGate>,
    publisher: Publisher,
    reaper: Reaper,
    /// Whether Keel mounted the rootfs (and so must unmount it).
    mounted_rootfs: bool,
    /// Without its own pid namespace, the init's death does not take the
    /// container's other processes with it: Keel kills them.
    own_pid_ns: bool,
    /// Known once the init exists (at create, or at start for a restore).
    cgroup: OnceLock<Cgroup>,
    oom: OnceLock<Arc<OomMonitor>>,
    options: RuntimeOptions,
    /// A checkpoint to restore from at Start.
    restore_from: Mutex<Option<PathBuf>>,
    /// Exits being worked through (drained, ordered, published): a
    /// hand-over to a new binary waits for them.
    exiting: std::sync::atomic::AtomicUsize,
}

impl Container {
    /// Removes a file Keel made in the bundle; see [`Container::tidied`].
    fn remove_file(&self, path: &std::path::Path) {
        self.tidied(path, std::fs::remove_file(path));
    }

    /// The outcome of removing `path`: anything but "already gone" is
    /// logged, as a clean-up must not hide the answer being given.
    fn tidied(&self, path: &std::path::Path, r: std::io::Result<()>) {
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("task {}: remove {}: {e}", self.id, path.display());
            }
        }
    }

    /// `runtime delete --force` after a failed create or start: logged if it fails too.
    async fn undo_create(&self, why: &str) {
        if let Err(e) = self.runtime.delete(&self.id, true).await {
            log::warn!("container {}: clean up after {why}: {e}", self.id);
        }
    }

    pub fn init(&self) -> &Arc<Process> {
        &self.init
    }

    fn io_owner(&self) -> stdio::IoOwner {
        stdio::IoOwner { uid: self.options.io_uid, gid: self.options.io_gid }
    }

    fn owner(&self, exec_id: &str) -> Owner {
        let sink: Weak<dyn ExitSink> = self.me.clone();
        Owner { sink, exec_id: exec_id.to_string() }
    }

    /// The init (empty `exec_id`) or one exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| Error::NotFound(format!("exec {exec_id} not found in task {}", self.id)))
    }

    pub async fn start(self: &Arc<Self>, exec_id: &str) -> Result<i32> {
        let p = self.process(exec_id)?;
        if p.is_init() {
            self.start_init(&p).await
        } else {
            self.start_exec(&p).await
        }
    }

    async fn start_init(self: &Arc<Self>, p: &Arc<Process>) -> Result<i32> {
        {
            let mut st = p.lock();
            p.begin_start(&mut st, &self.id)?;
        }
        let restore = lock(&self.restore_from).take();
        let res = match &restore {
            Some(image) => match self.launch(Some(image)).await {
                Ok(early) => {
                    if let Some(exit) = early {
                        p.lock().hold_exit(exit);
                    }
                    Ok(())
                }
                Err(e) => {
                    *lock(&self.restore_from) = restore.clone();
                    Err(e)
                }
            },
            None => self.runtime.start(&self.id).await.map_err(Error::from),
        };
        let pid = {
            let mut st = p.lock();
            if res.is_ok() && !st.reaped() {
                p.transition(&mut st, Status::Running, &self.id)?;
            }
            st.pid
        };
        if res.is_ok() {
            self.publisher.publish(&self.namespace, TaskStart { container_id: self.id.clone(), pid: pid as u32, ..Default::default() });
        }
        self.release_pending_exit(p);
        res?;
        Ok(pid)
    }

    /// Ends a Start's hold on exits, handling one that arrived meanwhile.
    fn release_pending_exit(self: &Arc<Self>, p: &Arc<Process>) {
        let pending = p.lock().end_start();
        if let Some(exit) = pending {
            self.handle_exit(p.clone(), exit);
        }
    }

    pub async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let p = self.process(exec_id)?;
        // Signal 0 is a liveness probe: OK while the process lives, NotFound
        // after (runc-v2 passes it to the runtime the same way).
        if signal > 64 {
            return Err(Error::InvalidArgument(format!("{}: signal {signal} is out of range (0-64)", p.describe(&self.id))));
        }
        let (pid, pidfd) = {
            let st = p.lock();
            p.check(&st, Op::Kill, &self.id)?;
            (st.pid, st.pidfd.clone())
        };
        if p.is_init() {
            return self.runtime.kill(&self.id, signal, all).await.map_err(|e| {
                if e.already_gone() {
                    StateError::Finished { what: p.describe(&self.id) }.into()
                } else {
                    e.into()
                }
            });
        }
        let sent = match &pidfd {
            Some(fd) => crate::reaper::pidfd_send_signal(fd, signal as i32),
            // SAFETY: kill(2) with a pid and a signal number checked above.
            None => match unsafe { libc::kill(pid, signal as i32) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            },
        };
        sent.map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => StateError::Finished { what: p.describe(&self.id) }.into(),
            _ => Error::io(format!("kill {}", p.describe(&self.id)), e),
        })
    }

    /// Deletes an exec, or the whole container when `exec_id` is empty.
    /// Returns the deleted process for the reply.
    pub async fn delete(&self, exec_id: &str) -> Result<Arc<Process>> {
        let p = self.process(exec_id)?;
        if !p.is_init() {
            // Checked and moved under one lock: a Start cannot slip in between.
            let mut st = p.lock();
            p.check(&st, Op::Delete, &self.id)?;
            p.transition(&mut st, Status::Deleted, &self.id)?;
            drop(st);
            lock(&self.execs).remove(exec_id);
            p.close_io();
            return Ok(p);
        }
        {
            let st = p.lock();
            p.check(&st, Op::Delete, &self.id)?;
        }
        self.runtime.delete(&self.id, true).await?;
        self.cleanup();
        let mut st = p.lock();
        if st.status == Status::Created {
            // Deleted before it ran: report it as killed, like runc-v2.
            st.exit_status = 137;
            st.exited_at = Some(std::time::SystemTime::now());
        }
        // The runtime has deleted it whatever it was doing meanwhile.
        if let Err(e) = p.transition(&mut st, Status::Deleted, &self.id) {
            log::warn!("task {}: deleted by the runtime, but {e}", self.id);
        }
        drop(st);
        for e in lock(&self.execs).drain().map(|(_, e)| e) {
            e.close_io();
        }
        Ok(p)
    }

    /// Finds the init's cgroup and starts watching it for OOM kills.
    fn attach_cgroup(&self, pid: i32) {
        let cg = match Cgroup::of_pid(pid) {
            Ok(cg) => cg,
            Err(e) => {
                log::warn!("task {}: cgroup of pid {pid}: {e}; no stats or OOM events", self.id);
                return;
            }
        };
        self.watch_oom(&cg, None);
        let _ = self.cgroup.set(cg);
    }

    /// Starts the OOM monitor, from what an earlier one had seen if given.
    fn watch_oom(&self, cg: &Cgroup, seen: Option<crate::cgroups::oom::Seen>) {
        let (publisher, ns, id) = (self.publisher.clone(), self.namespace.clone(), self.id.clone());
        match OomMonitor::start_from(cg, seen, move || {
            log::info!("task {id}: OOM kill");
            publisher.publish(&ns, TaskOOM { container_id: id.clone(), ..Default::default() });
        }) {
            Ok(m) => {
                let _ = self.oom.set(m);
            }
            Err(e) => log::warn!("task {}: OOM monitor: {e}", self.id),
        }
    }

    /// The runtime driver for a container's options, namespace and bundle.
    fn runtime_for(options: &RuntimeOptions, namespace: &str, bundle: &std::path::Path, reaper: &Reaper) -> crate::runtime::Runtime {
        crate::runtime::Runtime::new(options.binary(), &options.root_for(namespace), bundle, options.systemd_cgroup, reaper.clone())
    }

    /// Publishes an OOM kill the monitor has not reported yet.
    fn check_oom(&self) {
        if let Some(m) = self.oom.get() {
            m.check();
        }
    }

    /// Releases what the container holds on the host: stdio, pid, mounts.
    fn cleanup(&self) {
        if let Some(m) = self.oom.get() {
            m.stop();
        }
        self.init.close_io();
        self.reaper.forget(self.init.pid());
        if self.mounted_rootfs {
            crate::mount::unmount_all(&self.bundle.join("rootfs"));
        }
        self.remove_file(&self.bundle.join("init.pid"));
    }

    pub fn resize(&self, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let p = self.process(exec_id)?;
        let io = p
            .io()
            .filter(|io| io.has_console())
            .ok_or_else(|| Error::FailedPrecondition(format!("{} has no terminal to resize", p.describe(&self.id))))?;
        io.resize(width, height).map_err(|e| Error::io(format!("resize {}", p.describe(&self.id)), e))
    }

    pub fn close_stdin(&self, exec_id: &str) -> Result<()> {
        let p = self.process(exec_id)?;
        if let Some(io) = p.io() {
            io.close_stdin();
        }
        Ok(())
    }
}
