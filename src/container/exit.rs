//! Turning reaped exits into state and /tasks/exit events, in the order
//! containerd relies on: an exec's exit before its container's init exit,
//! and no exit before the start event of its process.

use std::sync::Arc;

use containerd_shim_protos::events::task::TaskExit;

use super::process::Process;
use super::{lock, Container};
use crate::events::timestamp;
use crate::reaper::{Exit, ExitSink};

impl ExitSink for Container {
    fn exited(self: Arc<Self>, exec_id: &str, exit: Exit) {
        self.on_exit(exec_id, exit);
    }
}

impl Container {
    /// Entry point for an exit the reaper routed to this container.
    pub fn on_exit(self: &Arc<Self>, exec_id: &str, exit: Exit) {
        let Ok(p) = self.process(exec_id) else {
            log::debug!("exit of pid {} for deleted exec {exec_id} of {}", exit.pid, self.id);
            return;
        };
        let now = p.lock().reaped_now(exit);
        if let Some(exit) = now {
            self.handle_exit(p, exit);
        }
    }

    pub(super) fn handle_exit(self: &Arc<Self>, p: Arc<Process>, exit: Exit) {
        let c = self.clone();
        c.exiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            if p.is_init() && !c.own_pid_ns {
                // Without its own pid namespace the init's death takes nothing
                // with it: kill the rest before anything is reported (and
                // before draining, as they may hold the output open), like
                // runc-v2's ShouldKillAllOnExit.
                if let Err(e) = c.runtime.kill(&c.id, libc::SIGKILL as u32, true).await {
                    log::warn!("task {}: kill the processes its init left: {e}", c.id);
                }
            }
            // Output written before the exit reaches containerd before the exit does.
            p.drain_io().await;
            if p.is_init() {
                let held = {
                    let mut gate = lock(&c.gate);
                    let hold = gate.running_execs > 0;
                    if hold {
                        gate.held_init = Some(exit);
                    }
                    hold
                };
                if !held {
                    c.publish_exit(&p, exit);
                }
            } else {
                c.publish_exit(&p, exit);
                c.exec_finished();
            }
            c.exiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }

    /// An exec's exit is out (or it never started): release a held init exit.
    pub(super) fn exec_finished(&self) {
        let held = {
            let mut gate = lock(&self.gate);
            gate.running_execs = gate.running_execs.saturating_sub(1);
            if gate.running_execs == 0 {
                gate.held_init.take()
            } else {
                None
            }
        };
        if let Some(exit) = held {
            self.publish_exit(&self.init, exit);
        }
    }

    fn publish_exit(&self, p: &Process, exit: Exit) {
        // An OOM kill that caused this exit is reported before it.
        self.check_oom();
        p.set_exited(exit, &self.id);
        let exited_at = p.lock().exited_at.map(timestamp);
        self.publisher.publish(
            &self.namespace,
            TaskExit {
                container_id: self.id.clone(),
                id: if p.is_init() { self.id.clone() } else { p.exec_id.clone() },
                pid: exit.pid as u32,
                exit_status: exit.status as u32,
                exited_at: exited_at.into(),
                ..Default::default()
            },
        );
    }
}
