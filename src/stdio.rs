//! A process's stdio: what the runtime hands the container (pipe ends, a log
//! file, or a pty via the console socket) and the copies the shim runs
//! between those and containerd's fifos.
//!
//! Output copies are awaited before an exit is published, so nothing written
//! before exit is lost; the stdin copy is aborted when the process ends, so a
//! fifo nobody writes to never keeps the shim alive.

use std::fs::OpenOptions as FileOptions;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use containerd_shim_protos::ttrpc::Code;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::reaper::Reaper;
use crate::runtime::RuntimeIo;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("invalid stdio URI {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("open {what} {path:?}: {source}")]
    Open { what: &'static str, path: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Os { what: &'static str, source: std::io::Error },
    #[error("start logging binary {binary:?}: {reason}")]
    Logger { binary: String, reason: String },
    #[error("console socket: {0}")]
    Console(String),
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

/// Where an output stream goes, decoded from containerd's string.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Null,
    Fifo(PathBuf),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

/// Decodes `""`, a fifo path, `fifo://`, `file://` and `binary://` URIs.
pub fn parse_target(uri: &str) -> Result<Target> {
    let bad = |reason: &str| StdioError::BadUri { uri: uri.into(), reason: reason.into() };
    if uri.is_empty() {
        return Ok(Target::Null);
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return if uri.starts_with('/') { Ok(Target::Fifo(uri.into())) } else { Err(bad("not an absolute path or a URI")) };
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err(bad("the path must be absolute (scheme:///abs/path)"));
    }
    // containerd escapes URI paths (a space is %20): the file is the decoded name.
    let path = percent_decode(path).ok_or_else(|| bad("malformed %-escape"))?;
    match scheme {
        "fifo" => Ok(Target::Fifo(path.into())),
        "file" => Ok(Target::File(path.into())),
        "binary" => {
            let dec = |s: &str| percent_decode(&s.replace('+', " ")).ok_or_else(|| bad("malformed %-escape"));
            let mut args = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                args.push(dec(k)?);
                if !v.is_empty() {
                    args.push(dec(v)?);
                }
            }
            Ok(Target::Binary { path: path.into(), args })
        }
        _ => Err(bad("unsupported scheme (want fifo, file or binary)")),
    }
}

/// Decodes %XX escapes; `None` for a malformed escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| StdioError::Os { what: "pipe", source: e.into() })
}

/// Everything set up before the runtime call; turned into an [`IoHandle`]
/// once the runtime succeeded.
pub struct Prepared {
    cfg: StdioConfig,
    stdin_w: Option<OwnedFd>,
    stdout_r: Option<OwnedFd>,
    stderr_r: Option<OwnedFd>,
    pub console: Option<ConsoleSocket>,
}

/// Builds the runtime's stdio for `cfg`. `id` and `namespace` are handed to a
/// logging binary.
pub fn prepare(cfg: &StdioConfig, owner: IoOwner, namespace: &str, id: &str, reaper: &Reaper) -> Result<(RuntimeIo, Prepared)> {
    let (rio, p) = prepare_ends(cfg, namespace, id, reaper)?;
    if owner != IoOwner::default() {
        for fd in [&rio.stdin, &rio.stdout, &rio.stderr].into_iter().flatten() {
            nix::unistd::fchown(fd, Some(owner.uid.into()), Some(owner.gid.into()))
                .map_err(|e| StdioError::Os { what: "chown stdio pipe to IoUid/IoGid", source: e.into() })?;
        }
    }
    Ok((rio, p))
}

fn prepare_ends(cfg: &StdioConfig, namespace: &str, id: &str, reaper: &Reaper) -> Result<(RuntimeIo, Prepared)> {
    let mut rio = RuntimeIo::default();
    let mut p = Prepared { cfg: cfg.clone(), stdin_w: None, stdout_r: None, stderr_r: None, console: None };
    let stdout = parse_target(&cfg.stdout)?;
    let stderr = parse_target(&cfg.stderr)?;
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
            start_logger(path, args, namespace, id, out_r, err_r, reaper)?;
            rio.stdout = Some(out_w);
            rio.stderr = Some(err_w);
            return Ok((rio, p));
        }
        (Target::File(path), _) => {
            let file = open_log_file(path)?;
            let dup = file.try_clone().map_err(os("dup log file"))?;
            rio.stdout = Some(file.into());
            rio.stderr = match &stderr {
                Target::File(other) if other != path => Some(open_log_file(other)?.into()),
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
            Target::File(path) => *runtime_end = Some(open_log_file(path)?.into()),
            Target::Binary { .. } => {
                return Err(StdioError::BadUri { uri: cfg.stderr.clone(), reason: "binary:// must be the stdout URI".into() })
            }
        }
    }
    Ok((rio, p))
}

fn open_log_file(path: &Path) -> Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StdioError::Open { what: "log directory", path: dir.display().to_string(), source })?;
    }
    FileOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| StdioError::Open { what: "log file", path: path.display().to_string(), source })
}

/// Starts a `binary://` logger: fd 3 and 4 carry the container's stdout and
/// stderr, and the logger closes fd 5 once it is ready to read them.
fn start_logger(path: &Path, args: &[String], namespace: &str, id: &str, out_r: OwnedFd, err_r: OwnedFd, reaper: &Reaper) -> Result<()> {
    let fail = |reason: String| StdioError::Logger { binary: path.display().to_string(), reason };
    let (ready_r, ready_w) = cloexec_pipe()?;
    // Moved above fd 5 first, so dup2 onto 3..5 never hits one of its sources.
    let high = |fd: &OwnedFd| -> Result<OwnedFd> {
        let raw = fcntl(fd.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(|e| fail(e.to_string()))?;
        // SAFETY: fcntl just returned this fd to us and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    };
    let fds = [high(&out_r)?, high(&err_r)?, high(&ready_w)?];
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only dup2 runs between fork and exec; it is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (_child, _exit) = reaper.spawn(&mut cmd).map_err(|e| fail(e.to_string()))?;
    drop(fds);
    drop(ready_w);
    drop(out_r);
    drop(err_r);
    // The logger signals readiness by closing fd 5: wait for EOF, briefly.
    let mut buf = [0u8; 1];
    let _ = nix::poll::poll(
        &mut [nix::poll::PollFd::new(ready_r.as_fd(), nix::poll::PollFlags::POLLIN)],
        nix::poll::PollTimeout::from(10_000u16),
    );
    let _ = nix::unistd::read(&ready_r, &mut buf);
    Ok(())
}

static SOCKET_SEQ: AtomicU64 = AtomicU64::new(0);

/// The unix socket the runtime sends a new pty's master fd over.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: tokio::net::UnixListener,
}

impl ConsoleSocket {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "keel-pty-{}-{}.sock",
            std::process::id(),
            SOCKET_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).map_err(|e| StdioError::Console(format!("bind {}: {e}", path.display())))?;
        Ok(ConsoleSocket { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The runtime connected and sent the master during its (successful) call,
    /// so this only waits for a message that is already queued.
    pub async fn receive(&self) -> Result<OwnedFd> {
        let recv = async {
            let (stream, _) = self.listener.accept().await.map_err(|e| StdioError::Console(format!("accept: {e}")))?;
            loop {
                stream.readable().await.map_err(|e| StdioError::Console(e.to_string()))?;
                match stream.try_io(tokio::io::Interest::READABLE, || recv_fd(stream.as_raw_fd())) {
                    Ok(fd) => return Ok(fd),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(StdioError::Console(e.to_string())),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), recv)
            .await
            .map_err(|_| StdioError::Console("the runtime sent no pty master within 10s".into()))?
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn recv_fd(sock: RawFd) -> std::io::Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "message carried no file descriptor"))
}

/// The live side of a process's stdio.
pub struct IoHandle {
    stdin: Mutex<Option<JoinHandle<()>>>,
    /// A writer the shim holds on the stdin fifo, so the container sees EOF
    /// only once CloseIO drops it and the client's writer is gone too, after
    /// everything in the fifo was copied (as runc-v2 does).
    stdin_keepalive: Mutex<Option<std::fs::File>>,
    outputs: Mutex<Vec<JoinHandle<()>>>,
    console: Option<OwnedFd>,
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
            tokio::spawn(copy_out(from, path, tx))
        };
        let (stdin_fifo, stdin_keepalive) = open_stdin(&cfg.stdin)?;
        let mut stdin = None;
        let console = match master {
            Some(master) => {
                set_nonblocking(&master)?;
                let reader = master.try_clone().map_err(os("dup pty master"))?;
                let writer = master.try_clone().map_err(os("dup pty master"))?;
                if let Target::Fifo(path) = parse_target(&cfg.stdout)? {
                    let rx = pipe::Receiver::from_owned_fd_unchecked(reader).map_err(os("register pty master"))?;
                    outputs.push(spawn_copy(rx, path));
                }
                if let Some(fifo) = stdin_fifo {
                    let tx = pipe::Sender::from_owned_fd_unchecked(writer).map_err(os("register pty master"))?;
                    stdin = Some(tokio::spawn(copy_in(fifo, tx)));
                }
                Some(master)
            }
            None => {
                if let (Some(fifo), Some(w)) = (stdin_fifo, self.stdin_w) {
                    let tx = pipe::Sender::from_owned_fd(w).map_err(os("register stdin pipe"))?;
                    stdin = Some(tokio::spawn(copy_in(fifo, tx)));
                }
                for (r, uri) in [(self.stdout_r, &cfg.stdout), (self.stderr_r, &cfg.stderr)] {
                    if let (Some(r), Target::Fifo(path)) = (r, parse_target(uri)?) {
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
        Ok(IoHandle {
            stdin: Mutex::new(stdin),
            stdin_keepalive: Mutex::new(stdin_keepalive),
            outputs: Mutex::new(outputs),
            console,
        })
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

/// How long an output waits for the client to open its end of the fifo.
const OUTPUT_RENDEZVOUS: Duration = Duration::from_secs(10);

/// Opens the write end of containerd's output fifo once the client's reader
/// is there, as runc-v2 does. containerd's client opens its reader with a
/// blocking open in the background: had the shim already written and closed
/// its end, that open would wait for a writer forever and a short process's
/// output would be lost. The blocking open runs on tokio's blocking pool.
async fn open_output(fifo: &Path) -> Option<(pipe::Sender, std::fs::File)> {
    // A reader of the shim's own keeps writes from failing (EPIPE) if the
    // client goes away mid-copy, as runc-v2 does.
    let reader = || FileOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(fifo);
    let with_keeper = |file: std::fs::File| Some((pipe::Sender::from_file(file).ok()?, reader().ok()?));
    // The client's reader is usually there already: no thread needed.
    match FileOptions::new().write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(fifo) {
        Ok(file) => return with_keeper(file),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
        Err(e) => {
            log::warn!("open output fifo {}: {e}", fifo.display());
            return None;
        }
    }
    let path = fifo.to_path_buf();
    let open = tokio::task::spawn_blocking(move || FileOptions::new().write(true).custom_flags(libc::O_CLOEXEC).open(path));
    match tokio::time::timeout(OUTPUT_RENDEZVOUS, open).await {
        Ok(Ok(Ok(file))) => with_keeper(file),
        Ok(Ok(Err(e))) => {
            log::warn!("open output fifo {}: {e}", fifo.display());
            None
        }
        _ => {
            // Release the blocked open with a reader of our own.
            let _ = reader();
            log::warn!("nobody opened {} within {}s: output discarded", fifo.display(), OUTPUT_RENDEZVOUS.as_secs());
            None
        }
    }
}

/// Output read while waiting for the client's reader. A pty must be read at
/// once: the kernel flushes it when the last slave closes.
const EARLY_LIMIT: usize = 1 << 20;

/// Copies a container's output into containerd's fifo until the container
/// side closes (EOF, or EIO once a pty's last slave is gone).
/// `opened` fires once the rendezvous with the client's reader is over.
async fn copy_out(mut from: impl AsyncRead + Unpin, fifo: PathBuf, opened: tokio::sync::oneshot::Sender<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let open = open_output(&fifo);
    tokio::pin!(open);
    let (mut early, mut buf, mut done) = (Vec::new(), vec![0u8; 8192], false);
    let target = loop {
        tokio::select! {
            t = &mut open => break t,
            n = from.read(&mut buf), if !done && early.len() < EARLY_LIMIT => match n {
                Ok(0) | Err(_) => done = true,
                Ok(n) => early.extend_from_slice(&buf[..n]),
            },
        }
    };
    drop(buf);
    let _ = opened.send(());
    let res = match target {
        Some((mut to, keep)) => {
            let res = ended_normally(match to.write_all(&early).await {
                Ok(()) if !done => tokio::io::copy(&mut from, &mut to).await.map(drop),
                r => r,
            });
            if res.is_ok() {
                wait_consumed(&keep, &fifo).await;
            }
            res
        }
        // Drain it anyway, so the container never blocks on a full pipe.
        None if !done => ended_normally(tokio::io::copy(&mut from, &mut tokio::io::sink()).await.map(drop)),
        None => Ok(()),
    };
    if let Err(e) = res {
        log::warn!("copy to {}: {e}", fifo.display());
    }
}

/// A pty reports its last slave's close as EIO: the normal end of a copy.
fn ended_normally(res: std::io::Result<()>) -> std::io::Result<()> {
    res.or_else(|e| if e.raw_os_error() == Some(libc::EIO) { Ok(()) } else { Err(e) })
}

/// How long the end of a copy waits for the client to read what is left in
/// its fifo. containerd's client closes its readers once it saw the exit and
/// deleted the process; bytes still unread then are lost. Under load its
/// reader can lag the exit by tens of milliseconds (measured: p99 37 ms at a
/// load of 6 on 2 cores); the bound is for a client that went away.
const CONSUME_LIMIT: Duration = Duration::from_millis(500);

/// Waits until the client read everything in the fifo (its copy of the
/// output has then reached the client), at most [`CONSUME_LIMIT`]. Checked
/// every millisecond: a fifo wakes its writer when there is room, never when
/// it is empty. This runs once per output, after the process closed it.
async fn wait_consumed(keep: &std::fs::File, fifo: &Path) {
    let start = tokio::time::Instant::now();
    loop {
        let left = unread(keep);
        if left == 0 {
            return;
        }
        if start.elapsed() >= CONSUME_LIMIT {
            log::warn!("{}: the client left {left} bytes unread for {} ms; reporting the exit", fifo.display(), CONSUME_LIMIT.as_millis());
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Bytes in a pipe not yet read (FIONREAD); 0 if the kernel will not say.
fn unread(fd: &impl AsRawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer we pass.
    match unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } {
        0 => usize::try_from(n).unwrap_or(0),
        _ => 0,
    }
}

/// Copies containerd's stdin fifo into the container until every writer
/// (the client's and, after CloseIO, no longer the shim's) is gone.
async fn copy_in(mut from: pipe::Receiver, mut to: impl AsyncWrite + Unpin) {
    if let Err(e) = tokio::io::copy(&mut from, &mut to).await {
        log::debug!("copy stdin: {e}");
    }
}

impl IoHandle {
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
        self.stdin_keepalive.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// The process is gone: stop the stdin copy, whoever still writes.
    fn abort_stdin(&self) {
        self.close_stdin();
        if let Some(task) = self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }

    /// Waits until every output copy reached EOF, at most `limit`.
    pub async fn drain(&self, limit: Duration) {
        let tasks: Vec<_> = std::mem::take(&mut *self.outputs.lock().unwrap_or_else(|p| p.into_inner()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_decode_like_containerd_writes_them() {
        assert_eq!(parse_target("").expect("empty"), Target::Null);
        assert_eq!(parse_target("/run/x/stdout").expect("fifo"), Target::Fifo("/run/x/stdout".into()));
        assert_eq!(parse_target("file:///var/log/c.log").expect("file"), Target::File("/var/log/c.log".into()));
        assert_eq!(
            parse_target("binary:///usr/bin/logger?id=1&verbose").expect("binary"),
            Target::Binary { path: "/usr/bin/logger".into(), args: vec!["id".into(), "1".into(), "verbose".into()] }
        );
    }

    #[test]
    fn escaped_paths_and_args_are_decoded() {
        assert_eq!(parse_target("file:///logs%20dir/my%20app%20%281%29.log").expect("file"), Target::File("/logs dir/my app (1).log".into()));
        assert_eq!(
            parse_target("binary:///opt/my%20logger?tag=a%20b&x=1+2").expect("binary"),
            Target::Binary { path: "/opt/my logger".into(), args: vec!["tag".into(), "a b".into(), "x".into(), "1 2".into()] }
        );
        assert_eq!(parse_target("file:///x%zz").expect_err("bad escape").code(), Code::INVALID_ARGUMENT);
    }

    #[test]
    fn bad_uris_are_invalid_arguments() {
        for uri in ["ftp:///x", "file://relative/path", "relative", "binary://"] {
            let err = parse_target(uri).expect_err(uri);
            assert_eq!(err.code(), Code::INVALID_ARGUMENT, "{uri}");
            assert!(err.to_string().contains(uri), "message names the uri: {err}");
        }
    }

    /// The exit of a process waits until the client has read its last
    /// output: containerd's client drops whatever it has not read once it
    /// saw the exit.
    #[test]
    fn end_of_copy_waits_for_the_client_to_read() {
        use std::io::{Read, Write};
        let dir = std::env::temp_dir().join(format!("keel-consume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let fifo = dir.join("stdout");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let nb = |read: bool| {
            FileOptions::new().read(read).write(!read).custom_flags(libc::O_NONBLOCK).open(&fifo).expect("open fifo")
        };
        let mut client = nb(true);
        let keep = nb(true);
        let mut writer = nb(false);
        writer.write_all(b"last words\n").expect("write");
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        rt.block_on(async {
            let waiting = tokio::time::timeout(Duration::from_millis(100), wait_consumed(&keep, &fifo)).await;
            assert!(waiting.is_err(), "returned while 11 bytes were still unread");
            let mut got = [0u8; 64];
            let n = client.read(&mut got).expect("client read");
            assert_eq!(&got[..n], b"last words\n");
            tokio::time::timeout(Duration::from_millis(100), wait_consumed(&keep, &fifo))
                .await
                .expect("returns once the client has read everything");
            // A client that never reads holds the exit back only so long.
            writer.write_all(b"unread").expect("write");
            let t = std::time::Instant::now();
            wait_consumed(&keep, &fifo).await;
            assert!(t.elapsed() >= CONSUME_LIMIT && t.elapsed() < CONSUME_LIMIT * 3, "{:?}", t.elapsed());
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
