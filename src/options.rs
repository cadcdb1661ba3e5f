//! Runtime options containerd attaches to a task: runc-v2's
//! `containerd.runc.v1.Options` (ctr, or a CRI handler of runc's type), or
//! CRI's generic `runtimeoptions.v1.Options`, whose ConfigPath / ConfigBody
//! hold the same keys as TOML (what the CRI plugin sends for any other
//! runtime_type, so for io.containerd.keel.v1).

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::{CheckpointOptions, Options};

use crate::error::{Error, Result};

const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
const CRI_OPTIONS: &str = "runtimeoptions.v1.Options";

/// runc-v2's defaults, kept so runc, crun and tools agree on where state lives.
pub const DEFAULT_BINARY: &str = "runc";
pub const DEFAULT_ROOT: &str = "/run/containerd/runc";

/// The options Keel acts on, with runc-v2's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

impl RuntimeOptions {
    /// The OCI runtime binary to run.
    pub fn binary(&self) -> &str {
        if self.binary_name.is_empty() {
            DEFAULT_BINARY
        } else {
            &self.binary_name
        }
    }

    /// The runtime's state directory for `namespace`.
    pub fn root_for(&self, namespace: &str) -> std::path::PathBuf {
        let root = if self.root.is_empty() { DEFAULT_ROOT } else { &self.root };
        std::path::Path::new(root).join(namespace)
    }
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
            let o =
                Options::parse_from_bytes(&any.value).map_err(Error::malformed(format!("runtime options {}: malformed", any.type_url)))?;
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
        CRI_OPTIONS => {
            let (config_path, config_body) =
                decode_cri_options(&any.value).map_err(Error::malformed(format!("runtime options {}: malformed", any.type_url)))?;
            let body = if !config_body.is_empty() {
                String::from_utf8(config_body).map_err(|_| Error::InvalidArgument("runtime options ConfigBody is not UTF-8 TOML".into()))?
            } else if !config_path.is_empty() {
                std::fs::read_to_string(&config_path).map_err(Error::malformed(format!("runtime options ConfigPath {config_path:?}")))?
            } else {
                return Ok(RuntimeOptions::default());
            };
            let input = if config_path.is_empty() { "ConfigBody".to_string() } else { format!("ConfigPath {config_path:?}") };
            from_toml(&body).map_err(Error::malformed(format!("runtime options {input}")))
        }
        _ => Err(Error::InvalidArgument(format!(
            "runtime options of type {:?} are not supported (want {RUNC_OPTIONS} or {CRI_OPTIONS})",
            any.type_url
        ))),
    }
}

/// `runtimeoptions.v1.Options`: type_url (1), config_path (2), config_body (3).
/// containerd-shim-protos does not carry this message, and it is three fields.
fn decode_cri_options(bytes: &[u8]) -> std::result::Result<(String, Vec<u8>), containerd_shim_protos::protobuf::Error> {
    use containerd_shim_protos::protobuf::CodedInputStream;
    let mut input = CodedInputStream::from_bytes(bytes);
    let (mut path, mut body) = (String::new(), Vec::new());
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        match tag {
            10 => {
                input.read_string()?;
            }
            18 => path = input.read_string()?,
            26 => body = input.read_bytes()?,
            t => input.skip_field(containerd_shim_protos::protobuf::rt::WireType::new(t & 7).ok_or_else(|| {
                containerd_shim_protos::protobuf::Error::from(std::io::Error::other(format!("bad wire type in tag {t}")))
            })?)?,
        }
    }
    Ok((path, body))
}

/// Reads runc-v2's option keys (BinaryName, Root, SystemdCgroup, ...) from TOML.
/// Unknown keys are an error: a typo must not silently fall back to a default.
pub fn from_toml(text: &str) -> std::result::Result<RuntimeOptions, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string().trim().to_string())?;
    let mut o = RuntimeOptions::default();
    for (key, value) in &table {
        let string = || value.as_str().map(str::to_string).ok_or_else(|| format!("{key} must be a string"));
        let boolean = || value.as_bool().ok_or_else(|| format!("{key} must be true or false"));
        let id = || value.as_integer().and_then(|v| u32::try_from(v).ok()).ok_or_else(|| format!("{key} must be a non-negative integer"));
        match key.as_str() {
            "BinaryName" => o.binary_name = string()?,
            "Root" => o.root = string()?,
            "SystemdCgroup" => o.systemd_cgroup = boolean()?,
            "NoPivotRoot" => o.no_pivot_root = boolean()?,
            "NoNewKeyring" => o.no_new_keyring = boolean()?,
            "ShimCgroup" => o.shim_cgroup = string()?,
            "IoUid" => o.io_uid = id()?,
            "IoGid" => o.io_gid = id()?,
            "CriuImagePath" => o.criu_image_path = string()?,
            "CriuWorkPath" => o.criu_work_path = string()?,
            // Keys of the CRI table itself, repeated in the body.
            "TypeUrl" | "ConfigPath" | "ConfigBody" | "CriuPath" => {}
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(o)
}

/// Decodes a Checkpoint request's options (`containerd.runc.v1.CheckpointOptions`).
pub fn checkpoint_options(any: Option<&Any>) -> Result<CheckpointOptions> {
    let Some(any) = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
        return Ok(CheckpointOptions::default());
    };
    if type_name(any) != "containerd.runc.v1.CheckpointOptions" {
        return Err(Error::InvalidArgument(format!("checkpoint options of type {:?} are not supported", any.type_url)));
    }
    CheckpointOptions::parse_from_bytes(&any.value).map_err(Error::malformed("checkpoint options: malformed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::ttrpc::Code;

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

    fn cri_any(path: &str, body: &str) -> Any {
        use containerd_shim_protos::protobuf::CodedOutputStream;
        let mut value = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut value);
            out.write_string(1, "").expect("encode");
            out.write_string(2, path).expect("encode");
            out.write_bytes(3, body.as_bytes()).expect("encode");
            out.flush().expect("flush");
        }
        Any { type_url: CRI_OPTIONS.into(), value, ..Default::default() }
    }

    #[test]
    fn cri_generic_options_carry_toml_in_body_or_file() {
        let got = decode(Some(&cri_any("", "BinaryName = \"crun\"\nSystemdCgroup = false\nRoot = \"/run/keel\"\n"))).expect("body");
        assert_eq!((got.binary_name.as_str(), got.root.as_str()), ("crun", "/run/keel"));
        let file = std::env::temp_dir().join(format!("keel-opts-{}.toml", std::process::id()));
        std::fs::write(&file, "BinaryName = \"/usr/bin/crun\"\nNoPivotRoot = true\n").expect("write");
        let got = decode(Some(&cri_any(&file.display().to_string(), ""))).expect("file");
        assert_eq!(got.binary_name, "/usr/bin/crun");
        assert!(got.no_pivot_root);
        std::fs::remove_file(&file).ok();
    }

    #[test]
    fn cri_options_with_typos_or_missing_files_are_invalid() {
        let err = decode(Some(&cri_any("", "BinaryNme = \"crun\""))).expect_err("typo");
        assert!(err.code() == Code::INVALID_ARGUMENT && err.to_string().contains("BinaryNme"), "{err}");
        assert!(std::error::Error::source(&err).is_some(), "the TOML error is kept as the source: {err:?}");
        let err = decode(Some(&cri_any("", "SystemdCgroup = \"yes\""))).expect_err("type");
        assert!(err.to_string().contains("SystemdCgroup"), "{err}");
        let err = decode(Some(&cri_any("/nonexistent/keel.toml", ""))).expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/keel.toml"), "{err}");
        let err = decode(Some(&cri_any("", "BinaryName = "))).expect_err("bad toml");
        assert_eq!(err.code(), Code::INVALID_ARGUMENT, "{err}");
    }

    #[test]
    fn unknown_or_malformed_options_are_rejected() {
        let unknown = Any { type_url: "example.Other".into(), value: vec![1, 2], ..Default::default() };
        assert!(matches!(decode(Some(&unknown)), Err(Error::InvalidArgument(m)) if m.contains("example.Other")));
        let garbage = Any { type_url: RUNC_OPTIONS.into(), value: vec![0xff, 0xff, 0xff], ..Default::default() };
        let err = decode(Some(&garbage)).expect_err("garbage");
        assert_eq!(err.code(), Code::INVALID_ARGUMENT, "{err}");
        assert_eq!(decode(None).expect("none"), RuntimeOptions::default());
    }
}
