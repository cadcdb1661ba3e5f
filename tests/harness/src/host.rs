//! Processes, mounts, runtime state.

use super::*;

/// A process as seen in /proc.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: i32,
    pub args: Vec<String>,
    /// args joined by spaces
    pub cmdline: String,
    /// environment, NUL turned into newlines
    pub environ: String,
    pub exe: Option<PathBuf>,
}

impl ProcInfo {
    /// argv[0] or the executable's name starts with `containerd-shim`.
    pub fn is_shim(&self) -> bool {
        let base = |p: &OsStr| p.to_string_lossy().starts_with("containerd-shim");
        self.args.first().map(|a| base(Path::new(a).file_name().unwrap_or_default())).unwrap_or(false)
            || self.exe.as_ref().and_then(|e| e.file_name()).map(base).unwrap_or(false)
    }
}

/// Every live (non-zombie) process.
pub fn procs() -> Vec<ProcInfo> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let base = e.path();
        let Ok(raw) = fs::read(base.join("cmdline")) else {
            continue;
        };
        if raw.is_empty() {
            continue; // kernel thread or zombie
        }
        let args: Vec<String> = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let environ = fs::read(base.join("environ")).map(|e| String::from_utf8_lossy(&e).replace('\0', "\n")).unwrap_or_default();
        let exe = fs::read_link(base.join("exe")).ok();
        out.push(ProcInfo { pid, cmdline: args.join(" "), args, environ, exe });
    }
    out
}

/// The process exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // state is the field after the ")" that closes comm
            let state = s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Decodes the octal escapes (\040 ...) of /proc/self/mountinfo.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir`, in mount order (parents first).
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.to_string_lossy().trim_end_matches('/').to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mount))
        .filter(|m| m == &dir || m.starts_with(&format!("{dir}/")))
        .map(PathBuf::from)
        .collect()
}

pub fn umount_detach(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: umount2 with a valid C string.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// runc's state directory for container `id` in namespace `ns` under the default
/// root (used by the runc-v2 shim, and by Keel, which keeps the same default).
pub fn runc_state_dir(ns: &str, id: &str) -> PathBuf {
    Path::new(RUNC_DEFAULT_ROOT).join(ns).join(id)
}
