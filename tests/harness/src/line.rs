//! Containerd lines.

use super::*;

/// Which containerd release line a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// Debian bookworm's containerd 1.6 in /usr/bin.
    V16,
    /// containerd 2.x from Debian sid, unpacked under /var/lib/keel-dev/containerd2.
    V2,
}

impl Line {
    pub fn name(self) -> &'static str {
        match self {
            Line::V16 => "containerd-1.6",
            Line::V2 => "containerd-2.x",
        }
    }

    /// The line a name (its `name()`, or "1.6" / "2" / "2.x") stands for.
    pub fn parse(s: &str) -> Option<Line> {
        match s {
            "containerd-1.6" | "1.6" | "1" => Some(Line::V16),
            "containerd-2.x" | "2.x" | "2" => Some(Line::V2),
            _ => None,
        }
    }

    pub fn bin_dir(self) -> &'static Path {
        match self {
            Line::V16 => Path::new("/usr/bin"),
            Line::V2 => Path::new(CONTAINERD2_BIN),
        }
    }

    pub fn containerd(self) -> PathBuf {
        self.bin_dir().join("containerd")
    }

    pub fn ctr(self) -> PathBuf {
        self.bin_dir().join("ctr")
    }

    /// The runc-v2 shim of the same release (the reference runtime).
    pub fn runc_shim(self) -> PathBuf {
        self.bin_dir().join("containerd-shim-runc-v2")
    }

    /// Panics (never skips) when a binary of this line is missing.
    pub fn check_installed(self) {
        for p in [self.containerd(), self.ctr(), self.runc_shim()] {
            if !is_executable(&p) {
                panic!("{} is missing ({} not found or not executable): run `scripts/install-deps.sh` first", self.name(), p.display());
            }
        }
        for p in ["/bin/busybox", "/usr/sbin/runc"] {
            if !is_executable(Path::new(p)) {
                panic!("{p} is missing: run `scripts/install-deps.sh` first");
            }
        }
    }
}

pub fn is_executable(p: &Path) -> bool {
    fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}
