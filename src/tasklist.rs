//! The shim's containers, keyed by namespace and id.

use crate::sync::lock;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use containerd_shim_protos::ttrpc::Code;

/// A task id that is malformed, taken or unknown.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskListError {
    #[error("invalid {kind} {id:?}: {why}")]
    BadId { kind: String, id: String, why: String },
    #[error("task {id} already exists in namespace {namespace}")]
    Exists { id: String, namespace: String },
    #[error("task {id} is already being created in namespace {namespace}")]
    Creating { id: String, namespace: String },
    #[error("task {id} not found in namespace {namespace}")]
    NotFound { id: String, namespace: String },
}

impl TaskListError {
    pub fn code(&self) -> Code {
        match self {
            TaskListError::BadId { .. } => Code::INVALID_ARGUMENT,
            TaskListError::Exists { .. } | TaskListError::Creating { .. } => Code::ALREADY_EXISTS,
            TaskListError::NotFound { .. } => Code::NOT_FOUND,
        }
    }
}

type Result<T> = std::result::Result<T, TaskListError>;

/// containerd's identifier rules: 1-76 characters, alphanumerics separated by
/// single `.`, `_` or `-`, starting and ending with an alphanumeric.
pub fn validate_id(kind: &str, id: &str) -> Result<()> {
    let bad = |why: &str| Err(TaskListError::BadId { kind: kind.into(), id: id.into(), why: why.into() });
    if id.is_empty() {
        return bad("must not be empty");
    }
    if id.len() > 76 {
        return bad("longer than 76 characters");
    }
    let bytes = id.as_bytes();
    let sep = |c: u8| matches!(c, b'.' | b'_' | b'-');
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return bad("must start and end with a letter or digit");
    }
    for w in bytes.windows(2) {
        if sep(w[0]) && sep(w[1]) {
            return bad("separators (. _ -) must not repeat");
        }
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return bad(&format!("character {c:?} is not allowed"));
    }
    Ok(())
}

type Tasks<T> = HashMap<String, HashMap<String, Arc<T>>>;

pub struct TaskList<T> {
    inner: Mutex<Tasks<T>>,
    /// (namespace, id) of Creates still at work: a second Create for the
    /// same id is refused before it can touch the first one's container.
    reserved: Mutex<HashSet<(String, String)>>,
}

impl<T> Default for TaskList<T> {
    fn default() -> Self {
        TaskList { inner: Mutex::default(), reserved: Mutex::default() }
    }
}

/// An id held for a Create in progress; released on drop unless committed.
pub struct Reservation<'a, T> {
    list: &'a TaskList<T>,
    key: (String, String),
}

impl<T> Reservation<'_, T> {
    /// Makes the task visible under the reserved id.
    pub fn commit(self, task: Arc<T>) {
        let (ns, id) = self.key.clone();
        self.list.lock().entry(ns).or_default().insert(id, task);
        // Drop releases the reservation only after the task is in the list.
    }
}

impl<T> Drop for Reservation<'_, T> {
    fn drop(&mut self) {
        lock(&self.list.reserved).remove(&self.key);
    }
}

impl<T> TaskList<T> {
    fn lock(&self) -> MutexGuard<'_, Tasks<T>> {
        lock(&self.inner)
    }

    /// Holds `id` for a Create; fails if a task of that id exists or is being created.
    pub fn reserve(&self, namespace: &str, id: &str) -> Result<Reservation<'_, T>> {
        let all = self.lock();
        let mut reserved = lock(&self.reserved);
        let key = (namespace.to_string(), id.to_string());
        if all.get(namespace).is_some_and(|ns| ns.contains_key(id)) {
            return Err(TaskListError::Exists { id: id.into(), namespace: namespace.into() });
        }
        if !reserved.insert(key.clone()) {
            return Err(TaskListError::Creating { id: id.into(), namespace: namespace.into() });
        }
        Ok(Reservation { list: self, key })
    }

    pub fn get(&self, namespace: &str, id: &str) -> Result<Arc<T>> {
        self.lock()
            .get(namespace)
            .and_then(|ns| ns.get(id).cloned())
            .ok_or_else(|| TaskListError::NotFound { id: id.into(), namespace: namespace.into() })
    }

    pub fn remove(&self, namespace: &str, id: &str) -> Option<Arc<T>> {
        let mut all = self.lock();
        let ns = all.get_mut(namespace)?;
        let t = ns.remove(id);
        if ns.is_empty() {
            all.remove(namespace);
        }
        t
    }

    /// Every task, for a hand-over to a new binary.
    pub fn all(&self) -> Vec<Arc<T>> {
        self.lock().values().flat_map(|ns| ns.values().cloned()).collect()
    }

    /// Lists a task taken over from the shim's previous binary.
    pub fn insert(&self, namespace: &str, id: &str, task: Arc<T>) {
        self.lock().entry(namespace.to_string()).or_default().insert(id.to_string(), task);
    }

    /// Creates at work.
    pub fn creating(&self) -> usize {
        lock(&self.reserved).len()
    }

    pub fn len(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_containerd_rules() {
        for ok in ["a", "abc-1", "a.b_c-d", &"x".repeat(76)] {
            assert!(validate_id("container id", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "a/b", "a b", "ä", &"x".repeat(77)] {
            let err = validate_id("container id", bad).expect_err(bad);
            assert!(matches!(err, TaskListError::BadId { .. }));
            assert!(err.to_string().contains(&format!("{bad:?}")), "names the id: {err}");
        }
    }

    #[test]
    fn namespaces_keep_tasks_apart() {
        let list: TaskList<u32> = TaskList::default();
        list.reserve("a", "c1").expect("reserve").commit(Arc::new(1));
        list.reserve("b", "c1").expect("same id, other namespace").commit(Arc::new(2));
        let dup = list.reserve("a", "c1").err().expect("duplicate");
        assert!(matches!(dup, TaskListError::Exists { .. }));
        assert_eq!(*list.get("b", "c1").expect("get"), 2);
        assert!(matches!(list.get("c", "c1"), Err(TaskListError::NotFound { .. })));
        assert_eq!(list.len(), 2);
        list.remove("a", "c1");
        assert!(list.get("a", "c1").is_err());
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn a_reserved_id_is_refused_until_released() {
        let list: TaskList<u32> = TaskList::default();
        let r = list.reserve("a", "c1").expect("reserve");
        let again = list.reserve("a", "c1").err().expect("second reserve of c1 must fail");
        assert!(matches!(again, TaskListError::Creating { .. }), "{again}");
        assert!(again.to_string().contains("c1"), "names the id: {again}");
        assert!(list.reserve("b", "c1").is_ok(), "other namespace is free");
        drop(r);
        let r = list.reserve("a", "c1").expect("released by drop: a failed Create frees the id");
        r.commit(Arc::new(7));
        assert_eq!(*list.get("a", "c1").expect("committed"), 7);
        assert!(matches!(list.reserve("a", "c1"), Err(TaskListError::Exists { .. })), "a committed task holds the id");
    }
}
