//! A process's stdio: what the runtime hands the container (pipe ends, a log
//! file, or a pty via the console socket) and the copies the shim runs
//! between those and containerd's fifos.
//!
//! Output copies are awaited before an exit is published, so nothing written
//! before exit is lost; the stdin copy is aborted when the process ends, so a
//! fifo nobody writes to never keeps the shim alive.
//!
//! `uri` decodes containerd's stdio strings, `copy` moves bytes between
//! the container's pipes and containerd's fifos, `console` receives a pty
//! from the runtime, `logs` opens `file://` targets and starts `binary://`
//! loggers.

mod console;
mod copy;
mod logs;
mod uri;

use crate::sync::lock;
use std::fs::OpenOptions as FileOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use containerd_shim_protos::ttrpc::Code;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::reaper::Reaper;
use crate::runtime::RuntimeIo;

pub use console::ConsoleSocket;
pub use copy::{halt_copies, InEnds, OutEnds};
pub use uri::{parse_target, Target};

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("invalid stdio URI {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("open {what} {path:?}: {source}")]
    Open { what: &'static str, path: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Os { what: &'static str, source: std::io::Error },
    #[error("start logging binary {binary:?}: {step}: {source}")]
    Logger { binary: String, step: &'static str, source: std::io::Error },
    #[error("console socket {path:?}: {step}: {source}")]
    Console { path: String, step: &'static str, source: std::io::Error },
    #[error("console socket {path:?}: the runtime sent no pty master within {secs}s")]
    NoConsole { path: String, secs: u64 },
}

impl StdioError {
    pub fn code(&self) -> Code {
        match self {
            StdioError::BadUri { .. } => Code::INVALID_ARGUMENT,
            StdioError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Code::NOT_FOUND,
            StdioError::Logger { .. } => Code::FAILED_PRECONDITION,
            _ => Code::INTERNAL,
        }
    }
}

type Result<T> = std::result::Result<T, StdioError>;

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> StdioError {
    move |source| StdioError::Os { what, source }
}

/// The stdio a task or exec request names.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StdioConfig {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Owner given to the container's ends of the stdio pipes (runc-v2's IoUid /
/// IoGid), so a container running as that user can reopen /proc/self/fd/N.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoOwner {
    pub uid: u32,
    pub gid: u32,
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| StdioError::Os { what: "pipe", source: e.into() })
}

/// Everything set up before the runtime call; turned into an [`IoHandle`]
/// once the runtime succeeded.
pub struct Prepared {
    cfg: StdioConfig,
    /// The output fifos, from the URIs parsed once in [`prepare`].
    stdout_fifo: Option<PathBuf>,
    stderr_fifo: Option<PathBuf>,
    stdin_w: Option<OwnedFd>,
    stdout_r: Option<OwnedFd>,
    stderr_r: Option<OwnedFd>,
    pub console: Option<ConsoleSocket>,
}

/// Builds the runtime's stdio for `cfg`. `id` and `namespace` are handed to a
/// logging binary.
pub async fn prepare(cfg: &StdioConfig, owner: IoOwner, namespace: &str, id: &str, reaper: &Reaper) -> Result<(RuntimeIo, Prepared)> {
    let (rio, p) = prepare_ends(cfg, namespace, id, reaper).await?;
    if owner != IoOwner::default() {
        for fd in [&rio.stdin, &rio.stdout, &rio.stderr].into_iter().flatten() {
            nix::unistd::fchown(fd, Some(owner.uid.into()), Some(owner.gid.into()))
                .map_err(|e| StdioError::Os { what: "chown stdio pipe to IoUid/IoGid", source: e.into() })?;
        }
    }
    Ok((rio, p))
}

async fn prepare_ends(cfg: &StdioConfig, namespace: &str, id: &str, reaper: &Reaper) -> Result<(RuntimeIo, Prepared)> {
    let mut rio = RuntimeIo::default();
    let stdout = parse_target(&cfg.stdout)?;
    let stderr = parse_target(&cfg.stderr)?;
    let fifo = |t: &Target| match t {
        Target::Fifo(path) => Some(path.clone()),
        _ => None,
    };
    let mut p = Prepared {
        cfg: cfg.clone(),
        stdout_fifo: fifo(&stdout),
        stderr_fifo: fifo(&stderr),
        stdin_w: None,
        stdout_r: None,
        stderr_r: None,
        console: None,
    };
    if !cfg.stdin.is_empty() {
        if !cfg.stdin.starts_with('/') {
            return Err(StdioError::BadUri { uri: cfg.stdin.clone(), reason: "stdin must be a fifo path".into() });
        }
        if !cfg.terminal {
            let (r, w) = cloexec_pipe()?;
            rio.stdin = Some(r);
            p.stdin_w = Some(w);
        }
    }
    if cfg.terminal {
        // The pty carries both streams; only fifos make sense on the other side.
        if matches!(stdout, Target::File(_) | Target::Binary { .. }) {
            return Err(StdioError::BadUri { uri: cfg.stdout.clone(), reason: "a terminal's output can only go to a fifo".into() });
        }
        p.console = Some(ConsoleSocket::new()?);
        return Ok((rio, p));
    }
    match (&stdout, &stderr) {
        (Target::Binary { path, args }, _) => {
            let (out_r, out_w) = cloexec_pipe()?;
            let (err_r, err_w) = cloexec_pipe()?;
            logs::start_logger(path, args, namespace, id, out_r, err_r, reaper).await?;
            rio.stdout = Some(out_w);
            rio.stderr = Some(err_w);
            return Ok((rio, p));
        }
        (Target::File(path), _) => {
            let file = logs::open_log_file(path)?;
            let dup = file.try_clone().map_err(os("dup log file"))?;
            rio.stdout = Some(file.into());
            rio.stderr = match &stderr {
                Target::File(other) if other != path => Some(logs::open_log_file(other)?.into()),
                Target::Null => None,
                _ => Some(dup.into()),
            };
            return Ok((rio, p));
        }
        _ => {}
    }
    for (target, runtime_end, ours) in [(&stdout, &mut rio.stdout, &mut p.stdout_r), (&stderr, &mut rio.stderr, &mut p.stderr_r)] {
        match target {
            Target::Null => {}
            Target::Fifo(_) => {
                let (r, w) = cloexec_pipe()?;
                *runtime_end = Some(w);
                *ours = Some(r);
            }
            Target::File(path) => *runtime_end = Some(logs::open_log_file(path)?.into()),
            Target::Binary { .. } => {
                return Err(StdioError::BadUri { uri: cfg.stderr.clone(), reason: "binary:// must be the stdout URI".into() })
            }
        }
    }
    Ok((rio, p))
}

/// The live side of a process's stdio.
pub struct IoHandle {
    stdin: Mutex<Option<JoinHandle<Option<InEnds>>>>,
    /// A writer the shim holds on the stdin fifo, so the container sees EOF
    /// only once CloseIO drops it and the client's writer is gone too, after
    /// everything in the fifo was copied (as runc-v2 does).
    stdin_keepalive: Mutex<Option<std::fs::File>>,
    outputs: Mutex<Vec<JoinHandle<Option<OutEnds>>>>,
    console: Option<OwnedFd>,
}

/// A process's stdio with its copies stopped (see [`halt_copies`]): what a
/// new binary needs to carry them on.
#[derive(Default)]
pub struct IoEnds {
    pub stdin: Option<InEnds>,
    pub stdin_keepalive: Option<std::fs::File>,
    pub outputs: Vec<OutEnds>,
    pub console: Option<OwnedFd>,
}

impl Prepared {
    /// Starts the copies; `master` is the pty master for a terminal.
    /// Returns once the client's readers are on the output fifos (or the
    /// rendezvous gave up), as runc-v2's Create and Start do: a client's
    /// reader that opened before the process can exit is blocked in read when
    /// the output comes, long before it cancels its IO after the exit.
    pub async fn start(self, master: Option<OwnedFd>) -> Result<IoHandle> {
        let cfg = &self.cfg;
        let mut outputs = Vec::new();
        let mut opened = Vec::new();
        let mut spawn_copy = |from: pipe::Receiver, path: PathBuf| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            opened.push(rx);
            tokio::spawn(copy::copy_out(from, path, tx))
        };
        let (stdin_fifo, stdin_keepalive) = open_stdin(&cfg.stdin)?;
        let mut stdin = None;
        let console = match master {
            Some(master) => {
                set_nonblocking(&master)?;
                let reader = master.try_clone().map_err(os("dup pty master"))?;
                let writer = master.try_clone().map_err(os("dup pty master"))?;
                if let Some(path) = self.stdout_fifo {
                    let rx = pipe::Receiver::from_owned_fd_unchecked(reader).map_err(os("register pty master"))?;
                    outputs.push(spawn_copy(rx, path));
                }
                if let Some(fifo) = stdin_fifo {
                    let tx = pipe::Sender::from_owned_fd_unchecked(writer).map_err(os("register pty master"))?;
                    stdin = Some(tokio::spawn(copy::copy_in(fifo, tx)));
                }
                Some(master)
            }
            None => {
                if let (Some(fifo), Some(w)) = (stdin_fifo, self.stdin_w) {
                    let tx = pipe::Sender::from_owned_fd(w).map_err(os("register stdin pipe"))?;
                    stdin = Some(tokio::spawn(copy::copy_in(fifo, tx)));
                }
                for (r, fifo) in [(self.stdout_r, self.stdout_fifo), (self.stderr_r, self.stderr_fifo)] {
                    if let (Some(r), Some(path)) = (r, fifo) {
                        let rx = pipe::Receiver::from_owned_fd(r).map_err(os("register output pipe"))?;
                        outputs.push(spawn_copy(rx, path));
                    }
                }
                None
            }
        };
        for rx in opened {
            // An error only means the copy ended before it got that far.
            let _ = rx.await;
        }
        Ok(IoHandle { stdin: Mutex::new(stdin), stdin_keepalive: Mutex::new(stdin_keepalive), outputs: Mutex::new(outputs), console })
    }
}

/// Opens containerd's stdin fifo for reading, and a writer on it that keeps
/// the copy from seeing EOF before CloseIO.
fn open_stdin(path: &str) -> Result<(Option<pipe::Receiver>, Option<std::fs::File>)> {
    if path.is_empty() {
        return Ok((None, None));
    }
    let open_err = |source| StdioError::Open { what: "stdin fifo", path: path.to_string(), source };
    let rx = pipe::OpenOptions::new().open_receiver(path).map_err(open_err)?;
    // Cannot block: the fifo has a reader (ours) now.
    let keep = FileOptions::new().write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path).map_err(open_err)?;
    Ok((Some(rx), Some(keep)))
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(|e| StdioError::Os { what: "fcntl", source: e.into() })?;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK))
        .map_err(|e| StdioError::Os { what: "fcntl", source: e.into() })?;
    Ok(())
}

impl IoHandle {
    /// Waits for the copies [`halt_copies`] stopped and takes their fds;
    /// copies that ended meanwhile are simply gone.
    pub async fn halt(&self) -> IoEnds {
        let mut ends = IoEnds { stdin_keepalive: lock(&self.stdin_keepalive).take(), ..Default::default() };
        let stdin = lock(&self.stdin).take();
        if let Some(task) = stdin {
            ends.stdin = task.await.ok().flatten();
        }
        let outputs: Vec<_> = std::mem::take(&mut *lock(&self.outputs));
        for t in outputs {
            if let Ok(Some(o)) = t.await {
                ends.outputs.push(o);
            }
        }
        ends.console = self.console.as_ref().and_then(|c| c.try_clone().ok());
        ends
    }

    /// Carries on the copies of halted stdio.
    pub fn resume(ends: IoEnds) -> IoHandle {
        let stdin = ends.stdin.map(|i| tokio::spawn(copy::copy_in(i.from, i.to)));
        let outputs = ends.outputs.into_iter().map(|o| tokio::spawn(copy::finish_out(o))).collect();
        IoHandle {
            stdin: Mutex::new(stdin),
            stdin_keepalive: Mutex::new(ends.stdin_keepalive),
            outputs: Mutex::new(outputs),
            console: ends.console,
        }
    }

    pub fn has_console(&self) -> bool {
        self.console.is_some()
    }

    pub fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        let Some(master) = &self.console else {
            return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "no terminal"));
        };
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer we pass.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// CloseIO: the client is done writing. What is already in the fifo is
    /// still copied; the container sees EOF once the client's writer is closed.
    pub fn close_stdin(&self) {
        lock(&self.stdin_keepalive).take();
    }

    /// The process is gone: stop the stdin copy, whoever still writes.
    fn abort_stdin(&self) {
        self.close_stdin();
        if let Some(task) = lock(&self.stdin).take() {
            task.abort();
        }
    }

    /// Waits until every output copy reached EOF, at most `limit`.
    pub async fn drain(&self, limit: Duration) {
        let tasks: Vec<_> = std::mem::take(&mut *lock(&self.outputs));
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            log::warn!("output still open {}s after exit (a child keeps it?); closing it", limit.as_secs());
            aborts.iter().for_each(|a| a.abort());
        }
        self.abort_stdin();
    }
}

impl Drop for IoHandle {
    fn drop(&mut self) {
        self.abort_stdin();
        for t in self.outputs.get_mut().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }
}
