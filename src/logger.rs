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
        let line = format!(
            "time=\"{}.{:09}\" level={} msg={:?} {}\n",
            now.as_secs(),
            now.subsec_nanos(),
            level,
            record.args().to_string(),
            self.fields
        );
        if let Ok(mut f) = self.out.lock() {
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
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
    let fields = format!("runtime=io.containerd.keel.v1 namespace={namespace} id={id} pid={}", std::process::id());
    if log::set_boxed_logger(Box::new(FifoLogger { out: Mutex::new(out), fields })).is_ok() {
        log::set_max_level(if debug { log::LevelFilter::Debug } else { log::LevelFilter::Info });
    }
}
