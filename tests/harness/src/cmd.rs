//! Running commands with a deadline.

use super::*;

/// What a command did.
#[derive(Debug, Clone)]
pub struct Output {
    /// What was run, for messages.
    pub what: String,
    /// Exit code, `None` when killed by a signal (or by the deadline).
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The deadline passed and the command was killed.
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// A readable account for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "`{}` -> code {:?}{} after {:?}\n--- stdout ({} bytes) ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.code,
            if self.timed_out { " (TIMED OUT, killed)" } else { "" },
            self.elapsed,
            self.stdout.len(),
            truncate(&self.out(), 4000),
            truncate(&self.err(), 4000)
        )
    }
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... [{} more bytes]", &s[..cut], s.len() - cut)
}

pub fn describe_cmd(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Waits for `child` until `deadline`; kills it (SIGKILL) when the deadline passes.
/// Returns the status and whether it timed out.
pub fn wait_deadline(child: &mut Child, deadline: Instant) -> (Option<ExitStatus>, bool) {
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return (Some(st), false),
            Ok(None) => {}
            Err(_) => return (None, false),
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            let st = child.wait().ok();
            return (st, true);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// What a command gets on its stdin.
pub enum Input {
    /// /dev/null
    Null,
    /// These bytes, then EOF.
    Bytes(Vec<u8>),
    /// A pipe handed to this function (on its own thread); EOF when it drops it.
    Feed(Box<dyn FnOnce(std::process::ChildStdin) + Send>),
}

/// Runs `cmd` with stdout/stderr captured, `stdin` fed (then closed) when given,
/// and a deadline after which the command is killed.
pub fn run_cmd(cmd: Command, stdin: Option<Vec<u8>>, timeout: Duration) -> Output {
    run_cmd_input(cmd, stdin.map(Input::Bytes).unwrap_or(Input::Null), timeout)
}

/// [`run_cmd`] with any [`Input`].
pub fn run_cmd_input(mut cmd: Command, input: Input, timeout: Duration) -> Output {
    let what = describe_cmd(&cmd);
    cmd.stdin(if matches!(input, Input::Null) { Stdio::null() } else { Stdio::piped() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
    match input {
        Input::Null => {}
        Input::Bytes(data) => {
            let mut w = child.stdin.take().unwrap();
            thread::spawn(move || {
                let _ = w.write_all(&data);
                // dropping `w` closes the pipe: the reader sees EOF
            });
        }
        Input::Feed(f) => {
            let w = child.stdin.take().unwrap();
            thread::spawn(move || f(w));
        }
    }
    let rx_out = read_all_bg(child.stdout.take().unwrap());
    let rx_err = read_all_bg(child.stderr.take().unwrap());
    let (status, timed_out) = wait_deadline(&mut child, start + timeout);
    // A grandchild could keep a pipe open: do not wait for it forever.
    let grace = Duration::from_secs(5);
    let stdout = rx_out.recv_timeout(grace).unwrap_or_default();
    let stderr = rx_err.recv_timeout(grace).unwrap_or_default();
    Output { what, code: status.and_then(|s| s.code()), stdout, stderr, timed_out, elapsed: start.elapsed() }
}

fn read_all_bg<R: Read + Send + 'static>(mut r: R) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Polls `f` every 20 ms until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `&str`s of owned arguments, for the ctr helpers.
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Deadline of one `ctr run` / `ctr task exec`.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a task may take to reach a status.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(15);
