//! Creating a container: bundle checks, rootfs, stdio, `runtime create`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_shim_protos::types::mount::Mount;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::process::Process;
use super::{Container, ExitGate};
use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::options::RuntimeOptions;
use crate::reaper::{Exit, Reaper};
use crate::runtime::{read_pid_file, CreateOpts, OciRuntime};
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
    serde_json::from_slice(&text).map_err(Error::malformed(format!("container {id}: malformed {}", path.display())))
}

fn has_own_pid_ns(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|nss| nss.iter().any(|ns| ns.typ() == LinuxNamespaceType::Pid && ns.path().is_none()))
}

impl Container {
    /// Creates the container; returns it with its init's exit if the init
    /// already died during the runtime call. With a checkpoint, only the
    /// container is set up: the restore runs at Start, as with runc-v2.
    pub async fn create(req: CreateRequest, reaper: Reaper, publisher: Publisher) -> Result<(Arc<Container>, Option<Exit>)> {
        let runtime = Container::runtime_for(&req.options, &req.namespace, &req.bundle, &reaper);
        Container::create_with(req, Arc::new(runtime), reaper, publisher).await
    }

    /// [`Container::create`] with a given runtime driver.
    pub async fn create_with(
        req: CreateRequest,
        runtime: Arc<dyn OciRuntime>,
        reaper: Reaper,
        publisher: Publisher,
    ) -> Result<(Arc<Container>, Option<Exit>)> {
        let id = &req.id;
        if !req.bundle.is_absolute() {
            return Err(Error::InvalidArgument(format!("container {id}: bundle path {:?} is not absolute", req.bundle)));
        }
        let spec = load_spec(&req.bundle, id)?;
        // Before anything is mounted or started, so a refusal leaves nothing to undo.
        runtime.preflight(id)?;
        let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().as_ref()).map(|p| p.to_string_lossy().into_owned());
        crate::cgroups::check_driver(id, req.options.systemd_cgroup, cgroups_path.as_deref(), Path::new(crate::cgroups::SYSTEMD_MARKER))?;
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
        let container = Arc::new_cyclic(|me| Container {
            me: me.clone(),
            id: id.clone(),
            namespace: req.namespace.clone(),
            bundle: req.bundle.clone(),
            runtime,
            init: Arc::new(Process::new("", req.stdio.clone(), Vec::new())),
            execs: Mutex::default(),
            gate: Mutex::new(ExitGate::default()),
            publisher,
            reaper,
            mounted_rootfs: !req.rootfs.is_empty(),
            own_pid_ns: has_own_pid_ns(&spec),
            cgroup: Default::default(),
            oom: Default::default(),
            options: req.options.clone(),
            restore_from: Mutex::new((!req.checkpoint.is_empty()).then(|| PathBuf::from(&req.checkpoint))),
            exiting: Default::default(),
        });
        if !req.checkpoint.is_empty() {
            return Ok((container, None));
        }
        match container.launch(None).await {
            Ok(early) => Ok((container, early)),
            Err(e) => {
                container.cleanup();
                Err(e)
            }
        }
    }

    /// Runs `runtime create` (or `restore` from `image`) and adopts the new
    /// init: its pid, cgroup and stdio.
    pub(super) async fn launch(&self, image: Option<&Path>) -> Result<Option<Exit>> {
        let id = &self.id;
        let (rio, prepared) = stdio::prepare(&self.init.stdio, self.io_owner(), &self.namespace, id, &self.reaper).await?;
        let opts = CreateOpts {
            pid_file: self.bundle.join("init.pid"),
            console_socket: prepared.console.as_ref().map(|c| c.path().to_path_buf()),
            no_pivot: self.options.no_pivot_root,
            no_new_keyring: self.options.no_new_keyring,
            restore_from: image.map(Path::to_path_buf),
            criu_work_path: image.map(|_| self.criu_work_path()),
        };
        let sub = self.reaper.subscribe();
        if let Err(e) = self.runtime.create(id, &self.bundle, &opts, rio).await {
            self.undo_create("a failed runtime create").await;
            return Err(e.into());
        }
        let adopt = async {
            let master = match &prepared.console {
                Some(c) => Some(c.receive().await?),
                None => None,
            };
            let pid = read_pid_file(&opts.pid_file).map_err(|e| Error::io(format!("container {id}: read pid file"), e))?;
            let claim = self.reaper.claim(pid, self.owner(""), &sub);
            self.init.set_io(prepared.start(master).await?);
            Ok::<_, Error>((pid, claim))
        };
        let (pid, claim) = match adopt.await {
            Ok(v) => v,
            Err(e) => {
                self.undo_create(&format!("failing to adopt its init ({e})")).await;
                return Err(e);
            }
        };
        drop(sub);
        self.attach_cgroup(pid);
        let mut st = self.init.lock();
        st.pid = pid;
        st.pidfd = claim.pidfd.map(Arc::new);
        Ok(claim.early)
    }

    pub(super) fn criu_work_path(&self) -> PathBuf {
        if self.options.criu_work_path.is_empty() {
            self.bundle.join("criu-work")
        } else {
            PathBuf::from(&self.options.criu_work_path)
        }
    }
}
