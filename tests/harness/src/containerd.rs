//! Private containerd.

use super::*;

/// CRI (1.6 and 2.x ids) and image transfer (it needs image verifiers; 2.x's
/// CRI image service is built on it): disabled for plain-ctr tests, kept by
/// the CRI tests' containerd.
const CRI_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.images",
    "io.containerd.cri.v1.runtime",
    "io.containerd.podsandbox.controller.v1.podsandbox",
    "io.containerd.grpc.v1.sandbox-controllers",
    "io.containerd.transfer.v1.local",
    "io.containerd.grpc.v1.transfer",
    "io.containerd.image-verifier.v1.bindir",
];

/// Plugins no test needs; with CRI_PLUGINS, the plain-ctr tests' disabled
/// list. Names of both lines are listed; each line ignores the ids it does
/// not know. containerd 1.6 needs `io.containerd.runtime.v1.linux` kept,
/// else its tasks service fails to load.
pub const UNUSED_PLUGINS: &[&str] = &[
    // snapshotters other than native and overlayfs
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.snapshotter.v1.erofs",
    "io.containerd.differ.v1.erofs",
    // /opt/containerd, tracing, NRI, restart monitor
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.nri.v1.nri",
    "io.containerd.internal.v1.restart",
    "io.containerd.monitor.container.v1.restart",
];

fn config_toml() -> String {
    let list: Vec<String> = CRI_PLUGINS.iter().chain(UNUSED_PLUGINS).map(|p| format!("  \"{p}\",")).collect();
    // `version = 2` is accepted by 1.6 as is and migrated in memory by 2.x
    // (it logs a warning "Configuration migrated from version 2").
    format!(
        "version = 2\noom_score = 0\ndisabled_plugins = [\n{}\n]\n\n[plugins]\n  [plugins.\"io.containerd.gc.v1.scheduler\"]\n    pause_threshold = 0.02\n",
        list.join("\n")
    )
}

/// The last `n` lines of the file at `path`.
pub fn tail_lines(path: &Path, n: usize) -> std::io::Result<String> {
    let s = fs::read_to_string(path)?;
    let lines: Vec<&str> = s.lines().collect();
    Ok(lines[lines.len().saturating_sub(n)..].join("\n"))
}

/// One private containerd daemon with its own root, state, socket and config.
pub struct Containerd {
    pub line: Line,
    /// /tmp/keel-it/<unique>
    pub dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub sock: PathBuf,
    pub log: PathBuf,
    /// Directory of ctr's IO fifos (`--fifo-dir`), instead of /run/containerd/fifo.
    pub fifo_dir: PathBuf,
    /// Directory first in containerd's PATH, holding the shims.
    pub bin_dir: PathBuf,
    /// The default namespace of this test.
    pub ns: String,
    pub child: Mutex<Option<Child>>,
    pub pid: i32,
    /// Shim sockets that existed before this containerd started.
    sockets_before: BTreeSet<String>,
    log_level: String,
}

/// How [`Containerd::launch`] starts a private containerd.
pub struct Launch {
    pub line: Line,
    /// Its directory (root, state, socket, config, log, PATH dir, fifo dir).
    pub dir: PathBuf,
    /// The Keel binary to serve io.containerd.keel.v1.
    pub shim: PathBuf,
    /// The io.containerd.runc.v2 shim (default: the line's own).
    pub runc_shim: Option<PathBuf>,
    /// The namespace it creates for the caller.
    pub ns: String,
    /// containerd's --log-level (the tests' "debug" also turns on the shims' debug lines).
    pub log_level: &'static str,
}

/// Where `detach` leaves a containerd's description.
pub const LAB_FILE: &str = "lab.json";

/// The description `detach` left in `dir` (see [`Containerd::description`]).
pub fn described(dir: &Path) -> Result<serde_json::Value, String> {
    let file = dir.join(LAB_FILE);
    let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e} (keel-lab up first)", file.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))
}

/// Where shims put their sockets (not configurable per containerd).
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

fn shim_socket_names() -> BTreeSet<String> {
    fs::read_dir(SHIM_SOCKET_DIR).map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
}

impl Containerd {
    /// Starts a private containerd of `line` under /tmp/keel-it, with the
    /// freshly built shim, and waits until it answers `ctr version`.
    pub fn start(line: Line) -> Containerd {
        Containerd::start_with_shim(line, built_shim())
    }

    /// [`Containerd::start`] serving io.containerd.keel.v1 with the binary at
    /// `shim` (the upgrade tests replace it under running shims).
    pub fn start_with_shim(line: Line, shim: PathBuf) -> Containerd {
        let n = next_n();
        let dir = PathBuf::from(IT_BASE).join(format!(
            "{}-{}-{}",
            match line {
                Line::V16 => "c16",
                Line::V2 => "c2",
            },
            std::process::id(),
            n
        ));
        let _ = fs::remove_dir_all(&dir);
        Containerd::launch(&Launch {
            line,
            dir,
            shim,
            runc_shim: None,
            ns: format!("kit-{}-{}", std::process::id(), n),
            log_level: "debug",
        })
    }

    /// Starts a private containerd as `how` says (its directory must not
    /// hold another one) and waits until it answers `ctr version`.
    pub fn launch(how: &Launch) -> Containerd {
        let line = how.line;
        line.check_installed();
        let shim = &how.shim;
        assert!(shim.exists(), "the shim under test {} is missing", shim.display());

        let sockets_before = shim_socket_names();
        let dir = how.dir.clone();
        fs::create_dir_all(&dir).expect("create private containerd dir");
        let root = dir.join("root");
        let state = dir.join("state");
        let bin_dir = dir.join("bin");
        let fifo_dir = dir.join("fifo");
        for d in [&root, &state, &bin_dir, &fifo_dir] {
            fs::create_dir_all(d).unwrap();
        }
        // The shim under test, and the runc-v2 shim matching this containerd.
        std::os::unix::fs::symlink(shim, bin_dir.join("containerd-shim-keel-v1")).unwrap();
        let runc_shim = how.runc_shim.clone().unwrap_or_else(|| line.runc_shim());
        std::os::unix::fs::symlink(runc_shim, bin_dir.join("containerd-shim-runc-v2")).unwrap();
        let config = dir.join("config.toml");
        fs::write(&config, config_toml()).unwrap();
        let sock = dir.join("containerd.sock");
        let log = dir.join("containerd.log");
        let logf = File::create(&log).unwrap();
        let ns = how.ns.clone();
        let mut cd = Containerd {
            line,
            dir,
            root,
            state,
            sock,
            log,
            fifo_dir,
            bin_dir,
            ns,
            child: Mutex::new(None),
            pid: 0,
            sockets_before,
            log_level: how.log_level.to_string(),
        };
        cd.spawn_daemon(logf);
        cd.wait_answering("start", Duration::from_secs(20));
        cd.ctr_ok(&["namespaces", "create", &cd.ns.clone()]);
        cd
    }

    /// What a process other than the one that launched this containerd needs
    /// to use it and clean it up ([`Containerd::reattach`]).
    pub fn description(&self) -> serde_json::Value {
        serde_json::json!({
            "line": self.line.name(),
            "dir": self.dir, "sock": self.sock, "ns": self.ns, "pid": self.pid,
            "containerd": self.line.containerd(), "ctr": self.line.ctr(),
            "bin_dir": self.bin_dir, "fifo_dir": self.fifo_dir, "log": self.log,
            "path": self.daemon_path(), "sockets_before": self.sockets_before,
        })
    }

    /// Leaves the daemon running when this handle goes (for `keel-lab up`):
    /// its description is written to `<dir>/lab.json` for a later reattach.
    pub fn detach(self) -> serde_json::Value {
        let d = self.description();
        fs::write(self.dir.join(LAB_FILE), d.to_string()).expect("write lab.json");
        // The child handle is dropped without a wait: the daemon is reparented.
        self.child.lock().unwrap().take();
        std::mem::forget(self);
        d
    }

    /// The containerd a `detach` left in `dir`; dropping it cleans up as a
    /// test's does (tasks, containers, daemon, shims, runtime state, mounts, dir).
    pub fn reattach(dir: &Path) -> Result<Containerd, String> {
        let file = dir.join(LAB_FILE);
        let v = described(dir)?;
        let s = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| format!("{}: no {k:?}", file.display()));
        let line = Line::parse(&s("line")?).ok_or_else(|| format!("{}: unknown line", file.display()))?;
        let dir = PathBuf::from(s("dir")?);
        Ok(Containerd {
            line,
            root: dir.join("root"),
            state: dir.join("state"),
            bin_dir: dir.join("bin"),
            fifo_dir: dir.join("fifo"),
            sock: PathBuf::from(s("sock")?),
            log: PathBuf::from(s("log")?),
            ns: s("ns")?,
            child: Mutex::new(None),
            pid: v["pid"].as_i64().unwrap_or(0) as i32,
            sockets_before: v["sockets_before"].as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            log_level: "info".into(),
            dir,
        })
    }

    /// containerd's PATH: the shims under test first.
    fn daemon_path(&self) -> String {
        format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.bin_dir.display())
    }

    /// Spawns the daemon with this config, root, state, socket and PATH
    /// (the shims under test first), its output going to `logf`.
    pub fn spawn_daemon(&mut self, logf: File) {
        let path = self.daemon_path();
        let mut cmd = Command::new(self.line.containerd());
        cmd.arg("--config")
            .arg(self.dir.join("config.toml"))
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--address")
            .arg(&self.sock)
            .arg("--log-level")
            .arg(&self.log_level)
            .env("PATH", &path)
            .envs(robust::extra_env())
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .current_dir(&self.dir);
        // Its own process group: a Ctrl-C on `cargo test` does not hit it first.
        cmd.process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.line.containerd().display()));
        self.pid = child.id() as i32;
        *self.child.lock().unwrap() = Some(child);
    }

    /// Waits until the daemon answers `ctr version`; panics, with its log, if
    /// it exits or stays silent for `limit` (`during` names the occasion).
    pub fn wait_answering(&self, during: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.lock().unwrap().as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{} exited ({st}) during {during}; log:\n{}", self.line.name(), self.log_tail(60));
            }
            if self.sock.exists() && self.ctr_raw(None, &["version"], None, Duration::from_secs(5)).ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!("{} did not answer within {}s of its {during}; log:\n{}", self.line.name(), limit.as_secs(), self.log_tail(60));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last `n` lines of containerd's log (shim logs are in it too: `-debug`).
    pub fn log_tail(&self, n: usize) -> String {
        tail_lines(&self.log, n).unwrap_or_default()
    }

    /// A container id unique in this process (and so across tests).
    pub fn id(&self, prefix: &str) -> String {
        unique(prefix)
    }

    /// Runs ctr against this containerd in namespace `ns` (`None`: no `-n`).
    pub fn ctr_raw(&self, ns: Option<&str>, args: &[&str], stdin: Option<Vec<u8>>, timeout: Duration) -> Output {
        run_cmd(self.ctr_in(ns, args), stdin, timeout)
    }

    /// `ctr -n <test namespace> args...` with the default deadline.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_raw(Some(&self.ns), args, None, CTR_TIMEOUT)
    }

    pub fn ctr_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        self.ctr_raw(Some(&self.ns), args, None, timeout)
    }

    /// ctr with `input` on its stdin (closed after it).
    pub fn ctr_stdin(&self, args: &[&str], input: &[u8], timeout: Duration) -> Output {
        self.ctr_raw(Some(&self.ns), args, Some(input.to_vec()), timeout)
    }

    /// ctr with stdin fed by `feed` (see [`Input::Feed`]).
    pub fn ctr_feed(&self, args: &[&str], feed: Box<dyn FnOnce(std::process::ChildStdin) + Send>, timeout: Duration) -> Output {
        let mut cmd = Command::new(self.line.ctr());
        cmd.arg("--address")
            .arg(&self.sock)
            .arg("--namespace")
            .arg(&self.ns)
            .args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE");
        run_cmd_input(cmd, Input::Feed(feed), timeout)
    }

    /// `ctr task ls` as (id, pid, status); empty if ctr fails (a waiter then
    /// times out and shows the listing).
    pub fn task_list(&self) -> Vec<(String, u32, String)> {
        self.ctr(&["tasks", "ls"])
            .out()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3).then(|| (f[0].to_string(), f[1].parse().unwrap_or(0), f[2].to_string()))
            })
            .collect()
    }

    /// The arguments of `ctr tasks exec` (fifos in this daemon's fifo dir).
    pub fn exec_args(&self, flags: &[&str], id: &str, exec_id: &str, cmd: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "tasks".into(),
            "exec".into(),
            "--fifo-dir".into(),
            self.fifo_dir.to_string_lossy().into_owned(),
            "--exec-id".into(),
            exec_id.into(),
        ];
        a.extend(flags.iter().map(|s| s.to_string()));
        a.push(id.into());
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    /// ctr that must succeed; returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        if !o.ok() {
            panic!("ctr failed: {}\n--- containerd log tail ---\n{}", o.describe(), self.log_tail(30));
        }
        o.out()
    }

    /// ctr in the background (e.g. `ctr events`), stdout piped, stderr to a file.
    pub fn ctr_spawn(&self, ns: Option<&str>, args: &[&str]) -> Child {
        let mut cmd = self.ctr_in(ns, args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        cmd.spawn().expect("spawn ctr")
    }

    /// A ctr command to run under a pty (see [`PtyProc`]).
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        self.ctr_in(Some(&self.ns), args)
    }

    /// ctr against this containerd in namespace `ns` (`None`: no `-n`), deaf
    /// to the caller's CONTAINERD_* environment.
    fn ctr_in(&self, ns: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.line.ctr());
        cmd.arg("--address").arg(&self.sock);
        if let Some(ns) = ns {
            cmd.arg("--namespace").arg(ns);
        }
        cmd.args(args).env_remove("CONTAINERD_ADDRESS").env_remove("CONTAINERD_NAMESPACE").env_remove("CONTAINERD_SNAPSHOTTER");
        cmd
    }

    /// Starts `ctr events` and waits until it demonstrably receives events.
    pub fn events(&self) -> EventsWatcher {
        let w = EventsWatcher::new(self.ctr_spawn(None, &["events"]));
        // Subscription is asynchronous: poke a namespace label until the
        // watcher sees the update, so nothing after this call is missed.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let token = unique("sync");
            let label = format!("keel.test/events-sync={token}");
            self.ctr_raw(None, &["namespaces", "label", &self.ns, &label], None, Duration::from_secs(10));
            let ns = self.ns.clone();
            let seen = w.wait_for(
                |e| {
                    e.topic == "/namespaces/update"
                        && e.payload["name"] == ns.as_str()
                        && e.payload["labels"]["keel.test/events-sync"] == token.as_str()
                },
                Duration::from_millis(300),
            );
            if seen.is_some() {
                return w;
            }
            if Instant::now() >= deadline {
                panic!("`ctr events` saw no event within 15s; got: {:?}", w.lines());
            }
        }
    }

    /// Bundle directory containerd gives the shim for `id` in namespace `ns`.
    pub fn bundle_dir(&self, ns: &str, id: &str) -> PathBuf {
        self.state.join("io.containerd.runtime.v2.task").join(ns).join(id)
    }

    /// The shim's ttrpc socket for a task, and the task API version, read from
    /// the bundle: `address` (1.6) or `bootstrap.json` (2.x).
    pub fn shim_address(&self, ns: &str, id: &str) -> Option<(PathBuf, u32)> {
        shim_address_in(&self.bundle_dir(ns, id))
    }

    /// Live shim processes that belong to this containerd: argv[0] or exe is a
    /// `containerd-shim*`, and its command line or environment names this
    /// containerd's socket (shims get `-address <sock>` and `TTRPC_ADDRESS=<sock>.ttrpc`).
    pub fn shim_procs(&self) -> Vec<ProcInfo> {
        let needle = self.sock.to_string_lossy().into_owned();
        procs()
            .into_iter()
            .filter(|p| p.pid != self.pid && p.is_shim() && (p.cmdline.contains(&needle) || p.environ.contains(&needle)))
            .collect()
    }

    /// Shim processes of this containerd started for container `id`.
    pub fn shim_procs_for(&self, id: &str) -> Vec<ProcInfo> {
        self.shim_procs().into_iter().filter(|p| p.args.windows(2).any(|w| w[0] == "-id" && w[1] == id)).collect()
    }

    /// Mount points at or below this containerd's private directory.
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_below(&self.dir)
    }

    fn namespaces(&self) -> Vec<String> {
        let o = self.ctr_raw(None, &["namespaces", "ls", "-q"], None, Duration::from_secs(10));
        o.out().lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
    }

    /// Directories that name the namespaces of this containerd (even when it is gone).
    fn namespaces_on_disk(&self) -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        set.insert(self.ns.clone());
        for base in [self.state.join("io.containerd.runtime.v2.task"), self.root.join("io.containerd.runtime.v2.task")] {
            if let Ok(rd) = fs::read_dir(base) {
                for e in rd.flatten() {
                    set.insert(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        set
    }

    /// Socket files of every shim known from the bundles.
    fn shim_sockets(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.state.join("io.containerd.runtime.v2.task")) {
            for ns in rd.flatten() {
                if let Ok(rd2) = fs::read_dir(ns.path()) {
                    for b in rd2.flatten() {
                        if let Some((s, _)) = shim_address_in(&b.path()) {
                            out.push(s);
                        }
                    }
                }
            }
        }
        out
    }

    fn cleanup(&self) {
        let quick = Duration::from_secs(10);
        let shim_sockets = self.shim_sockets();
        let mut namespaces = self.namespaces_on_disk();
        let alive = match self.child.lock().unwrap().as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => self.pid > 0 && pid_alive(self.pid),
        };
        if alive {
            for ns in self.namespaces() {
                namespaces.insert(ns.clone());
                let tasks = self.ctr_raw(Some(&ns), &["tasks", "ls", "-q"], None, quick);
                for id in tasks.out().lines().map(str::trim).filter(|l| !l.is_empty()) {
                    self.ctr_raw(Some(&ns), &["tasks", "kill", "-a", "-s", "SIGKILL", id], None, quick);
                    let o = self.ctr_raw(Some(&ns), &["tasks", "delete", "-f", id], None, quick);
                    if !o.ok() {
                        eprintln!("cleanup: {}", o.describe());
                    }
                }
                let cs = self.ctr_raw(Some(&ns), &["containers", "ls", "-q"], None, quick);
                for id in cs.out().lines().map(str::trim).filter(|l| !l.is_empty()) {
                    let o = self.ctr_raw(Some(&ns), &["containers", "delete", id], None, quick);
                    if !o.ok() {
                        eprintln!("cleanup: {}", o.describe());
                    }
                }
            }
        }
        // Stop containerd: SIGTERM, then SIGKILL.
        if let Some(mut child) = self.child.lock().unwrap().take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let (_, timed_out) = wait_deadline(&mut child, Instant::now() + Duration::from_secs(5));
            if timed_out {
                eprintln!("cleanup: containerd ignored SIGTERM for 5s, killed");
            }
        } else if alive {
            // A reattached daemon is not our child: signal it and watch its pid.
            // SAFETY: signalling the pid its description names, checked alive above.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            if poll(Duration::from_secs(5), || (!pid_alive(self.pid)).then_some(())).is_none() {
                eprintln!("cleanup: containerd ignored SIGTERM for 5s, killed");
                // SAFETY: as above.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
            }
        }
        // Leftover shims of this containerd.
        let leftovers = self.shim_procs();
        let mut shim_sockets = shim_sockets;
        for p in &leftovers {
            eprintln!("cleanup: killing leftover shim {} {}", p.pid, p.cmdline);
            // SAFETY: plain kill of a pid we just read.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
            // A killed shim cannot unlink its socket; its bundle may be gone.
            if let Some(w) = p.args.windows(2).find(|w| w[0] == "-socket") {
                shim_sockets.push(PathBuf::from(w[1].trim_start_matches("unix://")));
            }
        }
        if !leftovers.is_empty() {
            poll(Duration::from_secs(3), || leftovers.iter().all(|p| !pid_alive(p.pid)).then_some(()));
        }
        // Leftover runtime state and container processes in our namespaces.
        for ns in &namespaces {
            let nsdir = Path::new(RUNC_DEFAULT_ROOT).join(ns);
            if let Ok(rd) = fs::read_dir(&nsdir) {
                for e in rd.flatten() {
                    let id = e.file_name().to_string_lossy().into_owned();
                    eprintln!("cleanup: leftover runtime state {}", e.path().display());
                    let mut cmd = Command::new("/usr/sbin/runc");
                    cmd.arg("--root").arg(&nsdir).args(["delete", "--force", &id]);
                    let o = run_cmd(cmd, None, quick);
                    if !o.ok() {
                        eprintln!("cleanup: {}", o.describe());
                    }
                }
                let _ = fs::remove_dir(&nsdir); // only when empty
            }
            // runc leaves the namespace's parent cgroup (cgroup v1: one per controller).
            if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
                for c in rd.flatten() {
                    let d = c.path().join(ns);
                    if d.is_dir() {
                        if let Ok(rd2) = fs::read_dir(&d) {
                            for sub in rd2.flatten() {
                                if sub.path().is_dir() {
                                    let _ = fs::remove_dir(sub.path());
                                }
                            }
                        }
                        let _ = fs::remove_dir(&d);
                    }
                }
            }
        }
        for s in shim_sockets {
            if fs::symlink_metadata(&s).map(|m| m.file_type().is_socket()).unwrap_or(false) {
                let _ = fs::remove_file(&s);
            }
        }
        // Sockets of shims that died without unlinking them (runc-v2 leaves
        // its own after a crash or as a pod's last shim). Only ones created
        // while this containerd ran, and only dead ones: a live listener is
        // another test's shim.
        for name in shim_socket_names().difference(&self.sockets_before) {
            let path = Path::new(SHIM_SOCKET_DIR).join(name);
            let dead = matches!(
                std::os::unix::net::UnixStream::connect(&path),
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED)
            );
            if dead {
                let _ = fs::remove_file(&path);
            }
        }
        // Unmount anything below our directory, deepest (latest) first.
        let mut ms = self.mounts();
        ms.reverse();
        for m in &ms {
            eprintln!("cleanup: unmounting leftover mount {}", m.display());
            umount_detach(m);
        }
        let left = self.mounts();
        if !left.is_empty() {
            eprintln!("cleanup: mounts remain below {}, keeping it: {left:?}", self.dir.display());
            return;
        }
        if std::env::var_os("KEEL_KEEP_TEST_DIRS").is_some() && thread::panicking() {
            eprintln!("cleanup: keeping {} (KEEL_KEEP_TEST_DIRS)", self.dir.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup: cannot remove {}: {e}", self.dir.display());
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("=== {} log tail ({}) ===\n{}\n=== end of log ===", self.line.name(), self.log.display(), self.log_tail(80));
        }
        self.cleanup();
    }
}

fn shim_address_in(bundle: &Path) -> Option<(PathBuf, u32)> {
    let strip = |a: &str| -> PathBuf { PathBuf::from(a.trim().trim_start_matches("unix://")) };
    if let Ok(s) = fs::read_to_string(bundle.join("bootstrap.json")) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
            if let Some(a) = v["address"].as_str() {
                return Some((strip(a), v["version"].as_u64().unwrap_or(2) as u32));
            }
        }
    }
    let a = fs::read_to_string(bundle.join("address")).ok()?;
    if a.trim().is_empty() {
        return None;
    }
    Some((strip(&a), 2))
}
