//! Keel on a cgroup v2 host, for real: containers on the unified hierarchy
//! through a real containerd (1.6 and 2.x), each scenario against Keel and,
//! for parity, containerd's io.containerd.runc.v2.
//!
//! This machine is cgroup v1 hybrid, so the suite runs inside the guest of
//! `scripts/test-guest.sh` (Debian's cloud kernel under qemu, only cgroup2
//! mounted), which the test command calls; `cargo test` alone does not run
//! it (`test = false` in Cargo.toml). On a host that is not unified every
//! scenario fails at once and says so.
//!
//!   <variant>::<scenario>::containerd_1_6 / containerd_2
//!
//! The plain guest runs everything but `systemd_*` (runc's cgroupfs driver);
//! the guest whose PID 1 is systemd runs `systemd_*` (`SystemdCgroup = true`:
//! runc --systemd-cgroup, cgroupsPath "slice:prefix:name").

use keel_harness as common;

use common::api::Api;
use common::control::*;
use common::production::*;
use common::scenario::*;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

type T = Scenario;

/// A scenario on a unified host (panics at once elsewhere, naming the way to run it).
fn v2(line: Line, rt: &'static str) -> T {
    assert!(
        unified_host(),
        "this suite needs a cgroup v2 (unified) host: {CGROUP2_ROOT}/cgroup.controllers is missing here; run it with `bash scripts/test-guest.sh`"
    );
    T::new(line, rt)
}

/// Waits (bounded) for a cgroup directory to be removed.
fn assert_gone(t: &T, dir: &Path, what: &str) {
    let gone = poll(Duration::from_secs(10), || (!dir.exists()).then_some(()));
    assert!(gone.is_some(), "{} {what}: cgroup {} is still there after delete", t.tag, dir.display());
}

fn num(dir: &Path, file: &str) -> u64 {
    let s = cgroup_read(dir, file);
    s.parse().unwrap_or_else(|e| panic!("{}/{file}: {s:?} is not a number: {e}", dir.display()))
}

/// One key of a flat-keyed cgroup file (memory.stat, cpu.stat, memory.events).
fn keyed(dir: &Path, file: &str, key: &str) -> u64 {
    let s = cgroup_read(dir, file);
    s.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{}/{file} has no {key}:\n{s}", dir.display()))
}

fn events_of(ev: &EventsWatcher, id: &str, topics: &[&str]) -> Vec<String> {
    ev.events().into_iter().filter(|e| e.container_id() == Some(id) && topics.contains(&e.topic.as_str())).map(|e| e.topic).collect()
}

// ---------------------------------------------------------------------------
// cgroupfs driver
// ---------------------------------------------------------------------------

/// Exit codes of an init and an exec, a terminal, the container's own v2
/// cgroup (one "0::" line, no v1 controllers), removed after delete.
fn run_exec_terminal(line: Line, rt: &'static str) {
    let t = v2(line, rt);
    let o = t.run(&["--rm"], &t.cd.id("exit"), &["sh", "-c", "echo on-v2; exit 3"]);
    assert!(o.code == Some(3) && o.out() == "on-v2\n", "{} run --rm exit 3: {}", t.tag, o.describe());

    let id = t.sleeper("basic");
    let pid = t.wait_status(&id, "RUNNING");
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("init's /proc/PID/cgroup");
    assert!(cg.lines().all(|l| l.starts_with("0::")), "{} init is not on the unified hierarchy only:\n{cg}", t.tag);
    let dir = cgroup_v2_dir(pid);
    assert_ne!(dir, Path::new(CGROUP2_ROOT), "{} the container runs in the root cgroup", t.tag);
    let procs = cgroup_read(&dir, "cgroup.procs");
    assert!(procs.lines().any(|p| p == pid.to_string()), "{} init {pid} not in {}/cgroup.procs: {procs}", t.tag, dir.display());
    let o = t.exec(&[], &id, "e1", &["sh", "-c", "echo from-exec; exit 5"]);
    assert!(o.code == Some(5) && o.out() == "from-exec\n", "{} exec exit 5: {}", t.tag, o.describe());

    // A terminal: ctr run -t under a pty, its size seen inside.
    let tid = t.cd.id("tty");
    let mut cmd = t.cd.ctr_command(&strs(&t.run_args(&["-t", "--rm"], None, &tid, &["sh", "-c", "stty size; exit 4"])));
    cmd.env("TERM", "dumb");
    let p = pty::PtyProc::spawn(cmd, 33, 101);
    let (code, timed_out, out) = p.wait(RUN_TIMEOUT);
    assert!(!timed_out && code == Some(4), "{} run -t: code {code:?} timed out {timed_out}:\n{out}", t.tag);
    assert!(out.contains("33 101"), "{} stty size in the terminal container:\n{out}", t.tag);

    t.kill_delete_ok(&id);
    assert_gone(&t, &dir, &id);
}

/// Stats come back as io.containerd.cgroups.v2.Metrics whose pids, memory
/// and CPU figures are the container's own cgroup files.
fn stats_match_cgroup_files(line: Line, rt: &'static str) {
    let t = v2(line, rt);
    let id = t.cd.id("stats");
    let pid = t.run_d_from(&["--memory-limit", "33554432"], None, &id, &["sh", "-c", "sleep 1000 & sleep 1000"]);
    let o = t.exec(&["-d"], &id, "s-exec", &["sleep", "1000"]);
    assert!(o.ok(), "{} exec -d: {}", t.tag, o.describe());
    let dir = cgroup_v2_dir(pid);
    poll(STATE_TIMEOUT, || (cgroup_read(&dir, "pids.current") == "3").then_some(()))
        .unwrap_or_else(|| panic!("{} pids.current never 3: {}", t.tag, cgroup_read(&dir, "pids.current")));
    assert_eq!(cgroup_read(&dir, "memory.max"), "33554432", "{} memory.max from --memory-limit", t.tag);

    let (mem0, cpu0) = (num(&dir, "memory.current"), keyed(&dir, "cpu.stat", "usage_usec"));
    let table = t.cd.ctr_ok(&["tasks", "metrics", &id]);
    let json = t.cd.ctr_ok(&["tasks", "metrics", "--format", "json", &id]);
    let (mem1, cpu1) = (num(&dir, "memory.current"), keyed(&dir, "cpu.stat", "usage_usec"));
    eprintln!("{} metrics:\n{table}", t.tag);
    // ctr prints the v2 table only for io.containerd.cgroups.v2.Metrics (v1's
    // has memory.usage_in_bytes instead).
    let m = metrics_table(&table);
    let get = |k: &str| -> u64 {
        m.get(k).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{} `ctr task metrics` has no number for {k}:\n{table}", t.tag))
    };
    assert!(!m.contains_key("memory.usage_in_bytes"), "{} metrics in v1 form on a v2 host:\n{table}", t.tag);
    assert_eq!(get("pids.current"), 3, "{} pids.current", t.tag);
    assert_eq!(get("memory.usage_limit"), 33554432, "{} memory.usage_limit (memory.max)", t.tag);
    let slack = 512 * 1024;
    let usage = get("memory.usage");
    assert!(
        usage > 0 && usage + slack >= mem0.min(mem1) && usage <= mem0.max(mem1) + slack,
        "{} memory.usage {usage} not within 512 KiB of memory.current ({mem0}, {mem1})",
        t.tag
    );
    let cpu = get("cpu.usage_usec");
    assert!(cpu > 0 && (cpu0..=cpu1).contains(&cpu), "{} cpu.usage_usec {cpu} not between cpu.stat's {cpu0} and {cpu1}", t.tag);

    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{} metrics --format json: {e}\n{json}", t.tag));
    let data = if v.get("data").is_some() { &v["data"] } else { &v };
    let memory = &data["memory"];
    assert!(memory.is_object(), "{} no memory in the JSON metrics:\n{json}", t.tag);
    // Figures that an idle container does not move: memory.stat's
    // file_mapped-like counters move little; compare kernel_stack and pgfault lower bounds.
    let stat_anon = keyed(&dir, "memory.stat", "anon");
    let anon = memory["anon"].as_u64().unwrap_or(0);
    assert!(anon > 0 && anon.abs_diff(stat_anon) <= slack, "{} memory.anon {anon} vs memory.stat anon {stat_anon}:\n{json}", t.tag);
    assert_eq!(data["cpu"]["nr_periods"].as_u64().unwrap_or(0), keyed(&dir, "cpu.stat", "nr_periods"), "{} cpu.nr_periods", t.tag);
    t.kill_delete_ok(&id);
    assert_gone(&t, &dir, &id);
}

/// A 16 MiB container that allocates 64 MiB: /tasks/oom (from
/// memory.events) before its exit 137, memory.events counting the kill.
fn oom_from_memory_events(line: Line, rt: &'static str) {
    let t = v2(line, rt);
    let ev = t.cd.events();
    let id = t.cd.id("oom");
    // Starts idle so the cgroup can be found, then allocates 64 MiB at once.
    let pid =
        t.run_d_from(&["--memory-limit", "16777216"], None, &id, &["sh", "-c", "sleep 1; dd if=/dev/zero of=/dev/null bs=64M count=1"]);
    let dir = cgroup_v2_dir(pid);
    assert_eq!(cgroup_read(&dir, "memory.max"), "16777216", "{} memory.max", t.tag);
    let exit = ev.expect("exit", |e| e.topic == "/tasks/exit" && e.payload["id"] == id.as_str(), RUN_TIMEOUT);
    assert_eq!(exit.payload["exit_status"], 137, "{} exit of the memory hog: {}", t.tag, exit.raw);
    ev.expect("oom", |e| e.topic == "/tasks/oom" && e.container_id() == Some(&id), Duration::from_secs(5));
    let topics = events_of(&ev, &id, &["/tasks/oom", "/tasks/exit"]);
    assert_eq!(topics.first().map(String::as_str), Some("/tasks/oom"), "{} oom before exit:\n{}", t.tag, ev.lines().join("\n"));
    assert_eq!(topics.iter().filter(|x| *x == "/tasks/exit").count(), 1, "{} one exit: {topics:?}", t.tag);
    assert!(keyed(&dir, "memory.events", "oom_kill") >= 1, "{} memory.events: {}", t.tag, cgroup_read(&dir, "memory.events"));
    t.wait_status(&id, "STOPPED");
    t.delete_ok(&id);
    assert_gone(&t, &dir, &id);
}

/// Pause and resume go through cgroup.freeze: the counter stops and then
/// continues, `ctr task ls` says PAUSED, /tasks/paused then /tasks/resumed.
fn freeze_through_cgroup_freeze(line: Line, rt: &'static str) {
    let t = v2(line, rt);
    let ev = t.cd.events();
    let id = t.cd.id("freeze");
    let cmd = counter_cmd("0.05");
    let pid = t.run_d_from(&["--mount", "type=tmpfs,src=tmpfs,dst=/tmp,options=rw"], None, &id, &["sh", "-c", &cmd]);
    let dir = cgroup_v2_dir(pid);
    let started = poll(RUN_TIMEOUT, || host_count(pid).filter(|c| c.1 >= 3)).unwrap_or_else(|| panic!("{} counter never reached 3", t.tag));

    let o = t.cd.ctr(&["tasks", "pause", &id]);
    assert!(o.ok(), "{} task pause: {}", t.tag, o.describe());
    ev.expect("paused", |e| e.topic == "/tasks/paused" && e.container_id() == Some(&id), RUN_TIMEOUT);
    assert_eq!(t.task(&id), Some((pid, "PAUSED".to_string())), "{} task ls after pause", t.tag);
    assert_eq!(cgroup_read(&dir, "cgroup.freeze"), "1", "{} {}/cgroup.freeze", t.tag, dir.display());
    assert_eq!(keyed(&dir, "cgroup.events", "frozen"), 1, "{} cgroup.events: {}", t.tag, cgroup_read(&dir, "cgroup.events"));
    let count_file = format!("/proc/{pid}/root/tmp/count");
    let raw1 = fs::read_to_string(&count_file).expect("counter readable while frozen");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(fs::read_to_string(&count_file).ok(), Some(raw1.clone()), "{} counter moved while paused", t.tag);
    let at_pause = parse_count(&raw1).unwrap_or(started);

    let o = t.cd.ctr(&["tasks", "resume", &id]);
    assert!(o.ok(), "{} task resume: {}", t.tag, o.describe());
    ev.expect("resumed", |e| e.topic == "/tasks/resumed" && e.container_id() == Some(&id), RUN_TIMEOUT);
    assert_eq!(t.task(&id), Some((pid, "RUNNING".to_string())), "{} task ls after resume", t.tag);
    assert_eq!(cgroup_read(&dir, "cgroup.freeze"), "0", "{} cgroup.freeze after resume", t.tag);
    let after = poll(STATE_TIMEOUT, || host_count(pid).filter(|c| c.1 >= at_pause.1 + 3))
        .unwrap_or_else(|| panic!("{} counter did not go on after resume (paused at {at_pause:?})", t.tag));
    assert_eq!(after.0, at_pause.0, "{} the counter restarted instead of resuming", t.tag);
    let topics = events_of(&ev, &id, &["/tasks/paused", "/tasks/resumed"]);
    assert_eq!(topics, ["/tasks/paused", "/tasks/resumed"], "{} events:\n{}", t.tag, ev.lines().join("\n"));
    t.kill_delete_ok(&id);
    assert_gone(&t, &dir, &id);
}

/// Update writes memory.max, cpu.max and pids.max, and Stats shows the new limits.
fn update_v2_files(line: Line, rt: &'static str) {
    let t = v2(line, rt);
    let id = t.cd.id("update");
    let pid = t.run_d_from(&[], None, &id, &["sleep", "1000"]);
    let dir = cgroup_v2_dir(pid);
    assert_eq!(cgroup_read(&dir, "memory.max"), "max", "{} memory.max before", t.tag);
    Api { cd: &t.cd }
        .update(&id, r#"{"memory":{"limit":50331648},"cpu":{"quota":25000,"period":100000},"pids":{"limit":17}}"#)
        .unwrap_or_else(|e| panic!("{} Update: {e:?}\n{}", t.tag, t.cd.log_tail(30)));
    assert_eq!(cgroup_read(&dir, "memory.max"), "50331648", "{} memory.max after Update", t.tag);
    assert_eq!(cgroup_read(&dir, "cpu.max"), "25000 100000", "{} cpu.max after Update", t.tag);
    assert_eq!(cgroup_read(&dir, "pids.max"), "17", "{} pids.max after Update", t.tag);
    let m = metrics_table(&t.cd.ctr_ok(&["tasks", "metrics", &id]));
    assert_eq!(m.get("memory.usage_limit").map(String::as_str), Some("50331648"), "{} metrics after Update: {m:?}", t.tag);
    assert_eq!(m.get("pids.limit").map(String::as_str), Some("17"), "{} metrics after Update: {m:?}", t.tag);
    t.kill_delete_ok(&id);
    assert_gone(&t, &dir, &id);
}

/// Three containers of one pod (one sandbox id): one shim, each container
/// in its own v2 cgroup, all removed; the shim goes with the last.
fn pod_of_three(line: Line, rt: &'static str) {
    let t = v2(line, rt);
    let ann = format!("io.kubernetes.cri.sandbox-id={}", t.cd.id("pod"));
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = t.cd.id(&format!("pod{n}"));
        t.run_d(&["--annotation", &ann], &id, &["sleep", "1000"]);
        ids.push(id);
    }
    let dirs: Vec<PathBuf> = ids.iter().map(|id| cgroup_v2_dir(t.wait_status(id, "RUNNING"))).collect();
    let shims = t.cd.shim_procs();
    assert_eq!(shims.len(), 1, "{} one shim for the pod: {:?}", t.tag, shims.iter().map(|p| &p.cmdline).collect::<Vec<_>>());
    for (i, d) in dirs.iter().enumerate() {
        assert_eq!(dirs.iter().filter(|x| *x == d).count(), 1, "{} {} shares cgroup {}", t.tag, ids[i], d.display());
        let m = metrics_table(&t.cd.ctr_ok(&["tasks", "metrics", &ids[i]]));
        assert_eq!(m.get("pids.current").map(String::as_str), Some("1"), "{} metrics of {}: {m:?}", t.tag, ids[i]);
    }
    for (id, d) in ids.iter().zip(&dirs) {
        t.kill_delete_ok(id);
        assert_gone(&t, d, id);
    }
    let gone = poll(Duration::from_secs(10), || t.cd.shim_procs().is_empty().then_some(()));
    assert!(gone.is_some(), "{} the pod's shim outlived its containers", t.tag);
}

/// ShimCgroup names a v2 cgroup: the shim runs there, its container does not.
/// Keel only: ctr has no way to hand runc-v2 a ShimCgroup.
fn shim_cgroup_v2(line: Line, rt: &'static str) {
    let t = v2(line, rt);
    let cg = format!("/keel-shim-{}", unique("cg"));
    let cg_dir = Path::new(CGROUP2_ROOT).join(cg.trim_start_matches('/'));
    let opts = options_file(&t.cd, "shimcg", &format!("ShimCgroup = \"{cg}\"\n"));
    let id = t.cd.id("shimcg");
    t.run_d(&["--runtime-config-path", &opts.to_string_lossy()], &id, &["sleep", "1000"]);
    let pid = t.wait_status(&id, "RUNNING");
    let shims = t.cd.shim_procs_for(&id);
    assert_eq!(shims.len(), 1, "{} shims of {id}", t.tag);
    let shim_cg = fs::read_to_string(format!("/proc/{}/cgroup", shims[0].pid)).expect("shim's /proc/PID/cgroup");
    assert_eq!(shim_cg.trim(), format!("0::{cg}"), "{} the shim is not in ShimCgroup {cg}", t.tag);
    assert!(cg_dir.is_dir(), "{} {} was not made", t.tag, cg_dir.display());
    assert_ne!(cgroup_v2_dir(pid), cg_dir, "{} the container joined the shim's cgroup", t.tag);
    t.assert_exec_works(&id, "ShimCgroup");
    t.kill_delete_ok(&id);
    let gone = poll(Duration::from_secs(10), || t.cd.shim_procs().is_empty().then_some(()));
    assert!(gone.is_some(), "{} shim left", t.tag);
    let _ = poll(Duration::from_secs(5), || fs::remove_dir(&cg_dir).ok());
}

/// crun as the runtime, no wrapper (on v2 it needs none): init, exec, kill,
/// delete, and crun's own state directory. Debian's crun 1.8.1 refuses
/// containerd 2.x's OCI 1.2 specs with any shim; there both shims must fail
/// the Create the same way and leave nothing behind.
fn crun_no_wrapper(line: Line, rt: &'static str) {
    let t = v2(line, rt);
    let id = t.cd.id("crun");
    let args = if t.keel() {
        vec![
            "--runtime-config-path".to_string(),
            options_file(&t.cd, "crun", &format!("BinaryName = \"{CRUN_BIN}\"\n")).to_string_lossy().into_owned(),
        ]
    } else {
        vec!["--runc-binary".to_string(), CRUN_BIN.to_string()]
    };
    let mut flags: Vec<&str> = args.iter().map(String::as_str).collect();
    flags.push("-d");
    let o = t.run(&flags, &id, &["sleep", "1000"]);
    if line == Line::V2 && !o.ok() {
        eprintln!("{} crun on containerd 2.x: {}", t.tag, ctr_error(&o));
        assert!(!o.timed_out, "{} run through crun hung: {}", t.tag, o.describe());
        assert!(t.task(&id).is_none(), "{} a failed crun create left a task", t.tag);
        t.cd.ctr(&["containers", "delete", &id]);
        return;
    }
    assert!(o.ok(), "{} run -d through crun: {}\n{}", t.tag, o.describe(), t.cd.log_tail(30));
    let pid = t.wait_status(&id, "RUNNING");
    let dir = cgroup_v2_dir(pid);
    t.assert_exec_works(&id, "crun");
    // crun's state directory has a `status` file; runc's has state.json.
    let state = runc_state_dir(&t.cd.ns, &id);
    assert!(state.join("status").is_file() && !state.join("state.json").exists(), "{} {} is not crun's state", t.tag, state.display());
    t.kill_delete_ok(&id);
    assert_gone(&t, &dir, &id);
}

// ---------------------------------------------------------------------------
// systemd driver
// ---------------------------------------------------------------------------

/// `SystemdCgroup = true` as each shim takes it from ctr: Keel through its
/// runtime options file, runc-v2 through ctr's --runc-systemd-cgroup.
fn systemd_flags(t: &T) -> Vec<String> {
    if t.keel() {
        vec!["--runtime-config-path".into(), options_file(&t.cd, "systemd", "SystemdCgroup = true\n").to_string_lossy().into_owned()]
    } else {
        vec!["--runc-systemd-cgroup".into()]
    }
}

fn systemctl(args: &[&str]) -> Output {
    let mut c = std::process::Command::new("systemctl");
    c.args(args);
    run_cmd(c, None, Duration::from_secs(20))
}

fn systemd_host(line: Line, rt: &'static str) -> T {
    let t = v2(line, rt);
    assert!(Path::new("/run/systemd/system").is_dir(), "{} systemd is not PID 1 here: run with `bash scripts/test-guest.sh`", t.tag);
    t
}

/// A container in its systemd scope: the scope is active and holds the
/// init, memory.max from the limit, Stats, exec, pause/resume, Update, and
/// the scope gone after delete.
fn systemd_scope(line: Line, rt: &'static str) {
    let t = systemd_host(line, rt);
    let ev = t.cd.events();
    let id = t.cd.id("sd");
    let name = id.replace('_', "-");
    let cgroup = format!("system.slice:keel:{name}");
    let scope = format!("keel-{name}.scope");
    let own = systemd_flags(&t);
    let mut flags: Vec<&str> = own.iter().map(String::as_str).collect();
    flags.extend(["--cgroup", &cgroup, "--memory-limit", "33554432"]);
    let pid = t.run_d_from(&flags, None, &id, &["sh", "-c", "sleep 1000 & wait"]);
    let dir = cgroup_v2_dir(pid);
    assert_eq!(dir, Path::new(CGROUP2_ROOT).join("system.slice").join(&scope), "{} init's cgroup is not its scope", t.tag);
    let o = systemctl(&["is-active", &scope]);
    assert_eq!(o.out().trim(), "active", "{} systemctl is-active {scope}: {}", t.tag, o.describe());
    assert_eq!(cgroup_read(&dir, "memory.max"), "33554432", "{} memory.max of the scope", t.tag);
    let m = metrics_table(&t.cd.ctr_ok(&["tasks", "metrics", &id]));
    assert_eq!(m.get("memory.usage_limit").map(String::as_str), Some("33554432"), "{} metrics: {m:?}", t.tag);
    assert_eq!(m.get("pids.current").map(String::as_str), Some("2"), "{} metrics: {m:?}", t.tag);
    t.assert_exec_works(&id, "systemd scope");

    let o = t.cd.ctr(&["tasks", "pause", &id]);
    assert!(o.ok(), "{} pause: {}", t.tag, o.describe());
    assert_eq!(t.task(&id).map(|x| x.1), Some("PAUSED".into()), "{} status after pause", t.tag);
    assert_eq!(keyed(&dir, "cgroup.events", "frozen"), 1, "{} cgroup.events while paused", t.tag);
    let o = t.cd.ctr(&["tasks", "resume", &id]);
    assert!(o.ok(), "{} resume: {}", t.tag, o.describe());
    assert_eq!(t.task(&id).map(|x| x.1), Some("RUNNING".into()), "{} status after resume", t.tag);
    let topics = events_of(&ev, &id, &["/tasks/paused", "/tasks/resumed"]);
    assert_eq!(topics, ["/tasks/paused", "/tasks/resumed"], "{} events", t.tag);

    Api { cd: &t.cd }
        .update(&id, r#"{"memory":{"limit":50331648},"pids":{"limit":9}}"#)
        .unwrap_or_else(|e| panic!("{} Update: {e:?}\n{}", t.tag, t.cd.log_tail(30)));
    assert_eq!(cgroup_read(&dir, "memory.max"), "50331648", "{} memory.max after Update", t.tag);
    assert_eq!(cgroup_read(&dir, "pids.max"), "9", "{} pids.max after Update", t.tag);
    t.kill_delete_ok(&id);
    assert_gone(&t, &dir, &id);
    let gone = poll(Duration::from_secs(10), || (systemctl(&["is-active", &scope]).out().trim() != "active").then_some(()));
    assert!(gone.is_some(), "{} {scope} still active after delete", t.tag);
}

/// OOM in a systemd scope: /tasks/oom before exit 137.
fn systemd_oom(line: Line, rt: &'static str) {
    let t = systemd_host(line, rt);
    let ev = t.cd.events();
    let id = t.cd.id("sdoom");
    let cgroup = format!("system.slice:keel:{}", id.replace('_', "-"));
    let own = systemd_flags(&t);
    let mut flags: Vec<&str> = own.iter().map(String::as_str).collect();
    flags.extend(["--cgroup", &cgroup, "--memory-limit", "16777216"]);
    let pid = t.run_d_from(&flags, None, &id, &["sh", "-c", "sleep 1; dd if=/dev/zero of=/dev/null bs=64M count=1"]);
    let dir = cgroup_v2_dir(pid);
    let exit = ev.expect("exit", |e| e.topic == "/tasks/exit" && e.payload["id"] == id.as_str(), RUN_TIMEOUT);
    assert_eq!(exit.payload["exit_status"], 137, "{} exit of the memory hog: {}", t.tag, exit.raw);
    let oom = ev.wait_for(|e| e.topic == "/tasks/oom" && e.container_id() == Some(&id), Duration::from_secs(5));
    let topics = events_of(&ev, &id, &["/tasks/oom", "/tasks/exit"]);
    // runc-v2 of 1.6 sometimes misses it here (seen once in four runs: systemd
    // removes the emptied scope, memory.events with it, before its watcher
    // reads the file); Keel must not.
    if t.keel() || oom.is_some() {
        assert!(oom.is_some(), "{} no /tasks/oom within 5 s:\n{}", t.tag, ev.lines().join("\n"));
        assert_eq!(topics.first().map(String::as_str), Some("/tasks/oom"), "{} oom before exit: {topics:?}", t.tag);
    } else {
        eprintln!("{} runc-v2 published no /tasks/oom for {id}: {topics:?}", t.tag);
    }
    t.wait_status(&id, "STOPPED");
    t.delete_ok(&id);
    assert_gone(&t, &dir, &id);
}

/// A cgroupsPath that is not "slice:prefix:name" with SystemdCgroup set:
/// Keel refuses the Create naming the form it needs (runc-v2 hands it to
/// runc; printed), and serves on.
fn systemd_bad_path(line: Line, rt: &'static str) {
    let t = systemd_host(line, rt);
    let id = t.cd.id("sdbad");
    let own = systemd_flags(&t);
    let mut flags: Vec<&str> = own.iter().map(String::as_str).collect();
    flags.extend(["--cgroup", "/not/a/slice", "-d"]);
    let o = t.run(&flags, &id, &["sleep", "1000"]);
    eprintln!("{} cgroupsPath /not/a/slice with the systemd driver -> {}", t.tag, ctr_error(&o));
    if t.keel() {
        assert!(!o.ok() && !o.timed_out, "{} a non-systemd cgroupsPath was accepted: {}", t.tag, o.describe());
        assert!(ctr_error(&o).contains("slice:prefix:name"), "{} the error should name the form: {}", t.tag, o.describe());
    }
    t.kill_delete(&id);
    let ok = t.sleeper("after");
    t.kill_delete_ok(&ok);
}

// Keel and, for parity, containerd's io.containerd.runc.v2.
scenarios!(
    [(keel, KEEL_V1, crate::common::direct), (runc, RUNC_V2, crate::common::direct)],
    [
        run_exec_terminal,
        stats_match_cgroup_files,
        oom_from_memory_events,
        freeze_through_cgroup_freeze,
        update_v2_files,
        pod_of_three,
        crun_no_wrapper,
        systemd_scope,
        systemd_oom,
        systemd_bad_path,
    ]
);

scenarios!([(keel_only, KEEL_V1, crate::common::direct)], [shim_cgroup_v2]);
