//! The copies between a process's pipes (or pty) and containerd's fifos.

use std::fs::OpenOptions as FileOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;

/// How long an output waits for the client to open its end of the fifo.
const OUTPUT_RENDEZVOUS: Duration = Duration::from_secs(10);

/// Opens the write end of containerd's output fifo once the client's reader
/// is there, as runc-v2 does. containerd's client opens its reader with a
/// blocking open in the background: had the shim already written and closed
/// its end, that open would wait for a writer forever and a short process's
/// output would be lost. The blocking open runs on tokio's blocking pool.
async fn open_output(fifo: &Path) -> Option<(pipe::Sender, std::fs::File)> {
    // A reader of the shim's own keeps writes from failing (EPIPE) if the
    // client goes away mid-copy, as runc-v2 does.
    let reader = || FileOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(fifo);
    let with_keeper = |file: std::fs::File| Some((pipe::Sender::from_file(file).ok()?, reader().ok()?));
    // The client's reader is usually there already: no thread needed.
    match FileOptions::new().write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(fifo) {
        Ok(file) => return with_keeper(file),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
        Err(e) => {
            log::warn!("open output fifo {}: {e}", fifo.display());
            return None;
        }
    }
    let path = fifo.to_path_buf();
    let open = tokio::task::spawn_blocking(move || FileOptions::new().write(true).custom_flags(libc::O_CLOEXEC).open(path));
    match tokio::time::timeout(OUTPUT_RENDEZVOUS, open).await {
        Ok(Ok(Ok(file))) => with_keeper(file),
        Ok(Ok(Err(e))) => {
            log::warn!("open output fifo {}: {e}", fifo.display());
            None
        }
        _ => {
            // Release the blocked open with a reader of our own.
            let _ = reader();
            log::warn!("nobody opened {} within {}s: output discarded", fifo.display(), OUTPUT_RENDEZVOUS.as_secs());
            None
        }
    }
}

/// Output read while waiting for the client's reader. A pty must be read at
/// once: the kernel flushes it when the last slave closes.
const EARLY_LIMIT: usize = 1 << 20;

/// Copies a container's output into containerd's fifo until the container
/// side closes (EOF, or EIO once a pty's last slave is gone).
/// `opened` fires once the rendezvous with the client's reader is over.
pub(super) async fn copy_out(mut from: pipe::Receiver, fifo: PathBuf, opened: tokio::sync::oneshot::Sender<()>) -> Option<OutEnds> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = fifo.clone();
    let open = open_output(&path);
    tokio::pin!(open);
    let (mut early, mut buf, mut done) = (Vec::new(), vec![0u8; 8192], false);
    let target = loop {
        tokio::select! {
            t = &mut open => break t,
            n = from.read(&mut buf), if !done && early.len() < EARLY_LIMIT => match n {
                Ok(0) | Err(_) => done = true,
                Ok(n) => early.extend_from_slice(&buf[..n]),
            },
        }
    };
    drop(buf);
    let _ = opened.send(());
    match target {
        Some((mut to, keep)) => match to.write_all(&early).await {
            Ok(()) if !done => finish_out(OutEnds { from, to: Some((to, keep)), fifo }).await,
            Ok(()) => {
                wait_consumed(&keep, &fifo).await;
                None
            }
            Err(e) => {
                log::warn!("copy to {}: {e}", fifo.display());
                None
            }
        },
        // Drain it anyway, so the container never blocks on a full pipe.
        None if !done => finish_out(OutEnds { from, to: None, fifo }).await,
        None => None,
    }
}

/// An output copy stopped between two reads for a hand-over to a new
/// binary: its fds, to be copied on by [`finish_out`].
pub struct OutEnds {
    pub from: pipe::Receiver,
    /// The fifo's writer and the shim's own reader on it; none when the
    /// client never opened the fifo (the output is drained and dropped).
    pub to: Option<(pipe::Sender, std::fs::File)>,
    pub fifo: PathBuf,
}

/// A stdin copy stopped between two reads.
pub struct InEnds {
    pub from: pipe::Receiver,
    pub to: pipe::Sender,
}

static HALT: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> = std::sync::LazyLock::new(|| tokio::sync::watch::channel(false).0);

/// Stops every copy of this shim at its next read (`true`), or lets new
/// copies run (`false`): a hand-over to a new binary takes their fds.
pub fn halt_copies(halt: bool) {
    HALT.send_replace(halt);
}

async fn halted() {
    let mut rx = HALT.subscribe();
    let _ = rx.wait_for(|h| *h).await;
}

/// Copies an output from where it is until its end, or until halted.
pub(super) async fn finish_out(mut ends: OutEnds) -> Option<OutEnds> {
    let res = match &mut ends.to {
        Some((to, _)) => copy_to_end(&mut ends.from, to).await,
        None => copy_to_end(&mut ends.from, &mut tokio::io::sink()).await,
    };
    match res {
        Ok(true) => Some(ends),
        Ok(false) => {
            if let Some((_, keep)) = &ends.to {
                wait_consumed(keep, &ends.fifo).await;
            }
            None
        }
        Err(e) => {
            log::warn!("copy to {}: {e}", ends.fifo.display());
            None
        }
    }
}

/// How long a pty copy goes on reading after its first EIO. A pty reports
/// its last slave's close as EIO; in about 1,000 TTY execs of
/// `seq -s " " 1000000` one lost its last 2.5 KB with a copy that stopped at
/// the first EIO. The reads after it are spaced 1, 2, 4, … ms apart and any
/// data resets them; this runs once per pty, at its end, and delays that
/// process's exit by about 30 ms.
const EIO_GRACE: Duration = Duration::from_millis(30);

/// Copies until EOF, or until a pty's EIO has lasted [`EIO_GRACE`];
/// `Ok(true)` if halted between two reads instead.
async fn copy_to_end(from: &mut (impl AsyncRead + Unpin), to: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Most containers of a node never write a byte: until the first read
    // returns, a copy holds a 64-byte buffer, not 8 KiB (two per container,
    // so 16 KiB less per idle container in a pod's shim).
    let mut small = [0u8; 64];
    let mut big: Vec<u8> = Vec::new();
    let mut pause = Duration::from_millis(1);
    let mut waited = Duration::ZERO;
    loop {
        // A read is cancel-safe: nothing is taken from the pipe unless it returns.
        let read = tokio::select! {
            biased;
            _ = halted() => return Ok(true),
            r = async { if big.is_empty() { from.read(&mut small).await } else { from.read(&mut big).await } } => r,
        };
        let buf: &[u8] = if big.is_empty() { &small } else { &big };
        match read {
            Ok(0) => return Ok(false),
            Ok(n) => {
                if waited > Duration::ZERO {
                    log::debug!("pty: {n} bytes after EIO, {}ms into the grace", waited.as_millis());
                }
                to.write_all(&buf[..n]).await?;
                if big.is_empty() {
                    big = vec![0u8; 8192];
                }
                pause = Duration::from_millis(1);
                waited = Duration::ZERO;
            }
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                if waited >= EIO_GRACE {
                    return Ok(false);
                }
                tokio::time::sleep(pause).await;
                waited += pause;
                pause *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long the end of a copy waits for the client to read what is left in
/// its fifo. containerd's client closes its readers once it saw the exit and
/// deleted the process; bytes still unread then are lost. Under load its
/// reader can lag the exit by tens of milliseconds (measured: p99 37 ms at a
/// load of 6 on 2 cores); the bound is for a client that went away.
const CONSUME_LIMIT: Duration = Duration::from_millis(500);

/// Waits until the client read everything in the fifo (its copy of the
/// output has then reached the client), at most [`CONSUME_LIMIT`]. Checked
/// every millisecond: a fifo wakes its writer when there is room, never when
/// it is empty. This runs once per output, after the process closed it.
async fn wait_consumed(keep: &std::fs::File, fifo: &Path) {
    let start = tokio::time::Instant::now();
    loop {
        let left = unread(keep);
        if left == 0 {
            return;
        }
        if start.elapsed() >= CONSUME_LIMIT {
            log::warn!("{}: the client left {left} bytes unread for {} ms; reporting the exit", fifo.display(), CONSUME_LIMIT.as_millis());
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Bytes in a pipe not yet read (FIONREAD); 0 if the kernel will not say.
fn unread(fd: &impl AsRawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer we pass.
    match unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } {
        0 => usize::try_from(n).unwrap_or(0),
        _ => 0,
    }
}

/// Copies containerd's stdin fifo into the container until every writer
/// (the client's and, after CloseIO, no longer the shim's) is gone.
/// Halted between two reads, it returns its ends.
pub(super) async fn copy_in(mut from: pipe::Receiver, mut to: pipe::Sender) -> Option<InEnds> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 8192];
    loop {
        let n = tokio::select! {
            biased;
            _ = halted() => return Some(InEnds { from, to }),
            r = from.read(&mut buf) => r,
        };
        match n {
            Ok(0) => return None,
            Ok(n) => {
                if let Err(e) = to.write_all(&buf[..n]).await {
                    log::debug!("copy stdin: {e}");
                    return None;
                }
            }
            Err(e) => {
                log::debug!("copy stdin: {e}");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exit of a process waits until the client has read its last
    /// output: containerd's client drops whatever it has not read once it
    /// saw the exit.
    #[test]
    fn end_of_copy_waits_for_the_client_to_read() {
        use std::io::{Read, Write};
        let dir = std::env::temp_dir().join(format!("keel-consume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let fifo = dir.join("stdout");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let nb = |read: bool| FileOptions::new().read(read).write(!read).custom_flags(libc::O_NONBLOCK).open(&fifo).expect("open fifo");
        let mut client = nb(true);
        let keep = nb(true);
        let mut writer = nb(false);
        writer.write_all(b"last words\n").expect("write");
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        rt.block_on(async {
            let waiting = tokio::time::timeout(Duration::from_millis(100), wait_consumed(&keep, &fifo)).await;
            assert!(waiting.is_err(), "returned while 11 bytes were still unread");
            let mut got = [0u8; 64];
            let n = client.read(&mut got).expect("client read");
            assert_eq!(&got[..n], b"last words\n");
            tokio::time::timeout(Duration::from_millis(100), wait_consumed(&keep, &fifo))
                .await
                .expect("returns once the client has read everything");
            // A client that never reads holds the exit back only so long.
            writer.write_all(b"unread").expect("write");
            let t = std::time::Instant::now();
            wait_consumed(&keep, &fifo).await;
            assert!(t.elapsed() >= CONSUME_LIMIT && t.elapsed() < CONSUME_LIMIT * 3, "{:?}", t.elapsed());
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
