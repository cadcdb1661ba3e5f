//! Watches a container's cgroup for OOM kills and reports each once.
//!
//! v1 signals through an eventfd registered on memory.oom_control; v2 bumps
//! `oom_kill` in memory.events, watched with inotify. Either way the count of
//! kills is the truth: [`OomMonitor::check`] publishes when it grew, and the
//! exit path calls it too, so /tasks/oom is out before the /tasks/exit it caused.

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
    seen: Mutex<u64>,
    notify: Box<dyn Fn() + Send + Sync>,
    task: Mutex<Option<AbortHandle>>,
}

/// The `oom_kill` count in memory.oom_control (v1) or memory.events (v2).
fn oom_kills(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
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
        let (counter, v2) = match cg {
            Cgroup::V1(m) => {
                (m.get("memory").ok_or_else(|| std::io::Error::other("no memory controller"))?.join("memory.oom_control"), false)
            }
            Cgroup::V2(dir) => (dir.join("memory.events"), true),
        };
        let seen = oom_kills(&counter).unwrap_or(0);
        let mon =
            Arc::new(OomMonitor { counter: counter.clone(), seen: Mutex::new(seen), notify: Box::new(notify), task: Mutex::new(None) });
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
        Ok(mon)
    }

    /// Reports kills not reported yet (at most one event per call, like runc-v2).
    pub fn check(&self) {
        let Some(now) = oom_kills(&self.counter) else { return };
        let mut seen = lock(&self.seen);
        if now > *seen {
            *seen = now;
            drop(seen);
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
                if events.iter().any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED)) {
                    return;
                }
                let Some(mon) = mon.upgrade() else { return };
                mon.check();
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
