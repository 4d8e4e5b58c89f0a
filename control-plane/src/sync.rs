//! Locking that survives a panic: a poisoned mutex still holds consistent data in this crate (no
//! critical section leaves its data half-changed on purpose), so one task's panic never takes the
//! daemon's shared state down with it.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking it over if a panicking holder poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
