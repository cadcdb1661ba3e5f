//! Operations on a whole container besides its lifecycle: stats, pids,
//! pause/resume, resource updates and checkpoints.

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_shim_protos::events::task::{TaskCheckpointed, TaskPaused, TaskResumed};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::{CheckpointOptions, ProcessDetails};
use containerd_shim_protos::types::task::ProcessInfo;

use super::process::{Op, Status};
use super::{lock, Container};
use crate::cgroups::stats;
use crate::error::{Error, Result};

/// The runtime's checkpoint flags for containerd's CheckpointOptions.
fn checkpoint_args(image: &str, work: &std::path::Path, o: &CheckpointOptions) -> Vec<String> {
    let mut a = vec!["--image-path".to_string(), image.to_string(), "--work-path".to_string(), work.display().to_string()];
    if !o.exit {
        a.push("--leave-running".into());
    }
    for (on, flag) in [
        (o.open_tcp, "--tcp-established"),
        (o.external_unix_sockets, "--ext-unix-sk"),
        (o.terminal, "--shell-job"),
        (o.file_locks, "--file-locks"),
    ] {
        if on {
            a.push(flag.into());
        }
    }
    for ns in &o.empty_namespaces {
        a.push("--empty-ns".into());
        a.push(ns.clone());
    }
    a
}

impl Container {
    pub fn stats(&self) -> Result<Any> {
        {
            let st = self.init.lock();
            self.init.check(&st, Op::Stats, &self.id)?;
        }
        let cg = self.cgroup.get().ok_or_else(|| Error::NotFound(format!("task {}: its cgroup is unknown", self.id)))?;
        Ok(stats::collect(cg))
    }

    pub async fn pids(&self) -> Result<Vec<ProcessInfo>> {
        let pids = self.runtime.ps(&self.id).await?;
        let by_pid: HashMap<i32, String> = lock(&self.execs).values().map(|e| (e.pid(), e.exec_id.clone())).collect();
        Ok(pids
            .into_iter()
            .map(|pid| {
                let info = by_pid.get(&pid).and_then(|exec_id| {
                    let details = ProcessDetails { exec_id: exec_id.clone(), ..Default::default() };
                    details.write_to_bytes().ok().map(|value| Any {
                        type_url: "containerd.runc.v1.ProcessDetails".into(),
                        value,
                        ..Default::default()
                    })
                });
                ProcessInfo { pid: pid as u32, info: info.into(), ..Default::default() }
            })
            .collect())
    }

    pub async fn pause(&self) -> Result<()> {
        {
            let st = self.init.lock();
            self.init.check(&st, Op::Pause, &self.id)?;
        }
        self.runtime.pause(&self.id).await?;
        {
            let mut st = self.init.lock();
            if st.status == Status::Running {
                self.init.transition(&mut st, Status::Paused, &self.id)?;
            }
        }
        self.publisher.publish(&self.namespace, TaskPaused { container_id: self.id.clone(), ..Default::default() });
        Ok(())
    }

    pub async fn resume(&self) -> Result<()> {
        {
            let st = self.init.lock();
            self.init.check(&st, Op::Resume, &self.id)?;
        }
        self.runtime.resume(&self.id).await?;
        {
            let mut st = self.init.lock();
            if st.status == Status::Paused {
                self.init.transition(&mut st, Status::Running, &self.id)?;
            }
        }
        self.publisher.publish(&self.namespace, TaskResumed { container_id: self.id.clone(), ..Default::default() });
        Ok(())
    }

    pub async fn update(&self, resources: &Any) -> Result<()> {
        {
            let st = self.init.lock();
            self.init.check(&st, Op::Update, &self.id)?;
        }
        let res: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(&resources.value).map_err(Error::malformed(format!("task {}: invalid resources", self.id)))?;
        crate::resources::validate(&res).map_err(Error::malformed(format!("task {}", self.id)))?;
        let file = self.bundle.join("update-resources.json");
        let json = serde_json::to_vec(&res).map_err(Error::internal("encode resources"))?;
        std::fs::write(&file, json).map_err(|e| Error::io(format!("write {}", file.display()), e))?;
        let r = self.runtime.update(&self.id, &file).await;
        self.remove_file(&file);
        Ok(r?)
    }

    /// Dumps the container with CRIU through the runtime into `image`.
    pub async fn checkpoint(&self, image: &str, opts: &CheckpointOptions) -> Result<()> {
        {
            let st = self.init.lock();
            self.init.check(&st, Op::Checkpoint, &self.id)?;
        }
        // The request's path wins, as with runc-v2: containerd stores what is
        // there as the checkpoint (1.6 passes image_path only to runc runtimes).
        let image = if image.is_empty() { opts.image_path.as_str() } else { image };
        if image.is_empty() {
            return Err(Error::InvalidArgument(format!("task {}: checkpoint needs an image path", self.id)));
        }
        let work = if opts.work_path.is_empty() { self.criu_work_path() } else { PathBuf::from(&opts.work_path) };
        let args = checkpoint_args(image, &work, opts);
        let r = self.runtime.checkpoint(&self.id, &args).await;
        if opts.work_path.is_empty() {
            self.tidied(&work, std::fs::remove_dir_all(&work));
        }
        r?;
        self.publisher.publish(
            &self.namespace,
            TaskCheckpointed { container_id: self.id.clone(), checkpoint: image.to_string(), ..Default::default() },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_options_map_to_runtime_flags() {
        let o = CheckpointOptions {
            exit: false,
            open_tcp: true,
            external_unix_sockets: true,
            terminal: true,
            file_locks: true,
            empty_namespaces: vec!["network".into()],
            ..Default::default()
        };
        let a = checkpoint_args("/img", std::path::Path::new("/work"), &o);
        assert_eq!(
            a,
            [
                "--image-path",
                "/img",
                "--work-path",
                "/work",
                "--leave-running",
                "--tcp-established",
                "--ext-unix-sk",
                "--shell-job",
                "--file-locks",
                "--empty-ns",
                "network"
            ]
        );
        let exit = CheckpointOptions { exit: true, ..Default::default() };
        assert!(!checkpoint_args("/img", std::path::Path::new("/w"), &exit).contains(&"--leave-running".to_string()));
    }
}
