//! The shim's own placement: its OOM score and the ShimCgroup option.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ShimCgroupError {
    #[error("ShimCgroup {path:?}: read /proc/self/mountinfo: {source}")]
    Mountinfo { path: String, source: std::io::Error },
    #[error("ShimCgroup {path:?}: no cgroup hierarchy is mounted")]
    NoHierarchy { path: String },
    #[error("ShimCgroup {path:?}: join {}: {source}", dir.display())]
    Join { path: String, dir: PathBuf, source: std::io::Error },
}

/// Makes the kernel prefer killing containers over their shim (one above
/// containerd's score), then moves the shim into `shim_cgroup` if set.
/// The score is best effort: this kernel may refuse to lower a score without
/// CAP_SYS_RESOURCE. A cgroup that cannot be joined is an error.
pub fn confine_shim(pid: u32, shim_cgroup: &str) -> Result<(), ShimCgroupError> {
    let parent = std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse::<i32>().ok()).unwrap_or(0);
    let score = (parent + 1).min(1000);
    if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), score.to_string()) {
        eprintln!("keel: set shim oom_score_adj to {score}: {e} (continuing)");
    }
    if shim_cgroup.is_empty() {
        return Ok(());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| ShimCgroupError::Mountinfo { path: shim_cgroup.into(), source })?;
    join_cgroup(pid, shim_cgroup, &mountinfo)
}

/// Writes `pid` into `path` of every v1 hierarchy, or of the v2 one on a
/// unified host, creating the directories as needed. A failure removes the
/// directories this call created.
fn join_cgroup(pid: u32, path: &str, mountinfo: &str) -> Result<(), ShimCgroupError> {
    let mounts = super::cgroup_mounts(mountinfo);
    let rel = path.trim_start_matches('/');
    let v1: BTreeSet<PathBuf> = mounts.iter().filter(|(c, _)| !c.is_empty()).map(|(_, (_, point))| point.clone()).collect();
    let unified = v1.is_empty();
    let dirs: Vec<PathBuf> = if unified {
        mounts.get("").map(|(_, point)| vec![point.join(rel)]).unwrap_or_default()
    } else {
        v1.into_iter().map(|p| p.join(rel)).collect()
    };
    if dirs.is_empty() {
        return Err(ShimCgroupError::NoHierarchy { path: path.into() });
    }
    let mut created = Vec::new();
    let res = dirs.iter().try_for_each(|dir| {
        create_cgroup(dir, !unified, &mut created)
            .and_then(|_| std::fs::write(dir.join("cgroup.procs"), pid.to_string()))
            .map_err(|source| ShimCgroupError::Join { path: path.into(), dir: dir.clone(), source })
    });
    if res.is_err() {
        for dir in created.iter().rev() {
            if let Err(e) = std::fs::remove_dir(dir) {
                log::warn!("shim cgroup {path}: remove {} after the failed join: {e}", dir.display());
            }
        }
    }
    res
}

/// Creates `dir` and missing parents (recording them, top-down). A new v1
/// cpuset cgroup starts with no CPUs or memory nodes, and no task can join it
/// until it has some: it inherits its parent's, as runc does. On v2 an empty
/// cpuset.cpus already means the parent's (and the root has no such file to
/// copy), so nothing is copied there.
fn create_cgroup(dir: &Path, v1: bool, created: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur.filter(|d| !d.exists()) {
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        std::fs::create_dir(&d)?;
        created.push(d.clone());
        if !v1 {
            continue;
        }
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let own = d.join(file);
            if std::fs::read_to_string(&own).is_ok_and(|v| v.trim().is_empty()) {
                if let Some(parent) = d.parent() {
                    std::fs::write(&own, std::fs::read_to_string(parent.join(file))?.trim())?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_cgroup_dirs_inherit_cpuset_and_are_recorded_top_down() {
        // A plain directory stands for the hierarchy: cpuset files are copied
        // only where they exist and are empty, as in a fresh cpuset cgroup.
        let root = std::env::temp_dir().join(format!("keel-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("root");
        std::fs::write(root.join("cpuset.cpus"), "0-1\n").expect("write");
        let leaf = root.join("a/b");
        let mut created = Vec::new();
        create_cgroup(&leaf, true, &mut created).expect("create");
        assert_eq!(created, vec![root.join("a"), root.join("a/b")]);
        assert!(leaf.is_dir());
        std::fs::remove_dir_all(&root).ok();
    }
}
