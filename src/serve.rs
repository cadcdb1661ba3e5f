//! The long-lived shim server: subreaper, ttrpc task service, event forwarder.

use std::os::fd::{FromRawFd, RawFd};
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
use crate::upgrade::wire::{Conn, Gate, Incoming};
use crate::upgrade::{ShimState, Upgrader};

const TASK_V3: &str = "containerd.task.v3.Task";
const TASK_V2: &str = "containerd.task.v2.Task";
const START_WATCHDOG: std::time::Duration = std::time::Duration::from_secs(5);

/// Where `start` puts the bound listening socket (and where a hand-over keeps it).
pub const LISTENER_FD: RawFd = 3;

pub fn run(flags: &Flags) -> Result<()> {
    let bundle = std::env::current_dir().map_err(|e| Error::io("current directory", e))?;
    // Started by an upgrade: the previous binary's state, read before
    // anything else so the log goes on on its fifo.
    let resumed = match flags.upgrade_state.as_str() {
        "" => None,
        fd => Some(take_state(fd)?),
    };
    // SAFETY: the previous binary kept its log fd open for us and named it.
    let log_fd = resumed.as_ref().and_then(|s| s.log).and_then(|fd| unsafe { crate::fdpass::take(fd) }.ok());
    match log_fd {
        Some(fd) => crate::logger::init_from(fd.into(), flags.debug, &flags.namespace, &flags.id),
        None => crate::logger::init(&bundle, flags.debug, &flags.namespace, &flags.id),
    }
    // Container processes are reparented to the shim, which reaps them.
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| Error::io("become subreaper", e.into()))?;
    // The blocking pool only opens output fifos (see stdio): its threads need
    // not outlive that, so an idle shim is one thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_millis(500))
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    let res = rt.block_on(serve(flags, resumed));
    if let Err(e) = &res {
        log::error!("shim server failed: {e}");
    }
    // Tasks blocked on fifos nobody opens must not keep the process alive.
    rt.shutdown_background();
    res
}

fn take_state(fd: &str) -> Result<ShimState> {
    let fd: RawFd = fd.parse().map_err(|_| Error::InvalidArgument(format!("-upgrade-state {fd:?} is not an fd number")))?;
    // SAFETY: the previous binary passed this memfd and nothing else owns it.
    let file = unsafe { crate::fdpass::take(fd) }.map_err(|e| Error::io(format!("upgrade state fd {fd}"), e))?;
    crate::upgrade::read_state(file.into())
}

async fn serve(flags: &Flags, resumed: Option<ShimState>) -> Result<()> {
    // SAFETY: `start` passes the bound listening socket as fd 3 (and a
    // hand-over keeps it there); nothing else owns it.
    let listener = unsafe { UnixListener::from_raw_fd(LISTENER_FD) };
    listener.set_nonblocking(true).map_err(|e| Error::io("shim socket", e))?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| Error::io("shim socket", e))?;
    let gate = Arc::new(Gate::default());

    let (reaper, mut exits) = Reaper::new();
    let ttrpc_address = std::env::var(crate::manager::TTRPC_ADDRESS).unwrap_or_default();
    let (publisher, forwarder) = Publisher::new(&ttrpc_address);
    tokio::spawn(forwarder);
    let shutdown = Arc::new(Notify::new());
    let service = Arc::new(Service::new(reaper.clone(), publisher.clone(), &flags.namespace, shutdown.clone()));
    let mut taken_over = Vec::new();
    let resumed_nonce = match resumed {
        Some(state) => {
            let (tasks, conns) = (state.containers.len(), state.connections.len());
            // SAFETY: the previous binary passed every fd the images name.
            if let Err(e) = unsafe { service.take_over(state.containers, &reaper, &publisher) } {
                log::error!("upgrade from Keel {}: {e}", state.version);
            }
            for c in state.connections {
                // SAFETY: as above: a connection the previous binary served.
                let stream = unsafe { crate::fdpass::take(c.fd) }
                    .map(std::os::unix::net::UnixStream::from)
                    .and_then(|s| s.set_nonblocking(true).map(|_| s))
                    .and_then(tokio::net::UnixStream::from_std);
                match stream {
                    Ok(s) => taken_over.push(Conn::new(s, gate.clone(), c.open_requests)),
                    Err(e) => log::error!("upgrade: connection fd {}: {e}", c.fd),
                }
            }
            log::info!("took over from Keel {}: {tasks} tasks, {conns} connections", state.version);
            Some(state.nonce)
        }
        None => None,
    };
    let resumed = resumed_nonce.is_some();
    let r = reaper.clone();
    tokio::spawn(async move {
        if let Err(e) = r.run().await {
            log::error!("reaper stopped: {e}");
        }
    });
    let r = reaper.clone();
    tokio::spawn(async move {
        while let Some((owner, exit)) = exits.recv().await {
            owner.deliver(exit);
            r.delivered();
        }
    });
    let upgrader = Upgrader::new(service.clone(), gate.clone(), reaper.clone(), publisher.clone(), resumed_nonce);

    // containerd 1.6/1.7 and 2.x given a plain address call task v2; 2.x
    // given a v3 bootstrap reply calls task v3. Same messages, two names.
    let task: Arc<dyn Task + Send + Sync> = service.clone();
    let mut services = create_task(task.clone());
    let mut v2 = create_task(task);
    if let Some(svc) = v2.remove(TASK_V3) {
        services.insert(TASK_V2.to_string(), svc);
    }
    services.extend(upgrader.services());
    let listener = Listener::new(Incoming::new(listener, taken_over, gate));
    let mut server = Server::new().add_listener(listener).register_service(services);
    server.start().await.map_err(Error::internal("start ttrpc server"))?;
    log::info!("serving on {}", flags.socket);

    // containerd calls Create right after `start`. A shim that hears nothing
    // was abandoned (containerd failed after starting it): it must not linger.
    let (watched, alarm) = (service.clone(), shutdown.clone());
    tokio::spawn(async move {
        if resumed {
            return;
        }
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
