//! Drives the OCI runtime binary (runc, crun): one method per runtime command.
//!
//! Every invocation goes through the [`Reaper`], so the shim's subreaper never
//! steals a runtime command's exit status; no lock of the caller is held here.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use containerd_shim_protos::ttrpc::Code;
use tokio::io::AsyncReadExt;

use crate::reaper::Reaper;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Environment variable (inherited from containerd) bounding one runtime call, in seconds.
pub const TIMEOUT_ENV: &str = "KEEL_RUNTIME_TIMEOUT";

fn configured_timeout() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT)
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container {id}: OCI runtime binary {binary:?} not found: {source}")]
    Missing { binary: String, id: String, source: std::io::Error },
    #[error("container {id}: OCI runtime binary {binary:?} not found in PATH {search:?}")]
    NotInPath { binary: String, id: String, search: String },
    #[error("container {id}: OCI runtime binary {}: {source}", path.display())]
    Unreadable { path: PathBuf, id: String, source: std::io::Error },
    #[error("container {id}: OCI runtime binary {} is not executable: {why}", path.display())]
    NotExecutable { path: PathBuf, id: String, why: String },
    #[error("container {id}: runtime root {} cannot be created: {source}", path.display())]
    Root { path: PathBuf, id: String, source: std::io::Error },
    #[error("failed to run OCI runtime {binary:?}: {source}")]
    Spawn { binary: String, source: std::io::Error },
    #[error("{binary} {op} {id} failed: {message}")]
    Failed { binary: String, op: &'static str, id: String, message: String },
    #[error("{binary} {op} {id} did not finish within {secs}s and was killed")]
    Timeout { binary: String, op: &'static str, id: String, secs: u64 },
    #[error("{binary} {op} {id}: unexpected output: {message}")]
    Output { binary: String, op: &'static str, id: String, message: String },
}

impl RuntimeError {
    /// The gRPC code of a failure, decided per operation as runc-v2 does:
    /// only kill and delete give meaning to the runtime's words; anything
    /// else the runtime says is `Unknown`, as runc-v2 passes it on.
    pub fn code(&self) -> Code {
        match self {
            RuntimeError::Missing { .. }
            | RuntimeError::NotInPath { .. }
            | RuntimeError::Unreadable { .. }
            | RuntimeError::NotExecutable { .. }
            | RuntimeError::Root { .. } => Code::FAILED_PRECONDITION,
            RuntimeError::Timeout { .. } => Code::DEADLINE_EXCEEDED,
            RuntimeError::Failed { op, message, .. } => failure_code(op, message),
            RuntimeError::Spawn { .. } | RuntimeError::Output { .. } => Code::INTERNAL,
        }
    }

    /// A kill that found the process (or the container) already gone.
    pub fn already_gone(&self) -> bool {
        self.code() == Code::NOT_FOUND
    }
}

/// What a runtime's error message means for operation `op`.
fn failure_code(op: &str, message: &str) -> Code {
    let m = message.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
    match op {
        // A kill that lands after the process died but before its exit was
        // recorded: containerd and the CRI plugin take NotFound as done
        // (runc-v2's checkKillError gives the same answer).
        "kill" if any(&["process already finished", "container not running", "no such process", "does not exist"]) => Code::NOT_FOUND,
        // A container the runtime no longer knows is what delete wants.
        "delete" if any(&["does not exist", "not found"]) => Code::NOT_FOUND,
        _ => Code::UNKNOWN,
    }
}

type Result<T> = std::result::Result<T, RuntimeError>;

/// The container's stdio as the runtime process gets it; `None` is /dev/null.
#[derive(Default)]
pub struct RuntimeIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

#[derive(Clone, Debug, Default)]
pub struct CreateOpts {
    pub pid_file: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    /// Restore from this checkpoint image instead of creating.
    pub restore_from: Option<PathBuf>,
    pub criu_work_path: Option<PathBuf>,
}

#[derive(Clone)]
pub struct Runtime {
    binary: String,
    root: PathBuf,
    log: PathBuf,
    systemd_cgroup: bool,
    timeout: Duration,
    reaper: Reaper,
}

fn stdio(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

impl Runtime {
    pub fn new(binary: &str, root: &Path, bundle: &Path, systemd_cgroup: bool, reaper: Reaper) -> Self {
        Runtime {
            binary: binary.into(),
            root: root.to_path_buf(),
            log: bundle.join("log.json"),
            systemd_cgroup,
            timeout: configured_timeout(),
            reaper,
        }
    }

    fn command(&self, op: &str) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root).arg("--log").arg(&self.log).args(["--log-format", "json"]);
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.arg(op);
        cmd
    }

    /// Runs one runtime command; returns its stdout. With `io` set, the
    /// runtime's stdio is the container's, so errors come from the log file.
    async fn run(&self, op: &'static str, id: &str, mut cmd: Command, io: Option<RuntimeIo>) -> Result<Vec<u8>> {
        let capture = io.is_none();
        match io {
            Some(io) => {
                cmd.stdin(stdio(io.stdin)).stdout(stdio(io.stdout)).stderr(stdio(io.stderr));
            }
            None => {
                cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        log::debug!("runtime: {:?}", cmd);
        let (mut child, exited) = self.reaper.spawn(&mut cmd).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                RuntimeError::Missing { binary: self.binary.clone(), id: id.into(), source }
            } else {
                RuntimeError::Spawn { binary: self.binary.clone(), source }
            }
        })?;
        let pid = child.id();
        let out = child.stdout.take().map(OwnedFd::from);
        let err = child.stderr.take().map(OwnedFd::from);
        drop(child);
        let collect = async {
            let (o, e) = tokio::join!(read_all(out), read_all(err));
            let status = exited.await.unwrap_or(-1);
            (status, o, e)
        };
        let (status, stdout, stderr) = match tokio::time::timeout(self.timeout, collect).await {
            Ok(r) => r,
            Err(_) => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
                return Err(RuntimeError::Timeout { binary: self.binary.clone(), op, id: id.into(), secs: self.timeout.as_secs() });
            }
        };
        if status == 0 {
            return Ok(stdout);
        }
        let mut message = String::from_utf8_lossy(&stderr).trim().to_string();
        if message.is_empty() || !capture {
            message = last_error(&self.log).unwrap_or(message);
        }
        if message.is_empty() {
            message = format!("exit status {status}");
        }
        Err(RuntimeError::Failed { binary: self.binary.clone(), op, id: id.into(), message })
    }

    /// A command that takes only the container id.
    async fn plain(&self, op: &'static str, id: &str) -> Result<()> {
        let mut cmd = self.command(op);
        cmd.arg(id);
        self.run(op, id, cmd, None).await.map(drop)
    }
}

/// The OCI runtime as the container core sees it: one method per runtime
/// command. [`Runtime`] drives runc or crun; unit tests of `container`
/// script one, so exit ordering is tested without containerd or root.
#[async_trait::async_trait]
pub trait OciRuntime: Send + Sync {
    /// What every call needs, checked before the first one (Create).
    fn preflight(&self, id: &str) -> Result<()>;
    async fn create(&self, id: &str, bundle: &Path, opts: &CreateOpts, io: RuntimeIo) -> Result<()>;
    async fn start(&self, id: &str) -> Result<()>;
    async fn exec(&self, id: &str, process_json: &Path, pid_file: &Path, console_socket: Option<&Path>, io: RuntimeIo) -> Result<()>;
    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()>;
    /// Already gone counts as done.
    async fn delete(&self, id: &str, force: bool) -> Result<()>;
    async fn pause(&self, id: &str) -> Result<()>;
    async fn resume(&self, id: &str) -> Result<()>;
    /// `resources_file` holds the OCI LinuxResources JSON.
    async fn update(&self, id: &str, resources_file: &Path) -> Result<()>;
    async fn checkpoint(&self, id: &str, args: &[String]) -> Result<()>;
    async fn ps(&self, id: &str) -> Result<Vec<i32>>;
}

#[async_trait::async_trait]
impl OciRuntime for Runtime {
    fn preflight(&self, id: &str) -> Result<()> {
        find_binary(&self.binary, std::env::var_os("PATH").as_deref(), id)?;
        // runc makes its root with 0700 too; making it here tells why it can't be.
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.root).map_err(|source| RuntimeError::Root {
            path: self.root.clone(),
            id: id.into(),
            source,
        })
    }

    async fn create(&self, id: &str, bundle: &Path, opts: &CreateOpts, io: RuntimeIo) -> Result<()> {
        let op = if opts.restore_from.is_some() { "restore" } else { "create" };
        let mut cmd = self.command(op);
        cmd.arg("--bundle").arg(bundle).arg("--pid-file").arg(&opts.pid_file);
        if let Some(sock) = &opts.console_socket {
            cmd.arg("--console-socket").arg(sock);
        }
        if opts.no_pivot {
            cmd.arg("--no-pivot");
        }
        if opts.no_new_keyring {
            cmd.arg("--no-new-keyring");
        }
        if let Some(image) = &opts.restore_from {
            // The shim is the subreaper; runc must not become one.
            cmd.args(["--detach", "--no-subreaper"]).arg("--image-path").arg(image);
            if let Some(work) = &opts.criu_work_path {
                cmd.arg("--work-path").arg(work);
            }
        }
        cmd.arg(id);
        self.run(op, id, cmd, Some(io)).await.map(drop)
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.plain("start", id).await
    }

    async fn exec(&self, id: &str, process_json: &Path, pid_file: &Path, console_socket: Option<&Path>, io: RuntimeIo) -> Result<()> {
        let mut cmd = self.command("exec");
        cmd.arg("--detach").arg("--process").arg(process_json).arg("--pid-file").arg(pid_file);
        if let Some(sock) = console_socket {
            cmd.arg("--console-socket").arg(sock);
        }
        cmd.arg(id);
        self.run("exec", id, cmd, Some(io)).await.map(drop)
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let mut cmd = self.command("kill");
        if all {
            cmd.arg("--all");
        }
        cmd.arg(id).arg(signal.to_string());
        self.run("kill", id, cmd, None).await.map(drop)
    }

    async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut cmd = self.command("delete");
        if force {
            cmd.arg("--force");
        }
        cmd.arg(id);
        match self.run("delete", id, cmd, None).await {
            // Already gone is what delete wants.
            Err(e) if e.code() == Code::NOT_FOUND => Ok(()),
            r => r.map(drop),
        }
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.plain("pause", id).await
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.plain("resume", id).await
    }

    /// `resources_file` holds the OCI LinuxResources JSON.
    async fn update(&self, id: &str, resources_file: &Path) -> Result<()> {
        let mut cmd = self.command("update");
        cmd.arg("--resources").arg(resources_file).arg(id);
        self.run("update", id, cmd, None).await.map(drop)
    }

    async fn checkpoint(&self, id: &str, args: &[String]) -> Result<()> {
        let mut cmd = self.command("checkpoint");
        cmd.args(args).arg(id);
        self.run("checkpoint", id, cmd, None).await.map(drop)
    }

    async fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let mut cmd = self.command("ps");
        cmd.args(["--format", "json"]).arg(id);
        let out = self.run("ps", id, cmd, None).await?;
        let text = String::from_utf8_lossy(&out);
        let text = text.trim();
        if text.is_empty() || text == "null" {
            return Ok(Vec::new());
        }
        serde_json::from_str(text).map_err(|e| RuntimeError::Output {
            binary: self.binary.clone(),
            op: "ps",
            id: id.into(),
            message: format!("{e}: {text:.200}"),
        })
    }
}

/// Where `binary` runs from, as execvp would find it: a name with a slash is
/// a path; a bare name is looked up in `search` (glibc's default when unset).
fn find_binary(binary: &str, search: Option<&std::ffi::OsStr>, id: &str) -> Result<PathBuf> {
    if binary.contains('/') {
        return executable(Path::new(binary), id);
    }
    let search = search.unwrap_or(std::ffi::OsStr::new("/bin:/usr/bin"));
    let mut refused = None;
    for dir in std::env::split_paths(search) {
        let candidate = dir.join(binary);
        if candidate.exists() {
            match executable(&candidate, id) {
                Ok(p) => return Ok(p),
                // execvp too goes on past a file it may not run, and reports it if nothing else is found.
                Err(e) => refused = refused.or(Some(e)),
            }
        }
    }
    Err(refused.unwrap_or_else(|| RuntimeError::NotInPath {
        binary: binary.into(),
        id: id.into(),
        search: search.to_string_lossy().into_owned(),
    }))
}

fn executable(path: &Path, id: &str) -> Result<PathBuf> {
    let meta = std::fs::metadata(path).map_err(|source| RuntimeError::Unreadable { path: path.into(), id: id.into(), source })?;
    let refuse = |why: String| Err(RuntimeError::NotExecutable { path: path.into(), id: id.into(), why });
    if !meta.is_file() {
        return refuse("not a regular file".into());
    }
    let mode = meta.permissions().mode();
    if mode & 0o111 == 0 {
        return refuse(format!("mode {:04o} has no execute bit", mode & 0o7777));
    }
    Ok(path.to_path_buf())
}

async fn read_all(fd: Option<OwnedFd>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(fd) = fd {
        if let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            let _ = rx.read_to_end(&mut buf).await;
        }
    }
    buf
}

/// The last error the runtime wrote to its JSON log (runc and crun both
/// write `{"level":"error","msg":...}` lines).
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v.get("level")?.as_str()? == "error").then(|| v.get("msg")?.as_str().map(str::to_string))?
    })
}

/// Reads the pid the runtime wrote; runc writes it before it exits.
pub fn read_pid_file(path: &Path) -> std::io::Result<i32> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("pid file {} holds {:?}", path.display(), text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_picks_the_newest_error_line() {
        let dir = std::env::temp_dir().join(format!("keel-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let log = dir.join("log.json");
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"old\"}\n{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"container_linux.go: no such file\"}\n{\"level\":\"info\",\"msg\":\"i\"}\n",
        )
        .expect("write log");
        assert_eq!(last_error(&log).as_deref(), Some("container_linux.go: no such file"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn runtime_failures_map_to_grpc_codes_per_operation() {
        let failed = |op: &'static str, m: &str| RuntimeError::Failed { binary: "runc".into(), op, id: "c".into(), message: m.into() };
        // runc and crun's words for a kill that came too late.
        for m in
            ["container not running", "os: process already finished", "kill container: No such process", "container \"c\" does not exist"]
        {
            assert_eq!(failed("kill", m).code(), Code::NOT_FOUND, "kill: {m}");
        }
        assert_eq!(failed("kill", "permission denied").code(), Code::UNKNOWN);
        assert_eq!(failed("delete", "container \"c\" does not exist").code(), Code::NOT_FOUND);
        // The same words from another command say nothing about a finished process.
        assert_eq!(failed("exec", "cannot exec in a stopped container: container not running").code(), Code::UNKNOWN);
        assert_eq!(failed("pause", "container \"c\" does not exist").code(), Code::UNKNOWN);
        assert_eq!(failed("start", "boom").code(), Code::UNKNOWN);
    }

    #[test]
    fn a_runtime_binary_is_found_as_execvp_would() {
        let dir = std::env::temp_dir().join(format!("keel-bin-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).expect("dir a");
        std::fs::create_dir_all(&b).expect("dir b");
        let write = |p: &Path, mode: u32| {
            std::fs::write(p, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        write(&a.join("rt"), 0o644);
        write(&b.join("rt"), 0o755);
        let search = std::env::join_paths([&a, &b]).expect("join");
        // A file without an execute bit is passed over for the next one.
        assert_eq!(find_binary("rt", Some(&search), "c").expect("found"), b.join("rt"));
        // Alone, it is the answer, with its mode.
        let only_a = a.clone().into_os_string();
        let e = find_binary("rt", Some(&only_a), "c").expect_err("not executable");
        assert!(matches!(e, RuntimeError::NotExecutable { .. }), "{e}");
        assert!(e.to_string().contains("mode 0644"), "{e}");
        assert!(matches!(find_binary("nope", Some(&search), "c"), Err(RuntimeError::NotInPath { .. })));
        assert!(matches!(find_binary(&a.display().to_string(), None, "c"), Err(RuntimeError::NotExecutable { .. })));
        let e = find_binary(&dir.join("gone/rt").display().to_string(), None, "c").expect_err("missing");
        assert!(matches!(e, RuntimeError::Unreadable { .. }) && e.code() == Code::FAILED_PRECONDITION, "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn pid_file_must_hold_a_positive_pid() {
        let dir = std::env::temp_dir().join(format!("keel-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let f = dir.join("pid");
        std::fs::write(&f, "1234").expect("write");
        assert_eq!(read_pid_file(&f).expect("pid"), 1234);
        std::fs::write(&f, "garbage").expect("write");
        assert!(read_pid_file(&f).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
