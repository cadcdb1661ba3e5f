//! The Debian package (`scripts/package.sh`, run by `scripts/test.sh` before
//! the tests): its contents and control fields, a real `dpkg` install into a
//! scratch root (its own dpkg database, nothing on the host touched), a
//! container run through the installed binary with nothing from `target/` on
//! containerd's PATH, and a purge that removes it again.

use keel_harness as common;

use common::robust::*;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SHIM: &str = "containerd-shim-keel-v1";
const WIRE: &str = "keel-containerd";

fn deb() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian").join(format!("keel_{}-1_amd64.deb", env!("CARGO_PKG_VERSION")));
    assert!(p.exists(), "{} is missing: run scripts/package.sh (scripts/test.sh does)", p.display());
    p
}

fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let o = run_cmd(std::mem::replace(cmd, Command::new("true")), None, Duration::from_secs(60));
    assert!(o.ok(), "{what}: {}", o.describe());
    o
}

/// A scratch root with an empty dpkg database.
struct ScratchRoot(PathBuf);

impl ScratchRoot {
    fn new() -> ScratchRoot {
        let dir = PathBuf::from(IT_BASE).join(unique("debroot"));
        for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::write(dir.join("var/lib/dpkg/status"), "").unwrap();
        ScratchRoot(dir)
    }

    fn dpkg(&self, args: &[&str]) -> Output {
        run(Command::new("dpkg").arg(format!("--root={}", self.0.display())).arg("--log=/dev/null").args(args))
    }
}

impl Drop for ScratchRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn package_contents_and_control_fields() {
    let deb = deb();
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb)).out();
    for (mode, path) in [
        ("-rwxr-xr-x", "./usr/bin/containerd-shim-keel-v1"),
        ("-rwxr-xr-x", "./usr/bin/keel-containerd"),
        ("-rw-r--r--", "./usr/share/doc/keel/README.md"),
        ("-rw-r--r--", "./usr/share/doc/keel/copyright"),
        ("-rw-r--r--", "./usr/share/doc/keel/examples/keel.toml"),
    ] {
        assert!(listing.lines().any(|l| l.starts_with(mode) && l.ends_with(path)), "{path} ({mode}) not in the package:\n{listing}");
    }
    let field = |f: &str| run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f)).out().trim().to_string();
    assert_eq!(field("Package"), "keel");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    assert_eq!(field("Architecture"), "amd64");
    assert_eq!(field("Depends"), "", "a static binary needs no other package");
    let copyright = run(Command::new("dpkg-deb").arg("--fsys-tarfile").arg(&deb)).out();
    assert!(copyright.contains("Apache License"), "the license travels with the package");

    // The packaged binaries are the ones this test run built, and they are static.
    let scratch = ScratchRoot::new();
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&scratch.0));
    for (name, built) in [(SHIM, env!("CARGO_BIN_EXE_containerd-shim-keel-v1")), (WIRE, env!("CARGO_BIN_EXE_keel-containerd"))] {
        let packaged = fs::read(scratch.0.join("usr/bin").join(name)).unwrap();
        assert!(packaged == fs::read(built).unwrap(), "the package holds another build of {name} than this one: run scripts/package.sh");
        let mut ldd = Command::new("ldd");
        ldd.arg(scratch.0.join("usr/bin").join(name));
        let ldd = run_cmd(ldd, None, Duration::from_secs(20));
        let said = format!("{}{}", ldd.out(), ldd.err());
        assert!(said.contains("not a dynamic executable") || said.contains("statically linked"), "ldd {name}: {said}");
    }
}

/// dpkg installs the package into a scratch root; containerd runs containers
/// through that binary (its shim process's executable is the installed file);
/// a purge removes it.
fn installed_package_runs_containers(line: Line) {
    let deb = deb();
    let root = ScratchRoot::new();
    root.dpkg(&["-i", &deb.to_string_lossy()]);
    let status = root.dpkg(&["-s", "keel"]).out();
    assert!(status.contains("Status: install ok installed"), "{status}");
    let installed = root.0.join("usr/bin").join(SHIM);
    let v = run(Command::new(&installed).arg("-v")).out();
    assert!(v.contains(env!("CARGO_PKG_VERSION")) && v.contains("io.containerd.keel.v1"), "-v: {v}");
    let help = run(Command::new(root.0.join("usr/bin").join(WIRE)).arg("--help")).out();
    assert!(help.contains("keel-containerd wire|unwire|status"), "{WIRE} --help: {help}");

    let r = Rig::for_runtime(line, KEEL_V1);
    // containerd finds the shim on its PATH: point that entry at the installed
    // binary instead of the build under target/.
    let link = r.cd.bin_dir.join(SHIM);
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&installed, &link).unwrap();

    let id = r.cd.id("deb");
    let o = r.run(&["--rm"], &id, &["sh", "-c", "echo from-the-package; exit 5"]);
    assert!(o.code == Some(5) && o.out() == "from-the-package\n", "{} run through the installed shim: {}", r.tag, o.describe());
    let id = r.sleeper("deb-d");
    let shims = r.cd.shim_procs_for(&id);
    assert_eq!(shims.len(), 1, "{} one shim for {id}: {shims:?}", r.tag);
    let exe = fs::read_link(format!("/proc/{}/exe", shims[0].pid)).unwrap();
    assert_eq!(exe, installed, "{} the shim runs from the package, not from target/", r.tag);
    r.assert_exec_works(&id, "install from the package");
    r.kill_delete(&id);

    root.dpkg(&["--purge", "keel"]);
    assert!(!installed.exists(), "purge leaves {}", installed.display());
    assert!(!root.0.join("usr/bin").join(WIRE).exists(), "purge leaves {WIRE}");
    assert!(!root.0.join("usr/share/doc/keel").exists(), "purge leaves the docs");
}

per_line!(installed_package, installed_package_runs_containers);
