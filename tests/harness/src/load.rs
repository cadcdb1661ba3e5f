//! Load for the node-scale benchmark (keel-lab `probe`, `execs`, `get`):
//! exec probes as kubelet's ExecSync drives them (Exec, Start, Wait,
//! DeleteProcess through containerd's Tasks API, over one long-lived
//! connection as kubelet keeps one), and Tasks.Get (containerd asks the shim
//! for State) timed one by one.

use std::time::{Duration, Instant};

use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{DeleteProcessRequest, ExecProcessRequest, GetRequest, StartRequest, WaitRequest};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Request;
use containerd_client::with_namespace;

use super::api::PROCESS_TYPE_URL;
use super::CONTAINER_PATH;

/// What one timed call came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ok { ms: f64 },
    Failed { what: String },
}

/// The process spec of a probe: `args` as root in `/`, no terminal, no stdio.
pub fn probe_spec(args: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "args": args, "cwd": "/", "env": [CONTAINER_PATH], "user": {"uid": 0, "gid": 0}, "terminal": false,
    }))
    .unwrap_or_default()
}

pub async fn connect(sock: &std::path::Path) -> Result<TasksClient<Channel>, String> {
    let ch = containerd_client::connect(sock).await.map_err(|e| format!("connect {}: {e}", sock.display()))?;
    Ok(TasksClient::new(ch))
}

/// One exec probe: Exec, Start, Wait, DeleteProcess; the exit code must be 0.
pub async fn probe(t: &mut TasksClient<Channel>, ns: &str, id: &str, exec_id: &str, spec: &[u8]) -> Outcome {
    let t0 = Instant::now();
    let fail = |step: &str, s: containerd_client::tonic::Status| Outcome::Failed {
        what: format!("{step} {id}/{exec_id}: {:?}: {}", s.code(), s.message()),
    };
    let req = ExecProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        spec: Some(prost_types::Any { type_url: PROCESS_TYPE_URL.into(), value: spec.to_vec() }),
        ..Default::default()
    };
    if let Err(s) = t.exec(with_namespace!(req, ns)).await {
        return fail("Exec", s);
    }
    let req = StartRequest { container_id: id.into(), exec_id: exec_id.into() };
    let started = t.start(with_namespace!(req, ns)).await;
    let waited = match started {
        Ok(_) => {
            let req = WaitRequest { container_id: id.into(), exec_id: exec_id.into() };
            t.wait(with_namespace!(req, ns)).await.map(|r| r.into_inner().exit_status)
        }
        Err(s) => Err(s),
    };
    // Deleted whatever happened, so a failed probe leaves nothing behind.
    let req = DeleteProcessRequest { container_id: id.into(), exec_id: exec_id.into() };
    let deleted = t.delete_process(with_namespace!(req, ns)).await;
    match (waited, deleted) {
        (Err(s), _) => fail("Start/Wait", s),
        (Ok(code), _) if code != 0 => Outcome::Failed { what: format!("probe {id}/{exec_id} exited {code}") },
        (Ok(_), Err(s)) => fail("DeleteProcess", s),
        (Ok(_), Ok(_)) => Outcome::Ok { ms: t0.elapsed().as_secs_f64() * 1e3 },
    }
}

/// Tasks.Get of a task's init (containerd asks its shim for State).
pub async fn get(t: &mut TasksClient<Channel>, ns: &str, id: &str) -> Outcome {
    let t0 = Instant::now();
    let req = GetRequest { container_id: id.into(), exec_id: String::new() };
    match t.get(with_namespace!(req, ns)).await {
        Ok(_) => Outcome::Ok { ms: t0.elapsed().as_secs_f64() * 1e3 },
        Err(s) => Outcome::Failed { what: format!("Tasks.Get {id}: {:?}: {}", s.code(), s.message()) },
    }
}

/// Every container of `ids` probed once per `period` for `duration`, the
/// containers' schedules spread evenly over the period (as kubelet's probe
/// workers start at different times); each container's probes run one after
/// another on their own connection.
pub async fn probe_loop(
    sock: &std::path::Path,
    ns: &str,
    ids: &[String],
    args: &[String],
    period: Duration,
    duration: Duration,
) -> Vec<Outcome> {
    let spec = probe_spec(args);
    let begin = tokio::time::Instant::now();
    let mut workers = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (sock, ns, id, spec) = (sock.to_path_buf(), ns.to_string(), id.clone(), spec.clone());
        let offset = period.mul_f64(i as f64 / ids.len().max(1) as f64);
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut t = match connect(&sock).await {
                Ok(t) => t,
                Err(what) => return vec![Outcome::Failed { what }],
            };
            let mut tick = tokio::time::interval_at(begin + offset, period);
            // A probe that overruns its period delays the next one, as kubelet's does.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            loop {
                tick.tick().await;
                if begin.elapsed() >= duration {
                    break;
                }
                n += 1;
                out.push(probe(&mut t, &ns, &id, &format!("probe-{n}"), &spec).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        match w.await {
            Ok(v) => all.extend(v),
            Err(e) => all.push(Outcome::Failed { what: format!("probe worker: {e}") }),
        }
    }
    all
}

/// `count` probes into `id`, one after another.
pub async fn exec_series(sock: &std::path::Path, ns: &str, id: &str, args: &[String], count: u64, first: u64) -> Vec<Outcome> {
    let spec = probe_spec(args);
    let mut t = match connect(sock).await {
        Ok(t) => t,
        Err(what) => return vec![Outcome::Failed { what }],
    };
    let mut out = Vec::with_capacity(count as usize);
    for n in first..first + count {
        out.push(probe(&mut t, ns, id, &format!("series-{n}"), &spec).await);
    }
    out
}

/// Tasks.Get of each of `ids`, `rounds` times over.
pub async fn get_series(sock: &std::path::Path, ns: &str, ids: &[String], rounds: usize) -> Vec<Outcome> {
    let mut t = match connect(sock).await {
        Ok(t) => t,
        Err(what) => return vec![Outcome::Failed { what }],
    };
    let mut out = Vec::new();
    for _ in 0..rounds {
        for id in ids {
            out.push(get(&mut t, ns, id).await);
        }
    }
    out
}

/// Outcomes as JSON: `{"ms": [...], "errors": [...]}`.
pub fn to_json(outcomes: &[Outcome]) -> serde_json::Value {
    let ms: Vec<f64> = outcomes.iter().filter_map(|o| if let Outcome::Ok { ms } = o { Some(*ms) } else { None }).collect();
    let errors: Vec<&str> =
        outcomes.iter().filter_map(|o| if let Outcome::Failed { what } = o { Some(what.as_str()) } else { None }).collect();
    serde_json::json!({ "ms": ms, "errors": errors })
}
