//! A container: its init process, its execs, and the operations on them.
//! No lock here is held across a runtime call or any await.

mod create;
mod exit;
pub mod process;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use containerd_shim_protos::events::task::{TaskCheckpointed, TaskExecAdded, TaskExecStarted, TaskOOM, TaskPaused, TaskResumed, TaskStart};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::{CheckpointOptions, ProcessDetails};
use containerd_shim_protos::types::task::ProcessInfo;

pub use create::CreateRequest;
use process::{Process, Status};

use crate::cgroups::oom::OomMonitor;
use crate::cgroups::{stats, Cgroup};
use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::options::RuntimeOptions;
use crate::reaper::{ExitSink, Owner, Reaper};
use crate::runtime::{read_pid_file, Runtime};
use crate::stdio::{self, StdioConfig};

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
    runtime: Runtime,
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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The runtime's checkpoint flags for containerd's CheckpointOptions.
pub fn checkpoint_args(image: &str, work: &std::path::Path, o: &CheckpointOptions) -> Vec<String> {
    let mut a = vec!["--image-path".to_string(), image.to_string(), "--work-path".to_string(), work.display().to_string()];
    if !o.exit {
        a.push("--leave-running".into());
    }
    for (on, flag) in [(o.open_tcp, "--tcp-established"), (o.external_unix_sockets, "--ext-unix-sk"), (o.terminal, "--shell-job"), (o.file_locks, "--file-locks")] {
        if on {
            a.push(flag.into());
        }
    }
    for ns in &o.empty_namespaces {
        a.push("--empty-ns".into());
        a.push(ns.clone());
    }
    a
}

impl Container {
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
        lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id} not found in task {}", self.id)))
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
            p.require(&st, &[Status::Created], "start", &self.id)?;
            if st.starting {
                return Err(Error::FailedPrecondition(format!("task {} is already starting", self.id)));
            }
            st.starting = true;
        }
        let restore = lock(&self.restore_from).take();
        let res = match &restore {
            Some(image) => match self.launch(Some(image)).await {
                Ok(early) => {
                    p.lock().pending_exit = early;
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
            if res.is_ok() && !st.reaped {
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
        let pending = {
            let mut st = p.lock();
            st.starting = false;
            st.pending_exit.take()
        };
        if let Some(exit) = pending {
            self.handle_exit(p.clone(), exit);
        }
    }

    pub fn add_exec(&self, exec_id: &str, stdio: StdioConfig, spec: Vec<u8>) -> Result<()> {
        crate::tasklist::validate_id("exec id", exec_id)?;
        serde_json::from_slice::<oci_spec::runtime::Process>(&spec)
            .map_err(|e| Error::InvalidArgument(format!("exec {exec_id} of task {}: invalid process spec: {e}", self.id)))?;
        stdio::parse_target(&stdio.stdout).and(stdio::parse_target(&stdio.stderr)).map_err(Error::from)?;
        {
            let st = self.init.lock();
            if matches!(st.status, Status::Stopped | Status::Deleted) || st.reaped {
                return Err(Error::FailedPrecondition(format!("cannot exec in task {}: it is stopped", self.id)));
            }
        }
        let mut execs = lock(&self.execs);
        if execs.contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!("exec {exec_id} already exists in task {}", self.id)));
        }
        execs.insert(exec_id.to_string(), Arc::new(Process::new(exec_id, stdio, spec)));
        drop(execs);
        self.publisher.publish(
            &self.namespace,
            TaskExecAdded { container_id: self.id.clone(), exec_id: exec_id.to_string(), ..Default::default() },
        );
        Ok(())
    }

    async fn start_exec(self: &Arc<Self>, p: &Arc<Process>) -> Result<i32> {
        {
            let mut st = p.lock();
            p.require(&st, &[Status::Created], "start", &self.id)?;
            if st.starting {
                return Err(Error::FailedPrecondition(format!("{} is already starting", p.describe(&self.id))));
            }
            st.starting = true;
        }
        // Counted before the runtime runs, so an init exit meanwhile waits for this exec.
        lock(&self.gate).running_execs += 1;
        match self.run_exec(p).await {
            Ok(pid) => {
                self.publisher.publish(
                    &self.namespace,
                    TaskExecStarted { container_id: self.id.clone(), exec_id: p.exec_id.clone(), pid: pid as u32, ..Default::default() },
                );
                self.release_pending_exit(p);
                Ok(pid)
            }
            Err(e) => {
                p.lock().starting = false;
                self.exec_finished();
                Err(e)
            }
        }
    }

    async fn run_exec(&self, p: &Arc<Process>) -> Result<i32> {
        let stem = format!("exec-{}", p.exec_id);
        let spec_file = self.bundle.join(format!("{stem}.json"));
        let pid_file = self.bundle.join(format!("{stem}.pid"));
        std::fs::write(&spec_file, &p.spec).map_err(|e| Error::io(format!("write {}", spec_file.display()), e))?;
        let _ = std::fs::remove_file(&pid_file);
        let (rio, prepared) = stdio::prepare(&p.stdio, self.io_owner(), &self.namespace, &self.id, &self.reaper)?;
        let sub = self.reaper.subscribe();
        let res = self
            .runtime
            .exec(&self.id, &spec_file, &pid_file, prepared.console.as_ref().map(|c| c.path()), rio)
            .await;
        let _ = std::fs::remove_file(&spec_file);
        res?;
        let master = match &prepared.console {
            Some(c) => Some(c.receive().await?),
            None => None,
        };
        let pid = read_pid_file(&pid_file).map_err(|e| Error::io(format!("{}: read pid file", p.describe(&self.id)), e))?;
        let _ = std::fs::remove_file(&pid_file);
        let claim = self.reaper.claim(pid, self.owner(&p.exec_id), &sub);
        drop(sub);
        p.set_io(prepared.start(master).await?);
        let early = claim.early;
        let mut st = p.lock();
        st.pid = pid;
        st.pidfd = claim.pidfd.map(Arc::new);
        p.transition(&mut st, Status::Running, &self.id)?;
        if let Some(exit) = early {
            st.reaped = true;
            st.pending_exit = Some(exit);
        }
        Ok(pid)
    }

    pub async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let p = self.process(exec_id)?;
        if signal == 0 || signal > 64 {
            return Err(Error::InvalidArgument(format!("{}: signal {signal} is out of range (1-64)", p.describe(&self.id))));
        }
        let (pid, pidfd) = {
            let st = p.lock();
            p.require(&st, &[Status::Created, Status::Running, Status::Paused], "kill", &self.id)?;
            if st.reaped {
                return Err(Error::NotFound(format!("{}: process already finished", p.describe(&self.id))));
            }
            if !p.is_init() && st.pid == 0 {
                return Err(Error::FailedPrecondition(format!("{}: process not started", p.describe(&self.id))));
            }
            (st.pid, st.pidfd.clone())
        };
        if p.is_init() {
            return self.runtime.kill(&self.id, signal, all).await.map_err(|e| {
                if e.code() == containerd_shim_protos::ttrpc::Code::NOT_FOUND {
                    Error::NotFound(format!("task {}: process already finished", self.id))
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
            Some(libc::ESRCH) => Error::NotFound(format!("{}: process already finished", p.describe(&self.id))),
            _ => Error::io(format!("kill {}", p.describe(&self.id)), e),
        })
    }

    /// Deletes an exec, or the whole container when `exec_id` is empty.
    /// Returns the deleted process for the reply.
    pub async fn delete(&self, exec_id: &str) -> Result<Arc<Process>> {
        let p = self.process(exec_id)?;
        {
            let st = p.lock();
            p.require(&st, &[Status::Created, Status::Stopped], "delete", &self.id)?;
        }
        if !p.is_init() {
            lock(&self.execs).remove(exec_id);
            let mut st = p.lock();
            let _ = p.transition(&mut st, Status::Deleted, &self.id);
            drop(st);
            p.close_io();
            return Ok(p);
        }
        self.runtime.delete(&self.id, true).await?;
        self.cleanup();
        let mut st = p.lock();
        if st.status == Status::Created {
            // Deleted before it ran: report it as killed, like runc-v2.
            st.exit_status = 137;
            st.exited_at = Some(std::time::SystemTime::now());
        }
        let _ = p.transition(&mut st, Status::Deleted, &self.id);
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
        let (publisher, ns, id) = (self.publisher.clone(), self.namespace.clone(), self.id.clone());
        match OomMonitor::start(&cg, move || {
            log::info!("task {id}: OOM kill");
            publisher.publish(&ns, TaskOOM { container_id: id.clone(), ..Default::default() });
        }) {
            Ok(m) => {
                let _ = self.oom.set(m);
            }
            Err(e) => log::warn!("task {}: OOM monitor: {e}", self.id),
        }
        let _ = self.cgroup.set(cg);
    }

    /// Publishes an OOM kill the monitor has not reported yet.
    fn check_oom(&self) {
        if let Some(m) = self.oom.get() {
            m.check();
        }
    }

    pub fn stats(&self) -> Result<containerd_shim_protos::protobuf::well_known_types::any::Any> {
        {
            let st = self.init.lock();
            self.init.require(&st, &[Status::Created, Status::Running, Status::Paused], "collect stats of", &self.id)?;
        }
        let cg = self.cgroup.get().ok_or_else(|| Error::NotFound(format!("task {}: its cgroup is unknown", self.id)))?;
        Ok(stats::collect(cg))
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
        let _ = std::fs::remove_file(self.bundle.join("init.pid"));
    }

    pub async fn pids(&self) -> Result<Vec<ProcessInfo>> {
        let pids = self.runtime.ps(&self.id).await?;
        let by_pid: HashMap<i32, String> = lock(&self.execs).values().map(|e| (e.pid(), e.exec_id.clone())).collect();
        Ok(pids
            .into_iter()
            .map(|pid| {
                let info = by_pid.get(&pid).and_then(|exec_id| {
                    let details = ProcessDetails { exec_id: exec_id.clone(), ..Default::default() };
                    details.write_to_bytes().ok().map(|value| Any {
                        type_url: "containerd.runc.v1.ProcessDetails".into(),
                        value,
                        ..Default::default()
                    })
                });
                ProcessInfo { pid: pid as u32, info: info.into(), ..Default::default() }
            })
            .collect())
    }

    pub async fn pause(&self) -> Result<()> {
        {
            let st = self.init.lock();
            self.init.require(&st, &[Status::Running], "pause", &self.id)?;
        }
        self.runtime.pause(&self.id).await?;
        {
            let mut st = self.init.lock();
            if st.status == Status::Running {
                self.init.transition(&mut st, Status::Paused, &self.id)?;
            }
        }
        self.publisher.publish(&self.namespace, TaskPaused { container_id: self.id.clone(), ..Default::default() });
        Ok(())
    }

    pub async fn resume(&self) -> Result<()> {
        {
            let st = self.init.lock();
            self.init.require(&st, &[Status::Paused], "resume", &self.id)?;
        }
        self.runtime.resume(&self.id).await?;
        {
            let mut st = self.init.lock();
            if st.status == Status::Paused {
                self.init.transition(&mut st, Status::Running, &self.id)?;
            }
        }
        self.publisher.publish(&self.namespace, TaskResumed { container_id: self.id.clone(), ..Default::default() });
        Ok(())
    }

    pub async fn update(&self, resources: &Any) -> Result<()> {
        {
            let st = self.init.lock();
            self.init.require(&st, &[Status::Created, Status::Running, Status::Paused], "update", &self.id)?;
        }
        let res: oci_spec::runtime::LinuxResources = serde_json::from_slice(&resources.value)
            .map_err(|e| Error::InvalidArgument(format!("task {}: invalid resources: {e}", self.id)))?;
        crate::resources::validate(&res).map_err(|m| Error::InvalidArgument(format!("task {}: {m}", self.id)))?;
        let file = self.bundle.join("update-resources.json");
        let json = serde_json::to_vec(&res).map_err(|e| Error::Internal(format!("encode resources: {e}")))?;
        std::fs::write(&file, json).map_err(|e| Error::io(format!("write {}", file.display()), e))?;
        let r = self.runtime.update(&self.id, &file).await;
        let _ = std::fs::remove_file(&file);
        Ok(r?)
    }

    /// Dumps the container with CRIU through the runtime into `image`.
    pub async fn checkpoint(&self, image: &str, opts: &CheckpointOptions) -> Result<()> {
        {
            let st = self.init.lock();
            self.init.require(&st, &[Status::Running, Status::Paused], "checkpoint", &self.id)?;
        }
        // The request's path wins, as with runc-v2: containerd stores what is
        // there as the checkpoint (1.6 passes image_path only to runc runtimes).
        let image = if image.is_empty() { opts.image_path.as_str() } else { image };
        if image.is_empty() {
            return Err(Error::InvalidArgument(format!("task {}: checkpoint needs an image path", self.id)));
        }
        let work = if opts.work_path.is_empty() { self.criu_work_path() } else { PathBuf::from(&opts.work_path) };
        let args = checkpoint_args(image, &work, opts);
        let r = self.runtime.checkpoint(&self.id, &args).await;
        if opts.work_path.is_empty() {
            let _ = std::fs::remove_dir_all(&work);
        }
        r?;
        self.publisher.publish(
            &self.namespace,
            TaskCheckpointed { container_id: self.id.clone(), checkpoint: image.to_string(), ..Default::default() },
        );
        Ok(())
    }

    pub fn resize(&self, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let p = self.process(exec_id)?;
        let io = p.io().filter(|io| io.has_console()).ok_or_else(|| {
            Error::FailedPrecondition(format!("{} has no terminal to resize", p.describe(&self.id)))
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_options_map_to_runtime_flags() {
        let o = CheckpointOptions {
            exit: false,
            open_tcp: true,
            external_unix_sockets: true,
            terminal: true,
            file_locks: true,
            empty_namespaces: vec!["network".into()],
            ..Default::default()
        };
        let a = checkpoint_args("/img", std::path::Path::new("/work"), &o);
        assert_eq!(
            a,
            ["--image-path", "/img", "--work-path", "/work", "--leave-running", "--tcp-established", "--ext-unix-sk", "--shell-job", "--file-locks", "--empty-ns", "network"]
        );
        let exit = CheckpointOptions { exit: true, ..Default::default() };
        assert!(!checkpoint_args("/img", std::path::Path::new("/w"), &exit).contains(&"--leave-running".to_string()));
    }
}
