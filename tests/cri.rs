//! Kubernetes' view: a pod and a container through the CRI API of a real
//! containerd (1.6 and 2.x) whose `keel` runtime handler is
//! io.containerd.keel.v1, as a kubelet with `runtimeClassName: keel` drives it.
//!
//! - containerd runs with the CRI plugin enabled, a `keel` handler
//!   (runtime_type io.containerd.keel.v1, options ConfigPath -> a TOML file)
//!   and `restrict_oom_score_adj = true` (this VM refuses every lowering of an
//!   oom_score_adj, and the kubelet asks for -998 for a sandbox);
//! - the pod uses the host network (NamespaceMode NODE), so no CNI is needed;
//! - the sandbox ("pause") image and the busybox image are built here from the
//!   busybox rootfs as one OCI image-layout tar and imported with
//!   `ctr -n k8s.io images import` (no registry, no internet);
//! - the CRI calls (`runtime.v1.RuntimeService`) go through k8s-cri's tonic
//!   client on a channel to containerd's own socket, which serves CRI too.

use keel_harness as common;

use common::cri::*;
use common::production::*;
use common::*;
use containerd_client::tonic::Code;
use k8s_cri::v1 as cri;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the `keel` handler gets into containerd's config.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wiring {
    /// Written into the config with the rest.
    ByHand,
    /// Added to the user's config by `keel-containerd wire`, taken out by `unwire`.
    Tool,
}

const WIRE_TOOL: &str = env!("CARGO_BIN_EXE_keel-containerd");

/// `keel-containerd` with `args`; must succeed.
fn wire_tool(tag: &str, args: &[&str]) -> String {
    let mut c = std::process::Command::new(WIRE_TOOL);
    c.args(args);
    let o = run_cmd(c, None, Duration::from_secs(60));
    assert!(o.ok(), "{tag} keel-containerd {args:?}: {}", o.describe());
    o.out()
}

/// Wires the user's `config.toml` of `cd` (written from `original`) with
/// the tool, checks that containerd's own `config dump` has the handler,
/// and returns the wired text.
fn wire_config(cd: &Containerd, original: &str, keel: &Path, tag: &str) -> String {
    let cfg = cd.dir.join("config.toml");
    std::fs::write(&cfg, original).unwrap();
    let containerd = cd.line.containerd();
    let (c, k, d) = (cfg.to_string_lossy(), keel.to_string_lossy(), containerd.to_string_lossy());
    let args = ["wire", "--config", &c, "--options", &k, "--containerd", &d];
    let out = wire_tool(tag, &args);
    assert!(out.contains("has the keel runtime"), "{tag} wire: {out}");
    // Idempotent: a second run changes nothing.
    let wired = std::fs::read_to_string(&cfg).unwrap();
    let again = wire_tool(tag, &args);
    assert!(again.contains("already wired"), "{tag} second wire: {again}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), wired, "{tag} a second wire changed the config");
    // containerd's own view of the merged config (imports included).
    let mut c = std::process::Command::new(&containerd);
    c.arg("--config").arg(&cfg).args(["config", "dump"]);
    let dump = run_cmd(c, None, Duration::from_secs(60));
    assert!(dump.ok(), "{tag} config dump: {}", dump.describe());
    let dump = dump.out();
    let table = if cd.line == Line::V2 {
        "io.containerd.cri.v1.runtime'.containerd.runtimes.keel]"
    } else {
        "io.containerd.grpc.v1.cri\".containerd.runtimes.keel]"
    };
    let at = dump.find(table).unwrap_or_else(|| panic!("{tag} config dump has no keel handler:\n{dump}"));
    let entry: String = dump[at..].chars().take(2000).collect();
    assert!(entry.contains("io.containerd.keel.v1") && entry.contains(&*keel.to_string_lossy()), "{tag} keel handler in the dump: {entry}");
    // The user's settings survived (a 1.x drop-in would have replaced the whole CRI table).
    assert!(dump.contains("restrict_oom_score_adj = true"), "{tag} the user's CRI settings are gone from the dump:\n{dump}");
    wired
}

/// A pod (host network) and one container, through the CRI `keel` runtime
/// handler: one Keel shim serves the pod; the container runs, prints, exec
/// works, its state and exit code are right; stop and remove clean up. With
/// [`Wiring::Tool`] the handler comes from `keel-containerd wire`, `ctr run
/// --runtime io.containerd.keel.v1` runs too, and `unwire` at the end puts
/// the user's config back byte for byte.
fn pod_through_keel_handler(line: Line, wiring: Wiring) {
    rootfs();
    let cgparent = format!("/keel-cri-{}", unique("pod"));
    let _cg = CgroupParent(cgparent.clone()); // dropped last
    let images = std::sync::Mutex::new(None::<PathBuf>);
    let original = std::sync::Mutex::new(String::new());
    let tag = format!("[cri {}{}]", line.name(), if wiring == Wiring::Tool { " wired" } else { "" });
    let cd = start_with_config(line, |cd| {
        *images.lock().unwrap() = Some(build_images(&cd.dir));
        let root = cd.dir.join("runtime-root");
        let keel = options_file(cd, "keel-cri", &format!("Root = \"{}\"\n", root.display()));
        let text = cri_config(cd, &keel, wiring == Wiring::ByHand, "");
        match wiring {
            Wiring::ByHand => text,
            Wiring::Tool => {
                *original.lock().unwrap() = text.clone();
                wire_config(cd, &text, &keel, &tag)
            }
        }
    });
    let original = original.into_inner().unwrap();
    let _rr = RuntimeRoot(cd.dir.join("runtime-root"));
    if wiring == Wiring::Tool {
        // ctr needs no handler, but must work on the wired containerd too.
        let id = unique("wired");
        let root = rootfs();
        let fifo = cd.fifo_dir.to_string_lossy().into_owned();
        let o = cd.ctr(&[
            "run",
            "--rm",
            "--runtime",
            KEEL_V1,
            "--fifo-dir",
            &fifo,
            "--env",
            CONTAINER_PATH,
            "--rootfs",
            &root.to_string_lossy(),
            &id,
            "sh",
            "-c",
            "echo wired-ctr",
        ]);
        assert!(o.ok() && o.out() == "wired-ctr\n", "{tag} ctr run --runtime {KEEL_V1}: {}", o.describe());
    }
    let images = images.lock().unwrap().take().unwrap();

    let mut args = vec!["images", "import"];
    if line == Line::V2 {
        args.push("--local");
    }
    let images_s = images.to_string_lossy().into_owned();
    args.push(&images_s);
    let o = cd.ctr_raw(Some(K8S_NS), &args, None, Duration::from_secs(120));
    assert!(o.ok(), "{tag} image import: {}\n{}", o.describe(), cd.log_tail(30));

    let v = expect_ok(cri!(cd, version, cri::VersionRequest { version: "v1".into() }), "Version", &cd);
    assert_eq!(v.runtime_name, "containerd", "{tag} runtime_name");

    // RunPodSandbox, runtime handler keel, host network.
    let log_dir = cd.dir.join("pod-logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    let uid = unique("uid");
    let ns_opts = cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    };
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata { name: "keel-pod".into(), uid: uid.clone(), namespace: "default".into(), attempt: 0 }),
        // no hostname: the pod shares the host's UTS namespace with its network
        log_directory: log_dir.to_string_lossy().into_owned(),
        labels: [("app".to_string(), "keel-test".to_string())].into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgparent.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext { namespace_options: Some(ns_opts), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let req = cri::RunPodSandboxRequest { config: Some(sandbox_config.clone()), runtime_handler: "keel".into() };
    let pod = expect_ok(cri!(cd, run_pod_sandbox, req), "RunPodSandbox", &cd).pod_sandbox_id;
    assert!(!pod.is_empty(), "{tag} no pod sandbox id");

    let pod_status = || {
        let req = cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false };
        let st = expect_ok(cri!(cd, pod_sandbox_status, req), "PodSandboxStatus", &cd);
        st.status.unwrap_or_else(|| panic!("{tag} PodSandboxStatus without a status"))
    };
    let status = pod_status();
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32, "{tag} pod state (SANDBOX_READY)");
    assert_eq!(status.runtime_handler, "keel", "{tag} pod runtime_handler");

    let keel_shims = || -> Vec<ProcInfo> {
        cd.shim_procs()
            .into_iter()
            .filter(|p| {
                p.cmdline.contains("containerd-shim-keel-v1")
                    || p.exe.as_ref().map(|e| e.ends_with("containerd-shim-keel-v1")).unwrap_or(false)
            })
            .collect()
    };
    let shims = keel_shims();
    assert_eq!(shims.len(), 1, "{tag} want 1 Keel shim for the sandbox: {:?}", shims.iter().map(|p| &p.cmdline).collect::<Vec<_>>());
    assert_eq!(cd.shim_procs().len(), 1, "{tag} other shims run: {:?}", cd.shim_procs().iter().map(|p| &p.cmdline).collect::<Vec<_>>());
    let shim = shims[0].pid;

    // CreateContainer + StartContainer. The kubelet's oom_score_adj for a
    // BestEffort container is 1000, for the sandbox -998; ask for -500 here
    // to see restrict_oom_score_adj clamp it to containerd's own score.
    let script = "echo hello-from-keel; echo err-line >&2; trap 'exit 7' TERM; while :; do sleep 1; done";
    let container_config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "app".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: BUSYBOX_IMAGE.into(), ..Default::default() }),
        command: vec!["sh".into()],
        args: vec!["-c".into(), script.into()],
        envs: vec![cri::KeyValue { key: "GREETING".into(), value: "hi-env".into() }],
        log_path: "app.log".into(),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources { oom_score_adj: -500, ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let req =
        cri::CreateContainerRequest { pod_sandbox_id: pod.clone(), config: Some(container_config), sandbox_config: Some(sandbox_config) };
    let ctr_id = expect_ok(cri!(cd, create_container, req), "CreateContainer", &cd).container_id;
    assert!(!ctr_id.is_empty(), "{tag} no container id");
    let req = cri::StartContainerRequest { container_id: ctr_id.clone() };
    expect_ok(cri!(cd, start_container, req), "StartContainer", &cd);

    let container_status = || {
        let req = cri::ContainerStatusRequest { container_id: ctr_id.clone(), verbose: false };
        let r = expect_ok(cri!(cd, container_status, req), "ContainerStatus", &cd);
        r.status.unwrap_or_else(|| panic!("{tag} ContainerStatus without a status"))
    };
    let s = container_status();
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32, "{tag} container state (CONTAINER_RUNNING)");
    assert!(s.started_at > 0, "{tag} started_at");

    // One Keel shim serves the pod: sandbox and container.
    let shims = keel_shims();
    assert_eq!(
        shims.iter().map(|p| p.pid).collect::<Vec<_>>(),
        vec![shim],
        "{tag} want the sandbox's Keel shim to serve the container too: {:?}",
        shims.iter().map(|p| &p.cmdline).collect::<Vec<_>>()
    );
    let tasks = cd.ctr_raw(Some(K8S_NS), &["tasks", "ls"], None, CTR_TIMEOUT).out();
    for id in [&pod, &ctr_id] {
        assert!(tasks.lines().any(|l| l.starts_with(id.as_str()) && l.contains("RUNNING")), "{tag} task {id} not RUNNING: {tasks}");
    }
    let info = cd.ctr_raw(Some(K8S_NS), &["containers", "info", &ctr_id], None, CTR_TIMEOUT).out();
    let info: serde_json::Value = serde_json::from_str(&info).expect("containers info");
    assert_eq!(info["Runtime"]["Name"], KEEL_V1, "{tag} container runtime");
    let runtime_state = cd.dir.join("runtime-root").join(K8S_NS).join(&ctr_id);
    assert!(runtime_state.exists(), "{tag} no runtime state at {} (the keel options' Root)", runtime_state.display());

    // Its output reached the CRI log file.
    let log_file = log_dir.join("app.log");
    let log = poll(Duration::from_secs(15), || {
        std::fs::read_to_string(&log_file).ok().filter(|l| l.contains("hello-from-keel") && l.contains("err-line"))
    })
    .unwrap_or_else(|| panic!("{tag} {} lacks the output: {:?}", log_file.display(), std::fs::read_to_string(&log_file)));
    assert!(
        log.lines().any(|l| l.contains(" stdout F hello-from-keel")) && log.lines().any(|l| l.contains(" stderr F err-line")),
        "{tag} CRI log lines: {log}"
    );

    // ExecSync: output and exit code; the env from the config is there.
    let req = cri::ExecSyncRequest {
        container_id: ctr_id.clone(),
        cmd: ["sh", "-c", "echo exec-$GREETING; cat /proc/1/oom_score_adj; exit 3"].map(String::from).into(),
        timeout: 20,
    };
    let r = expect_ok(cri!(cd, exec_sync, req), "ExecSync", &cd);
    let out = String::from_utf8_lossy(&r.stdout);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("exec-hi-env"), "{tag} ExecSync stdout {out:?}");
    assert_eq!(r.exit_code, 3, "{tag} ExecSync exit code");
    let cd_adj: i64 = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", daemon_pid(&cd))).unwrap().trim().parse().unwrap();
    let ctr_adj: i64 = lines.next().unwrap_or("").trim().parse().unwrap_or(i64::MIN);
    assert_eq!(ctr_adj, cd_adj.max(-500), "{tag} container oom_score_adj (restrict_oom_score_adj clamps -500 to containerd's)");

    // StopContainer: SIGTERM, the trap exits 7.
    let req = cri::StopContainerRequest { container_id: ctr_id.clone(), timeout: 10 };
    expect_ok(cri!(cd, stop_container, req), "StopContainer", &cd);
    let s = poll(Duration::from_secs(15), || {
        let s = container_status();
        (s.state == cri::ContainerState::ContainerExited as i32).then_some(s)
    })
    .unwrap_or_else(|| panic!("{tag} container not EXITED after StopContainer"));
    assert_eq!(s.exit_code, 7, "{tag} exit code");
    assert!(s.finished_at > 0, "{tag} finished_at");
    assert_eq!(s.reason, "Error", "{tag} reason for a non-zero exit");
    assert!(pid_alive(shim), "{tag} the pod's shim exited with its container");

    let req = cri::RemoveContainerRequest { container_id: ctr_id.clone() };
    expect_ok(cri!(cd, remove_container, req), "RemoveContainer", &cd);
    let r = cri!(cd, container_status, cri::ContainerStatusRequest { container_id: ctr_id.clone(), verbose: false });
    assert!(matches!(&r, Err(e) if e.code == Code::NotFound), "{tag} ContainerStatus after RemoveContainer should be NotFound: {r:?}");
    assert!(!runtime_state.exists(), "{tag} runtime state left: {}", runtime_state.display());

    let req = cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() };
    expect_ok(cri!(cd, stop_pod_sandbox, req), "StopPodSandbox", &cd);
    assert_eq!(pod_status().state, cri::PodSandboxState::SandboxNotready as i32, "{tag} pod state after StopPodSandbox (SANDBOX_NOTREADY)");
    let req = cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() };
    expect_ok(cri!(cd, remove_pod_sandbox, req), "RemovePodSandbox", &cd);
    let r = cri!(cd, pod_sandbox_status, cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false });
    assert!(matches!(&r, Err(e) if e.code == Code::NotFound), "{tag} PodSandboxStatus after RemovePodSandbox should be NotFound: {r:?}");
    assert!(
        poll(Duration::from_secs(15), || (!pid_alive(shim) && cd.shim_procs().is_empty()).then_some(())).is_some(),
        "{tag} the pod's shim {shim} is still running after RemovePodSandbox"
    );
    let left = cd.ctr_raw(Some(K8S_NS), &["containers", "ls", "-q"], None, CTR_TIMEOUT).out();
    assert!(left.trim().is_empty(), "{tag} containers left: {left}");
    let mounts = cd.mounts();
    assert!(mounts.is_empty(), "{tag} mounts left: {mounts:?}");
    if wiring == Wiring::Tool {
        let cfg = cd.dir.join("config.toml");
        let out = wire_tool(&tag, &["unwire", "--config", &cfg.to_string_lossy()]);
        assert!(out.contains("restored"), "{tag} unwire: {out}");
        assert!(std::fs::read(&cfg).unwrap() == original.as_bytes(), "{tag} unwire must restore the config byte for byte");
        let dropin = cd.dir.join("conf.d");
        assert!(!dropin.exists(), "{tag} unwire leaves {}", dropin.display());
        let leftovers: Vec<_> = std::fs::read_dir(&cd.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("config.toml."))
            .collect();
        assert!(leftovers.is_empty(), "{tag} unwire leaves {leftovers:?}");
    }
}

mod keel_handler {
    use crate::common::Line;
    use crate::Wiring;
    #[test]
    fn containerd_1_6() {
        crate::pod_through_keel_handler(Line::V16, Wiring::ByHand)
    }
    #[test]
    fn containerd_2() {
        crate::pod_through_keel_handler(Line::V2, Wiring::ByHand)
    }
}

/// The handler registered by `keel-containerd wire` in the user's config
/// (in place on 1.6's version 2 config, a drop-in for 2.x's version 3).
mod wired_handler {
    use crate::common::Line;
    use crate::Wiring;
    #[test]
    fn containerd_1_6() {
        crate::pod_through_keel_handler(Line::V16, Wiring::Tool)
    }
    #[test]
    fn containerd_2() {
        crate::pod_through_keel_handler(Line::V2, Wiring::Tool)
    }
}
