//! Stress and fault tests of Keel (io.containerd.keel.v1) through a private
//! containerd of each line (1.6 and 2.x):
//!
//! - `stress::*`: N create/start/wait/delete cycles (`ctr run --rm sh -c
//!   'echo run-I; exit K'`) and N execs into long-running containers, 8 at a
//!   time; every exit code, every output line and every /tasks/exit checked;
//!   afterwards no zombie, shim, containerd fd, mount, runtime state or cgroup
//!   is left over. Prints its figures (even without `--nocapture`).
//!   `KEEL_STRESS_RUNTIME=io.containerd.runc.v2` runs it against the reference.
//! - `immediate_exit::*`: processes that exit at once (racing Start) still
//!   report their exit code, after /tasks/start.
//! - `exit_order::*`: an exec exiting while its init exits, and `kill --all`
//!   while execs run: each exec's /tasks/exit precedes the init's, every time.
//! - `hang_exec::*`, `hang_pause_grouped::*`: a stand-in runtime hangs on one
//!   call (runc exec of one exec; runc pause of one task of a grouped shim);
//!   with KEEL_RUNTIME_TIMEOUT=5 the other calls of the same shim answer within
//!   1 s, the hung call fails with DeadlineExceeded naming the runtime op, and
//!   the shim serves on.
//! - `late_reader::*`: a short exec's output waits in its stdout fifo until
//!   the client opens it.
//! - `fault_shim_sigkill::*` (no orphan container process),
//!   `fault_runtime_removed::*` (clear errors naming the binary, nothing
//!   hangs), `fault_disk_full::*` (the bundle filesystem full at each step of
//!   Create: clear errors, nothing left behind, containerd and the shim serve on).
//!
//! N is `KEEL_STRESS_N` (default 200: the file runs in about 2-3 minutes with
//! `cargo test --release --test stress -- --test-threads 2`). The full run
//! (about 4-5 minutes per containerd line on 2 cores; 9 min for both here):
//!
//! ```sh
//! KEEL_STRESS_N=2000 cargo test --release --test stress stress:: -- --test-threads 1
//! ```

use keel_harness as common;

use common::robust::*;
use common::*;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 8;

fn stress_n() -> usize {
    std::env::var("KEEL_STRESS_N").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(200)
}

/// Runs `job(i)` for i in 0..n, `workers` at a time. Stops handing out jobs
/// after 20 failures. Returns the failures.
fn pool(n: usize, workers: usize, job: impl Fn(usize) -> Result<(), String> + Sync) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                if failures.lock().unwrap().len() >= 20 {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return;
                }
                if let Err(e) = job(i) {
                    failures.lock().unwrap().push(e);
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

/// The exit code job `i` uses: spread over 0..=255.
fn code_for(i: usize) -> i32 {
    ((i * 37 + 1) % 256) as i32
}

/// The exit status of a /tasks/exit or /tasks/delete event (protobuf JSON
/// leaves a zero out).
fn exit_status(e: &Event) -> u64 {
    match &e.payload["exit_status"] {
        serde_json::Value::Null => 0,
        v => v.as_u64().unwrap_or(u64::MAX),
    }
}

/// /tasks/exit events by (container id, process id) → exit statuses seen.
fn exits_by_id(ev: &EventsHandle) -> HashMap<(String, String), Vec<u64>> {
    let mut m: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for e in ev.events().into_iter().filter(|e| e.topic == "/tasks/exit") {
        let cid = e.payload["container_id"].as_str().unwrap_or("").to_string();
        let id = e.payload["id"].as_str().unwrap_or("").to_string();
        m.entry((cid, id)).or_default().push(exit_status(&e));
    }
    m
}

// ---------------------------------------------------------------------------
// 1. lifecycle and exec stress
// ---------------------------------------------------------------------------

fn stress(line: Line, n: usize) {
    let mut r = Rig::for_runtime(line, KEEL_V1);
    // `KEEL_STRESS_RUNTIME=io.containerd.runc.v2` runs the same against the
    // reference shim (to prove the test).
    if let Ok(rt) = std::env::var("KEEL_STRESS_RUNTIME") {
        r.rt = if rt == RUNC_V2 { RUNC_V2 } else { KEEL_V1 };
        r.tag = format!("[{} {}]", r.rt, line.name());
    }
    let ev = r.cd.events();
    let cpid = containerd_pid(&r.cd);
    let tag = &r.tag;

    // Warm up (first shim start, plugin state), then take the baseline.
    let o = r.run(&["--rm"], &r.cd.id("warm"), &["true"]);
    assert!(o.ok(), "{tag} warm-up run: {}", o.describe());
    thread::sleep(Duration::from_millis(500));
    let fds_before = fd_count(cpid);
    let t0 = Instant::now();

    // Phase A: N short-lived containers with varied exit codes.
    let ids: Vec<String> = (0..n).map(|i| format!("st{i}-{}", r.cd.id("c"))).collect();
    let fails_a = pool(n, CONCURRENCY, |i| {
        let k = code_for(i);
        let o = r.run(&["--rm"], &ids[i], &["sh", "-c", &format!("echo run-{i}; exit {k}")]);
        if o.code != Some(k) || o.timed_out || o.out() != format!("run-{i}\n") {
            return Err(format!("run {} (exit {k}, output run-{i}): {}", ids[i], o.describe()));
        }
        Ok(())
    });
    let elapsed_a = t0.elapsed();

    // Phase B: N execs into 4 long-running containers.
    let longs: Vec<String> = (0..4).map(|j| r.cd.id(&format!("long{j}"))).collect();
    for l in &longs {
        r.run_d(&[], l, &["sleep", "1000000"]);
    }
    for l in &longs {
        r.wait_status(l, "RUNNING");
    }
    let long_shims: Vec<i32> = longs.iter().flat_map(|l| r.cd.shim_procs_for(l)).map(|p| p.pid).collect();
    assert_eq!(long_shims.len(), 4, "{tag} one shim per long-running container");
    let shim_fds_before: usize = long_shims.iter().map(|p| fd_count(*p)).sum();
    let tb = Instant::now();
    let fails_b = pool(n, CONCURRENCY, |i| {
        let k = code_for(i + 7);
        let (cid, eid) = (&longs[i % 4], format!("x{i}"));
        let o = r.exec(&[], cid, &eid, &["sh", "-c", &format!("echo exec-{i}; exit {k}")]);
        if o.code != Some(k) || o.timed_out || o.out() != format!("exec-{i}\n") {
            return Err(format!("exec {eid} in {cid} (exit {k}, output exec-{i}): {}", o.describe()));
        }
        Ok(())
    });
    let elapsed_b = tb.elapsed();
    let elapsed = t0.elapsed();

    // Every exit reported exactly once with its code.
    let expected = 2 * n;
    let check_exits = || {
        let m = exits_by_id(&ev);
        let mut seen = 0;
        let mut wrong = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match m.get(&(id.clone(), id.clone())) {
                Some(v) if v.len() == 1 && v[0] == code_for(i) as u64 => seen += 1,
                Some(v) => wrong.push(format!("{id}: exits {v:?}, want [{}]", code_for(i))),
                None => {}
            }
        }
        for i in 0..n {
            let key = (longs[i % 4].clone(), format!("x{i}"));
            match m.get(&key) {
                Some(v) if v.len() == 1 && v[0] == code_for(i + 7) as u64 => seen += 1,
                Some(v) => wrong.push(format!("{key:?}: exits {v:?}, want [{}]", code_for(i + 7))),
                None => {}
            }
        }
        (seen, wrong)
    };
    let (exits_seen, wrong_exits) = poll(Duration::from_secs(30), || {
        let (seen, wrong) = check_exits();
        (seen == expected || !wrong.is_empty()).then_some((seen, wrong.clone()))
    })
    .unwrap_or_else(check_exits);

    // Zombies while the long-running shims are alive, and their fds.
    let zombies_mid = zombies(&r.cd);
    thread::sleep(Duration::from_millis(300));
    let shim_fds_after: usize = long_shims.iter().map(|p| fd_count(*p)).sum();

    for l in &longs {
        r.kill_delete(l);
    }
    let shims_left = poll(Duration::from_secs(20), || r.cd.shim_procs().is_empty().then_some(()))
        .map(|_| Vec::new())
        .unwrap_or_else(|| r.cd.shim_procs());
    let zombies_end = zombies(&r.cd);
    let slack = 8;
    let fds_after = poll(Duration::from_secs(15), || {
        let f = fd_count(cpid);
        (f <= fds_before + slack).then_some(f)
    })
    .unwrap_or_else(|| fd_count(cpid));
    let mounts = r.cd.mounts();
    let state = poll(Duration::from_secs(5), || runc_state_entries(&r.cd.ns).is_empty().then_some(()))
        .map(|_| Vec::new())
        .unwrap_or_else(|| runc_state_entries(&r.cd.ns));
    let cgroups = ns_cgroups(&r.cd.ns);

    // Straight to stderr (not eprintln!): shown even when the test passes
    // under cargo's output capture.
    let _ = writeln!(
        std::io::stderr(),
        "\n=== {tag} stress figures ===\n\
         N                      {n} runs + {n} execs, concurrency {CONCURRENCY}\n\
         elapsed                {elapsed:.1?} (runs {elapsed_a:.1?} = {:.1}/s, execs {elapsed_b:.1?} = {:.1}/s)\n\
         failed ops             {} runs, {} execs\n\
         exits seen/expected    {exits_seen}/{expected} (wrong: {})\n\
         zombies                {} while shims live, {} at the end\n\
         leaked shims           {}\n\
         containerd fds         {fds_before} before, {fds_after} after\n\
         long-running shim fds  {shim_fds_before} before {n} execs, {shim_fds_after} after (4 shims)\n\
         mounts below dir       {}\n\
         runc state dirs        {}\n\
         cgroups left           {}\n\
         ===",
        n as f64 / elapsed_a.as_secs_f64(),
        n as f64 / elapsed_b.as_secs_f64(),
        fails_a.len(),
        fails_b.len(),
        wrong_exits.len(),
        zombies_mid.len(),
        zombies_end.len(),
        shims_left.len(),
        mounts.len(),
        state.len(),
        cgroups.len(),
    );

    assert!(fails_a.is_empty(), "{tag} failed runs:\n{}", fails_a.join("\n"));
    assert!(fails_b.is_empty(), "{tag} failed execs:\n{}", fails_b.join("\n"));
    assert!(wrong_exits.is_empty(), "{tag} wrong /tasks/exit events:\n{}", wrong_exits.join("\n"));
    assert_eq!(exits_seen, expected, "{tag} /tasks/exit events missing");
    assert!(zombies_mid.is_empty() && zombies_end.is_empty(), "{tag} zombies: {zombies_mid:?} {zombies_end:?}");
    assert!(shims_left.is_empty(), "{tag} shims left: {:?}", shims_left.iter().map(|p| &p.cmdline).collect::<Vec<_>>());
    assert!(fds_after <= fds_before + slack, "{tag} containerd fds grew: {fds_before} -> {fds_after}");
    assert!(shim_fds_after <= shim_fds_before + 4, "{tag} shim fds grew over {n} execs: {shim_fds_before} -> {shim_fds_after}");
    assert!(mounts.is_empty(), "{tag} mounts left: {mounts:?}");
    assert!(state.is_empty(), "{tag} runtime state left in {RUNC_DEFAULT_ROOT}/{}: {state:?}", r.cd.ns);
    assert!(cgroups.is_empty(), "{tag} cgroups left: {cgroups:?}");
}

// ---------------------------------------------------------------------------
// 2. processes that exit at once
// ---------------------------------------------------------------------------

fn immediate_exit(line: Line, reps: usize) {
    let r = Rig::for_runtime(line, KEEL_V1);
    let ev = r.cd.events();
    let tag = &r.tag;
    let fails = pool(reps, CONCURRENCY, |i| {
        let id = r.cd.id(&format!("now{i}"));
        // `true`, `false` and `exit K`: nothing to wait for after exec.
        let (cmd, k): (Vec<String>, u64) = match i % 3 {
            0 => (vec!["true".into()], 0),
            1 => (vec!["false".into()], 1),
            _ => (vec!["sh".into(), "-c".into(), format!("exit {}", code_for(i))], code_for(i) as u64),
        };
        let o = r.run(&["-d"], &id, &strs(&cmd));
        if !o.ok() {
            return Err(format!("run -d {id}: {}", o.describe()));
        }
        let e = ev
            .wait_for(|e| e.topic == "/tasks/exit" && e.payload["id"] == id.as_str(), RUN_TIMEOUT)
            .ok_or_else(|| format!("{id}: no /tasks/exit"))?;
        if exit_status(&e) != k {
            return Err(format!("{id}: exit status {} want {k}", e.raw));
        }
        let evs = task_events(&ev, &id);
        let pos = |t: &str| evs.iter().position(|e| e.topic == t);
        if !(pos("/tasks/create") < pos("/tasks/start") && pos("/tasks/start") < pos("/tasks/exit")) {
            return Err(format!("{id}: events out of order:\n{}", evs.iter().map(|e| e.raw.as_str()).collect::<Vec<_>>().join("\n")));
        }
        let o = r.cd.ctr(&["tasks", "delete", &id]);
        if !o.ok() {
            return Err(format!("delete {id}: {}", o.describe()));
        }
        let d = ev
            .wait_for(|e| e.topic == "/tasks/delete" && e.container_id() == Some(&id), RUN_TIMEOUT)
            .ok_or_else(|| format!("{id}: no /tasks/delete"))?;
        if exit_status(&d) != k {
            return Err(format!("{id}: /tasks/delete {} want exit {k}", d.raw));
        }
        r.cd.ctr(&["containers", "delete", &id]);
        Ok(())
    });
    eprintln!("{tag} immediate exits: {reps} containers, {} failures", fails.len());
    assert!(fails.is_empty(), "{tag}:\n{}", fails.join("\n"));
}

// ---------------------------------------------------------------------------
// 3. exec exits before init exits
// ---------------------------------------------------------------------------

/// One container: init + execs, ended by `how`; checks each exec's /tasks/exit
/// precedes the init's. Returns a description of what went wrong.
fn exit_order_once(r: &Rig, ev: &EventsHandle, i: usize, kill_all: bool) -> Result<(), String> {
    let id = r.cd.id(if kill_all { "ka" } else { "race" });
    let execs: Vec<String> = (0..3).map(|j| format!("e{j}")).collect();
    let init: &[&str] = if kill_all {
        &["sleep", "1000000"]
    } else {
        // The init exits 3 on SIGUSR1 (pid 1 ignores signals it has no handler for).
        &["sh", "-c", "trap 'exit 3' USR1; while :; do sleep 1 & wait; done"]
    };
    let o = r.run(&["-d"], &id, init);
    if !o.ok() {
        return Err(format!("run -d {id}: {}", o.describe()));
    }
    for e in &execs {
        let o = r.exec(&["-d"], &id, e, &["sleep", "1000000"]);
        if !o.ok() {
            return Err(format!("exec -d {e} in {id}: {}", o.describe()));
        }
    }
    let mut all_execs = execs.clone();
    if kill_all {
        let o = r.cd.ctr(&["tasks", "kill", "--all", "-s", "SIGKILL", &id]);
        if !o.ok() {
            return Err(format!("kill --all {id}: {}", o.describe()));
        }
    } else {
        // An exec that makes the init exit and exits itself at the same moment.
        let o = r.exec(&["-d"], &id, "killer", &["sh", "-c", "kill -USR1 1; exit 5"]);
        if !o.ok() {
            return Err(format!("exec killer in {id}: {}", o.describe()));
        }
        all_execs.push("killer".into());
    }
    ev.wait_for(|e| e.topic == "/tasks/exit" && e.payload["id"] == id.as_str(), RUN_TIMEOUT)
        .ok_or_else(|| format!("{id}: no init /tasks/exit"))?;
    // Exec exits must all be there already, before the init's.
    thread::sleep(Duration::from_millis(100));
    let evs = task_events(ev, &id);
    let init_pos = evs.iter().position(|e| e.topic == "/tasks/exit" && e.payload["id"] == id.as_str()).unwrap();
    let mut bad = Vec::new();
    for e in &all_execs {
        match evs.iter().position(|x| x.topic == "/tasks/exit" && x.payload["id"] == e.as_str()) {
            Some(p) if p < init_pos => {}
            Some(p) => bad.push(format!("exec {e} exit at {p}, after init exit at {init_pos}")),
            None => bad.push(format!("exec {e}: no /tasks/exit")),
        }
    }
    let init_status = exit_status(&evs[init_pos]);
    let want_init = if kill_all { 137 } else { 3 };
    if init_status != want_init {
        bad.push(format!("init exit status {init_status:?}, want {want_init}"));
    }
    let o = r.cd.ctr(&["tasks", "delete", &id]);
    if !o.ok() {
        bad.push(format!("delete: {}", o.describe()));
    }
    r.cd.ctr(&["containers", "delete", &id]);
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "rep {i} {id} ({}): {}\nevents:\n{}",
            if kill_all { "kill --all" } else { "exec makes init exit" },
            bad.join("; "),
            evs.iter().map(|e| e.raw.as_str()).collect::<Vec<_>>().join("\n")
        ))
    }
}

fn exit_order(line: Line, reps: usize) {
    let r = Rig::for_runtime(line, KEEL_V1);
    let ev = r.cd.events();
    let h = ev.handle();
    let fails = pool(2 * reps, 4, |i| exit_order_once(&r, &h, i, i % 2 == 0));
    eprintln!("{} exit order: {reps} x kill --all, {reps} x exec racing init exit: {} failures", r.tag, fails.len());
    assert!(fails.is_empty(), "{}:\n{}", r.tag, fails.join("\n\n"));
}

// ---------------------------------------------------------------------------
// 4. a hanging runtime call
// ---------------------------------------------------------------------------

const HANG_TIMEOUT_S: u64 = 5;

/// `f` must answer within 1 s; returns its value and time.
fn within_1s<T: std::fmt::Debug>(what: &str, f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    let el = t.elapsed();
    eprintln!("  during the hang: {what} -> {v:?} in {el:?}");
    assert!(el < Duration::from_secs(1), "{what} took {el:?} while another call hung: {v:?}");
    (v, el)
}

fn hang_exec(line: Line) {
    let r = Rig::with_env(line, &[("KEEL_RUNTIME_TIMEOUT", &HANG_TIMEOUT_S.to_string())]);
    let tag = r.tag.clone();
    let (script, hung) = hanging_runtime(&r.cd.dir, "hang-runc", "*/exec-hang*");
    let _guard = HungGuard(hung.clone());
    let cfg = r.write_runtime_config("hang", &format!("BinaryName = \"{}\"\n", script.display()));
    let cfgs = cfg.to_string_lossy().into_owned();
    let ev = r.cd.events();
    let id = r.cd.id("hx");
    r.run_d(&["--runtime-config-path", &cfgs], &id, &["sleep", "1000000"]);
    r.wait_status(&id, "RUNNING");
    let shim = r.shim(&id);

    // Other processes of the same task, to act on during the hang.
    let busy = exec_spec(&r.cd, &id, &["sleep", "1000000"]);
    shim.exec_start(&id, "busy", &busy).expect("exec busy");
    let done = exec_spec(&r.cd, &id, &["sh", "-c", "exit 9"]);
    shim.exec_start(&id, "done1", &done).expect("exec done1");
    assert_eq!(shim.wait(&id, "done1", Duration::from_secs(20)).expect("wait done1"), 9);

    // Two hung execs: one from ctr (what a user sees), one straight to the shim.
    let ctr_hang = {
        let args = r.exec_args(&[], &id, "hangA", &["echo", "never"]);
        let mut cmd = std::process::Command::new(r.line.ctr());
        cmd.arg("--address").arg(&r.cd.sock).arg("--namespace").arg(&r.cd.ns).args(&args);
        thread::spawn(move || run_cmd(cmd, None, Duration::from_secs(60)))
    };
    let direct_hang = {
        let (shim, id) = (shim.clone(), id.clone());
        let spec = exec_spec(&r.cd, &id, &["echo", "never"]);
        thread::spawn(move || {
            let t = Instant::now();
            let r = shim.call(&exec_req(&id, "hangB", &spec));
            assert!(matches!(r, Rpc::Ok(_)), "Exec hangB: {r:?}");
            let req = pb::StartRequest { id: id.clone(), exec_id: "hangB".into(), ..Default::default() };
            let r = shim.call_timeout(&req, Duration::from_secs(60));
            (r, t.elapsed())
        })
    };
    let hung_pids = poll(Duration::from_secs(10), || {
        let n = std::fs::read_to_string(&hung).unwrap_or_default().lines().count();
        (n >= 2).then_some(n)
    });
    assert!(hung_pids.is_some(), "{tag} the stand-in runtime never hung on the two execs");
    let hang_started = Instant::now();

    // Meanwhile: other calls on the same shim, each within 1 s.
    let (st, _) = within_1s("State init", || shim.state(&id, ""));
    assert_eq!(st.expect("state").status, ST_RUNNING);
    let (st, _) = within_1s("State of the hung exec hangB", || shim.state(&id, "hangB"));
    assert_eq!(st.expect("state hangB").status, ST_CREATED, "{tag} hangB before its Start returned");
    let quick = exec_spec(&r.cd, &id, &["sh", "-c", "exit 4"]);
    let (pid, _) = within_1s("Exec+Start quick", || shim.exec_start(&id, "quick", &quick));
    assert!(pid.expect("quick") > 0);
    let (code, _) = within_1s("Wait quick", || shim.wait(&id, "quick", Duration::from_secs(5)));
    assert_eq!(code.expect("wait quick"), 4);
    let (k, _) = within_1s("Kill busy", || shim.kill(&id, "busy", 9, false));
    assert!(matches!(k, Rpc::Ok(_)), "{tag} kill busy: {k:?}");
    let (code, _) = within_1s("Wait busy", || shim.wait(&id, "busy", Duration::from_secs(5)));
    assert_eq!(code.expect("wait busy"), 137);
    let (code, _) = within_1s("Wait done1", || shim.wait(&id, "done1", Duration::from_secs(5)));
    assert_eq!(code.expect("wait done1"), 9);
    let (p, _) = within_1s("Pids", || shim.pids(&id));
    assert!(matches!(p, Rpc::Ok(_)), "{tag} pids: {p:?}");
    let (d, _) = within_1s("Delete quick", || shim.delete(&id, "quick"));
    assert!(matches!(d, Rpc::Ok(_)), "{tag} delete quick: {d:?}");
    assert!(hang_started.elapsed() < Duration::from_secs(HANG_TIMEOUT_S - 1), "{tag} the checks above did not all run while the exec hung");

    // The hung calls fail with DeadlineExceeded naming the op.
    let (res, took) = direct_hang.join().unwrap();
    eprintln!("{tag} hung Start hangB -> {res:?} after {took:?}");
    match &res {
        Rpc::Err(s) => {
            assert_eq!(s.code, 4, "{tag} want DeadlineExceeded: {s:?}");
            assert!(
                s.message.contains(" exec ") && s.message.contains(&id) && s.message.contains(&format!("{HANG_TIMEOUT_S}s")),
                "{tag} the message should name the runtime op, the task and the limit: {s:?}"
            );
        }
        other => panic!("{tag} hung Start hangB: {other:?}"),
    }
    assert!(
        took >= Duration::from_secs(HANG_TIMEOUT_S - 1) && took < Duration::from_secs(HANG_TIMEOUT_S + 10),
        "{tag} Start hangB took {took:?} (limit {HANG_TIMEOUT_S}s)"
    );
    let o = ctr_hang.join().unwrap();
    eprintln!("{tag} ctr exec hangA -> {:?}: {}", o.code, o.err().trim());
    assert!(!o.ok() && !o.timed_out, "{tag} ctr exec hangA: {}", o.describe());
    assert!(o.err().contains("did not finish within") && o.err().contains("exec"), "{tag} ctr shows the timeout: {}", o.describe());
    // The parked runtime processes were killed.
    let pids: Vec<i32> = std::fs::read_to_string(&hung).unwrap().lines().filter_map(|l| l.trim().parse().ok()).collect();
    let gone = poll(Duration::from_secs(5), || pids.iter().all(|p| !pid_alive(*p)).then_some(()));
    assert!(gone.is_some(), "{tag} hung runtime processes still alive: {pids:?}");

    // The shim serves on: the failed exec is still there, can be deleted; new execs work.
    let st = shim.state(&id, "hangB").expect("state hangB after timeout");
    eprintln!("{tag} hangB after the timeout: {st:?}");
    let d = shim.delete(&id, "hangB");
    assert!(matches!(d, Rpc::Ok(_)), "{tag} delete hangB: {d:?}");
    r.assert_exec_works(&id, "a runtime call timed out");
    shim.assert_serves(&r.cd, &id, "a runtime call timed out");
    let started: Vec<_> = task_events(&ev, &id)
        .into_iter()
        .filter(|e| e.topic == "/tasks/exec-started" && e.payload["exec_id"].as_str().unwrap_or("").starts_with("hang"))
        .collect();
    assert!(started.is_empty(), "{tag} exec-started for a hung exec: {started:?}");
    r.kill_delete(&id);
}

fn hang_pause_grouped(line: Line) {
    let r = Rig::with_env(line, &[("KEEL_RUNTIME_TIMEOUT", &HANG_TIMEOUT_S.to_string())]);
    let tag = r.tag.clone();
    let a = r.cd.id("grpa");
    let b = r.cd.id("grpb");
    let (script, hung) = hanging_runtime(&r.cd.dir, "hang-runc", &format!("*\" pause {a} \"*"));
    let _guard = HungGuard(hung.clone());
    let cfg = r.write_runtime_config("hang", &format!("BinaryName = \"{}\"\n", script.display()));
    let cfgs = cfg.to_string_lossy().into_owned();
    let group = format!("io.containerd.keel.v1.group={}", r.cd.id("pod"));
    for id in [&a, &b] {
        r.run_d(&["--runtime-config-path", &cfgs, "--annotation", &group], id, &["sleep", "1000000"]);
        r.wait_status(id, "RUNNING");
    }
    let (sa, sb) = (r.shim(&a), r.shim(&b));
    assert_eq!(sa.sock, sb.sock, "{tag} grouped containers should share one shim socket");
    assert_eq!(r.cd.shim_procs().len(), 1, "{tag} one shim process for the group");
    let shim = sb;

    let pause = {
        let mut cmd = std::process::Command::new(r.line.ctr());
        cmd.arg("--address").arg(&r.cd.sock).arg("--namespace").arg(&r.cd.ns).args(["tasks", "pause", &a]);
        thread::spawn(move || run_cmd(cmd, None, Duration::from_secs(60)))
    };
    assert!(
        poll(Duration::from_secs(10), || std::fs::read_to_string(&hung).ok().filter(|s| !s.is_empty())).is_some(),
        "{tag} the stand-in never hung on pause {a}"
    );
    let hang_started = Instant::now();
    let (st, _) = within_1s("State B", || shim.state(&b, ""));
    assert_eq!(st.expect("state b").status, ST_RUNNING);
    let (st, _) = within_1s("State A (being paused)", || shim.state(&a, ""));
    assert_eq!(st.expect("state a").status, ST_RUNNING);
    let spec = exec_spec(&r.cd, &b, &["sleep", "1000000"]);
    let (pid, _) = within_1s("Exec+Start in B", || shim.exec_start(&b, "eb", &spec));
    assert!(pid.expect("exec in b") > 0);
    let (k, _) = within_1s("Kill exec of B", || shim.kill(&b, "eb", 15, false));
    assert!(matches!(k, Rpc::Ok(_)), "{tag} {k:?}");
    let (w, _) = within_1s("Wait exec of B", || shim.wait(&b, "eb", Duration::from_secs(5)));
    assert_eq!(w.expect("wait eb"), 143);
    let (p, _) = within_1s("Pids B", || shim.pids(&b));
    assert!(matches!(p, Rpc::Ok(_)), "{tag} {p:?}");
    let stats = pb::StatsRequest { id: b.clone(), ..Default::default() };
    let (s, _) = within_1s("Stats B", || shim.call(&stats));
    assert!(matches!(s, Rpc::Ok(_)), "{tag} {s:?}");
    assert!(hang_started.elapsed() < Duration::from_secs(HANG_TIMEOUT_S - 1), "{tag} checks ran too late");

    let o = pause.join().unwrap();
    eprintln!("{tag} ctr task pause (hung) -> {:?} after {:?}: {}", o.code, o.elapsed, o.err().trim());
    assert!(!o.ok() && !o.timed_out, "{tag} pause: {}", o.describe());
    assert!(
        o.err().contains("pause") && o.err().contains("did not finish within"),
        "{tag} the error should name the op and the timeout: {}",
        o.describe()
    );
    if line == Line::V16 {
        assert!(o.err().trim_end().ends_with("deadline exceeded"), "{tag} code: {}", o.describe());
    }
    assert!(o.elapsed >= Duration::from_secs(HANG_TIMEOUT_S - 1), "{tag} pause failed early: {:?}", o.elapsed);
    assert_eq!(r.task(&a).map(|t| t.1), Some("RUNNING".into()), "{tag} A after the failed pause");
    r.assert_exec_works(&a, "a hung pause");
    r.assert_exec_works(&b, "a hung pause of another task");
    // A second pause (no longer hung: the pattern matches only A) works on B.
    let o = r.cd.ctr(&["tasks", "pause", &b]);
    assert!(o.ok(), "{tag} pause B: {}", o.describe());
    let o = r.cd.ctr(&["tasks", "resume", &b]);
    assert!(o.ok(), "{tag} resume B: {}", o.describe());
    r.kill_delete(&a);
    r.kill_delete(&b);
}

// ---------------------------------------------------------------------------
// 5. faults
// ---------------------------------------------------------------------------

/// Every descendant of `pid`.
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

fn shim_sigkill(line: Line) {
    let r = Rig::for_runtime(line, KEEL_V1);
    let tag = r.tag.clone();
    let ev = r.cd.events();
    let nb = r.cd.id("neighbour");
    r.run_d(&[], &nb, &["sleep", "1000000"]);
    let id = r.cd.id("victim");
    r.run_d(&[], &id, &["sh", "-c", "sleep 1000000 & sleep 1000000"]);
    let init = r.wait_status(&id, "RUNNING") as i32;
    let o = r.exec(&["-d"], &id, "e1", &["sleep", "1000000"]);
    assert!(o.ok(), "{tag} exec: {}", o.describe());
    let shims = r.cd.shim_procs_for(&id);
    assert_eq!(shims.len(), 1, "{tag} shim of {id}: {shims:?}");
    let shim = shims[0].pid;
    let procs = poll(Duration::from_secs(10), || {
        let d = descendants(shim);
        (d.len() >= 3).then_some(d)
    })
    .unwrap_or_else(|| panic!("{tag} container processes under the shim: {:?}", descendants(shim)));
    assert!(procs.contains(&init), "{tag} init {init} not under shim {shim}: {procs:?}");
    eprintln!("{tag} SIGKILL shim {shim}; container processes {procs:?}");
    // SAFETY: a pid we found as this test's shim.
    unsafe { libc::kill(shim, libc::SIGKILL) };

    let orphans = poll(Duration::from_secs(30), || procs.iter().all(|p| !pid_alive(*p)).then_some(()));
    let alive: Vec<i32> = procs.iter().copied().filter(|p| pid_alive(*p)).collect();
    assert!(orphans.is_some(), "{tag} container processes outlived their shim by 30s: {alive:?}\n{}", r.cd.log_tail(40));
    let e = ev.expect("init exit after the shim died", |e| e.topic == "/tasks/exit" && e.container_id() == Some(&id), RUN_TIMEOUT);
    eprintln!("{tag} after shim SIGKILL: {}", e.raw);
    // containerd may keep the task as STOPPED or have dropped it; either way it goes.
    let o = r.cd.ctr(&["tasks", "delete", &id]);
    eprintln!("{tag} task delete after shim death -> {:?} {}", o.code, o.err().trim());
    assert!(!o.timed_out, "{tag} {}", o.describe());
    let o = r.cd.ctr(&["containers", "delete", &id]);
    assert!(o.ok(), "{tag} container delete: {}", o.describe());
    let clean = poll(Duration::from_secs(10), || {
        (!runc_state_entries(&r.cd.ns).contains(&id) && r.cd.shim_procs_for(&id).is_empty()).then_some(())
    });
    assert!(clean.is_some(), "{tag} runtime state or shim left for {id}: {:?}", runc_state_entries(&r.cd.ns));
    r.assert_exec_works(&nb, "another container's shim was killed");
    r.kill_delete(&nb);
}

fn runtime_removed(line: Line) {
    let r = Rig::for_runtime(line, KEEL_V1);
    let tag = r.tag.clone();
    let bin = r.cd.dir.join("runc-copy");
    std::fs::copy("/usr/sbin/runc", &bin).expect("copy runc");
    let binary = bin.to_string_lossy().into_owned();
    let cfg = r.write_runtime_config("copy", &format!("BinaryName = \"{binary}\"\n"));
    let cfgs = cfg.to_string_lossy().into_owned();
    let id = r.cd.id("nobin");
    r.run_d(&["--runtime-config-path", &cfgs], &id, &["sleep", "1000000"]);
    let init = r.wait_status(&id, "RUNNING") as i32;
    let o = r.exec(&["-d"], &id, "e1", &["sleep", "1000000"]);
    assert!(o.ok(), "{tag} exec e1: {}", o.describe());
    std::fs::remove_file(&bin).unwrap();

    let quick = Duration::from_secs(20);
    let must_name = |what: &str, o: &Output| {
        eprintln!("{tag} runtime binary gone: {what} -> {:?}: {}", o.code, o.err().trim());
        assert!(!o.timed_out, "{tag} {what} hung: {}", o.describe());
        assert!(!o.ok(), "{tag} {what} succeeded without a runtime binary: {}", o.describe());
        assert!(o.err().contains(&binary), "{tag} {what}: the error should name {binary}: {}", o.describe());
    };
    let o = r.cd.ctr_timeout(&strs(&r.exec_args(&[], &id, "e2", &["true"])), quick);
    must_name("exec", &o);
    if line == Line::V16 {
        assert!(o.err().trim_end().ends_with("failed precondition"), "{tag} exec code: {}", o.describe());
    }
    let o = r.cd.ctr_timeout(&["tasks", "kill", "-s", "SIGKILL", &id], quick);
    must_name("kill", &o);
    let o = r.cd.ctr_timeout(&["tasks", "ps", &id], quick);
    must_name("ps", &o);
    let o = r.cd.ctr_timeout(&["tasks", "pause", &id], quick);
    must_name("pause", &o);
    // An exec is signalled through its pidfd: no runtime needed.
    let o = r.cd.ctr_timeout(&["tasks", "kill", "--exec-id", "e1", "-s", "SIGKILL", &id], quick);
    eprintln!("{tag} runtime binary gone: kill exec e1 -> {:?} {}", o.code, o.err().trim());
    assert!(o.ok(), "{tag} kill of an exec needs no runtime: {}", o.describe());
    // The init dies (from outside); its exit is reported; Delete needs the runtime.
    // SAFETY: the pid of this test's container init.
    unsafe { libc::kill(init, libc::SIGKILL) };
    r.wait_status(&id, "STOPPED");
    let o = r.cd.ctr_timeout(&["tasks", "delete", &id], quick);
    must_name("delete", &o);
    let o = r.cd.ctr_timeout(&["tasks", "delete", "-f", &id], quick);
    must_name("delete -f", &o);
    assert_eq!(r.task(&id).map(|t| t.1), Some("STOPPED".into()), "{tag} task after failed deletes");

    // Back in place, everything cleans up.
    std::fs::copy("/usr/sbin/runc", &bin).expect("restore runc");
    let o = r.cd.ctr_timeout(&["tasks", "delete", &id], quick);
    assert!(o.ok(), "{tag} delete with the binary back: {}", o.describe());
    r.cd.ctr_ok(&["containers", "delete", &id]);
    let clean = poll(Duration::from_secs(10), || (runc_state_entries(&r.cd.ns).is_empty() && r.cd.shim_procs().is_empty()).then_some(()));
    assert!(clean.is_some(), "{tag} leftovers: state {:?}", runc_state_entries(&r.cd.ns));
}

/// tmpfs of `size` bytes mounted on `dir`; removes its filler on drop (the
/// harness unmounts everything below its directory).
struct SmallFs {
    dir: std::path::PathBuf,
}

impl SmallFs {
    fn mount(dir: &std::path::Path, size: usize) -> SmallFs {
        std::fs::create_dir_all(dir).unwrap();
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let (src, fstype) = (c("tmpfs"), c("tmpfs"));
        let target = c(&dir.to_string_lossy());
        let data = c(&format!("size={size},mode=0711"));
        // SAFETY: valid C strings; mounting a fresh tmpfs on our own directory.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, data.as_ptr() as *const libc::c_void) };
        assert_eq!(rc, 0, "mount tmpfs on {}: {}", dir.display(), std::io::Error::last_os_error());
        SmallFs { dir: dir.to_path_buf() }
    }

    fn filler(&self) -> std::path::PathBuf {
        self.dir.join(".filler")
    }

    /// Fills the filesystem, then frees `pages` pages.
    fn fill_leaving(&self, pages: u64) -> u64 {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.filler()).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        drop(f);
        let len = std::fs::metadata(self.filler()).unwrap().len();
        let keep = len.saturating_sub(pages * 4096);
        std::fs::OpenOptions::new().write(true).open(self.filler()).unwrap().set_len(keep).unwrap();
        self.free()
    }

    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.dir.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: statvfs into a zeroed struct.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        unsafe { libc::statvfs(c.as_ptr(), &mut s) };
        s.f_bavail as u64 * s.f_bsize as u64
    }

    fn empty(&self) {
        let _ = std::fs::remove_file(self.filler());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        self.empty();
    }
}

fn disk_full(line: Line) {
    let r = Rig::for_runtime(line, KEEL_V1);
    let tag = r.tag.clone();
    // The namespace's bundle directory (every bundle of this test lives there).
    let nsdir = r.cd.state.join("io.containerd.runtime.v2.task").join(&r.cd.ns);
    let fs = SmallFs::mount(&nsdir, 2 << 20);
    let nb = r.sleeper("neighbour");

    // Sweep the point where space runs out: 0, 1, 2, ... pages left.
    let mut outcomes = Vec::new();
    for pages in [0u64, 1, 2, 3, 4, 6, 8, 12] {
        let free = fs.fill_leaving(pages);
        let id = r.cd.id(&format!("full{pages}"));
        let o = r.run(&["--rm"], &id, &["sh", "-c", "echo hi; exit 3"]);
        let msg = o.err().trim().replace('\n', " \u{23ce} ");
        eprintln!("{tag} {free} bytes free: run -> {:?} in {:?}: {msg}", o.code, o.elapsed);
        assert!(!o.timed_out, "{tag} run with {free} bytes free hung: {}", o.describe());
        if o.code != Some(3) {
            // runc itself cannot write its log (in the bundle) then, and says
            // only "exit status 1", with runc-v2 as with Keel: accepted when
            // the message names the runtime op that failed.
            let err = o.err().to_lowercase();
            assert!(
                err.contains("no space left on device") || (err.contains("runc create") && err.contains("exit status")),
                "{tag} with {free} bytes free, the failure should say why: {}",
                o.describe()
            );
        }
        outcomes.push((free, o.code, msg));
        // Nothing left behind by a failed create.
        let clean = poll(Duration::from_secs(10), || {
            (r.cd.shim_procs_for(&id).is_empty() && !runc_state_entries(&r.cd.ns).contains(&id)).then_some(())
        });
        assert!(clean.is_some(), "{tag} leftovers for {id}: shim {:?} state {:?}", r.cd.shim_procs_for(&id), runc_state_entries(&r.cd.ns));
        let _ = r.cd.ctr(&["containers", "delete", &id]);
        // containerd and the neighbour's shim still answer.
        assert_eq!(r.task(&nb).map(|t| t.1), Some("RUNNING".into()), "{tag} neighbour after a full disk");
    }
    // An exec while full: Keel writes the process spec into the bundle.
    fs.fill_leaving(0);
    let o = r.exec(&[], &nb, "full-exec", &["echo", "hi"]);
    eprintln!("{tag} exec with the bundle fs full -> {:?}: {}", o.code, o.err().trim());
    assert!(!o.timed_out, "{tag} exec hung on a full disk: {}", o.describe());
    assert!(o.ok() || o.err().to_lowercase().contains("no space left on device"), "{tag} exec on a full disk: {}", o.describe());
    fs.empty();
    r.assert_exec_works(&nb, "a full bundle filesystem");
    let o = r.run(&["--rm"], &r.cd.id("after"), &["sh", "-c", "exit 3"]);
    assert_eq!(o.code, Some(3), "{tag} run after freeing space: {}", o.describe());
    assert!(outcomes.iter().any(|o| o.1 != Some(3)), "{tag} no create failed with a full disk: {outcomes:?}");
    r.kill_delete(&nb);
}

// ---------------------------------------------------------------------------
// 6. output of a short exec whose client opens its fifo late
// ---------------------------------------------------------------------------

/// Opens fifo `path` for reading after `delay` (non-blocking), then reads until
/// EOF after data, or until 3 s have passed.
fn late_read(path: std::path::PathBuf, delay: Duration) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        thread::sleep(delay);
        let mut f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).expect("open fifo for reading");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match f.read(&mut buf) {
                // No writer (yet, or any more): EOF once something was read.
                Ok(0) if !out.is_empty() => break,
                Ok(0) => thread::sleep(Duration::from_millis(20)),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        out
    })
}

/// The shim must not drop an exec's output when the client's reader is not
/// (yet) on the stdout fifo: containerd's client opens its fifo ends in the
/// background (containerd/fifo opens a non-blocking fifo in a goroutine), so
/// a process that exits at once can be done before they are open. runc-v2
/// opens the fifo's write end blocking, so its copy waits for the reader (and
/// Start with it); a shim that opens it read-write, writes and closes before
/// any reader came, loses the bytes with the fifo's last fd. Here the reader
/// opens 300 ms after Start, straight through the shim's API, on both runtimes.
fn late_reader(line: Line) {
    let mut got = Vec::new();
    for rt in [RUNC_V2, KEEL_V1] {
        let mut r = Rig::for_runtime(line, KEEL_V1);
        r.rt = rt;
        r.tag = format!("[{rt} {}]", line.name());
        let id = r.sleeper("late");
        let shim = r.shim(&id);
        let fifo = r.cd.dir.join("late-stdout");
        let efifo = r.cd.dir.join("late-stderr");
        for f in [&fifo, &efifo] {
            let c = std::ffi::CString::new(f.to_string_lossy().as_bytes()).unwrap();
            // SAFETY: mkfifo with a valid path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        }
        let spec = exec_spec(&r.cd, &id, &["echo", "late-reader"]);
        let add = shim.call(&pb::ExecProcessRequest {
            stdout: fifo.to_string_lossy().into_owned(),
            stderr: efifo.to_string_lossy().into_owned(),
            ..exec_req(&id, "late", &spec)
        });
        assert!(matches!(add, Rpc::Ok(_)), "{} Exec: {add:?}", r.tag);
        // The client's reader comes 300 ms after Start was sent.
        let reader = late_read(fifo.clone(), Duration::from_millis(300));
        let ereader = late_read(efifo.clone(), Duration::from_millis(300));
        let t = Instant::now();
        let st = shim.start(&id, "late");
        let start_took = t.elapsed();
        assert!(matches!(st, Rpc::Ok(_)), "{} Start: {st:?}", r.tag);
        let code = shim.wait(&id, "late", Duration::from_secs(20));
        assert_eq!(code.as_ref().ok(), Some(&0), "{} Wait: {code:?}", r.tag);
        let out = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
        let _ = ereader.join();
        eprintln!("{} Start returned after {start_took:?}; output read by a reader that came 300 ms late: {out:?}", r.tag);
        let d = shim.delete(&id, "late");
        assert!(matches!(d, Rpc::Ok(_)), "{} Delete exec: {d:?}", r.tag);
        got.push((rt, out));
        r.kill_delete(&id);
    }
    assert_eq!(got[0].1, "late-reader\n", "the reference (runc-v2) keeps the output: {got:?}");
    assert_eq!(
        got[1].1,
        "late-reader\n",
        "[keel {}] the exec's output is lost when the client opens its fifo 300 ms after Start: {got:?}",
        line.name()
    );
}

// ---------------------------------------------------------------------------

per_line!(stress, |l| super::stress(l, stress_n()));
per_line!(immediate_exit, |l| super::immediate_exit(l, 30));
per_line!(exit_order, |l| super::exit_order(l, if l == Line::V16 { 20 } else { 10 }));
per_line!(hang_exec, super::hang_exec);
per_line!(hang_pause_grouped, super::hang_pause_grouped);
per_line!(fault_shim_sigkill, super::shim_sigkill);
per_line!(fault_runtime_removed, super::runtime_removed);
per_line!(fault_disk_full, super::disk_full);
per_line!(late_reader, super::late_reader);
