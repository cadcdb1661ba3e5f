//! A container's cgroup: where it is (v1 controllers or one v2 directory),
//! its metrics for Stats, and the OOM monitor.

pub mod oom;
pub mod shim;
pub mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The cgroup of one process, resolved to directories on this host.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Cgroup {
    /// cgroup v1 (or hybrid): one directory per controller.
    V1(HashMap<String, PathBuf>),
    /// cgroup v2 (unified): one directory for everything.
    V2(PathBuf),
}

/// Where each hierarchy is mounted: v1 controller name (or "" for v2) -> (mount root, mount point).
pub(crate) fn cgroup_mounts(mountinfo: &str) -> HashMap<String, (String, PathBuf)> {
    let mut out = HashMap::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let (root, point) = (pre[3].to_string(), PathBuf::from(pre[4]));
        match post[0] {
            "cgroup2" => {
                out.entry(String::new()).or_insert((root, point));
            }
            "cgroup" => {
                for opt in post[2].split(',') {
                    if !matches!(opt, "rw" | "ro") && !opt.starts_with("release_agent") && !opt.starts_with("clone_children") {
                        out.entry(opt.to_string()).or_insert((root.clone(), point.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn join(point: &Path, root: &str, path: &str) -> PathBuf {
    let rel = path.strip_prefix(root).unwrap_or(path).trim_start_matches('/');
    point.join(rel)
}

impl Cgroup {
    /// Resolves `/proc/PID/cgroup` against the mount table. A host whose
    /// controllers all sit on v1 (hybrid included) is treated as v1.
    pub fn parse(proc_cgroup: &str, mountinfo: &str) -> Option<Cgroup> {
        let mounts = cgroup_mounts(mountinfo);
        let mut v1 = HashMap::new();
        let mut unified = None;
        for line in proc_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if controllers.is_empty() {
                if let Some((root, point)) = mounts.get("") {
                    unified = Some(join(point, root, path));
                }
                continue;
            }
            for c in controllers.split(',') {
                if let Some((root, point)) = mounts.get(c) {
                    v1.insert(c.to_string(), join(point, root, path));
                }
            }
        }
        if v1.contains_key("memory") || v1.contains_key("cpuacct") {
            Some(Cgroup::V1(v1))
        } else {
            unified.map(Cgroup::V2)
        }
    }

    pub fn of_pid(pid: i32) -> std::io::Result<Cgroup> {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
        Cgroup::parse(&cg, &mi).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("no cgroup found for pid {pid}")))
    }
}

/// systemd's own test for "booted with systemd" (sd_booted).
pub const SYSTEMD_MARKER: &str = "/run/systemd/system";

/// A cgroup setup the runtime would refuse, found before it is asked.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("container {id}: SystemdCgroup is set, but systemd is not running on this host ({} does not exist); set SystemdCgroup = false or run on a systemd host", marker.display())]
    NoSystemd { id: String, marker: PathBuf },
    #[error(
        "container {id}: cgroupsPath {path:?} is not \"slice:prefix:name\", which the systemd cgroup driver (SystemdCgroup = true) needs"
    )]
    SystemdPath { id: String, path: String },
}

/// Checks that the cgroup driver the options ask for can place `cgroups_path`
/// here. `marker` is [`SYSTEMD_MARKER`] but for tests.
pub fn check_driver(id: &str, systemd: bool, cgroups_path: Option<&str>, marker: &Path) -> Result<(), SetupError> {
    if !systemd {
        return Ok(());
    }
    if !marker.is_dir() {
        return Err(SetupError::NoSystemd { id: id.into(), marker: marker.into() });
    }
    match cgroups_path {
        Some(p) if !p.is_empty() && p.split(':').count() != 3 => Err(SetupError::SystemdPath { id: id.into(), path: p.into() }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_systemd_driver_needs_systemd_and_its_path_form() {
        let dir = std::env::temp_dir().join(format!("keel-sd-{}", std::process::id()));
        let marker = dir.join("run/systemd/system");
        let e = check_driver("c1", true, Some("/k8s/c1"), &marker).expect_err("no systemd");
        assert!(matches!(e, SetupError::NoSystemd { .. }) && e.to_string().contains("container c1"), "{e}");
        assert!(check_driver("c1", false, Some("/k8s/c1"), &marker).is_ok(), "cgroupfs needs nothing of systemd");
        std::fs::create_dir_all(&marker).expect("marker");
        assert!(matches!(check_driver("c1", true, Some("/k8s/c1"), &marker), Err(SetupError::SystemdPath { .. })));
        assert!(check_driver("c1", true, Some("system.slice:keel:c1"), &marker).is_ok());
        assert!(check_driver("c1", true, None, &marker).is_ok(), "runc picks a default path");
        std::fs::remove_dir_all(&dir).ok();
    }

    const HYBRID_MOUNTS: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_resolves_to_v1_controller_dirs() {
        let cg = Cgroup::parse("4:memory:/default/c1\n2:cpuacct:/default/c1\n8:pids:/default/c1\n0::/\n", HYBRID_MOUNTS).expect("cgroup");
        let Cgroup::V1(dirs) = cg else { panic!("hybrid host must resolve to v1: {cg:?}") };
        assert_eq!(dirs.get("memory").map(PathBuf::as_path), Some(Path::new("/sys/fs/cgroup/memory/default/c1")));
        assert_eq!(dirs.get("pids").map(PathBuf::as_path), Some(Path::new("/sys/fs/cgroup/pids/default/c1")));
    }

    #[test]
    fn unified_host_resolves_to_one_dir() {
        let mounts = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let cg = Cgroup::parse("0::/default/c1\n", mounts).expect("cgroup");
        assert_eq!(cg, Cgroup::V2(PathBuf::from("/sys/fs/cgroup/default/c1")));
    }
}
