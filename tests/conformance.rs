//! Where containerd's own suites (integration/client, critest) saw Keel and
//! containerd-shim-runc-v2 differ. Every scenario runs the same steps against
//! both shims on containerd 1.6 and 2.x and asserts the same observable result:
//!   keel::<scenario>::containerd_1_6 / containerd_2
//!   runc::<scenario>::containerd_1_6 / containerd_2   (the reference)
//!
//! - exec_terminal_from_request: containerd's Go client asks for the exec's
//!   terminal in the request and sends a process spec that says none; the
//!   whole output of `seq -s " " 1000000` comes back through the pty each time.
//! - init_exit_while_exec_starts: the init is killed while an exec is held
//!   inside the runtime (containerd issue 10589): the init's exit is held,
//!   State says RUNNING, a new exec can be added but not started, and once
//!   the held exec fails the task stops and deletes at once.
//! - kill_after_exit_is_not_found / kill_races_exit: a kill that reaches the
//!   runtime after the init died is NotFound (containerd and the CRI plugin
//!   take that as done), never FailedPrecondition.
//! - kill_signal_zero_probes: signal 0 is a liveness probe (OK, then NotFound).
//! - resize_before_start, missing_binaries, deleted_by_the_runtime:
//!   containerd's TestTaskResize, TestRegressionIssue6429,
//!   TestContainerExecNoBinaryExists and TestKillContainerDeletedByRunc.
//! - host_pid_init_exit_kills_the_rest: a container in the host's pid
//!   namespace leaves nothing running once its exit is published.
//! - slow_logger_does_not_stall_the_pod: a `binary://` logger that takes 3 s
//!   to get ready does not stop the shim answering for the pod's other containers.
//! - concurrent_creates_of_one_id: two Creates of one id at once; the winner's
//!   container is untouched by the loser's clean-up.
//!
//! Two scenarios use a stand-in runtime that HOLDS one call at a chosen point
//! and then runs the real runc unchanged (the race cannot be forced
//! otherwise); each says so where it is written.

use keel_harness as common;

use common::api::Api;
use common::production::api_task_wait;
use common::robust::*;
use common::*;
use containerd_client::tonic::Code;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A stand-in runtime script at `<dir>/<name>`, and the `ctr run` flags that
/// make `r`'s runtime use it: runtime options with `BinaryName` (Keel takes
/// them as a TOML file; ctr sends runc-v2 its own options with --runc-binary).
fn stand_in(r: &Rig, name: &str, body: &str) -> (PathBuf, Vec<String>) {
    let script = r.cd.dir.join(name);
    fs::write(&script, format!("#!/bin/sh\n{body}\nexec /usr/sbin/runc \"$@\"\n")).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let s = script.to_string_lossy().into_owned();
    let flags = if r.rt == KEEL_V1 {
        let cfg = r.write_runtime_config(name, &format!("BinaryName = \"{s}\"\n"));
        vec!["--runtime-config-path".to_string(), cfg.to_string_lossy().into_owned()]
    } else {
        vec!["--runc-binary".to_string(), s]
    };
    (script, flags)
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// Reads the fifo at `path` to EOF in the background, as a client's reader does.
fn read_fifo(path: &Path) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Ok(mut f) = fs::File::open(&p) {
            let _ = f.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The request asks for a terminal, the spec does not (containerd's Go client
/// with `cio.WithTerminal` and the container's own process spec): the request
/// decides. Run `KEEL_TTY_EXEC_N` times (100, as containerd's
/// TestContainerExecLargeOutputWithTTY): the pty's last bytes must arrive
/// every time, exit code 0.
fn exec_terminal_from_request(line: Line, rt: &'static str) {
    let r = Rig::for_runtime(line, rt);
    let api = Api { cd: &r.cd };
    let id = r.sleeper("ttyreq");
    let spec = exec_spec(&r.cd, &id, &["seq", "-s", " ", "1000000"]);
    let v: serde_json::Value = serde_json::from_slice(&spec).unwrap();
    assert_eq!(v["terminal"], false, "the spec itself asks for no terminal");
    let n = env_count("KEEL_TTY_EXEC_N", 100);
    // One exec id for every round, freed by each Delete (containerd's test does the same).
    let eid = "tty";
    for i in 0..n {
        let out = r.cd.fifo_dir.join(format!("{eid}-stdout"));
        mkfifo(&out);
        let rx = read_fifo(&out);
        let out_s = out.to_string_lossy().into_owned();
        if let Err(e) = api.exec(&id, eid, &spec, &out_s, true) {
            panic!("{} exec #{i} with terminal=true in the request: {e:?}", r.tag);
        }
        if let Err(e) = api.start(&id, eid) {
            panic!("{} start exec #{i} (terminal in the request only): {e:?}\n{}", r.tag, r.cd.log_tail(20));
        }
        let code = api_task_wait(&r.cd, &r.cd.ns, &id, eid, Duration::from_secs(60));
        let data =
            rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("{} exec #{i}: stdout fifo never reached EOF", r.tag));
        let text = String::from_utf8_lossy(&data);
        assert_eq!(code, Ok(0), "{} exec #{i} exit status", r.tag);
        assert!(
            text.trim_end().ends_with("999999 1000000"),
            "{} exec #{i}: the tail of the terminal's output is lost ({} bytes, ends {:?})",
            r.tag,
            data.len(),
            &text[text.len().saturating_sub(40)..]
        );
        assert!(text.starts_with("1 2 3 "), "{} exec #{i}: output starts {:?}", r.tag, &text[..text.len().min(20)]);
        api.delete_exec(&id, eid).unwrap_or_else(|e| panic!("{} delete exec #{i}: {e:?}", r.tag));
        let _ = fs::remove_file(&out);
    }
    r.kill_delete(&id);
}

/// What a shim shows while the init has died and an exec is still starting.
#[derive(Debug)]
struct HeldExit {
    /// Tasks.Get of the init while exec1 is held in the runtime.
    state_while_held: String,
    exit_published_while_held: bool,
    /// Adding exec2 then, and starting it.
    add_exec2: Result<(), Code>,
    start_exec2: Result<u32, Code>,
    /// exec1's Start once the runtime call went on.
    start_exec1: Result<u32, Code>,
    exec_states_after: Vec<String>,
    init_exits: usize,
}

/// containerd issue 10589. THE STAND-IN RUNTIME HOLDS `exec` on a fifo until
/// the test releases it, then runs the real runc: the only way to have an
/// exec still starting when the init dies.
fn init_exit_while_exec_starts(line: Line, rt: &'static str) {
    let r = Rig::for_runtime(line, rt);
    let api = Api { cd: &r.cd };
    let held = r.cd.dir.join("exec.held");
    let release = r.cd.dir.join("exec.release");
    mkfifo(&release);
    let body = format!("case \" $* \" in\n  *\" exec \"*) echo $$ >> '{}'; read _ < '{}' ;;\nesac", held.display(), release.display());
    let (_script, flags) = stand_in(&r, "held-exec-runtime", &body);
    let id = r.cd.id("heldexec");
    r.run_d(&strs(&flags), &id, &["sleep", "1000000"]);
    let pid = r.wait_status(&id, "RUNNING");
    let ev = r.cd.events();
    let spec = exec_spec(&r.cd, &id, &["true"]);
    let code = |e: common::api::ApiError| e.code;
    // Debian's containerd-shim-runc-v2 1.6.20 predates the fix for containerd
    // issue 10589: while exec1 is held it answers neither State nor Exec
    // (each call times out), so only the end is compared for it; the Go shim
    // of containerd 2.x is the reference for the rest.
    let old_reference = rt == RUNC_V2 && line == Line::V16;
    let not_asked = || Err(Code::Unavailable);

    // exec1 through the API (ctr would delete it when its Start fails).
    api.exec(&id, "exec1", &spec, "", false).unwrap_or_else(|e| panic!("{} add exec1: {e:?}", r.tag));
    let seen = std::thread::scope(|s| {
        let exec1 = s.spawn(|| api.start(&id, "exec1"));
        let reached = poll(Duration::from_secs(20), || held.exists().then_some(()));
        assert!(reached.is_some(), "{} exec1 never reached the runtime", r.tag);
        // SAFETY: kill(2) of the container's init, as `kill -9` from the host would.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let reaped = poll(Duration::from_secs(10), || (!Path::new(&format!("/proc/{pid}")).exists()).then_some(()));
        assert!(reaped.is_some(), "{} init {pid} was not reaped", r.tag);
        std::thread::sleep(Duration::from_millis(300));
        let state_while_held = if old_reference {
            "not asked".to_string()
        } else {
            match api.get(&id, "") {
                Ok((s, _, _)) => s,
                Err(e) => format!("{:?}", e.code),
            }
        };
        let exit_published_while_held = task_events(&ev, &id).iter().any(|e| e.topic == "/tasks/exit");
        let add_exec2 = if old_reference { not_asked() } else { api.exec(&id, "exec2", &spec, "", false).map_err(code) };
        let start_exec2 = if old_reference { Err(Code::Unavailable) } else { api.start(&id, "exec2").map_err(code) };
        // Let exec1's runtime call go on: runc finds the container dead.
        drop(fs::OpenOptions::new().write(true).open(&release).unwrap());
        let start_exec1 = exec1.join().unwrap().map_err(code);
        ev.wait_for(|e| e.topic == "/tasks/exit" && e.payload["id"] == id.as_str(), Duration::from_secs(10));
        poll(STATE_TIMEOUT, || r.task(&id).filter(|t| t.1 == "STOPPED").map(|_| ()));
        let exec_states_after = ["exec1", "exec2"]
            .iter()
            .map(|e| match api.get(&id, e) {
                Ok((s, _, _)) => s,
                Err(e) => format!("{:?}", e.code),
            })
            .collect();
        let init_exits = task_events(&ev, &id).into_iter().filter(|e| e.topic == "/tasks/exit").count();
        HeldExit { state_while_held, exit_published_while_held, add_exec2, start_exec2, start_exec1, exec_states_after, init_exits }
    });
    eprintln!("{} init killed while exec1 starts: {seen:?}", r.tag);
    if old_reference {
        eprintln!("{} (the 1.6.20 Go shim predates the fix for containerd#10589: only the end is compared)", r.tag);
    } else {
        assert_eq!(seen.state_while_held, "RUNNING", "{} State while exec1 starts: {seen:?}", r.tag);
        assert!(!seen.exit_published_while_held, "{} /tasks/exit published while exec1 was starting: {seen:?}", r.tag);
        assert_eq!(seen.add_exec2, Ok(()), "{} adding exec2 while the init's exit is held: {seen:?}", r.tag);
        assert_eq!(seen.start_exec2.map(drop), Err(Code::FailedPrecondition), "{} starting exec2 after the init died: {seen:?}", r.tag);
        assert!(seen.start_exec1.is_err(), "{} exec1 in a dead container must fail: {seen:?}", r.tag);
        assert_eq!(seen.exec_states_after, ["CREATED", "CREATED"], "{} exec states after the task stopped: {seen:?}", r.tag);
    }
    assert_eq!(seen.init_exits, 1, "{} /tasks/exit events: {:?}", r.tag, task_events(&ev, &id));
    r.wait_status(&id, "STOPPED");
    let t0 = Instant::now();
    let o = r.cd.ctr_timeout(&["tasks", "delete", "-f", &id], Duration::from_secs(2));
    assert!(o.ok(), "{} delete with kill: {} after {:?}\n{}", r.tag, o.describe(), t0.elapsed(), r.cd.log_tail(20));
    assert!(r.task(&id).is_none(), "{} task still listed after delete", r.tag);
    r.cd.ctr_ok(&["containers", "delete", &id]);
}

/// THE STAND-IN RUNTIME HOLDS `kill` until the container's init is dead (it
/// SIGKILLs the init itself and waits until it is a zombie or reaped), then
/// runs the real `runc kill`, which finds the container stopped: the case of a
/// Kill that lands just after the init died.
fn kill_after_exit_is_not_found(line: Line, rt: &'static str) {
    let r = Rig::for_runtime(line, rt);
    let api = Api { cd: &r.cd };
    let trigger = r.cd.dir.join("kill.trigger");
    let body = format!(
        "case \" $* \" in\n  *\" kill \"*)\n    t='{t}'\n    if [ -f \"$t\" ]; then\n      pid=$(cat \"$t\"); rm -f \"$t\"; kill -9 \"$pid\"\n      while [ -e /proc/$pid ] && ! grep -q ') [ZX] ' /proc/$pid/stat 2>/dev/null; do sleep 0.01; done\n    fi ;;\nesac",
        t = trigger.display()
    );
    let (_script, flags) = stand_in(&r, "late-kill-runtime", &body);
    let id = r.cd.id("latekill");
    r.run_d(&strs(&flags), &id, &["sleep", "1000000"]);
    let pid = r.wait_status(&id, "RUNNING");
    fs::write(&trigger, pid.to_string()).unwrap();
    let k = api.kill(&id, "", libc::SIGKILL as u32, false);
    assert!(!trigger.exists(), "{} the stand-in runtime never saw the kill", r.tag);
    assert!(matches!(&k, Err(e) if e.code == Code::NotFound), "{} a kill that finds the init already dead must be NotFound: {k:?}", r.tag);
    r.wait_status(&id, "STOPPED");
    r.delete_ok(&id);
}

/// Kills sent as the init exits on its own (`KEEL_KILL_RACE_N` rounds, 30):
/// each answer is OK or NotFound.
fn kill_races_exit(line: Line, rt: &'static str) {
    let r = Rig::for_runtime(line, rt);
    let api = Api { cd: &r.cd };
    let n = env_count("KEEL_KILL_RACE_N", 30);
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..n {
        let id = r.cd.id("killrace");
        r.run_d(&[], &id, &["usleep", "50000"]);
        // Spread the kills around the exit: 0..80 ms after the start returned.
        std::thread::sleep(Duration::from_millis((i as u64 * 11) % 80));
        let k = api.kill(&id, "", libc::SIGKILL as u32, false);
        let what = match &k {
            Ok(()) => "OK".to_string(),
            Err(e) => format!("{:?}", e.code),
        };
        assert!(
            matches!(&k, Ok(()) | Err(common::api::ApiError { code: Code::NotFound, .. })),
            "{} round {i}: kill racing the exit answered {k:?}",
            r.tag
        );
        *seen.entry(what).or_default() += 1;
        r.wait_status(&id, "STOPPED");
        r.delete_ok(&id);
    }
    eprintln!("{} kill racing exit, {n} rounds: {seen:?}", r.tag);
}

/// Signal 0 probes a process, as `kill -0` does: OK while it lives, NotFound
/// once it has exited, for the init and for an exec.
fn kill_signal_zero_probes(line: Line, rt: &'static str) {
    let r = Rig::for_runtime(line, rt);
    let api = Api { cd: &r.cd };
    let id = r.sleeper("probe0");
    let is_not_found = |k: &common::api::ApiResult<()>| matches!(k, Err(e) if e.code == Code::NotFound);
    let k = api.kill(&id, "", 0, false);
    assert!(k.is_ok(), "{} signal 0 to a running init: {k:?}", r.tag);
    let spec = exec_spec(&r.cd, &id, &["sleep", "1000000"]);
    api.exec(&id, "e1", &spec, "", false).unwrap_or_else(|e| panic!("{} add exec: {e:?}", r.tag));
    api.start(&id, "e1").unwrap_or_else(|e| panic!("{} start exec: {e:?}", r.tag));
    let k = api.kill(&id, "e1", 0, false);
    assert!(k.is_ok(), "{} signal 0 to a running exec: {k:?}", r.tag);
    api.kill(&id, "e1", libc::SIGKILL as u32, false).unwrap_or_else(|e| panic!("{} kill exec: {e:?}", r.tag));
    assert_eq!(api_task_wait(&r.cd, &r.cd.ns, &id, "e1", Duration::from_secs(20)), Ok(137), "{} exec exit", r.tag);
    let k = api.kill(&id, "e1", 0, false);
    assert!(is_not_found(&k), "{} signal 0 to an exited exec must be NotFound: {k:?}", r.tag);
    api.delete_exec(&id, "e1").unwrap_or_else(|e| panic!("{} delete exec: {e:?}", r.tag));
    api.kill(&id, "", libc::SIGKILL as u32, false).unwrap_or_else(|e| panic!("{} kill init: {e:?}", r.tag));
    r.wait_status(&id, "STOPPED");
    let k = api.kill(&id, "", 0, false);
    assert!(is_not_found(&k), "{} signal 0 to a stopped task must be NotFound: {k:?}", r.tag);
    r.delete_ok(&id);
}

/// A terminal resized after Create and before Start (containerd's
/// TestTaskResize): `stty size` prints the size it was given, exactly.
fn resize_before_start(line: Line, rt: &'static str) {
    let r = Rig::for_runtime(line, rt);
    let api = Api { cd: &r.cd };
    let id = r.cd.id("resize");
    let root = rootfs().to_string_lossy().into_owned();
    let full = ["containers", "create", "--runtime", rt, "--env", CONTAINER_PATH, "--tty", "--rootfs", &root, &id, "stty", "size"];
    r.cd.ctr_ok(&full);
    let out = r.cd.fifo_dir.join(format!("{id}-stdout"));
    mkfifo(&out);
    let rx = read_fifo(&out);
    api.create_task(&id, &out.to_string_lossy(), true)
        .unwrap_or_else(|e| panic!("{} create tty task: {e:?}\n{}", r.tag, r.cd.log_tail(20)));
    let rs = api.resize(&id, "", 12, 34);
    assert!(rs.is_ok(), "{} resize a created task: {rs:?}", r.tag);
    api.start(&id, "").unwrap_or_else(|e| panic!("{} start: {e:?}", r.tag));
    assert_eq!(api_task_wait(&r.cd, &r.cd.ns, &id, "", Duration::from_secs(20)), Ok(0), "{} stty exit", r.tag);
    let data = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&data), "34 12\r\n", "{} `stty size` after a resize before start", r.tag);
    r.delete_ok(&id);
}

/// Binaries that do not exist: a task whose init cannot run fails Create and
/// never publishes /tasks/exit (containerd's TestRegressionIssue6429); an exec
/// of a missing binary is added, fails at Start, and the task runs on
/// (TestContainerExecNoBinaryExists).
fn missing_binaries(line: Line, rt: &'static str) {
    let r = Rig::for_runtime(line, rt);
    let api = Api { cd: &r.cd };
    let ev = r.cd.events();
    let bad = r.cd.id("notfound");
    let o = r.run(&["-d"], &bad, &["notfound404"]);
    assert!(!o.ok(), "{} run of a missing binary must fail: {}", r.tag, o.describe());
    let id = r.sleeper("nobin");
    let spec = exec_spec(&r.cd, &id, &["none"]);
    let add = api.exec(&id, "nobin", &spec, "", false);
    assert!(add.is_ok(), "{} adding an exec of a missing binary: {add:?}", r.tag);
    let start = api.start(&id, "nobin");
    assert!(start.is_err(), "{} starting an exec of a missing binary must fail: {start:?}", r.tag);
    assert!(api.delete_exec(&id, "nobin").is_ok(), "{} delete the failed exec", r.tag);
    r.assert_exec_works(&id, "a failed exec");
    std::thread::sleep(Duration::from_secs(3));
    let exits: Vec<_> = task_events(&ev, &bad).into_iter().filter(|e| e.topic == "/tasks/exit").collect();
    assert!(exits.is_empty(), "{} a task that never ran published /tasks/exit: {exits:?}", r.tag);
    r.cd.ctr(&["containers", "delete", &bad]);
    r.kill_delete(&id);
}

/// The container deleted behind the shim's back with `runc delete --force`
/// (containerd's TestKillContainerDeletedByRunc): Wait returns within 2 s and a
/// Kill then is NotFound.
fn deleted_by_the_runtime(line: Line, rt: &'static str) {
    let r = Rig::for_runtime(line, rt);
    let api = Api { cd: &r.cd };
    let id = r.sleeper("rtdel");
    let root = Path::new(RUNC_DEFAULT_ROOT).join(&r.cd.ns);
    let o = run_cmd(
        {
            let mut c = std::process::Command::new("/usr/sbin/runc");
            c.arg("--root").arg(&root).args(["delete", "--force", &id]);
            c
        },
        None,
        Duration::from_secs(20),
    );
    assert!(o.ok(), "{} runc delete --force {id}: {}", r.tag, o.describe());
    let waited = api_task_wait(&r.cd, &r.cd.ns, &id, "", Duration::from_secs(2));
    assert_eq!(waited, Ok(137), "{} Wait after the runtime deleted {id}", r.tag);
    let k = api.kill(&id, "", libc::SIGKILL as u32, false);
    assert!(matches!(&k, Err(e) if e.code == Code::NotFound), "{} kill after the runtime deleted {id}: {k:?}", r.tag);
    r.delete_ok(&id);
}

/// A distinctive `sleep` argument, to find the process on the host.
fn marker_secs() -> u64 {
    4_000_000 + (std::process::id() as u64 % 1000) * 1000 + (unique("m").rsplit('-').next().unwrap().parse::<u64>().unwrap() % 1000)
}

fn pid_of_cmdline(want: &[&str]) -> Option<i32> {
    let want: Vec<u8> = want.iter().flat_map(|a| a.bytes().chain(std::iter::once(0))).collect();
    all_pids().into_iter().find(|p| fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == want))
}

/// `hostPID: true`: the init's exit takes the container's other processes
/// with it before /tasks/exit is out.
fn host_pid_init_exit_kills_the_rest(line: Line, rt: &'static str) {
    let r = Rig::for_runtime(line, rt);
    let ev = r.cd.events();
    let id = r.cd.id("hostpid");
    let secs = marker_secs().to_string();
    let script = format!("sleep {secs} & sleep 1; exit 0");
    // The host's pid namespace, as this test process sees it (pid 1 of this VM hides its own).
    let host_pid_ns = format!("pid:/proc/{}/ns/pid", std::process::id());
    r.run_d(&["--with-ns", &host_pid_ns], &id, &["sh", "-c", &script]);
    let left = poll(Duration::from_secs(10), || pid_of_cmdline(&["sleep", &secs]))
        .unwrap_or_else(|| panic!("{} the background sleep {secs} never showed up on the host", r.tag));
    ev.expect("/tasks/exit", |e| e.topic == "/tasks/exit" && e.container_id() == Some(&id), Duration::from_secs(20));
    let gone = poll(Duration::from_millis(100), || (!pid_alive(left)).then_some(()));
    let still = pid_alive(left);
    if still {
        // SAFETY: kill(2) of the leftover this test started.
        unsafe { libc::kill(left, libc::SIGKILL) };
    }
    assert!(gone.is_some(), "{} `sleep {secs}` (pid {left}) still runs 100 ms after its container's exit was published", r.tag);
    r.wait_status(&id, "STOPPED");
    r.delete_ok(&id);
}

/// Two containers of one pod (one shim); the second's `binary://` logger takes
/// 3 s to close its readiness fd. Meanwhile the shim answers State for the
/// first within 1 s.
fn slow_logger_does_not_stall_the_pod(line: Line, rt: &'static str) {
    let r = Rig::for_runtime(line, rt);
    let started = r.cd.dir.join("logger.started");
    let ready = r.cd.dir.join("logger.ready");
    let logger = r.cd.dir.join("slow-logger");
    fs::write(
        &logger,
        format!(
            "#!/bin/sh\n# binary:// logger that is ready (closes fd 5) only after 3 s.\ntouch '{s}'\nsleep 3 5>&-\ntouch '{r}'\nexec 5>&-\ncat <&3 >/dev/null &\ncat <&4 >/dev/null\nwait\n",
            s = started.display(),
            r = ready.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&logger, fs::Permissions::from_mode(0o755)).unwrap();
    let pod = r.cd.id("pod");
    let ann = format!("io.kubernetes.cri.sandbox-id={pod}");
    let a = r.cd.id("pod-a");
    r.run_d(&["--annotation", &ann], &a, &["sleep", "1000000"]);
    r.wait_status(&a, "RUNNING");
    let shim = r.shim(&a);

    let b = r.cd.id("pod-b");
    let uri = format!("binary://{}", logger.display());
    let args = r.run_args(&["-d", "--annotation", &ann, "--log-uri", &uri], None, &b, &["sleep", "1000000"]);
    let mut run_b = r.cd.ctr_spawn(Some(&r.cd.ns), &strs(&args));
    let up = poll(Duration::from_secs(20), || started.exists().then_some(()));
    assert!(up.is_some(), "{} the logger of {b} never started", r.tag);
    let t0 = Instant::now();
    let req = pb::StateRequest { id: a.clone(), ..Default::default() };
    let st = shim.call_timeout(&req, Duration::from_secs(10));
    let took = t0.elapsed();
    let logger_ready = ready.exists();
    assert!(matches!(st, Rpc::Ok(_)), "{} State of {a}: {st:?}", r.tag);
    eprintln!("{} State of {a} while {b}'s logger got ready: {took:?} (logger ready by then: {logger_ready})", r.tag);
    if rt == KEEL_V1 {
        assert!(
            took < Duration::from_secs(1) && !logger_ready,
            "{} State of {a} took {took:?} while {b}'s logger was getting ready (ready before the answer: {logger_ready})",
            r.tag
        );
    }
    let (done, timed_out) = wait_deadline(&mut run_b, Instant::now() + Duration::from_secs(30));
    assert!(!timed_out && done.is_some_and(|s| s.success()), "{} run -d {b} with the slow logger: {done:?}", r.tag);
    r.wait_status(&b, "RUNNING");
    assert_eq!(Shim::of(&r.cd, &b).sock, shim.sock, "{} {a} and {b} are one pod: one shim", r.tag);
    r.kill_delete(&b);
    r.kill_delete(&a);
}

/// Two Creates of one id sent at once straight to a shim: one wins; the
/// loser's clean-up leaves the winner's container alone (it starts, runs an
/// exec, and is killed and deleted normally).
fn concurrent_creates_of_one_id(line: Line, rt: &'static str) {
    let r = Rig::for_runtime(line, rt);
    let victim = r.sleeper("crvictim");
    let shim = r.shim(&victim);
    let id = r.cd.id("crrace");
    let bundle = make_bundle(&r, &victim, &id, &["sleep", "1000000"]);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let (s, b, req) = (shim.clone(), barrier.clone(), create_req(&id, &bundle));
            std::thread::spawn(move || {
                b.wait();
                s.call(&req)
            })
        })
        .collect();
    let res: Vec<_> = calls.into_iter().map(|h| h.join().unwrap()).collect();
    let won = res.iter().filter(|r| matches!(r, Rpc::Ok(_))).count();
    assert_eq!(won, 1, "{} exactly one Create of {id} must win: {res:?}", r.tag);
    let lost = res.iter().find(|r| !matches!(r, Rpc::Ok(_))).unwrap();
    eprintln!("{} the losing Create of {id}: {lost:?}", r.tag);
    if rt == KEEL_V1 {
        assert!(
            matches!(lost, Rpc::Err(s) if s.code == 6 && s.message.contains(&id)),
            "{} the loser must be AlreadyExists naming {id}: {lost:?}",
            r.tag
        );
    }
    let start = shim.start(&id, "");
    assert!(matches!(start, Rpc::Ok(_)), "{} the winner of the Create race cannot start: {start:?}", r.tag);
    let st = shim.state(&id, "");
    assert!(matches!(&st, Ok(s) if s.status == ST_RUNNING), "{} the winner after the race: {st:?}", r.tag);
    let spec = exec_spec(&r.cd, &victim, &["sh", "-c", "exit 7"]);
    let e = shim.exec_start(&id, "probe", &spec);
    assert!(e.is_ok(), "{} exec in the winner: {e:?}", r.tag);
    assert_eq!(shim.wait(&id, "probe", Duration::from_secs(20)).ok(), Some(7), "{} exec in the winner", r.tag);
    assert!(matches!(shim.delete(&id, "probe"), Rpc::Ok(_)), "{} delete the probe exec", r.tag);
    let k = shim.kill(&id, "", 9, true);
    assert!(matches!(k, Rpc::Ok(_)), "{} kill {id}: {k:?}", r.tag);
    assert_eq!(shim.wait(&id, "", Duration::from_secs(20)).ok(), Some(137), "{} {id} exit status", r.tag);
    let d = shim.delete(&id, "");
    assert!(matches!(d, Rpc::Ok(_)), "{} delete {id}: {d:?}", r.tag);
    shim.assert_serves(&r.cd, &victim, "the Create race");
    r.kill_delete(&victim);
}

scenarios!(
    [(keel, KEEL_V1, crate::common::direct), (runc, RUNC_V2, crate::common::direct),],
    [
        exec_terminal_from_request,
        init_exit_while_exec_starts,
        kill_after_exit_is_not_found,
        kill_races_exit,
        kill_signal_zero_probes,
        resize_before_start,
        missing_binaries,
        deleted_by_the_runtime,
        host_pid_init_exit_kills_the_rest,
        slow_logger_does_not_stall_the_pod,
        concurrent_creates_of_one_id,
    ]
);
