//! The shim's own placement: its OOM score and the ShimCgroup option.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// Makes the kernel prefer killing containers over their shim (one above
/// containerd's score), then moves the shim into `shim_cgroup` if set.
/// The score is best effort: this kernel may refuse to lower a score without
/// CAP_SYS_RESOURCE. A cgroup that cannot be joined is an error.
pub fn confine_shim(pid: u32, shim_cgroup: &str) -> Result<(), String> {
    let parent = std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse::<i32>().ok()).unwrap_or(0);
    let score = (parent + 1).min(1000);
    if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), score.to_string()) {
        eprintln!("keel: set shim oom_score_adj to {score}: {e} (continuing)");
    }
    if shim_cgroup.is_empty() {
        return Ok(());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("read mountinfo: {e}"))?;
    join_cgroup(pid, shim_cgroup, &mountinfo)
}

/// Writes `pid` into `path` of every v1 hierarchy, or of the v2 one on a
/// unified host, creating the directories as needed.
fn join_cgroup(pid: u32, path: &str, mountinfo: &str) -> Result<(), String> {
    let mounts = super::cgroup_mounts(mountinfo);
    let rel = path.trim_start_matches('/');
    let v1: BTreeSet<PathBuf> = mounts.iter().filter(|(c, _)| !c.is_empty()).map(|(_, (_, point))| point.clone()).collect();
    let dirs: Vec<PathBuf> = if v1.is_empty() {
        mounts.get("").map(|(_, point)| vec![point.join(rel)]).unwrap_or_default()
    } else {
        v1.into_iter().map(|p| p.join(rel)).collect()
    };
    if dirs.is_empty() {
        return Err(format!("ShimCgroup {path:?}: no cgroup hierarchy is mounted"));
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(dir.join("cgroup.procs"), pid.to_string()))
            .map_err(|e| format!("ShimCgroup {path:?}: join {}: {e}", dir.display()))?;
    }
    Ok(())
}
