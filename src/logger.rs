//! Logs to the `log` fifo containerd opens in the bundle, in logrus' text
//! form so containerd's own log shows Keel's lines like runc-v2's.
//! Writes never block: a full fifo drops the line rather than stalling the shim.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

struct FifoLogger {
    out: Mutex<File>,
    fields: String,
}

impl log::Log for FifoLogger {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warning",
            log::Level::Info => "info",
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let line = format!("time=\"{}\" level={} msg={:?} {}\n", rfc3339_nano(now), level, record.args().to_string(), self.fields);
        if let Ok(mut f) = self.out.lock() {
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// `d` since the epoch as containerd's own lines write it (RFC 3339, UTC,
/// nanoseconds), so a reader can sort Keel's lines among containerd's.
fn rfc3339_nano(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z", rem / 3_600, rem % 3_600 / 60, rem % 60, d.subsec_nanos())
}

/// Installs the logger. Without a reader on the fifo (shim run by hand), logs
/// go to stderr.
pub fn init(bundle: &Path, debug: bool, namespace: &str, id: &str) {
    let out = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(bundle.join("log"))
        .or_else(|_| std::fs::OpenOptions::new().write(true).open("/dev/stderr"));
    let Ok(out) = out else { return };
    install(out, debug, namespace, id);
}

/// The fd the logger writes to, for a hand-over to a new binary: containerd
/// reads the log fifo until its last writer closes, so the fifo must never
/// be without one.
pub fn fd() -> Option<std::os::fd::RawFd> {
    LOG_FD.get().copied()
}

static LOG_FD: std::sync::OnceLock<std::os::fd::RawFd> = std::sync::OnceLock::new();

/// Installs the logger on the fifo the previous binary wrote to.
pub fn init_from(out: File, debug: bool, namespace: &str, id: &str) {
    install(out, debug, namespace, id);
}

fn install(out: File, debug: bool, namespace: &str, id: &str) {
    let _ = LOG_FD.set(std::os::fd::AsRawFd::as_raw_fd(&out));
    let fields = format!("runtime=io.containerd.keel.v1 namespace={namespace} id={id} pid={}", std::process::id());
    if log::set_boxed_logger(Box::new(FifoLogger { out: Mutex::new(out), fields })).is_ok() {
        log::set_max_level(if debug { log::LevelFilter::Debug } else { log::LevelFilter::Info });
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339_nano;
    use std::time::Duration;

    #[test]
    fn timestamps_are_containerds_rfc3339() {
        assert_eq!(rfc3339_nano(Duration::new(1_796_173_506, 455_489_737)), "2026-12-02T01:05:06.455489737Z");
        assert_eq!(rfc3339_nano(Duration::new(0, 5)), "1970-01-01T00:00:00.000000005Z");
        // A leap day and the last second of a year.
        assert_eq!(rfc3339_nano(Duration::new(951_782_400, 0)), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(rfc3339_nano(Duration::new(1_767_225_599, 0)), "2025-12-31T23:59:59.000000000Z");
    }
}
