//! Malformed input sent straight to Keel's ttrpc socket (where ctr cannot
//! express it), on each containerd line: every case must get a specific gRPC
//! code and a message naming the offending thing, and after every case the
//! same shim must still serve another running task (State + an exec that
//! runs and reports its exit code).
//!
//! `wire_fuzz::*` then throws a few hundred seeded random and mutated request
//! bodies at every task method: each must get an answer (OK or an error
//! status, never a dropped connection or a hang), and the shim serves on.
//!
//! Run with `-- --nocapture` to see the whole table (case → code → message).

use keel_harness as common;

use common::robust::*;
use common::*;
use containerd_shim_protos::protobuf::{Message, MessageDyn};
use std::path::Path;
use std::time::Duration;

const RESOURCES_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// What a case expects.
struct Want {
    code: u64,
    /// Every one must appear in the message.
    needles: Vec<String>,
}

fn want(code: u64, needles: &[&str]) -> Want {
    Want { code, needles: needles.iter().map(|s| s.to_string()).collect() }
}

/// One row of the table.
struct Row {
    case: String,
    got_code: Option<u64>,
    message: String,
    ok: bool,
    why: String,
}

struct Table<'a> {
    r: &'a Rig,
    shim: Shim,
    victim: String,
    rows: Vec<Row>,
}

impl Table<'_> {
    /// One row: `req` must fail with `code` and a message naming every one of `needles`.
    fn rpc<Q: TaskCall>(&mut self, case: &str, req: Q, code: u64, needles: &[&str]) {
        let got = self.shim.call(&req);
        self.check(case, got, want(code, needles));
    }

    /// A row for a request naming an unknown task id.
    fn unknown<Q: TaskCall>(&mut self, nope: &str, req: Q) {
        self.rpc(&format!("{}: unknown task id", Q::METHOD), req, 5, &[nope]);
    }

    /// Records `got` against `w`, then checks the shim still serves the victim.
    fn check<T>(&mut self, case: &str, got: Rpc<T>, w: Want) {
        let mut why = Vec::new();
        match &got {
            Rpc::Err(s) => {
                if s.code != w.code {
                    why.push(format!("code {} ({}), want {} ({})", s.code, code_name(s.code), w.code, code_name(w.code)));
                }
                for n in &w.needles {
                    if !s.message.contains(n.as_str()) {
                        why.push(format!("message does not name {n:?}"));
                    }
                }
            }
            Rpc::Ok(_) => why.push(format!("accepted, want {}", code_name(w.code))),
            Rpc::Transport(t) => why.push(format!("no answer: {t}")),
        }
        self.rows.push(Row {
            case: case.to_string(),
            got_code: got.code(),
            message: got.message(),
            ok: why.is_empty(),
            why: why.join("; "),
        });
        // The shim still serves another running task.
        self.shim.assert_serves(&self.r.cd, &self.victim, case);
    }

    fn print(&self) {
        eprintln!("\n=== {} bad-input table ({} cases) ===", self.r.tag, self.rows.len());
        for (i, row) in self.rows.iter().enumerate() {
            eprintln!(
                "{:>2}. {:<46} {:<19} {}{}",
                i + 1,
                row.case,
                row.got_code.map(|c| format!("{c} {}", code_name(c))).unwrap_or_else(|| "-".into()),
                row.message,
                if row.ok { String::new() } else { format!("   <-- WRONG: {}", row.why) }
            );
        }
        eprintln!("===");
    }
}

/// A Create of the good bundle with `runtimeoptions.v1.Options`.
fn with_options(id: &str, good: &Path, path: &str, body: &str) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest { options: any(RUNTIME_OPTIONS_URL, &runtime_options(path, body)), ..create_req(id, good) }
}

fn bad_input(line: Line) {
    let r = Rig::for_runtime(line, KEEL_V1);
    let tag = r.tag.clone();
    let victim = r.sleeper("victim");
    let shim = r.shim(&victim);
    let spec = exec_spec(&r.cd, &victim, &["true"]);
    let good = make_bundle(&r, &victim, "bi-good", &["sleep", "1000000"]);

    // Tasks created straight through the shim, for state-dependent cases.
    let stopped = r.cd.id("bi-stopped");
    let sb = make_bundle(&r, &victim, &stopped, &["true"]);
    let c = shim.call(&create_req(&stopped, &sb));
    assert!(matches!(c, Rpc::Ok(_)), "{tag} create {stopped}: {c:?}");
    let s = shim.start(&stopped, "");
    assert!(matches!(s, Rpc::Ok(_)), "{tag} start {stopped}: {s:?}");
    assert_eq!(shim.wait(&stopped, "", Duration::from_secs(20)).expect("wait stopped"), 0);
    let running = r.cd.id("bi-running");
    let rb = make_bundle(&r, &victim, &running, &["sleep", "1000000"]);
    let c = shim.call(&create_req(&running, &rb));
    assert!(matches!(c, Rpc::Ok(_)), "{tag} create {running}: {c:?}");

    let mut t = Table { r: &r, shim: shim.clone(), victim: victim.clone(), rows: Vec::new() };
    // Well-formed requests with bad values, as generated messages; the
    // requests without ids of their own take `id` and `exec_id`.
    use pb::*;
    let (v, no) = (victim.as_str(), String::from("nope"));
    let state = |id: &str, exec_id: &str| StateRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() };
    let start = |id: &str| StartRequest { id: id.into(), ..Default::default() };
    let kill = |id: &str, signal| KillRequest { id: id.into(), signal, ..Default::default() };
    let resources = |json: &[u8]| UpdateTaskRequest { id: v.into(), resources: any(RESOURCES_URL, json), ..Default::default() };

    // --- ids ---
    t.rpc("Create: empty id", create_req("", &good), 3, &["empty"]);
    let long = "x".repeat(77);
    t.rpc("Create: 77-char id", create_req(&long, &good), 3, &[&long, "76"]);
    t.rpc("Create: id with '/'", create_req("a/b", &good), 3, &["a/b"]);
    t.rpc("Create: id with spaces", create_req("a b", &good), 3, &["a b"]);
    t.rpc("Create: id with '..'", create_req("..", &good), 3, &[".."]);
    t.rpc("Create: duplicate id", create_req(&victim, &good), 6, &[&victim]);

    // --- unknown task id, every method ---
    let nope = "no-such-task";
    let id = || nope.to_string();
    t.unknown(nope, state(nope, ""));
    t.unknown(nope, start(nope));
    t.unknown(nope, kill(nope, 9));
    t.unknown(nope, DeleteRequest { id: id(), ..Default::default() });
    t.unknown(nope, WaitRequest { id: id(), ..Default::default() });
    t.unknown(nope, PidsRequest { id: id(), ..Default::default() });
    t.unknown(nope, PauseRequest { id: id(), ..Default::default() });
    t.unknown(nope, ResumeRequest { id: id(), ..Default::default() });
    t.unknown(nope, UpdateTaskRequest { id: id(), ..resources(br#"{"memory":{"limit":16777216}}"#) });
    t.unknown(nope, exec_req(nope, "e1", &spec));
    t.unknown(nope, ResizePtyRequest { id: id(), width: 80, height: 24, ..Default::default() });
    t.unknown(nope, CloseIORequest { id: id(), stdin: true, ..Default::default() });
    t.unknown(nope, StatsRequest { id: id(), ..Default::default() });
    t.unknown(nope, ConnectRequest { id: id(), ..Default::default() });
    t.unknown(nope, CheckpointTaskRequest { id: id(), path: "/tmp/keel-no-checkpoint".into(), ..Default::default() });
    t.rpc("State: empty task id", state("", ""), 3, &["empty"]);

    // --- execs ---
    t.rpc("State: unknown exec id", state(v, "nope"), 5, &["nope", &victim]);
    t.rpc("Start: unknown exec id", StartRequest { exec_id: no.clone(), ..start(v) }, 5, &["nope"]);
    t.rpc("Kill: unknown exec id", KillRequest { exec_id: no.clone(), ..kill(v, 9) }, 5, &["nope"]);
    t.rpc("Delete: unknown exec id", DeleteRequest { id: v.into(), exec_id: no.clone(), ..Default::default() }, 5, &["nope"]);
    t.rpc(
        "CloseIO: unknown exec id",
        CloseIORequest { id: v.into(), exec_id: no.clone(), stdin: true, ..Default::default() },
        5,
        &["nope"],
    );
    let added = shim.call(&exec_req(&victim, "dupx", &spec));
    assert!(matches!(added, Rpc::Ok(_)), "{tag} exec dupx: {added:?}");
    t.rpc("Exec: duplicate exec id", exec_req(&victim, "dupx", &spec), 6, &["dupx"]);
    assert!(matches!(shim.delete(&victim, "dupx"), Rpc::Ok(_)));
    t.rpc("Exec: invalid exec id", exec_req(&victim, "bad id!", &spec), 3, &["bad id!"]);
    t.rpc("Exec: empty exec id", exec_req(&victim, "", &spec), 3, &["exec id"]);
    t.rpc("Exec: no spec", ExecProcessRequest { spec: None.into(), ..exec_req(v, "e-nospec", b"") }, 3, &["e-nospec", "spec"]);
    t.rpc("Exec: empty spec", exec_req(&victim, "e-empty", b""), 3, &["e-empty", "spec"]);
    t.rpc("Exec: malformed JSON spec", exec_req(&victim, "e-badjson", b"{\"args\": [\"sh\","), 3, &["e-badjson", "spec"]);
    t.rpc("Exec: spec of the wrong JSON type", exec_req(&victim, "e-array", b"[1,2,3]"), 3, &["e-array", "spec"]);
    t.rpc("Exec: bad stdout URI", ExecProcessRequest { stdout: "ftp:///x".into(), ..exec_req(v, "e-uri", &spec) }, 3, &["ftp:///x"]);
    t.rpc("Exec: into a stopped task", exec_req(&stopped, "late", &spec), 9, &[&stopped, "stopped"]);

    // --- bundles and rootfs ---
    t.rpc("Create: relative bundle path", create_req("bi-rel", Path::new("rel/bundle")), 3, &["rel/bundle"]);
    let empty = r.cd.dir.join("bundles/bi-empty");
    std::fs::create_dir_all(&empty).unwrap();
    t.rpc("Create: bundle without config.json", create_req("bi-empty", &empty), 5, &["config.json"]);
    let bad = r.cd.dir.join("bundles/bi-badcfg");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("config.json"), "{\"ociVersion\": \"1.0.2\", \"process\": ").unwrap();
    t.rpc("Create: malformed config.json", create_req("bi-badcfg", &bad), 3, &["config.json"]);
    let noroot = make_bundle(&r, &victim, "bi-noroot", &["true"]);
    {
        let p = noroot.join("config.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["root"]["path"] = serde_json::json!("/nonexistent/keel-rootfs");
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    }
    t.rpc("Create: spec root path missing", create_req("bi-noroot", &noroot), 5, &["/nonexistent/keel-rootfs"]);
    let mnt = make_bundle(&r, &victim, "bi-mnt", &["true"]);
    let mount =
        Mount { type_: "bind".into(), source: "/nonexistent/keel-layer".into(), options: vec!["rbind".into()], ..Default::default() };
    t.rpc(
        "Create: rootfs mount source missing",
        CreateTaskRequest { rootfs: vec![mount], ..create_req("bi-mnt", &mnt) },
        5,
        &["/nonexistent/keel-layer"],
    );
    let mntcheck = crate::common::mounts_below(&mnt);
    assert!(mntcheck.is_empty(), "{tag} failed create left mounts: {mntcheck:?}");

    // --- stdio ---
    let stdio = |id: &str, stdin: &str, stdout: &str, stderr: &str| CreateTaskRequest {
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
        ..create_req(id, &good)
    };
    t.rpc("Create: stdout URI ftp:///x", stdio("bi-ftp", "", "ftp:///x", ""), 3, &["ftp:///x"]);
    t.rpc("Create: relative file:// path", stdio("bi-relfile", "", "file://rel/x.log", ""), 3, &["file://rel/x.log"]);
    t.rpc("Create: relative stdin path", stdio("bi-stdin", "stdin-fifo", "", ""), 3, &["stdin-fifo"]);
    t.rpc(
        "Create: terminal with file:// stdout",
        CreateTaskRequest { terminal: true, ..stdio("bi-ttyfile", "", "file:///tmp/x.log", "") },
        3,
        &["file:///tmp/x.log", "terminal"],
    );
    t.rpc("Create: binary:// as stderr only", stdio("bi-binerr", "", "", "binary:///bin/true"), 3, &["binary:///bin/true"]);

    // --- runtime options ---
    t.rpc(
        "Create: unknown options type_url",
        CreateTaskRequest { options: any("example.com/Unknown", b"\x08\x01"), ..create_req("bi-opt1", &good) },
        3,
        &["example.com/Unknown"],
    );
    // A well-formed Any whose value is not a runc Options message.
    t.rpc(
        "Create: malformed runc Options bytes",
        CreateTaskRequest { options: any("containerd.runc.v1.Options", &[0xff, 0xff, 0xff]), ..create_req("bi-opt2", &good) },
        3,
        &["containerd.runc.v1.Options"],
    );
    t.rpc("Create: TOML option with an unknown key", with_options("bi-opt3", &good, "", "BinaryNme = \"runc\"\n"), 3, &["BinaryNme"]);
    t.rpc("Create: TOML option of the wrong type", with_options("bi-opt4", &good, "", "SystemdCgroup = \"yes\"\n"), 3, &["SystemdCgroup"]);
    t.rpc(
        "Create: options ConfigPath missing",
        with_options("bi-opt5", &good, "/nonexistent/keel.toml", ""),
        3,
        &["/nonexistent/keel.toml"],
    );
    t.rpc(
        "Create: BinaryName that does not exist",
        with_options("bi-opt6", &good, "", "BinaryName = \"/nonexistent/runc\"\n"),
        9,
        &["/nonexistent/runc"],
    );

    // --- signals, resize, update ---
    t.rpc("Kill: signal 65", kill(v, 65), 3, &["signal 65"]);
    t.rpc("Kill: signal 2^32-1", kill(v, u32::MAX), 3, &["4294967295"]);
    t.rpc(
        "ResizePty: process without a terminal",
        ResizePtyRequest { id: v.into(), width: 80, height: 24, ..Default::default() },
        9,
        &[&victim, "terminal"],
    );
    t.rpc("Update: negative memory limit", resources(br#"{"memory":{"limit":-5}}"#), 3, &["memory.limit -5"]);
    t.rpc("Update: no resources", UpdateTaskRequest { resources: None.into(), ..resources(b"") }, 3, &[&victim, "resources"]);
    t.rpc("Update: malformed resources JSON", resources(b"{\"memory\":"), 3, &[&victim, "resources"]);

    // --- state machine ---
    let s = shim.start(&running, "");
    assert!(matches!(s, Rpc::Ok(_)), "{tag} start {running}: {s:?}");
    t.rpc("Start: twice", start(&running), 9, &[&running]);
    t.rpc("Delete: running task", DeleteRequest { id: running.clone(), ..Default::default() }, 9, &[&running]);
    t.rpc("Pause: stopped task", PauseRequest { id: stopped.clone(), ..Default::default() }, 9, &[&stopped, "stopped"]);
    t.rpc("Resume: running task", ResumeRequest { id: v.into(), ..Default::default() }, 9, &[&victim]);
    t.rpc("Kill: stopped task", kill(&stopped, 9), 5, &[&stopped]);
    t.rpc("Start: stopped task", start(&stopped), 9, &[&stopped]);

    // --- the wire itself ---
    // These three are answered by the ttrpc library, before Keel's code: an
    // undecodable body is Unknown ("Unpack request error"), an unknown service
    // InvalidArgument (Go's ttrpc says Unimplemented for both unknown services
    // and methods; ttrpc-rust only for methods). Recorded as they are. The
    // first needs raw bytes: a length that runs past the end of the body.
    let timeout = Duration::from_secs(10);
    t.check("State: undecodable protobuf body", shim.raw("State", &[0x0a, 0xff, 0xff, 0xff, 0x0f], timeout), want(2, &["request"]));
    let body = state(v, "").write_to_bytes().unwrap_or_else(|e| panic!("encode State: {e}"));
    t.check("Frobnicate: unknown method", shim.raw("Frobnicate", &body, timeout), want(12, &["Frobnicate"]));
    t.check(
        "State: unknown service",
        rpc(&shim.sock, &shim.ns, "containerd.task.v9.Task", "State", &body, timeout),
        want(3, &["containerd.task.v9.Task"]),
    );

    t.print();

    // Clean up the tasks made straight through the shim.
    let k = shim.kill(&running, "", 9, false);
    assert!(matches!(k, Rpc::Ok(_)), "{tag} kill {running}: {k:?}");
    assert_eq!(shim.wait(&running, "", Duration::from_secs(20)).expect("wait running"), 137);
    for id in [&running, &stopped] {
        let d = shim.delete(id, "");
        assert!(matches!(d, Rpc::Ok(_)), "{tag} delete {id}: {d:?}");
    }
    assert!(runc_state_entries(&r.cd.ns).iter().all(|e| e == &victim), "{tag} runtime state: {:?}", runc_state_entries(&r.cd.ns));
    r.assert_exec_works(&victim, "the bad-input table");

    let wrong: Vec<&Row> = t.rows.iter().filter(|r| !r.ok).collect();
    assert!(t.rows.len() >= 30);
    assert!(
        wrong.is_empty(),
        "{tag} {} of {} bad inputs answered wrongly:\n{}",
        wrong.len(),
        t.rows.len(),
        wrong.iter().map(|r| format!("{}: {:?} {:?}: {}", r.case, r.got_code, r.message, r.why)).collect::<Vec<_>>().join("\n")
    );
}

// ---------------------------------------------------------------------------
// seeded wire fuzz
// ---------------------------------------------------------------------------

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(b.len() + 1);
                b.insert(i, rng.next() as u8);
            }
            3 if !b.is_empty() => {
                let cut = rng.below(b.len());
                b.truncate(cut);
            }
            _ => {
                let i = rng.below(b.len() + 1);
                let n = rng.below(8);
                for k in 0..n {
                    b.insert(i + k, rng.next() as u8);
                }
            }
        }
    }
    b
}

/// Field kinds of the task messages, for structure-aware bodies.
#[derive(Clone, Copy)]
enum F {
    /// An id (task or exec): weird strings, never the victim's.
    Id(u32),
    /// A path or URI.
    Path(u32),
    Uint(u32),
    Bool(u32),
    /// A google.protobuf.Any with a JSON-ish or protobuf-ish value.
    Any(u32),
    /// A repeated containerd.types.Mount.
    Mounts(u32),
}

/// Request fields per method (containerd's shim.proto).
fn shape(method: &str) -> Vec<F> {
    use F::*;
    match method {
        "Create" => vec![Id(1), Path(2), Mounts(3), Bool(4), Path(5), Path(6), Path(7), Path(8), Path(9), Any(10)],
        "Exec" => vec![Id(1), Id(2), Bool(3), Path(4), Path(5), Path(6), Any(7)],
        "Kill" => vec![Id(1), Id(2), Uint(3), Bool(4)],
        "ResizePty" => vec![Id(1), Id(2), Uint(3), Uint(4)],
        "CloseIO" => vec![Id(1), Id(2), Bool(3)],
        "Update" => vec![Id(1), Any(2)],
        "Checkpoint" => vec![Id(1), Path(2), Any(3)],
        "State" | "Start" | "Delete" | "Wait" => vec![Id(1), Id(2)],
        _ => vec![Id(1)],
    }
}

fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.below(xs.len())]
}

fn weird_id(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 => vec![b'z'; 1 + rng.below(200)],
        1 => (0..rng.below(12)).map(|_| rng.next() as u8).collect(),
        _ => pick(rng, &["", "fz", "fz-1", "..", ".", "a/b", "a b", "-x", "x-", "a--b", "\u{0}", "$(id)", "`id`", "a;b", "\u{e4}", "x\n"])
            .as_bytes()
            .to_vec(),
    }
}

fn weird_path(rng: &mut Rng) -> Vec<u8> {
    match rng.below(8) {
        0 => vec![b'/'; 1 + rng.below(5000)],
        1 => (0..rng.below(16)).map(|_| rng.next() as u8).collect(),
        _ => pick(
            rng,
            &[
                "",
                "/",
                "rel",
                "/nonexistent/fz",
                "/proc/self",
                "/dev/null",
                "file://",
                "file:///",
                "file://rel",
                "fifo://",
                "fifo:///nonexistent/fz",
                "binary://",
                "binary:///nonexistent/fz?a=b&c",
                "ftp:///x",
                "://",
                "/tmp/keel-fz/../../etc",
                "file:///nonexistent/fz/\u{0}x",
            ],
        )
        .as_bytes()
        .to_vec(),
    }
}

fn weird_any(rng: &mut Rng) -> Pb {
    let url = pick(
        rng,
        &[
            "",
            "containerd.runc.v1.Options",
            "runtimeoptions.v1.Options",
            PROCESS_URL,
            RESOURCES_URL,
            "containerd.runc.v1.CheckpointOptions",
            "x/y/z",
            "/",
        ],
    );
    let value: Vec<u8> = match rng.below(6) {
        0 => (0..rng.below(40)).map(|_| rng.next() as u8).collect(),
        1 => runtime_options("/nonexistent/fz.toml", pick(rng, &["", "Root = 1", "BinaryName = \"/nonexistent/fz\"", "[x]\ny=1", "= ="])),
        _ => pick(
            rng,
            &[
                "",
                "{}",
                "null",
                "[]",
                "{\"args\":[]}",
                "{\"args\":[\"true\"],\"cwd\":\"/\"}",
                "{\"args\":[\"true\"],\"cwd\":\"rel\"}",
                "{\"user\":{\"uid\":-1}}",
                "{\"memory\":{\"limit\":0}}",
                "{\"pids\":{\"limit\":-9}}",
                "{\"cpu\":{\"shares\":0}}",
                "{\"memory\":{\"limit\":99999999999999999999999}}",
                "{\"args\":[\"true\"],\"cwd\":\"/\",\"terminal\":true}",
            ],
        )
        .as_bytes()
        .to_vec(),
    };
    Pb::any(url, &value)
}

/// A request body shaped like `method`'s message with odd values.
fn structured(rng: &mut Rng, method: &str) -> Vec<u8> {
    let mut b = Pb::new();
    for f in shape(method) {
        if rng.below(5) == 0 {
            continue;
        }
        b = match f {
            F::Id(n) => b.bytes(n, &weird_id(rng)),
            F::Path(n) => b.bytes(n, &weird_path(rng)),
            F::Uint(n) => {
                let v = [0u64, 1, 9, 15, 64, 65, 1 << 31, u32::MAX as u64, u64::MAX][rng.below(9)];
                b.uint(n, v)
            }
            F::Bool(n) => b.uint(n, [0u64, 1, 2, u64::MAX][rng.below(4)]),
            F::Any(n) => b.msg(n, weird_any(rng)),
            F::Mounts(n) => {
                let mut b = b;
                for _ in 0..rng.below(3) {
                    let m = Pb::new()
                        .str(1, pick(rng, &["", "bind", "overlay", "tmpfs", "nope"]))
                        .bytes(2, &weird_path(rng))
                        .str(4, pick(rng, &["rbind", "ro", "lowerdir=/nonexistent", "remount", ""]));
                    b = b.msg(n, m);
                }
                b
            }
        };
    }
    b.0
}

fn wire_fuzz(line: Line) {
    let r = Rig::for_runtime(line, KEEL_V1);
    let tag = r.tag.clone();
    let victim = r.sleeper("victim");
    let shim = r.shim(&victim);
    let seed: u64 = std::env::var("KEEL_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6b65656c);
    let calls: usize = std::env::var("KEEL_FUZZ_N").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let mut rng = Rng((seed ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1);
    let spec = exec_spec(&r.cd, &victim, &["true"]);
    // Well-formed templates aimed at ids that do not exist (a mutation that
    // hits the victim's exact id is vanishingly unlikely and would only signal it).
    use pb::*;
    let enc = |m: &dyn MessageDyn| m.write_to_bytes_dyn().unwrap_or_else(|e| panic!("encode a template: {e}"));
    let templates: Vec<(&str, Vec<u8>)> = vec![
        (
            "Create",
            enc(&CreateTaskRequest {
                stdout: "file:///tmp/fz.log".into(),
                options: any(RUNTIME_OPTIONS_URL, &runtime_options("", "Root = \"/tmp/fz\"\n")),
                ..create_req("fz-c", Path::new("/nonexistent/fz"))
            }),
        ),
        ("State", enc(&StateRequest { id: "fz-s".into(), exec_id: "e".into(), ..Default::default() })),
        ("Start", enc(&StartRequest { id: "fz-s".into(), ..Default::default() })),
        ("Kill", enc(&KillRequest { id: "fz-k".into(), signal: 9, all: true, ..Default::default() })),
        ("Delete", enc(&DeleteRequest { id: "fz-d".into(), ..Default::default() })),
        ("Wait", enc(&WaitRequest { id: "fz-w".into(), exec_id: "e".into(), ..Default::default() })),
        ("Pids", enc(&PidsRequest { id: "fz-p".into(), ..Default::default() })),
        ("Pause", enc(&PauseRequest { id: "fz-p".into(), ..Default::default() })),
        ("Resume", enc(&ResumeRequest { id: "fz-r".into(), ..Default::default() })),
        (
            "Update",
            enc(&UpdateTaskRequest {
                id: "fz-u".into(),
                resources: any(RESOURCES_URL, br#"{"memory":{"limit":-5}}"#),
                ..Default::default()
            }),
        ),
        ("Exec", enc(&ExecProcessRequest { stdout: "ftp:///x".into(), ..exec_req("fz-e", "e1", &spec) })),
        ("Exec", enc(&exec_req(&victim, "fz-x", b"{\"args\":"))),
        // A width past uint32 (and an explicit zero height): raw bytes only.
        ("ResizePty", Pb::new().str(1, "fz-t").uint(3, 1 << 40).uint(4, 0).0),
        ("CloseIO", enc(&CloseIORequest { id: "fz-i".into(), stdin: true, ..Default::default() })),
        ("Stats", enc(&StatsRequest { id: "fz-st".into(), ..Default::default() })),
        ("Connect", enc(&ConnectRequest { id: "fz-cn".into(), ..Default::default() })),
        (
            "Checkpoint",
            enc(&CheckpointTaskRequest { id: "fz-cp".into(), path: "rel".into(), options: any("x", b"\xff"), ..Default::default() }),
        ),
    ];
    let mut answered = 0;
    let mut codes: std::collections::BTreeMap<u64, usize> = Default::default();
    let mut transport = Vec::new();
    let t0 = std::time::Instant::now();
    for i in 0..calls {
        let (method, base) = &templates[rng.below(templates.len())];
        let body = match rng.below(8) {
            0 => (0..rng.below(48)).map(|_| rng.next() as u8).collect(),
            1 | 2 => mutate(&mut rng, base.clone()),
            _ => structured(&mut rng, method),
        };
        let res = shim.raw(method, &body, Duration::from_secs(10));
        match res.code() {
            Some(c) => {
                answered += 1;
                *codes.entry(c).or_default() += 1;
            }
            None => transport.push(format!("#{i} {method} {body:02x?}: {}", res.message())),
        }
        if i % 100 == 99 {
            let st = shim.state(&victim, "");
            assert!(matches!(&st, Ok(s) if s.status == ST_RUNNING), "{tag} after {} fuzz calls the victim is not served: {st:?}", i + 1);
        }
    }
    eprintln!(
        "{tag} wire fuzz: seed {seed:#x}, {calls} calls in {:?}, {answered} answered; codes {:?}",
        t0.elapsed(),
        codes.iter().map(|(c, n)| format!("{}:{n}", code_name(*c))).collect::<Vec<_>>()
    );
    assert!(transport.is_empty(), "{tag} calls without an answer:\n{}", transport.join("\n"));
    shim.assert_serves(&r.cd, &victim, "the wire fuzz");
    r.assert_exec_works(&victim, "the wire fuzz");
    assert!(runc_state_entries(&r.cd.ns).iter().all(|e| e == &victim), "{tag} fuzz left runtime state: {:?}", runc_state_entries(&r.cd.ns));
}

// ---------------------------------------------------------------------------
// escaped characters in log URIs
// ---------------------------------------------------------------------------

/// ctr (like every Go client) sends a log URI in its escaped form
/// (`url.URL.String()`: a space is `%20`, `(` is `%28`); runc-v2 decodes it
/// (`url.Parse`: `u.Path`, `u.Query()`). A path or logger argument with such
/// characters must end up where the user named it, with Keel as with runc-v2.
fn uri_escapes(line: Line) {
    let mut found = Vec::new();
    for rt in [RUNC_V2, KEEL_V1] {
        let mut r = Rig::for_runtime(line, KEEL_V1);
        r.rt = rt;
        let tag = format!("[{rt} {}]", line.name());
        // `ctr run --rm --log-uri uri` printing `text`: its exit code, and
        // whether `text` arrived in `path`.
        let run_logged = |uri: &str, id: &str, text: &str, path: &Path| {
            let o = r.run(&["--rm", "--log-uri", uri], &r.cd.id(id), &["sh", "-c", &format!("echo {text}; sleep 0.2")]);
            let arrived = poll(Duration::from_secs(5), || std::fs::read_to_string(path).ok().filter(|s| s.contains(text))).is_some();
            (o, arrived)
        };
        // file://
        let want = r.cd.dir.join("logs dir").join("my app (1).log");
        let uri = format!("file://{}", want.display());
        let (o, file_ok) = run_logged(&uri, "esc", "logged", &want);
        let listing = |d: &Path| -> Vec<String> {
            let mut v = Vec::new();
            let mut todo = vec![d.to_path_buf()];
            while let Some(p) = todo.pop() {
                for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                    v.push(e.path().strip_prefix(&r.cd.dir).unwrap_or(&e.path()).display().to_string());
                    if e.path().is_dir() {
                        todo.push(e.path());
                    }
                }
            }
            v
        };
        let files = listing(&r.cd.dir.join("logs dir")).into_iter().chain(listing(&r.cd.dir.join("logs%20dir"))).collect::<Vec<_>>();
        eprintln!("{tag} --log-uri {uri:?} -> {:?}; file at the named path: {file_ok}; files: {files:?}", o.code);
        // binary://
        let logger = r.cd.dir.join("my logger");
        std::fs::write(&logger, "#!/bin/sh\n# containerd logging binary: fd 3 stdout, fd 4 stderr, close fd 5 when ready\nout=\"$2\"\nexec 5>&-\ncat <&3 > \"$out\" &\ncat <&4 > /dev/null &\nwait\n").unwrap();
        std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let bout = r.cd.dir.join("binary out.log");
        let buri = format!("binary://{}?out={}", logger.display(), bout.display());
        let (o2, bin_ok) = run_logged(&buri, "escb", "via-binary", &bout);
        eprintln!("{tag} --log-uri {buri:?} -> {:?} {}; output at the named path: {bin_ok}", o2.code, o2.err().trim());
        found.push((rt, o.code, file_ok, o2.code, bin_ok));
    }
    let (runc, keel) = (&found[0], &found[1]);
    assert!(runc.2 && runc.4, "the reference (runc-v2) does not decode log URIs here: {found:?}");
    assert!(
        keel.2 && keel.4 && keel.1 == Some(0) && keel.3 == Some(0),
        "[keel {}] escaped log URIs: file:// at the named path: {}, binary:// at the named path: {} (runc-v2: both); {found:?}",
        line.name(),
        keel.2,
        keel.4
    );
}

// ---------------------------------------------------------------------------
// decoder properties (the cargo-fuzz target's checks, run deterministically)
// ---------------------------------------------------------------------------

#[path = "../fuzz/src/lib.rs"]
mod decoders;

/// Seeded inputs for `decoders::check` (fuzz/src/lib.rs): dictionary entries
/// per decoder, mutated, plus random bytes. `KEEL_PROP_N` inputs (default 200000).
#[test]
fn decoder_properties() {
    let dict: [&[&str]; 10] = [
        &["", "\x0a\x04crun", "\x12\x06/run/x\x18\x01", "\x7f\x7f\x7f"],
        &["", "\x12\x0f/etc/keel.toml", "\x1a\x13BinaryName = \"crun\"", "\x0a\x00"],
        &[
            "BinaryName = \"crun\"",
            "SystemdCgroup = true\nRoot = \"/x\"",
            "BinaryNme = 1",
            "IoUid = -1",
            "IoUid = 4294967296",
            "TypeUrl = \"x\"\nCriuPath = \"\"",
            "a = 1",
        ],
        &[
            "BinaryName = \"crun\"",
            "ShimCgroup = \"/x\"\nIoGid = 7",
            "NoPivotRoot = \"yes\"",
            "Weird = true",
            "= 1",
            "\"BinaryName\" = \"x\"",
            "a.b = 1",
        ],
        &[
            "example.com/Unknown",
            "containerd.runc.v1.Options",
            "x/runtimeoptions.v1.Options",
            "containerd.runc.v1.CheckpointOptions",
            "/",
            "a/b/c",
        ],
        &[
            "",
            "/a",
            "rel",
            "fifo:///a",
            "fifo://rel",
            "file:///a/b.log",
            "file://rel",
            "binary:///bin/x?a=b&c",
            "binary://",
            "ftp:///x",
            "://",
            "file:///a?x=1",
            "/",
        ],
        &["a", "abc-1", "a.b_c-d", "-a", "a-", "a--b", "a._b", "a/b", "a b", "\u{e4}", "A1.b2", "1", ".a", "a."],
        &[
            "{\"memory\":{\"limit\":-5}}",
            "{\"memory\":{\"limit\":0}}",
            "{\"cpu\":{\"quota\":0}}",
            "{\"cpu\":{\"shares\":0}}",
            "{\"pids\":{\"limit\":-7}}",
            "{}",
            "{\"memory\":{\"limit\":-1,\"swap\":-2}}",
        ],
        &["ro,rbind", "lowerdir=/a:/b,upperdir=/u,index=off", ",,", "ro,rw,remount", "bind"],
        &["-namespace\u{0}x\u{0}-id\u{0}y\u{0}start", "-bogus", "-id", "\u{0}\u{0}", "-debug\u{0}delete", "-v"],
    ];
    let n: usize = std::env::var("KEEL_PROP_N").ok().and_then(|s| s.parse().ok()).unwrap_or(200000);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // Long ids around the 76-byte limit.
    let long: Vec<String> = [75usize, 76, 77].iter().map(|l| "x".repeat(*l)).collect();
    for i in 0..n {
        let sel = (i % 10) as u8;
        let mut payload: Vec<u8> = if sel == 6 && rng.below(10) == 0 {
            long[rng.below(3)].clone().into_bytes()
        } else {
            dict[sel as usize][rng.below(dict[sel as usize].len())].as_bytes().to_vec()
        };
        match rng.below(8) {
            0 => payload = (0..rng.below(40)).map(|_| rng.next() as u8).collect(),
            1..=4 => payload = mutate(&mut rng, payload),
            _ => {}
        }
        let mut data = vec![sel + 10 * rng.below(25) as u8];
        data.extend_from_slice(&payload);
        if let Err(e) = std::panic::catch_unwind(|| decoders::check(&data)) {
            eprintln!("decoder property failed on input #{i}: {data:02x?} ({:?})", String::from_utf8_lossy(&data));
            std::panic::resume_unwind(e);
        }
    }
    // The exact edges.
    assert!(decoders::containerd_id_ok(&long[1]) && !decoders::containerd_id_ok(&long[2]));
    eprintln!("decoder properties: {n} inputs checked");
}

per_line!(table, super::bad_input);
per_line!(wire_fuzz, super::wire_fuzz);
per_line!(uri_escapes, super::uri_escapes);
