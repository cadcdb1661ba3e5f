//! The short-lived shim actions containerd runs: `start` (launch or reuse the
//! serving shim and print its address) and `delete` (clean up after a shim
//! that is gone).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::bootstrap_api::{BootstrapParams, BootstrapResult};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};

use crate::args::Flags;
use crate::error::{Error, Result};
use crate::events::timestamp;
use crate::options::RuntimeOptions;
use crate::reaper::Reaper;
use crate::runtime::{OciRuntime, Runtime};

const SOCKET_DIR: &str = "/run/containerd/s";
pub const TTRPC_ADDRESS: &str = "TTRPC_ADDRESS";

/// 128-bit FNV-1a: a stable, short name for the (daemon, namespace, group) triple.
fn socket_name(parts: &[&str]) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= b as u128;
            h = h.wrapping_mul(0x0000000001000000000000000000013B);
        }
    }
    format!("{h:032x}")
}

/// The group a container's shim serves: its own id unless it is part of a pod.
fn group_of(bundle: &Path, id: &str) -> String {
    let Ok(text) = std::fs::read(bundle.join("config.json")) else { return id.to_string() };
    let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&text) else { return id.to_string() };
    let ann = &spec["annotations"];
    for key in ["io.containerd.keel.v1.group", "io.kubernetes.cri.sandbox-id"] {
        if let Some(g) = ann[key].as_str().filter(|g| !g.is_empty()) {
            return g.to_string();
        }
    }
    id.to_string()
}

/// What containerd 2.3+ sends on stdin; older daemons send runtime options or nothing.
fn bootstrap_params(input: &[u8], flags: &Flags) -> Option<BootstrapParams> {
    let params = BootstrapParams::parse_from_bytes(input).ok()?;
    (!input.is_empty() && params.instance_id == flags.id && params.namespace == flags.namespace).then_some(params)
}

/// The runtime options containerd passed to `start`: a protobuf Any on stdin
/// (up to 2.2), or an extension of the bootstrap params (2.3+).
fn start_options(input: &[u8], bootstrap: Option<&BootstrapParams>) -> Result<RuntimeOptions> {
    let any = match bootstrap {
        Some(p) => p.extensions.iter().find_map(|e| e.value.as_ref().cloned()),
        None => Any::parse_from_bytes(input).ok().filter(|a| !a.type_url.is_empty()),
    };
    crate::options::decode(any.as_ref())
}

/// What containerd wrote on stdin (nothing when run by hand from a terminal).
fn read_stdin() -> Vec<u8> {
    let mut input = Vec::new();
    if !nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        if let Err(e) = std::io::stdin().read_to_end(&mut input) {
            eprintln!("keel: read stdin: {e}");
        }
    }
    input
}

/// `-info`: describes the runtime to containerd 2.x: name, version, and the
/// OCI runtime's own `features` document.
pub fn info() -> Result<()> {
    let input = read_stdin();
    let any =
        (!input.is_empty()).then(|| Any::parse_from_bytes(&input)).transpose().map_err(Error::malformed("runtime options on stdin"))?;
    let opts = crate::options::decode(any.as_ref())?;
    let binary = opts.binary();
    let out =
        Command::new(binary).arg("features").stdin(Stdio::null()).output().map_err(|e| Error::io(format!("run {binary} features"), e))?;
    if !out.status.success() {
        return Err(Error::FailedPrecondition(format!("{binary} features: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let info = RuntimeInfo {
        name: "io.containerd.keel.v1".into(),
        version: Some(RuntimeVersion { version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }).into(),
        options: any.into(),
        features: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/features/Features".into(),
            value: out.stdout,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let bytes = info.write_to_bytes().map_err(Error::internal("encode runtime info"))?;
    std::io::stdout().write_all(&bytes).map_err(|e| Error::io("write runtime info", e))
}

pub fn start(flags: &Flags) -> Result<()> {
    let input = read_stdin();
    let bootstrap = bootstrap_params(&input, flags);
    let ttrpc_address = match &bootstrap {
        Some(p) => p.containerd_ttrpc_address.clone(),
        None => std::env::var(TTRPC_ADDRESS).unwrap_or_default(),
    };
    if ttrpc_address.is_empty() {
        return Err(Error::InvalidArgument(format!("{TTRPC_ADDRESS} is not set: containerd's ttrpc address is needed to publish events")));
    }
    let shim_cgroup = start_options(&input, bootstrap.as_ref())?.shim_cgroup;
    let bundle = std::env::current_dir().map_err(|e| Error::io("current directory", e))?;
    let group = group_of(&bundle, &flags.id);
    std::fs::DirBuilder::new().recursive(true).mode(0o711).create(SOCKET_DIR).map_err(|e| Error::io(format!("create {SOCKET_DIR}"), e))?;
    let path = PathBuf::from(SOCKET_DIR).join(socket_name(&[&flags.address, &flags.namespace, &group]));
    let address = format!("unix://{}", path.display());

    // The address goes down first: a start that cannot record it must not
    // leave a server behind that nobody will ever find.
    std::fs::write(bundle.join("address"), &address).map_err(|e| Error::io("write address file", e))?;
    // A grouped container joins the shim already serving its pod.
    if group != flags.id && UnixStream::connect(&path).is_ok() {
        return print_reply(&address, bootstrap.is_some());
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| Error::io(format!("bind {}", path.display()), e))?;
    // Only root (containerd) may talk to the shim.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| Error::io("chmod shim socket", e))?;

    let exe = std::env::current_exe().map_err(|e| Error::io("locate own binary", e))?;
    let mut cmd = Command::new(exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id, "-address", &flags.address, "-socket", &path.display().to_string()])
        .env(TTRPC_ADDRESS, &ttrpc_address)
        .current_dir(&bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if flags.debug {
        cmd.arg("-debug");
    }
    let fd = listener.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Own session: containerd's signals to its group must not hit shims.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 onto itself would keep close-on-exec set.
            let ok = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| Error::io("spawn shim server", e))?;
    drop(listener);
    let started = crate::cgroups::shim::confine_shim(child.id(), &shim_cgroup)
        .map_err(Error::from)
        .and_then(|_| print_reply(&address, bootstrap.is_some()));
    if started.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&path);
    }
    started
}

fn print_reply(address: &str, bootstrap: bool) -> Result<()> {
    let out = if bootstrap {
        let r = BootstrapResult { version: 3, address: address.to_string(), protocol: "ttrpc".into(), ..Default::default() };
        r.write_to_bytes().map_err(Error::internal("encode bootstrap result"))?
    } else {
        // A plain address: every containerd from 1.6 on accepts it and then
        // speaks task v2, which Keel serves next to v3.
        address.as_bytes().to_vec()
    };
    let mut stdout = std::io::stdout();
    stdout.write_all(&out).and_then(|_| stdout.flush()).map_err(|e| Error::io("write start reply", e))
}

/// Keeps the runtime binary and root in the bundle, for `delete` after a crash.
pub fn save_options(bundle: &Path, o: &RuntimeOptions) {
    let v = serde_json::json!({ "binary_name": o.binary_name, "root": o.root, "systemd_cgroup": o.systemd_cgroup });
    if let Err(e) = std::fs::write(bundle.join("options.json"), v.to_string()) {
        log::warn!("save options.json: {e}");
    }
}

fn load_options(bundle: &Path) -> RuntimeOptions {
    let v: serde_json::Value =
        std::fs::read(bundle.join("options.json")).ok().and_then(|t| serde_json::from_slice(&t).ok()).unwrap_or_default();
    RuntimeOptions {
        binary_name: v["binary_name"].as_str().unwrap_or_default().to_string(),
        root: v["root"].as_str().unwrap_or_default().to_string(),
        systemd_cgroup: v["systemd_cgroup"].as_bool().unwrap_or(false),
        ..Default::default()
    }
}

/// Cleans up after a shim that died: forced runtime delete, rootfs unmount,
/// and the DeleteResponse containerd records (killed, now).
pub fn delete(flags: &Flags) -> Result<()> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(|e| Error::io("current directory", e))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let opts = load_options(&bundle);
    let ns_root = opts.root_for(&flags.namespace);
    // containerd runs this after every shim exit, also a clean one, and waits
    // for it: when the runtime keeps nothing for the container (the shim's
    // Delete already ran), there is no runtime call to make.
    if runtime_has_state(&ns_root, &flags.id) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::io("tokio runtime", e))?;
        rt.block_on(async {
            let (reaper, _exits) = Reaper::new();
            tokio::spawn(reaper.clone().run());
            let runtime = Runtime::new(opts.binary(), &ns_root, &bundle, opts.systemd_cgroup, reaper);
            if let Err(e) = runtime.delete(&flags.id, true).await {
                eprintln!("keel delete {}: {e}", flags.id);
            }
        });
    }
    crate::mount::unmount_all(&bundle.join("rootfs"));
    // A dead shim could not remove its socket; nobody else will. A socket
    // that still answers belongs to a live (grouped) shim and stays.
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        if let Some(path) = address.trim().strip_prefix("unix://").filter(|p| p.starts_with(SOCKET_DIR)) {
            if UnixStream::connect(path).is_err() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let resp = DeleteResponse {
        pid: 0,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(timestamp(SystemTime::now())).into(),
        ..Default::default()
    };
    let bytes = resp.write_to_bytes().map_err(Error::internal("encode delete response"))?;
    std::io::stdout().write_all(&bytes).map_err(|e| Error::io("write delete response", e))
}

/// Whether the runtime keeps anything for `id` under its root: runc, crun
/// and youki keep a directory named after the container, runsc files whose
/// names start with it. Unsure (the root is unreadable) counts as yes.
fn runtime_has_state(ns_root: &Path, id: &str) -> bool {
    match std::fs::read_dir(ns_root) {
        Ok(entries) => entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with(id)),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_calls_the_runtime_only_when_it_keeps_state_for_the_container() {
        let root = std::env::temp_dir().join(format!("keel-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        assert!(!runtime_has_state(&root, "c1"), "no root at all: nothing to delete");
        std::fs::create_dir_all(root.join("other")).expect("scratch root");
        assert!(!runtime_has_state(&root, "c1"), "only another container's state");
        std::fs::create_dir_all(root.join("c1")).expect("runc-style state dir");
        assert!(runtime_has_state(&root, "c1"));
        std::fs::write(root.join("pod_sandbox:pod.state"), b"").expect("runsc-style state file");
        assert!(runtime_has_state(&root, "pod"));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn socket_names_differ_per_daemon_namespace_and_group() {
        let a = socket_name(&["/run/a.sock", "default", "c1"]);
        assert_eq!(a, socket_name(&["/run/a.sock", "default", "c1"]));
        assert_ne!(a, socket_name(&["/run/b.sock", "default", "c1"]));
        assert_ne!(a, socket_name(&["/run/a.sock", "k8s.io", "c1"]));
        assert_ne!(socket_name(&["ab", "c"]), socket_name(&["a", "bc"]));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn runtime_options_on_stdin_are_not_mistaken_for_bootstrap_params() {
        let flags = Flags { id: "c1".into(), namespace: "default".into(), ..Default::default() };
        let params = BootstrapParams { instance_id: "c1".into(), namespace: "default".into(), ..Default::default() };
        assert!(bootstrap_params(&params.write_to_bytes().expect("encode"), &flags).is_some());
        assert!(bootstrap_params(&[], &flags).is_none());
        let other = BootstrapParams { instance_id: "c2".into(), namespace: "default".into(), ..Default::default() };
        assert!(bootstrap_params(&other.write_to_bytes().expect("encode"), &flags).is_none());
    }
}
