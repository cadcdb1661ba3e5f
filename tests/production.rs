//! Production behaviour (issue 4), through a real private containerd of each
//! line (1.6 and 2.x) and `ctr`:
//!
//!   crun_backend            Keel drives crun, chosen by CRI-style runtime options
//!   crun_missing_binary     a missing BinaryName fails Create, naming it; the shim serves on
//!   pod_grouping_*          one shim per group annotation; it exits after the last delete
//!   containerd_restart      10 tasks survive a SIGKILLed containerd; an exit while it was down
//!   shim_crash[_crun]       SIGKILL of a shim: containerd's cleanup leaves nothing behind
//!   shim_oom_score          the shim's oom_score_adj is containerd's + 1
//!   shim_cgroup             ShimCgroup from the options containerd passes to `start`
//!   info_*                  `-info` (directly, and via containerd 2.x's inspect-runtime)
//!
//! Where runc-v2 can do the same, the scenario also runs against it
//! (`runc::...`) to prove the test. Run with `-- --nocapture` for the notes.

use keel_harness as common;

use common::production::*;
use common::robust::Rig;
use common::*;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::types::introspection::RuntimeInfo;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn kill_pid(pid: i32, sig: i32) {
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid, sig) };
}

fn shims_desc(cd: &Containerd) -> String {
    cd.shim_procs().iter().map(|p| format!("{} {}", p.pid, p.cmdline)).collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------------------
// 1. crun
// ---------------------------------------------------------------------------

/// Keel runs a container with crun when the runtime options (a TOML file
/// passed by `ctr run --runtime-config-path`, i.e. `runtimeoptions.v1.Options`
/// with ConfigPath) say `BinaryName = <crun>`; init, exec, kill, delete work
/// and the evidence says crun, not runc, did it.
fn crun_backend(line: Line, rt: &'static str) {
    let p = Rig::for_runtime(line, rt);
    let opts = crun_options(&p.cd);
    let wrapper = crun_compat(&p.cd);
    let ev = p.cd.events();
    let id = p.cd.id("crun");
    p.run_d(&["--runtime-config-path", &opts.to_string_lossy()], &id, &["sh", "-c", "trap 'exit 21' TERM; sleep 1000 & wait"]);
    let pid = p.wait_status(&id, "RUNNING");

    // containerd recorded the options as CRI's generic type with the path.
    let info = p.cd.ctr_ok(&["containers", "info", &id]);
    let info: serde_json::Value = serde_json::from_str(&info).expect("containers info JSON");
    assert_eq!(
        info["Runtime"]["Options"]["type_url"], "runtimeoptions.v1.Options",
        "{} ctr did not send CRI runtime options: {}",
        p.tag, info["Runtime"]
    );

    let o = p.exec(&[], &id, "e1", &["sh", "-c", "echo via-crun; exit 3"]);
    assert_eq!(o.code, Some(3), "{} exec through crun: {}", p.tag, o.describe());
    assert_eq!(o.out(), "via-crun\n", "{} {}", p.tag, o.describe());

    // Evidence 1: the runtime binary was asked to create this container and
    // to exec in it (the wrapper ends in `exec /usr/bin/crun`).
    let calls = crun_calls(&p.cd);
    for verb in ["create", "start", "exec"] {
        assert!(
            calls.iter().any(|c| c.split_whitespace().any(|a| a == verb) && c.contains(&id)),
            "{} crun was never called with `{verb}` for {id}; calls: {calls:#?}",
            p.tag
        );
    }
    // Evidence 2: the shim logged the command it ran.
    let log = std::fs::read_to_string(&p.cd.log).unwrap_or_default();
    let needle = format!("runtime: \\\"{}\\\"", wrapper.display());
    assert!(
        log.lines().any(|l| l.contains(&needle) && l.contains("\\\"create\\\"") && l.contains(&id)),
        "{} no shim log line `{needle} ... create ... {id}` in containerd's log",
        p.tag
    );
    // Evidence 3: the state directory has crun's layout (a `status` file),
    // not runc's (`state.json`), and crun itself knows the container.
    let state = assert_crun_state(&p.cd, &id, &p.tag);
    let mut c = std::process::Command::new(CRUN_BIN);
    c.arg("--root").arg(state.parent().unwrap()).args(["state", &id]);
    let o = run_cmd(c, None, Duration::from_secs(10));
    assert!(o.ok(), "{} crun state {id}: {}", p.tag, o.describe());
    let st: serde_json::Value = serde_json::from_str(&o.out()).expect("crun state JSON");
    assert_eq!(st["status"], "running", "{} crun state: {}", p.tag, o.out());
    assert_eq!(st["pid"], pid, "{} crun state pid vs task ls: {}", p.tag, o.out());
    let mut c = std::process::Command::new("/usr/sbin/runc");
    c.arg("--root").arg(state.parent().unwrap()).args(["state", &id]);
    let o = run_cmd(c, None, Duration::from_secs(10));
    assert!(!o.ok(), "{} runc knows {id}, so runc ran it: {}", p.tag, o.describe());

    // SIGTERM: the trap's exit code arrives; delete cleans crun's state.
    let o = p.cd.ctr(&["tasks", "kill", &id]);
    assert!(o.ok(), "{} kill: {}", p.tag, o.describe());
    let e = ev.expect("init exit 21", |e| e.topic == "/tasks/exit" && e.payload["id"] == id.as_str(), RUN_TIMEOUT);
    assert_eq!(e.payload["exit_status"], 21, "{} {}", p.tag, e.raw);
    p.wait_status(&id, "STOPPED");
    p.delete_ok(&id);
    assert!(
        poll(Duration::from_secs(10), || (!state.exists()).then_some(())).is_some(),
        "{} crun state {} left after delete",
        p.tag,
        state.display()
    );
    assert!(
        crun_calls(&p.cd).iter().any(|c| c.split_whitespace().any(|a| a == "delete") && c.contains(&id)),
        "{} crun was never asked to delete {id}",
        p.tag
    );

    // Plain `BinaryName = "crun"` (no wrapper): on a host where bookworm's
    // crun can run this line's specs it works; where it cannot (see
    // crun_compat), the failure must be crun's own, named as such.
    let plain = options_file(&p.cd, "plain-crun", "BinaryName = \"crun\"\n");
    let id2 = p.cd.id("plaincrun");
    let o = p.run(&["--rm", "--runtime-config-path", &plain.to_string_lossy()], &id2, &["echo", "plain-crun-ran"]);
    eprintln!("{} plain BinaryName=crun -> code {:?} stdout {:?} stderr {:?}", p.tag, o.code, o.out().trim(), o.err().trim());
    assert!(!o.timed_out, "{} {}", p.tag, o.describe());
    if o.ok() {
        assert_eq!(o.out(), "plain-crun-ran\n", "{} {}", p.tag, o.describe());
    } else {
        assert!(o.err().contains("crun"), "{} a failing plain crun should say crun failed: {}", p.tag, o.describe());
    }
    assert!(p.task(&id2).is_none(), "{} task {id2} left", p.tag);
}

/// `BinaryName = "/nonexistent/crun"`: Create fails with an error naming the
/// binary, nothing is left of the container, and the shim that serves a
/// neighbour in the same group (so the same shim process) keeps serving it.
fn crun_missing_binary(line: Line, rt: &'static str) {
    let p = Rig::for_runtime(line, rt);
    let group = unique("grp");
    let ann = format!("io.containerd.keel.v1.group={group}");
    let nb = p.cd.id("neighbour");
    p.run_d(&["--annotation", &ann], &nb, &["sleep", "1000"]);
    p.wait_status(&nb, "RUNNING");
    let shims = p.cd.shim_procs();
    assert_eq!(shims.len(), 1, "{} shims: {}", p.tag, shims_desc(&p.cd));
    let shim = shims[0].pid;

    let bad = options_file(&p.cd, "missing", "BinaryName = \"/nonexistent/crun\"\n");
    let bad = bad.to_string_lossy().into_owned();
    for grouped in [true, false] {
        let id = p.cd.id(if grouped { "missing-g" } else { "missing" });
        let mut flags = vec!["--rm", "--runtime-config-path", bad.as_str()];
        if grouped {
            flags.extend(["--annotation", ann.as_str()]);
        }
        let o = p.run(&flags, &id, &["true"]);
        eprintln!("{} missing binary (grouped: {grouped}) -> code {:?}, stderr: {}", p.tag, o.code, o.err().trim());
        assert!(!o.ok() && !o.timed_out, "{} {}", p.tag, o.describe());
        assert!(o.err().contains("/nonexistent/crun"), "{} the error does not name the missing binary: {}", p.tag, o.describe());
        assert!(p.task(&id).is_none(), "{} a task is left for {id}", p.tag);
        assert!(
            poll(Duration::from_secs(10), || p.cd.shim_procs_for(&id).is_empty().then_some(())).is_some(),
            "{} a shim is left for {id}: {}",
            p.tag,
            shims_desc(&p.cd)
        );
        assert!(pid_alive(shim), "{} the shim serving {nb} died after the failed create", p.tag);
        let now: Vec<i32> = p.cd.shim_procs().iter().map(|s| s.pid).collect();
        assert_eq!(now, vec![shim], "{} shims after the failure: {}", p.tag, shims_desc(&p.cd));
        assert_eq!(p.task(&nb).map(|t| t.1), Some("RUNNING".into()), "{}", p.tag);
        p.assert_exec_works(&nb, "a create with a missing runtime binary");
    }
}

// ---------------------------------------------------------------------------
// 2. pod grouping
// ---------------------------------------------------------------------------

/// Three containers annotated `key=<pod>` share exactly one shim; each can be
/// exec'd, killed and deleted; the shim lives until the last delete, then exits.
fn pod_grouping(line: Line, rt: &'static str, key: &str) {
    let p = Rig::for_runtime(line, rt);
    let ev = p.cd.events();
    let pod = unique("pod");
    let ann = format!("{key}={pod}");
    let ids: Vec<String> = (0..3).map(|i| p.cd.id(&format!("member{i}"))).collect();
    for (i, id) in ids.iter().enumerate() {
        let script = format!("trap 'exit {}' TERM; sleep 1000 & wait", 30 + i);
        p.run_d(&["--annotation", &ann], id, &["sh", "-c", &script]);
        p.wait_status(id, "RUNNING");
    }
    let shims = p.cd.shim_procs();
    assert_eq!(shims.len(), 1, "{} want exactly 1 shim for the 3 containers of pod {pod}, got:\n{}", p.tag, shims_desc(&p.cd));
    let shim = shims[0].pid;
    let addrs: Vec<PathBuf> =
        ids.iter().map(|id| p.cd.shim_address(&p.cd.ns, id).unwrap_or_else(|| panic!("{} no shim address for {id}", p.tag)).0).collect();
    assert!(addrs.iter().all(|a| a == &addrs[0]), "{} the pod's containers have different shim addresses: {addrs:?}", p.tag);
    for id in &ids {
        p.assert_exec_works(id, "grouping");
    }
    for (i, id) in ids.iter().enumerate() {
        let o = p.cd.ctr(&["tasks", "kill", id]);
        assert!(o.ok(), "{} kill {id}: {}", p.tag, o.describe());
        let e = ev.expect("member exit", |e| e.topic == "/tasks/exit" && e.payload["id"] == id.as_str(), RUN_TIMEOUT);
        assert_eq!(e.payload["exit_status"], 30 + i, "{} {}", p.tag, e.raw);
        p.wait_status(id, "STOPPED");
        p.delete_ok(id);
        let last = i == ids.len() - 1;
        if !last {
            // Not before the last: give a wrongly exiting shim the time to go.
            std::thread::sleep(Duration::from_millis(500));
            assert!(pid_alive(shim), "{} the pod's shim exited after deleting {} of {} containers", p.tag, i + 1, ids.len());
            for other in &ids[i + 1..] {
                assert_eq!(p.task(other).map(|t| t.1), Some("RUNNING".to_string()), "{} {other} after deleting {id}", p.tag);
                p.assert_exec_works(other, &format!("deleting {id}"));
            }
        }
    }
    // containerd 2.x's runc-v2 leaves its socket file behind; Keel may not.
    let check_socket = rt == KEEL_V1 || line == Line::V16;
    let gone = poll(Duration::from_secs(10), || {
        (!pid_alive(shim) && p.cd.shim_procs().is_empty() && !(check_socket && addrs[0].exists())).then_some(())
    });
    if !check_socket && addrs[0].exists() {
        eprintln!("{} note: shim socket {} left after exit", p.tag, addrs[0].display());
    }
    assert!(
        gone.is_some(),
        "{} after the last delete: shim {shim} alive {}, socket {} exists {}, shims:\n{}",
        p.tag,
        pid_alive(shim),
        addrs[0].display(),
        addrs[0].exists(),
        shims_desc(&p.cd)
    );
    // What the reference leaves behind is the test's to remove.
    let _ = std::fs::remove_file(&addrs[0]);
}

fn pod_grouping_keel_label(line: Line, rt: &'static str) {
    pod_grouping(line, rt, "io.containerd.keel.v1.group")
}

fn pod_grouping_sandbox_id(line: Line, rt: &'static str) {
    pod_grouping(line, rt, "io.kubernetes.cri.sandbox-id")
}

// ---------------------------------------------------------------------------
// 3. containerd restart
// ---------------------------------------------------------------------------

/// 10 running tasks survive a SIGKILLed containerd: after a restart with the
/// same config, root, state and socket they are RUNNING, and each can be
/// exec'd, killed, waited (right exit code) and deleted. An 11th task exits
/// while containerd is down: on 1.6 it is then STOPPED with its exit status,
/// its /tasks/exit is forwarded once, and its /tasks/delete carries the status;
/// containerd 2.x deletes such a task itself while it loads (see below).
fn containerd_restart(line: Line, rt: &'static str) {
    let mut p = Rig::for_runtime(line, rt);
    let ids: Vec<String> = (0..10).map(|i| p.cd.id(&format!("keep{i}"))).collect();
    for (i, id) in ids.iter().enumerate() {
        let script = format!("trap 'exit {}' TERM; sleep 1000 & wait", 40 + i);
        p.run_d(&[], id, &["sh", "-c", &script]);
    }
    let late = p.cd.id("late");
    p.run_d(&[], &late, &["sh", "-c", "sleep 1000; exit 9"]);
    let mut pids = Vec::new();
    for id in &ids {
        pids.push(p.wait_status(id, "RUNNING"));
    }
    let late_pid = p.wait_status(&late, "RUNNING");
    let late_shim: Vec<i32> = p.cd.shim_procs_for(&late).iter().map(|s| s.pid).collect();
    assert_eq!(late_shim.len(), 1, "{} shims: {}", p.tag, shims_desc(&p.cd));
    let late_shim = late_shim[0];
    let shims_before: Vec<i32> = p.cd.shim_procs().iter().map(|s| s.pid).filter(|s| *s != late_shim).collect();
    assert_eq!(shims_before.len(), 10, "{} shims: {}", p.tag, shims_desc(&p.cd));
    let sleeper = poll(STATE_TIMEOUT, || children_of(late_pid).first().copied())
        .unwrap_or_else(|| panic!("{} no child of late's init {late_pid}", p.tag));

    kill_daemon(&p.cd);
    // The late task exits while containerd is down: its sleep dies, sh exits 9.
    kill_pid(sleeper as i32, libc::SIGKILL);
    assert!(
        poll(Duration::from_secs(10), || (!pid_alive(late_pid as i32)).then_some(())).is_some(),
        "{} late's init {late_pid} did not exit (or was not reaped) while containerd was down",
        p.tag
    );
    // Leave the shim's event forwarder some failed attempts to retry.
    std::thread::sleep(Duration::from_millis(500));
    let log_off = log_len(&p.cd);
    restart(&mut p.cd);
    let ev = p.cd.events();

    for s in &shims_before {
        assert!(pid_alive(*s), "{} shim {s} died with containerd", p.tag);
    }
    let listed = p.cd.task_list();
    for (id, pid) in ids.iter().zip(&pids) {
        assert!(
            listed.iter().any(|t| &t.0 == id && t.1 == *pid && t.2 == "RUNNING"),
            "{} after the restart {id} (pid {pid}) is not RUNNING: {listed:?}",
            p.tag
        );
    }
    let lt = listed.iter().find(|t| t.0 == late);
    if line == Line::V2 {
        // containerd 2.x, while loading its shims, deletes every task whose
        // shim lists no process and that is no sandbox ("cleaning leaked shim
        // process", containerd#6860), before its API serves anyone: the task
        // that exited while it was down is gone, for runc-v2 as for Keel.
        assert!(lt.is_none(), "{} containerd 2.x deletes a task that exited while it was down; listed: {listed:?}", p.tag);
        let got = api_task_get(&p.cd, &p.cd.ns, &late);
        assert!(got.as_ref().err().map(|e| e.contains("NotFound")).unwrap_or(false), "{} Tasks.Get of the deleted task: {got:?}", p.tag);
        assert!(
            poll(Duration::from_secs(10), || (!pid_alive(late_shim)).then_some(())).is_some(),
            "{} the shim of the deleted task {late} did not exit",
            p.tag
        );
        let state = runc_state_dir(&p.cd.ns, &late);
        assert!(!state.exists(), "{} runtime state {} left", p.tag, state.display());
    } else {
        assert_eq!(lt.map(|t| t.2.as_str()), Some("STOPPED"), "{} the task that exited while containerd was down: {listed:?}", p.tag);
        let got = api_task_get(&p.cd, &p.cd.ns, &late).unwrap_or_else(|e| panic!("{} {e}", p.tag));
        assert_eq!(
            (got.status.as_str(), got.exit_status),
            ("STOPPED", 9),
            "{} Tasks.Get of the task that exited while containerd was down: {got:?}",
            p.tag
        );
        // Its /tasks/exit reached the restarted containerd, which (1.6)
        // logs every forwarded event. The shim retries with a backoff of up
        // to 2 s, so allow it time.
        let forwarded = || {
            log_since(&p.cd, log_off)
                .lines()
                .filter(|l| l.contains("event forwarded") && l.contains(&format!("ns={} ", p.cd.ns)) && l.contains("topic=/tasks/exit"))
                .count()
        };
        let n = poll(Duration::from_secs(10), || Some(forwarded()).filter(|n| *n > 0)).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(300)); // a duplicate would come now
        let n = n.max(forwarded());
        eprintln!("{} /tasks/exit forwarded after the restart: {n}", p.tag);
        if rt == KEEL_V1 {
            assert_eq!(n, 1, "{} Keel must forward the exit that happened while containerd was down, once", p.tag);
        }
    }

    for (i, id) in ids.iter().enumerate() {
        p.assert_exec_works(id, "the containerd restart");
        let (cd, ns, cid) = (&p.cd, p.cd.ns.clone(), id.clone());
        let status = std::thread::scope(|s| {
            let w = s.spawn(|| api_task_wait(cd, &ns, &cid, "", RUN_TIMEOUT));
            // Wait is attached before the kill (a Wait on an exited task also answers).
            std::thread::sleep(Duration::from_millis(200));
            let o = cd.ctr(&["tasks", "kill", &cid]);
            assert!(o.ok(), "kill {cid}: {}", o.describe());
            w.join().unwrap()
        });
        assert_eq!(status, Ok(40 + i as u32), "{} Tasks.Wait of {id} after the restart", p.tag);
        p.wait_status(id, "STOPPED");
        p.delete_ok(id);
    }
    if line == Line::V2 {
        p.cd.ctr_ok(&["containers", "delete", &late]);
        assert!(
            poll(Duration::from_secs(10), || p.cd.shim_procs().is_empty().then_some(())).is_some(),
            "{} shims left: {}",
            p.tag,
            shims_desc(&p.cd)
        );
        return;
    }
    assert!(pid_alive(late_shim), "{} the shim of stopped {late} exited before its delete", p.tag);
    let o = p.cd.ctr(&["tasks", "delete", &late]);
    assert!(o.ok(), "{} delete late: {}", p.tag, o.describe());
    let e = ev.expect("/tasks/delete of late", |e| e.topic == "/tasks/delete" && e.container_id() == Some(late.as_str()), RUN_TIMEOUT);
    assert_eq!(e.payload["exit_status"], 9, "{} {}", p.tag, e.raw);
    p.cd.ctr_ok(&["containers", "delete", &late]);
    assert!(
        poll(Duration::from_secs(10), || p.cd.shim_procs().is_empty().then_some(())).is_some(),
        "{} shims left: {}",
        p.tag,
        shims_desc(&p.cd)
    );
}

// ---------------------------------------------------------------------------
// 4. shim crash
// ---------------------------------------------------------------------------

/// SIGKILL of the shim of a running container: containerd cleans up (running
/// `<shim> delete`), which must leave no container process, no mount and no
/// runtime state; the task reports exit 137 and is gone, as with runc-v2.
fn shim_crash(line: Line, rt: &'static str) {
    shim_crash_case(line, rt, false)
}

/// The same with crun: the `delete` action must clean up with the runtime
/// the dead shim used (kept in the bundle), not with runc.
fn shim_crash_crun(line: Line, rt: &'static str) {
    shim_crash_case(line, rt, true)
}

fn shim_crash_case(line: Line, rt: &'static str, crun: bool) {
    let p = Rig::for_runtime(line, rt);
    let ev = p.cd.events();
    let id = p.cd.id("crash");
    let opts = crun.then(|| crun_options(&p.cd).to_string_lossy().into_owned());
    let mut flags: Vec<&str> = Vec::new();
    if let Some(o) = &opts {
        flags.extend(["--runtime-config-path", o.as_str()]);
    }
    p.run_d(&flags, &id, &["sleep", "1000"]);
    let pid = p.wait_status(&id, "RUNNING");
    let o = p.exec(&[], &id, "bg", &["sh", "-c", "sleep 1000 </dev/null >/dev/null 2>&1 & echo started"]);
    assert!(o.ok(), "{} exec: {}", p.tag, o.describe());
    let shims = p.cd.shim_procs_for(&id);
    assert_eq!(shims.len(), 1, "{} shims: {}", p.tag, shims_desc(&p.cd));
    let shim = shims[0].pid;
    let state = runc_state_dir(&p.cd.ns, &id);
    assert!(state.exists(), "{} no runtime state {}", p.tag, state.display());
    let (sock, _) = p.cd.shim_address(&p.cd.ns, &id).expect("shim address");

    kill_pid(shim, libc::SIGKILL);

    let e = ev.expect("/tasks/exit after the shim crash", |e| e.topic == "/tasks/exit" && e.payload["id"] == id.as_str(), RUN_TIMEOUT);
    assert_eq!(e.payload["exit_status"], 137, "{} {}", p.tag, e.raw);
    let clean = poll(Duration::from_secs(15), || {
        (!pid_alive(pid as i32) && !state.exists() && p.cd.mounts().is_empty() && p.cd.shim_procs().is_empty() && p.task(&id).is_none())
            .then_some(())
    });
    if clean.is_none() {
        panic!(
            "{} after the shim crash: init {pid} alive {}, state {} exists {}, mounts {:?}, shims [{}], task {:?}\n{}",
            p.tag,
            pid_alive(pid as i32),
            state.display(),
            state.exists(),
            p.cd.mounts(),
            shims_desc(&p.cd),
            p.task(&id),
            p.cd.log_tail(40)
        );
    }
    // No process of the container is left anywhere (the exec'd sleep included).
    let ours: Vec<String> = procs()
        .into_iter()
        .filter(|q| {
            std::fs::read_to_string(format!("/proc/{}/cgroup", q.pid)).map(|c| c.contains(&format!("/{}/{id}", p.cd.ns))).unwrap_or(false)
        })
        .map(|q| format!("{} {}", q.pid, q.cmdline))
        .collect();
    assert!(ours.is_empty(), "{} container processes left: {ours:?}", p.tag);
    if crun {
        let calls = crun_calls(&p.cd);
        assert!(
            calls.iter().any(|c| c.split_whitespace().any(|a| a == "delete") && c.contains(&id)),
            "{} the cleanup after the crash did not run crun delete; crun calls: {calls:#?}",
            p.tag
        );
    }
    let _ = std::fs::remove_file(&sock);
    let o = p.cd.ctr(&["containers", "delete", &id]);
    assert!(o.ok(), "{} container delete after the crash: {}", p.tag, o.describe());
}

// ---------------------------------------------------------------------------
// 5. OOM score and ShimCgroup
// ---------------------------------------------------------------------------

fn read_oom_adj(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .unwrap_or_else(|e| panic!("read oom_score_adj of {pid}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// The shim's oom_score_adj is containerd's + 1 (capped at 1000), so the
/// kernel kills containers before their shim and the shim before containerd.
/// containerd's score is raised first (raising needs no privilege; this VM
/// refuses every lowering) so that "+1" is not confused with a default.
fn shim_oom_score(line: Line, rt: &'static str) {
    let p = Rig::for_runtime(line, rt);
    let cdpid = daemon_pid(&p.cd);
    let before = read_oom_adj(cdpid);
    let want_cd = before.max(250);
    std::fs::write(format!("/proc/{cdpid}/oom_score_adj"), want_cd.to_string())
        .unwrap_or_else(|e| panic!("raise containerd's oom_score_adj to {want_cd}: {e}"));
    let cd_adj = read_oom_adj(cdpid);
    assert_eq!(cd_adj, want_cd, "{} containerd's score", p.tag);
    let id = p.cd.id("oom");
    p.run_d(&[], &id, &["sleep", "1000"]);
    let pid = p.wait_status(&id, "RUNNING");
    let shims = p.cd.shim_procs_for(&id);
    assert_eq!(shims.len(), 1, "{} shims: {}", p.tag, shims_desc(&p.cd));
    let shim_adj = read_oom_adj(shims[0].pid);
    eprintln!("{} containerd oom_score_adj {cd_adj}, shim {shim_adj}, container init {}", p.tag, read_oom_adj(pid as i32));
    assert_eq!(shim_adj, (cd_adj + 1).min(1000), "{} shim oom_score_adj should be containerd's + 1", p.tag);
}

/// Removes `/sys/fs/cgroup/<hierarchy>/<name>` on drop (after the shims are gone).
struct CgroupDirs(String);

impl CgroupDirs {
    fn dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in rd.flatten() {
                let d = h.path().join(self.0.trim_start_matches('/'));
                if d.is_dir() {
                    out.push(d);
                }
            }
        }
        let unified = Path::new("/sys/fs/cgroup").join(self.0.trim_start_matches('/'));
        if unified.join("cgroup.procs").exists() && !out.contains(&unified) {
            out.push(unified);
        }
        out
    }
}

impl Drop for CgroupDirs {
    fn drop(&mut self) {
        for d in self.dirs() {
            let ok = poll(Duration::from_secs(5), || std::fs::remove_dir(&d).ok());
            if ok.is_none() {
                eprintln!("cleanup: cannot remove cgroup {}", d.display());
            }
        }
    }
}

/// Mount points of the cgroup v1 hierarchies, or of cgroup2 when there are none.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let of = |fstype: &str| -> Vec<PathBuf> {
        mi.lines()
            .filter_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                let point = pre.split(' ').nth(4)?;
                (post.split(' ').next()? == fstype).then(|| PathBuf::from(point))
            })
            .collect()
    };
    let v1 = of("cgroup");
    if v1.is_empty() {
        of("cgroup2")
    } else {
        v1
    }
}

/// Makes `cg` in every hierarchy as an operator would (runc-v2 requires the
/// ShimCgroup to exist): on v1, a cpuset cgroup gets its parent's cpus and mems.
fn make_cgroup(cg: &str) {
    for h in cgroup_hierarchies() {
        let d = h.join(cg.trim_start_matches('/'));
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if d.join(f).exists() && std::fs::read_to_string(d.join(f)).unwrap_or_default().trim().is_empty() {
                let v = std::fs::read_to_string(h.join(f)).unwrap();
                std::fs::write(d.join(f), v.trim()).unwrap_or_else(|e| panic!("write {}/{f}: {e}", d.display()));
            }
        }
    }
}

/// `ShimCgroup` in the runtime options reaches `start` (containerd writes
/// the first container's options to the shim's stdin) and the shim process
/// is moved into that cgroup, which the operator made; the container is not.
fn shim_cgroup(line: Line, rt: &'static str) {
    shim_cgroup_case(line, rt, true)
}

/// The same with a ShimCgroup that does not exist yet: Keel creates the
/// directories itself (src/cgroups/shim.rs: "creating the directories as
/// needed"), so the cgroup must be usable, cpuset included on v1.
fn shim_cgroup_created_by_keel(line: Line, rt: &'static str) {
    shim_cgroup_case(line, rt, false)
}

fn shim_cgroup_case(line: Line, rt: &'static str, precreate: bool) {
    let cg = format!("/keel-test-{}-{}", std::process::id(), unique("cg").rsplit('-').next().unwrap());
    let guard = CgroupDirs(cg.clone()); // dropped after `p`: the shim is gone by then
    if precreate {
        make_cgroup(&cg);
    }
    let p = Rig::for_runtime(line, rt);
    let opts = options_file(&p.cd, "shimcg", &format!("ShimCgroup = \"{cg}\"\n"));
    let id = p.cd.id("shimcg");
    p.run_d(&["--runtime-config-path", &opts.to_string_lossy()], &id, &["sleep", "1000"]);
    let pid = p.wait_status(&id, "RUNNING");
    let shims = p.cd.shim_procs_for(&id);
    assert_eq!(shims.len(), 1, "{} shims: {}", p.tag, shims_desc(&p.cd));
    let shim_cg = std::fs::read_to_string(format!("/proc/{}/cgroup", shims[0].pid)).unwrap();
    let lines: Vec<(String, String)> = shim_cg
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            Some((ctl.to_string(), path.to_string()))
        })
        .collect();
    let v1: Vec<&(String, String)> = lines.iter().filter(|l| !l.0.is_empty()).collect();
    let checked: Vec<&(String, String)> = if v1.is_empty() { lines.iter().filter(|l| l.0.is_empty()).collect() } else { v1 };
    assert!(!checked.is_empty(), "{} no cgroup lines: {shim_cg}", p.tag);
    let wrong: Vec<_> = checked.iter().filter(|l| l.1 != cg).collect();
    assert!(wrong.is_empty(), "{} the shim is not in ShimCgroup {cg} for {wrong:?}; /proc/{}/cgroup:\n{shim_cg}", p.tag, shims[0].pid);
    assert!(!guard.dirs().is_empty(), "{} no cgroup directory {cg} was made", p.tag);
    let init_cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(!init_cg.lines().any(|l| l.ends_with(&format!(":{cg}"))), "{} the container joined the shim's cgroup:\n{init_cg}", p.tag);
    p.assert_exec_works(&id, "ShimCgroup");
    p.cd.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
    p.wait_status(&id, "STOPPED");
    p.delete_ok(&id);
    assert!(
        poll(Duration::from_secs(10), || p.cd.shim_procs().is_empty().then_some(())).is_some(),
        "{} shim left: {}",
        p.tag,
        shims_desc(&p.cd)
    );
    drop(p);
}

// ---------------------------------------------------------------------------
// 6. -info
// ---------------------------------------------------------------------------

fn runc_features() -> serde_json::Value {
    let o = run_cmd(
        {
            let mut c = std::process::Command::new("/usr/sbin/runc");
            c.arg("features");
            c
        },
        None,
        Duration::from_secs(10),
    );
    assert!(o.ok(), "runc features: {}", o.describe());
    serde_json::from_str(&o.out()).expect("runc features JSON")
}

fn keel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-keel-v1"))
}

/// What `-info` prints: a `containerd.types.RuntimeInfo`.
fn runtime_info(b: &[u8]) -> RuntimeInfo {
    RuntimeInfo::parse_from_bytes(b).unwrap_or_else(|e| panic!("-info output is no RuntimeInfo: {e}: {b:02x?}"))
}

/// `containerd-shim-keel-v1 -info </dev/null` prints a RuntimeInfo whose name
/// is io.containerd.keel.v1 and whose features are runc's `features` document.
/// With options selecting a runtime without `features` (bookworm's crun 1.8.1)
/// it fails and names the command.
#[test]
fn info_binary_direct() {
    let mut c = std::process::Command::new(keel_bin());
    c.arg("-info");
    let o = run_cmd(c, None, Duration::from_secs(20));
    assert!(o.ok(), "-info: {}", o.describe());
    let info = runtime_info(&o.stdout);
    assert_eq!(info.name, KEEL_V1, "RuntimeInfo.name");
    let version = info.version.as_ref().expect("RuntimeInfo.version");
    assert_eq!(version.version, env!("CARGO_PKG_VERSION"), "RuntimeInfo.version.version");
    let features = info.features.as_ref().expect("RuntimeInfo.features");
    let url = &features.type_url;
    assert!(url.ends_with("features/Features"), "features type_url {url:?}");
    let doc: serde_json::Value = serde_json::from_slice(&features.value).expect("features JSON");
    assert_eq!(doc, runc_features(), "-info features differ from `runc features`");

    // Options on stdin are honoured: ConfigBody naming crun.
    let any = cri_options_any("", "BinaryName = \"/usr/bin/crun\"\n");
    let mut c = std::process::Command::new(keel_bin());
    c.arg("-info");
    let o = run_cmd(c, Some(any), Duration::from_secs(20));
    eprintln!("-info with BinaryName=crun -> code {:?}, stderr {:?}", o.code, o.err().trim());
    let crun_has_features = {
        let mut c = std::process::Command::new(CRUN_BIN);
        c.arg("features");
        run_cmd(c, None, Duration::from_secs(10)).ok()
    };
    if crun_has_features {
        assert!(o.ok(), "-info with crun: {}", o.describe());
        assert_eq!(runtime_info(&o.stdout).name, KEEL_V1);
    } else {
        assert!(
            !o.ok() && o.err().contains("crun") && o.err().contains("features"),
            "-info with a runtime lacking `features` should fail naming it: {}",
            o.describe()
        );
    }
}

/// containerd 2.x asks a runtime for `-info` through the introspection API
/// (`ctr plugins inspect-runtime`): name io.containerd.keel.v1 and runc's
/// features, as for runc-v2. (containerd 1.6 has no such call.)
fn info_inspect_runtime(line: Line, rt: &'static str) {
    let p = Rig::for_runtime(line, rt);
    let o = p.cd.ctr_raw(None, &["plugins", "inspect-runtime", "--runtime", rt], None, CTR_TIMEOUT);
    assert!(o.ok(), "{} inspect-runtime: {}\n{}", p.tag, o.describe(), p.cd.log_tail(20));
    let v: serde_json::Value =
        serde_json::from_str(&o.out()).unwrap_or_else(|e| panic!("{} inspect-runtime output is not JSON ({e}): {}", p.tag, o.out()));
    assert_eq!(v["Name"], rt, "{} {}", p.tag, o.out());
    assert_eq!(v["Features"], runc_features(), "{} features", p.tag);
    if rt == KEEL_V1 {
        assert_eq!(v["Version"]["Version"], env!("CARGO_PKG_VERSION"), "{}", p.tag);
    }
}

// ---------------------------------------------------------------------------

macro_rules! lines {
    ($modname:ident, $rt:expr, [$($s:ident),* $(,)?]) => {
        mod $modname {
            $(
                mod $s {
                    use crate::common::Line;
                    #[test]
                    fn containerd_1_6() { crate::$s(Line::V16, $rt) }
                    #[test]
                    fn containerd_2() { crate::$s(Line::V2, $rt) }
                }
            )*
        }
    };
}

lines!(
    keel,
    crate::common::KEEL_V1,
    [
        crun_backend,
        crun_missing_binary,
        pod_grouping_keel_label,
        pod_grouping_sandbox_id,
        containerd_restart,
        shim_crash,
        shim_crash_crun,
        shim_oom_score,
        shim_cgroup,
        shim_cgroup_created_by_keel,
    ]
);

lines!(runc, crate::common::RUNC_V2, [pod_grouping_sandbox_id, containerd_restart, shim_crash, shim_oom_score]);

/// containerd 2.x only: 1.6 never asks a runtime for `-info`.
mod info_inspect_runtime {
    use crate::common::{Line, KEEL_V1, RUNC_V2};
    #[test]
    fn keel_containerd_2() {
        crate::info_inspect_runtime(Line::V2, KEEL_V1)
    }
    #[test]
    fn runc_containerd_2() {
        crate::info_inspect_runtime(Line::V2, RUNC_V2)
    }
}
