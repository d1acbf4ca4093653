//! Fault injection for the crash tests: with [`Faults::interrupt_each_write`] armed, the
//! n-th attempt of every work item fails at its n-th database write (a statement or a
//! commit), so each handler is interrupted after each of its writes in turn, exactly as a
//! killed worker would leave it, and must still finish on retry. Inert unless armed; the
//! worker marks each attempt with [`in_attempt`].

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::StoreError;

tokio::task_local! {
    static ATTEMPT: AttemptWrites;
}

struct AttemptWrites {
    attempt: i64,
    writes: Cell<i64>,
}

#[derive(Clone, Default)]
pub struct Faults {
    armed: Arc<AtomicBool>,
    injected: Arc<AtomicU64>,
}

impl Faults {
    /// Arms the injection (tests only).
    pub fn interrupt_each_write(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// How many writes failed on purpose so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Called before every write a handler makes; fails when this is the write the
    /// current attempt must not get past.
    pub(super) fn before_write(&self) -> Result<(), StoreError> {
        if !self.armed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let fail = ATTEMPT
            .try_with(|a| {
                let n = a.writes.get() + 1;
                a.writes.set(n);
                n == a.attempt
            })
            .unwrap_or(false);
        if fail {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Injected);
        }
        Ok(())
    }
}

/// Runs one attempt of a work item, counting its writes for [`Faults`].
pub async fn in_attempt<F: Future>(attempt: i64, work: F) -> F::Output {
    let writes = AttemptWrites {
        attempt,
        writes: Cell::new(0),
    };
    ATTEMPT.scope(writes, work).await
}
