//! Creating a container: bundle checks, rootfs, stdio, `runtime create`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_shim_protos::types::mount::Mount;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::process::{Process, Status};
use super::{Container, ExitGate};
use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::options::RuntimeOptions;
use crate::reaper::{Exit, Reaper};
use crate::runtime::{read_pid_file, CreateOpts, Runtime, DEFAULT_ROOT};
use crate::stdio::{self, StdioConfig};

pub struct CreateRequest {
    pub namespace: String,
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<Mount>,
    pub stdio: StdioConfig,
    pub options: RuntimeOptions,
    /// A checkpoint image to restore from instead of a fresh start.
    pub checkpoint: String,
}

fn load_spec(bundle: &Path, id: &str) -> Result<Spec> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(format!("container {id}: {} does not exist", path.display())),
        _ => Error::io(format!("container {id}: read {}", path.display()), e),
    })?;
    serde_json::from_slice(&text).map_err(|e| Error::InvalidArgument(format!("container {id}: malformed {}: {e}", path.display())))
}

fn has_own_pid_ns(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|nss| nss.iter().any(|ns| ns.typ() == LinuxNamespaceType::Pid && ns.path().is_none()))
}

impl Container {
    /// Creates the container; returns it with its init's exit if the init
    /// already died during the runtime call.
    pub async fn create(req: CreateRequest, reaper: Reaper, publisher: Publisher) -> Result<(Arc<Container>, Option<Exit>)> {
        let id = &req.id;
        if !req.bundle.is_absolute() {
            return Err(Error::InvalidArgument(format!("container {id}: bundle path {:?} is not absolute", req.bundle)));
        }
        let spec = load_spec(&req.bundle, id)?;
        let rootfs = req.bundle.join("rootfs");
        if !req.rootfs.is_empty() {
            std::fs::create_dir_all(&rootfs).map_err(|e| Error::io(format!("container {id}: create {}", rootfs.display()), e))?;
            crate::mount::mount_all(&req.rootfs, &rootfs, id)?;
        } else {
            let root = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| PathBuf::from("rootfs"));
            let root = if root.is_absolute() { root } else { req.bundle.join(root) };
            if !root.is_dir() {
                return Err(Error::NotFound(format!("container {id}: rootfs {} does not exist", root.display())));
            }
        }
        let undo_mount = |e: Error| {
            if !req.rootfs.is_empty() {
                crate::mount::unmount_all(&rootfs);
            }
            e
        };

        let root = if req.options.root.is_empty() { PathBuf::from(DEFAULT_ROOT) } else { PathBuf::from(&req.options.root) };
        let runtime = Runtime::new(&req.options.binary_name, &root.join(&req.namespace), &req.bundle, req.options.systemd_cgroup, reaper.clone());
        let (rio, prepared) = stdio::prepare(&req.stdio, &req.namespace, id, &reaper).map_err(|e| undo_mount(e.into()))?;
        let opts = CreateOpts {
            pid_file: req.bundle.join("init.pid"),
            console_socket: prepared.console.as_ref().map(|c| c.path().to_path_buf()),
            no_pivot: req.options.no_pivot_root,
            no_new_keyring: req.options.no_new_keyring,
            restore_from: (!req.checkpoint.is_empty()).then(|| PathBuf::from(&req.checkpoint)),
        };
        let sub = reaper.subscribe();
        if let Err(e) = runtime.create(id, &req.bundle, &opts, rio).await {
            let _ = runtime.delete(id, true).await;
            return Err(undo_mount(e.into()));
        }
        let finish = async {
            let master = match &prepared.console {
                Some(c) => Some(c.receive().await?),
                None => None,
            };
            let pid = read_pid_file(&opts.pid_file).map_err(|e| Error::io(format!("container {id}: read pid file"), e))?;
            Ok::<_, Error>((master, pid))
        };
        let (master, pid) = match finish.await {
            Ok(v) => v,
            Err(e) => {
                let _ = runtime.delete(id, true).await;
                return Err(undo_mount(e));
            }
        };
        let init = Arc::new(Process::new("", req.stdio.clone(), Vec::new()));
        let container = Arc::new(Container {
            id: id.clone(),
            namespace: req.namespace.clone(),
            bundle: req.bundle.clone(),
            runtime,
            init,
            execs: Mutex::default(),
            gate: Mutex::new(ExitGate::default()),
            publisher,
            reaper: reaper.clone(),
            mounted_rootfs: !req.rootfs.is_empty(),
            own_pid_ns: has_own_pid_ns(&spec),
            cgroup: Default::default(),
            oom: Default::default(),
        });
        let early = reaper.claim(pid, container.owner(""), &sub);
        drop(sub);
        container.attach_cgroup(pid);
        match prepared.start(master) {
            Ok(io) => container.init.set_io(io),
            Err(e) => {
                let _ = container.runtime.delete(id, true).await;
                container.cleanup();
                return Err(e.into());
            }
        }
        {
            let mut st = container.init.lock();
            st.pid = pid;
            // A restored container is already running.
            if opts.restore_from.is_some() {
                container.init.transition(&mut st, Status::Running, id)?;
            }
        }
        Ok((container, early))
    }
}
