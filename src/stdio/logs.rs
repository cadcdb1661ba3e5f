//! Output that bypasses the shim: a `file://` log file the runtime writes to
//! directly, or a `binary://` logger reading the container's pipes.

use std::fs::OpenOptions as FileOptions;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::fcntl::{fcntl, FcntlArg};

use super::{cloexec_pipe, Result, StdioError};

/// How long a `binary://` logger may take to say it is ready (runc-v2 waits as long).
const LOGGER_READY_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
use crate::reaper::Reaper;

pub(super) fn open_log_file(path: &Path) -> Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StdioError::Open {
            what: "log directory",
            path: dir.display().to_string(),
            source,
        })?;
    }
    FileOptions::new().create(true).append(true).mode(0o644).custom_flags(libc::O_CLOEXEC).open(path).map_err(|source| StdioError::Open {
        what: "log file",
        path: path.display().to_string(),
        source,
    })
}

/// Starts a `binary://` logger: fd 3 and 4 carry the container's stdout and
/// stderr, and the logger closes fd 5 once it is ready to read them.
pub(super) async fn start_logger(
    path: &Path,
    args: &[String],
    namespace: &str,
    id: &str,
    out_r: OwnedFd,
    err_r: OwnedFd,
    reaper: &Reaper,
) -> Result<()> {
    let fail = |step: &'static str| move |source: std::io::Error| StdioError::Logger { binary: path.display().to_string(), step, source };
    let (ready_r, ready_w) = cloexec_pipe()?;
    // Moved above fd 5 first, so dup2 onto 3..5 never hits one of its sources.
    let high = |fd: &OwnedFd| -> Result<OwnedFd> {
        let raw = fcntl(fd.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(|e| fail("move its fds above 5")(e.into()))?;
        // SAFETY: fcntl just returned this fd to us and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    };
    let fds = [high(&out_r)?, high(&err_r)?, high(&ready_w)?];
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only dup2 runs between fork and exec; it is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (_child, _exit) = reaper.spawn(&mut cmd).map_err(fail("spawn"))?;
    drop(fds);
    drop(ready_w);
    drop(out_r);
    drop(err_r);
    // The logger signals readiness by closing fd 5. Waited for on the event
    // loop: a slow logger must not stall the shim's other containers.
    let ready = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r).map_err(fail("readiness pipe"))?;
    let mut buf = [0u8; 64];
    let wait = async {
        use tokio::io::AsyncReadExt;
        let mut ready = ready;
        // EOF (or an error) ends the wait; bytes written before it are ignored.
        while let Ok(n) = ready.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    if tokio::time::timeout(LOGGER_READY_LIMIT, wait).await.is_err() {
        log::warn!(
            "task {id}: logging binary {} did not close its readiness fd within {}s; starting anyway",
            path.display(),
            LOGGER_READY_LIMIT.as_secs()
        );
    }
    Ok(())
}
