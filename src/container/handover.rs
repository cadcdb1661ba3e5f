//! A container as one shim binary hands it to the next (see `upgrade`):
//! everything in memory as data, every fd it holds by number.

use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::net::unix::pipe;

use super::process::{Process, Restored, Status};
use super::{lock, Container, ExitGate};
use crate::cgroups::oom::Seen;
use crate::cgroups::Cgroup;
use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::fdpass::{take, Passed};
use crate::options::RuntimeOptions;
use crate::reaper::{Exit, Reaper};
use crate::stdio::{InEnds, IoEnds, IoHandle, OutEnds, StdioConfig};

#[derive(Debug, Serialize, Deserialize)]
pub struct ContainerImage {
    pub id: String,
    pub namespace: String,
    pub bundle: PathBuf,
    pub options: RuntimeOptions,
    pub mounted_rootfs: bool,
    pub own_pid_ns: bool,
    pub cgroup: Option<Cgroup>,
    /// Set when an OOM monitor was watching.
    pub oom: Option<Seen>,
    pub restore_from: Option<PathBuf>,
    pub running_execs: usize,
    pub held_init: Option<Exit>,
    pub init: ProcessImage,
    pub execs: Vec<ProcessImage>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProcessImage {
    pub exec_id: String,
    pub stdio: StdioConfig,
    pub spec: Vec<u8>,
    pub status: Status,
    pub pid: i32,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
    pub reaped: bool,
    pub pidfd: Option<RawFd>,
    pub io: Option<IoImage>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct IoImage {
    /// The stdin fifo's reader and the container's stdin (pipe or pty).
    pub stdin: Option<(RawFd, RawFd)>,
    pub stdin_keepalive: Option<RawFd>,
    pub outputs: Vec<OutImage>,
    pub console: Option<RawFd>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OutImage {
    pub from: RawFd,
    /// The fifo's writer and the shim's keeper reader on it.
    pub to: Option<(RawFd, RawFd)>,
    pub fifo: PathBuf,
}

fn pipe_fd(r: std::io::Result<OwnedFd>, what: &str) -> Result<OwnedFd> {
    r.map_err(|e| Error::io(format!("hand over {what}"), e))
}

fn io_image(ends: IoEnds, fds: &mut Passed) -> Result<IoImage> {
    let mut img = IoImage::default();
    if let Some(i) = ends.stdin {
        let from = pipe_fd(i.from.into_nonblocking_fd(), "the stdin fifo")?;
        let to = pipe_fd(i.to.into_nonblocking_fd(), "the container's stdin")?;
        img.stdin = Some((fds.put(from), fds.put(to)));
    }
    img.stdin_keepalive = ends.stdin_keepalive.map(|f| fds.put(f));
    for o in ends.outputs {
        let from = fds.put(pipe_fd(o.from.into_nonblocking_fd(), "an output")?);
        let to = match o.to {
            Some((w, keep)) => Some((fds.put(pipe_fd(w.into_nonblocking_fd(), "an output fifo")?), fds.put(keep))),
            None => None,
        };
        img.outputs.push(OutImage { from, to, fifo: o.fifo });
    }
    img.console = ends.console.map(|c| fds.put(c));
    Ok(img)
}

/// # Safety
/// Every fd in `img` is this process's and owned by nobody (see [`take`]).
unsafe fn io_ends(img: IoImage) -> std::io::Result<IoEnds> {
    // SAFETY: per this function's contract.
    let fd = |raw: RawFd| unsafe { take(raw) };
    let mut ends = IoEnds::default();
    if let Some((from, to)) = img.stdin {
        ends.stdin =
            Some(InEnds { from: pipe::Receiver::from_owned_fd_unchecked(fd(from)?)?, to: pipe::Sender::from_owned_fd_unchecked(fd(to)?)? });
    }
    ends.stdin_keepalive = img.stdin_keepalive.map(fd).transpose()?.map(std::fs::File::from);
    for o in img.outputs {
        let from = pipe::Receiver::from_owned_fd_unchecked(fd(o.from)?)?;
        let to = match o.to {
            Some((w, keep)) => Some((pipe::Sender::from_owned_fd_unchecked(fd(w)?)?, std::fs::File::from(fd(keep)?))),
            None => None,
        };
        ends.outputs.push(OutEnds { from, to, fifo: o.fifo });
    }
    ends.console = img.console.map(fd).transpose()?;
    Ok(ends)
}

impl Container {
    /// Whether exits or Starts are still being worked through here.
    pub fn busy(&self) -> bool {
        self.exiting.load(Ordering::SeqCst) > 0 || self.init.starting() || lock(&self.execs).values().any(|p| p.starting())
    }

    /// Stops the container's OOM monitor and output copies (the caller
    /// halted every copy first) and describes it, passing its fds on.
    pub async fn hand_over(&self, fds: &mut Passed) -> Result<ContainerImage> {
        let oom = self.oom.get().map(|m| {
            m.stop();
            m.seen()
        });
        let (running_execs, held_init) = {
            let gate = lock(&self.gate);
            (gate.running_execs, gate.held_init)
        };
        let init = process_image(&self.init, fds).await?;
        let execs: Vec<Arc<Process>> = lock(&self.execs).values().cloned().collect();
        let mut exec_images = Vec::new();
        for e in execs {
            exec_images.push(process_image(&e, fds).await?);
        }
        Ok(ContainerImage {
            id: self.id.clone(),
            namespace: self.namespace.clone(),
            bundle: self.bundle.clone(),
            options: self.options.clone(),
            mounted_rootfs: self.mounted_rootfs,
            own_pid_ns: self.own_pid_ns,
            cgroup: self.cgroup.get().cloned(),
            oom,
            restore_from: lock(&self.restore_from).clone(),
            running_execs,
            held_init,
            init,
            execs: exec_images,
        })
    }

    /// Rebuilds a container from its image: processes the reaper routes to
    /// it, stdio copies carried on, its OOM monitor resumed.
    ///
    /// # Safety
    /// The fds `img` names are this process's and owned by nobody: a
    /// hand-over passed them (see [`crate::fdpass::take`]).
    pub unsafe fn take_over(img: ContainerImage, reaper: Reaper, publisher: Publisher) -> Result<Arc<Container>> {
        let runtime = Container::runtime_for(&img.options, &img.namespace, &img.bundle, &reaper);
        let id = img.id.clone();
        // SAFETY: per this function's contract.
        let init = unsafe { restore_process(img.init, &id) }?;
        let mut execs = std::collections::HashMap::new();
        for e in img.execs {
            // SAFETY: per this function's contract.
            let p = unsafe { restore_process(e, &id) }?;
            execs.insert(p.exec_id.clone(), p);
        }
        let container = Arc::new_cyclic(|me| Container {
            me: me.clone(),
            id: img.id.clone(),
            namespace: img.namespace.clone(),
            bundle: img.bundle.clone(),
            runtime: Arc::new(runtime),
            init,
            execs: Mutex::new(execs),
            gate: Mutex::new(ExitGate { running_execs: img.running_execs, held_init: img.held_init }),
            publisher,
            reaper: reaper.clone(),
            mounted_rootfs: img.mounted_rootfs,
            own_pid_ns: img.own_pid_ns,
            cgroup: Default::default(),
            oom: Default::default(),
            options: img.options.clone(),
            restore_from: Mutex::new(img.restore_from.clone()),
            exiting: Default::default(),
        });
        for p in std::iter::once(container.init.clone()).chain(lock(&container.execs).values().cloned()) {
            let st = p.lock();
            if st.pid > 0 && !st.reaped() {
                reaper.adopt(st.pid, container.owner(&p.exec_id));
            }
        }
        if let Some(cg) = img.cgroup {
            if img.oom.is_some() {
                container.watch_oom(&cg, img.oom);
            }
            let _ = container.cgroup.set(cg);
        }
        Ok(container)
    }
}

async fn process_image(p: &Process, fds: &mut Passed) -> Result<ProcessImage> {
    let io = match p.io() {
        Some(io) => {
            let ends = io.halt().await;
            p.close_io();
            Some(io_image(ends, fds)?)
        }
        None => None,
    };
    let st = p.lock();
    // The pidfd stays shared with the live process state: a dup goes on.
    let pidfd = match &st.pidfd {
        Some(fd) => Some(fds.put(fd.try_clone().map_err(|e| Error::io("hand over a pidfd", e))?)),
        None => None,
    };
    Ok(ProcessImage {
        exec_id: p.exec_id.clone(),
        stdio: p.stdio.clone(),
        spec: p.spec.clone(),
        status: st.status,
        pid: st.pid,
        exit_status: st.exit_status,
        exited_at: st.exited_at,
        reaped: st.reaped(),
        pidfd,
        io,
    })
}

/// # Safety
/// As [`Container::take_over`].
unsafe fn restore_process(img: ProcessImage, container: &str) -> Result<Arc<Process>> {
    let what = if img.exec_id.is_empty() { format!("task {container}") } else { format!("exec {} of task {container}", img.exec_id) };
    let broken = |e: std::io::Error| Error::io(format!("take over {what}"), e);
    // SAFETY: per this function's contract.
    let pidfd = img.pidfd.map(|fd| unsafe { take(fd) }).transpose().map_err(broken)?.map(Arc::new);
    let io = match img.io {
        // SAFETY: per this function's contract.
        Some(io) => Some(unsafe { io_ends(io) }.map_err(broken)?),
        None => None,
    };
    let st =
        Restored { status: img.status, pid: img.pid, exit_status: img.exit_status, exited_at: img.exited_at, reaped: img.reaped, pidfd };
    let p = Process::restored(&img.exec_id, img.stdio, img.spec, st);
    if let Some(ends) = io {
        p.set_io(IoHandle::resume(ends));
    }
    Ok(Arc::new(p))
}
