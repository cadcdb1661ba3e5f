//! The shim's containers, keyed by namespace and id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};

/// containerd's identifier rules: 1-76 characters, alphanumerics separated by
/// single `.`, `_` or `-`, starting and ending with an alphanumeric.
pub fn validate_id(kind: &str, id: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidArgument(format!("invalid {kind} {id:?}: {why}")));
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

pub struct TaskList<T> {
    inner: Mutex<HashMap<String, HashMap<String, Arc<T>>>>,
}

impl<T> Default for TaskList<T> {
    fn default() -> Self {
        TaskList { inner: Mutex::default() }
    }
}

impl<T> TaskList<T> {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<String, Arc<T>>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, namespace: &str, id: &str, task: Arc<T>) -> Result<()> {
        let mut all = self.lock();
        let ns = all.entry(namespace.to_string()).or_default();
        if ns.contains_key(id) {
            return Err(Error::AlreadyExists(format!("task {id} already exists in namespace {namespace}")));
        }
        ns.insert(id.to_string(), task);
        Ok(())
    }

    pub fn contains(&self, namespace: &str, id: &str) -> bool {
        self.lock().get(namespace).is_some_and(|ns| ns.contains_key(id))
    }

    pub fn get(&self, namespace: &str, id: &str) -> Result<Arc<T>> {
        self.lock()
            .get(namespace)
            .and_then(|ns| ns.get(id).cloned())
            .ok_or_else(|| Error::NotFound(format!("task {id} not found in namespace {namespace}")))
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

    pub fn len(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
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
            assert!(matches!(err, Error::InvalidArgument(_)));
            assert!(err.to_string().contains(&format!("{bad:?}")), "names the id: {err}");
        }
    }

    #[test]
    fn namespaces_keep_tasks_apart() {
        let list: TaskList<u32> = TaskList::default();
        list.add("a", "c1", Arc::new(1)).expect("add");
        list.add("b", "c1", Arc::new(2)).expect("same id, other namespace");
        let dup = list.add("a", "c1", Arc::new(3)).expect_err("duplicate");
        assert!(matches!(dup, Error::AlreadyExists(_)));
        assert_eq!(*list.get("b", "c1").expect("get"), 2);
        assert!(matches!(list.get("c", "c1"), Err(Error::NotFound(_))));
        assert_eq!(list.len(), 2);
        list.remove("a", "c1");
        assert!(!list.contains("a", "c1"));
        assert_eq!(list.len(), 1);
    }
}
