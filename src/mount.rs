//! Mounts the rootfs containerd hands over in Create, and takes it down again.

use std::path::Path;

use containerd_shim_protos::types::mount::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};

/// Splits mount(8)-style options into flags and the data string.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "defaults" | "async" | "atime" | "diratime" | "norelatime" | "nomand" => (MsFlags::empty(), MsFlags::empty()),
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    (flags, data.join(","))
}

/// Mounts every entry onto `target` in order; undoes what it did on failure.
pub fn mount_all(mounts: &[Mount], target: &Path, container: &str) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        let (flags, data) = parse_options(&m.options);
        let fstype = if m.type_.is_empty() || m.type_ == "bind" { None } else { Some(m.type_.as_str()) };
        let res = mount(Some(m.source.as_str()), target, fstype, flags, (!data.is_empty()).then_some(data.as_str()));
        if let Err(e) = res {
            if i > 0 {
                unmount_all(target);
            }
            let err = std::io::Error::from(e);
            let msg = format!("container {container}: mount {} {:?} on {}: {err}", m.type_, m.source, target.display());
            return Err(if err.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(msg)
            } else {
                Error::Io { context: msg, source: err }
            });
        }
        // A bind mount ignores MS_RDONLY until remounted.
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            let _ = mount(None::<&str>, target, None::<&str>, flags | MsFlags::MS_REMOUNT, None::<&str>);
        }
    }
    Ok(())
}

/// Unmounts everything stacked on `target` (lazily, so a busy mount still goes).
pub fn unmount_all(target: &Path) {
    for _ in 0..32 {
        if umount2(target, MntFlags::MNT_DETACH).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> =
            ["ro", "rbind", "nosuid", "lowerdir=/a:/b", "upperdir=/u", "index=off"].iter().map(|s| s.to_string()).collect();
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NOSUID));
        assert_eq!(data, "lowerdir=/a:/b,upperdir=/u,index=off");
        let (flags, _) = parse_options(&["ro".to_string(), "rw".to_string()]);
        assert!(!flags.contains(MsFlags::MS_RDONLY), "a later rw wins");
    }
}
