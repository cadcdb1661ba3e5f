//! Runtime options, and a resize ctr cannot send.

use super::*;

/// CRI's `runtimeoptions.v1.Options` (containerd's
/// api/types/runtimeoptions/v1/api.proto). No crate ships its generated
/// code, so prost derives the encoding from the proto's field tags.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuntimeOptions {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(string, tag = "2")]
    pub config_path: String,
    #[prost(string, tag = "3")]
    pub config_body: String,
}

pub const RUNTIME_OPTIONS_URL: &str = "runtimeoptions.v1.Options";

/// The encoded `runtimeoptions.v1.Options` with a ConfigPath and a ConfigBody.
pub fn runtime_options(config_path: &str, config_body: &str) -> Vec<u8> {
    prost::Message::encode_to_vec(&RuntimeOptions {
        config_path: config_path.into(),
        config_body: config_body.into(),
        ..Default::default()
    })
}

impl Containerd {
    /// `Task.ResizePty` sent straight to the shim of `id` (ctr has no resize
    /// command; containerd forwards the same request unchanged).
    pub fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<(), robust::RpcStatus> {
        let req = robust::pb::ResizePtyRequest { id: id.into(), exec_id: exec_id.into(), width, height, ..Default::default() };
        match robust::Shim::of(self, id).call_timeout(&req, Duration::from_secs(10)) {
            robust::Rpc::Ok(_) => Ok(()),
            robust::Rpc::Err(st) => Err(st),
            robust::Rpc::Transport(e) => panic!("ttrpc ResizePty to the shim of {id}: {e}"),
        }
    }
}

/// md5 of `data` as hex, by the host's `md5sum`.
pub fn md5_hex(data: &[u8]) -> String {
    let o = run_cmd(Command::new("md5sum"), Some(data.to_vec()), Duration::from_secs(30));
    assert!(o.ok(), "md5sum: {}", o.describe());
    o.out().split_whitespace().next().unwrap_or_default().to_string()
}
