//! Upgrading running Keel shims to a new binary (issue 18), through a real
//! private containerd of each line (1.6 and 2.x), runc and `ctr`:
//!
//!   running_containers_survive   sleep, a counter on stdout, a terminal,
//!                                an exec in progress, a paused container and
//!                                a pod of 3: same pids, output without a gap
//!                                or a duplicate, everything works after
//!   refused_upgrade_keeps_serving  a missing or broken binary: a clear
//!                                error, and the old binary serves on
//!   exits_during_upgrades        a container killed while its shim upgrades,
//!                                many times: each exit reported once
//!
//! Each containerd serves io.containerd.keel.v1 from a copy of the built
//! shim, so a test can put a "rebuilt" binary (the same program with other
//! bytes appended: another revision) at that path, as a package upgrade
//! would. Keel only: no other shim can do this.

use keel_harness as common;

use common::pty::PtyProc;
use common::scenario::*;
use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

type T = Scenario;

fn wait_size_script(size: &str, label: &str, tries: u32) -> String {
    format!("i=0; while [ \"$(stty size)\" != '{size}' ] && [ $i -lt {tries} ]; do sleep 0.05; i=$((i+1)); done; echo {label}=$(stty size)")
}

/// A private containerd whose Keel binary is a copy this test may replace.
fn upgradable(line: Line) -> (T, PathBuf) {
    assert!(rootfs().join("bin/sh").exists());
    let dir = PathBuf::from(IT_BASE).join(unique("shimbin"));
    std::fs::create_dir_all(&dir).expect("shim dir");
    let path = dir.join("containerd-shim-keel-v1");
    install(&path, &std::fs::read(built_shim()).expect("read the built shim"));
    let cd = Containerd::start_with_shim(line, path.clone());
    let tag = format!("[{KEEL_V1} {}]", line.name());
    (Scenario { cd, line, rt: KEEL_V1, tag, runtime_config: None }, path)
}

/// Puts `bytes` at `path` as a package manager does: a new file renamed over the old.
fn install(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).expect("write binary");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, path).expect("rename binary into place");
}

/// The built shim with `mark` appended: the same program, another revision.
fn rebuilt(path: &Path, mark: &str) -> String {
    let mut bytes = std::fs::read(built_shim()).expect("read the built shim");
    bytes.extend_from_slice(format!("\nkeel-rebuilt-{mark}\n").as_bytes());
    install(path, &bytes);
    revision_of(path)
}

/// What Keel reports as its revision for the binary at `path`.
fn revision_of(path: &Path) -> String {
    let mut c = std::process::Command::new("sha256sum");
    c.arg(path);
    let o = run_cmd(c, None, Duration::from_secs(10));
    format!("sha256:{}", &o.out()[..12])
}

fn upgrade(socket: &Path, extra: &[&str]) -> Output {
    let s = socket.to_string_lossy().into_owned();
    let mut args = vec!["upgrade", "-socket", s.as_str()];
    args.extend_from_slice(extra);
    let mut c = std::process::Command::new(built_shim());
    c.args(&args);
    run_cmd(c, None, Duration::from_secs(90))
}

/// The socket and pid of the shim serving `id`.
fn shim_of(t: &T, id: &str) -> (PathBuf, u32) {
    let (socket, _) = t.cd.shim_address(&t.cd.ns, id).unwrap_or_else(|| panic!("{} no shim address for {id}", t.tag));
    let socket = PathBuf::from(socket.to_string_lossy().trim_start_matches("unix://"));
    let needle = socket.to_string_lossy().into_owned();
    let procs = t.cd.shim_procs();
    let pid = procs.iter().find(|p| p.cmdline.contains(&needle)).map(|p| p.pid as u32);
    (socket, pid.unwrap_or_else(|| panic!("{} no shim process serves {needle}", t.tag)))
}

/// Checks an `upgrade` reply line: the same pid now runs `revision`.
fn assert_upgraded(t: &T, o: &Output, pid: u32, revision: &str) {
    assert!(o.ok(), "{} upgrade failed: {}", t.tag, o.describe());
    let out = o.out();
    assert!(out.contains(&format!("upgraded: pid {pid} ")), "{} the upgraded shim is not pid {pid}: {out}", t.tag);
    assert!(out.contains(&format!("({revision})")), "{} the shim does not report revision {revision}: {out}", t.tag);
}

/// Each process's /tasks/exit, counted: (container, exec or container id) -> exit statuses.
fn exits(ev: &EventsWatcher) -> HashMap<(String, String), Vec<u64>> {
    let mut m: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for e in ev.events().into_iter().filter(|e| e.topic == "/tasks/exit") {
        let c = e.payload["container_id"].as_str().unwrap_or_default().to_string();
        let id = e.payload["id"].as_str().unwrap_or_default().to_string();
        m.entry((c, id)).or_default().push(e.payload["exit_status"].as_u64().unwrap_or(0));
    }
    m
}

fn running_containers_survive(line: Line, _rt: &'static str) {
    let (t, path) = upgradable(line);
    let ev = t.cd.events();
    let before = revision_of(&path);

    let sleeper = t.cd.id("sleep");
    t.run_d(&[], &sleeper, &["sleep", "1000"]);
    let paused = t.cd.id("paused");
    t.run_d(&[], &paused, &["sleep", "1000"]);
    let group = unique("grp");
    let ann = format!("io.containerd.keel.v1.group={group}");
    let pod: Vec<String> = (0..3).map(|i| t.cd.id(&format!("pod{i}"))).collect();
    for id in &pod {
        t.run_d(&["--annotation", &ann], id, &["sleep", "1000"]);
    }
    let mut pids: HashMap<String, u32> = HashMap::new();
    for id in std::iter::once(&sleeper).chain(std::iter::once(&paused)).chain(pod.iter()) {
        pids.insert(id.clone(), t.wait_status(id, "RUNNING"));
    }
    let o = t.cd.ctr(&["task", "pause", &paused]);
    assert!(o.ok(), "{} pause: {}", t.tag, o.describe());
    t.wait_status(&paused, "PAUSED");

    // A counter on stdout, read by an attached ctr: 0..N with nothing lost or doubled.
    let counter = t.cd.id("count");
    let n = 300;
    let script = format!("i=0; while [ $i -lt {n} ]; do echo $i; i=$((i+1)); sleep 0.02; done");
    let count_args = t.run_args(&[], None, &counter, &["sh", "-c", &script]);
    let long_args = t.exec_args(&[], &sleeper, "long", &["sh", "-c", "sleep 4; echo done; exit 5"]);
    let (cd, count_args, long_args) = (&t.cd, &count_args, &long_args);
    std::thread::scope(|s| {
        let counting = s.spawn(move || cd.ctr_timeout(&strs(count_args), Duration::from_secs(120)));
        // A terminal, attached, that waits for a resize made after the upgrade.
        let tty = t.cd.id("tty");
        let tty_script = format!("{}; {}; exit 6", wait_size_script("33 111", "SIZE1", 100), wait_size_script("40 120", "SIZE2", 900));
        let args = t.run_args(&["-t"], None, &tty, &["sh", "-c", &tty_script]);
        let term = PtyProc::spawn(t.cd.ctr_command(&strs(&args)), 33, 111);
        assert!(term.wait_output("SIZE1=33 111", Duration::from_secs(30)), "{} terminal: {:?}", t.tag, term.output());
        pids.insert(counter.clone(), t.wait_status(&counter, "RUNNING"));
        pids.insert(tty.clone(), t.wait_status(&tty, "RUNNING"));
        // An exec that is still running when the shim changes binary.
        let long_exec = s.spawn(move || cd.ctr_timeout(&strs(long_args), Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(1500));

        let after = rebuilt(&path, &unique("r"));
        assert_ne!(before, after, "{} the rebuilt binary is not another revision", t.tag);
        let mut shims: Vec<(PathBuf, u32)> = pids.keys().map(|id| shim_of(&t, id)).collect();
        shims.sort();
        shims.dedup();
        assert_eq!(shims.len(), 5, "{} one shim per container, one for the pod of 3: {shims:?}", t.tag);
        // What `upgrade` without -socket would ask: every Keel shim of the node, these among them.
        let node = ::keel::upgrade::running_shims();
        for (socket, _) in &shims {
            assert!(node.contains(&socket.to_string_lossy().into_owned()), "{} `upgrade` would not find {socket:?}: {node:?}", t.tag);
        }
        for (socket, pid) in &shims {
            let started = std::time::Instant::now();
            let o = upgrade(socket, &[]);
            eprintln!("{} upgrade of pid {pid} took {:?}: {}", t.tag, started.elapsed(), o.out().trim());
            assert_upgraded(&t, &o, *pid, &after);
        }

        // Each shim's log says what it runs now.
        let log = std::fs::read_to_string(&t.cd.log).unwrap_or_default();
        let said = log.lines().filter(|l| l.contains(&format!("upgraded: now running Keel 0.1.0 ({after})"))).count();
        assert_eq!(said, shims.len(), "{} shims that logged their new revision", t.tag);
        // Every container is still there with the same pid, in the same state.
        for (id, pid) in &pids {
            let want = if id == &paused { "PAUSED" } else { "RUNNING" };
            assert_eq!(t.task(id), Some((*pid, want.to_string())), "{} {id} after the upgrade", t.tag);
        }
        let o = t.cd.ctr(&["task", "resume", &paused]);
        assert!(o.ok(), "{} resume after the upgrade: {}", t.tag, o.describe());
        t.wait_status(&paused, "RUNNING");
        for id in [&sleeper, &pod[1]] {
            t.assert_exec_works(id, "the upgrade");
            let o = t.cd.ctr(&["task", "metrics", id]);
            assert!(o.ok() && o.out().contains("memory"), "{} metrics of {id} after the upgrade: {}", t.tag, o.describe());
        }
        let o = t.cd.ctr(&["task", "pause", &pod[2]]);
        assert!(o.ok(), "{} pause after the upgrade: {}", t.tag, o.describe());
        t.wait_status(&pod[2], "PAUSED");
        let o = t.cd.ctr(&["task", "resume", &pod[2]]);
        assert!(o.ok(), "{} resume: {}", t.tag, o.describe());

        // The exec started before the upgrade ends after it, and is reported.
        let o = long_exec.join().expect("exec thread");
        assert_eq!((o.code, o.out()), (Some(5), "done\n".to_string()), "{} the exec begun before the upgrade: {}", t.tag, o.describe());
        // The terminal: resized now, the container sees it and exits.
        let mut seen = false;
        for _ in 0..10 {
            term.resize(41, 121);
            std::thread::sleep(Duration::from_millis(50));
            term.resize(40, 120);
            if term.wait_output("SIZE2=", Duration::from_secs(3)) {
                seen = true;
                break;
            }
        }
        let (code, timed_out, out) = term.wait(Duration::from_secs(30));
        assert!(seen && out.contains("SIZE2=40 120"), "{} resize after the upgrade not seen inside: {out:?}", t.tag);
        assert!(!timed_out && code == Some(6), "{} ctr run -t after the upgrade: {code:?} {out:?}", t.tag);
        // The counter: every number once, in order.
        let o = counting.join().expect("counter thread");
        assert_eq!(o.code, Some(0), "{} the counter's ctr: {}", t.tag, o.describe());
        let want: String = (0..n).map(|i| format!("{i}\n")).collect();
        assert!(o.out() == want, "{} output across the upgrade has a gap or a duplicate:\n{}", t.tag, o.out());

        // Kill and delete everything; each exit once.
        for id in std::iter::once(&sleeper).chain(std::iter::once(&paused)).chain(pod.iter()) {
            t.kill_delete_ok(id);
        }
        let _ = t.cd.ctr(&["container", "rm", &counter, &tty]);
        let got = exits(&ev);
        for id in pids.keys() {
            let e = ev.wait_for(|e| e.topic == "/tasks/exit" && e.container_id() == Some(id.as_str()), Duration::from_secs(10));
            assert!(e.is_some(), "{} no /tasks/exit for {id}", t.tag);
        }
        let got2 = exits(&ev);
        for ((c, id), statuses) in got.iter().chain(got2.iter()) {
            assert_eq!(statuses.len(), 1, "{} {c}/{id} exit reported {} times: {statuses:?}", t.tag, statuses.len());
        }
        assert_eq!(got2.get(&(sleeper.clone(), "long".to_string())), Some(&vec![5]), "{} the long exec's exit: {got2:?}", t.tag);
        assert_eq!(got2.get(&(sleeper.clone(), sleeper.clone())), Some(&vec![137]), "{} the sleeper's exit: {got2:?}", t.tag);
        assert!(
            poll(Duration::from_secs(15), || t.cd.shim_procs().is_empty().then_some(())).is_some(),
            "{} shims outlived their tasks",
            t.tag
        );
    });
}

fn refused_upgrade_keeps_serving(line: Line, _rt: &'static str) {
    let (t, path) = upgradable(line);
    let ev = t.cd.events();
    let id = t.cd.id("stay");
    t.run_d(&[], &id, &["sleep", "1000"]);
    let pid = t.wait_status(&id, "RUNNING");
    let (socket, shim) = shim_of(&t, &id);
    let revision = revision_of(&path);
    let serving = |why: &str| {
        assert!(pid_alive(shim as i32), "{} the shim died after {why}", t.tag);
        assert_eq!(shim_of(&t, &id).1, shim, "{} another shim serves {id} after {why}", t.tag);
        assert_eq!(t.task(&id), Some((pid, "RUNNING".to_string())), "{} after {why}", t.tag);
        t.assert_exec_works(&id, why);
        let o = t.cd.ctr(&["task", "metrics", &id]);
        assert!(o.ok(), "{} metrics after {why}: {}", t.tag, o.describe());
    };

    let o = upgrade(&socket, &["-binary", "/nonexistent/keel-shim"]);
    assert!(!o.ok() && o.out().contains("/nonexistent/keel-shim"), "{} a missing binary: {}", t.tag, o.describe());
    serving("an upgrade to a missing binary");

    // A binary that cannot take over: it fails its start-up check.
    install(&path, b"#!/bin/sh\necho 'this build is broken' >&2\nexit 3\n");
    let o = upgrade(&socket, &[]);
    eprintln!("{} broken binary: {}", t.tag, o.out().trim());
    assert!(!o.ok(), "{} the upgrade to a broken binary succeeded: {}", t.tag, o.describe());
    assert!(
        o.out().contains("cannot take over") && o.out().contains("this build is broken"),
        "{} the refusal does not say why: {}",
        t.tag,
        o.describe()
    );
    serving("an upgrade to a broken binary");

    // Not executable at all.
    install(&path, b"not a program");
    let _ = std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let o = upgrade(&socket, &[]);
    assert!(!o.ok() && o.out().contains("not an executable"), "{} a non-executable binary: {}", t.tag, o.describe());
    serving("an upgrade to a non-executable file");

    // A good binary afterwards: the refusals left nothing half done.
    let after = rebuilt(&path, &unique("ok"));
    assert_ne!(after, revision);
    let o = upgrade(&socket, &[]);
    assert_upgraded(&t, &o, shim, &after);
    serving("the upgrade");
    t.kill_delete_ok(&id);
    let e = exits(&ev);
    assert_eq!(e.get(&(id.clone(), id.clone())), Some(&vec![137]), "{} exits: {e:?}", t.tag);
}

/// A container killed while its shim is being upgraded: the exit lands
/// before, during or after the hand-over, and is reported once, with 137.
fn exits_during_upgrades(line: Line, _rt: &'static str) {
    let (t, path) = upgradable(line);
    let rounds: usize = std::env::var("KEEL_UPGRADE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let ev = t.cd.events();
    let group = unique("grp");
    let ann = format!("io.containerd.keel.v1.group={group}");
    let anchor = t.cd.id("anchor");
    t.run_d(&["--annotation", &ann], &anchor, &["sleep", "100000"]);
    t.wait_status(&anchor, "RUNNING");
    let (socket, shim) = shim_of(&t, &anchor);
    let mut upgrades = 0;
    for round in 0..rounds {
        let id = t.cd.id(&format!("k{round}"));
        t.run_d(&["--annotation", &ann], &id, &["sleep", "1000"]);
        let pid = t.wait_status(&id, "RUNNING");
        let rev = rebuilt(&path, &format!("{round}"));
        let sock = socket.clone();
        let up = std::thread::spawn(move || upgrade(&sock, &[]));
        // Spread the kill over the hand-over's span.
        std::thread::sleep(Duration::from_micros((round as u64 * 7919) % 40_000));
        // SAFETY: plain kill(2) of the container's init.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let o = up.join().expect("upgrade thread");
        if o.ok() {
            assert_upgraded(&t, &o, shim, &rev);
            upgrades += 1;
        } else {
            // A hand-over may refuse while an exit is being worked through; it says so.
            assert!(o.out().contains("busy") || o.out().contains("try again"), "{} round {round}: {}", t.tag, o.describe());
        }
        let e = ev.wait_for(|e| e.topic == "/tasks/exit" && e.container_id() == Some(id.as_str()), Duration::from_secs(20));
        assert!(e.is_some(), "{} round {round}: the exit of {id} was lost\n{}", t.tag, t.cd.log_tail(30));
        t.delete_ok(&id);
    }
    t.kill_delete_ok(&anchor);
    let got = exits(&ev);
    let mut counted = 0;
    for ((c, _), statuses) in &got {
        if c == &anchor {
            continue;
        }
        counted += 1;
        assert_eq!(statuses, &vec![137], "{} {c}: exits reported {statuses:?}", t.tag);
    }
    assert_eq!(counted, rounds, "{} exits of {counted} containers for {rounds} rounds", t.tag);
    // Exits that landed inside a hand-over: the new binary collected them.
    let log = std::fs::read_to_string(&t.cd.log).unwrap_or_default();
    let held = log.lines().filter(|l| l.contains("exits held over the upgrade")).count();
    eprintln!("{} {rounds} kills, {upgrades} upgrades done, {held} exits collected by the new binary, every exit once", t.tag);
    assert!(rounds < 100 || held > 0, "{} no exit landed inside a hand-over in {rounds} rounds: the test did not test it", t.tag);
    assert!(upgrades * 2 >= rounds, "{} only {upgrades} of {rounds} upgrades went through", t.tag);
}

scenarios!([(keel, KEEL_V1, crate::common::direct)], [running_containers_survive, refused_upgrade_keeps_serving, exits_during_upgrades]);
