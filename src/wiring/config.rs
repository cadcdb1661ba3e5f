//! Edits of containerd's config.toml, kept to what wiring needs: its version,
//! its `imports`, and the CRI runtime table of the `keel` handler. toml_edit
//! keeps the user's comments, order and layout in everything it does not touch.

use std::path::{Path, PathBuf};

use toml_edit::{value, Array, DocumentMut, Item, Table};

use super::WiringError;

/// The CRI handler name (Kubernetes' RuntimeClass `handler: keel`).
pub const HANDLER: &str = "keel";
pub const RUNTIME_TYPE: &str = "io.containerd.keel.v1";

/// Where the CRI plugin keeps its runtimes, per config version.
fn runtimes_path(version: i64) -> [&'static str; 4] {
    if version >= 3 {
        ["plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"]
    } else {
        ["plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"]
    }
}

pub fn parse(path: &Path, text: &str) -> Result<DocumentMut, WiringError> {
    text.parse::<DocumentMut>().map_err(|e| WiringError::Unparsable { path: path.into(), message: e.to_string().trim().to_string() })
}

/// A file with no key at all (empty, or comments only) says nothing.
pub fn is_blank(doc: &DocumentMut) -> bool {
    doc.as_table().is_empty()
}

/// The config's `version`: 2 (containerd 1.x, and 2.x by migration) or 3 (2.x).
pub fn version(path: &Path, doc: &DocumentMut) -> Result<i64, WiringError> {
    match doc.get("version") {
        None => Err(WiringError::Version { path: path.into(), found: "no version (containerd reads that as version 1)".into() }),
        Some(v) => match v.as_integer() {
            Some(n @ (2 | 3)) => Ok(n),
            _ => Err(WiringError::Version { path: path.into(), found: format!("version = {}", v.to_string().trim()) }),
        },
    }
}

/// The `keel` runtime table, if the config has one.
pub fn keel_runtime(doc: &DocumentMut, version: i64) -> Option<&Table> {
    let mut t = doc.as_table();
    for k in runtimes_path(version) {
        t = t.get(k)?.as_table()?;
    }
    t.get(HANDLER)?.as_table()
}

/// Adds the `keel` runtime table (with its options file, if any) below the
/// CRI plugin's runtimes, creating the tables on the way as implicit ones so
/// no empty headers appear.
pub fn add_keel_runtime(doc: &mut DocumentMut, version: i64, options: Option<&Path>) -> Result<(), String> {
    let end = last_position(doc.as_table()) + 1;
    let mut t = doc.as_table_mut();
    let mut at = Vec::new();
    for k in runtimes_path(version) {
        at.push(k);
        if !t.contains_key(k) {
            let mut new = Table::new();
            new.set_implicit(true);
            t.insert(k, Item::Table(new));
        }
        t = match t.get_mut(k).and_then(Item::as_table_mut) {
            Some(next) => next,
            None => return Err(format!("`{}` is not a table", at.join("."))),
        };
    }
    let mut keel = Table::new();
    keel.insert("runtime_type", value(RUNTIME_TYPE));
    keel.decor_mut().set_prefix("\n# Added by `keel-containerd wire`; `keel-containerd unwire` takes it out.\n");
    // After every table the file had, so the user's part reads as before.
    keel.set_position(Some(end));
    if let Some(p) = options {
        // The CRI plugin hands runtimes other than runc-v2 their options as
        // a file path; Keel reads it as TOML (see packaging/keel.toml).
        let mut o = Table::new();
        o.insert("ConfigPath", value(p.to_string_lossy().as_ref()));
        o.set_position(Some(end + 1));
        keel.insert("options", Item::Table(o));
    }
    t.insert(HANDLER, Item::Table(keel));
    Ok(())
}

/// One past the last position of any table in `t`.
fn last_position(t: &Table) -> isize {
    t.iter().filter_map(|(_, item)| item.as_table()).map(|sub| sub.position().unwrap_or(0).max(last_position(sub))).max().unwrap_or(0)
}

/// The config's `imports`, as absolute paths (containerd resolves relative
/// ones against the config's directory).
pub fn imports(path: &Path, doc: &DocumentMut) -> Vec<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    doc.get("imports")
        .and_then(Item::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str()).map(|s| dir.join(s)).collect())
        .unwrap_or_default()
}

/// Whether one of `imports` (each a glob, as containerd reads it) names `file`.
pub fn imported(imports: &[PathBuf], file: &Path) -> bool {
    imports.iter().any(|p| {
        let p = p.to_string_lossy();
        p == file.to_string_lossy() || glob::Pattern::new(&p).is_ok_and(|g| g.matches_path(file))
    })
}

/// Appends `file` to the config's `imports`, making the key if needed.
pub fn add_import(doc: &mut DocumentMut, file: &Path) -> Result<(), String> {
    let f = file.to_string_lossy().into_owned();
    match doc.get_mut("imports") {
        None => {
            let mut a = Array::new();
            a.push(f);
            doc.insert("imports", value(a));
            Ok(())
        }
        Some(item) => match item.as_array_mut() {
            Some(a) => {
                a.push(f);
                Ok(())
            }
            None => Err("`imports` is not an array".into()),
        },
    }
}

/// The drop-in Keel writes for a version 3 config.
pub fn dropin(options: Option<&Path>) -> Result<String, String> {
    let mut doc = DocumentMut::new();
    doc.insert("version", value(3));
    add_keel_runtime(&mut doc, 3, options)?;
    if let Some(t) = doc
        .get_mut("plugins")
        .and_then(|p| p.get_mut("io.containerd.cri.v1.runtime"))
        .and_then(|p| p.get_mut("containerd"))
        .and_then(|p| p.get_mut("runtimes"))
        .and_then(|p| p.get_mut(HANDLER))
        .and_then(Item::as_table_mut)
    {
        // The file's own header says it all.
        t.decor_mut().set_prefix("\n");
    }
    Ok(format!(
        "# Written by `keel-containerd wire`: the CRI runtime handler \"{HANDLER}\" runs\n# containers through the Keel shim ({RUNTIME_TYPE}). `keel-containerd unwire` removes it.\n{doc}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    # CNI from Debian's package\n    [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n";

    #[test]
    fn a_version_2_config_gets_the_runtime_in_place_and_keeps_the_rest() {
        let path = Path::new("/etc/containerd/config.toml");
        let mut doc = parse(path, DEBIAN).expect("parse");
        assert_eq!(version(path, &doc).expect("version"), 2);
        assert!(keel_runtime(&doc, 2).is_none());
        add_keel_runtime(&mut doc, 2, Some(Path::new("/etc/keel/keel.toml"))).expect("add");
        let text = doc.to_string();
        assert!(text.starts_with(DEBIAN), "the user's part is untouched:\n{text}");
        assert!(text.ends_with("ConfigPath = \"/etc/keel/keel.toml\"\n"), "Keel's tables come last:\n{text}");
        let again = parse(path, &text).expect("reparse");
        let keel = keel_runtime(&again, 2).expect("keel runtime");
        assert_eq!(keel.get("runtime_type").and_then(Item::as_str), Some(RUNTIME_TYPE));
        assert_eq!(keel.get("options").and_then(|o| o.get("ConfigPath")).and_then(Item::as_str), Some("/etc/keel/keel.toml"));
        assert!(!text.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n"), "no empty headers:\n{text}");
    }

    #[test]
    fn versions_other_than_2_and_3_are_refused() {
        let path = Path::new("c.toml");
        for text in ["[plugins.cri]\nx = 1\n", "version = 1\n", "version = \"2\"\n"] {
            let doc = parse(path, text).expect("parse");
            assert!(matches!(version(path, &doc), Err(WiringError::Version { .. })), "{text}");
        }
        assert!(is_blank(&parse(path, "# only a comment\n\n").expect("parse")));
    }

    #[test]
    fn imports_are_globs_relative_to_the_config() {
        let path = Path::new("/etc/containerd/config.toml");
        let doc = parse(path, "version = 3\nimports = [\"conf.d/*.toml\", \"/opt/x.toml\"]\n").expect("parse");
        let i = imports(path, &doc);
        assert!(imported(&i, Path::new("/etc/containerd/conf.d/keel.toml")));
        assert!(imported(&i, Path::new("/opt/x.toml")));
        assert!(!imported(&i, Path::new("/etc/containerd/keel.toml")));
        let mut doc = parse(path, "version = 3\n[plugins.x]\ny = 1\n").expect("parse");
        add_import(&mut doc, Path::new("/etc/containerd/conf.d/keel.toml")).expect("add");
        let text = doc.to_string();
        assert!(text.starts_with("version = 3\nimports = [\"/etc/containerd/conf.d/keel.toml\"]\n"), "{text}");
    }

    #[test]
    fn the_dropin_is_a_version_3_keel_runtime() {
        let text = dropin(None).expect("dropin");
        let doc = parse(Path::new("keel.toml"), &text).expect("parse");
        assert_eq!(version(Path::new("keel.toml"), &doc).expect("version"), 3);
        assert!(keel_runtime(&doc, 3).is_some(), "{text}");
    }
}
