//! Helpers for the stress, fault, bad-input and security suites
//! (tests/stress.rs, tests/badinput.rs, tests/security.rs):
//!
//! - a private containerd with extra environment (`KEEL_RUNTIME_TIMEOUT`),
//! - a `ctr` rig (run / exec / task state) like core.rs's, shared by the suites,
//! - a ttrpc client for any task method, with containerd-shim-protos' messages
//!   or (for malformed input) raw bytes, that never panics on transport errors
//!   (a crashed shim is a finding, not a panic),
//! - host scans: zombies, fd counts, runtime state dirs, cgroups of a namespace,
//! - stand-in runtime scripts (a runc wrapper that hangs on one call) and
//!   runtime-options TOML files for `ctr run --runtime-config-path`.

use super::*;
use std::cell::RefCell;

// ---------------------------------------------------------------------------
// containerd with extra environment
// ---------------------------------------------------------------------------

thread_local! {
    static EXTRA_ENV: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
}

/// Environment added to the containerd that [`Containerd::start`] spawns on
/// this thread (set by [`start_with_env`]; empty otherwise).
pub fn extra_env() -> Vec<(String, String)> {
    EXTRA_ENV.with(|e| e.borrow().clone())
}

/// [`Containerd::start`] with `env` added to containerd's environment, which
/// the shims it starts inherit (e.g. `KEEL_RUNTIME_TIMEOUT`).
pub fn start_with_env(line: Line, env: &[(&str, &str)]) -> Containerd {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            EXTRA_ENV.with(|e| e.borrow_mut().clear());
        }
    }
    EXTRA_ENV.with(|e| *e.borrow_mut() = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let _reset = Reset;
    Containerd::start(line)
}

/// The pid of a private containerd.
pub fn containerd_pid(cd: &Containerd) -> i32 {
    cd.pid
}

// ---------------------------------------------------------------------------
// a ctr rig
// ---------------------------------------------------------------------------

/// The robustness suites' name for the one scenario helper.
pub type Rig = super::scenario::Scenario;

/// Keel's `/tasks/exit` events (and others) filtered by container.
pub fn task_events(ev: &EventsHandle, id: &str) -> Vec<Event> {
    ev.events().into_iter().filter(|e| e.topic.starts_with("/tasks/") && e.container_id() == Some(id)).collect()
}

// ---------------------------------------------------------------------------
// ttrpc to a shim: containerd-shim-protos' messages over ttrpc's own client
// ---------------------------------------------------------------------------

pub use containerd_shim_protos::api as pb;
use containerd_shim_protos::protobuf::well_known_types::{any::Any, empty::Empty};
use containerd_shim_protos::protobuf::{EnumOrUnknown, Message, MessageField};
use containerd_shim_protos::ttrpc;

/// An error status from a ttrpc call: gRPC code and message.
#[derive(Debug, Clone)]
pub struct RpcStatus {
    pub code: u64,
    pub message: String,
}

/// How a call ended.
#[derive(Debug, Clone)]
pub enum Rpc<T = Vec<u8>> {
    Ok(T),
    Err(RpcStatus),
    /// connect/read/write failed, or the reply was not a response (the shim died or hung).
    Transport(String),
}

impl<T> Rpc<T> {
    pub fn code(&self) -> Option<u64> {
        match self {
            Rpc::Ok(_) => Some(0),
            Rpc::Err(s) => Some(s.code),
            Rpc::Transport(_) => None,
        }
    }
    pub fn message(&self) -> String {
        match self {
            Rpc::Ok(_) => String::new(),
            Rpc::Err(s) => s.message.clone(),
            Rpc::Transport(t) => format!("transport: {t}"),
        }
    }
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Rpc<U> {
        match self {
            Rpc::Ok(v) => Rpc::Ok(f(v)),
            Rpc::Err(s) => Rpc::Err(s),
            Rpc::Transport(t) => Rpc::Transport(t),
        }
    }
    /// The answer, or how the call failed.
    pub fn result(self) -> Result<T, Rpc<()>> {
        match self {
            Rpc::Ok(v) => Ok(v),
            other => Err(other.map(drop)),
        }
    }
}

/// gRPC code names, for messages.
pub fn code_name(code: u64) -> String {
    match code {
        0..=16 => format!("{:?}", containerd_client::tonic::Code::from_i32(code as i32)),
        _ => "?".into(),
    }
}

/// One unary ttrpc call with `payload` as the request body, as is, on a
/// connection of its own (so one hung call cannot hold up another); never
/// panics. `ns` goes in the `containerd-namespace-ttrpc` metadata.
pub fn rpc(sock: &Path, ns: &str, service: &str, method: &str, payload: &[u8], timeout: Duration) -> Rpc {
    let client = match ttrpc::Client::connect(&format!("unix://{}", sock.display())) {
        Ok(c) => c,
        Err(e) => return Rpc::Transport(format!("connect {}: {e}", sock.display())),
    };
    let mut ctx = ttrpc::context::with_duration(timeout);
    if !ns.is_empty() {
        ctx.add("containerd-namespace-ttrpc".into(), ns.into());
    }
    let req = ttrpc::Request {
        service: service.into(),
        method: method.into(),
        payload: payload.to_vec(),
        timeout_nano: ctx.timeout_nano,
        metadata: ttrpc::context::to_pb(ctx.metadata),
        ..Default::default()
    };
    match client.request(req) {
        Ok(resp) => Rpc::Ok(resp.payload),
        Err(ttrpc::Error::RpcStatus(s)) => Rpc::Err(RpcStatus { code: s.code.value() as u64, message: s.message }),
        Err(e) => Rpc::Transport(format!("{method}: {e}")),
    }
}

/// A task-service request: the method it goes to and the message it answers.
pub trait TaskCall: Message {
    const METHOD: &'static str;
    type Resp: Message;
}

macro_rules! task_calls {
    ($($req:ident => $method:literal, $resp:ty;)*) => {
        $(impl TaskCall for pb::$req {
            const METHOD: &'static str = $method;
            type Resp = $resp;
        })*
    };
}

task_calls! {
    StateRequest => "State", pb::StateResponse;
    CreateTaskRequest => "Create", pb::CreateTaskResponse;
    StartRequest => "Start", pb::StartResponse;
    DeleteRequest => "Delete", pb::DeleteResponse;
    PidsRequest => "Pids", pb::PidsResponse;
    PauseRequest => "Pause", Empty;
    ResumeRequest => "Resume", Empty;
    CheckpointTaskRequest => "Checkpoint", Empty;
    KillRequest => "Kill", Empty;
    ExecProcessRequest => "Exec", Empty;
    ResizePtyRequest => "ResizePty", Empty;
    CloseIORequest => "CloseIO", Empty;
    UpdateTaskRequest => "Update", Empty;
    WaitRequest => "Wait", pb::WaitResponse;
    StatsRequest => "Stats", pb::StatsResponse;
    ConnectRequest => "Connect", pb::ConnectResponse;
}

/// A `google.protobuf.Any` field.
pub fn any(type_url: &str, value: &[u8]) -> MessageField<Any> {
    MessageField::some(Any { type_url: type_url.into(), value: value.to_vec(), ..Default::default() })
}

/// A task shim's ttrpc endpoint. A 1.6 shim serves only `containerd.task.v2.Task`
/// (ttrpc-rust's generated client names v3), so calls name the service themselves.
#[derive(Clone, Debug)]
pub struct Shim {
    pub sock: PathBuf,
    pub ns: String,
    pub service: &'static str,
    pub version: u32,
}

pub const ST_CREATED: EnumOrUnknown<pb::Status> = EnumOrUnknown::from_i32(pb::Status::CREATED as i32);
pub const ST_RUNNING: EnumOrUnknown<pb::Status> = EnumOrUnknown::from_i32(pb::Status::RUNNING as i32);

impl Shim {
    /// The shim serving container `id` of the test namespace (from its bundle).
    pub fn of(cd: &Containerd, id: &str) -> Shim {
        let (sock, version) =
            cd.shim_address(&cd.ns, id).unwrap_or_else(|| panic!("no shim address in bundle {}", cd.bundle_dir(&cd.ns, id).display()));
        Shim { sock, ns: cd.ns.clone(), service: if version >= 3 { "containerd.task.v3.Task" } else { "containerd.task.v2.Task" }, version }
    }

    pub fn call<Q: TaskCall>(&self, req: &Q) -> Rpc<Q::Resp> {
        self.call_timeout(req, Duration::from_secs(20))
    }

    pub fn call_timeout<Q: TaskCall>(&self, req: &Q, timeout: Duration) -> Rpc<Q::Resp> {
        let body = req.write_to_bytes().unwrap_or_else(|e| panic!("encode {} request: {e}", Q::METHOD));
        match self.raw(Q::METHOD, &body, timeout) {
            Rpc::Ok(b) => Q::Resp::parse_from_bytes(&b).map_or_else(|e| Rpc::Transport(format!("{} response: {e}", Q::METHOD)), Rpc::Ok),
            other => other.map(|_| unreachable!()),
        }
    }

    /// `method` with a request body sent as is (see [`Pb`]).
    pub fn raw(&self, method: &str, body: &[u8], timeout: Duration) -> Rpc {
        rpc(&self.sock, &self.ns, self.service, method, body, timeout)
    }

    pub fn state(&self, id: &str, exec_id: &str) -> Result<pb::StateResponse, Rpc<()>> {
        self.call(&pb::StateRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() }).result()
    }

    pub fn start(&self, id: &str, exec_id: &str) -> Rpc<pb::StartResponse> {
        self.call(&pb::StartRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() })
    }

    /// `Exec` + `Start` of `spec` (null stdio) in `id`; returns the pid.
    pub fn exec_start(&self, id: &str, exec_id: &str, spec: &[u8]) -> Result<u32, Rpc<()>> {
        self.call(&exec_req(id, exec_id, spec)).result()?;
        Ok(self.start(id, exec_id).result()?.pid)
    }

    /// `Wait` for an exec (or the init with `""`); returns the exit status.
    pub fn wait(&self, id: &str, exec_id: &str, timeout: Duration) -> Result<u32, Rpc<()>> {
        let req = pb::WaitRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() };
        Ok(self.call_timeout(&req, timeout).result()?.exit_status)
    }

    pub fn delete(&self, id: &str, exec_id: &str) -> Rpc<pb::DeleteResponse> {
        self.call(&pb::DeleteRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() })
    }

    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Rpc<Empty> {
        self.call(&pb::KillRequest { id: id.into(), exec_id: exec_id.into(), signal, all, ..Default::default() })
    }

    pub fn pids(&self, id: &str) -> Rpc<pb::PidsResponse> {
        self.call(&pb::PidsRequest { id: id.into(), ..Default::default() })
    }

    /// Exec + Start + Wait + Delete of `sh -c 'exit 7'` in `id`: the shim serves `id`.
    pub fn assert_serves(&self, cd: &Containerd, id: &str, why: &str) {
        let st = self.state(id, "").unwrap_or_else(|e| panic!("after {why}: State {id}: {e:?}"));
        assert_eq!(st.status, ST_RUNNING, "after {why}: task {id} is not running: {st:?}");
        let eid = unique("probe");
        let spec = exec_spec(cd, id, &["sh", "-c", "exit 7"]);
        let pid = self.exec_start(id, &eid, &spec).unwrap_or_else(|e| panic!("after {why}: exec in {id}: {e:?}"));
        assert!(pid > 0, "after {why}: exec pid 0");
        let code = self.wait(id, &eid, Duration::from_secs(20)).unwrap_or_else(|e| panic!("after {why}: wait exec in {id}: {e:?}"));
        assert_eq!(code, 7, "after {why}: exec exit status");
        let d = self.delete(id, &eid);
        assert!(matches!(d, Rpc::Ok(_)), "after {why}: delete exec: {d:?}");
    }
}

pub const PROCESS_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// An Exec of the process `spec` (JSON), null stdio.
pub fn exec_req(id: &str, exec_id: &str, spec: &[u8]) -> pb::ExecProcessRequest {
    pb::ExecProcessRequest { id: id.into(), exec_id: exec_id.into(), spec: any(PROCESS_URL, spec), ..Default::default() }
}

/// A Create of the bundle, no rootfs mounts, null stdio.
pub fn create_req(id: &str, bundle: &Path) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest { id: id.into(), bundle: bundle.to_string_lossy().into_owned(), ..Default::default() }
}

/// A protobuf message built by hand, for the request bodies generated code
/// cannot produce: undecodable bytes, ids that are not UTF-8, numbers out of
/// their field's range (tests/badinput.rs's wire fuzz).
#[derive(Clone, Default, Debug)]
pub struct Pb(pub Vec<u8>);

impl Pb {
    pub fn new() -> Pb {
        Pb(Vec::new())
    }
    fn varint(mut self, mut v: u64) -> Pb {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }
    pub fn bytes(self, field: u32, b: &[u8]) -> Pb {
        let mut p = self.varint(((field as u64) << 3) | 2).varint(b.len() as u64);
        p.0.extend_from_slice(b);
        p
    }
    pub fn str(self, field: u32, s: &str) -> Pb {
        self.bytes(field, s.as_bytes())
    }
    pub fn uint(self, field: u32, v: u64) -> Pb {
        self.varint((field as u64) << 3).varint(v)
    }
    pub fn msg(self, field: u32, m: Pb) -> Pb {
        self.bytes(field, &m.0)
    }
    /// A `google.protobuf.Any` with `type_url` and `value`.
    pub fn any(type_url: &str, value: &[u8]) -> Pb {
        Pb::new().str(1, type_url).bytes(2, value)
    }
}

/// An exec process spec (JSON) for `id`: its config.json's process with `args`.
pub fn exec_spec(cd: &Containerd, id: &str, args: &[&str]) -> Vec<u8> {
    let cfg = fs::read(cd.bundle_dir(&cd.ns, id).join("config.json")).unwrap_or_else(|e| panic!("config.json of {id}: {e}"));
    let v: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
    let mut p = v["process"].clone();
    p["args"] = serde_json::json!(args);
    p["terminal"] = serde_json::json!(false);
    serde_json::to_vec(&p).unwrap()
}

/// A bundle directory for a task created straight through the shim: the
/// victim's config.json with `args`, its own cgroup, the shared rootfs.
pub fn make_bundle(r: &Rig, victim: &str, name: &str, args: &[&str]) -> PathBuf {
    let dir = r.cd.dir.join("bundles").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = std::fs::read(r.cd.bundle_dir(&r.cd.ns, victim).join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
    v["process"]["args"] = serde_json::json!(args);
    v["process"]["terminal"] = serde_json::json!(false);
    v["root"]["path"] = serde_json::json!(rootfs().to_string_lossy());
    v["linux"]["cgroupsPath"] = serde_json::json!(format!("/{}/{}", r.cd.ns, name));
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    dir
}

// ---------------------------------------------------------------------------
// host scans
// ---------------------------------------------------------------------------

/// (state, ppid, comm) from /proc/<pid>/stat.
pub fn proc_stat(pid: i32) -> Option<(String, i32, String)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let mut rest = s[close + 1..].split_whitespace();
    let state = rest.next()?.to_string();
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid, comm))
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc").map(|rd| rd.flatten().filter_map(|e| e.file_name().to_string_lossy().parse().ok()).collect()).unwrap_or_default()
}

/// Zombies whose parent is one of `parents`, as "pid (comm) parent ppid".
pub fn zombies_of(parents: &[i32]) -> Vec<String> {
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let (state, ppid, comm) = proc_stat(pid)?;
            (state == "Z" && parents.contains(&ppid)).then(|| format!("{pid} ({comm}) parent {ppid}"))
        })
        .collect()
}

/// Zombies whose parent is this containerd or one of its live shims.
pub fn zombies(cd: &Containerd) -> Vec<String> {
    let mut parents: Vec<i32> = cd.shim_procs().iter().map(|p| p.pid).collect();
    parents.push(cd.pid);
    zombies_of(&parents)
}

/// Open fds of `pid`.
pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|rd| rd.count()).unwrap_or(0)
}

/// Direct children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    all_pids().into_iter().filter(|p| proc_stat(*p).map(|s| s.1 == pid).unwrap_or(false)).collect()
}

/// Entries of the runtime's state dir for namespace `ns` (default root).
pub fn runc_state_entries(ns: &str) -> Vec<String> {
    fs::read_dir(Path::new(RUNC_DEFAULT_ROOT).join(ns))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Container cgroups left for namespace `ns`: directories below `<hierarchy>/<ns>`
/// in every cgroup v1 hierarchy and in the unified one (`ctr` puts a
/// container's cgroup at `/<ns>/<id>`; the `<ns>` parent itself is runc's to keep).
pub fn ns_cgroups(ns: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut bases = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            if e.path().is_dir() {
                bases.push(e.path());
            }
        }
    }
    for b in bases {
        let d = b.join(ns);
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

/// Kills pids listed (one a line) in `file` that are still alive and whose
/// command line contains `needle`: the processes a stand-in runtime parked.
pub fn kill_listed(file: &Path, needle: &str) {
    let Ok(text) = fs::read_to_string(file) else {
        return;
    };
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if pid_alive(pid) && String::from_utf8_lossy(&cmd).contains(needle) {
            // SAFETY: plain kill of a pid we just checked.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

// ---------------------------------------------------------------------------
// stand-in runtimes
// ---------------------------------------------------------------------------

/// A runc wrapper at `<dir>/<name>`: when its arguments (joined by spaces, with
/// a space before and after) match the shell `case` pattern `hang_pattern`, it
/// records its pid in `<dir>/<name>.hung` and becomes `sleep 3600`; otherwise
/// it execs the real runc. Every call is logged to `<dir>/<name>.calls`.
/// Returns (script, hung-pids file).
pub fn hanging_runtime(dir: &Path, name: &str, hang_pattern: &str) -> (PathBuf, PathBuf) {
    let script = dir.join(name);
    let hung = dir.join(format!("{name}.hung"));
    let calls = dir.join(format!("{name}.calls"));
    let text = format!(
        "#!/bin/sh\necho \"$*\" >> '{calls}'\ncase \" $* \" in\n  {hang_pattern})\n    echo $$ >> '{hung}'\n    exec /bin/sleep 3600 ;;\nesac\nexec /usr/sbin/runc \"$@\"\n",
        calls = calls.display(),
        hung = hung.display(),
    );
    fs::write(&script, text).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    (script, hung)
}

/// Kills the processes a [`hanging_runtime`] parked, on drop (even on panic).
pub struct HungGuard(pub PathBuf);

impl Drop for HungGuard {
    fn drop(&mut self) {
        kill_listed(&self.0, "sleep");
    }
}
