//! The containerd task service (served as both task v2 and task v3): request
//! checks and replies; the work happens in [`crate::container`].

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::*;
use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskIO};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self};
use containerd_shim_protos::types::task::Status as PbStatus;
use tokio::sync::Notify;

use crate::container::handover::ContainerImage;
use crate::container::process::Status;
use crate::container::{Container, CreateRequest};
use crate::error::{Error, Result};
use crate::events::{timestamp, Publisher};
use crate::fdpass::Passed;
use crate::reaper::Reaper;
use crate::stdio::StdioConfig;
use crate::tasklist::{validate_id, TaskList};

pub struct Service {
    tasks: TaskList<Container>,
    reaper: Reaper,
    publisher: Publisher,
    /// The namespace the shim was started for; used when a request has none.
    namespace: String,
    shutdown: Arc<Notify>,
    /// A Create has arrived at least once (see `serve`'s start watchdog).
    asked_to_create: std::sync::atomic::AtomicBool,
}

const NAMESPACE_KEY: &str = "containerd-namespace-ttrpc";

fn status_pb(s: Status) -> PbStatus {
    match s {
        Status::Created => PbStatus::CREATED,
        Status::Running => PbStatus::RUNNING,
        Status::Paused => PbStatus::PAUSED,
        Status::Stopped | Status::Deleted => PbStatus::STOPPED,
    }
}

/// Logs a failed request with what it was about, and converts the error.
fn reply<T>(what: &str, r: Result<T>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        log::debug!("{what}: {e}");
        e.into()
    })
}

impl Service {
    pub fn new(reaper: Reaper, publisher: Publisher, namespace: &str, shutdown: Arc<Notify>) -> Self {
        Service {
            tasks: TaskList::default(),
            reaper,
            publisher,
            namespace: namespace.to_string(),
            shutdown,
            asked_to_create: Default::default(),
        }
    }

    /// Creates, Starts or exits at work: a hand-over to a new binary waits.
    pub fn busy(&self) -> bool {
        self.tasks.creating() > 0 || self.tasks.all().iter().any(|c| c.busy())
    }

    /// Describes every task for the next binary (stdio copies halted by the
    /// caller), passing their fds on. On failure, the images made so far
    /// come back with the error, to be taken up again.
    pub async fn hand_over(&self, fds: &mut Passed) -> std::result::Result<Vec<ContainerImage>, (Error, Vec<ContainerImage>)> {
        let mut images = Vec::new();
        for c in self.tasks.all() {
            match c.hand_over(fds).await {
                Ok(img) => images.push(img),
                Err(e) => return Err((e, images)),
            }
        }
        Ok(images)
    }

    /// Lists the tasks of a hand-over (the previous binary's, or this one's
    /// after a refused upgrade).
    ///
    /// # Safety
    /// The fds the images name are this process's and owned by nobody.
    pub unsafe fn take_over(&self, images: Vec<ContainerImage>, reaper: &Reaper, publisher: &Publisher) -> Result<()> {
        self.asked_to_create.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut first_err = None;
        for img in images {
            let (ns, id) = (img.namespace.clone(), img.id.clone());
            // SAFETY: per this function's contract.
            match unsafe { Container::take_over(img, reaper.clone(), publisher.clone()) } {
                Ok(c) => self.tasks.insert(&ns, &id, c),
                Err(e) => {
                    log::error!("task {id}: not taken over: {e}");
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    pub fn asked_to_create(&self) -> bool {
        self.asked_to_create.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn ns(&self, ctx: &TtrpcContext) -> String {
        ctx.metadata.get(NAMESPACE_KEY).and_then(|v| v.first()).cloned().unwrap_or_else(|| self.namespace.clone())
    }

    fn container(&self, ctx: &TtrpcContext, id: &str) -> Result<Arc<Container>> {
        if id.is_empty() {
            return Err(Error::InvalidArgument("task id must not be empty".into()));
        }
        Ok(self.tasks.get(&self.ns(ctx), id)?)
    }

    async fn do_create(&self, ctx: &TtrpcContext, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let ns = self.ns(ctx);
        validate_id("container id", &req.id)?;
        // Held before any work, so a concurrent Create of the same id never
        // gets to clean up (runtime delete, unmount) what this one made.
        let reservation = self.tasks.reserve(&ns, &req.id)?;
        let options = crate::options::decode(req.options.as_ref())?;
        let stdio =
            StdioConfig { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone(), terminal: req.terminal };
        let create = CreateRequest {
            namespace: ns.clone(),
            id: req.id.clone(),
            bundle: req.bundle.clone().into(),
            rootfs: req.rootfs.clone(),
            stdio,
            options: options.clone(),
            checkpoint: req.checkpoint.clone(),
        };
        let (container, early_exit) = Container::create(create, self.reaper.clone(), self.publisher.clone()).await?;
        crate::manager::save_options(&container.bundle, &options);
        let pid = container.init().pid();
        reservation.commit(container.clone());
        self.publisher.publish(
            &ns,
            TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle,
                rootfs: req.rootfs,
                io: Some(TaskIO { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal, ..Default::default() })
                    .into(),
                checkpoint: req.checkpoint,
                pid: pid as u32,
                ..Default::default()
            },
        );
        if let Some(exit) = early_exit {
            container.on_exit("", exit);
        }
        Ok(CreateTaskResponse { pid: pid as u32, ..Default::default() })
    }

    async fn do_delete(&self, ctx: &TtrpcContext, req: DeleteRequest) -> Result<DeleteResponse> {
        let c = self.container(ctx, &req.id)?;
        let p = c.delete(&req.exec_id).await?;
        let st = p.lock();
        let resp = DeleteResponse {
            pid: st.pid as u32,
            exit_status: st.exit_status,
            exited_at: st.exited_at.map(timestamp).into(),
            ..Default::default()
        };
        drop(st);
        if req.exec_id.is_empty() {
            self.tasks.remove(&c.namespace, &c.id);
            self.publisher.publish(
                &c.namespace,
                TaskDelete {
                    container_id: c.id.clone(),
                    pid: resp.pid,
                    exit_status: resp.exit_status,
                    exited_at: resp.exited_at.clone(),
                    ..Default::default()
                },
            );
        }
        Ok(resp)
    }

    fn do_state(&self, ctx: &TtrpcContext, req: &StateRequest) -> Result<StateResponse> {
        let c = self.container(ctx, &req.id)?;
        let p = c.process(&req.exec_id)?;
        let st = p.lock();
        Ok(StateResponse {
            id: if req.exec_id.is_empty() { c.id.clone() } else { req.exec_id.clone() },
            bundle: c.bundle.display().to_string(),
            pid: st.pid as u32,
            status: status_pb(st.status).into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: st.exit_status,
            exited_at: st.exited_at.map(timestamp).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }
}

#[async_trait]
impl Task for Service {
    async fn create(&self, ctx: &TtrpcContext, req: CreateTaskRequest) -> ttrpc::Result<CreateTaskResponse> {
        self.asked_to_create.store(true, std::sync::atomic::Ordering::Relaxed);
        let id = req.id.clone();
        self.do_create(ctx, req).await.map_err(|e| {
            // Often the node's setup (runtime binary, root, cgroup driver)
            // rather than the request: containerd's log gets it, once.
            log::error!("create {id} failed: {e}");
            e.into()
        })
    }

    async fn start(&self, ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let r = async {
            let c = self.container(ctx, &req.id)?;
            let pid = c.start(&req.exec_id).await?;
            Ok(StartResponse { pid: pid as u32, ..Default::default() })
        };
        reply(&format!("start {} {}", req.id, req.exec_id), r.await)
    }

    async fn state(&self, ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        reply(&format!("state {} {}", req.id, req.exec_id), self.do_state(ctx, &req))
    }

    async fn delete(&self, ctx: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let what = format!("delete {} {}", req.id, req.exec_id);
        reply(&what, self.do_delete(ctx, req).await)
    }

    async fn pids(&self, ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let r = async {
            let c = self.container(ctx, &req.id)?;
            Ok(PidsResponse { processes: c.pids().await?, ..Default::default() })
        };
        reply(&format!("pids {}", req.id), r.await)
    }

    async fn pause(&self, ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        let r = async { self.container(ctx, &req.id)?.pause().await };
        reply(&format!("pause {}", req.id), r.await).map(|_| Empty::new())
    }

    async fn resume(&self, ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        let r = async { self.container(ctx, &req.id)?.resume().await };
        reply(&format!("resume {}", req.id), r.await).map(|_| Empty::new())
    }

    async fn checkpoint(&self, ctx: &TtrpcContext, req: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        let r = async {
            let c = self.container(ctx, &req.id)?;
            let opts = crate::options::checkpoint_options(req.options.as_ref())?;
            c.checkpoint(&req.path, &opts).await
        };
        reply(&format!("checkpoint {}", req.id), r.await).map(|_| Empty::new())
    }

    async fn kill(&self, ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        let r = async { self.container(ctx, &req.id)?.kill(&req.exec_id, req.signal, req.all).await };
        reply(&format!("kill {} {} signal {}", req.id, req.exec_id, req.signal), r.await).map(|_| Empty::new())
    }

    async fn exec(&self, ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let r = (|| {
            let c = self.container(ctx, &req.id)?;
            let spec = req.spec.as_ref().map(|s| s.value.clone()).unwrap_or_default();
            if spec.is_empty() {
                return Err(Error::InvalidArgument(format!("exec {} of task {}: no process spec", req.exec_id, req.id)));
            }
            let stdio =
                StdioConfig { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone(), terminal: req.terminal };
            c.add_exec(&req.exec_id, stdio, spec)
        })();
        reply(&format!("exec {} {}", req.id, req.exec_id), r).map(|_| Empty::new())
    }

    async fn resize_pty(&self, ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let r = self.container(ctx, &req.id).and_then(|c| c.resize(&req.exec_id, req.width, req.height));
        reply(&format!("resize {} {}", req.id, req.exec_id), r).map(|_| Empty::new())
    }

    async fn close_io(&self, ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let r = self.container(ctx, &req.id).and_then(|c| if req.stdin { c.close_stdin(&req.exec_id) } else { Ok(()) });
        reply(&format!("close io {} {}", req.id, req.exec_id), r).map(|_| Empty::new())
    }

    async fn update(&self, ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let r = async {
            let c = self.container(ctx, &req.id)?;
            let resources =
                req.resources.as_ref().ok_or_else(|| Error::InvalidArgument(format!("task {}: update carries no resources", req.id)))?;
            c.update(resources).await
        };
        reply(&format!("update {}", req.id), r.await).map(|_| Empty::new())
    }

    async fn wait(&self, ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let r = async {
            let c = self.container(ctx, &req.id)?;
            let p = c.process(&req.exec_id)?;
            p.wait().await;
            let st = p.lock();
            Ok(WaitResponse { exit_status: st.exit_status, exited_at: st.exited_at.map(timestamp).into(), ..Default::default() })
        };
        reply(&format!("wait {} {}", req.id, req.exec_id), r.await)
    }

    async fn stats(&self, ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let r =
            self.container(ctx, &req.id).and_then(|c| c.stats()).map(|any| StatsResponse { stats: Some(any).into(), ..Default::default() });
        reply(&format!("stats {}", req.id), r)
    }

    async fn connect(&self, ctx: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        let r = self.container(ctx, &req.id).map(|c| ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: c.init().pid() as u32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        });
        reply(&format!("connect {}", req.id), r)
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<Empty> {
        // A grouped shim serves other tasks still: only the last one ends it.
        if req.now || self.tasks.is_empty() {
            log::info!("shutdown requested ({} tasks left)", self.tasks.len());
            self.shutdown.notify_one();
        }
        Ok(Empty::new())
    }
}
