//! containerd's Tasks API (gRPC, through the containerd-client crate) for the
//! calls ctr cannot make the way containerd's Go client does: an Exec whose
//! request asks for a terminal that its process spec does not, and the exact
//! gRPC code of a Start, Kill or Get. [`with_channel`] serves tests/cri.rs too.

use super::production::block_on;
use super::*;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CreateTaskRequest, DeleteProcessRequest, ExecProcessRequest, GetRequest, KillRequest, ResizePtyRequest, StartRequest, UpdateTaskRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};

/// A failed call: its gRPC code and message (a transport failure is `Unavailable`).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

fn transport(what: String) -> ApiError {
    ApiError { code: Code::Unavailable, message: what }
}

/// A gRPC status as an [`ApiError`].
pub fn status(s: containerd_client::tonic::Status) -> ApiError {
    ApiError { code: s.code(), message: s.message().to_string() }
}

/// Runs `f` with a fresh channel to the containerd socket `sock` (its own
/// API or CRI), bounded by `timeout`.
pub fn with_channel<T, F, Fut>(sock: &Path, timeout: Duration, f: F) -> ApiResult<T>
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = ApiResult<T>>,
{
    let sock = sock.to_path_buf();
    block_on(timeout, async move {
        let ch = containerd_client::connect(&sock).await.map_err(|e| transport(format!("connect {}: {e}", sock.display())))?;
        f(ch).await
    })
    .unwrap_or_else(|| Err(transport(format!("no answer within {timeout:?}"))))
}

/// Runs `f` with a Tasks client of `cd`, bounded by `timeout`.
fn with_tasks<T, F, Fut>(cd: &Containerd, timeout: Duration, f: F) -> ApiResult<T>
where
    F: FnOnce(TasksClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = ApiResult<T>>,
{
    with_channel(&cd.sock, timeout, |ch| f(TasksClient::new(ch)))
}

/// The Tasks API of one private containerd in its test namespace.
pub struct Api<'a> {
    pub cd: &'a Containerd,
}

pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// The type URL containerd's typeurl gives specs.LinuxResources.
pub const LINUX_RESOURCES_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

impl Api<'_> {
    fn ns(&self) -> String {
        self.cd.ns.clone()
    }

    /// Tasks.Exec (adds the exec; it runs at Start).
    pub fn exec(&self, id: &str, exec_id: &str, spec: &[u8], stdout: &str, terminal: bool) -> ApiResult<()> {
        let req = ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            stdout: stdout.into(),
            terminal,
            spec: Some(prost_types::Any { type_url: PROCESS_TYPE_URL.into(), value: spec.to_vec() }),
            ..Default::default()
        };
        let ns = self.ns();
        with_tasks(self.cd, Duration::from_secs(30), |mut t| async move {
            t.exec(containerd_client::with_namespace!(req, ns)).await.map_err(status)?;
            Ok(())
        })
    }

    /// Tasks.Start of the init (`exec_id` empty) or an exec: its pid.
    pub fn start(&self, id: &str, exec_id: &str) -> ApiResult<u32> {
        let req = StartRequest { container_id: id.into(), exec_id: exec_id.into() };
        let ns = self.ns();
        with_tasks(self.cd, Duration::from_secs(60), |mut t| async move {
            let r = t.start(containerd_client::with_namespace!(req, ns)).await.map_err(status)?;
            Ok(r.into_inner().pid)
        })
    }

    /// Tasks.Get: (status name, pid, exit status) of the init or an exec.
    pub fn get(&self, id: &str, exec_id: &str) -> ApiResult<(String, u32, u32)> {
        let req = GetRequest { container_id: id.into(), exec_id: exec_id.into() };
        let ns = self.ns();
        let what = format!("Tasks.Get {id} {exec_id}");
        with_tasks(self.cd, Duration::from_secs(20), |mut t| async move {
            let r = t.get(containerd_client::with_namespace!(req, ns)).await.map_err(status)?;
            let p = r.into_inner().process.ok_or_else(|| transport(format!("{what}: no process")))?;
            let name = match p.status {
                1 => "CREATED",
                2 => "RUNNING",
                3 => "STOPPED",
                4 => "PAUSED",
                _ => "UNKNOWN",
            };
            Ok((name.to_string(), p.pid, p.exit_status))
        })
    }

    /// Tasks.Kill.
    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> ApiResult<()> {
        let req = KillRequest { container_id: id.into(), exec_id: exec_id.into(), signal, all };
        let ns = self.ns();
        with_tasks(self.cd, Duration::from_secs(30), |mut t| async move {
            t.kill(containerd_client::with_namespace!(req, ns)).await.map_err(status)?;
            Ok(())
        })
    }

    /// Tasks.DeleteProcess of an exec: its exit status.
    pub fn delete_exec(&self, id: &str, exec_id: &str) -> ApiResult<u32> {
        let req = DeleteProcessRequest { container_id: id.into(), exec_id: exec_id.into() };
        let ns = self.ns();
        with_tasks(self.cd, Duration::from_secs(30), |mut t| async move {
            let r = t.delete_process(containerd_client::with_namespace!(req, ns)).await.map_err(status)?;
            Ok(r.into_inner().exit_status)
        })
    }

    /// Tasks.Create for an existing container (`ctr container create`), with
    /// `stdout` as its only stdio: the init's pid.
    pub fn create_task(&self, id: &str, stdout: &str, terminal: bool) -> ApiResult<u32> {
        let req = CreateTaskRequest { container_id: id.into(), stdout: stdout.into(), terminal, ..Default::default() };
        let ns = self.ns();
        with_tasks(self.cd, Duration::from_secs(60), |mut t| async move {
            let r = t.create(containerd_client::with_namespace!(req, ns)).await.map_err(status)?;
            Ok(r.into_inner().pid)
        })
    }

    /// Tasks.ResizePty.
    pub fn resize(&self, id: &str, exec_id: &str, width: u32, height: u32) -> ApiResult<()> {
        let req = ResizePtyRequest { container_id: id.into(), exec_id: exec_id.into(), width, height };
        let ns = self.ns();
        with_tasks(self.cd, Duration::from_secs(20), |mut t| async move {
            t.resize_pty(containerd_client::with_namespace!(req, ns)).await.map_err(status)?;
            Ok(())
        })
    }

    /// Tasks.Update with `resources`, the OCI LinuxResources as JSON (ctr
    /// has no flag for pids or cpu.max on every line).
    pub fn update(&self, id: &str, resources_json: &str) -> ApiResult<()> {
        let req = UpdateTaskRequest {
            container_id: id.into(),
            resources: Some(prost_types::Any { type_url: LINUX_RESOURCES_URL.into(), value: resources_json.as_bytes().to_vec() }),
            annotations: Default::default(),
        };
        let ns = self.ns();
        with_tasks(self.cd, Duration::from_secs(60), |mut t| async move {
            t.update(containerd_client::with_namespace!(req, ns)).await.map_err(status)?;
            Ok(())
        })
    }
}
