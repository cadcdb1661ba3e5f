//! Ctr events.

use super::*;

/// One line of `ctr events`.
///
/// Both lines print `<timestamp> <namespace> <topic> <json>`, where the
/// timestamp is Go's `time.Time` string with spaces in it, e.g.
/// `2026-11-24 00:18:15.5 +0000 UTC ns /tasks/exit {"container_id":...}`.
/// Payload differences: 1.6 prints `exited_at` as an RFC 3339 string, 2.x as
/// `{"seconds":..,"nanos":..}`.
#[derive(Debug, Clone)]
pub struct Event {
    pub namespace: String,
    pub topic: String,
    pub payload: serde_json::Value,
    pub raw: String,
}

impl Event {
    pub fn parse(line: &str) -> Option<Event> {
        let toks: Vec<&str> = line.split(' ').collect();
        let ti = toks.iter().position(|t| t.starts_with('/'))?;
        if ti == 0 {
            return None;
        }
        let namespace = toks[ti - 1].to_string();
        let topic = toks[ti].to_string();
        let rest = toks[ti + 1..].join(" ");
        let payload = serde_json::from_str(rest.trim()).unwrap_or(serde_json::Value::String(rest));
        Some(Event { namespace, topic, payload, raw: line.to_string() })
    }

    /// `container_id` of task events, `id` of container events.
    pub fn container_id(&self) -> Option<&str> {
        self.payload["container_id"].as_str().or_else(|| self.payload["id"].as_str())
    }
}

/// `ctr events` in the background. Derefs to an [`EventsHandle`] that other
/// threads can hold.
pub struct EventsWatcher {
    child: Child,
    handle: EventsHandle,
}

/// The events collected by an [`EventsWatcher`], shareable across threads.
#[derive(Clone)]
pub struct EventsHandle {
    shared: Arc<(Mutex<Vec<Event>>, Condvar)>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl std::ops::Deref for EventsWatcher {
    type Target = EventsHandle;
    fn deref(&self) -> &EventsHandle {
        &self.handle
    }
}

impl EventsWatcher {
    pub fn new(mut child: Child) -> EventsWatcher {
        let shared = Arc::new((Mutex::new(Vec::<Event>::new()), Condvar::new()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let (s2, l2) = (shared.clone(), lines.clone());
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap().push(line.clone());
                if let Some(ev) = Event::parse(&line) {
                    let (m, cv) = &*s2;
                    m.lock().unwrap().push(ev);
                    cv.notify_all();
                }
            }
        });
        EventsWatcher { child, handle: EventsHandle { shared, lines } }
    }

    /// A handle for another thread.
    pub fn handle(&self) -> EventsHandle {
        self.handle.clone()
    }
}

impl EventsHandle {
    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.shared.0.lock().unwrap().clone()
    }

    /// Raw lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The first event (already seen or to come) matching `pred`, or `None` after `timeout`.
    pub fn wait_for(&self, pred: impl Fn(&Event) -> bool, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.shared;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(e) = g.iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Like `wait_for`, panicking with what was seen when nothing matches.
    pub fn expect(&self, what: &str, pred: impl Fn(&Event) -> bool, timeout: Duration) -> Event {
        self.wait_for(pred, timeout)
            .unwrap_or_else(|| panic!("no event {what} within {timeout:?}; events seen:\n{}", self.lines().join("\n")))
    }
}

impl Drop for EventsWatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
