//! A pty for ctr -t.

use super::*;

/// A command running with a new pty as its controlling terminal and stdio.
pub struct PtyProc {
    master: File,
    child: Child,
    buf: Arc<Mutex<Vec<u8>>>,
    what: String,
}

impl PtyProc {
    /// Spawns `cmd` on a fresh pty of `rows` x `cols` (set before it starts).
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> PtyProc {
        let what = describe_cmd(&cmd);
        let mut master: libc::c_int = -1;
        let mut slave: libc::c_int = -1;
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: openpty fills two fds; the winsize pointer is valid.
        let r = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &ws) };
        assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: fds fresh from openpty, owned from here on.
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        // SAFETY: fcntl on a valid fd.
        unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn `{what}` on a pty: {e}"));
        drop(cmd); // closes the parent's copies of the slave
        drop(slave);
        let master = File::from(master);
        let mut reader = master.try_clone().unwrap();
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b2 = buf.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => b2.lock().unwrap().extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break, // EIO once every slave fd is closed
                }
            }
        });
        PtyProc { master, child, buf, what }
    }

    /// Everything the pty printed so far (CRs removed).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).replace('\r', "")
    }

    /// Waits until the output contains `needle`.
    pub fn wait_output(&self, needle: &str, timeout: Duration) -> bool {
        poll(timeout, || self.output().contains(needle).then_some(())).is_some()
    }

    /// Sets the pty size; the kernel sends SIGWINCH to the foreground process group (ctr).
    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: ioctl with a valid winsize on our master fd.
        let r = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// Waits for exit (killing at the deadline); returns (exit code, output).
    pub fn wait(mut self, timeout: Duration) -> (Option<i32>, bool, String) {
        let (st, timed_out) = wait_deadline(&mut self.child, Instant::now() + timeout);
        // let the reader drain what is left
        thread::sleep(Duration::from_millis(50));
        (st.and_then(|s| s.code()), timed_out, self.output())
    }

    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for PtyProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
