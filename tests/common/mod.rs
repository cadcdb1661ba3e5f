//! Integration-test harness for Keel: private containerd daemons (1.6 and 2.x),
//! `ctr` with timeouts, an events watcher, a pty runner, a busybox rootfs and
//! helpers that look for leftovers (shim processes, mounts, runtime state).
//!
//! Plain std Rust plus `libc` and `serde_json`. Every child process is run with
//! a deadline: a hung shim makes a test fail, never hang.
//!
//! Nothing here touches the system containerd (/run/containerd/containerd.sock,
//! /var/lib/containerd). What cannot be made private is noted where it happens:
//! shims put their ttrpc sockets in /run/containerd/s/ and runc keeps its state
//! in /run/containerd/runc/<namespace>/ (the default root, which the tests check
//! for leftovers); every test uses its own namespace, and `Drop` removes what
//! its own shims leave there.
#![allow(dead_code)]

// The test-declaring macros every suite uses (`#[macro_use] mod common;`).
// Defined before the submodules so that they can use them too.

/// `per_line!(name, f)`: module `name` with one test per containerd line,
/// each calling `f(Line)` (a function path or a closure).
#[allow(unused_macros)]
macro_rules! per_line {
    ($name:ident, $f:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn containerd_1_6() {
                let f: fn(Line) = $f;
                f(Line::V16)
            }
            #[test]
            fn containerd_2() {
                let f: fn(Line) = $f;
                f(Line::V2)
            }
        }
    };
}

/// `scenarios!([(module, RUNTIME, runner), ...], [s1, s2, ...])`: for each
/// runtime variant a module holding, per scenario `s(Line, &str)`, one test
/// per containerd line; `runner` wraps the call (`common::direct`, or
/// `common::production::as_crun_variant`).
#[allow(unused_macros)]
macro_rules! scenarios {
    ([$(($module:ident, $rt:ident, $run:path)),+ $(,)?], $ss:tt) => {
        $( scenarios!(@variant $module, $rt, $run, $ss); )+
    };
    (@variant $module:ident, $rt:ident, $run:path, [$($s:ident),* $(,)?]) => {
        mod $module {
            $(
                mod $s {
                    use crate::common::{Line, $rt};
                    #[test]
                    fn containerd_1_6() { $run(|| crate::$s(Line::V16, $rt)) }
                    #[test]
                    fn containerd_2() { $run(|| crate::$s(Line::V2, $rt)) }
                }
            )*
        }
    };
}

/// The plain runner for `scenarios!`.
pub fn direct<R>(f: impl FnOnce() -> R) -> R {
    f()
}

pub mod api;
pub mod control;
pub mod production;
pub mod robust;
pub mod scenario;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Runtime type of the reference shim shipped with containerd.
pub const RUNC_V2: &str = "io.containerd.runc.v2";
/// Runtime type of the shim under test.
pub const KEEL_V1: &str = "io.containerd.keel.v1";

/// Where `scripts/install-deps.sh` unpacks containerd 2.x.
pub const CONTAINERD2_BIN: &str = "/var/lib/keel-dev/containerd2/usr/bin";
/// The shared busybox root filesystem.
pub const ROOTFS_DIR: &str = "/var/lib/keel-dev/rootfs";
/// runc's default `--root`; the runc-v2 shim (and Keel) keep per-namespace state below it.
pub const RUNC_DEFAULT_ROOT: &str = "/run/containerd/runc";
/// Parent of every private containerd directory.
pub const IT_BASE: &str = "/tmp/keel-it";
/// PATH given to containers (ctr's `--rootfs` spec has no environment at all).
pub const CONTAINER_PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// Default deadline of one `ctr` call.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn next_n() -> u64 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A process-wide unique name: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), next_n())
}

// ---------------------------------------------------------------------------
// containerd lines
// ---------------------------------------------------------------------------

/// Which containerd release line a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// Debian bookworm's containerd 1.6 in /usr/bin.
    V16,
    /// containerd 2.x from Debian sid, unpacked under /var/lib/keel-dev/containerd2.
    V2,
}

impl Line {
    pub fn name(self) -> &'static str {
        match self {
            Line::V16 => "containerd-1.6",
            Line::V2 => "containerd-2.x",
        }
    }

    pub fn bin_dir(self) -> &'static Path {
        match self {
            Line::V16 => Path::new("/usr/bin"),
            Line::V2 => Path::new(CONTAINERD2_BIN),
        }
    }

    pub fn containerd(self) -> PathBuf {
        self.bin_dir().join("containerd")
    }

    pub fn ctr(self) -> PathBuf {
        self.bin_dir().join("ctr")
    }

    /// The runc-v2 shim of the same release (the reference runtime).
    pub fn runc_shim(self) -> PathBuf {
        self.bin_dir().join("containerd-shim-runc-v2")
    }

    /// Panics (never skips) when a binary of this line is missing.
    pub fn check_installed(self) {
        for p in [self.containerd(), self.ctr(), self.runc_shim()] {
            if !is_executable(&p) {
                panic!("{} is missing ({} not found or not executable): run `scripts/install-deps.sh` first", self.name(), p.display());
            }
        }
        for p in ["/bin/busybox", "/usr/sbin/runc"] {
            if !is_executable(Path::new(p)) {
                panic!("{p} is missing: run `scripts/install-deps.sh` first");
            }
        }
    }
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

// ---------------------------------------------------------------------------
// running commands with a deadline
// ---------------------------------------------------------------------------

/// What a command did.
#[derive(Debug, Clone)]
pub struct Output {
    /// What was run, for messages.
    pub what: String,
    /// Exit code, `None` when killed by a signal (or by the deadline).
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The deadline passed and the command was killed.
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// A readable account for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "`{}` -> code {:?}{} after {:?}\n--- stdout ({} bytes) ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.code,
            if self.timed_out { " (TIMED OUT, killed)" } else { "" },
            self.elapsed,
            self.stdout.len(),
            truncate(&self.out(), 4000),
            truncate(&self.err(), 4000)
        )
    }
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... [{} more bytes]", &s[..cut], s.len() - cut)
}

fn describe_cmd(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Waits for `child` until `deadline`; kills it (SIGKILL) when the deadline passes.
/// Returns the status and whether it timed out.
pub fn wait_deadline(child: &mut Child, deadline: Instant) -> (Option<ExitStatus>, bool) {
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return (Some(st), false),
            Ok(None) => {}
            Err(_) => return (None, false),
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            let st = child.wait().ok();
            return (st, true);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// What a command gets on its stdin.
pub enum Input {
    /// /dev/null
    Null,
    /// These bytes, then EOF.
    Bytes(Vec<u8>),
    /// A pipe handed to this function (on its own thread); EOF when it drops it.
    Feed(Box<dyn FnOnce(std::process::ChildStdin) + Send>),
}

/// Runs `cmd` with stdout/stderr captured, `stdin` fed (then closed) when given,
/// and a deadline after which the command is killed.
pub fn run_cmd(cmd: Command, stdin: Option<Vec<u8>>, timeout: Duration) -> Output {
    run_cmd_input(cmd, stdin.map(Input::Bytes).unwrap_or(Input::Null), timeout)
}

/// [`run_cmd`] with any [`Input`].
pub fn run_cmd_input(mut cmd: Command, input: Input, timeout: Duration) -> Output {
    let what = describe_cmd(&cmd);
    cmd.stdin(if matches!(input, Input::Null) { Stdio::null() } else { Stdio::piped() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
    match input {
        Input::Null => {}
        Input::Bytes(data) => {
            let mut w = child.stdin.take().unwrap();
            thread::spawn(move || {
                let _ = w.write_all(&data);
                // dropping `w` closes the pipe: the reader sees EOF
            });
        }
        Input::Feed(f) => {
            let w = child.stdin.take().unwrap();
            thread::spawn(move || f(w));
        }
    }
    let rx_out = read_all_bg(child.stdout.take().unwrap());
    let rx_err = read_all_bg(child.stderr.take().unwrap());
    let (status, timed_out) = wait_deadline(&mut child, start + timeout);
    // A grandchild could keep a pipe open: do not wait for it forever.
    let grace = Duration::from_secs(5);
    let stdout = rx_out.recv_timeout(grace).unwrap_or_default();
    let stderr = rx_err.recv_timeout(grace).unwrap_or_default();
    Output { what, code: status.and_then(|s| s.code()), stdout, stderr, timed_out, elapsed: start.elapsed() }
}

fn read_all_bg<R: Read + Send + 'static>(mut r: R) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Polls `f` every 20 ms until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// rootfs
// ---------------------------------------------------------------------------

/// A busybox root filesystem (default /var/lib/keel-dev/rootfs, or $KEEL_ROOTFS),
/// built once, with the same layout as `scripts/make-rootfs.sh`: either may
/// build it first, and a tree with an executable bin/busybox counts as made.
///
/// Idempotent and safe with parallel tests and parallel test binaries: it is
/// built in a temporary sibling directory under an flock and renamed into
/// place, so nobody sees a half-made tree. An existing tree is never replaced.
pub fn rootfs() -> PathBuf {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = std::env::var_os("KEEL_ROOTFS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(ROOTFS_DIR));
        let made = |d: &Path| is_executable(&d.join("bin/busybox")) && d.join("bin/sh").exists();
        if made(&dir) {
            return dir;
        }
        if !is_executable(Path::new("/bin/busybox")) {
            panic!("/bin/busybox is missing: run `scripts/install-deps.sh` first");
        }
        let parent = dir.parent().unwrap();
        fs::create_dir_all(parent).expect("create the rootfs's parent directory");
        let lock = File::create(parent.join("rootfs.lock")).expect("create rootfs.lock");
        // SAFETY: plain flock on an fd we own.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        if !made(&dir) {
            let tmp = parent.join(format!("rootfs.tmp-{}-{}", std::process::id(), nanos()));
            build_rootfs(&tmp);
            // rename(2) fails on a non-empty target: whoever came first wins.
            if fs::rename(&tmp, &dir).is_err() {
                let _ = fs::remove_dir_all(&tmp);
            }
            assert!(made(&dir), "{} exists but has no bin/busybox and bin/sh: remove it and rerun", dir.display());
        }
        // SAFETY: as above.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
        dir
    })
    .clone()
}

fn nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

fn build_rootfs(tmp: &Path) {
    let _ = fs::remove_dir_all(tmp);
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        fs::create_dir_all(tmp.join(d)).unwrap();
    }
    fs::set_permissions(tmp.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy("/bin/busybox", tmp.join("bin/busybox")).expect("copy /bin/busybox");
    fs::set_permissions(tmp.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().expect("busybox --list");
    assert!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", tmp.join("bin").join(applet)).unwrap();
    }
    fs::write(tmp.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(tmp.join("etc/group"), "root:x:0:\n").unwrap();
}

// ---------------------------------------------------------------------------
// private containerd
// ---------------------------------------------------------------------------

/// CRI (1.6 and 2.x ids) and image transfer (it needs image verifiers; 2.x's
/// CRI image service is built on it): disabled for plain-ctr tests, kept by
/// the CRI tests' containerd.
const CRI_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.images",
    "io.containerd.cri.v1.runtime",
    "io.containerd.podsandbox.controller.v1.podsandbox",
    "io.containerd.grpc.v1.sandbox-controllers",
    "io.containerd.transfer.v1.local",
    "io.containerd.grpc.v1.transfer",
    "io.containerd.image-verifier.v1.bindir",
];

/// Plugins no test needs; with CRI_PLUGINS, the plain-ctr tests' disabled
/// list. Names of both lines are listed; each line ignores the ids it does
/// not know. containerd 1.6 needs `io.containerd.runtime.v1.linux` kept,
/// else its tasks service fails to load.
pub const UNUSED_PLUGINS: &[&str] = &[
    // snapshotters other than native and overlayfs
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.snapshotter.v1.erofs",
    "io.containerd.differ.v1.erofs",
    // /opt/containerd, tracing, NRI, restart monitor
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.nri.v1.nri",
    "io.containerd.internal.v1.restart",
    "io.containerd.monitor.container.v1.restart",
];

fn config_toml() -> String {
    let list: Vec<String> = CRI_PLUGINS.iter().chain(UNUSED_PLUGINS).map(|p| format!("  \"{p}\",")).collect();
    // `version = 2` is accepted by 1.6 as is and migrated in memory by 2.x
    // (it logs a warning "Configuration migrated from version 2").
    format!(
        "version = 2\noom_score = 0\ndisabled_plugins = [\n{}\n]\n\n[plugins]\n  [plugins.\"io.containerd.gc.v1.scheduler\"]\n    pause_threshold = 0.02\n",
        list.join("\n")
    )
}

/// The last `n` lines of the file at `path`.
pub fn tail_lines(path: &Path, n: usize) -> std::io::Result<String> {
    let s = fs::read_to_string(path)?;
    let lines: Vec<&str> = s.lines().collect();
    Ok(lines[lines.len().saturating_sub(n)..].join("\n"))
}

/// One private containerd daemon with its own root, state, socket and config.
pub struct Containerd {
    pub line: Line,
    /// /tmp/keel-it/<unique>
    pub dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub sock: PathBuf,
    pub log: PathBuf,
    /// Directory of ctr's IO fifos (`--fifo-dir`), instead of /run/containerd/fifo.
    pub fifo_dir: PathBuf,
    /// Directory first in containerd's PATH, holding the shims.
    pub bin_dir: PathBuf,
    /// The default namespace of this test.
    pub ns: String,
    child: Mutex<Option<Child>>,
    pid: i32,
    /// Shim sockets that existed before this containerd started.
    sockets_before: BTreeSet<String>,
}

/// Where shims put their sockets (not configurable per containerd).
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

fn shim_socket_names() -> BTreeSet<String> {
    fs::read_dir(SHIM_SOCKET_DIR).map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
}

impl Containerd {
    /// Starts a private containerd of `line`, waits until it answers `ctr version`.
    pub fn start(line: Line) -> Containerd {
        line.check_installed();
        let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-keel-v1"));
        assert!(shim.exists(), "the freshly built shim {} is missing", shim.display());

        let sockets_before = shim_socket_names();
        let n = next_n();
        let dir = PathBuf::from(IT_BASE).join(format!(
            "{}-{}-{}",
            match line {
                Line::V16 => "c16",
                Line::V2 => "c2",
            },
            std::process::id(),
            n
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create private containerd dir");
        let root = dir.join("root");
        let state = dir.join("state");
        let bin_dir = dir.join("bin");
        let fifo_dir = dir.join("fifo");
        for d in [&root, &state, &bin_dir, &fifo_dir] {
            fs::create_dir_all(d).unwrap();
        }
        // The shim under test, and the runc-v2 shim matching this containerd.
        std::os::unix::fs::symlink(&shim, bin_dir.join("containerd-shim-keel-v1")).unwrap();
        std::os::unix::fs::symlink(line.runc_shim(), bin_dir.join("containerd-shim-runc-v2")).unwrap();
        let config = dir.join("config.toml");
        fs::write(&config, config_toml()).unwrap();
        let sock = dir.join("containerd.sock");
        let log = dir.join("containerd.log");
        let logf = File::create(&log).unwrap();
        let ns = format!("kit-{}-{}", std::process::id(), n);
        let mut cd =
            Containerd { line, dir, root, state, sock, log, fifo_dir, bin_dir, ns, child: Mutex::new(None), pid: 0, sockets_before };
        cd.spawn_daemon(logf);
        cd.wait_answering("start", Duration::from_secs(20));
        cd.ctr_ok(&["namespaces", "create", &cd.ns.clone()]);
        cd
    }

    /// Spawns the daemon with this config, root, state, socket and PATH
    /// (the shims under test first), its output going to `logf`.
    fn spawn_daemon(&mut self, logf: File) {
        let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.bin_dir.display());
        let mut cmd = Command::new(self.line.containerd());
        cmd.arg("--config")
            .arg(self.dir.join("config.toml"))
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--address")
            .arg(&self.sock)
            .arg("--log-level")
            .arg("debug")
            .env("PATH", &path)
            .envs(robust::extra_env())
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .current_dir(&self.dir);
        // Its own process group: a Ctrl-C on `cargo test` does not hit it first.
        cmd.process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.line.containerd().display()));
        self.pid = child.id() as i32;
        *self.child.lock().unwrap() = Some(child);
    }

    /// Waits until the daemon answers `ctr version`; panics, with its log, if
    /// it exits or stays silent for `limit` (`during` names the occasion).
    fn wait_answering(&self, during: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.lock().unwrap().as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{} exited ({st}) during {during}; log:\n{}", self.line.name(), self.log_tail(60));
            }
            if self.sock.exists() && self.ctr_raw(None, &["version"], None, Duration::from_secs(5)).ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!("{} did not answer within {}s of its {during}; log:\n{}", self.line.name(), limit.as_secs(), self.log_tail(60));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last `n` lines of containerd's log (shim logs are in it too: `-debug`).
    pub fn log_tail(&self, n: usize) -> String {
        tail_lines(&self.log, n).unwrap_or_default()
    }

    /// A container id unique in this process (and so across tests).
    pub fn id(&self, prefix: &str) -> String {
        unique(prefix)
    }

    /// Runs ctr against this containerd in namespace `ns` (`None`: no `-n`).
    pub fn ctr_raw(&self, ns: Option<&str>, args: &[&str], stdin: Option<Vec<u8>>, timeout: Duration) -> Output {
        run_cmd(self.ctr_in(ns, args), stdin, timeout)
    }

    /// `ctr -n <test namespace> args...` with the default deadline.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_raw(Some(&self.ns), args, None, CTR_TIMEOUT)
    }

    pub fn ctr_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        self.ctr_raw(Some(&self.ns), args, None, timeout)
    }

    /// ctr with `input` on its stdin (closed after it).
    pub fn ctr_stdin(&self, args: &[&str], input: &[u8], timeout: Duration) -> Output {
        self.ctr_raw(Some(&self.ns), args, Some(input.to_vec()), timeout)
    }

    /// ctr with stdin fed by `feed` (see [`Input::Feed`]).
    pub fn ctr_feed(&self, args: &[&str], feed: Box<dyn FnOnce(std::process::ChildStdin) + Send>, timeout: Duration) -> Output {
        let mut cmd = Command::new(self.line.ctr());
        cmd.arg("--address")
            .arg(&self.sock)
            .arg("--namespace")
            .arg(&self.ns)
            .args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE");
        run_cmd_input(cmd, Input::Feed(feed), timeout)
    }

    /// `ctr task ls` as (id, pid, status); empty if ctr fails (a waiter then
    /// times out and shows the listing).
    pub fn task_list(&self) -> Vec<(String, u32, String)> {
        self.ctr(&["tasks", "ls"])
            .out()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3).then(|| (f[0].to_string(), f[1].parse().unwrap_or(0), f[2].to_string()))
            })
            .collect()
    }

    /// The arguments of `ctr tasks exec` (fifos in this daemon's fifo dir).
    pub fn exec_args(&self, flags: &[&str], id: &str, exec_id: &str, cmd: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "tasks".into(),
            "exec".into(),
            "--fifo-dir".into(),
            self.fifo_dir.to_string_lossy().into_owned(),
            "--exec-id".into(),
            exec_id.into(),
        ];
        a.extend(flags.iter().map(|s| s.to_string()));
        a.push(id.into());
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    /// ctr that must succeed; returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        if !o.ok() {
            panic!("ctr failed: {}\n--- containerd log tail ---\n{}", o.describe(), self.log_tail(30));
        }
        o.out()
    }

    /// ctr in the background (e.g. `ctr events`), stdout piped, stderr to a file.
    pub fn ctr_spawn(&self, ns: Option<&str>, args: &[&str]) -> Child {
        let mut cmd = self.ctr_in(ns, args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        cmd.spawn().expect("spawn ctr")
    }

    /// A ctr command to run under a pty (see [`PtyProc`]).
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        self.ctr_in(Some(&self.ns), args)
    }

    /// ctr against this containerd in namespace `ns` (`None`: no `-n`), deaf
    /// to the caller's CONTAINERD_* environment.
    fn ctr_in(&self, ns: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.line.ctr());
        cmd.arg("--address").arg(&self.sock);
        if let Some(ns) = ns {
            cmd.arg("--namespace").arg(ns);
        }
        cmd.args(args).env_remove("CONTAINERD_ADDRESS").env_remove("CONTAINERD_NAMESPACE").env_remove("CONTAINERD_SNAPSHOTTER");
        cmd
    }

    /// Starts `ctr events` and waits until it demonstrably receives events.
    pub fn events(&self) -> EventsWatcher {
        let w = EventsWatcher::new(self.ctr_spawn(None, &["events"]));
        // Subscription is asynchronous: poke a namespace label until the
        // watcher sees the update, so nothing after this call is missed.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let token = unique("sync");
            let label = format!("keel.test/events-sync={token}");
            self.ctr_raw(None, &["namespaces", "label", &self.ns, &label], None, Duration::from_secs(10));
            let ns = self.ns.clone();
            let seen = w.wait_for(
                |e| {
                    e.topic == "/namespaces/update"
                        && e.payload["name"] == ns.as_str()
                        && e.payload["labels"]["keel.test/events-sync"] == token.as_str()
                },
                Duration::from_millis(300),
            );
            if seen.is_some() {
                return w;
            }
            if Instant::now() >= deadline {
                panic!("`ctr events` saw no event within 15s; got: {:?}", w.lines());
            }
        }
    }

    /// Bundle directory containerd gives the shim for `id` in namespace `ns`.
    pub fn bundle_dir(&self, ns: &str, id: &str) -> PathBuf {
        self.state.join("io.containerd.runtime.v2.task").join(ns).join(id)
    }

    /// The shim's ttrpc socket for a task, and the task API version, read from
    /// the bundle: `address` (1.6) or `bootstrap.json` (2.x).
    pub fn shim_address(&self, ns: &str, id: &str) -> Option<(PathBuf, u32)> {
        shim_address_in(&self.bundle_dir(ns, id))
    }

    /// Live shim processes that belong to this containerd: argv[0] or exe is a
    /// `containerd-shim*`, and its command line or environment names this
    /// containerd's socket (shims get `-address <sock>` and `TTRPC_ADDRESS=<sock>.ttrpc`).
    pub fn shim_procs(&self) -> Vec<ProcInfo> {
        let needle = self.sock.to_string_lossy().into_owned();
        procs()
            .into_iter()
            .filter(|p| p.pid != self.pid && p.is_shim() && (p.cmdline.contains(&needle) || p.environ.contains(&needle)))
            .collect()
    }

    /// Shim processes of this containerd started for container `id`.
    pub fn shim_procs_for(&self, id: &str) -> Vec<ProcInfo> {
        self.shim_procs().into_iter().filter(|p| p.args.windows(2).any(|w| w[0] == "-id" && w[1] == id)).collect()
    }

    /// Mount points at or below this containerd's private directory.
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_below(&self.dir)
    }

    fn namespaces(&self) -> Vec<String> {
        let o = self.ctr_raw(None, &["namespaces", "ls", "-q"], None, Duration::from_secs(10));
        o.out().lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
    }

    /// Directories that name the namespaces of this containerd (even when it is gone).
    fn namespaces_on_disk(&self) -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        set.insert(self.ns.clone());
        for base in [self.state.join("io.containerd.runtime.v2.task"), self.root.join("io.containerd.runtime.v2.task")] {
            if let Ok(rd) = fs::read_dir(base) {
                for e in rd.flatten() {
                    set.insert(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        set
    }

    /// Socket files of every shim known from the bundles.
    fn shim_sockets(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.state.join("io.containerd.runtime.v2.task")) {
            for ns in rd.flatten() {
                if let Ok(rd2) = fs::read_dir(ns.path()) {
                    for b in rd2.flatten() {
                        if let Some((s, _)) = shim_address_in(&b.path()) {
                            out.push(s);
                        }
                    }
                }
            }
        }
        out
    }

    fn cleanup(&self) {
        let quick = Duration::from_secs(10);
        let shim_sockets = self.shim_sockets();
        let mut namespaces = self.namespaces_on_disk();
        let alive = self.child.lock().unwrap().as_mut().map(|c| matches!(c.try_wait(), Ok(None))).unwrap_or(false);
        if alive {
            for ns in self.namespaces() {
                namespaces.insert(ns.clone());
                let tasks = self.ctr_raw(Some(&ns), &["tasks", "ls", "-q"], None, quick);
                for id in tasks.out().lines().map(str::trim).filter(|l| !l.is_empty()) {
                    self.ctr_raw(Some(&ns), &["tasks", "kill", "-a", "-s", "SIGKILL", id], None, quick);
                    let o = self.ctr_raw(Some(&ns), &["tasks", "delete", "-f", id], None, quick);
                    if !o.ok() {
                        eprintln!("cleanup: {}", o.describe());
                    }
                }
                let cs = self.ctr_raw(Some(&ns), &["containers", "ls", "-q"], None, quick);
                for id in cs.out().lines().map(str::trim).filter(|l| !l.is_empty()) {
                    let o = self.ctr_raw(Some(&ns), &["containers", "delete", id], None, quick);
                    if !o.ok() {
                        eprintln!("cleanup: {}", o.describe());
                    }
                }
            }
        }
        // Stop containerd: SIGTERM, then SIGKILL.
        if let Some(mut child) = self.child.lock().unwrap().take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let (_, timed_out) = wait_deadline(&mut child, Instant::now() + Duration::from_secs(5));
            if timed_out {
                eprintln!("cleanup: containerd ignored SIGTERM for 5s, killed");
            }
        }
        // Leftover shims of this containerd.
        let leftovers = self.shim_procs();
        let mut shim_sockets = shim_sockets;
        for p in &leftovers {
            eprintln!("cleanup: killing leftover shim {} {}", p.pid, p.cmdline);
            // SAFETY: plain kill of a pid we just read.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
            // A killed shim cannot unlink its socket; its bundle may be gone.
            if let Some(w) = p.args.windows(2).find(|w| w[0] == "-socket") {
                shim_sockets.push(PathBuf::from(w[1].trim_start_matches("unix://")));
            }
        }
        if !leftovers.is_empty() {
            poll(Duration::from_secs(3), || leftovers.iter().all(|p| !pid_alive(p.pid)).then_some(()));
        }
        // Leftover runtime state and container processes in our namespaces.
        for ns in &namespaces {
            let nsdir = Path::new(RUNC_DEFAULT_ROOT).join(ns);
            if let Ok(rd) = fs::read_dir(&nsdir) {
                for e in rd.flatten() {
                    let id = e.file_name().to_string_lossy().into_owned();
                    eprintln!("cleanup: leftover runtime state {}", e.path().display());
                    let mut cmd = Command::new("/usr/sbin/runc");
                    cmd.arg("--root").arg(&nsdir).args(["delete", "--force", &id]);
                    let o = run_cmd(cmd, None, quick);
                    if !o.ok() {
                        eprintln!("cleanup: {}", o.describe());
                    }
                }
                let _ = fs::remove_dir(&nsdir); // only when empty
            }
            // runc leaves the namespace's parent cgroup (cgroup v1: one per controller).
            if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
                for c in rd.flatten() {
                    let d = c.path().join(ns);
                    if d.is_dir() {
                        if let Ok(rd2) = fs::read_dir(&d) {
                            for sub in rd2.flatten() {
                                if sub.path().is_dir() {
                                    let _ = fs::remove_dir(sub.path());
                                }
                            }
                        }
                        let _ = fs::remove_dir(&d);
                    }
                }
            }
        }
        for s in shim_sockets {
            if fs::symlink_metadata(&s).map(|m| m.file_type().is_socket()).unwrap_or(false) {
                let _ = fs::remove_file(&s);
            }
        }
        // Sockets of shims that died without unlinking them (runc-v2 leaves
        // its own after a crash or as a pod's last shim). Only ones created
        // while this containerd ran, and only dead ones: a live listener is
        // another test's shim.
        for name in shim_socket_names().difference(&self.sockets_before) {
            let path = Path::new(SHIM_SOCKET_DIR).join(name);
            let dead = matches!(
                std::os::unix::net::UnixStream::connect(&path),
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED)
            );
            if dead {
                let _ = fs::remove_file(&path);
            }
        }
        // Unmount anything below our directory, deepest (latest) first.
        let mut ms = self.mounts();
        ms.reverse();
        for m in &ms {
            eprintln!("cleanup: unmounting leftover mount {}", m.display());
            umount_detach(m);
        }
        let left = self.mounts();
        if !left.is_empty() {
            eprintln!("cleanup: mounts remain below {}, keeping it: {left:?}", self.dir.display());
            return;
        }
        if std::env::var_os("KEEL_KEEP_TEST_DIRS").is_some() && thread::panicking() {
            eprintln!("cleanup: keeping {} (KEEL_KEEP_TEST_DIRS)", self.dir.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup: cannot remove {}: {e}", self.dir.display());
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("=== {} log tail ({}) ===\n{}\n=== end of log ===", self.line.name(), self.log.display(), self.log_tail(80));
        }
        self.cleanup();
    }
}

fn shim_address_in(bundle: &Path) -> Option<(PathBuf, u32)> {
    let strip = |a: &str| -> PathBuf { PathBuf::from(a.trim().trim_start_matches("unix://")) };
    if let Ok(s) = fs::read_to_string(bundle.join("bootstrap.json")) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
            if let Some(a) = v["address"].as_str() {
                return Some((strip(a), v["version"].as_u64().unwrap_or(2) as u32));
            }
        }
    }
    let a = fs::read_to_string(bundle.join("address")).ok()?;
    if a.trim().is_empty() {
        return None;
    }
    Some((strip(&a), 2))
}

// ---------------------------------------------------------------------------
// processes, mounts, runtime state
// ---------------------------------------------------------------------------

/// A process as seen in /proc.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: i32,
    pub args: Vec<String>,
    /// args joined by spaces
    pub cmdline: String,
    /// environment, NUL turned into newlines
    pub environ: String,
    pub exe: Option<PathBuf>,
}

impl ProcInfo {
    /// argv[0] or the executable's name starts with `containerd-shim`.
    pub fn is_shim(&self) -> bool {
        let base = |p: &OsStr| p.to_string_lossy().starts_with("containerd-shim");
        self.args.first().map(|a| base(Path::new(a).file_name().unwrap_or_default())).unwrap_or(false)
            || self.exe.as_ref().and_then(|e| e.file_name()).map(base).unwrap_or(false)
    }
}

/// Every live (non-zombie) process.
pub fn procs() -> Vec<ProcInfo> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let base = e.path();
        let Ok(raw) = fs::read(base.join("cmdline")) else {
            continue;
        };
        if raw.is_empty() {
            continue; // kernel thread or zombie
        }
        let args: Vec<String> = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let environ = fs::read(base.join("environ")).map(|e| String::from_utf8_lossy(&e).replace('\0', "\n")).unwrap_or_default();
        let exe = fs::read_link(base.join("exe")).ok();
        out.push(ProcInfo { pid, cmdline: args.join(" "), args, environ, exe });
    }
    out
}

/// The process exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // state is the field after the ")" that closes comm
            let state = s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Decodes the octal escapes (\040 ...) of /proc/self/mountinfo.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir`, in mount order (parents first).
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.to_string_lossy().trim_end_matches('/').to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mount))
        .filter(|m| m == &dir || m.starts_with(&format!("{dir}/")))
        .map(PathBuf::from)
        .collect()
}

fn umount_detach(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: umount2 with a valid C string.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// runc's state directory for container `id` in namespace `ns` under the default
/// root (used by the runc-v2 shim, and by Keel, which keeps the same default).
pub fn runc_state_dir(ns: &str, id: &str) -> PathBuf {
    Path::new(RUNC_DEFAULT_ROOT).join(ns).join(id)
}

// ---------------------------------------------------------------------------
// ctr events
// ---------------------------------------------------------------------------

/// One line of `ctr events`.
///
/// Both lines print `<timestamp> <namespace> <topic> <json>`, where the
/// timestamp is Go's `time.Time` string with spaces in it, e.g.
/// `2026-11-24 00:18:15.5 +0000 UTC ns /tasks/exit {"container_id":...}`.
/// Payload differences: 1.6 prints `exited_at` as an RFC 3339 string, 2.x as
/// `{"seconds":..,"nanos":..}`.
#[derive(Debug, Clone)]
pub struct Event {
    pub namespace: String,
    pub topic: String,
    pub payload: serde_json::Value,
    pub raw: String,
}

impl Event {
    pub fn parse(line: &str) -> Option<Event> {
        let toks: Vec<&str> = line.split(' ').collect();
        let ti = toks.iter().position(|t| t.starts_with('/'))?;
        if ti == 0 {
            return None;
        }
        let namespace = toks[ti - 1].to_string();
        let topic = toks[ti].to_string();
        let rest = toks[ti + 1..].join(" ");
        let payload = serde_json::from_str(rest.trim()).unwrap_or(serde_json::Value::String(rest));
        Some(Event { namespace, topic, payload, raw: line.to_string() })
    }

    /// `container_id` of task events, `id` of container events.
    pub fn container_id(&self) -> Option<&str> {
        self.payload["container_id"].as_str().or_else(|| self.payload["id"].as_str())
    }
}

/// `ctr events` in the background. Derefs to an [`EventsHandle`] that other
/// threads can hold.
pub struct EventsWatcher {
    child: Child,
    handle: EventsHandle,
}

/// The events collected by an [`EventsWatcher`], shareable across threads.
#[derive(Clone)]
pub struct EventsHandle {
    shared: Arc<(Mutex<Vec<Event>>, Condvar)>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl std::ops::Deref for EventsWatcher {
    type Target = EventsHandle;
    fn deref(&self) -> &EventsHandle {
        &self.handle
    }
}

impl EventsWatcher {
    fn new(mut child: Child) -> EventsWatcher {
        let shared = Arc::new((Mutex::new(Vec::<Event>::new()), Condvar::new()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let (s2, l2) = (shared.clone(), lines.clone());
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap().push(line.clone());
                if let Some(ev) = Event::parse(&line) {
                    let (m, cv) = &*s2;
                    m.lock().unwrap().push(ev);
                    cv.notify_all();
                }
            }
        });
        EventsWatcher { child, handle: EventsHandle { shared, lines } }
    }

    /// A handle for another thread.
    pub fn handle(&self) -> EventsHandle {
        self.handle.clone()
    }
}

impl EventsHandle {
    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.shared.0.lock().unwrap().clone()
    }

    /// Raw lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The first event (already seen or to come) matching `pred`, or `None` after `timeout`.
    pub fn wait_for(&self, pred: impl Fn(&Event) -> bool, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.shared;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(e) = g.iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Like `wait_for`, panicking with what was seen when nothing matches.
    pub fn expect(&self, what: &str, pred: impl Fn(&Event) -> bool, timeout: Duration) -> Event {
        self.wait_for(pred, timeout)
            .unwrap_or_else(|| panic!("no event {what} within {timeout:?}; events seen:\n{}", self.lines().join("\n")))
    }
}

impl Drop for EventsWatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// a pty for ctr -t
// ---------------------------------------------------------------------------

/// A command running with a new pty as its controlling terminal and stdio.
pub struct PtyProc {
    master: File,
    child: Child,
    buf: Arc<Mutex<Vec<u8>>>,
    what: String,
}

impl PtyProc {
    /// Spawns `cmd` on a fresh pty of `rows` x `cols` (set before it starts).
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> PtyProc {
        let what = describe_cmd(&cmd);
        let mut master: libc::c_int = -1;
        let mut slave: libc::c_int = -1;
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: openpty fills two fds; the winsize pointer is valid.
        let r = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &ws) };
        assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: fds fresh from openpty, owned from here on.
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        // SAFETY: fcntl on a valid fd.
        unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn `{what}` on a pty: {e}"));
        drop(cmd); // closes the parent's copies of the slave
        drop(slave);
        let master = File::from(master);
        let mut reader = master.try_clone().unwrap();
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b2 = buf.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => b2.lock().unwrap().extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break, // EIO once every slave fd is closed
                }
            }
        });
        PtyProc { master, child, buf, what }
    }

    /// Everything the pty printed so far (CRs removed).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).replace('\r', "")
    }

    /// Waits until the output contains `needle`.
    pub fn wait_output(&self, needle: &str, timeout: Duration) -> bool {
        poll(timeout, || self.output().contains(needle).then_some(())).is_some()
    }

    /// Sets the pty size; the kernel sends SIGWINCH to the foreground process group (ctr).
    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: ioctl with a valid winsize on our master fd.
        let r = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// Types into the terminal.
    pub fn write(&mut self, data: &[u8]) {
        self.master.write_all(data).unwrap();
    }

    /// Waits for exit (killing at the deadline); returns (exit code, output).
    pub fn wait(mut self, timeout: Duration) -> (Option<i32>, bool, String) {
        let (st, timed_out) = wait_deadline(&mut self.child, Instant::now() + timeout);
        // let the reader drain what is left
        thread::sleep(Duration::from_millis(50));
        (st.and_then(|s| s.code()), timed_out, self.output())
    }

    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for PtyProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// runtime options, and a resize ctr cannot send
// ---------------------------------------------------------------------------

/// CRI's `runtimeoptions.v1.Options` (containerd's
/// api/types/runtimeoptions/v1/api.proto). No crate ships its generated
/// code, so prost derives the encoding from the proto's field tags.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuntimeOptions {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(string, tag = "2")]
    pub config_path: String,
    #[prost(string, tag = "3")]
    pub config_body: String,
}

pub const RUNTIME_OPTIONS_URL: &str = "runtimeoptions.v1.Options";

/// The encoded `runtimeoptions.v1.Options` with a ConfigPath and a ConfigBody.
pub fn runtime_options(config_path: &str, config_body: &str) -> Vec<u8> {
    prost::Message::encode_to_vec(&RuntimeOptions {
        config_path: config_path.into(),
        config_body: config_body.into(),
        ..Default::default()
    })
}

impl Containerd {
    /// `Task.ResizePty` sent straight to the shim of `id` (ctr has no resize
    /// command; containerd forwards the same request unchanged).
    pub fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<(), robust::RpcStatus> {
        let req = robust::pb::ResizePtyRequest { id: id.into(), exec_id: exec_id.into(), width, height, ..Default::default() };
        match robust::Shim::of(self, id).call_timeout(&req, Duration::from_secs(10)) {
            robust::Rpc::Ok(_) => Ok(()),
            robust::Rpc::Err(st) => Err(st),
            robust::Rpc::Transport(e) => panic!("ttrpc ResizePty to the shim of {id}: {e}"),
        }
    }
}

/// md5 of `data` as hex, by the host's `md5sum`.
pub fn md5_hex(data: &[u8]) -> String {
    let o = run_cmd(Command::new("md5sum"), Some(data.to_vec()), Duration::from_secs(30));
    assert!(o.ok(), "md5sum: {}", o.describe());
    o.out().split_whitespace().next().unwrap_or_default().to_string()
}
