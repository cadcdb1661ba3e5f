//! Kubernetes' side of containerd: its CRI plugin configured with a `keel`
//! runtime handler, the sandbox and busybox images built from the busybox
//! rootfs (no registry), CRI calls through k8s-cri's client, and clean-up
//! guards for what a pod leaves in the cgroup tree and the runtime root.
//! Used by tests/cri.rs and tests/cgroup_v2.rs.

use super::api::ApiResult;
use super::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
pub const PAUSE_IMAGE: &str = "docker.io/keel/pause:test";
pub const BUSYBOX_IMAGE: &str = "docker.io/keel/busybox:test";
pub const K8S_NS: &str = "k8s.io";

/// `cri!(cd, method, request)`: one RuntimeService call on a fresh channel,
/// bounded by CALL_TIMEOUT.
#[macro_export]
macro_rules! cri {
    ($cd:expr, $method:ident, $req:expr) => {{
        let req = $req;
        $crate::api::with_channel(&$cd.sock, $crate::cri::CALL_TIMEOUT, |ch| async move {
            let r = k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(ch).$method(req).await;
            r.map(|r| r.into_inner()).map_err($crate::api::status)
        })
    }};
}

// ---------------------------------------------------------------------------
// images
// ---------------------------------------------------------------------------

fn sha256_hex(path: &Path) -> String {
    let mut c = std::process::Command::new("sha256sum");
    c.arg(path);
    let o = run_cmd(c, None, Duration::from_secs(60));
    assert!(o.ok(), "sha256sum: {}", o.describe());
    o.out().split_whitespace().next().unwrap().to_string()
}

fn add_blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, data).unwrap();
    let d = sha256_hex(&tmp);
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&d)).unwrap();
    (format!("sha256:{d}"), data.len())
}

/// One OCI image-layout tar holding two images built from the busybox rootfs
/// (one uncompressed layer): the sandbox image (a shell that sleeps until
/// SIGTERM/SIGKILL) and a plain busybox image.
pub fn build_images(dir: &Path) -> PathBuf {
    let layout = dir.join("oci-layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let layer = dir.join("layer.tar");
    let mut c = std::process::Command::new("tar");
    c.args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "-C"]).arg(rootfs()).arg("-cf").arg(&layer).arg(".");
    let o = run_cmd(c, None, Duration::from_secs(120));
    assert!(o.ok(), "tar the rootfs: {}", o.describe());
    let ld = sha256_hex(&layer);
    let lsize = std::fs::metadata(&layer).unwrap().len();
    std::fs::rename(&layer, layout.join("blobs/sha256").join(&ld)).unwrap();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let mut manifests = Vec::new();
    for (name, cfg) in [
        (
            PAUSE_IMAGE,
            serde_json::json!({"Env": [CONTAINER_PATH], "Entrypoint": ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]}),
        ),
        (BUSYBOX_IMAGE, serde_json::json!({"Env": [CONTAINER_PATH], "Cmd": ["sh"]})),
    ] {
        let config = serde_json::json!({
            "architecture": arch, "os": "linux", "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{ld}")]},
        });
        let (cd_, cs) = add_blob(&layout, config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd_, "size": cs},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{ld}"), "size": lsize}],
        });
        let (md, ms) = add_blob(&layout, manifest.to_string().as_bytes());
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap()},
        }));
    }
    std::fs::write(layout.join("index.json"), serde_json::json!({"schemaVersion": 2, "manifests": manifests}).to_string()).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let tar = dir.join("images.tar");
    let mut c = std::process::Command::new("tar");
    c.arg("-C").arg(&layout).arg("-cf").arg(&tar).arg(".");
    let o = run_cmd(c, None, Duration::from_secs(120));
    assert!(o.ok(), "tar the image layout: {}", o.describe());
    let _ = std::fs::remove_dir_all(&layout);
    tar
}

// ---------------------------------------------------------------------------
// containerd with CRI
// ---------------------------------------------------------------------------

/// containerd's config with CRI; the `keel` handler (options file
/// `keel_toml`) only with `by_hand`, else `keel-containerd wire` adds it.
/// `runc_options` (TOML lines, e.g. `SystemdCgroup = true`) go into the
/// `runc` handler's options table.
pub fn cri_config(cd: &Containerd, keel_toml: &Path, by_hand: bool, runc_options: &str) -> String {
    let disabled: Vec<String> = UNUSED_PLUGINS.iter().map(|p| format!("  \"{p}\",")).collect();
    let cni = cd.dir.join("cni");
    let k = keel_toml.display();
    let keel = match (by_hand, cd.line) {
        (false, _) => String::new(),
        (true, Line::V16) => format!(
            "      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.keel]\n        runtime_type = \"io.containerd.keel.v1\"\n        [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.keel.options]\n          ConfigPath = \"{k}\"\n"
        ),
        (true, Line::V2) => format!(
            "    [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.keel]\n      runtime_type = \"io.containerd.keel.v1\"\n      [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.keel.options]\n        ConfigPath = \"{k}\"\n"
        ),
    };
    match cd.line {
        Line::V16 => format!(
            r#"version = 2
oom_score = 0
disabled_plugins = [
{disabled}
]
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_IMAGE}"
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{cni}/bin"
      conf_dir = "{cni}/conf"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
{runc_options}
{keel}"#,
            disabled = disabled.join("\n"),
            cni = cni.display(),
        ),
        Line::V2 => format!(
            r#"version = 3
oom_score = 0
disabled_plugins = [
{disabled}
]
[plugins]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
  [plugins."io.containerd.cri.v1.runtime"]
    restrict_oom_score_adj = true
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["{cni}/bin"]
      conf_dir = "{cni}/conf"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
{runc_options}
{keel}  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
"#,
            disabled = disabled.join("\n"),
            cni = cni.display(),
        ),
    }
}

/// Removes the pod's cgroup parent (and what runc made below it) in every
/// hierarchy on drop, after the containers are gone.
pub struct CgroupParent(pub String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        fn rm_tree(d: &Path) {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        rm_tree(&e.path());
                    }
                }
            }
            if poll(Duration::from_secs(5), || std::fs::remove_dir(d).ok()).is_none() {
                eprintln!("cleanup: cannot remove cgroup {}", d.display());
            }
        }
        let rel = self.0.trim_start_matches('/').to_string();
        let mut dirs = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in rd.flatten() {
                dirs.push(h.path().join(&rel));
            }
        }
        dirs.push(Path::new("/sys/fs/cgroup").join(&rel));
        for d in dirs {
            if d.join("cgroup.procs").exists() {
                rm_tree(&d);
            }
        }
    }
}

/// Kills and deletes what the runtime still knows under the private root on
/// drop (before containerd's own cleanup removes the directory).
pub struct RuntimeRoot(pub PathBuf);

impl Drop for RuntimeRoot {
    fn drop(&mut self) {
        let nsdir = self.0.join(K8S_NS);
        if let Ok(rd) = std::fs::read_dir(&nsdir) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                eprintln!("cleanup: leftover runtime state {}", e.path().display());
                let mut c = std::process::Command::new("/usr/sbin/runc");
                c.arg("--root").arg(&nsdir).args(["delete", "--force", &id]);
                let _ = run_cmd(c, None, Duration::from_secs(10));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// the scenario
// ---------------------------------------------------------------------------

pub fn expect_ok<T>(r: ApiResult<T>, what: &str, cd: &Containerd) -> T {
    r.unwrap_or_else(|e| panic!("{} CRI {what}: {e:?}\n{}", cd.line.name(), cd.log_tail(40)))
}
