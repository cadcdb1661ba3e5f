//! containerd-shim-keel-v1: the containerd runtime shim for `io.containerd.keel.v1`.
//! The binary only dispatches the action containerd asked for.

use keel::{args, error, manager, serve};

fn main() {
    let flags = match args::parse(std::env::args().skip(1)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-keel-v1: {e}");
            std::process::exit(2);
        }
    };
    if flags.version {
        println!(
            "containerd-shim-keel-v1:\n  Version: {}\n  Revision: {}\n  Runtime: io.containerd.keel.v1",
            env!("CARGO_PKG_VERSION"),
            keel::upgrade::revision()
        );
        return;
    }
    if flags.info {
        if let Err(e) = manager::info() {
            eprintln!("containerd-shim-keel-v1: {e}");
            std::process::exit(1);
        }
        return;
    }
    let res = match flags.action.as_str() {
        "start" => manager::start(&flags),
        "delete" => manager::delete(&flags),
        "upgrade" => keel::upgrade::upgrade_action(&flags),
        "upgrade-check" => keel::upgrade::check_action(),
        "" => serve::run(&flags),
        other => Err(error::Error::InvalidArgument(format!("unknown action {other:?} (want start, delete, upgrade or upgrade-check)"))),
    };
    if let Err(e) = res {
        eprintln!("containerd-shim-keel-v1: {e}");
        std::process::exit(1);
    }
}
