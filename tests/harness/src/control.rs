//! Helpers first needed by tests/control.rs, usable by any test: extra
//! binaries on a private containerd's PATH, CRIU (installed once, guarded), a
//! local OCI image of the busybox rootfs and its import, and cgroup v1 paths
//! of a process.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::{run_cmd, truncate, Containerd, Line};

/// Name the image of `scripts/make-image.sh` is imported under.
pub const TEST_IMAGE: &str = "keel.test/busybox:latest";

fn repo_path(rel: &str) -> PathBuf {
    crate::repo_dir().join(rel)
}

/// Runs `f` under an exclusive flock on `lock` (created, with its directory):
/// serialises parallel test binaries, not only threads.
fn with_file_lock<T>(lock: &Path, f: impl FnOnce() -> T) -> T {
    if let Some(dir) = lock.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let file = File::create(lock).unwrap_or_else(|e| panic!("create {}: {e}", lock.display()));
    // SAFETY: flock on an fd we own; released when `file` is closed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    let r = f();
    drop(file);
    r
}

/// The last non-empty line of a script's stdout.
fn last_line(out: &str) -> Option<String> {
    out.lines().map(str::trim).rfind(|l| !l.is_empty()).map(str::to_string)
}

/// A working CRIU: runs `scripts/install-criu.sh` once per test binary (and
/// one binary at a time), which builds it on a fresh machine (about a minute)
/// and prints its path last. `Err` says why there is none; callers skip loudly
/// with it.
pub fn criu() -> Result<PathBuf, String> {
    static CRIU: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CRIU.get_or_init(|| {
        let script = repo_path("scripts/install-criu.sh");
        let o = with_file_lock(Path::new("/var/lib/keel-dev/criu-install.lock"), || {
            let mut cmd = Command::new("bash");
            cmd.arg(&script);
            run_cmd(cmd, None, Duration::from_secs(900))
        });
        if !o.ok() {
            return Err(format!(
                "{} failed (code {:?}{}): {}",
                script.display(),
                o.code,
                if o.timed_out { ", timed out after 900s" } else { "" },
                truncate(o.err().trim(), 3000)
            ));
        }
        let path = last_line(&o.out()).map(PathBuf::from).ok_or_else(|| format!("{} printed no path", script.display()))?;
        if !path.is_file() {
            return Err(format!("{} printed {}, which is not a file", script.display(), path.display()));
        }
        Ok(path)
    })
    .clone()
}

/// The OCI image-layout tar of `scripts/make-image.sh` (made once).
pub fn oci_image_tar() -> PathBuf {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let script = repo_path("scripts/make-image.sh");
        let o = with_file_lock(Path::new("/var/lib/keel-dev/image.lock"), || {
            let mut cmd = Command::new("bash");
            cmd.arg(&script);
            run_cmd(cmd, None, Duration::from_secs(300))
        });
        assert!(o.ok(), "{} failed: {}", script.display(), o.describe());
        let p = PathBuf::from(last_line(&o.out()).expect("make-image.sh printed no path"));
        assert!(p.is_file(), "make-image.sh printed {}, not a file", p.display());
        p
    })
    .clone()
}

/// The cgroup v1 directory of `pid` for `controller` ("memory", "pids",
/// "freezer", ...), from /proc/<pid>/cgroup. Panics when there is none.
pub fn cgroup_v1_dir(pid: u32, controller: &str) -> PathBuf {
    let s = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_else(|e| panic!("read /proc/{pid}/cgroup: {e}"));
    for l in s.lines() {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if ctrls.split(',').any(|c| c == controller) {
            let dir = Path::new("/sys/fs/cgroup").join(ctrls).join(path.trim_start_matches('/'));
            assert!(dir.is_dir(), "cgroup {} of pid {pid} (from /proc/{pid}/cgroup: {l:?}) does not exist", dir.display());
            return dir;
        }
    }
    panic!("pid {pid} has no {controller} cgroup (v1) in /proc/{pid}/cgroup:\n{s}");
}

/// A cgroup file as a trimmed string.
pub fn cgroup_read(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("read {}: {e}", dir.join(file).display())).trim().to_string()
}

impl Containerd {
    /// Puts `target` into the private bin directory (first on containerd's,
    /// and so the shims' and runtimes', PATH) as `name`. Takes effect for
    /// every later lookup; no restart needed.
    pub fn add_bin(&self, name: &str, target: &Path) {
        let link = self.bin_dir.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", link.display(), target.display()));
    }

    /// Imports the image of `scripts/make-image.sh` into this containerd
    /// (default snapshotter, unpacked) and returns its name. containerd 2.x's
    /// ctr imports through the transfer service unless `--local`, and that
    /// service is disabled in the private daemons.
    pub fn import_test_image(&self) -> String {
        let tar = oci_image_tar();
        let tar = tar.to_string_lossy().into_owned();
        let mut args = vec!["images", "import"];
        if self.line == Line::V2 {
            args.push("--local");
        }
        args.push(&tar);
        let o = self.ctr_timeout(&args, Duration::from_secs(120));
        assert!(o.ok(), "[{}] ctr images import: {}\n{}", self.line.name(), o.describe(), self.log_tail(30));
        let ls = self.ctr_ok(&["images", "ls", "-q"]);
        assert!(ls.lines().any(|l| l.trim() == TEST_IMAGE), "[{}] {TEST_IMAGE} not listed after import: {ls}", self.line.name());
        TEST_IMAGE.to_string()
    }
}

/// `ctr task metrics` (table form) as METRIC -> VALUE.
pub fn metrics_table(out: &str) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    let mut in_table = false;
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() == Some(&"METRIC") {
            in_table = true;
            continue;
        }
        if in_table && f.len() >= 2 {
            m.insert(f[0].to_string(), f[1..].join(" "));
        }
    }
    m
}

/// A counter into /tmp/count, `period` seconds apart, each line "<token> <n>":
/// the token is drawn once at start, so a restarted process shows a new one.
pub fn counter_cmd(period: &str) -> String {
    format!("t=$(cat /proc/sys/kernel/random/uuid); i=0; while true; do i=$((i+1)); echo \"$t $i\" > /tmp/count; sleep {period}; done")
}

/// Parses "<token> <n>".
pub fn parse_count(s: &str) -> Option<(String, u64)> {
    let (t, n) = s.trim().split_once(' ')?;
    Some((t.to_string(), n.trim().parse().ok()?))
}

/// The counter as seen from the host, through the init's root (works while frozen).
pub fn host_count(pid: u32) -> Option<(String, u64)> {
    parse_count(&fs::read_to_string(format!("/proc/{pid}/root/tmp/count")).ok()?)
}

/// The unified hierarchy's mount point.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup";

/// Whether this host mounts only the unified cgroup v2 hierarchy at /sys/fs/cgroup.
pub fn unified_host() -> bool {
    Path::new(CGROUP2_ROOT).join("cgroup.controllers").is_file()
}

/// The cgroup v2 directory of `pid` (the "0::" line of /proc/<pid>/cgroup).
/// Panics when the process has none or it does not exist.
pub fn cgroup_v2_dir(pid: u32) -> PathBuf {
    let s = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_else(|e| panic!("read /proc/{pid}/cgroup: {e}"));
    let path = s.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or_else(|| panic!("pid {pid} has no cgroup v2 line:\n{s}"));
    let dir = Path::new(CGROUP2_ROOT).join(path.trim_start_matches('/'));
    assert!(dir.is_dir(), "cgroup {} of pid {pid} (/proc/{pid}/cgroup: {s:?}) does not exist", dir.display());
    dir
}
