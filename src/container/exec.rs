//! Execs: added (validated, not yet run), then started with `runtime exec`.

use std::sync::Arc;

use containerd_shim_protos::events::task::{TaskExecAdded, TaskExecStarted};

use super::process::{Op, Process, Status};
use super::{lock, Container};
use crate::error::{Error, Result};
use crate::runtime::read_pid_file;
use crate::stdio::{self, StdioConfig};

impl Container {
    pub fn add_exec(&self, exec_id: &str, stdio: StdioConfig, spec: Vec<u8>) -> Result<()> {
        crate::tasklist::validate_id("exec id", exec_id)?;
        let invalid = || Error::malformed::<serde_json::Error>(format!("exec {exec_id} of task {}: invalid process spec", self.id));
        serde_json::from_slice::<oci_spec::runtime::Process>(&spec).map_err(invalid())?;
        let spec = with_terminal(&spec, stdio.terminal).map_err(invalid())?;
        stdio::parse_target(&stdio.stdout).and(stdio::parse_target(&stdio.stderr)).map_err(Error::from)?;
        {
            // An init that died but whose exit is held for a starting exec is
            // still running to containerd: adding an exec is allowed, starting
            // it is not (see `start_exec`).
            let st = self.init.lock();
            self.init.check(&st, Op::AddExec, &self.id)?;
        }
        let mut execs = lock(&self.execs);
        if execs.contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!("exec {exec_id} already exists in task {}", self.id)));
        }
        execs.insert(exec_id.to_string(), Arc::new(Process::new(exec_id, stdio, spec)));
        drop(execs);
        self.publisher
            .publish(&self.namespace, TaskExecAdded { container_id: self.id.clone(), exec_id: exec_id.to_string(), ..Default::default() });
        Ok(())
    }

    pub(super) async fn start_exec(self: &Arc<Self>, p: &Arc<Process>) -> Result<i32> {
        {
            // Checked and counted under the gate, so an init exit either
            // refuses this start or waits for this exec's outcome.
            let mut gate = lock(&self.gate);
            let mut st = p.lock();
            p.check(&st, Op::Start, &self.id)?;
            self.init.check(&self.init.lock(), Op::StartExec(&p.exec_id), &self.id)?;
            p.begin_start(&mut st, &self.id)?;
            gate.running_execs += 1;
        }
        match self.run_exec(p).await {
            Ok(pid) => {
                self.publisher.publish(
                    &self.namespace,
                    TaskExecStarted { container_id: self.id.clone(), exec_id: p.exec_id.clone(), pid: pid as u32, ..Default::default() },
                );
                self.release_pending_exit(p);
                Ok(pid)
            }
            Err(e) => {
                p.lock().end_start();
                self.exec_finished();
                Err(e)
            }
        }
    }

    async fn run_exec(&self, p: &Arc<Process>) -> Result<i32> {
        let stem = format!("exec-{}", p.exec_id);
        let spec_file = self.bundle.join(format!("{stem}.json"));
        let pid_file = self.bundle.join(format!("{stem}.pid"));
        std::fs::write(&spec_file, &p.spec).map_err(|e| Error::io(format!("write {}", spec_file.display()), e))?;
        self.remove_file(&pid_file);
        let (rio, prepared) = stdio::prepare(&p.stdio, self.io_owner(), &self.namespace, &self.id, &self.reaper).await?;
        let sub = self.reaper.subscribe();
        let res = self.runtime.exec(&self.id, &spec_file, &pid_file, prepared.console.as_ref().map(|c| c.path()), rio).await;
        self.remove_file(&spec_file);
        res?;
        let master = match &prepared.console {
            Some(c) => Some(c.receive().await?),
            None => None,
        };
        let pid = read_pid_file(&pid_file).map_err(|e| Error::io(format!("{}: read pid file", p.describe(&self.id)), e))?;
        self.remove_file(&pid_file);
        let claim = self.reaper.claim(pid, self.owner(&p.exec_id), &sub);
        drop(sub);
        p.set_io(prepared.start(master).await?);
        let early = claim.early;
        let mut st = p.lock();
        st.pid = pid;
        st.pidfd = claim.pidfd.map(Arc::new);
        p.transition(&mut st, Status::Running, &self.id)?;
        if let Some(exit) = early {
            st.reaped_now(exit);
        }
        Ok(pid)
    }
}

/// containerd's Go client asks for a terminal in the request and may send the
/// container's own process spec, whose `terminal` says otherwise: the request
/// decides, as with runc-v2. Other fields pass through untouched.
fn with_terminal(spec: &[u8], terminal: bool) -> serde_json::Result<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(spec)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("terminal".into(), terminal.into());
    }
    serde_json::to_vec(&v)
}

#[cfg(test)]
mod tests {
    use super::with_terminal;

    #[test]
    fn the_request_decides_the_terminal() {
        let spec = br#"{"terminal":false,"args":["sh"],"cwd":"/","x-unknown":{"kept":1}}"#;
        let v: serde_json::Value = serde_json::from_slice(&with_terminal(spec, true).expect("json")).expect("json");
        assert_eq!(v["terminal"], true);
        assert_eq!(v["x-unknown"]["kept"], 1, "fields Keel does not know pass through");
        let v: serde_json::Value =
            serde_json::from_slice(&with_terminal(br#"{"terminal":true,"args":["sh"],"cwd":"/"}"#, false).expect("json")).expect("json");
        assert_eq!(v["terminal"], false);
    }
}
