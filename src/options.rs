//! Runtime options containerd attaches to a task: runc-v2's
//! `containerd.runc.v1.Options`, which Keel accepts as-is.

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::{CheckpointOptions, Options};

use crate::error::{Error, Result};

const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";

/// The options Keel acts on, with runc-v2's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    pub binary_name: String,
    pub root: String,
    pub systemd_cgroup: bool,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
    pub criu_image_path: String,
    pub criu_work_path: String,
    pub io_uid: u32,
    pub io_gid: u32,
    pub shim_cgroup: String,
}

fn type_name(any: &Any) -> &str {
    // containerd writes bare names; protobuf's Any::pack prefixes a host.
    any.type_url.rsplit('/').next().unwrap_or_default()
}

/// Decodes the options of a Create request; `None` or an empty Any means defaults.
pub fn decode(any: Option<&Any>) -> Result<RuntimeOptions> {
    let Some(any) = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
        return Ok(RuntimeOptions::default());
    };
    match type_name(any) {
        RUNC_OPTIONS => {
            let o = Options::parse_from_bytes(&any.value)
                .map_err(|e| Error::InvalidArgument(format!("runtime options {}: malformed: {e}", any.type_url)))?;
            Ok(RuntimeOptions {
                binary_name: o.binary_name,
                root: o.root,
                systemd_cgroup: o.systemd_cgroup,
                no_pivot_root: o.no_pivot_root,
                no_new_keyring: o.no_new_keyring,
                criu_image_path: o.criu_image_path,
                criu_work_path: o.criu_work_path,
                io_uid: o.io_uid,
                io_gid: o.io_gid,
                shim_cgroup: o.shim_cgroup,
            })
        }
        other => Err(Error::InvalidArgument(format!(
            "runtime options of type {other:?} are not supported (want {RUNC_OPTIONS})"
        ))),
    }
}

/// Decodes a Checkpoint request's options (`containerd.runc.v1.CheckpointOptions`).
pub fn checkpoint_options(any: Option<&Any>) -> Result<CheckpointOptions> {
    let Some(any) = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
        return Ok(CheckpointOptions::default());
    };
    if type_name(any) != "containerd.runc.v1.CheckpointOptions" {
        return Err(Error::InvalidArgument(format!("checkpoint options of type {:?} are not supported", any.type_url)));
    }
    CheckpointOptions::parse_from_bytes(&any.value).map_err(|e| Error::InvalidArgument(format!("checkpoint options: malformed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_options_decode_with_or_without_a_url_host() {
        let opts = Options { binary_name: "crun".into(), root: "/run/x".into(), systemd_cgroup: true, ..Default::default() };
        for url in ["containerd.runc.v1.Options", "type.googleapis.com/containerd.runc.v1.Options"] {
            let any = Any { type_url: url.into(), value: opts.write_to_bytes().expect("encode"), ..Default::default() };
            let got = decode(Some(&any)).expect("decode");
            assert_eq!(got.binary_name, "crun");
            assert_eq!(got.root, "/run/x");
            assert!(got.systemd_cgroup);
        }
    }

    #[test]
    fn unknown_or_malformed_options_are_rejected() {
        let unknown = Any { type_url: "example.Other".into(), value: vec![1, 2], ..Default::default() };
        assert!(matches!(decode(Some(&unknown)), Err(Error::InvalidArgument(m)) if m.contains("example.Other")));
        let garbage = Any { type_url: RUNC_OPTIONS.into(), value: vec![0xff, 0xff, 0xff], ..Default::default() };
        assert!(matches!(decode(Some(&garbage)), Err(Error::InvalidArgument(_))));
        assert_eq!(decode(None).expect("none"), RuntimeOptions::default());
    }
}
