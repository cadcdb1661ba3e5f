//! One test scenario: a private containerd, the runtime type under test, and
//! the ctr calls every suite makes (run, exec, task ls/ps, status waits).
//! Suites add their own methods in `impl Scenario` blocks of their own; the
//! robustness suites know it as `robust::Rig`.

use super::*;

pub struct Scenario {
    pub cd: Containerd,
    pub line: Line,
    pub rt: &'static str,
    pub tag: String,
    /// The crun variant: runtime options (a TOML file selecting crun) for every `ctr run`.
    pub runtime_config: Option<PathBuf>,
}

/// The `ctr: ...` error line of a failed ctr call.
pub fn ctr_error(o: &Output) -> String {
    o.err().lines().rev().find(|l| l.starts_with("ctr: ")).unwrap_or("").trim().to_string()
}

impl Scenario {
    pub fn new(line: Line, rt: &'static str) -> Scenario {
        let rootfs = rootfs(); // build before containerd starts
        assert!(rootfs.join("bin/sh").exists());
        let cd = Containerd::start(line);
        let crun = production::crun_variant();
        let runtime_config = crun.then(|| production::crun_options(&cd));
        let tag = format!("[{}{} {}]", rt, if crun { "+crun" } else { "" }, line.name());
        Scenario { cd, line, rt, tag, runtime_config }
    }

    /// Keel, plain runc, with `env` added to containerd's environment.
    pub fn with_env(line: Line, env: &[(&str, &str)]) -> Scenario {
        assert!(rootfs().join("bin/sh").exists());
        let cd = robust::start_with_env(line, env);
        Scenario { cd, line, rt: KEEL_V1, tag: format!("[{} {}]", KEEL_V1, line.name()), runtime_config: None }
    }

    /// Runtime type `rt`, plain runc, no crun variant.
    pub fn for_runtime(line: Line, rt: &'static str) -> Scenario {
        let mut r = Scenario::with_env(line, &[]);
        r.rt = rt;
        r.tag = format!("[{} {}]", rt, line.name());
        r
    }

    pub fn keel(&self) -> bool {
        self.rt == KEEL_V1
    }

    /// `ctr run` arguments: the runtime, private fifos, PATH, `flags`, then
    /// `--rootfs DIR` (a boolean flag: it must come last) or the image.
    pub fn run_args(&self, flags: &[&str], image: Option<&str>, id: &str, cmd: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into(), "--runtime".into(), self.rt.into()];
        if let Some(p) = &self.runtime_config {
            a.push("--runtime-config-path".into());
            a.push(p.to_string_lossy().into_owned());
        }
        a.extend(["--fifo-dir".into(), self.cd.fifo_dir.to_string_lossy().into_owned(), "--env".into(), CONTAINER_PATH.into()]);
        a.extend(flags.iter().map(|s| s.to_string()));
        match image {
            Some(img) => a.push(img.into()),
            None => {
                a.push("--rootfs".into());
                a.push(rootfs().to_string_lossy().into_owned());
            }
        }
        a.push(id.into());
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    pub fn run(&self, flags: &[&str], id: &str, cmd: &[&str]) -> Output {
        self.cd.ctr_timeout(&strs(&self.run_args(flags, None, id, cmd)), RUN_TIMEOUT)
    }

    pub fn run_stdin(&self, flags: &[&str], id: &str, cmd: &[&str], input: &[u8]) -> Output {
        self.cd.ctr_stdin(&strs(&self.run_args(flags, None, id, cmd)), input, RUN_TIMEOUT)
    }

    /// `ctr run -d` (plus `flags`), must succeed (the process may already have exited).
    pub fn run_d(&self, flags: &[&str], id: &str, cmd: &[&str]) {
        let mut f = vec!["-d"];
        f.extend_from_slice(flags);
        let o = self.run(&f, id, cmd);
        assert!(o.ok(), "{} run -d {id} failed: {}\n{}", self.tag, o.describe(), self.cd.log_tail(30));
    }

    /// A new container (id from `prefix`) idling in `sleep`, RUNNING when this returns.
    pub fn sleeper(&self, prefix: &str) -> String {
        let id = self.cd.id(prefix);
        self.run_d(&[], &id, &["sleep", "1000000"]);
        self.wait_status(&id, "RUNNING");
        id
    }

    /// `ctr run -d` from the busybox rootfs (or `image`), must succeed; returns
    /// the init pid once the task is RUNNING.
    pub fn run_d_from(&self, flags: &[&str], image: Option<&str>, id: &str, cmd: &[&str]) -> u32 {
        let mut f = vec!["-d"];
        f.extend_from_slice(flags);
        let o = self.cd.ctr_timeout(&strs(&self.run_args(&f, image, id, cmd)), RUN_TIMEOUT);
        assert!(o.ok(), "{} run -d failed: {}\n{}", self.tag, o.describe(), self.cd.log_tail(30));
        self.wait_status(id, "RUNNING")
    }

    pub fn exec_args(&self, flags: &[&str], id: &str, exec_id: &str, cmd: &[&str]) -> Vec<String> {
        self.cd.exec_args(flags, id, exec_id, cmd)
    }

    pub fn exec(&self, flags: &[&str], id: &str, exec_id: &str, cmd: &[&str]) -> Output {
        self.cd.ctr_timeout(&strs(&self.exec_args(flags, id, exec_id, cmd)), RUN_TIMEOUT)
    }

    /// `ctr task ls` as (id, pid, status).
    pub fn tasks(&self) -> Vec<(String, u32, String)> {
        self.cd.task_list()
    }

    pub fn task(&self, id: &str) -> Option<(u32, String)> {
        self.tasks().into_iter().find(|t| t.0 == id).map(|t| (t.1, t.2))
    }

    pub fn wait_status(&self, id: &str, status: &str) -> u32 {
        poll(STATE_TIMEOUT, || self.task(id).filter(|t| t.1 == status).map(|t| t.0)).unwrap_or_else(|| {
            panic!("{} task {id} not {status} within {STATE_TIMEOUT:?}; task ls:\n{}", self.tag, self.cd.ctr_ok(&["tasks", "ls"]))
        })
    }

    /// `ctr task ps` as (pid, INFO column).
    pub fn ps(&self, id: &str) -> Vec<(u32, String)> {
        let out = self.cd.ctr_ok(&["tasks", "ps", id]);
        out.lines()
            .skip(1)
            .filter_map(|l| {
                let l = l.trim();
                let (pid, info) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
                pid.parse().ok().map(|p| (p, info.trim().to_string()))
            })
            .collect()
    }

    /// The gRPC code of a failed ctr call as far as ctr shows it: ctr 1.6 ends
    /// its message with the code's name, ctr 2.x does not (then only `what` is checked).
    pub fn assert_code(&self, o: &Output, what: &str, code_name: &str) {
        let last = ctr_error(o);
        assert!(last.contains(what), "{} error should mention {what:?}: {}", self.tag, o.describe());
        if self.line == Line::V16 {
            assert!(
                last.ends_with(&format!(": {code_name}")),
                "{} error should carry gRPC code {code_name:?} (ctr 1.6 appends it): {last:?}",
                self.tag
            );
        }
    }

    /// SIGKILL, STOPPED, task and container deleted: each step must succeed.
    pub fn kill_delete_ok(&self, id: &str) {
        self.cd.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
        self.wait_status(id, "STOPPED");
        self.delete_ok(id);
    }

    /// SIGKILL, wait STOPPED, delete task and container (best effort, bounded:
    /// for clean-up after faults, where a step may already be done).
    pub fn kill_delete(&self, id: &str) {
        self.cd.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
        poll(STATE_TIMEOUT, || self.task(id).filter(|t| t.1 != "STOPPED").is_none().then_some(()));
        self.cd.ctr(&["tasks", "delete", "-f", id]);
        self.cd.ctr(&["containers", "delete", id]);
    }

    /// Deletes a stopped task and its container; both must succeed.
    pub fn delete_ok(&self, id: &str) {
        let o = self.cd.ctr(&["tasks", "delete", id]);
        assert!(o.ok(), "{} task delete {id}: {}", self.tag, o.describe());
        self.cd.ctr_ok(&["containers", "delete", id]);
    }

    /// An exec with output and exit code still works in `id`.
    pub fn assert_exec_works(&self, id: &str, why: &str) {
        let eid = unique("alive");
        let o = self.exec(&[], id, &eid, &["sh", "-c", "echo still-alive; exit 3"]);
        assert!(o.code == Some(3) && o.out() == "still-alive\n", "{} after {why}: exec in {id} does not work: {}", self.tag, o.describe());
    }

    /// A file holding `toml`, for `ctr run --runtime-config-path`.
    pub fn write_runtime_config(&self, name: &str, toml: &str) -> PathBuf {
        let p = self.cd.dir.join(format!("{name}.toml"));
        fs::write(&p, toml).unwrap();
        p
    }

    /// The task shim of container `id` over ttrpc.
    pub fn shim(&self, id: &str) -> robust::Shim {
        robust::Shim::of(&self.cd, id)
    }
}

/// The crun variant must really have run crun.
impl Drop for Scenario {
    fn drop(&mut self) {
        if self.runtime_config.is_some() && !std::thread::panicking() {
            production::assert_crun_created(&self.cd, &self.tag);
        }
    }
}
