//! Publishes task events to containerd in the order they were raised: one
//! forwarder task drains one channel, so ordering is the channel's order.

use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::{
    TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::{any::Any, timestamp::Timestamp};
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use containerd_shim_protos::ttrpc::context;
use tokio::sync::{mpsc, oneshot};

/// A task event, the topic containerd files it under, and its type URL.
/// The URL is a constant: asking protobuf for the descriptor would build the
/// whole reflection pool, hundreds of KiB of heap in every shim.
pub trait TaskEvent: Message {
    const TOPIC: &'static str;
    const TYPE_URL: &'static str;
}

macro_rules! topics {
    ($($ty:ident => $topic:literal),* $(,)?) => {
        $(impl TaskEvent for $ty {
            const TOPIC: &'static str = $topic;
            const TYPE_URL: &'static str = concat!("containerd.events.", stringify!($ty));
        })*
    };
}

topics! {
    TaskCreate => "/tasks/create",
    TaskStart => "/tasks/start",
    TaskExecAdded => "/tasks/exec-added",
    TaskExecStarted => "/tasks/exec-started",
    TaskPaused => "/tasks/paused",
    TaskResumed => "/tasks/resumed",
    TaskCheckpointed => "/tasks/checkpointed",
    TaskOOM => "/tasks/oom",
    TaskExit => "/tasks/exit",
    TaskDelete => "/tasks/delete",
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32, ..Default::default() }
}

enum Item {
    Event(Envelope),
    /// Answered once every event queued before it was forwarded.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Item>,
}

impl Publisher {
    /// The publisher and the forwarder future the caller must spawn.
    pub fn new(ttrpc_address: &str) -> (Self, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let address = if ttrpc_address.contains("://") { ttrpc_address.to_string() } else { format!("unix://{ttrpc_address}") };
        (Publisher { tx }, forward(address, rx))
    }

    pub fn publish<E: TaskEvent>(&self, namespace: &str, event: E) {
        log::debug!("event {} in {namespace}", E::TOPIC);
        let value = match event.write_to_bytes() {
            Ok(v) => v,
            Err(e) => {
                log::error!("encode {} event: {e}", E::TOPIC);
                return;
            }
        };
        let envelope = Envelope {
            timestamp: Some(timestamp(SystemTime::now())).into(),
            namespace: namespace.to_string(),
            topic: E::TOPIC.to_string(),
            event: Some(Any { type_url: E::TYPE_URL.to_string(), value, ..Default::default() }).into(),
            ..Default::default()
        };
        if self.tx.send(Item::Event(envelope)).is_err() {
            log::error!("event forwarder is gone; {} event dropped", E::TOPIC);
        }
    }
}

impl Publisher {
    /// Waits until everything published so far reached containerd (or was
    /// given up); false if that took longer than `limit`.
    pub async fn flush(&self, limit: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Item::Flush(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())))
    }
}

/// How long one event is retried while containerd is unreachable (it may be
/// restarting) before it is given up, loudly.
const RETRY_FOR: Duration = Duration::from_secs(300);

async fn forward(address: String, mut rx: mpsc::UnboundedReceiver<Item>) {
    let mut client: Option<EventsClient> = None;
    while let Some(item) = rx.recv().await {
        let envelope = match item {
            Item::Event(e) => e,
            Item::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(20);
        let req = ForwardRequest { envelope: Some(envelope).into(), ..Default::default() };
        loop {
            if client.is_none() {
                match Client::connect(&address).await {
                    Ok(c) => client = Some(EventsClient::new(c)),
                    Err(e) => log::warn!("connect to containerd at {address}: {e}"),
                }
            }
            if let Some(c) = &client {
                match c.forward(context::with_timeout(Duration::from_secs(5).as_nanos() as i64), &req).await {
                    Ok(_) => break,
                    Err(e) => {
                        log::warn!("forward {} event: {e}", req.envelope.topic);
                        client = None;
                    }
                }
            }
            if started.elapsed() > RETRY_FOR {
                log::error!("giving up on {} event after {}s", req.envelope.topic, RETRY_FOR.as_secs());
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// A publisher whose events stay in memory, for the container core's unit tests.
#[cfg(test)]
pub(crate) mod recording {
    use super::*;

    pub struct Recorded(mpsc::UnboundedReceiver<Item>);

    pub fn publisher() -> (Publisher, Recorded) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Publisher { tx }, Recorded(rx))
    }

    impl Recorded {
        /// Topics published since the last call; an exit as "/tasks/exit ID STATUS".
        pub fn take(&mut self) -> Vec<String> {
            let mut out = Vec::new();
            while let Ok(item) = self.0.try_recv() {
                let Item::Event(env) = item else { continue };
                if env.topic == TaskExit::TOPIC {
                    let exit = TaskExit::parse_from_bytes(&env.event.value).unwrap_or_default();
                    out.push(format!("{} {} {}", env.topic, exit.id, exit.exit_status));
                } else {
                    out.push(env.topic.clone());
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_are_the_protobuf_full_names() {
        fn check<E: TaskEvent + containerd_shim_protos::protobuf::MessageFull>() {
            assert_eq!(E::TYPE_URL, E::descriptor().full_name());
        }
        check::<TaskCreate>();
        check::<TaskStart>();
        check::<TaskExecAdded>();
        check::<TaskExecStarted>();
        check::<TaskPaused>();
        check::<TaskResumed>();
        check::<TaskCheckpointed>();
        check::<TaskOOM>();
        check::<TaskExit>();
        check::<TaskDelete>();
    }
}
