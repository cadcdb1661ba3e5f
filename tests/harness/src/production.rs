//! Helpers for tests/production.rs, tests/cri.rs and the crun variant of
//! tests/core.rs:
//!
//! - restarting a private containerd (SIGKILL, then the same config, root,
//!   state and socket), and starting one with a config of the test's own;
//! - crun as Keel's runtime through CRI-style runtime options
//!   (`runtimeoptions.v1.Options` with a `ConfigPath` TOML file, which
//!   `ctr run --runtime-config-path` sends for every non-runc runtime), with
//!   the `crun-compat` wrapper this host needs (see [`crun_compat`]);
//! - containerd's gRPC task API (containerd-client) for Get and Wait, which
//!   ctr does not offer as such.
//!
//! Free functions rather than `impl Containerd` methods, so that names never
//! clash with the other helper modules' inherent methods.

use super::*;
use std::cell::Cell;

// ---------------------------------------------------------------------------
// containerd: pid, SIGKILL, restart, custom config
// ---------------------------------------------------------------------------

/// The pid of the running daemon.
pub fn daemon_pid(cd: &Containerd) -> i32 {
    cd.pid
}

/// containerd is running (not exited, not a zombie).
pub fn daemon_alive(cd: &Containerd) -> bool {
    cd.child.lock().unwrap().as_mut().map(|c| matches!(c.try_wait(), Ok(None))).unwrap_or(false)
}

/// SIGKILLs containerd and reaps it. Shims live on: each runs in its own session.
pub fn kill_daemon(cd: &Containerd) {
    if let Some(mut child) = cd.child.lock().unwrap().take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Stops containerd with SIGTERM (SIGKILL after 10 s) and reaps it.
pub fn stop_daemon(cd: &Containerd) {
    if let Some(mut child) = cd.child.lock().unwrap().take() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = wait_deadline(&mut child, Instant::now() + Duration::from_secs(10));
    }
}

/// Starts containerd again (after [`kill_daemon`] or [`stop_daemon`]) with the
/// same config file, root, state, socket and PATH, appending to the same log;
/// waits until it answers `ctr version`.
pub fn restart(cd: &mut Containerd) {
    assert!(!daemon_alive(cd), "restart: {} is still running", cd.line.name());
    let logf = fs::OpenOptions::new().append(true).create(true).open(&cd.log).expect("open containerd log");
    let _ = writeln!(&logf, "===== keel test: containerd restarted =====");
    cd.spawn_daemon(logf);
    cd.wait_answering("restart", Duration::from_secs(30));
}

/// A private containerd whose config.toml is `config(&cd)` instead of the
/// harness's: the daemon is started as usual (so it has its directories,
/// namespace and cleanup), stopped, given the new config, and started again.
pub fn start_with_config(line: Line, config: impl FnOnce(&Containerd) -> String) -> Containerd {
    let mut cd = Containerd::start(line);
    stop_daemon(&cd);
    let text = config(&cd);
    fs::write(cd.dir.join("config.toml"), text).expect("write config.toml");
    restart(&mut cd);
    cd
}

/// Current length of containerd's log (an offset for [`log_since`]).
pub fn log_len(cd: &Containerd) -> usize {
    fs::read(&cd.log).map(|b| b.len()).unwrap_or(0)
}

/// containerd's log (its own lines and, with `-debug`, the shims') from `offset` on.
pub fn log_since(cd: &Containerd, offset: usize) -> String {
    let b = fs::read(&cd.log).unwrap_or_default();
    String::from_utf8_lossy(&b[offset.min(b.len())..]).into_owned()
}

/// Pids of the direct children of `pid` (from /proc/PID/task/*/children).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// runtime options files and crun
// ---------------------------------------------------------------------------

/// The crun binary bookworm's `crun` package installs.
pub const CRUN_BIN: &str = "/usr/bin/crun";

/// Writes `<containerd dir>/<name>.toml` (runtime options in the CRI TOML
/// form, for `ctr run --runtime-config-path`) and returns its path.
pub fn options_file(cd: &Containerd, name: &str, body: &str) -> PathBuf {
    let p = cd.dir.join(format!("{name}.toml"));
    fs::write(&p, body).expect("write runtime options file");
    p
}

/// Log of every `crun-compat` invocation of this containerd (one line of arguments each).
pub fn crun_compat_log(cd: &Containerd) -> PathBuf {
    cd.dir.join("crun-compat.log")
}

/// Writes (once) `<containerd dir>/crun-compat`, a wrapper that runs
/// /usr/bin/crun, and returns its path. Every invocation appends its
/// arguments to [`crun_compat_log`].
///
/// Why a wrapper: bookworm's crun 1.8.1 cannot run a container on this host
/// through any shim (runc-v2 included), for two reasons that have nothing to
/// do with the shim, and the wrapper removes each only where it applies, in
/// a private mount namespace (nothing changes for anything else on the host):
///  - on a hybrid cgroup host whose cgroup2 hierarchy still has controllers
///    (here: hugetlb) crun refuses every container ("cgroups in hybrid mode
///    not supported, drop all controllers from cgroupv2"): an empty file is
///    bind-mounted over /sys/fs/cgroup/unified/cgroup.controllers;
///  - crun 1.8.1 accepts only specs whose ociVersion contains "1.0" and
///    containerd 2.x writes 1.2.x ("unknown version specified"): for a call
///    with `--bundle`, a copy of config.json with ociVersion 1.0.2 is
///    bind-mounted over the bundle's.
///
/// stdin/stdout/stderr and the pid are crun's own (`exec` all the way down),
/// so the shim sees exactly what it would see with crun.
pub fn crun_compat(cd: &Containerd) -> PathBuf {
    assert!(is_executable(Path::new(CRUN_BIN)), "{CRUN_BIN} is missing: run `scripts/install-deps.sh` first");
    let p = cd.dir.join("crun-compat");
    if p.exists() {
        return p;
    }
    let log = crun_compat_log(cd);
    let tmpdir = cd.dir.join("crun-compat.tmp");
    fs::create_dir_all(&tmpdir).unwrap();
    let script = format!(
        r#"#!/bin/sh
# crun with two host workarounds (see tests/common/production.rs, crun_compat).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
echo "$*" >> '{log}'
exec unshare --mount --propagation private /bin/sh -c '
set -e
ctl=/sys/fs/cgroup/unified/cgroup.controllers
if [ -f "$ctl" ] && [ -n "$(cat "$ctl")" ]; then
  mount --bind /dev/null "$ctl"
fi
bundle=; prev=
for a in "$@"; do
  [ "$prev" = --bundle ] && bundle=$a
  prev=$a
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ] && ! grep -q "\"ociVersion\": *\"1\.0" "$bundle/config.json"; then
  tmp=$(mktemp '{tmpdir}/config.XXXXXX')
  sed "s/\"ociVersion\": *\"[^\"]*\"/\"ociVersion\":\"1.0.2\"/" "$bundle/config.json" > "$tmp"
  mount --bind "$tmp" "$bundle/config.json"
  rm -f "$tmp"
fi
exec {crun} "$@"' crun "$@"
"#,
        log = log.display(),
        tmpdir = tmpdir.display(),
        crun = CRUN_BIN
    );
    let tmp = cd.dir.join("crun-compat.new");
    fs::write(&tmp, script).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&tmp, &p).unwrap();
    p
}

/// Runtime options selecting crun (through [`crun_compat`]) and their file.
pub fn crun_options(cd: &Containerd) -> PathBuf {
    let w = crun_compat(cd);
    options_file(cd, "keel-crun", &format!("BinaryName = \"{}\"\n", w.display()))
}

/// crun invocations recorded by the wrapper: (argument line) each.
pub fn crun_calls(cd: &Containerd) -> Vec<String> {
    fs::read_to_string(crun_compat_log(cd)).unwrap_or_default().lines().map(str::to_string).collect()
}

thread_local! {
    static CRUN_VARIANT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (a core scenario) as the crun variant: the suite's `T::new` on
/// this thread then passes crun runtime options to every `ctr run`.
pub fn as_crun_variant<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CRUN_VARIANT.with(|c| c.set(false));
        }
    }
    CRUN_VARIANT.with(|c| c.set(true));
    let _reset = Reset;
    f()
}

/// This thread runs a scenario as the crun variant.
pub fn crun_variant() -> bool {
    CRUN_VARIANT.with(|c| c.get())
}

/// The runtime state directory of `id` has crun's layout (a `status` file),
/// not runc's (`state.json`); returns it.
pub fn assert_crun_state(cd: &Containerd, id: &str, tag: &str) -> PathBuf {
    let state = runc_state_dir(&cd.ns, id);
    assert!(
        state.join("status").exists() && !state.join("state.json").exists(),
        "{tag} {} is not crun state: {:?}",
        state.display(),
        fs::read_dir(&state).map(|r| r.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    state
}

/// For the crun variant: panics unless crun created a container of this
/// containerd (a `create` through the wrapper, which execs /usr/bin/crun).
pub fn assert_crun_created(cd: &Containerd, tag: &str) {
    let calls = crun_calls(cd);
    assert!(
        calls.iter().any(|c| c.split_whitespace().any(|a| a == "create")),
        "{tag} crun was never asked to create a container; crun calls: {calls:?}"
    );
}

// ---------------------------------------------------------------------------
// containerd's gRPC API
// ---------------------------------------------------------------------------

/// Runs `f` on a fresh current-thread tokio runtime, bounded by `timeout`.
pub fn block_on<F: std::future::Future>(timeout: Duration, f: F) -> Option<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async { tokio::time::timeout(timeout, f).await.ok() })
}

/// A task's process as containerd's Tasks.Get reports it.
#[derive(Debug, Clone)]
pub struct ApiProcess {
    pub pid: u32,
    /// "CREATED", "RUNNING", "STOPPED", "PAUSED", ...
    pub status: String,
    pub exit_status: u32,
}

fn status_name(s: i32) -> String {
    match s {
        1 => "CREATED",
        2 => "RUNNING",
        3 => "STOPPED",
        4 => "PAUSED",
        5 => "PAUSING",
        _ => "UNKNOWN",
    }
    .to_string()
}

/// Tasks.Get for the init process of `id` in namespace `ns`.
pub fn api_task_get(cd: &Containerd, ns: &str, id: &str) -> Result<ApiProcess, String> {
    use containerd_client::services::v1::GetRequest;
    use containerd_client::tonic::Request;
    let sock = cd.sock.clone();
    let (ns, id) = (ns.to_string(), id.to_string());
    block_on(Duration::from_secs(20), async move {
        let ch = containerd_client::connect(&sock).await.map_err(|e| format!("connect {}: {e}", sock.display()))?;
        let mut tasks = containerd_client::services::v1::tasks_client::TasksClient::new(ch);
        let req = GetRequest { container_id: id.clone(), exec_id: String::new() };
        let resp = tasks
            .get(containerd_client::with_namespace!(req, ns))
            .await
            .map_err(|s| format!("Tasks.Get {id}: {:?}: {}", s.code(), s.message()))?;
        let p = resp.into_inner().process.ok_or_else(|| format!("Tasks.Get {id}: no process"))?;
        Ok(ApiProcess { pid: p.pid, status: status_name(p.status), exit_status: p.exit_status })
    })
    .unwrap_or_else(|| Err("Tasks.Get timed out".to_string()))
}

/// Tasks.Wait for `id` (init when `exec_id` is empty): its exit status.
pub fn api_task_wait(cd: &Containerd, ns: &str, id: &str, exec_id: &str, timeout: Duration) -> Result<u32, String> {
    use containerd_client::services::v1::WaitRequest;
    use containerd_client::tonic::Request;
    let sock = cd.sock.clone();
    let what = format!("Tasks.Wait {id}");
    let (ns, id, exec_id) = (ns.to_string(), id.to_string(), exec_id.to_string());
    block_on(timeout, async move {
        let ch = containerd_client::connect(&sock).await.map_err(|e| format!("connect {}: {e}", sock.display()))?;
        let mut tasks = containerd_client::services::v1::tasks_client::TasksClient::new(ch);
        let req = WaitRequest { container_id: id.clone(), exec_id };
        let resp = tasks
            .wait(containerd_client::with_namespace!(req, ns))
            .await
            .map_err(|s| format!("Tasks.Wait {id}: {:?}: {}", s.code(), s.message()))?;
        Ok(resp.into_inner().exit_status)
    })
    .unwrap_or_else(|| Err(format!("{what} did not return within {timeout:?}")))
}

/// `runtimeoptions.v1.Options` in a `google.protobuf.Any`, encoded: what
/// containerd writes to a shim's stdin.
pub fn cri_options_any(config_path: &str, config_body: &str) -> Vec<u8> {
    prost::Message::encode_to_vec(&prost_types::Any {
        type_url: RUNTIME_OPTIONS_URL.into(),
        value: runtime_options(config_path, config_body),
    })
}
