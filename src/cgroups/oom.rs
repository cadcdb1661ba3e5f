//! Watches a container's cgroup for OOM kills and reports each once.
//!
//! v1 signals through an eventfd registered on memory.oom_control; v2 bumps
//! `oom_kill` in memory.events, watched with inotify. Either way the count of
//! kills is the truth: [`OomMonitor::check`] publishes when it grew, and the
//! exit path calls it too, so /tasks/oom is out before the /tasks/exit it caused.
//!
//! On v2 a container's cgroup can vanish before its kill is read: systemd
//! removes an emptied scope at once, and the kernel defers a memory.events
//! notice that comes within 10 ms of the last one (the limit being hit, then
//! the kill). Ancestors count their descendants' kills, so a kill that grew
//! the parent's count while this container was at its limit is taken as its.

use crate::sync::lock;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::task::AbortHandle;

use super::Cgroup;

pub struct OomMonitor {
    counter: PathBuf,
    /// v2: the parent's memory.events (hierarchical counts), for a cgroup that is gone.
    parent: Option<PathBuf>,
    seen: Mutex<Seen>,
    notify: Box<dyn Fn() + Send + Sync>,
    task: Mutex<Option<AbortHandle>>,
}

/// What the last reading of the container's own file showed (handed to a
/// new binary, so a kill during the hand-over is still reported once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    kills: u64,
    /// memory.events `max`: the times the limit was hit (v2).
    max: u64,
    /// The limit was hit since the reading before.
    at_limit: bool,
    /// The parent's `oom_kill` at that reading.
    parent_kills: u64,
}

fn count(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The `oom_kill` count in memory.oom_control (v1) or memory.events (v2).
fn oom_kills(file: &Path) -> Option<u64> {
    count(&std::fs::read_to_string(file).ok()?, "oom_kill")
}

/// Lets tokio poll an fd owned elsewhere in the same task.
struct Raw(RawFd);
impl AsRawFd for Raw {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl OomMonitor {
    /// Starts watching; `notify` runs once per OOM kill.
    pub fn start(cg: &Cgroup, notify: impl Fn() + Send + Sync + 'static) -> std::io::Result<Arc<Self>> {
        Self::start_from(cg, None, notify)
    }

    /// What has been read (and reported) so far.
    pub fn seen(&self) -> Seen {
        *lock(&self.seen)
    }

    /// Starts watching where an earlier monitor (of the previous binary)
    /// left off: a kill it did not see is reported now.
    pub fn start_from(cg: &Cgroup, seen: Option<Seen>, notify: impl Fn() + Send + Sync + 'static) -> std::io::Result<Arc<Self>> {
        let (counter, v2) = match cg {
            Cgroup::V1(m) => {
                (m.get("memory").ok_or_else(|| std::io::Error::other("no memory controller"))?.join("memory.oom_control"), false)
            }
            Cgroup::V2(dir) => (dir.join("memory.events"), true),
        };
        let parent = if v2 { counter.parent().and_then(Path::parent).map(|p| p.join("memory.events")) } else { None };
        let mon = Arc::new(OomMonitor {
            counter: counter.clone(),
            parent,
            seen: Mutex::new(Seen::default()),
            notify: Box::new(notify),
            task: Mutex::new(None),
        });
        match seen {
            Some(seen) => *lock(&mon.seen) = seen,
            None => {
                mon.read(&mut lock(&mon.seen));
            }
        }
        // The watcher holds the monitor weakly: dropping the last Arc ends it.
        let watcher = Arc::downgrade(&mon);
        let task = if v2 {
            let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(std::io::Error::from)?;
            ino.add_watch(&counter, AddWatchFlags::IN_MODIFY).map_err(std::io::Error::from)?;
            tokio::spawn(watch_v2(watcher, ino))
        } else {
            let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(std::io::Error::from)?;
            let control = std::fs::File::open(&counter)?;
            let dir = counter.parent().unwrap_or(Path::new("/"));
            std::fs::write(dir.join("cgroup.event_control"), format!("{} {}", efd.as_fd().as_raw_fd(), control.as_raw_fd()))?;
            tokio::spawn(watch_v1(watcher, efd, control))
        };
        *lock(&mon.task) = Some(task.abort_handle());
        if seen.is_some() {
            mon.check();
        }
        Ok(mon)
    }

    /// Reads the container's own counts into `seen`; whether its kill count grew.
    fn read(&self, seen: &mut Seen) -> Option<bool> {
        let text = std::fs::read_to_string(&self.counter).ok()?;
        let kills = count(&text, "oom_kill").unwrap_or(seen.kills);
        let max = count(&text, "max").unwrap_or(seen.max);
        seen.at_limit = max > seen.max;
        seen.max = max;
        if let Some(p) = self.parent.as_deref().and_then(oom_kills) {
            seen.parent_kills = p;
        }
        let grew = kills > seen.kills;
        seen.kills = seen.kills.max(kills);
        Some(grew)
    }

    /// Reports kills not reported yet (at most one event per call, like runc-v2).
    pub fn check(&self) {
        let mut seen = lock(&self.seen);
        let grew = match self.read(&mut seen) {
            Some(grew) => grew,
            // Gone (see the module's note): the parent's count tells.
            None => match self.parent.as_deref().and_then(oom_kills) {
                Some(p) if seen.at_limit && p > seen.parent_kills => {
                    seen.parent_kills = p;
                    seen.at_limit = false;
                    true
                }
                _ => false,
            },
        };
        drop(seen);
        if grew {
            (self.notify)();
        }
    }

    pub fn stop(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

async fn watch_v1(mon: Weak<OomMonitor>, efd: EventFd, _control: std::fs::File) {
    // SAFETY: `efd` owns the fd and outlives `afd` (declared before it, dropped after).
    let Ok(afd) = (unsafe { AsyncFd::register(Raw(efd.as_fd().as_raw_fd())) }) else { return };
    loop {
        let Ok(mut guard) = afd.readable().await else { return };
        match efd.read() {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                guard.clear_ready();
                continue;
            }
            Err(_) => return,
        }
        let Some(mon) = mon.upgrade() else { return };
        // The eventfd also fires when the cgroup goes away.
        if !mon.counter.exists() {
            return;
        }
        mon.check();
    }
}

async fn watch_v2(mon: Weak<OomMonitor>, ino: Inotify) {
    let fd: BorrowedFd<'_> = ino.as_fd();
    // SAFETY: `ino` owns the fd and outlives `afd` (declared before it, dropped after).
    let Ok(afd) = (unsafe { AsyncFd::register(Raw(fd.as_raw_fd())) }) else { return };
    loop {
        let Ok(mut guard) = afd.readable().await else { return };
        match ino.read_events() {
            Ok(events) => {
                let Some(mon) = mon.upgrade() else { return };
                mon.check();
                // The cgroup is gone; the check above looked at its parent.
                if events.iter().any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED)) {
                    return;
                }
            }
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(_) => return,
        }
    }
}

impl Drop for OomMonitor {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn v2_counter_growth_is_reported_once_per_change() {
        let dir = std::env::temp_dir().join(format!("keel-oom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let events = dir.join("memory.events");
        std::fs::write(&events, "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n").expect("write");
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let mon = OomMonitor::start(&Cgroup::V2(dir.clone()), move || {
            h.fetch_add(1, Ordering::SeqCst);
        })
        .expect("start");
        std::fs::write(&events, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").expect("write");
        for _ in 0..50 {
            if hits.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1, "inotify must report the kill");
        mon.check();
        assert_eq!(hits.load(Ordering::SeqCst), 1, "the same kill is not reported twice");
        mon.stop();
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The scope systemd removed before its kill was read: the parent's
    /// count, grown while the container was at its limit, is its kill; not
    /// when the container never hit its limit (a sibling's kill).
    #[tokio::test(flavor = "current_thread")]
    async fn a_kill_in_a_removed_cgroup_is_read_from_its_parent() {
        for hit_limit in [true, false] {
            let parent = std::env::temp_dir().join(format!("keel-oom-gone-{}-{hit_limit}", std::process::id()));
            let _ = std::fs::remove_dir_all(&parent);
            let dir = parent.join("c.scope");
            std::fs::create_dir_all(&dir).expect("dir");
            std::fs::write(parent.join("memory.events"), "max 5\noom 2\noom_kill 2\n").expect("write");
            std::fs::write(dir.join("memory.events"), "max 0\noom 0\noom_kill 0\n").expect("write");
            let hits = Arc::new(AtomicUsize::new(0));
            let h = hits.clone();
            let mon = OomMonitor::start(&Cgroup::V2(dir.clone()), move || {
                h.fetch_add(1, Ordering::SeqCst);
            })
            .expect("start");
            mon.stop(); // checks by hand only
            if hit_limit {
                std::fs::write(dir.join("memory.events"), "max 1\noom 0\noom_kill 0\n").expect("write");
                mon.check();
            }
            assert_eq!(hits.load(Ordering::SeqCst), 0, "hitting the limit is no kill");
            std::fs::remove_dir_all(&dir).expect("remove the cgroup");
            std::fs::write(parent.join("memory.events"), "max 6\noom 3\noom_kill 3\n").expect("write");
            mon.check();
            mon.check();
            assert_eq!(hits.load(Ordering::SeqCst), usize::from(hit_limit), "kills reported (container at its limit: {hit_limit})");
            std::fs::remove_dir_all(&parent).ok();
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_the_monitor_ends_its_watcher() {
        let dir = std::env::temp_dir().join(format!("keel-oom-drop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("memory.events"), "oom 0\noom_kill 0\n").expect("write");
        // The notify closure holds `token`: once the monitor is freed, so is it.
        let token = Arc::new(());
        let held = token.clone();
        let mon = OomMonitor::start(&Cgroup::V2(dir.clone()), move || {
            let _ = &held;
        })
        .expect("start");
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&token), 2);
        drop(mon);
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(Arc::strong_count(&token), 1, "the watcher task kept the dropped monitor alive");
        std::fs::remove_dir_all(&dir).ok();
    }
}
