//! Security properties of Keel, on each containerd line:
//!
//! - `socket::*`: the shim's ttrpc socket (found through the bundle's
//!   `address` / `bootstrap.json`) is a socket of mode 0600 owned by root, and
//!   an unprivileged user cannot connect to it.
//! - `fds::*`: a container process sees no fd beyond 0, 1, 2: a plain run, a
//!   `-t` run, an exec, an `exec -t`, and a run with `--log-uri file://`.
//!   (`ls -l /proc/self/fd` itself holds one directory fd, `/proc/<pid>/fd`:
//!   that one is allowed, nothing else.)
//! - `no_shell::*`: no request field goes through a shell: ids with shell
//!   metacharacters are InvalidArgument before any runtime call, and
//!   `$(touch ...)`, backquotes and `;` in process args, a BinaryName and a log
//!   path are taken literally: the marker files never appear on the host.

use keel_harness as common;

use common::pty::PtyProc;
use common::robust::*;
use common::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

// ---------------------------------------------------------------------------
// the shim socket
// ---------------------------------------------------------------------------

/// Tries to connect to `sock` as uid/gid 65534 in a forked child; returns the
/// child's errno (0: connected).
fn connect_as_nobody(sock: &Path) -> i32 {
    let path = std::ffi::CString::new(sock.as_os_str().as_encoded_bytes()).unwrap();
    let bytes = path.as_bytes_with_nul();
    assert!(bytes.len() <= 108, "socket path too long");
    // SAFETY: zeroed sockaddr_un filled below.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (i, b) in bytes.iter().enumerate() {
        addr.sun_path[i] = *b as libc::c_char;
    }
    // SAFETY: the child only makes async-signal-safe calls, then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                libc::_exit(200);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                libc::_exit(201);
            }
            let rc = libc::connect(
                fd,
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            let errno = if rc == 0 { 0 } else { *libc::__errno_location() };
            libc::_exit(errno.min(199));
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child did not exit normally: {status}");
    let code = libc::WEXITSTATUS(status);
    assert!(code < 200, "child could not drop privileges / make a socket: {code}");
    code
}

fn socket_private(line: Line) {
    let r = Rig::for_runtime(line, KEEL_V1);
    let tag = r.tag.clone();
    let id = r.sleeper("sock");
    let bundle = r.cd.bundle_dir(&r.cd.ns, &id);
    let source = if bundle.join("bootstrap.json").exists() { "bootstrap.json" } else { "address" };
    let (sock, version) = r.cd.shim_address(&r.cd.ns, &id).expect("shim address");
    let m = std::fs::symlink_metadata(&sock).unwrap_or_else(|e| panic!("{tag} stat {}: {e}", sock.display()));
    let dir = sock.parent().unwrap();
    let dm = std::fs::metadata(dir).unwrap();
    eprintln!(
        "{tag} shim socket {} (from {source}, task API v{version}): mode {:o}, uid {}, gid {}; directory {} mode {:o} uid {}",
        sock.display(),
        m.mode() & 0o7777,
        m.uid(),
        m.gid(),
        dir.display(),
        dm.mode() & 0o7777,
        dm.uid()
    );
    assert!(m.file_type().is_socket(), "{tag} {} is not a socket", sock.display());
    assert_eq!(m.mode() & 0o7777, 0o600, "{tag} shim socket mode");
    assert_eq!(m.uid(), 0, "{tag} shim socket owner");
    assert_eq!(dm.mode() & 0o022, 0, "{tag} {} is writable by others: {:o}", dir.display(), dm.mode());
    assert_eq!(dm.uid(), 0, "{tag} {} owner", dir.display());
    let errno = connect_as_nobody(&sock);
    eprintln!("{tag} connect as uid 65534 -> errno {errno} ({})", std::io::Error::from_raw_os_error(errno));
    assert_eq!(errno, libc::EACCES, "{tag} an unprivileged user could reach the shim socket");
    // Root still can.
    assert!(r.shim(&id).state(&id, "").is_ok(), "{tag} root cannot use the socket");
    r.kill_delete(&id);
}

// ---------------------------------------------------------------------------
// fds a container sees
// ---------------------------------------------------------------------------

/// Parses `ls -l /proc/self/fd` output into (fd, target); fails on anything
/// beyond 0, 1, 2 other than ls's own `/proc/<pid>/fd` directory fd.
fn check_fds(tag: &str, what: &str, out: &str) -> Vec<(u32, String)> {
    let mut fds = Vec::new();
    for l in out.lines() {
        let toks: Vec<&str> = l.split_whitespace().collect();
        if let Some(i) = toks.iter().position(|t| *t == "->") {
            if i > 0 {
                if let Ok(fd) = toks[i - 1].parse::<u32>() {
                    fds.push((fd, toks[i + 1..].join(" ")));
                }
            }
        }
    }
    eprintln!("{tag} {what}: fds {fds:?}");
    let nums: Vec<u32> = fds.iter().map(|f| f.0).collect();
    assert!(nums.contains(&0) && nums.contains(&1) && nums.contains(&2), "{tag} {what}: stdio fds missing, output:\n{out}");
    let ls_dir = |t: &str| t.starts_with("/proc/") && t.ends_with("/fd");
    let extra: Vec<&(u32, String)> = fds.iter().filter(|f| f.0 > 2 && !ls_dir(&f.1)).collect();
    assert!(extra.is_empty(), "{tag} {what}: the container sees extra fds {extra:?}; output:\n{out}");
    assert!(fds.iter().filter(|f| f.0 > 2).count() <= 1, "{tag} {what}: more than ls's own directory fd: {fds:?}");
    fds
}

fn fds_in_container(line: Line) {
    let r = Rig::for_runtime(line, KEEL_V1);
    let tag = r.tag.clone();
    let ls = ["ls", "-l", "/proc/self/fd"];

    // plain run
    let o = r.run(&["--rm"], &r.cd.id("fdrun"), &ls);
    assert!(o.ok(), "{tag} run: {}", o.describe());
    check_fds(&tag, "ctr run", &o.out());

    // --null-io: the listing goes to a bind-mounted host directory
    let outdir = r.cd.dir.join("fd-out");
    std::fs::create_dir_all(&outdir).unwrap();
    let mnt = format!("type=bind,src={},dst=/out,options=rbind:rw", outdir.display());
    let o = r.run(&["--rm", "--null-io", "--mount", &mnt], &r.cd.id("fdnull"), &["sh", "-c", "exec ls -l /proc/self/fd > /out/fds"]);
    assert!(o.ok(), "{tag} run --null-io: {}", o.describe());
    let listing = std::fs::read_to_string(outdir.join("fds")).unwrap_or_default();
    check_fds(&tag, "ctr run --null-io", &listing);

    // -t run
    let args = r.run_args(&["--rm", "-t"], None, &r.cd.id("fdtty"), &ls);
    let p = PtyProc::spawn(r.cd.ctr_command(&strs(&args)), 24, 200);
    let (code, timed_out, out) = p.wait(Duration::from_secs(60));
    assert!(!timed_out && code == Some(0), "{tag} run -t: {code:?} {out:?}");
    check_fds(&tag, "ctr run -t", &out);

    // exec and exec -t
    let id = r.sleeper("fdexec");
    let o = r.exec(&[], &id, "lsfd", &ls);
    assert!(o.ok(), "{tag} exec: {}", o.describe());
    check_fds(&tag, "ctr task exec", &o.out());
    let args = r.exec_args(&["-t"], &id, "lsfdt", &ls);
    let p = PtyProc::spawn(r.cd.ctr_command(&strs(&args)), 24, 200);
    let (code, timed_out, out) = p.wait(Duration::from_secs(60));
    assert!(!timed_out && code == Some(0), "{tag} exec -t: {code:?} {out:?}");
    check_fds(&tag, "ctr task exec -t", &out);
    // The init itself, seen from an exec.
    let o = r.exec(&[], &id, "lsinit", &["ls", "-l", "/proc/1/fd"]);
    assert!(o.ok(), "{tag} exec ls /proc/1/fd: {}", o.describe());
    let fds = check_fds(&tag, "the init (sleep) of ctr run -d", &o.out());
    assert!(fds.iter().all(|f| f.0 <= 2), "{tag} the init holds {fds:?}");
    r.kill_delete(&id);

    // --log-uri file://
    let log = r.cd.dir.join("fd-log.txt");
    let uri = format!("file://{}", log.display());
    let o = r.run(&["--rm", "--log-uri", &uri], &r.cd.id("fdlog"), &["sh", "-c", "ls -l /proc/self/fd; sleep 0.3"]);
    assert!(o.ok(), "{tag} run --log-uri: {}", o.describe());
    let out = poll(Duration::from_secs(10), || std::fs::read_to_string(&log).ok().filter(|s| s.contains("->")))
        .unwrap_or_else(|| panic!("{tag} nothing in {}", log.display()));
    // `sh -c 'ls ...; sleep'`: ls is sh's child; sh keeps nothing open either.
    check_fds(&tag, "ctr run --log-uri file://", &out);
}

// ---------------------------------------------------------------------------
// nothing goes through a shell
// ---------------------------------------------------------------------------

fn marker(name: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/keel-pwned-{}-{name}", unique("m")))
}

fn assert_no_markers(tag: &str, markers: &[PathBuf]) {
    // Give anything that might have been started a moment.
    std::thread::sleep(Duration::from_millis(300));
    for m in markers {
        let inside = rootfs().join(m.strip_prefix("/").unwrap());
        assert!(!m.exists(), "{tag} {} appeared on the host: a field went through a shell", m.display());
        assert!(!inside.exists(), "{tag} {} appeared in the rootfs", inside.display());
    }
}

fn no_shell(line: Line) {
    let r = Rig::for_runtime(line, KEEL_V1);
    let tag = r.tag.clone();
    let mut markers = Vec::new();
    let mut mk = |n: &str| {
        let m = marker(n);
        markers.push(m.clone());
        m.display().to_string()
    };

    // Process args are passed literally (no shell between ctr and the process).
    let (m1, m2, m3) = (mk("arg-subst"), mk("arg-backq"), mk("arg-semi"));
    let a1 = format!("$(touch {m1})");
    let a2 = format!("`touch {m2}`");
    let a3 = format!("; touch {m3}");
    let o = r.run(&["--rm"], &r.cd.id("literal"), &["echo", &a1, &a2, &a3]);
    assert!(o.ok(), "{tag} run echo: {}", o.describe());
    assert_eq!(o.out(), format!("{a1} {a2} {a3}\n"), "{tag} args not passed literally");

    // A runtime that logs its calls, to show rejected requests never reach it.
    let (script, _hung) = hanging_runtime(&r.cd.dir, "log-runc", "*never-matches-anything*");
    let calls = r.cd.dir.join("log-runc.calls");
    let cfg = r.write_runtime_config("log", &format!("BinaryName = \"{}\"\n", script.display()));
    let id = r.cd.id("shellcheck");
    r.run_d(&["--runtime-config-path", &cfg.to_string_lossy()], &id, &["sleep", "1000000"]);
    r.wait_status(&id, "RUNNING");
    let ncalls = || std::fs::read_to_string(&calls).unwrap_or_default().lines().count();

    // Exec args, literally.
    let m4 = mk("exec-arg");
    let a4 = format!("$(touch {m4})");
    let o = r.exec(&[], &id, "lit", &["echo", &a4]);
    assert!(o.ok() && o.out() == format!("{a4}\n"), "{tag} exec echo: {}", o.describe());

    // Exec ids with shell metacharacters: through ctr, and straight to the shim.
    let shim = r.shim(&id);
    let spec = exec_spec(&r.cd, &id, &["true"]);
    let before = ncalls();
    let bad_exec = "x;touch pwned-exec".to_string();
    let o = r.exec(&[], &id, &bad_exec, &["true"]);
    eprintln!("{tag} ctr exec --exec-id {bad_exec:?} -> {:?}: {}", o.code, o.err().trim());
    assert!(!o.ok() && !o.timed_out, "{tag} exec id with $(...) accepted: {}", o.describe());
    for (n, pat) in [
        ("semi", "e;touch {}"),
        ("subst", "e$(touch {})"),
        ("backq", "e`touch {}`"),
        ("pipe", "e|touch {}"),
        ("amp", "e&&touch {}"),
        ("nl", "e\ntouch {}"),
    ] {
        let m = mk(&format!("exec-id-{n}"));
        let eid = pat.replace("{}", &m);
        let res = shim.call(&exec_req(&id, &eid, &spec));
        eprintln!("{tag} Exec id {eid:?} -> {:?} {}", res.code(), res.message());
        assert_eq!(res.code(), Some(3), "{tag} exec id {eid:?}: {res:?}");
        let st = shim.start(&id, &eid);
        assert_ne!(st.code(), Some(0), "{tag} Start of exec id {eid:?} succeeded");
    }
    // Container ids, straight to the shim (containerd validates its own).
    let opts = runtime_options("", &format!("BinaryName = \"{}\"\n", script.display()));
    let bundle = r.cd.bundle_dir(&r.cd.ns, &id);
    for (n, pat) in [("semi", "c;touch {}"), ("subst", "c$(touch {})"), ("backq", "c`touch {}`")] {
        let m = mk(&format!("create-id-{n}"));
        let cid = pat.replace("{}", &m);
        let res = shim.call(&pb::CreateTaskRequest { options: any(RUNTIME_OPTIONS_URL, &opts), ..create_req(&cid, &bundle) });
        eprintln!("{tag} Create id {cid:?} -> {:?} {}", res.code(), res.message());
        assert_eq!(res.code(), Some(3), "{tag} container id {cid:?}: {res:?}");
    }
    assert_eq!(ncalls(), before, "{tag} a rejected request reached the runtime:\n{}", std::fs::read_to_string(&calls).unwrap_or_default());

    // A BinaryName with shell syntax is a (missing) file name, not a command line.
    let m6 = mk("binary-name");
    let cfg2 = r.write_runtime_config("evil", &format!("BinaryName = \"/bin/true; touch {m6}\"\n"));
    let o = r.run(&["--rm", "--runtime-config-path", &cfg2.to_string_lossy()], &r.cd.id("evilbin"), &["true"]);
    eprintln!("{tag} BinaryName with '; touch' -> {:?}: {}", o.code, o.err().trim());
    assert!(!o.ok() && !o.timed_out, "{tag} {}", o.describe());
    assert!(o.err().contains("/bin/true; touch"), "{tag} the error should name the binary: {}", o.describe());

    // A log path with shell syntax is a file name: exactly one file appears in
    // the log directory, named after the path (decoded or not: see
    // badinput.rs `uri_escapes`), and nothing else runs.
    let logdir = r.cd.dir.join("logs");
    let logpath = format!("{}/out$(touch pwned-log);touch pwned-log2.log", logdir.display());
    let o = r.run(&["--rm", "--log-uri", &format!("file://{logpath}")], &r.cd.id("evillog"), &["sh", "-c", "echo logged; sleep 0.2"]);
    assert!(o.ok(), "{tag} run --log-uri: {}", o.describe());
    let names = || -> Vec<String> {
        std::fs::read_dir(&logdir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
    };
    let logged = poll(Duration::from_secs(10), || {
        let n = names();
        (n.len() == 1 && std::fs::read_to_string(logdir.join(&n[0])).map(|c| c.contains("logged")).unwrap_or(false)).then_some(n)
    });
    eprintln!("{tag} --log-uri with shell syntax -> files {:?}", names());
    assert!(logged.is_some(), "{tag} want exactly one log file in {}: {:?}", logdir.display(), names());
    let n = &names()[0];
    assert!(n.contains("touch") && n.starts_with("out$"), "{tag} log file name {n:?}");
    for d in [r.cd.dir.clone(), r.cd.bundle_dir(&r.cd.ns, &id), PathBuf::from("/"), logdir.clone()] {
        for m in ["pwned-log", "pwned-log2.log", "pwned-exec"] {
            assert!(!d.join(m).exists(), "{tag} {} appeared: a field went through a shell", d.join(m).display());
        }
    }

    assert_no_markers(&tag, &markers);
    r.assert_exec_works(&id, "shell metacharacters");
    r.kill_delete(&id);
}

per_line!(socket, super::socket_private);
per_line!(fds, super::fds_in_container);
per_line!(no_shell, super::no_shell);
