//! The console socket: where the runtime sends a new pty's master.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};

use super::{Result, StdioError};

static SOCKET_SEQ: AtomicU64 = AtomicU64::new(0);

/// The unix socket the runtime sends a new pty's master fd over.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: tokio::net::UnixListener,
}

impl ConsoleSocket {
    pub(super) fn new() -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("keel-pty-{}-{}.sock", std::process::id(), SOCKET_SEQ.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).map_err(|source| StdioError::Console {
            path: path.display().to_string(),
            step: "bind",
            source,
        })?;
        Ok(ConsoleSocket { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The runtime connected and sent the master during its (successful) call,
    /// so this only waits for a message that is already queued.
    pub async fn receive(&self) -> Result<OwnedFd> {
        let fail =
            |step: &'static str| move |source: std::io::Error| StdioError::Console { path: self.path.display().to_string(), step, source };
        let recv = async {
            let (stream, _) = self.listener.accept().await.map_err(fail("accept"))?;
            loop {
                stream.readable().await.map_err(fail("wait for the master"))?;
                match stream.try_io(tokio::io::Interest::READABLE, || recv_fd(stream.as_raw_fd())) {
                    Ok(fd) => return Ok(fd),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(fail("receive the master")(e)),
                }
            }
        };
        const LIMIT: Duration = Duration::from_secs(10);
        tokio::time::timeout(LIMIT, recv)
            .await
            .map_err(|_| StdioError::NoConsole { path: self.path.display().to_string(), secs: LIMIT.as_secs() })?
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn recv_fd(sock: RawFd) -> std::io::Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "message carried no file descriptor"))
}
