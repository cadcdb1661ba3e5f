//! keel-containerd: registers Keel's `keel` runtime handler with containerd
//! (`wire`), takes it out again byte for byte (`unwire`), or tells whether it
//! is there (`status`). See `keel::wiring` for how each config version is done.

use std::path::PathBuf;

use keel::wiring::{self, Outcome, WireOptions};

const USAGE: &str = "usage: keel-containerd wire|unwire|status [--config PATH] [--options KEEL_TOML] [--containerd BIN | --no-check]

  wire     register the CRI runtime handler \"keel\" (io.containerd.keel.v1)
  unwire   put back what wire changed, byte for byte
  status   say whether the config (with its imports) has the handler

  --config PATH       containerd's config (default /etc/containerd/config.toml)
  --options FILE      Keel's runtime options (TOML) for the handler's ConfigPath
  --containerd BIN    the containerd that must load the result (default: containerd)
  --no-check          do not ask containerd to load the result";

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(cmd) = args.next() else { fail(2, USAGE) };
    let mut config = PathBuf::from("/etc/containerd/config.toml");
    let (mut options, mut containerd) = (None, Some("containerd".to_string()));
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| fail(2, &format!("{name} needs a value\n{USAGE}")));
        match a.as_str() {
            "--config" => config = value("--config").into(),
            "--options" => options = Some(PathBuf::from(value("--options"))),
            "--containerd" => containerd = Some(value("--containerd")),
            "--no-check" => containerd = None,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => fail(2, &format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let shown = config.display().to_string();
    let result = match cmd.as_str() {
        "wire" => wiring::wire(&WireOptions { config: config.clone(), options, containerd: containerd.clone() }),
        "unwire" => wiring::unwire(&config),
        "status" => return status(&config, containerd.as_deref()),
        "-h" | "--help" => {
            println!("{USAGE}");
            return;
        }
        other => fail(2, &format!("unknown command {other:?}\n{USAGE}")),
    };
    match result {
        Ok(Outcome::Wired { changed, backup }) => {
            for p in changed {
                println!("wrote {}", p.display());
            }
            if let Some(b) = backup {
                println!("kept the original as {}", b.display());
            }
            if let Some(bin) = containerd {
                println!("checked: `{bin} --config {shown} config dump` has the keel runtime");
            }
            println!("restart containerd to use it (systemctl restart containerd); `keel-containerd unwire` undoes this");
        }
        Ok(Outcome::AlreadyWired) => println!("{shown} is already wired for Keel; nothing changed"),
        Ok(Outcome::AlreadyThere) => println!("{shown} already has a keel runtime of its own; nothing changed"),
        Ok(Outcome::Unwired { restored, removed }) => {
            for p in restored {
                println!("restored {}", p.display());
            }
            for p in removed {
                println!("removed {}", p.display());
            }
            println!("restart containerd to drop the keel runtime");
        }
        Ok(Outcome::NotWired) => println!("{shown} was not wired by keel-containerd; nothing to undo"),
        Err(e) => fail(1, &e.to_string()),
    }
}

fn status(config: &std::path::Path, containerd: Option<&str>) {
    let wired = wiring::record_path(config).exists();
    println!("{}: {}", config.display(), if wired { "wired by keel-containerd" } else { "not wired by keel-containerd" });
    if let Some(bin) = containerd {
        match wiring::check_loads(bin, config) {
            Ok(()) => println!("containerd ({bin}) loads it with the keel runtime"),
            Err(e) => fail(1, &e.to_string()),
        }
    }
}

fn fail(code: i32, message: &str) -> ! {
    eprintln!("keel-containerd: {message}");
    std::process::exit(code)
}
