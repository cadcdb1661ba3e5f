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
//!
//! scripts/bench.py uses it so that a benchmark runs on the same daemon, and
//! is cleaned up by the same code, as the tests.

use std::path::PathBuf;
use std::process::ExitCode;

use keel_harness::{Containerd, Launch, Line};

fn usage() -> ExitCode {
    eprintln!("usage: keel-lab up --line 1.6|2 --dir DIR --shim PATH [--runc-shim PATH] [--ns NS] [--log-level L]\n       keel-lab down --dir DIR");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(action) = args.first() else { return usage() };
    let mut line = None;
    let (mut dir, mut shim, mut runc_shim, mut ns, mut level) = (None, None, None, None, "info".to_string());
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            eprintln!("keel-lab: {flag} needs a value");
            return usage();
        };
        match flag.as_str() {
            "--line" => match Line::parse(value) {
                Some(l) => line = Some(l),
                None => {
                    eprintln!("keel-lab: unknown containerd line {value:?} (1.6 or 2)");
                    return usage();
                }
            },
            "--dir" => dir = Some(PathBuf::from(value)),
            "--shim" => shim = Some(PathBuf::from(value)),
            "--runc-shim" => runc_shim = Some(PathBuf::from(value)),
            "--ns" => ns = Some(value.clone()),
            "--log-level" => level = value.clone(),
            _ => {
                eprintln!("keel-lab: unknown flag {flag}");
                return usage();
            }
        }
    }
    let Some(dir) = dir else {
        eprintln!("keel-lab: --dir is required");
        return usage();
    };
    match action.as_str() {
        "up" => {
            let (Some(line), Some(shim)) = (line, shim) else {
                eprintln!("keel-lab up: --line and --shim are required");
                return usage();
            };
            if dir.join(keel_harness::LAB_FILE).exists() {
                eprintln!("keel-lab up: {} already holds a containerd (keel-lab down first)", dir.display());
                return ExitCode::FAILURE;
            }
            let log_level: &'static str = Box::leak(level.into_boxed_str());
            let ns = ns.unwrap_or_else(|| format!("keel-lab-{}", std::process::id()));
            // launch panics with the daemon's log when it does not come up.
            let cd = Containerd::launch(&Launch { line, dir, shim, runc_shim, ns, log_level });
            println!("{}", cd.detach());
            ExitCode::SUCCESS
        }
        "down" => match Containerd::reattach(&dir) {
            Ok(cd) => {
                drop(cd);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keel-lab down: {e}");
                ExitCode::FAILURE
            }
        },
        _ => usage(),
    }
}
