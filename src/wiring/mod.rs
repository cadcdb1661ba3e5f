//! `keel-containerd`: registers the `keel` runtime with an existing
//! containerd, and takes it out again byte for byte.
//!
//! - A version 3 config (containerd 2.x) gets a drop-in, `conf.d/keel.toml`
//!   next to it, named in its `imports`: 2.x merges imported plugin tables
//!   key by key.
//! - A version 2 config (containerd 1.6/1.7, which 2.x still reads) is edited
//!   in place: 1.x replaces a whole plugin table with the imported one, so a
//!   drop-in would drop the user's CRI settings (Debian's own `cni` lines).
//! - No config: a version 2 one is written, which both lines read.
//!
//! Every change is recorded in `<config>.keel` (what was written, with its
//! SHA-256) and the original kept in `<config>.keel-orig`; `unwire` restores
//! it only if nothing was edited since. containerd is asked to load the
//! result (`containerd config dump`); if it cannot, the change is undone.

pub mod config;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use toml_edit::{value, Array, DocumentMut, Item, Table};

use config::{HANDLER, RUNTIME_TYPE};

#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not valid TOML, so it was left as it is:\n{message}", path.display())]
    Unparsable { path: PathBuf, message: String },
    #[error("{} has {found}; keel-containerd edits version 2 (containerd 1.6/1.7) and version 3 (2.x) configs: migrate it first (`containerd config migrate` on 2.x)", path.display())]
    Version { path: PathBuf, found: String },
    #[error("{}: {message}; nothing was changed", path.display())]
    Shape { path: PathBuf, message: String },
    #[error("{} changed since keel-containerd wired it (edited by hand?), so it was not touched; its original is {}", path.display(), backup.display())]
    Changed { path: PathBuf, backup: PathBuf },
    #[error("containerd ({binary}) does not load the wired config, so it was put back as it was:\n{message}")]
    Rejected { binary: String, message: String },
    #[error("{}: a wiring record that cannot be read: {message}", path.display())]
    Record { path: PathBuf, message: String },
}

type Result<T> = std::result::Result<T, WiringError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WiringError + '_ {
    move |source| WiringError::Io { path: path.into(), source }
}

pub struct WireOptions {
    pub config: PathBuf,
    /// Keel's runtime options file (TOML), handed over as `ConfigPath`.
    pub options: Option<PathBuf>,
    /// The containerd binary that checks the result; `None` skips the check.
    pub containerd: Option<String>,
}

/// What wiring did, for the user.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Wired {
        changed: Vec<PathBuf>,
        backup: Option<PathBuf>,
    },
    AlreadyWired,
    /// The config had a `keel` runtime of the user's own.
    AlreadyThere,
    Unwired {
        restored: Vec<PathBuf>,
        removed: Vec<PathBuf>,
    },
    NotWired,
}

pub fn record_path(config: &Path) -> PathBuf {
    suffixed(config, ".keel")
}

pub fn backup_path(config: &Path) -> PathBuf {
    suffixed(config, ".keel-orig")
}

fn suffixed(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Writes `data` to `path` through a temporary file and a rename, with `mode`,
/// so a reader (or a crash) never sees half a config.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = suffixed(path, ".keel-tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(io(&tmp))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// One file wiring wrote: its path, what it held before (None: it did not
/// exist) and the SHA-256 of what wiring left there.
struct Written {
    path: PathBuf,
    before: Option<(Vec<u8>, u32)>,
    after: Vec<u8>,
}

pub fn wire(opts: &WireOptions) -> Result<Outcome> {
    let cfg = &opts.config;
    let record = record_path(cfg);
    if record.exists() {
        return Ok(Outcome::AlreadyWired);
    }
    let original = read_if_exists(cfg)?;
    let mode = fs::metadata(cfg).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
    let text = match &original {
        Some(b) => String::from_utf8(b.clone()).map_err(|e| WiringError::Unparsable { path: cfg.clone(), message: e.to_string() })?,
        None => String::new(),
    };
    let mut doc = config::parse(cfg, &text)?;
    let blank = config::is_blank(&doc);
    let version = if blank { 2 } else { config::version(cfg, &doc)? };
    if config::keel_runtime(&doc, version).is_some() {
        return Ok(Outcome::AlreadyThere);
    }
    let shape = |message: String| WiringError::Shape { path: cfg.clone(), message };
    let mut written = Vec::new();
    if version == 3 {
        let dropin = cfg.parent().unwrap_or(Path::new("/")).join("conf.d").join("keel.toml");
        if let Some(existing) = read_if_exists(&dropin)? {
            let d = config::parse(&dropin, &String::from_utf8_lossy(&existing))?;
            if config::keel_runtime(&d, 3).is_some() {
                return Ok(Outcome::AlreadyThere);
            }
            return Err(shape(format!("{} exists and is not Keel's", dropin.display())));
        }
        let body = config::dropin(opts.options.as_deref()).map_err(shape)?;
        written.push(Written { path: dropin.clone(), before: None, after: body.into_bytes() });
        if !config::imported(&config::imports(cfg, &doc), &dropin) {
            config::add_import(&mut doc, &dropin).map_err(shape)?;
            written.push(Written { path: cfg.clone(), before: original.clone().map(|b| (b, mode)), after: doc.to_string().into_bytes() });
        }
    } else {
        if blank {
            // Before any comment the file had, so it stays a version 2 config.
            let mut fresh = DocumentMut::new();
            fresh.insert("version", value(2));
            doc = format!("{fresh}{doc}").parse().map_err(|e: toml_edit::TomlError| shape(e.to_string()))?;
        }
        config::add_keel_runtime(&mut doc, version, opts.options.as_deref()).map_err(shape)?;
        written.push(Written { path: cfg.clone(), before: original.clone().map(|b| (b, mode)), after: doc.to_string().into_bytes() });
    }
    apply(cfg, &written)?;
    if let Some(bin) = &opts.containerd {
        if let Err(e) = check_loads(bin, cfg) {
            // Put back what was just written, without asking whether it changed.
            if let Ok(Some(record)) = read_record(&record_path(cfg)) {
                let _ = restore(cfg, &record);
            }
            return Err(e);
        }
    }
    let backup = written.iter().any(|w| w.path == *cfg && w.before.is_some()).then(|| backup_path(cfg));
    Ok(Outcome::Wired { changed: written.iter().map(|w| w.path.clone()).collect(), backup })
}

/// Writes the backup first, then the files, then the record: at every step
/// what is on disk can be put back.
fn apply(cfg: &Path, written: &[Written]) -> Result<()> {
    let mut rec = DocumentMut::new();
    let mut files = toml_edit::ArrayOfTables::new();
    for w in written {
        let mut t = Table::new();
        t.insert("path", value(w.path.to_string_lossy().as_ref()));
        t.insert("sha256", value(sha256(&w.after)));
        if let Some((bytes, mode)) = &w.before {
            // Only the main config is ever edited in place.
            let backup = backup_path(&w.path);
            write_atomic(&backup, bytes, *mode)?;
            t.insert("backup", value(backup.to_string_lossy().as_ref()));
            t.insert("mode", value(i64::from(*mode)));
        }
        files.push(t);
    }
    rec.insert("file", Item::ArrayOfTables(files));
    let mut created_dirs = Vec::new();
    for w in written {
        if let Some(dir) = w.path.parent().filter(|d| !d.exists()) {
            fs::create_dir_all(dir).map_err(io(dir))?;
            created_dirs.push(dir.to_path_buf());
        }
        let mode = w.before.as_ref().map(|b| b.1).unwrap_or(0o644);
        write_atomic(&w.path, &w.after, mode)?;
    }
    let dirs: Array = created_dirs.iter().map(|d| d.to_string_lossy().into_owned()).collect();
    rec.insert("created_dirs", value(dirs));
    let text = format!("# keel-containerd's record of what `wire` changed; `unwire` reads it.\n{rec}");
    write_atomic(&record_path(cfg), text.as_bytes(), 0o644)
}

/// Asks `bin` to load `cfg` with everything it imports; the merged result
/// must hold the keel runtime.
pub fn check_loads(bin: &str, cfg: &Path) -> Result<()> {
    let reject = |message: String| WiringError::Rejected { binary: bin.into(), message };
    let out =
        Command::new(bin).arg("--config").arg(cfg).args(["config", "dump"]).output().map_err(|e| reject(format!("running it: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(reject(format!("{}\n{}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    if !dump_has_keel(&stdout) {
        return Err(reject(format!(
            "its `config dump` has no {HANDLER} runtime of type {RUNTIME_TYPE} (a containerd older than the config's version ignores it)"
        )));
    }
    Ok(())
}

/// Whether a `containerd config dump` holds the keel runtime (both lines'
/// dumps are TOML; 2.x's is version 3).
pub fn dump_has_keel(dump: &str) -> bool {
    let Ok(doc) = dump.parse::<DocumentMut>() else { return false };
    [2, 3]
        .into_iter()
        .any(|v| config::keel_runtime(&doc, v).and_then(|t| t.get("runtime_type")).and_then(Item::as_str) == Some(RUNTIME_TYPE))
}

struct RecordedFile {
    path: PathBuf,
    sha256: String,
    backup: Option<(PathBuf, u32)>,
}

/// What `wire` wrote: its files, and the directories it made for them.
struct Record {
    files: Vec<RecordedFile>,
    dirs: Vec<PathBuf>,
}

fn read_record(path: &Path) -> Result<Option<Record>> {
    let Some(bytes) = read_if_exists(path)? else { return Ok(None) };
    let bad = |message: &str| WiringError::Record { path: path.into(), message: message.into() };
    let doc: DocumentMut = String::from_utf8_lossy(&bytes).parse().map_err(|e: toml_edit::TomlError| bad(&e.to_string()))?;
    let mut files = Vec::new();
    for t in doc.get("file").and_then(Item::as_array_of_tables).ok_or_else(|| bad("no [[file]] entries"))? {
        let s = |k: &str| t.get(k).and_then(Item::as_str).map(str::to_string);
        let backup = match (s("backup"), t.get("mode").and_then(Item::as_integer)) {
            (Some(b), Some(m)) => Some((PathBuf::from(b), u32::try_from(m).map_err(|_| bad("bad mode"))?)),
            (None, _) => None,
            _ => return Err(bad("a backup without its mode")),
        };
        files.push(RecordedFile {
            path: s("path").ok_or_else(|| bad("a file without a path"))?.into(),
            sha256: s("sha256").ok_or_else(|| bad("a file without sha256"))?,
            backup,
        });
    }
    let dirs = doc
        .get("created_dirs")
        .and_then(Item::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str()).map(PathBuf::from).collect())
        .unwrap_or_default();
    Ok(Some(Record { files, dirs }))
}

/// Takes back what [`wire`] did: each file it wrote goes back to its
/// original bytes (or away, if wire made it), unless it changed since.
pub fn unwire(cfg: &Path) -> Result<Outcome> {
    let record = record_path(cfg);
    let Some(rec) = read_record(&record)? else { return Ok(Outcome::NotWired) };
    // Check everything before touching anything.
    for f in &rec.files {
        let now = read_if_exists(&f.path)?;
        if now.as_deref().map(sha256).as_deref() != Some(f.sha256.as_str()) {
            return Err(WiringError::Changed {
                path: f.path.clone(),
                backup: f.backup.as_ref().map(|b| b.0.clone()).unwrap_or_else(|| PathBuf::from("(none: wire created it)")),
            });
        }
        if let Some((b, _)) = &f.backup {
            fs::metadata(b).map_err(io(b))?;
        }
    }
    let (restored, removed) = restore(cfg, &rec)?;
    Ok(Outcome::Unwired { restored, removed })
}

/// Puts every recorded file back (its backup, or away if wire made it),
/// removes the directories wire made if they are empty, then the record.
/// Returns (restored, removed).
fn restore(cfg: &Path, rec: &Record) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut restored, mut removed) = (Vec::new(), Vec::new());
    for f in rec.files.iter().rev() {
        match &f.backup {
            Some((b, mode)) => {
                let bytes = fs::read(b).map_err(io(b))?;
                write_atomic(&f.path, &bytes, *mode)?;
                fs::remove_file(b).map_err(io(b))?;
                restored.push(f.path.clone());
            }
            None => {
                fs::remove_file(&f.path).map_err(io(&f.path))?;
                removed.push(f.path.clone());
            }
        }
    }
    for d in rec.dirs.iter().rev() {
        // Only if empty: the user may have put files of their own there since.
        let _ = fs::remove_dir(d);
    }
    let record = record_path(cfg);
    fs::remove_file(&record).map_err(io(&record))?;
    Ok((restored, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("keel-wiring-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    fn opts(cfg: &Path) -> WireOptions {
        WireOptions { config: cfg.into(), options: None, containerd: None }
    }

    #[test]
    fn version_2_wires_in_place_and_unwires_byte_for_byte() {
        let d = scratch("v2");
        let cfg = d.join("config.toml");
        let original = "version = 2\n# mine\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"x/pause\"\n";
        fs::write(&cfg, original).expect("write");
        fs::set_permissions(&cfg, fs::Permissions::from_mode(0o600)).expect("chmod");
        let out = wire(&opts(&cfg)).expect("wire");
        assert_eq!(out, Outcome::Wired { changed: vec![cfg.clone()], backup: Some(backup_path(&cfg)) });
        let wired = fs::read_to_string(&cfg).expect("read");
        assert!(wired.starts_with(original) && wired.contains(RUNTIME_TYPE), "{wired}");
        assert_eq!(fs::metadata(&cfg).expect("meta").permissions().mode() & 0o777, 0o600);
        assert_eq!(wire(&opts(&cfg)).expect("again"), Outcome::AlreadyWired);
        assert_eq!(fs::read_to_string(&cfg).expect("read"), wired, "a second wire changes nothing");
        assert!(matches!(unwire(&cfg).expect("unwire"), Outcome::Unwired { .. }));
        assert_eq!(fs::read_to_string(&cfg).expect("read"), original);
        assert_eq!(fs::metadata(&cfg).expect("meta").permissions().mode() & 0o777, 0o600);
        assert!(!record_path(&cfg).exists() && !backup_path(&cfg).exists());
        assert_eq!(unwire(&cfg).expect("unwire again"), Outcome::NotWired);
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn version_3_gets_a_dropin_and_an_import() {
        let d = scratch("v3");
        let cfg = d.join("config.toml");
        let original = "version = 3\n\n[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = 'x/pause'\n";
        fs::write(&cfg, original).expect("write");
        let dropin = d.join("conf.d/keel.toml");
        assert!(matches!(wire(&opts(&cfg)).expect("wire"), Outcome::Wired { .. }));
        assert!(fs::read_to_string(&dropin).expect("dropin").contains(RUNTIME_TYPE));
        assert!(fs::read_to_string(&cfg).expect("cfg").contains(&format!("imports = [\"{}\"]", dropin.display())));
        unwire(&cfg).expect("unwire");
        assert_eq!(fs::read_to_string(&cfg).expect("cfg"), original);
        assert!(!d.join("conf.d").exists(), "the conf.d wire made is gone");
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_glob_import_that_covers_the_dropin_leaves_the_config_alone() {
        let d = scratch("glob");
        let cfg = d.join("config.toml");
        let original = "version = 3\nimports = [\"conf.d/*.toml\"]\n";
        fs::write(&cfg, original).expect("write");
        let out = wire(&opts(&cfg)).expect("wire");
        assert_eq!(out, Outcome::Wired { changed: vec![d.join("conf.d/keel.toml")], backup: None });
        assert_eq!(fs::read_to_string(&cfg).expect("cfg"), original);
        unwire(&cfg).expect("unwire");
        assert!(!d.join("conf.d/keel.toml").exists());
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn no_config_gets_a_version_2_one_and_unwire_removes_it() {
        let d = scratch("none");
        let cfg = d.join("config.toml");
        wire(&WireOptions { options: Some("/etc/keel/keel.toml".into()), ..opts(&cfg) }).expect("wire");
        let text = fs::read_to_string(&cfg).expect("cfg");
        assert!(text.starts_with("version = 2\n") && text.contains("ConfigPath = \"/etc/keel/keel.toml\""), "{text}");
        unwire(&cfg).expect("unwire");
        assert!(!cfg.exists());
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn bad_configs_are_refused_untouched() {
        let d = scratch("bad");
        let cfg = d.join("config.toml");
        for (text, want) in [
            ("version = 2\n[plugins\n", "not valid TOML"),
            ("[plugins.cri]\nx = 1\n", "no version"),
            ("version = 2\nimports = 3\n[plugins]\n", ""),
        ] {
            fs::write(&cfg, text).expect("write");
            let r = wire(&opts(&cfg));
            if want.is_empty() {
                // A version 2 config needs no import; `imports` is not read.
                assert!(r.is_ok(), "{r:?}");
                unwire(&cfg).expect("unwire");
            } else {
                let e = r.expect_err(text);
                assert!(e.to_string().contains(want) && e.to_string().contains("config.toml"), "{e}");
            }
            assert_eq!(fs::read_to_string(&cfg).expect("read"), text);
            assert!(!record_path(&cfg).exists() && !backup_path(&cfg).exists());
        }
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn unwire_refuses_a_config_edited_since() {
        let d = scratch("edited");
        let cfg = d.join("config.toml");
        fs::write(&cfg, "version = 2\n").expect("write");
        wire(&opts(&cfg)).expect("wire");
        let mut edited = fs::read_to_string(&cfg).expect("read");
        edited.push_str("# a later edit\n");
        fs::write(&cfg, &edited).expect("edit");
        let e = unwire(&cfg).expect_err("changed");
        assert!(matches!(e, WiringError::Changed { .. }) && e.to_string().contains(".keel-orig"), "{e}");
        assert_eq!(fs::read_to_string(&cfg).expect("read"), edited, "the user's edit stays");
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_config_that_containerd_rejects_is_put_back() {
        let d = scratch("reject");
        let cfg = d.join("config.toml");
        fs::write(&cfg, "version = 2\n").expect("write");
        // `false` stands in for a containerd that cannot load the result.
        let e = wire(&WireOptions { containerd: Some("false".into()), ..opts(&cfg) }).expect_err("rejected");
        assert!(matches!(e, WiringError::Rejected { .. }), "{e}");
        assert_eq!(fs::read_to_string(&cfg).expect("read"), "version = 2\n");
        assert!(!record_path(&cfg).exists() && !backup_path(&cfg).exists());
        fs::write(&cfg, "version = 3\n").expect("write");
        wire(&WireOptions { containerd: Some("false".into()), ..opts(&cfg) }).expect_err("rejected");
        assert_eq!(fs::read_to_string(&cfg).expect("read"), "version = 3\n");
        assert!(!d.join("conf.d").exists(), "the drop-in's directory goes too");
        fs::remove_dir_all(&d).ok();
    }
}
