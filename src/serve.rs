//! The long-lived shim server: subreaper, ttrpc task service, event forwarder.

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use containerd_shim_protos::shim_async::{create_task, Task};
use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use containerd_shim_protos::ttrpc::r#async::Server;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::args::Flags;
use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::reaper::Reaper;
use crate::service::Service;

const TASK_V3: &str = "containerd.task.v3.Task";
const TASK_V2: &str = "containerd.task.v2.Task";
const START_WATCHDOG: std::time::Duration = std::time::Duration::from_secs(5);

pub fn run(flags: &Flags) -> Result<()> {
    let bundle = std::env::current_dir().map_err(|e| Error::io("current directory", e))?;
    crate::logger::init(&bundle, flags.debug, &flags.namespace, &flags.id);
    // Container processes are reparented to the shim, which reaps them.
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| Error::io("become subreaper", e.into()))?;
    // The blocking pool only opens output fifos (see stdio): its threads need
    // not outlive that, so an idle shim is one thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_millis(500))
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    let res = rt.block_on(serve(flags));
    if let Err(e) = &res {
        log::error!("shim server failed: {e}");
    }
    // Tasks blocked on fifos nobody opens must not keep the process alive.
    rt.shutdown_background();
    res
}

async fn serve(flags: &Flags) -> Result<()> {
    // SAFETY: `start` passes the bound listening socket as fd 3; nothing else owns it.
    let listener = unsafe { UnixListener::from_raw_fd(3) };
    listener.set_nonblocking(true).map_err(|e| Error::io("shim socket", e))?;
    let listener = Listener::try_from(listener).map_err(|e| Error::io("shim socket", e))?;

    let (reaper, mut exits) = Reaper::new();
    let ttrpc_address = std::env::var(crate::manager::TTRPC_ADDRESS).unwrap_or_default();
    let (publisher, forwarder) = Publisher::new(&ttrpc_address);
    tokio::spawn(forwarder);
    let shutdown = Arc::new(Notify::new());
    let service = Arc::new(Service::new(reaper.clone(), publisher.clone(), &flags.namespace, shutdown.clone()));
    tokio::spawn(async move {
        if let Err(e) = reaper.run().await {
            log::error!("reaper stopped: {e}");
        }
    });
    tokio::spawn(async move {
        while let Some((owner, exit)) = exits.recv().await {
            owner.deliver(exit);
        }
    });

    // containerd 1.6/1.7 and 2.x given a plain address call task v2; 2.x
    // given a v3 bootstrap reply calls task v3. Same messages, two names.
    let task: Arc<dyn Task + Send + Sync> = service.clone();
    let mut services = create_task(task.clone());
    let mut v2 = create_task(task);
    if let Some(svc) = v2.remove(TASK_V3) {
        services.insert(TASK_V2.to_string(), svc);
    }
    let mut server = Server::new().add_listener(listener).register_service(services);
    server.start().await.map_err(Error::internal("start ttrpc server"))?;
    log::info!("serving on {}", flags.socket);

    // containerd calls Create right after `start`. A shim that hears nothing
    // was abandoned (containerd failed after starting it): it must not linger.
    let (watched, alarm) = (service.clone(), shutdown.clone());
    tokio::spawn(async move {
        tokio::time::sleep(START_WATCHDOG).await;
        if !watched.asked_to_create() {
            log::warn!("no Create within {}s of start: containerd gave up on this shim; exiting", START_WATCHDOG.as_secs());
            alarm.notify_one();
        }
    });

    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    tokio::select! {
        _ = shutdown.notified() => {}
        _ = sigterm.recv() => log::info!("SIGTERM"),
    }
    // Let the last events (the delete) reach containerd before leaving.
    publisher.flush(std::time::Duration::from_secs(3)).await;
    // Unlinked first: nobody connects after Shutdown, and should closing
    // the connections stall until the shim is killed, no socket is left.
    if !flags.socket.is_empty() {
        let _ = std::fs::remove_file(Path::new(&flags.socket));
    }
    let _ = server.shutdown().await;
    Ok(())
}
