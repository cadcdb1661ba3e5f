//! File descriptors handed from one shim binary to the next across execve:
//! their numbers go into the hand-over state, the fds themselves stay open.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

/// The fds a hand-over passes on; they stay open as long as this lives.
#[derive(Default)]
pub struct Passed(Vec<OwnedFd>);

impl Passed {
    /// Keeps `fd` for the next binary; returns the number it will find it at.
    pub fn put(&mut self, fd: impl Into<OwnedFd>) -> RawFd {
        let fd = fd.into();
        let raw = fd.as_raw_fd();
        self.0.push(fd);
        raw
    }

    pub fn raw(&self) -> Vec<RawFd> {
        self.0.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Gives up ownership: whoever reads the state takes each fd with [`take`].
    pub fn release(self) -> Vec<RawFd> {
        self.0.into_iter().map(IntoRawFd::into_raw_fd).collect()
    }
}

/// Sets or clears close-on-exec.
pub fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD on a number; an fd that is not open fails with EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Takes an fd named in a hand-over state, closing it on the next exec
/// again. Fails if it is not open.
///
/// # Safety
/// `fd` must be an fd of this process that nothing else owns: one a
/// [`Passed`] released, in this binary or the one before it.
pub unsafe fn take(fd: RawFd) -> std::io::Result<OwnedFd> {
    set_cloexec(fd, true)?;
    // SAFETY: open (set_cloexec succeeded) and owned by nobody, per the contract.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
