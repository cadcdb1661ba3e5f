//! keel-lab: the integration tests' private containerd, for scripts.
//!
//!   keel-lab up --line 1.6|2 --dir DIR --shim PATH [--runc-shim PATH] [--ns NS] [--log-level L]
//!       starts containerd with its root, state, socket, config, log and the
//!       shims' PATH dir under DIR, exactly as a test's `Containerd::start`
//!       does; prints its description (JSON: sock, ns, ctr, fifo_dir, pid,
//!       path, ...) and leaves it running.
//!   keel-lab down --dir DIR
//!       what a test's containerd does when dropped: kills and deletes every
//!       task and container, stops containerd, kills leftover shims, removes
//!       runtime state, cgroups, dead shim sockets and mounts, then DIR.
//!   keel-lab probe --dir DIR --ids A,B,.. [--period S] [--duration S]
//!       exec probes (Exec, Start, Wait, DeleteProcess of /bin/true through
//!       containerd's API, as kubelet's ExecSync) into each container every
//!       period for the duration; prints {"ms": [latencies], "errors": [...]}.
//!   keel-lab execs --dir DIR --id A --count N [--first K]
//!       N such probes into one container, one after another.
//!   keel-lab get --dir DIR --ids A,B,.. [--rounds R]
//!       Tasks.Get of each (containerd asks the shim for State), timed.
//!
//! scripts/bench.py uses it so that a benchmark runs on the same daemon, and
//! is cleaned up by the same code, as the tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use keel_harness::{load, Containerd, Launch, Line, LAB_FILE};

const USAGE: &str = "usage: keel-lab up --line 1.6|2 --dir DIR --shim PATH [--runc-shim PATH] [--ns NS] [--log-level L]
       keel-lab down --dir DIR
       keel-lab probe --dir DIR --ids A,B,.. [--period SECS] [--duration SECS]
       keel-lab execs --dir DIR --id A --count N [--first K]
       keel-lab get --dir DIR --ids A,B,.. [--rounds R]";

fn fail(msg: String) -> ExitCode {
    eprintln!("keel-lab: {msg}\n{USAGE}");
    ExitCode::from(2)
}

/// The socket and namespace `up` wrote to DIR/lab.json.
fn described(dir: &Path) -> Result<(PathBuf, String), String> {
    let v = keel_harness::described(dir)?;
    match (v["sock"].as_str(), v["ns"].as_str()) {
        (Some(s), Some(n)) => Ok((PathBuf::from(s), n.to_string())),
        _ => Err(format!("{}: no sock or ns", dir.join(LAB_FILE).display())),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(action) = args.first().cloned() else { return fail("no action".into()) };
    let mut flags: HashMap<String, String> = HashMap::new();
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let Some(name) = flag.strip_prefix("--") else { return fail(format!("unexpected argument {flag:?}")) };
        let Some(value) = it.next() else { return fail(format!("{flag} needs a value")) };
        flags.insert(name.to_string(), value.clone());
    }
    let known: &[&str] = match action.as_str() {
        "up" => &["line", "dir", "shim", "runc-shim", "ns", "log-level"],
        "down" => &["dir"],
        "probe" => &["dir", "ids", "period", "duration"],
        "execs" => &["dir", "id", "count", "first"],
        "get" => &["dir", "ids", "rounds"],
        _ => return fail(format!("unknown action {action:?}")),
    };
    if let Some(bad) = flags.keys().find(|k| !known.contains(&k.as_str())) {
        return fail(format!("{action} takes no --{bad}"));
    }
    let Some(dir) = flags.get("dir").map(PathBuf::from) else { return fail("--dir is required".into()) };
    let number = |name: &str, default: f64| -> Result<f64, String> {
        match flags.get(name) {
            None => Ok(default),
            Some(v) => v.parse::<f64>().ok().filter(|n| *n >= 0.0).ok_or_else(|| format!("--{name} {v:?} is not a number")),
        }
    };
    let ids = || -> Vec<String> {
        flags.get("ids").map(|s| s.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect()).unwrap_or_default()
    };
    let probe_args = vec!["/bin/true".to_string()];
    let result: Result<serde_json::Value, String> = match action.as_str() {
        "up" => {
            let Some(line) = flags.get("line").map(|l| Line::parse(l).ok_or(l)) else { return fail("--line is required".into()) };
            let line = match line {
                Ok(l) => l,
                Err(l) => return fail(format!("unknown containerd line {l:?} (1.6 or 2)")),
            };
            let Some(shim) = flags.get("shim").map(PathBuf::from) else { return fail("--shim is required".into()) };
            if dir.join(LAB_FILE).exists() {
                eprintln!("keel-lab up: {} already holds a containerd (keel-lab down first)", dir.display());
                return ExitCode::FAILURE;
            }
            let log_level: &'static str = Box::leak(flags.get("log-level").cloned().unwrap_or_else(|| "info".into()).into_boxed_str());
            let ns = flags.get("ns").cloned().unwrap_or_else(|| format!("keel-lab-{}", std::process::id()));
            let runc_shim = flags.get("runc-shim").map(PathBuf::from);
            // launch panics with the daemon's log when it does not come up.
            let cd = Containerd::launch(&Launch { line, dir, shim, runc_shim, ns, log_level });
            Ok(cd.detach())
        }
        "down" => Containerd::reattach(&dir).map(|cd| {
            drop(cd);
            serde_json::json!({"down": true})
        }),
        "probe" => described(&dir).and_then(|(sock, ns)| {
            let (period, duration) = (number("period", 2.0)?, number("duration", 60.0)?);
            let ids = ids();
            if ids.is_empty() {
                return Err("--ids names no container".into());
            }
            let out = runtime().block_on(load::probe_loop(
                &sock,
                &ns,
                &ids,
                &probe_args,
                Duration::from_secs_f64(period.max(0.01)),
                Duration::from_secs_f64(duration),
            ));
            Ok(load::to_json(&out))
        }),
        "execs" => described(&dir).and_then(|(sock, ns)| {
            let id = flags.get("id").cloned().ok_or("--id is required")?;
            let (count, first) = (number("count", 1.0)? as u64, number("first", 1.0)? as u64);
            Ok(load::to_json(&runtime().block_on(load::exec_series(&sock, &ns, &id, &probe_args, count, first))))
        }),
        "get" => described(&dir).and_then(|(sock, ns)| {
            let rounds = number("rounds", 5.0)? as usize;
            Ok(load::to_json(&runtime().block_on(load::get_series(&sock, &ns, &ids(), rounds))))
        }),
        _ => unreachable!("actions are checked above"),
    };
    match result {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keel-lab {action}: {e}");
            ExitCode::FAILURE
        }
    }
}
