//! Properties of Keel's decoders of untrusted input, for the libFuzzer target
//! (`fuzz_targets/decoders.rs`) and for the deterministic run in
//! `tests/badinput.rs` (which includes this file as a module).
//!
//! `check(data)`: the first byte picks a decoder, the rest is its input.
//! Every decoder must return (never panic) and:
//! - `tasklist::validate_id` accepts exactly containerd's identifier rule
//!   (`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`, at most 76 bytes) and names a
//!   rejected id in its message;
//! - `stdio::parse_target` gives absolute paths only, `""` is /dev/null, and a
//!   rejected URI is named in the message;
//! - `options::from_toml` accepts no key outside runc-v2's option names;
//! - `options::decode` names the type of options it does not know;
//! - `resources::validate` rejects memory/cpu values no runtime accepts;
//! - `mount::parse_options` keeps every non-flag option, in order, as data.

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use keel::stdio::Target;

const KNOWN_TOML_KEYS: &[&str] = &[
    "BinaryName",
    "Root",
    "SystemdCgroup",
    "NoPivotRoot",
    "NoNewKeyring",
    "ShimCgroup",
    "IoUid",
    "IoGid",
    "CriuImagePath",
    "CriuWorkPath",
    "TypeUrl",
    "ConfigPath",
    "ConfigBody",
    "CriuPath",
];

/// containerd's identifier rule, written out by hand.
pub fn containerd_id_ok(id: &str) -> bool {
    if id.is_empty() || id.len() > 76 {
        return false;
    }
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    let sep = |c: u8| matches!(c, b'.' | b'_' | b'-');
    let b = id.as_bytes();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    for w in b.windows(2) {
        if sep(w[0]) && !alnum(w[1]) {
            return false;
        }
    }
    b.iter().all(|c| alnum(*c) || sep(*c))
}

fn any(type_url: &str, value: &[u8]) -> Any {
    Any { type_url: type_url.to_string(), value: value.to_vec(), ..Default::default() }
}

/// `runtimeoptions.v1.Options` with `body` as ConfigBody.
fn cri_body(body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x1a];
    let mut n = body.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            v.push(b);
            break;
        }
        v.push(b | 0x80);
    }
    v.extend_from_slice(body);
    v
}

pub fn check(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match sel % 10 {
        0 => {
            // runc's Options message, raw bytes.
            let _ = keel::options::decode(Some(&any("containerd.runc.v1.Options", rest)));
        }
        1 => {
            // CRI options, raw bytes (config_path / config_body / junk).
            let _ = keel::options::decode(Some(&any("runtimeoptions.v1.Options", rest)));
        }
        2 => {
            // CRI options with the input as TOML body.
            let r = keel::options::decode(Some(&any("runtimeoptions.v1.Options", &cri_body(rest))));
            if let (Ok(_), Ok(table)) = (&r, text.parse::<toml_table::Table>()) {
                for k in table.keys() {
                    assert!(KNOWN_TOML_KEYS.contains(&k.as_str()), "unknown TOML key {k:?} accepted");
                }
            }
        }
        3 => {
            // TOML straight into from_toml.
            if let Ok(table) = text.parse::<toml_table::Table>() {
                if keel::options::from_toml(&text).is_ok() {
                    for k in table.keys() {
                        assert!(KNOWN_TOML_KEYS.contains(&k.as_str()), "unknown TOML key {k:?} accepted");
                    }
                }
            } else {
                let _ = keel::options::from_toml(&text);
            }
        }
        4 => {
            // An options type Keel does not know is named in the error.
            let url = text.lines().next().unwrap_or("").to_string();
            let name = url.rsplit('/').next().unwrap_or("");
            if !url.is_empty() && name != "containerd.runc.v1.Options" && name != "runtimeoptions.v1.Options" {
                let e = keel::options::decode(Some(&any(&url, b""))).expect_err("unknown options type accepted");
                assert!(e.to_string().contains(&format!("{url:?}")), "error does not name {url:?}: {e}");
            }
            let _ = keel::options::checkpoint_options(Some(&any(&url, rest)));
        }
        5 => match keel::stdio::parse_target(&text) {
            Ok(Target::Null) => assert!(text.is_empty(), "{text:?} decoded as /dev/null"),
            Ok(Target::Fifo(p)) | Ok(Target::File(p)) | Ok(Target::Binary { path: p, .. }) => {
                assert!(p.is_absolute(), "{text:?} decoded to a relative path {p:?}")
            }
            Err(e) => assert!(e.to_string().contains(&format!("{text:?}")), "error does not name {text:?}: {e}"),
        },
        6 => {
            let ok = keel::tasklist::validate_id("container id", &text);
            assert_eq!(ok.is_ok(), containerd_id_ok(&text), "validate_id({text:?}) = {ok:?}");
            if let Err(e) = ok {
                assert!(e.to_string().contains(&format!("{text:?}")), "error does not name {text:?}: {e}");
            }
        }
        7 => {
            if let Ok(r) = serde_json::from_slice::<oci_spec::runtime::LinuxResources>(rest) {
                if keel::resources::validate(&r).is_ok() {
                    if let Some(m) = r.memory() {
                        for v in [m.limit(), m.reservation(), m.swap()].into_iter().flatten() {
                            assert!(v == -1 || v > 0, "memory value {v} accepted");
                        }
                    }
                    if let Some(q) = r.cpu().as_ref().and_then(|c| c.quota()) {
                        assert!(q == -1 || q > 0, "cpu.quota {q} accepted");
                    }
                }
            }
        }
        8 => {
            let opts: Vec<String> = text.split(',').map(str::to_string).collect();
            let (_, data) = keel::mount::parse_options(&opts);
            let flags = [
                "ro",
                "rw",
                "bind",
                "rbind",
                "nosuid",
                "suid",
                "nodev",
                "dev",
                "noexec",
                "exec",
                "sync",
                "dirsync",
                "remount",
                "mand",
                "noatime",
                "nodiratime",
                "relatime",
                "strictatime",
                "defaults",
                "async",
                "atime",
                "diratime",
                "norelatime",
                "nomand",
            ];
            let want: Vec<&str> = opts.iter().map(String::as_str).filter(|o| !flags.contains(o)).collect();
            assert_eq!(data, want.join(","), "mount data for {opts:?}");
        }
        _ => {
            let args: Vec<String> = text.split('\0').map(str::to_string).collect();
            let _ = keel::args::parse(args);
        }
    }
}

/// The oracle's own reading of a TOML document's top-level keys, independent
/// of Keel's: only plain `key = value` lines (anything else is skipped).
mod toml_table {
    pub struct Table(Vec<String>);

    impl Table {
        pub fn keys(&self) -> impl Iterator<Item = &String> {
            self.0.iter()
        }
    }

    impl std::str::FromStr for Table {
        type Err = ();
        fn from_str(s: &str) -> Result<Table, ()> {
            // Multi-line strings, arrays and inline tables could hide
            // `key =` lines inside values: such documents are skipped.
            if ["\"\"\"", "\'\'\'", "[", "{", "\\"].iter().any(|m| s.contains(m)) {
                return Err(());
            }
            let mut keys = Vec::new();
            for line in s.lines() {
                let l = line.trim();
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                let (k, _) = l.split_once('=').ok_or(())?;
                let k = k.trim();
                if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                    return Err(());
                }
                keys.push(k.to_string());
            }
            Ok(Table(keys))
        }
    }
}
