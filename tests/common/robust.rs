//! Helpers for the stress, fault, bad-input and security suites
//! (tests/stress.rs, tests/badinput.rs, tests/security.rs):
//!
//! - a private containerd with extra environment (`KEEL_RUNTIME_TIMEOUT`),
//! - a `ctr` rig (run / exec / task state) like core.rs's, shared by the suites,
//! - a raw ttrpc client that calls any task method with a hand-encoded body and
//!   never panics on transport errors (a crashed shim is a finding, not a panic),
//! - host scans: zombies, fd counts, runtime state dirs, cgroups of a namespace,
//! - stand-in runtime scripts (a runc wrapper that hangs on one call) and
//!   runtime-options TOML files for `ctr run --runtime-config-path`.
#![allow(dead_code)]

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
    EXTRA_ENV.with(|e| {
        *e.borrow_mut() = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    });
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

/// A private containerd plus the runtime type under test, with ctr helpers.
pub struct Rig {
    pub cd: Containerd,
    pub line: Line,
    pub rt: &'static str,
    pub tag: String,
}

pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
pub const STATE_TIMEOUT: Duration = Duration::from_secs(15);

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

impl Rig {
    pub fn new(line: Line) -> Rig {
        Rig::with_env(line, &[])
    }

    /// A rig whose `run` uses runtime type `rt`.
    pub fn for_runtime(line: Line, rt: &'static str) -> Rig {
        let mut r = Rig::new(line);
        r.rt = rt;
        r.tag = format!("[{} {}]", rt, line.name());
        r
    }

    pub fn with_env(line: Line, env: &[(&str, &str)]) -> Rig {
        let r = rootfs();
        assert!(r.join("bin/sh").exists());
        let cd = start_with_env(line, env);
        Rig {
            cd,
            line,
            rt: KEEL_V1,
            tag: format!("[{} {}]", KEEL_V1, line.name()),
        }
    }

    pub fn run_args(&self, flags: &[&str], id: &str, cmd: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            "--runtime".into(),
            self.rt.into(),
            "--fifo-dir".into(),
            self.cd.fifo_dir.to_string_lossy().into_owned(),
            "--env".into(),
            CONTAINER_PATH.into(),
        ];
        a.extend(flags.iter().map(|s| s.to_string()));
        a.push("--rootfs".into());
        a.push(rootfs().to_string_lossy().into_owned());
        a.push(id.into());
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    pub fn run(&self, flags: &[&str], id: &str, cmd: &[&str]) -> Output {
        self.cd
            .ctr_timeout(&strs(&self.run_args(flags, id, cmd)), RUN_TIMEOUT)
    }

    /// `ctr run -d` (plus `flags`), must succeed.
    pub fn run_d(&self, flags: &[&str], id: &str, cmd: &[&str]) {
        let mut f = vec!["-d"];
        f.extend_from_slice(flags);
        let o = self.run(&f, id, cmd);
        assert!(
            o.ok(),
            "{} run -d {id} failed: {}\n{}",
            self.tag,
            o.describe(),
            self.cd.log_tail(30)
        );
    }

    /// A new container (id from `prefix`) idling in `sleep`, RUNNING when this returns.
    pub fn sleeper(&self, prefix: &str) -> String {
        let id = self.cd.id(prefix);
        self.run_d(&[], &id, &["sleep", "1000000"]);
        self.wait_status(&id, "RUNNING");
        id
    }

    pub fn exec_args(&self, flags: &[&str], id: &str, exec_id: &str, cmd: &[&str]) -> Vec<String> {
        self.cd.exec_args(flags, id, exec_id, cmd)
    }

    pub fn exec(&self, flags: &[&str], id: &str, exec_id: &str, cmd: &[&str]) -> Output {
        self.cd
            .ctr_timeout(&strs(&self.exec_args(flags, id, exec_id, cmd)), RUN_TIMEOUT)
    }

    /// `ctr task ls` as (id, pid, status).
    pub fn tasks(&self) -> Vec<(String, u32, String)> {
        self.cd.task_list()
    }

    pub fn task(&self, id: &str) -> Option<(u32, String)> {
        self.tasks()
            .into_iter()
            .find(|t| t.0 == id)
            .map(|t| (t.1, t.2))
    }

    /// Waits until `id` has `status`; returns its pid.
    pub fn wait_status(&self, id: &str, status: &str) -> u32 {
        poll(STATE_TIMEOUT, || {
            self.task(id).filter(|t| t.1 == status).map(|t| t.0)
        })
        .unwrap_or_else(|| {
            panic!(
                "{} task {id} not {status} within {STATE_TIMEOUT:?}; task ls:\n{}",
                self.tag,
                self.cd.ctr(&["tasks", "ls"]).out()
            )
        })
    }

    /// SIGKILL, wait STOPPED, delete task and container (best effort, bounded).
    pub fn kill_delete(&self, id: &str) {
        self.cd.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
        poll(STATE_TIMEOUT, || {
            self.task(id)
                .filter(|t| t.1 != "STOPPED")
                .is_none()
                .then_some(())
        });
        self.cd.ctr(&["tasks", "delete", "-f", id]);
        self.cd.ctr(&["containers", "delete", id]);
    }

    /// Deletes a stopped task and its container; both must succeed.
    pub fn delete_ok(&self, id: &str) {
        let o = self.cd.ctr(&["tasks", "delete", id]);
        assert!(o.ok(), "{} task delete {id}: {}", self.tag, o.describe());
        self.cd.ctr_ok(&["containers", "delete", id]);
    }

    /// An exec with output and exit code still works in `id`.
    pub fn assert_exec_works(&self, id: &str, why: &str) {
        let eid = unique("alive");
        let o = self.exec(&[], id, &eid, &["sh", "-c", "echo still-alive; exit 3"]);
        assert!(
            o.code == Some(3) && o.out() == "still-alive\n",
            "{} after {why}: exec in {id} does not work: {}",
            self.tag,
            o.describe()
        );
    }

    /// A file holding `toml`, for `ctr run --runtime-config-path`.
    pub fn runtime_config(&self, name: &str, toml: &str) -> PathBuf {
        let p = self.cd.dir.join(format!("{name}.toml"));
        fs::write(&p, toml).unwrap();
        p
    }

    /// The task shim of container `id` over ttrpc.
    pub fn shim(&self, id: &str) -> Shim {
        Shim::of(&self.cd, id)
    }
}

/// Keel's `/tasks/exit` events (and others) filtered by container.
pub fn task_events(ev: &EventsHandle, id: &str) -> Vec<Event> {
    ev.events()
        .into_iter()
        .filter(|e| e.topic.starts_with("/tasks/") && e.container_id() == Some(id))
        .collect()
}

// ---------------------------------------------------------------------------
// raw ttrpc
// ---------------------------------------------------------------------------

/// A protobuf message built by hand (field numbers from containerd's shim.proto).
#[derive(Clone, Default, Debug)]
pub struct Pb(pub Vec<u8>);

impl Pb {
    pub fn new() -> Pb {
        Pb(Vec::new())
    }
    pub fn str(mut self, field: u32, s: &str) -> Pb {
        pb_bytes(&mut self.0, field, s.as_bytes());
        self
    }
    pub fn bytes(mut self, field: u32, b: &[u8]) -> Pb {
        pb_bytes(&mut self.0, field, b);
        self
    }
    pub fn uint(mut self, field: u32, v: u64) -> Pb {
        pb_uint(&mut self.0, field, v);
        self
    }
    /// int32/int64/enum (negative numbers as 10-byte two's complement).
    pub fn int(self, field: u32, v: i64) -> Pb {
        self.uint(field, v as u64)
    }
    /// One entry of a `map<string, string>` field.
    pub fn map(self, field: u32, k: &str, v: &str) -> Pb {
        self.msg(field, Pb::new().str(1, k).str(2, v))
    }
    pub fn boolean(self, field: u32, v: bool) -> Pb {
        self.uint(field, v as u64)
    }
    pub fn msg(self, field: u32, m: Pb) -> Pb {
        self.bytes(field, &m.0)
    }
    /// A `google.protobuf.Any` with `type_url` and `value`.
    pub fn any(type_url: &str, value: &[u8]) -> Pb {
        Pb::new().str(1, type_url).bytes(2, value)
    }
    pub fn raw(mut self, b: &[u8]) -> Pb {
        self.0.extend_from_slice(b);
        self
    }
}

pub const PROCESS_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// ExecProcessRequest{id=1, exec_id=2, terminal=3, stdin=4, stdout=5,
/// stderr=6, spec=7} with the process `spec` (JSON); stdio fields can follow.
pub fn exec_req(id: &str, exec_id: &str, spec: &[u8]) -> Pb {
    Pb::new().str(1, id).str(2, exec_id).msg(7, Pb::any(PROCESS_URL, spec))
}

/// How a raw call ended.
#[derive(Debug, Clone)]
pub enum Rpc {
    Ok(Vec<u8>),
    Err(RpcStatus),
    /// connect/read/write failed, or the reply was not a response (the shim died or hung).
    Transport(String),
}

impl Rpc {
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
    pub fn ok(self) -> Result<Vec<u8>, String> {
        match self {
            Rpc::Ok(b) => Ok(b),
            other => Err(format!("{other:?}")),
        }
    }
}

/// gRPC code names, for messages.
pub fn code_name(code: u64) -> &'static str {
    match code {
        0 => "OK",
        1 => "Cancelled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "?",
    }
}

/// One unary ttrpc call that never panics. `ns` goes in the
/// `containerd-namespace-ttrpc` metadata.
pub fn rpc(
    sock: &Path,
    ns: &str,
    service: &str,
    method: &str,
    payload: &[u8],
    timeout: Duration,
) -> Rpc {
    use std::os::unix::net::UnixStream;
    let mut s = match UnixStream::connect(sock) {
        Ok(s) => s,
        Err(e) => return Rpc::Transport(format!("connect {}: {e}", sock.display())),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let mut req = Vec::new();
    pb_bytes(&mut req, 1, service.as_bytes());
    pb_bytes(&mut req, 2, method.as_bytes());
    pb_bytes(&mut req, 3, payload);
    pb_uint(&mut req, 4, timeout.as_nanos() as u64);
    if !ns.is_empty() {
        let mut kv = Vec::new();
        pb_bytes(&mut kv, 1, b"containerd-namespace-ttrpc");
        pb_bytes(&mut kv, 2, ns.as_bytes());
        pb_bytes(&mut req, 5, &kv);
    }
    let mut msg = Vec::new();
    msg.extend_from_slice(&(req.len() as u32).to_be_bytes());
    msg.extend_from_slice(&1u32.to_be_bytes()); // stream id
    msg.push(1); // request
    msg.push(0); // flags
    msg.extend_from_slice(&req);
    if let Err(e) = s.write_all(&msg) {
        return Rpc::Transport(format!("write {method}: {e}"));
    }
    let mut hdr = [0u8; 10];
    if let Err(e) = s.read_exact(&mut hdr) {
        return Rpc::Transport(format!("no answer to {method}: {e}"));
    }
    let len = u32::from_be_bytes(hdr[0..4].try_into().unwrap()) as usize;
    if hdr[8] != 2 {
        return Rpc::Transport(format!("message type {} is not a response", hdr[8]));
    }
    let mut body = vec![0u8; len];
    if let Err(e) = s.read_exact(&mut body) {
        return Rpc::Transport(format!("read {method} response: {e}"));
    }
    let (status, resp) = decode_ttrpc_response(&body);
    match status {
        Some(st) if st.code != 0 => Rpc::Err(st),
        _ => Rpc::Ok(resp),
    }
}

/// A task shim's ttrpc endpoint.
#[derive(Clone, Debug)]
pub struct Shim {
    pub sock: PathBuf,
    pub ns: String,
    pub service: &'static str,
    pub version: u32,
}

/// What `State` answers, decoded.
#[derive(Debug, Clone, Default)]
pub struct TaskState {
    pub id: String,
    pub bundle: String,
    pub pid: u32,
    /// containerd.v1.types.Status: 1 created, 2 running, 3 stopped, 4 paused
    pub status: u64,
    pub terminal: bool,
    pub exit_status: u32,
    pub exec_id: String,
}

pub const ST_CREATED: u64 = 1;
pub const ST_RUNNING: u64 = 2;
pub const ST_STOPPED: u64 = 3;
pub const ST_PAUSED: u64 = 4;

impl Shim {
    /// The shim serving container `id` of the test namespace (from its bundle).
    pub fn of(cd: &Containerd, id: &str) -> Shim {
        let (sock, version) = cd.shim_address(&cd.ns, id).unwrap_or_else(|| {
            panic!(
                "no shim address in bundle {}",
                cd.bundle_dir(&cd.ns, id).display()
            )
        });
        Shim {
            sock,
            ns: cd.ns.clone(),
            service: if version >= 3 {
                "containerd.task.v3.Task"
            } else {
                "containerd.task.v2.Task"
            },
            version,
        }
    }

    pub fn call(&self, method: &str, body: &Pb) -> Rpc {
        self.call_timeout(method, body, Duration::from_secs(20))
    }

    pub fn call_timeout(&self, method: &str, body: &Pb, timeout: Duration) -> Rpc {
        rpc(&self.sock, &self.ns, self.service, method, &body.0, timeout)
    }

    pub fn state(&self, id: &str, exec_id: &str) -> Result<TaskState, Rpc> {
        let r = self.call("State", &Pb::new().str(1, id).str(2, exec_id));
        match r {
            Rpc::Ok(b) => Ok(TaskState {
                id: pb_field_str(&b, 1),
                bundle: pb_field_str(&b, 2),
                pid: pb_field_uint(&b, 3) as u32,
                status: pb_field_uint(&b, 4),
                terminal: pb_field_uint(&b, 8) != 0,
                exit_status: pb_field_uint(&b, 9) as u32,
                exec_id: pb_field_str(&b, 11),
            }),
            other => Err(other),
        }
    }

    /// `Exec` + `Start` of `args` (null stdio) in `id`; returns the pid.
    pub fn exec_start(&self, id: &str, exec_id: &str, spec: &[u8]) -> Result<u32, Rpc> {
        let add = self.call("Exec", &exec_req(id, exec_id, spec));
        if !matches!(add, Rpc::Ok(_)) {
            return Err(add);
        }
        match self.call("Start", &Pb::new().str(1, id).str(2, exec_id)) {
            Rpc::Ok(b) => Ok(pb_field_uint(&b, 1) as u32),
            other => Err(other),
        }
    }

    /// `Wait` for an exec (or the init with `""`); returns the exit status.
    pub fn wait(&self, id: &str, exec_id: &str, timeout: Duration) -> Result<u32, Rpc> {
        match self.call_timeout("Wait", &Pb::new().str(1, id).str(2, exec_id), timeout) {
            Rpc::Ok(b) => Ok(pb_field_uint(&b, 1) as u32),
            other => Err(other),
        }
    }

    pub fn delete(&self, id: &str, exec_id: &str) -> Rpc {
        self.call("Delete", &Pb::new().str(1, id).str(2, exec_id))
    }

    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Rpc {
        self.call(
            "Kill",
            &Pb::new()
                .str(1, id)
                .str(2, exec_id)
                .uint(3, signal as u64)
                .boolean(4, all),
        )
    }

    /// Exec + Start + Wait + Delete of `sh -c 'exit 7'` in `id`: the shim serves `id`.
    pub fn assert_serves(&self, cd: &Containerd, id: &str, why: &str) {
        let st = self
            .state(id, "")
            .unwrap_or_else(|e| panic!("after {why}: State {id}: {e:?}"));
        assert_eq!(
            st.status, ST_RUNNING,
            "after {why}: task {id} is not running: {st:?}"
        );
        let eid = unique("probe");
        let spec = exec_spec(cd, id, &["sh", "-c", "exit 7"]);
        let pid = self
            .exec_start(id, &eid, &spec)
            .unwrap_or_else(|e| panic!("after {why}: exec in {id}: {e:?}"));
        assert!(pid > 0, "after {why}: exec pid 0");
        let code = self
            .wait(id, &eid, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("after {why}: wait exec in {id}: {e:?}"));
        assert_eq!(code, 7, "after {why}: exec exit status");
        let d = self.delete(id, &eid);
        assert!(matches!(d, Rpc::Ok(_)), "after {why}: delete exec: {d:?}");
    }
}

/// An exec process spec (JSON) for `id`: its config.json's process with `args`.
pub fn exec_spec(cd: &Containerd, id: &str, args: &[&str]) -> Vec<u8> {
    let cfg = fs::read(cd.bundle_dir(&cd.ns, id).join("config.json"))
        .unwrap_or_else(|e| panic!("config.json of {id}: {e}"));
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
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&v).unwrap(),
    )
    .unwrap();
    dir
}

/// CreateTaskRequest{id=1, bundle=2, rootfs=3, terminal=4, stdin=5, stdout=6, stderr=7, options=10}.
pub fn create_req(id: &str, bundle: &Path) -> Pb {
    Pb::new().str(1, id).str(2, &bundle.to_string_lossy())
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
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Zombies whose parent is one of `parents`, as "pid (comm) parent ppid".
pub fn zombies_of(parents: &[i32]) -> Vec<String> {
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let (state, ppid, comm) = proc_stat(pid)?;
            (state == "Z" && parents.contains(&ppid))
                .then(|| format!("{pid} ({comm}) parent {ppid}"))
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
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

/// Direct children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|p| proc_stat(*p).map(|s| s.1 == pid).unwrap_or(false))
        .collect()
}

/// Entries of the runtime's state dir for namespace `ns` (default root).
pub fn runc_state_entries(ns: &str) -> Vec<String> {
    fs::read_dir(Path::new(RUNC_DEFAULT_ROOT).join(ns))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
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
