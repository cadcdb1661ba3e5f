//! Upgrading a running shim to a new binary without touching its containers.
//!
//! `containerd-shim-keel-v1 upgrade` asks each Keel shim (over its own
//! socket, service `keel.v1.Shim`) to hand over. The shim then
//! 1. holds its ttrpc connections at the next frame boundary and stops
//!    accepting, and waits for the requests it is serving to be answered
//!    (containerd's Wait, open for a process's whole life, is handed over);
//! 2. stops collecting exits (they stay zombies for the next binary's
//!    reaper), waits for the exits already collected to be published, and
//!    for every event to reach containerd;
//! 3. stops its stdio copies between two reads and writes its state to a
//!    memfd: the task list, each process, its fds by number;
//! 4. runs the new binary's `upgrade-check` on that state, then `execve`s it
//!    with those fds kept open. The new binary takes the state up, reads the
//!    held requests again and goes on; the upgrade request itself is
//!    answered by the new binary.
//!
//! A refusal at any step before the exec (or an exec that fails) leaves the
//! old binary serving: everything is taken back up from the same state.

pub mod wire;

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::ttrpc::r#async::{MethodHandler, Service as TtrpcService, TtrpcContext};
use containerd_shim_protos::ttrpc::{self, get_status, Code, Request, Response};
use serde::{Deserialize, Serialize};

use crate::container::handover::ContainerImage;
use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::fdpass::{set_cloexec, Passed};
use crate::reaper::Reaper;
use crate::service::Service;
use wire::{ConnHandover, Gate};

/// The hand-over state's format. A binary takes up only the formats it
/// knows; `upgrade-check` refuses any other before the old binary execs.
pub const FORMAT: u32 = 1;

pub const SERVICE: &str = "keel.v1.Shim";
pub const METHOD: &str = "Upgrade";

/// How long the hand-over waits for requests and exits in progress.
const QUIESCE_LIMIT: Duration = Duration::from_secs(10);
/// How long it waits for containerd to take the events already published.
const EVENTS_LIMIT: Duration = Duration::from_secs(5);
/// How long the new binary's `upgrade-check` may take.
const CHECK_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
pub struct ShimState {
    pub format: u32,
    pub version: String,
    /// The upgrade request this state answers (the new binary replies to it).
    pub nonce: String,
    pub listener: RawFd,
    pub log: Option<RawFd>,
    pub connections: Vec<ConnHandover>,
    pub containers: Vec<ContainerImage>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct UpgradeRequest {
    /// Names this upgrade, so the new binary knows the request it answers.
    pub nonce: String,
    /// The binary to run; empty for the one the shim was started from.
    #[serde(default)]
    pub binary: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UpgradeReply {
    pub pid: u32,
    pub version: String,
    pub revision: String,
    pub binary: String,
}

/// The running binary's identity: its version, and a digest of the file it
/// was executed from (a rebuild shows as another revision).
pub fn revision() -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    let mut f = match std::fs::File::open("/proc/self/exe") {
        Ok(f) => f,
        Err(_) => return "unknown".into(),
    };
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hash.update(&buf[..n]),
            Err(_) => return "unknown".into(),
        }
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The path this process was started from, even once a package upgrade
/// replaced (unlinked) that file.
fn own_path() -> Result<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| Error::io("read /proc/self/exe", e))?;
    let s = exe.to_string_lossy();
    Ok(PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s)))
}

/// Serves `keel.v1.Shim/Upgrade` and runs the hand-over.
pub struct Upgrader {
    pub service: Arc<Service>,
    pub gate: Arc<Gate>,
    pub reaper: Reaper,
    pub publisher: Publisher,
    /// The upgrade that started this binary, answered by it.
    pub resumed_nonce: Option<String>,
    running: AtomicBool,
}

impl Upgrader {
    pub fn new(service: Arc<Service>, gate: Arc<Gate>, reaper: Reaper, publisher: Publisher, resumed_nonce: Option<String>) -> Arc<Self> {
        Arc::new(Upgrader { service, gate, reaper, publisher, resumed_nonce, running: AtomicBool::new(false) })
    }

    /// The ttrpc service to register beside the task service.
    pub fn services(self: &Arc<Self>) -> HashMap<String, TtrpcService> {
        let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
        methods.insert(METHOD.to_string(), Box::new(Handler(self.clone())));
        HashMap::from([(SERVICE.to_string(), TtrpcService { methods, streams: HashMap::new() })])
    }

    async fn upgrade(&self, req: UpgradeRequest) -> Result<UpgradeReply> {
        if req.nonce.is_empty() {
            return Err(Error::InvalidArgument("upgrade: the request has no nonce".into()));
        }
        if self.resumed_nonce.as_deref() == Some(req.nonce.as_str()) {
            let reply = self.reply();
            log::info!("upgraded: now running Keel {} ({}) from {}", reply.version, reply.revision, reply.binary);
            return Ok(reply);
        }
        if self.running.swap(true, Ordering::SeqCst) {
            return Err(Error::FailedPrecondition("upgrade: another upgrade of this shim is in progress".into()));
        }
        let res = self.hand_over(&req).await;
        self.running.store(false, Ordering::SeqCst);
        // Reached only when the shim stays on this binary.
        match res {
            Ok(never) => match never {},
            Err(e) => {
                log::warn!("upgrade refused: {e}");
                Err(e)
            }
        }
    }

    fn reply(&self) -> UpgradeReply {
        UpgradeReply {
            pid: std::process::id(),
            version: VERSION.to_string(),
            revision: revision(),
            binary: own_path().map(|p| p.display().to_string()).unwrap_or_default(),
        }
    }

    /// Returns only on refusal, with everything running again.
    async fn hand_over(&self, req: &UpgradeRequest) -> Result<std::convert::Infallible> {
        let binary = if req.binary.is_empty() { own_path()? } else { PathBuf::from(&req.binary) };
        check_executable(&binary)?;
        log::info!("upgrade to {} asked: holding requests", binary.display());
        self.gate.hold();
        let res = self.quiesce_and_exec(&binary, &req.nonce).await;
        self.reaper.hold(false);
        self.reaper.reap_now();
        self.gate.release();
        res
    }

    async fn quiesce_and_exec(&self, binary: &Path, nonce: &str) -> Result<std::convert::Infallible> {
        let parkable = |service: &str, method: &str| method == "Wait" || (service == SERVICE && method == METHOD);
        let start = tokio::time::Instant::now();
        // Requests in progress end, then exits collected meanwhile are
        // worked through; nothing new starts while connections are held.
        loop {
            let busy = self.gate.busy(parkable);
            let work = self.service.busy() || self.reaper.commands_running() > 0;
            if busy.is_empty() && !work {
                if self.reaper.hold(true) && !self.service.busy() {
                    break;
                }
                self.reaper.hold(false);
            }
            if start.elapsed() > QUIESCE_LIMIT {
                let what = if busy.is_empty() { "exits or runtime commands in progress".to_string() } else { busy.join(", ") };
                return Err(Error::Unavailable(format!("upgrade: still busy after {}s ({what}); try again", QUIESCE_LIMIT.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !self.publisher.flush(EVENTS_LIMIT).await {
            return Err(Error::Unavailable(format!(
                "upgrade: containerd has not taken the shim's events within {}s",
                EVENTS_LIMIT.as_secs()
            )));
        }
        crate::stdio::halt_copies(true);
        let mut fds = Passed::default();
        let images = self.service.hand_over(&mut fds).await;
        crate::stdio::halt_copies(false);
        // OOM monitors stopped in the hand-over may have published last.
        let flushed = self.publisher.flush(EVENTS_LIMIT).await;
        let (e, images) = match (images, flushed) {
            (Ok(images), true) => self.exec(binary, nonce, images, fds).await,
            (Ok(images), false) => {
                fds.release();
                (Error::Unavailable("upgrade: containerd has not taken the shim's last events".into()), images)
            }
            (Err((e, images)), _) => {
                fds.release();
                (e, images)
            }
        };
        // SAFETY: `images` names fds `fds` released: this process's, owned by nobody.
        if let Err(again) = unsafe { self.service.take_over(images, &self.reaper, &self.publisher) } {
            log::error!("upgrade refused ({e}), and taking the tasks back up failed: {again}");
        }
        Err(e)
    }

    /// Checks the new binary on the state, then execs it. Returns only on
    /// refusal: why, and the images to take the tasks back up from (their
    /// fds released to them).
    async fn exec(&self, binary: &Path, nonce: &str, images: Vec<ContainerImage>, fds: Passed) -> (Error, Vec<ContainerImage>) {
        let state = ShimState {
            format: FORMAT,
            version: VERSION.to_string(),
            nonce: nonce.to_string(),
            listener: crate::serve::LISTENER_FD,
            log: crate::logger::fd(),
            connections: self.gate.handover(),
            containers: images,
        };
        let fail = |e: Error, state: ShimState, fds: Passed| {
            fds.release();
            (e, state.containers)
        };
        let memfd = match write_state(&state) {
            Ok(f) => f,
            Err(e) => return fail(e, state, fds),
        };
        if let Err(e) = run_check(binary, &memfd).await {
            return fail(e, state, fds);
        }
        let mut keep: Vec<RawFd> = fds.raw();
        keep.extend(state.connections.iter().map(|c| c.fd));
        keep.push(state.listener);
        keep.extend(state.log);
        keep.push(memfd.as_raw_fd());
        for fd in &keep {
            if let Err(e) = set_cloexec(*fd, false) {
                log::warn!("upgrade: keep fd {fd} open across exec: {e}");
            }
        }
        let mut argv: Vec<String> = Vec::new();
        let mut args = std::env::args();
        while let Some(a) = args.next() {
            if a == "-upgrade-state" {
                args.next();
                continue;
            }
            if !a.starts_with("-upgrade-state=") {
                argv.push(a);
            }
        }
        argv.push("-upgrade-state".into());
        argv.push(memfd.as_raw_fd().to_string());
        log::info!("upgrade: exec {} with {} tasks and {} connections", binary.display(), state.containers.len(), state.connections.len());
        let err = exec(binary, &argv);
        for fd in &keep {
            let _ = set_cloexec(*fd, true);
        }
        fail(Error::io(format!("upgrade: exec {}", binary.display()), err), state, fds)
    }
}

fn exec(binary: &Path, argv: &[String]) -> std::io::Error {
    let c = |s: &str| CString::new(s).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in an argument"));
    let path = match c(&binary.to_string_lossy()) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let args: std::io::Result<Vec<CString>> = argv.iter().map(|a| c(a)).collect();
    match args {
        Ok(args) => match nix::unistd::execv(&path, &args) {
            Ok(never) => match never {},
            Err(e) => e.into(),
        },
        Err(e) => e,
    }
}

fn check_executable(binary: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(binary).map_err(|e| Error::io(format!("upgrade: new binary {}", binary.display()), e))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(Error::FailedPrecondition(format!("upgrade: {} is not an executable file", binary.display())));
    }
    Ok(())
}

fn memfd(name: &str) -> Result<std::fs::File> {
    let name = CString::new(name).map_err(Error::internal("memfd name"))?;
    // SAFETY: memfd_create with a valid C string; a non-negative return is a new fd we own.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::io("memfd_create", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd nothing else owns.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// The state in a memfd: readable only through this process's fds (and
/// root's /proc), gone with the last of them.
fn write_state(state: &ShimState) -> Result<std::fs::File> {
    let mut f = memfd("keel-upgrade-state")?;
    let json = serde_json::to_vec(state).map_err(Error::internal("encode the upgrade state"))?;
    f.write_all(&json).map_err(|e| Error::io("write the upgrade state", e))?;
    f.rewind().map_err(|e| Error::io("rewind the upgrade state", e))?;
    Ok(f)
}

/// Reads a state; refuses a format this binary does not know.
pub fn read_state(mut f: std::fs::File) -> Result<ShimState> {
    f.rewind().map_err(|e| Error::io("rewind the upgrade state", e))?;
    let mut json = Vec::new();
    f.read_to_end(&mut json).map_err(|e| Error::io("read the upgrade state", e))?;
    parse_state(&json)
}

pub fn parse_state(json: &[u8]) -> Result<ShimState> {
    #[derive(Deserialize)]
    struct Head {
        format: u32,
        version: String,
    }
    let head: Head = serde_json::from_slice(json).map_err(Error::malformed("the upgrade state"))?;
    if head.format != FORMAT {
        return Err(Error::FailedPrecondition(format!(
            "the upgrade state of Keel {} has format {}; this binary ({VERSION}) reads format {FORMAT} only",
            head.version, head.format
        )));
    }
    serde_json::from_slice(json).map_err(Error::malformed("the upgrade state"))
}

/// `upgrade-check`: the old binary hands the state on stdin; exit 0 if this
/// binary can take it up.
pub fn check_action() -> Result<()> {
    let mut json = Vec::new();
    std::io::stdin().read_to_end(&mut json).map_err(|e| Error::io("read the upgrade state from stdin", e))?;
    let state = parse_state(&json)?;
    println!("ok: Keel {VERSION} takes up the state of Keel {} ({} tasks)", state.version, state.containers.len());
    Ok(())
}

/// Runs `binary upgrade-check` on the state. Exits are held (the reaper is
/// not collecting), so the child is waited for by its own pid.
async fn run_check(binary: &Path, state: &std::fs::File) -> Result<()> {
    let stdin = state.try_clone().map_err(|e| Error::io("dup the upgrade state", e))?;
    let out = memfd("keel-upgrade-check")?;
    let child = std::process::Command::new(binary)
        .arg("upgrade-check")
        .stdin(stdin)
        .stdout(out.try_clone().map_err(|e| Error::io("dup", e))?)
        .stderr(out.try_clone().map_err(|e| Error::io("dup", e))?)
        .spawn()
        .map_err(|e| Error::io(format!("upgrade: run {} upgrade-check", binary.display()), e))?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let started = std::time::Instant::now();
    let status = loop {
        match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                if started.elapsed() > CHECK_LIMIT {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(pid, None);
                    return Err(Error::Unavailable(format!(
                        "upgrade: {} upgrade-check did not answer within {}s",
                        binary.display(),
                        CHECK_LIMIT.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(ws) => break crate::reaper::status_of(ws).map(|e| e.status).unwrap_or(-1),
            Err(e) => return Err(Error::io("wait for upgrade-check", e.into())),
        }
    };
    if let Err(e) = state.try_clone().and_then(|mut s| s.rewind()) {
        return Err(Error::io("rewind the upgrade state", e));
    }
    let mut said = String::new();
    let _ = out.try_clone().and_then(|mut o| {
        o.rewind()?;
        o.read_to_string(&mut said)
    });
    if status != 0 {
        return Err(Error::FailedPrecondition(format!(
            "upgrade: {} cannot take over (upgrade-check exit status {status}): {}",
            binary.display(),
            said.trim()
        )));
    }
    Ok(())
}

struct Handler(Arc<Upgrader>);

#[async_trait]
impl MethodHandler for Handler {
    async fn handler(&self, _ctx: TtrpcContext, req: Request) -> ttrpc::Result<Response> {
        let mut res = Response::new();
        let outcome = match serde_json::from_slice::<UpgradeRequest>(&req.payload) {
            Ok(r) => self.0.upgrade(r).await,
            Err(e) => Err(Error::Malformed { what: "upgrade request".into(), source: e.into() }),
        };
        match outcome.and_then(|r| serde_json::to_vec(&r).map_err(Error::internal("encode the upgrade reply"))) {
            Ok(payload) => {
                res.set_status(get_status(Code::OK, ""));
                res.payload = payload;
            }
            Err(e) => res.set_status(get_status(e.code(), e.to_string())),
        }
        Ok(res)
    }
}

/// The sockets of every Keel shim server on this node.
pub fn running_shims() -> Vec<String> {
    let mut sockets = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return sockets };
    for e in dir.flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let mut parts = cmdline.split(|b| *b == 0).filter(|p| !p.is_empty()).map(|p| String::from_utf8_lossy(p).into_owned());
        let Some(argv0) = parts.next() else { continue };
        if Path::new(&argv0).file_name().and_then(|n| n.to_str()) != Some("containerd-shim-keel-v1") {
            continue;
        }
        if let Ok(f) = crate::args::parse(parts) {
            if f.action.is_empty() && !f.socket.is_empty() && !sockets.contains(&f.socket) {
                sockets.push(f.socket);
            }
        }
    }
    sockets.sort();
    sockets
}

/// `upgrade`: asks one shim (`-socket`) or every running one to upgrade;
/// prints one line per shim. Fails if any refused.
pub fn upgrade_action(flags: &crate::args::Flags) -> Result<()> {
    let sockets = if flags.socket.is_empty() { running_shims() } else { vec![flags.socket.clone()] };
    if sockets.is_empty() {
        println!("no running Keel shim found");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::io("tokio runtime", e))?;
    let mut failed = 0;
    for socket in &sockets {
        match rt.block_on(ask(socket, &flags.binary)) {
            Ok(r) => println!("{socket}: upgraded: pid {} runs {} {} ({})", r.pid, r.binary, r.version, r.revision),
            Err(e) => {
                failed += 1;
                println!("{socket}: not upgraded: {e}");
            }
        }
    }
    if failed > 0 {
        return Err(Error::FailedPrecondition(format!("{failed} of {} shims not upgraded", sockets.len())));
    }
    Ok(())
}

async fn ask(socket: &str, binary: &str) -> Result<UpgradeReply> {
    let address = if socket.contains("://") { socket.to_string() } else { format!("unix://{socket}") };
    let client = ttrpc::r#async::Client::connect(&address).await.map_err(Error::internal(format!("connect to {socket}")))?;
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
    );
    let payload =
        serde_json::to_vec(&UpgradeRequest { nonce, binary: binary.to_string() }).map_err(Error::internal("encode the upgrade request"))?;
    let req = Request {
        service: SERVICE.into(),
        method: METHOD.into(),
        payload,
        timeout_nano: Duration::from_secs(60).as_nanos() as i64,
        ..Default::default()
    };
    let res = client.request(req).await.map_err(|e| match e {
        ttrpc::Error::RpcStatus(s) => Error::FailedPrecondition(s.message),
        other => Error::Unavailable(other.to_string()),
    })?;
    serde_json::from_slice(&res.payload).map_err(Error::malformed("the upgrade reply"))
}
