//! The one way Keel takes a mutex.

use std::sync::{Mutex, MutexGuard};

/// Locks `m` even if a thread panicked while holding it: the data behind
/// Keel's mutexes stays consistent between statements, and a shim that
/// stopped routing exits or serving tasks after one panic would lose them.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
