//! The shim's own placement: OOM score (and, later, its cgroup).

/// Makes the kernel prefer killing containers over their shim: one above
/// containerd's score. Failing to set it (this kernel may refuse to lower a
/// score without CAP_SYS_RESOURCE) is logged, never fatal.
pub fn confine_shim(pid: u32, _runtime_options: &[u8]) {
    let parent = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    let score = (parent + 1).min(1000);
    if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), score.to_string()) {
        eprintln!("keel: set shim oom_score_adj to {score}: {e}");
    }
}
