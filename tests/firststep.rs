//! A node set up wrong, before its first container: Keel's runtime options
//! name a runtime binary that is missing or cannot run, a runtime root that
//! cannot be made, or a cgroup driver this host cannot serve. Each case, on
//! each containerd line: containerd's Tasks.Create fails with the path, the cause and the
//! gRPC code; containerd's log holds Keel's line for it exactly once, with
//! the container id; nothing of the container is left behind; and the next
//! container on the same containerd runs.

use keel_harness as common;

use common::api::Api;
use common::robust::*;
use common::*;
use containerd_client::tonic::Code;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// The task of a container whose Keel runtime options are `toml` must be
/// refused by containerd's Tasks.Create (what `ctr run` and a kubelet call)
/// with `code` and every one of `needles` in the message.
fn refused(r: &Rig, case: &str, toml: &str, code: Code, needles: &[&str]) {
    let id = r.cd.id(case);
    let cfg = r.write_runtime_config(case, toml);
    let root = rootfs();
    let o = r.cd.ctr(&[
        "containers",
        "create",
        "--runtime",
        r.rt,
        "--runtime-config-path",
        &cfg.to_string_lossy(),
        "--rootfs",
        &root.to_string_lossy(),
        &id,
        "true",
    ]);
    assert!(o.ok(), "{} {case}: container create: {}", r.tag, o.describe());
    let e = Api { cd: &r.cd }.create_task(&id, "", false).expect_err("the task must be refused");
    assert_eq!(e.code, code, "{} {case}: {e:?}", r.tag);
    for n in needles.iter().chain([&id.as_str()]) {
        assert!(e.message.contains(n), "{} {case}: the error lacks {n:?}: {e:?}", r.tag);
    }
    // containerd copies the shim's log asynchronously: wait for the line, then
    // make sure no second one follows.
    let line = format!("create {id} failed");
    let mentions = || -> Vec<String> {
        fs::read_to_string(&r.cd.log).unwrap_or_default().lines().filter(|l| l.contains(&line)).map(str::to_string).collect()
    };
    let errors = |lines: &[String]| lines.iter().filter(|l| l.contains("level=error")).count();
    poll(Duration::from_secs(10), || (errors(&mentions()) > 0).then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    let logged = mentions();
    assert_eq!(errors(&logged), 1, "{} {case}: Keel's error must be in containerd's log once: {logged:#?}\n{}", r.tag, r.cd.log_tail(30));
    assert!(logged.iter().all(|l| needles.iter().all(|n| l.contains(n))), "{} {case}: the log line lacks the cause: {logged:#?}", r.tag);
    // Nothing of it left: no task, no runtime state, no shim for it.
    let tasks = r.cd.ctr(&["tasks", "ls", "-q"]).out();
    assert!(!tasks.lines().any(|l| l == id), "{} {case}: a task is left: {tasks}", r.tag);
    assert!(!runc_state_entries(&r.cd.ns).contains(&id), "{} {case}: runtime state left for {id}", r.tag);
    poll(Duration::from_secs(10), || r.cd.shim_procs_for(&id).is_empty().then_some(()))
        .unwrap_or_else(|| panic!("{} {case}: the shim of {id} is still running", r.tag));
    r.cd.ctr(&["containers", "delete", &id]);
    // The node itself is fine: the next container, with default options, runs.
    let next = r.cd.id("next");
    let o = r.run(&["--rm"], &next, &["sh", "-c", "echo next-runs"]);
    assert!(o.ok() && o.out() == "next-runs\n", "{} {case}: the next container: {}", r.tag, o.describe());
}

fn binary_missing(line: Line) {
    let r = Rig::for_runtime(line, KEEL_V1);
    let path = r.cd.dir.join("opt/runc");
    let p = path.to_string_lossy();
    refused(&r, "binmissing", &format!("BinaryName = \"{p}\"\n"), Code::FailedPrecondition, &[&p, "No such file or directory"]);
}

fn binary_not_in_path(line: Line) {
    let r = Rig::for_runtime(line, KEEL_V1);
    refused(
        &r,
        "binpath",
        "BinaryName = \"keel-no-such-runc\"\n",
        Code::FailedPrecondition,
        &["keel-no-such-runc", "not found in PATH", "/usr/sbin"],
    );
}

fn binary_not_executable(line: Line) {
    let r = Rig::for_runtime(line, KEEL_V1);
    let path = r.cd.dir.join("runc-copy");
    fs::copy("/usr/sbin/runc", &path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let p = path.to_string_lossy();
    refused(&r, "binmode", &format!("BinaryName = \"{p}\"\n"), Code::FailedPrecondition, &[&p, "not executable", "mode 0644"]);
}

fn root_not_creatable(line: Line) {
    let r = Rig::for_runtime(line, KEEL_V1);
    // A regular file where a directory of the root must go.
    let file = r.cd.dir.join("root-is-a-file");
    fs::write(&file, "").unwrap();
    let root = file.join("runc");
    let p = root.to_string_lossy();
    refused(&r, "root", &format!("Root = \"{p}\"\n"), Code::FailedPrecondition, &[&p, "runtime root", "Not a directory"]);
}

fn cgroup_driver_unusable(line: Line) {
    let r = Rig::for_runtime(line, KEEL_V1);
    if Path::new("/run/systemd/system").is_dir() {
        // On a systemd host the driver runs, but not with ctr's "/<ns>/<id>" path.
        refused(&r, "sdpath", "SystemdCgroup = true\n", Code::InvalidArgument, &["cgroupsPath", "slice:prefix:name"]);
    } else {
        refused(
            &r,
            "nosystemd",
            "SystemdCgroup = true\n",
            Code::FailedPrecondition,
            &["SystemdCgroup", "systemd is not running", "/run/systemd/system"],
        );
    }
}

per_line!(missing_runtime_binary, binary_missing);
per_line!(runtime_binary_not_in_path, binary_not_in_path);
per_line!(runtime_binary_not_executable, binary_not_executable);
per_line!(runtime_root_not_creatable, root_not_creatable);
per_line!(cgroup_driver_this_host_cannot_serve, cgroup_driver_unusable);
