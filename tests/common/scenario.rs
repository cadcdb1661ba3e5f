//! One test scenario: a private containerd, the runtime type under test, and
//! the ctr calls every suite makes (run, exec, task ls/ps, status waits).
//! Suites add their own methods in `impl Scenario` blocks of their own.

use super::*;

pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
pub const STATE_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Scenario {
    pub cd: Containerd,
    pub line: Line,
    pub rt: &'static str,
    pub tag: String,
    /// The crun variant: runtime options (a TOML file selecting crun) for every `ctr run`.
    pub runtime_config: Option<PathBuf>,
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
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

    /// `ctr run -d`, must succeed (the process may already have exited).
    pub fn run_d(&self, id: &str, cmd: &[&str]) {
        let o = self.cd.ctr_timeout(&strs(&self.run_args(&["-d"], None, id, cmd)), RUN_TIMEOUT);
        assert!(o.ok(), "{} run -d failed: {}\n{}", self.tag, o.describe(), self.cd.log_tail(30));
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

    pub fn kill_delete(&self, id: &str) {
        self.cd.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
        self.wait_status(id, "STOPPED");
        let o = self.cd.ctr(&["tasks", "delete", id]);
        assert!(o.ok(), "{} task delete {id}: {}", self.tag, o.describe());
        self.cd.ctr_ok(&["containers", "delete", id]);
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
