//! Rootfs.

use super::*;

/// A busybox root filesystem (default /var/lib/keel-dev/rootfs, or $KEEL_ROOTFS),
/// built once, with the same layout as `scripts/make-rootfs.sh`: either may
/// build it first, and a tree with an executable bin/busybox counts as made.
///
/// Idempotent and safe with parallel tests and parallel test binaries: it is
/// built in a temporary sibling directory under an flock and renamed into
/// place, so nobody sees a half-made tree. An existing tree is never replaced.
pub fn rootfs() -> PathBuf {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = std::env::var_os("KEEL_ROOTFS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(ROOTFS_DIR));
        let made = |d: &Path| is_executable(&d.join("bin/busybox")) && d.join("bin/sh").exists();
        if made(&dir) {
            return dir;
        }
        if !is_executable(Path::new("/bin/busybox")) {
            panic!("/bin/busybox is missing: run `scripts/install-deps.sh` first");
        }
        let parent = dir.parent().unwrap();
        fs::create_dir_all(parent).expect("create the rootfs's parent directory");
        let lock = File::create(parent.join("rootfs.lock")).expect("create rootfs.lock");
        // SAFETY: plain flock on an fd we own.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        if !made(&dir) {
            let tmp = parent.join(format!("rootfs.tmp-{}-{}", std::process::id(), nanos()));
            build_rootfs(&tmp);
            // rename(2) fails on a non-empty target: whoever came first wins.
            if fs::rename(&tmp, &dir).is_err() {
                let _ = fs::remove_dir_all(&tmp);
            }
            assert!(made(&dir), "{} exists but has no bin/busybox and bin/sh: remove it and rerun", dir.display());
        }
        // SAFETY: as above.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
        dir
    })
    .clone()
}

fn nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

fn build_rootfs(tmp: &Path) {
    let _ = fs::remove_dir_all(tmp);
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        fs::create_dir_all(tmp.join(d)).unwrap();
    }
    fs::set_permissions(tmp.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy("/bin/busybox", tmp.join("bin/busybox")).expect("copy /bin/busybox");
    fs::set_permissions(tmp.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().expect("busybox --list");
    assert!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", tmp.join("bin").join(applet)).unwrap();
    }
    fs::write(tmp.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(tmp.join("etc/group"), "root:x:0:\n").unwrap();
}
