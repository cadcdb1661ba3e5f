//! Integration-test harness for Keel: private containerd daemons (1.6 and 2.x),
//! `ctr` with timeouts, an events watcher, a pty runner, a busybox rootfs and
//! helpers that look for leftovers (shim processes, mounts, runtime state).
//!
//! Plain std Rust plus `libc` and `serde_json`. Every child process is run with
//! a deadline: a hung shim makes a test fail, never hang.
//!
//! Nothing here touches the system containerd (/run/containerd/containerd.sock,
//! /var/lib/containerd). What cannot be made private is noted where it happens:
//! shims put their ttrpc sockets in /run/containerd/s/ and runc keeps its state
//! in /run/containerd/runc/<namespace>/ (the default root, which the tests check
//! for leftovers); every test uses its own namespace, and `Drop` removes what
//! its own shims leave there.

// The test-declaring macros every suite uses
// (`#[macro_use] extern crate keel_harness as common;`).

/// `per_line!(name, f)`: module `name` with one test per containerd line,
/// each calling `f(Line)` (a function path or a closure).
#[macro_export]
macro_rules! per_line {
    ($name:ident, $f:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn containerd_1_6() {
                let f: fn($crate::Line) = $f;
                f($crate::Line::V16)
            }
            #[test]
            fn containerd_2() {
                let f: fn($crate::Line) = $f;
                f($crate::Line::V2)
            }
        }
    };
}

/// `scenarios!([(module, RUNTIME, runner), ...], [s1, s2, ...])`: for each
/// runtime variant a module holding, per scenario `s(Line, &str)`, one test
/// per containerd line; `runner` wraps the call (`common::direct`, or
/// `common::production::as_crun_variant`).
// `crate::$s` is meant: the scenarios are functions of the calling suite.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! scenarios {
    ([$(($module:ident, $rt:ident, $run:path)),+ $(,)?], $ss:tt) => {
        $( $crate::scenarios!(@variant $module, $rt, $run, $ss); )+
    };
    (@variant $module:ident, $rt:ident, $run:path, [$($s:ident),* $(,)?]) => {
        mod $module {
            $(
                mod $s {
                    use $crate::{Line, $rt};
                    #[test]
                    fn containerd_1_6() { $run(|| crate::$s(Line::V16, $rt)) }
                    #[test]
                    fn containerd_2() { $run(|| crate::$s(Line::V2, $rt)) }
                }
            )*
        }
    };
}

/// The plain runner for `scenarios!`.
pub fn direct<R>(f: impl FnOnce() -> R) -> R {
    f()
}

pub mod api;
mod cmd;
mod containerd;
pub mod control;
pub mod cri;
mod events;
mod host;
mod line;
pub mod load;
pub mod production;
pub mod pty;
pub mod robust;
mod rootfs;
pub mod scenario;
mod shimcall;
pub use cmd::*;
pub use containerd::*;
pub use events::*;
pub use host::*;
pub use line::*;
pub use rootfs::*;
pub use shimcall::*;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Runtime type of the reference shim shipped with containerd.
pub const RUNC_V2: &str = "io.containerd.runc.v2";
/// Runtime type of the shim under test.
pub const KEEL_V1: &str = "io.containerd.keel.v1";

/// Where `scripts/install-deps.sh` unpacks containerd 2.x.
pub const CONTAINERD2_BIN: &str = "/var/lib/keel-dev/containerd2/usr/bin";
/// The shared busybox root filesystem.
pub const ROOTFS_DIR: &str = "/var/lib/keel-dev/rootfs";
/// runc's default `--root`; the runc-v2 shim (and Keel) keep per-namespace state below it.
pub const RUNC_DEFAULT_ROOT: &str = "/run/containerd/runc";
/// Parent of every private containerd directory.
pub const IT_BASE: &str = "/tmp/keel-it";
/// PATH given to containers (ctr's `--rootfs` spec has no environment at all).
pub const CONTAINER_PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// Default deadline of one `ctr` call.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(30);

/// The repository (this crate lives in its tests/harness).
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The freshly built shim: `KEEL_SHIM`, else the one cargo built next to the
/// running test binary (`target/<triple>/release/deps/<test>` →
/// `target/<triple>/release/containerd-shim-keel-v1`), as cargo builds a
/// package's binaries before its integration tests.
pub fn built_shim() -> PathBuf {
    if let Some(p) = std::env::var_os("KEEL_SHIM") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary's own path");
    let profile_dir = exe.parent().and_then(|deps| if deps.ends_with("deps") { deps.parent() } else { Some(deps) });
    profile_dir.map(|d| d.join("containerd-shim-keel-v1")).unwrap_or_else(|| PathBuf::from("containerd-shim-keel-v1"))
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn next_n() -> u64 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A process-wide unique name: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), next_n())
}
