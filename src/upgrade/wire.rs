//! The shim's ttrpc connections, seen frame by frame so they can be handed
//! to a new binary between two frames.
//!
//! The ttrpc server reads and writes whole frames (a 10-byte header, then
//! the body it announces) on a stream this module gives it. Each read is cut
//! at the frame's end, so the shim never holds bytes of the next request:
//! once a hand-over is asked for, reads stop at the next boundary and what
//! containerd sends meanwhile waits in the socket for the new binary. Every
//! request read is kept until its response is written, so requests that are
//! still open when the binary changes (containerd's Wait, held for a
//! process's whole life) can be read again by the new binary.

use crate::sync::lock;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

const HEADER: usize = 10;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;

/// Frames a new binary must read first, and the connection they came on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnHandover {
    pub fd: RawFd,
    /// Requests read but not answered, whole frames in stream-id order.
    pub open_requests: Vec<Vec<u8>>,
}

/// Whether reads and accepts may go on; shared by every connection.
#[derive(Default)]
pub struct Gate {
    held: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
    conns: Mutex<Vec<Weak<Mutex<Track>>>>,
}

impl Gate {
    /// Stops reads at the next frame boundary and stops accepting.
    pub fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Lets reads and accepts go on (a hand-over that was refused).
    pub fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        for w in lock(&self.wakers).drain(..) {
            w.wake();
        }
    }

    fn park(&self, cx: &Context<'_>) -> bool {
        if !self.held.load(Ordering::SeqCst) {
            return false;
        }
        lock(&self.wakers).push(cx.waker().clone());
        true
    }

    fn live(&self) -> Vec<Arc<Mutex<Track>>> {
        let mut conns = lock(&self.conns);
        conns.retain(|w| w.strong_count() > 0);
        conns.iter().filter_map(Weak::upgrade).collect()
    }

    /// With reads held: the requests still open whose method `parkable`
    /// refuses (each as "service/method"). Empty when every connection is
    /// between frames and only parkable requests wait for an answer.
    pub fn busy(&self, parkable: impl Fn(&str, &str) -> bool) -> Vec<String> {
        let mut busy = Vec::new();
        for t in self.live() {
            let t = lock(&t);
            if !t.read.at_boundary() || !t.write.at_boundary() {
                busy.push("a frame half read or written".to_string());
            }
            for frame in t.open.values() {
                let (service, method) = method_of(frame);
                if !parkable(&service, &method) {
                    busy.push(format!("{service}/{method}"));
                }
            }
        }
        busy
    }

    /// Every connection as the new binary must take it over.
    pub fn handover(&self) -> Vec<ConnHandover> {
        self.live()
            .iter()
            .filter_map(|t| {
                let t = lock(t);
                (!t.closed).then(|| ConnHandover { fd: t.fd, open_requests: t.open.values().cloned().collect() })
            })
            .collect()
    }
}

/// The service and method a request frame calls.
fn method_of(frame: &[u8]) -> (String, String) {
    match Request::parse_from_bytes(frame.get(HEADER..).unwrap_or_default()) {
        Ok(r) => (r.service, r.method),
        Err(_) => ("?".into(), "?".into()),
    }
}

/// Where a stream is in its current frame.
#[derive(Default)]
struct Framing {
    header: [u8; HEADER],
    have: usize,
    body_left: usize,
}

impl Framing {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.body_left == 0
    }

    /// How many bytes may pass before the current part (header or body) ends.
    fn room(&self) -> usize {
        if self.have < HEADER {
            HEADER - self.have
        } else {
            self.body_left
        }
    }

    /// Feeds bytes of one part; returns a header once it is complete.
    fn feed(&mut self, bytes: &[u8]) -> Option<(u32, u32, u8)> {
        if self.have < HEADER {
            self.header[self.have..self.have + bytes.len()].copy_from_slice(bytes);
            self.have += bytes.len();
            if self.have == HEADER {
                let h = &self.header;
                let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                self.body_left = len as usize;
                if self.body_left == 0 {
                    self.have = 0;
                }
                return Some((len, stream, h[8]));
            }
            return None;
        }
        self.body_left -= bytes.len();
        if self.body_left == 0 {
            self.have = 0;
        }
        None
    }
}

struct Track {
    fd: RawFd,
    read: Framing,
    write: Framing,
    /// The request frame being read (header and body so far) and its stream.
    current: Vec<u8>,
    current_stream: u32,
    current_is_request: bool,
    /// The response being written is for this stream.
    answering: u32,
    /// Requests read and not answered, by stream id.
    open: BTreeMap<u32, Vec<u8>>,
    /// Frames to serve before the socket's own bytes (a new binary's first reads).
    replay: Vec<u8>,
    closed: bool,
}

impl Track {
    fn new(fd: RawFd, replay: Vec<u8>) -> Self {
        Track {
            fd,
            read: Framing::default(),
            write: Framing::default(),
            current: Vec::new(),
            current_stream: 0,
            current_is_request: false,
            answering: u32::MAX,
            open: BTreeMap::new(),
            replay,
            closed: false,
        }
    }

    fn on_read(&mut self, bytes: &[u8]) {
        if self.read.at_boundary() {
            self.current.clear();
        }
        self.current.extend_from_slice(bytes);
        if let Some((_, stream, kind)) = self.read.feed(bytes) {
            self.current_stream = stream;
            self.current_is_request = kind == TYPE_REQUEST;
        }
        if self.read.at_boundary() && self.current_is_request {
            self.open.insert(self.current_stream, std::mem::take(&mut self.current));
        }
    }

    fn on_written(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = self.write.room().min(bytes.len());
            if let Some((_, stream, kind)) = self.write.feed(&bytes[..n]) {
                self.answering = if kind == TYPE_RESPONSE { stream } else { u32::MAX };
            }
            if self.write.at_boundary() && self.answering != u32::MAX {
                self.open.remove(&self.answering);
            }
            bytes = &bytes[n..];
        }
    }
}

/// One ttrpc connection as the server sees it.
pub struct Conn {
    stream: UnixStream,
    track: Arc<Mutex<Track>>,
    gate: Arc<Gate>,
}

impl Conn {
    /// `replay` are whole request frames the previous binary had read.
    pub fn new(stream: UnixStream, gate: Arc<Gate>, replay: Vec<Vec<u8>>) -> Self {
        let track = Arc::new(Mutex::new(Track::new(stream.as_raw_fd(), replay.concat())));
        lock(&gate.conns).push(Arc::downgrade(&track));
        Conn { stream, track, gate }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let mut t = lock(&me.track);
        if t.read.at_boundary() && me.gate.park(cx) {
            return Poll::Pending;
        }
        let room = t.read.room().min(buf.remaining());
        if !t.replay.is_empty() {
            let n = room.min(t.replay.len());
            let bytes: Vec<u8> = t.replay.drain(..n).collect();
            buf.put_slice(&bytes);
            t.on_read(&bytes);
            return Poll::Ready(Ok(()));
        }
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(room));
        match Pin::new(&mut me.stream).poll_read(cx, &mut part) {
            Poll::Ready(Ok(())) => {
                let n = part.filled().len();
                if n == 0 {
                    t.closed = true;
                } else {
                    let bytes = part.filled().to_vec();
                    t.on_read(&bytes);
                }
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        match Pin::new(&mut me.stream).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                lock(&me.track).on_written(&data[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        lock(&me.track).closed = true;
        Pin::new(&mut me.stream).poll_shutdown(cx)
    }
}

/// The server's incoming connections: those taken over first, then accepts.
pub struct Incoming {
    listener: UnixListener,
    taken_over: Vec<Conn>,
    gate: Arc<Gate>,
}

impl Incoming {
    pub fn new(listener: UnixListener, taken_over: Vec<Conn>, gate: Arc<Gate>) -> Self {
        Incoming { listener, taken_over, gate }
    }
}

impl futures_core::Stream for Incoming {
    type Item = std::io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let me = self.get_mut();
        if let Some(c) = me.taken_over.pop() {
            return Poll::Ready(Some(Ok(c)));
        }
        if me.gate.park(cx) {
            return Poll::Pending;
        }
        match me.listener.poll_accept(cx) {
            Poll::Ready(Ok((s, _))) => Poll::Ready(Some(Ok(Conn::new(s, me.gate.clone(), Vec::new())))),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: u32, kind: u8, body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(&[kind, 0]);
        f.extend_from_slice(body);
        f
    }

    fn request(stream: u32, method: &str) -> Vec<u8> {
        let r = Request { service: "containerd.task.v2.Task".into(), method: method.into(), ..Default::default() };
        frame(stream, TYPE_REQUEST, &r.write_to_bytes().expect("encode"))
    }

    fn track() -> Track {
        Track::new(-1, Vec::new())
    }

    /// Feeds `bytes` to the read side as the connection would: never past a part's end.
    fn read_all(t: &mut Track, mut bytes: &[u8], chunk: usize) {
        while !bytes.is_empty() {
            let n = t.read.room().min(chunk).min(bytes.len());
            t.on_read(&bytes[..n]);
            bytes = &bytes[n..];
        }
    }

    #[test]
    fn requests_stay_open_until_their_response_is_written() {
        let mut t = track();
        let (wait, state) = (request(1, "Wait"), request(3, "State"));
        read_all(&mut t, &[wait.clone(), state.clone()].concat(), 3);
        assert!(t.read.at_boundary());
        assert_eq!(t.open.values().cloned().collect::<Vec<_>>(), vec![wait.clone(), state]);
        // The State answer, written in two pieces.
        let resp = frame(3, TYPE_RESPONSE, b"answer");
        t.on_written(&resp[..4]);
        assert_eq!(t.open.len(), 2, "half a response answers nothing");
        assert!(!t.write.at_boundary());
        t.on_written(&resp[4..]);
        assert_eq!(t.open.values().cloned().collect::<Vec<_>>(), vec![wait], "only the Wait is still open");
        assert!(t.write.at_boundary());
    }

    #[test]
    fn a_half_read_frame_is_not_a_boundary() {
        let mut t = track();
        let f = request(5, "Kill");
        read_all(&mut t, &f[..HEADER + 2], 64);
        assert!(!t.read.at_boundary());
        assert!(t.open.is_empty());
        read_all(&mut t, &f[HEADER + 2..], 64);
        assert!(t.read.at_boundary());
        assert_eq!(method_of(&t.open[&5]), ("containerd.task.v2.Task".to_string(), "Kill".to_string()));
    }
}
