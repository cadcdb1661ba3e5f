//! Cgroup metrics in the protobuf containerd expects for the host's mode:
//! `io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`.

use std::collections::HashMap;
use std::path::Path;

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;

use super::Cgroup;

/// Kernel USER_HZ: cpuacct.stat counts in these ticks.
const TICKS_PER_SEC: u64 = 100;

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

/// A single number; "max" (no limit) reads as u64::MAX, a missing file as 0.
fn num(dir: &Path, file: &str) -> u64 {
    match read(dir, file).as_deref().map(str::trim) {
        Some("max") => u64::MAX,
        Some(s) => s.parse().unwrap_or(0),
        None => 0,
    }
}

/// A flat-keyed file such as memory.stat or cpu.stat.
fn keyed(dir: &Path, file: &str) -> HashMap<String, u64> {
    read(dir, file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn entry(dir: &Path, prefix: &str) -> Option<v1::MemoryEntry> {
    dir.join(format!("{prefix}.usage_in_bytes")).exists().then(|| v1::MemoryEntry {
        usage: num(dir, &format!("{prefix}.usage_in_bytes")),
        limit: num(dir, &format!("{prefix}.limit_in_bytes")),
        max: num(dir, &format!("{prefix}.max_usage_in_bytes")),
        failcnt: num(dir, &format!("{prefix}.failcnt")),
        ..Default::default()
    })
}

pub fn v1_metrics(paths: &HashMap<String, std::path::PathBuf>) -> v1::Metrics {
    let mut m = v1::Metrics::default();
    if let Some(dir) = paths.get("pids") {
        let limit = num(dir, "pids.max");
        m.pids = Some(v1::PidsStat {
            current: num(dir, "pids.current"),
            limit: if limit == u64::MAX { 0 } else { limit },
            ..Default::default()
        })
        .into();
    }
    let mut cpu = v1::CPUStat::default();
    if let Some(dir) = paths.get("cpuacct") {
        let stat = keyed(dir, "cpuacct.stat");
        let ns = |k: &str| stat.get(k).copied().unwrap_or(0) * (1_000_000_000 / TICKS_PER_SEC);
        cpu.usage = Some(v1::CPUUsage {
            total: num(dir, "cpuacct.usage"),
            user: ns("user"),
            kernel: ns("system"),
            per_cpu: read(dir, "cpuacct.usage_percpu").unwrap_or_default().split_whitespace().filter_map(|v| v.parse().ok()).collect(),
            ..Default::default()
        })
        .into();
    }
    if let Some(dir) = paths.get("cpu") {
        let s = keyed(dir, "cpu.stat");
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        cpu.throttling = Some(v1::Throttle {
            periods: g("nr_periods"),
            throttled_periods: g("nr_throttled"),
            throttled_time: g("throttled_time"),
            ..Default::default()
        })
        .into();
    }
    m.cpu = Some(cpu).into();
    if let Some(dir) = paths.get("memory") {
        let s = keyed(dir, "memory.stat");
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        m.memory = Some(v1::MemoryStat {
            cache: g("cache"),
            rss: g("rss"),
            rss_huge: g("rss_huge"),
            mapped_file: g("mapped_file"),
            dirty: g("dirty"),
            writeback: g("writeback"),
            pg_pg_in: g("pgpgin"),
            pg_pg_out: g("pgpgout"),
            pg_fault: g("pgfault"),
            pg_maj_fault: g("pgmajfault"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            hierarchical_memory_limit: g("hierarchical_memory_limit"),
            hierarchical_swap_limit: g("hierarchical_memsw_limit"),
            total_cache: g("total_cache"),
            total_rss: g("total_rss"),
            total_rss_huge: g("total_rss_huge"),
            total_mapped_file: g("total_mapped_file"),
            total_dirty: g("total_dirty"),
            total_writeback: g("total_writeback"),
            total_pg_pg_in: g("total_pgpgin"),
            total_pg_pg_out: g("total_pgpgout"),
            total_pg_fault: g("total_pgfault"),
            total_pg_maj_fault: g("total_pgmajfault"),
            total_inactive_anon: g("total_inactive_anon"),
            total_active_anon: g("total_active_anon"),
            total_inactive_file: g("total_inactive_file"),
            total_active_file: g("total_active_file"),
            total_unevictable: g("total_unevictable"),
            usage: entry(dir, "memory").into(),
            swap: entry(dir, "memory.memsw").into(),
            kernel: entry(dir, "memory.kmem").into(),
            kernel_tcp: entry(dir, "memory.kmem.tcp").into(),
            ..Default::default()
        })
        .into();
        let oom = keyed(dir, "memory.oom_control");
        let o = |k: &str| oom.get(k).copied().unwrap_or(0);
        m.memory_oom_control = Some(v1::MemoryOomControl {
            oom_kill_disable: o("oom_kill_disable"),
            under_oom: o("under_oom"),
            oom_kill: o("oom_kill"),
            ..Default::default()
        })
        .into();
    }
    m
}

pub fn v2_metrics(dir: &Path) -> v2::Metrics {
    let limit = |v: u64| if v == u64::MAX { 0 } else { v };
    let cpu = keyed(dir, "cpu.stat");
    let c = |k: &str| cpu.get(k).copied().unwrap_or(0);
    let mem = keyed(dir, "memory.stat");
    let g = |k: &str| mem.get(k).copied().unwrap_or(0);
    let ev = keyed(dir, "memory.events");
    let e = |k: &str| ev.get(k).copied().unwrap_or(0);
    v2::Metrics {
        pids: Some(v2::PidsStat { current: num(dir, "pids.current"), limit: limit(num(dir, "pids.max")), ..Default::default() }).into(),
        cpu: Some(v2::CPUStat {
            usage_usec: c("usage_usec"),
            user_usec: c("user_usec"),
            system_usec: c("system_usec"),
            nr_periods: c("nr_periods"),
            nr_throttled: c("nr_throttled"),
            throttled_usec: c("throttled_usec"),
            ..Default::default()
        })
        .into(),
        memory: Some(v2::MemoryStat {
            anon: g("anon"),
            file: g("file"),
            kernel_stack: g("kernel_stack"),
            slab: g("slab"),
            sock: g("sock"),
            shmem: g("shmem"),
            file_mapped: g("file_mapped"),
            file_dirty: g("file_dirty"),
            file_writeback: g("file_writeback"),
            anon_thp: g("anon_thp"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            slab_reclaimable: g("slab_reclaimable"),
            slab_unreclaimable: g("slab_unreclaimable"),
            pgfault: g("pgfault"),
            pgmajfault: g("pgmajfault"),
            usage: num(dir, "memory.current"),
            usage_limit: num(dir, "memory.max"),
            swap_usage: num(dir, "memory.swap.current"),
            swap_limit: num(dir, "memory.swap.max"),
            max_usage: num(dir, "memory.peak"),
            ..Default::default()
        })
        .into(),
        memory_events: Some(v2::MemoryEvents {
            low: e("low"),
            high: e("high"),
            max: e("max"),
            oom: e("oom"),
            oom_kill: e("oom_kill"),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

// Constants rather than protobuf descriptors: those build the reflection pool.
const V1_METRICS: &str = "io.containerd.cgroups.v1.Metrics";
const V2_METRICS: &str = "io.containerd.cgroups.v2.Metrics";

fn pack<M: Message>(type_url: &str, m: &M) -> Any {
    Any { type_url: type_url.to_string(), value: m.write_to_bytes().unwrap_or_default(), ..Default::default() }
}

/// The Stats payload for this cgroup.
pub fn collect(cg: &Cgroup) -> Any {
    match cg {
        Cgroup::V1(paths) => pack(V1_METRICS, &v1_metrics(paths)),
        Cgroup::V2(dir) => pack(V2_METRICS, &v2_metrics(dir)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::MessageFull;

    #[test]
    fn type_urls_are_the_protobuf_full_names() {
        assert_eq!(V1_METRICS, v1::Metrics::descriptor().full_name());
        assert_eq!(V2_METRICS, v2::Metrics::descriptor().full_name());
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("keel-stats-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    #[test]
    fn v2_files_become_v2_metrics() {
        let d = scratch("v2");
        for (f, v) in [
            ("memory.current", "1048576\n"),
            ("memory.max", "16777216\n"),
            ("pids.current", "3\n"),
            ("pids.max", "max\n"),
            ("cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"),
            ("memory.stat", "anon 4096\nfile 8192\n"),
            ("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n"),
        ] {
            std::fs::write(d.join(f), v).expect("write");
        }
        let any = collect(&Cgroup::V2(d.clone()));
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::parse_from_bytes(&any.value).expect("decode");
        assert_eq!(m.memory.usage, 1048576);
        assert_eq!(m.memory.usage_limit, 16777216);
        assert_eq!(m.memory.anon, 4096);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.pids.limit, 0, "max means no limit");
        assert_eq!(m.cpu.usage_usec, 1500);
        assert_eq!(m.memory_events.oom_kill, 1);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn v1_files_become_v1_metrics() {
        let d = scratch("v1");
        for (f, v) in [
            ("memory.usage_in_bytes", "2097152\n"),
            ("memory.limit_in_bytes", "33554432\n"),
            ("memory.stat", "cache 4096\nrss 8192\ntotal_rss 8192\n"),
            ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            ("cpuacct.usage", "123456789\n"),
            ("cpuacct.usage_percpu", "100 200 \n"),
            ("cpuacct.stat", "user 3\nsystem 1\n"),
            ("pids.current", "2\n"),
            ("pids.max", "64\n"),
        ] {
            std::fs::write(d.join(f), v).expect("write");
        }
        let paths: HashMap<String, std::path::PathBuf> = ["memory", "cpuacct", "pids"].iter().map(|c| (c.to_string(), d.clone())).collect();
        let any = collect(&Cgroup::V1(paths));
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = v1::Metrics::parse_from_bytes(&any.value).expect("decode");
        assert_eq!(m.memory.usage.usage, 2097152);
        assert_eq!(m.memory.usage.limit, 33554432);
        assert_eq!(m.memory.cache, 4096);
        assert_eq!(m.memory.total_rss, 8192);
        assert_eq!(m.memory_oom_control.oom_kill, 2);
        assert_eq!(m.cpu.usage.total, 123456789);
        assert_eq!(m.cpu.usage.per_cpu, vec![100, 200]);
        assert_eq!(m.cpu.usage.user, 30_000_000);
        assert_eq!(m.pids.current, 2);
        assert_eq!(m.pids.limit, 64);
        std::fs::remove_dir_all(&d).ok();
    }
}
