//! Kubernetes' view: a pod and a container through the CRI API of a real
//! containerd (1.6 and 2.x) whose `keel` runtime handler is
//! io.containerd.keel.v1, as a kubelet with `runtimeClassName: keel` drives it.
//!
//! - containerd runs with the CRI plugin enabled, a `keel` handler
//!   (runtime_type io.containerd.keel.v1, options ConfigPath -> a TOML file)
//!   and `restrict_oom_score_adj = true` (this VM refuses every lowering of an
//!   oom_score_adj, and the kubelet asks for -998 for a sandbox);
//! - the pod uses the host network (NamespaceMode NODE), so no CNI is needed;
//! - the sandbox ("pause") image and the busybox image are built here from the
//!   busybox rootfs as one OCI image-layout tar and imported with
//!   `ctr -n k8s.io images import` (no registry, no internet);
//! - the CRI calls (`runtime.v1.RuntimeService`) go over gRPC through a small
//!   HTTP/2 client in this file: containerd-client has no CRI protos, and
//!   tonic alone cannot encode a hand-written message without `bytes`/`prost`.

#[macro_use]
mod common;

use common::production::*;
use common::robust::Pb;
use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const PAUSE_IMAGE: &str = "docker.io/keel/pause:test";
const BUSYBOX_IMAGE: &str = "docker.io/keel/busybox:test";
const K8S_NS: &str = "k8s.io";

// ---------------------------------------------------------------------------
// HPACK decoding (RFC 7541), enough for a gRPC server's response headers
// ---------------------------------------------------------------------------

const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Code lengths of the HPACK Huffman code (RFC 7541 Appendix B) for bytes
/// 0..=255; EOS is 30 bits. The code is canonical, so lengths define it.
const HUFFMAN_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/// (length, code) -> symbol (256 = EOS), built from the canonical lengths.
fn huffman_codes() -> HashMap<(u8, u32), u16> {
    let mut syms: Vec<(u8, u16)> = HUFFMAN_LENGTHS
        .iter()
        .enumerate()
        .map(|(s, l)| (*l, s as u16))
        .collect();
    syms.push((30, 256));
    syms.sort();
    let mut map = HashMap::new();
    let (mut code, mut len) = (0u32, syms[0].0);
    for (l, s) in syms {
        if l > len {
            code <<= l - len;
            len = l;
        }
        map.insert((l, code), s);
        code += 1;
    }
    map
}

fn huffman_decode(codes: &HashMap<(u8, u32), u16>, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let (mut code, mut len) = (0u32, 0u8);
    for byte in data {
        for bit in (0..8).rev() {
            code = (code << 1) | ((byte >> bit) & 1) as u32;
            len += 1;
            if let Some(&s) = codes.get(&(len, code)) {
                if s == 256 {
                    return Err("hpack: EOS in a string".into());
                }
                out.push(s as u8);
                code = 0;
                len = 0;
            } else if len > 30 {
                return Err("hpack: bad huffman code".into());
            }
        }
    }
    // up to 7 bits of padding (a prefix of EOS, all ones) may remain
    if len > 7 || code != (1u32 << len) - 1 {
        return Err("hpack: bad huffman padding".into());
    }
    Ok(out)
}

struct Hpack {
    dynamic: Vec<(String, String)>, // newest first
    max: usize,
    codes: HashMap<(u8, u32), u16>,
}

impl Hpack {
    fn new() -> Hpack {
        Hpack {
            dynamic: Vec::new(),
            max: 4096,
            codes: huffman_codes(),
        }
    }

    fn int(b: &[u8], i: &mut usize, prefix: u8) -> Result<usize, String> {
        let mask = ((1u16 << prefix) - 1) as u8;
        let first = *b.get(*i).ok_or("hpack: truncated integer")?;
        *i += 1;
        let mut v = (first & mask) as usize;
        if v < mask as usize {
            return Ok(v);
        }
        let mut shift = 0;
        loop {
            let byte = *b.get(*i).ok_or("hpack: truncated integer")?;
            *i += 1;
            v += ((byte & 0x7f) as usize) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
            if shift > 28 {
                return Err("hpack: integer too large".into());
            }
        }
    }

    fn string(&self, b: &[u8], i: &mut usize) -> Result<String, String> {
        let huff = b.get(*i).ok_or("hpack: truncated string")? & 0x80 != 0;
        let len = Hpack::int(b, i, 7)?;
        let raw = b.get(*i..*i + len).ok_or("hpack: truncated string")?;
        *i += len;
        let bytes = if huff {
            huffman_decode(&self.codes, raw)?
        } else {
            raw.to_vec()
        };
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn entry(&self, idx: usize) -> Result<(String, String), String> {
        if idx == 0 {
            return Err("hpack: index 0".into());
        }
        if idx <= STATIC_TABLE.len() {
            let (n, v) = STATIC_TABLE[idx - 1];
            return Ok((n.to_string(), v.to_string()));
        }
        self.dynamic
            .get(idx - STATIC_TABLE.len() - 1)
            .cloned()
            .ok_or_else(|| format!("hpack: index {idx} out of range"))
    }

    fn size(&self) -> usize {
        self.dynamic.iter().map(|(n, v)| 32 + n.len() + v.len()).sum()
    }

    fn evict(&mut self) {
        while self.size() > self.max {
            self.dynamic.pop();
        }
    }

    fn decode(&mut self, b: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c & 0x80 != 0 {
                let idx = Hpack::int(b, &mut i, 7)?;
                out.push(self.entry(idx)?);
            } else if c & 0xc0 == 0x40 {
                let field = self.literal(b, &mut i, 6)?;
                self.dynamic.insert(0, field.clone());
                self.evict();
                out.push(field);
            } else if c & 0xe0 == 0x20 {
                self.max = Hpack::int(b, &mut i, 5)?;
                self.evict();
            } else {
                // without indexing (0000) or never indexed (0001)
                out.push(self.literal(b, &mut i, 4)?);
            }
        }
        Ok(out)
    }

    /// A literal field: its name by index (`prefix` bits, 0 = a literal
    /// name follows), then its value.
    fn literal(&self, b: &[u8], i: &mut usize, prefix: u8) -> Result<(String, String), String> {
        let idx = Hpack::int(b, i, prefix)?;
        let name = if idx == 0 { self.string(b, i)? } else { self.entry(idx)?.0 };
        Ok((name, self.string(b, i)?))
    }
}

// ---------------------------------------------------------------------------
// gRPC over HTTP/2 (cleartext, prior knowledge) on a unix socket
// ---------------------------------------------------------------------------

/// A failed gRPC call: status code and message, or a transport failure (code None).
#[derive(Debug, Clone)]
struct GrpcError {
    code: Option<u32>,
    message: String,
}

impl std::fmt::Display for GrpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(c) => write!(f, "gRPC status {c}: {}", self.message),
            None => write!(f, "transport: {}", self.message),
        }
    }
}

fn transport(e: impl std::fmt::Display) -> GrpcError {
    GrpcError {
        code: None,
        message: e.to_string(),
    }
}

struct Grpc {
    s: UnixStream,
    hpack: Hpack,
    next_stream: u32,
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Grpc {
    fn connect(sock: &Path) -> Result<Grpc, GrpcError> {
        let s = UnixStream::connect(sock).map_err(|e| transport(format!("connect {}: {e}", sock.display())))?;
        let mut g = Grpc {
            s,
            hpack: Hpack::new(),
            next_stream: 1,
        };
        g.s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").map_err(transport)?;
        // ENABLE_PUSH = 0
        g.frame(SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0])?;
        Ok(g)
    }

    fn frame(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<(), GrpcError> {
        let mut f = Vec::with_capacity(9 + payload.len());
        let len = payload.len() as u32;
        f.extend_from_slice(&len.to_be_bytes()[1..]);
        f.push(ty);
        f.push(flags);
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).map_err(transport)
    }

    fn read_frame(&mut self, deadline: Instant) -> Result<(u8, u8, u32, Vec<u8>), GrpcError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(transport("deadline passed"));
        }
        self.s.set_read_timeout(Some(left)).map_err(transport)?;
        let mut h = [0u8; 9];
        self.s.read_exact(&mut h).map_err(transport)?;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let mut p = vec![0u8; len];
        self.s.read_exact(&mut p).map_err(transport)?;
        Ok((h[3], h[4], stream, p))
    }

    /// One unary call: `path` like "/runtime.v1.RuntimeService/Version".
    fn call(&mut self, path: &str, req: &Pb, timeout: Duration) -> Result<Vec<u8>, GrpcError> {
        let deadline = Instant::now() + timeout;
        let id = self.next_stream;
        self.next_stream += 2;
        // Header block: every field "literal without indexing, new name", raw strings.
        let mut hb = Vec::new();
        let timeout_hdr = format!("{}m", timeout.as_millis());
        for (n, v) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", timeout_hdr.as_str()),
        ] {
            hb.push(0);
            hpack_str(&mut hb, n);
            hpack_str(&mut hb, v);
        }
        self.frame(HEADERS, END_HEADERS, id, &hb)?;
        let mut body = vec![0u8];
        body.extend_from_slice(&(req.0.len() as u32).to_be_bytes());
        body.extend_from_slice(&req.0);
        for (i, chunk) in body.chunks(16384).enumerate() {
            let last = (i + 1) * 16384 >= body.len();
            self.frame(DATA, if last { END_STREAM } else { 0 }, id, chunk)?;
        }

        let mut headers: Vec<(String, String)> = Vec::new();
        let mut block: Vec<u8> = Vec::new();
        let mut block_ends_stream = false;
        let mut data: Vec<u8> = Vec::new();
        loop {
            let (ty, flags, stream, mut p) = self.read_frame(deadline)?;
            match ty {
                SETTINGS => {
                    if flags & ACK == 0 {
                        self.frame(SETTINGS, ACK, 0, &[])?;
                    }
                }
                PING => {
                    if flags & ACK == 0 {
                        self.frame(PING, ACK, 0, &p)?;
                    }
                }
                GOAWAY => {
                    let code = p.get(4..8).map(|c| u32::from_be_bytes(c.try_into().unwrap())).unwrap_or(0);
                    return Err(transport(format!(
                        "GOAWAY code {code}: {}",
                        String::from_utf8_lossy(p.get(8..).unwrap_or(&[]))
                    )));
                }
                RST_STREAM if stream == id => {
                    return Err(transport(format!("RST_STREAM {:?}", p)));
                }
                HEADERS | CONTINUATION if stream == id => {
                    let mut start = 0;
                    let mut end = p.len();
                    if ty == HEADERS {
                        if flags & PADDED != 0 {
                            let pad = p[0] as usize;
                            start = 1;
                            end = end.saturating_sub(pad);
                        }
                        if flags & PRIORITY != 0 {
                            start += 5;
                        }
                        block_ends_stream = flags & END_STREAM != 0;
                    }
                    block.extend_from_slice(&p[start.min(end)..end]);
                    if flags & END_HEADERS != 0 {
                        let hs = self.hpack.decode(&block).map_err(transport)?;
                        headers.extend(hs);
                        block.clear();
                        if block_ends_stream {
                            break;
                        }
                    }
                }
                DATA if stream == id => {
                    let n = p.len() as u32;
                    if flags & PADDED != 0 && !p.is_empty() {
                        let pad = p[0] as usize;
                        let end = p.len().saturating_sub(pad);
                        p = p[1..end.max(1)].to_vec();
                    }
                    data.extend_from_slice(&p);
                    if n > 0 {
                        self.frame(WINDOW_UPDATE, 0, 0, &n.to_be_bytes())?;
                        if flags & END_STREAM == 0 {
                            self.frame(WINDOW_UPDATE, 0, id, &n.to_be_bytes())?;
                        }
                    }
                    if flags & END_STREAM != 0 {
                        break;
                    }
                }
                _ => {} // WINDOW_UPDATE, PRIORITY, frames of other streams
            }
        }
        let get = |k: &str| headers.iter().rev().find(|h| h.0 == k).map(|h| h.1.clone());
        let status: u32 = get("grpc-status").and_then(|s| s.parse().ok()).unwrap_or(2);
        if status != 0 {
            return Err(GrpcError {
                code: Some(status),
                message: pct_decode(&get("grpc-message").unwrap_or_default()),
            });
        }
        if data.len() < 5 {
            return Ok(Vec::new());
        }
        let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        Ok(data.get(5..5 + len).unwrap_or(&[]).to_vec())
    }
}

fn hpack_str(out: &mut Vec<u8>, s: &str) {
    // 7-bit prefix length, H = 0
    let mut len = s.len();
    if len < 127 {
        out.push(len as u8);
    } else {
        out.push(127);
        len -= 127;
        while len >= 128 {
            out.push((len % 128) as u8 | 0x80);
            len /= 128;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(s.as_bytes());
}

/// The CRI RuntimeService of one containerd.
struct Cri {
    g: Grpc,
}

impl Cri {
    fn connect(cd: &Containerd) -> Cri {
        Cri {
            g: Grpc::connect(&cd.sock).unwrap_or_else(|e| panic!("CRI connect: {e}")),
        }
    }
    fn call(&mut self, method: &str, req: Pb) -> Result<Vec<u8>, GrpcError> {
        self.g
            .call(&format!("/runtime.v1.RuntimeService/{method}"), &req, CALL_TIMEOUT)
    }
}

// ---------------------------------------------------------------------------
// images
// ---------------------------------------------------------------------------

fn sha256_hex(path: &Path) -> String {
    let mut c = std::process::Command::new("sha256sum");
    c.arg(path);
    let o = run_cmd(c, None, Duration::from_secs(60));
    assert!(o.ok(), "sha256sum: {}", o.describe());
    o.out().split_whitespace().next().unwrap().to_string()
}

fn add_blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, data).unwrap();
    let d = sha256_hex(&tmp);
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&d)).unwrap();
    (format!("sha256:{d}"), data.len())
}

/// One OCI image-layout tar holding two images built from the busybox rootfs
/// (one uncompressed layer): the sandbox image (a shell that sleeps until
/// SIGTERM/SIGKILL) and a plain busybox image.
fn build_images(dir: &Path) -> PathBuf {
    let layout = dir.join("oci-layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let layer = dir.join("layer.tar");
    let mut c = std::process::Command::new("tar");
    c.args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "-C"])
        .arg(rootfs())
        .arg("-cf")
        .arg(&layer)
        .arg(".");
    let o = run_cmd(c, None, Duration::from_secs(120));
    assert!(o.ok(), "tar the rootfs: {}", o.describe());
    let ld = sha256_hex(&layer);
    let lsize = std::fs::metadata(&layer).unwrap().len();
    std::fs::rename(&layer, layout.join("blobs/sha256").join(&ld)).unwrap();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let mut manifests = Vec::new();
    for (name, cfg) in [
        (
            PAUSE_IMAGE,
            serde_json::json!({"Env": [CONTAINER_PATH], "Entrypoint": ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]}),
        ),
        (BUSYBOX_IMAGE, serde_json::json!({"Env": [CONTAINER_PATH], "Cmd": ["sh"]})),
    ] {
        let config = serde_json::json!({
            "architecture": arch, "os": "linux", "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{ld}")]},
        });
        let (cd_, cs) = add_blob(&layout, config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd_, "size": cs},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{ld}"), "size": lsize}],
        });
        let (md, ms) = add_blob(&layout, manifest.to_string().as_bytes());
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap()},
        }));
    }
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": manifests}).to_string(),
    )
    .unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let tar = dir.join("images.tar");
    let mut c = std::process::Command::new("tar");
    c.arg("-C").arg(&layout).arg("-cf").arg(&tar).arg(".");
    let o = run_cmd(c, None, Duration::from_secs(120));
    assert!(o.ok(), "tar the image layout: {}", o.describe());
    let _ = std::fs::remove_dir_all(&layout);
    tar
}

// ---------------------------------------------------------------------------
// containerd with CRI
// ---------------------------------------------------------------------------

fn cri_config(cd: &Containerd, keel_toml: &Path) -> String {
    let disabled: Vec<String> = UNUSED_PLUGINS
        .iter()
        .map(|p| format!("  \"{p}\","))
        .collect();
    let cni = cd.dir.join("cni");
    let keel = keel_toml.display();
    match cd.line {
        Line::V16 => format!(
            r#"version = 2
oom_score = 0
disabled_plugins = [
{disabled}
]
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_IMAGE}"
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{cni}/bin"
      conf_dir = "{cni}/conf"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.keel]
        runtime_type = "io.containerd.keel.v1"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.keel.options]
          ConfigPath = "{keel}"
"#,
            disabled = disabled.join("\n"),
            cni = cni.display(),
        ),
        Line::V2 => format!(
            r#"version = 3
oom_score = 0
disabled_plugins = [
{disabled}
]
[plugins]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
  [plugins."io.containerd.cri.v1.runtime"]
    restrict_oom_score_adj = true
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["{cni}/bin"]
      conf_dir = "{cni}/conf"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.keel]
      runtime_type = "io.containerd.keel.v1"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.keel.options]
        ConfigPath = "{keel}"
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
"#,
            disabled = disabled.join("\n"),
            cni = cni.display(),
        ),
    }
}

/// Removes the pod's cgroup parent (and what runc made below it) in every
/// hierarchy on drop, after the containers are gone.
struct CgroupParent(String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        fn rm_tree(d: &Path) {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        rm_tree(&e.path());
                    }
                }
            }
            if poll(Duration::from_secs(5), || std::fs::remove_dir(d).ok()).is_none() {
                eprintln!("cleanup: cannot remove cgroup {}", d.display());
            }
        }
        let rel = self.0.trim_start_matches('/').to_string();
        let mut dirs = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in rd.flatten() {
                dirs.push(h.path().join(&rel));
            }
        }
        dirs.push(Path::new("/sys/fs/cgroup").join(&rel));
        for d in dirs {
            if d.join("cgroup.procs").exists() {
                rm_tree(&d);
            }
        }
    }
}

/// Kills and deletes what the runtime still knows under the private root on
/// drop (before containerd's own cleanup removes the directory).
struct RuntimeRoot(PathBuf);

impl Drop for RuntimeRoot {
    fn drop(&mut self) {
        let nsdir = self.0.join(K8S_NS);
        if let Ok(rd) = std::fs::read_dir(&nsdir) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                eprintln!("cleanup: leftover runtime state {}", e.path().display());
                let mut c = std::process::Command::new("/usr/sbin/runc");
                c.arg("--root").arg(&nsdir).args(["delete", "--force", &id]);
                let _ = run_cmd(c, None, Duration::from_secs(10));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// the scenario
// ---------------------------------------------------------------------------

fn expect_ok(r: Result<Vec<u8>, GrpcError>, what: &str, cd: &Containerd) -> Vec<u8> {
    r.unwrap_or_else(|e| panic!("{} CRI {what}: {e}\n{}", cd.line.name(), cd.log_tail(40)))
}

/// A pod (host network) and one container, through the CRI `keel` runtime
/// handler: one Keel shim serves the pod; the container runs, prints, exec
/// works, its state and exit code are right; stop and remove clean up.
fn pod_through_keel_handler(line: Line) {
    rootfs();
    let cgparent = format!("/keel-cri-{}", unique("pod"));
    let _cg = CgroupParent(cgparent.clone()); // dropped last
    let images = std::sync::Mutex::new(None::<PathBuf>);
    let cd = start_with_config(line, |cd| {
        *images.lock().unwrap() = Some(build_images(&cd.dir));
        let root = cd.dir.join("runtime-root");
        let keel = options_file(cd, "keel-cri", &format!("Root = \"{}\"\n", root.display()));
        cri_config(cd, &keel)
    });
    let _rr = RuntimeRoot(cd.dir.join("runtime-root"));
    let tag = format!("[cri {}]", line.name());
    let images = images.lock().unwrap().take().unwrap();

    let mut args = vec!["images", "import"];
    if line == Line::V2 {
        args.push("--local");
    }
    let images_s = images.to_string_lossy().into_owned();
    args.push(&images_s);
    let o = cd.ctr_raw(Some(K8S_NS), &args, None, Duration::from_secs(120));
    assert!(o.ok(), "{tag} image import: {}\n{}", o.describe(), cd.log_tail(30));

    let mut cri = Cri::connect(&cd);
    let v = expect_ok(cri.call("Version", Pb::new().str(1, "v1")), "Version", &cd);
    assert_eq!(pb_field_str(&v, 2), "containerd", "{tag} runtime_name");

    // RunPodSandbox, runtime handler keel, host network.
    let log_dir = cd.dir.join("pod-logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    let uid = unique("uid");
    let ns_opts = Pb::new().int(1, 2).int(2, 1).int(3, 0); // network NODE, pid CONTAINER, ipc POD
    let sandbox_config = Pb::new()
        .msg(1, Pb::new().str(1, "keel-pod").str(2, &uid).str(3, "default").int(4, 0))
        // no hostname: the pod shares the host's UTS namespace with its network
        .str(3, &log_dir.to_string_lossy())
        .map(6, "app", "keel-test")
        .msg(
            8,
            Pb::new()
                .str(1, &cgparent)
                .msg(2, Pb::new().msg(1, ns_opts)),
        );
    let r = expect_ok(
        cri.call(
            "RunPodSandbox",
            Pb::new().msg(1, sandbox_config.clone()).str(2, "keel"),
        ),
        "RunPodSandbox",
        &cd,
    );
    let pod = pb_field_str(&r, 1);
    assert!(!pod.is_empty(), "{tag} no pod sandbox id");

    let st = expect_ok(
        cri.call("PodSandboxStatus", Pb::new().str(1, &pod)),
        "PodSandboxStatus",
        &cd,
    );
    let status = pb_field_bytes(&st, 1).unwrap_or_default();
    assert_eq!(pb_field_uint(&status, 3), 0, "{tag} pod state (SANDBOX_READY = 0)");
    assert_eq!(pb_field_str(&status, 9), "keel", "{tag} pod runtime_handler");

    let keel_shims = || -> Vec<ProcInfo> {
        cd.shim_procs()
            .into_iter()
            .filter(|p| p.cmdline.contains("containerd-shim-keel-v1") || p.exe.as_ref().map(|e| e.ends_with("containerd-shim-keel-v1")).unwrap_or(false))
            .collect()
    };
    let shims = keel_shims();
    assert_eq!(shims.len(), 1, "{tag} want 1 Keel shim for the sandbox: {:?}", shims.iter().map(|p| &p.cmdline).collect::<Vec<_>>());
    assert_eq!(cd.shim_procs().len(), 1, "{tag} other shims run: {:?}", cd.shim_procs().iter().map(|p| &p.cmdline).collect::<Vec<_>>());
    let shim = shims[0].pid;

    // CreateContainer + StartContainer. The kubelet's oom_score_adj for a
    // BestEffort container is 1000, for the sandbox -998; ask for -500 here
    // to see restrict_oom_score_adj clamp it to containerd's own score.
    let script = "echo hello-from-keel; echo err-line >&2; trap 'exit 7' TERM; while :; do sleep 1; done";
    let container_config = Pb::new()
        .msg(1, Pb::new().str(1, "app").int(2, 0))
        .msg(2, Pb::new().str(1, BUSYBOX_IMAGE))
        .str(3, "sh")
        .str(4, "-c")
        .str(4, script)
        .msg(6, Pb::new().str(1, "GREETING").str(2, "hi-env"))
        .str(11, "app.log")
        .msg(15, Pb::new().msg(1, Pb::new().int(5, -500)));
    let r = expect_ok(
        cri.call(
            "CreateContainer",
            Pb::new()
                .str(1, &pod)
                .msg(2, container_config)
                .msg(3, sandbox_config.clone()),
        ),
        "CreateContainer",
        &cd,
    );
    let ctr_id = pb_field_str(&r, 1);
    assert!(!ctr_id.is_empty(), "{tag} no container id");
    expect_ok(cri.call("StartContainer", Pb::new().str(1, &ctr_id)), "StartContainer", &cd);

    let status = |cri: &mut Cri| -> Vec<u8> {
        let r = expect_ok(
            cri.call("ContainerStatus", Pb::new().str(1, &ctr_id)),
            "ContainerStatus",
            &cd,
        );
        pb_field_bytes(&r, 1).unwrap_or_default()
    };
    let s = status(&mut cri);
    assert_eq!(pb_field_uint(&s, 3), 1, "{tag} container state (CONTAINER_RUNNING = 1)");
    assert!(pb_field_uint(&s, 5) > 0, "{tag} started_at");

    // One Keel shim serves the pod: sandbox and container.
    let shims = keel_shims();
    assert_eq!(
        shims.iter().map(|p| p.pid).collect::<Vec<_>>(),
        vec![shim],
        "{tag} want the sandbox's Keel shim to serve the container too: {:?}",
        shims.iter().map(|p| &p.cmdline).collect::<Vec<_>>()
    );
    let tasks = cd.ctr_raw(Some(K8S_NS), &["tasks", "ls"], None, CTR_TIMEOUT).out();
    for id in [&pod, &ctr_id] {
        assert!(
            tasks.lines().any(|l| l.starts_with(id.as_str()) && l.contains("RUNNING")),
            "{tag} task {id} not RUNNING: {tasks}"
        );
    }
    let info = cd.ctr_raw(Some(K8S_NS), &["containers", "info", &ctr_id], None, CTR_TIMEOUT).out();
    let info: serde_json::Value = serde_json::from_str(&info).expect("containers info");
    assert_eq!(info["Runtime"]["Name"], KEEL_V1, "{tag} container runtime");
    let runtime_state = cd.dir.join("runtime-root").join(K8S_NS).join(&ctr_id);
    assert!(runtime_state.exists(), "{tag} no runtime state at {} (the keel options' Root)", runtime_state.display());

    // Its output reached the CRI log file.
    let log_file = log_dir.join("app.log");
    let log = poll(Duration::from_secs(15), || {
        std::fs::read_to_string(&log_file)
            .ok()
            .filter(|l| l.contains("hello-from-keel") && l.contains("err-line"))
    })
    .unwrap_or_else(|| panic!("{tag} {} lacks the output: {:?}", log_file.display(), std::fs::read_to_string(&log_file)));
    assert!(
        log.lines().any(|l| l.contains(" stdout F hello-from-keel"))
            && log.lines().any(|l| l.contains(" stderr F err-line")),
        "{tag} CRI log lines: {log}"
    );

    // ExecSync: output and exit code; the env from the config is there.
    let r = expect_ok(
        cri.call(
            "ExecSync",
            Pb::new()
                .str(1, &ctr_id)
                .str(2, "sh")
                .str(2, "-c")
                .str(2, "echo exec-$GREETING; cat /proc/1/oom_score_adj; exit 3")
                .int(3, 20),
        ),
        "ExecSync",
        &cd,
    );
    let out = pb_field_str(&r, 1);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("exec-hi-env"), "{tag} ExecSync stdout {out:?}");
    assert_eq!(pb_field_uint(&r, 3), 3, "{tag} ExecSync exit code");
    let cd_adj: i64 = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", daemon_pid(&cd)))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let ctr_adj: i64 = lines.next().unwrap_or("").trim().parse().unwrap_or(i64::MIN);
    assert_eq!(ctr_adj, cd_adj.max(-500), "{tag} container oom_score_adj (restrict_oom_score_adj clamps -500 to containerd's)");

    // StopContainer: SIGTERM, the trap exits 7.
    expect_ok(
        cri.call("StopContainer", Pb::new().str(1, &ctr_id).int(2, 10)),
        "StopContainer",
        &cd,
    );
    let s = poll(Duration::from_secs(15), || {
        let s = status(&mut cri);
        (pb_field_uint(&s, 3) == 2).then_some(s)
    })
    .unwrap_or_else(|| panic!("{tag} container not EXITED after StopContainer"));
    assert_eq!(pb_field_uint(&s, 7), 7, "{tag} exit code");
    assert!(pb_field_uint(&s, 6) > 0, "{tag} finished_at");
    assert_eq!(pb_field_str(&s, 10), "Error", "{tag} reason for a non-zero exit");
    assert!(pid_alive(shim), "{tag} the pod's shim exited with its container");

    expect_ok(cri.call("RemoveContainer", Pb::new().str(1, &ctr_id)), "RemoveContainer", &cd);
    let r = cri.call("ContainerStatus", Pb::new().str(1, &ctr_id));
    assert!(
        matches!(&r, Err(e) if e.code == Some(5)),
        "{tag} ContainerStatus after RemoveContainer should be NotFound: {r:?}"
    );
    assert!(!runtime_state.exists(), "{tag} runtime state left: {}", runtime_state.display());

    expect_ok(cri.call("StopPodSandbox", Pb::new().str(1, &pod)), "StopPodSandbox", &cd);
    let st = expect_ok(
        cri.call("PodSandboxStatus", Pb::new().str(1, &pod)),
        "PodSandboxStatus",
        &cd,
    );
    assert_eq!(
        pb_field_uint(&pb_field_bytes(&st, 1).unwrap_or_default(), 3),
        1,
        "{tag} pod state after StopPodSandbox (SANDBOX_NOTREADY = 1)"
    );
    expect_ok(cri.call("RemovePodSandbox", Pb::new().str(1, &pod)), "RemovePodSandbox", &cd);
    let r = cri.call("PodSandboxStatus", Pb::new().str(1, &pod));
    assert!(
        matches!(&r, Err(e) if e.code == Some(5)),
        "{tag} PodSandboxStatus after RemovePodSandbox should be NotFound: {r:?}"
    );
    assert!(
        poll(Duration::from_secs(15), || (!pid_alive(shim) && cd.shim_procs().is_empty()).then_some(())).is_some(),
        "{tag} the pod's shim {shim} is still running after RemovePodSandbox"
    );
    let left = cd.ctr_raw(Some(K8S_NS), &["containers", "ls", "-q"], None, CTR_TIMEOUT).out();
    assert!(left.trim().is_empty(), "{tag} containers left: {left}");
    let mounts = cd.mounts();
    assert!(mounts.is_empty(), "{tag} mounts left: {mounts:?}");
}

mod keel_handler {
    use crate::common::Line;
    #[test]
    fn containerd_1_6() {
        crate::pod_through_keel_handler(Line::V16)
    }
    #[test]
    fn containerd_2() {
        crate::pod_through_keel_handler(Line::V2)
    }
}

#[test]
fn hpack_huffman_code_is_rfc7541s() {
    // RFC 7541 C.4.1: "www.example.com" Huffman-encoded.
    let enc = [0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
    assert_eq!(huffman_decode(&huffman_codes(), &enc).unwrap(), b"www.example.com");
    // C.4.3 "custom-value"
    let enc = [0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf];
    assert_eq!(huffman_decode(&huffman_codes(), &enc).unwrap(), b"custom-value");
}
