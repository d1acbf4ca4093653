//! Group commit for webhook intake. Concurrent requests hand their events to a few writer
//! tasks; each writer takes every request waiting (up to [`GROUP_ROWS`] events) and
//! stores them all in one statement, so a burst of requests costs one round trip and one
//! commit instead of a transaction each. Every request is still answered only after its
//! own events are durable, and the writers run apart from the requests, so a client that
//! hangs up cannot cancel a write halfway.

use crate::domain::state::Persisted;
use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use super::{Store, StoreError};
use crate::domain::inbox::NewInboxEvent;

/// The most events one grouped statement carries (the inbox INSERT's chunk size). A
/// single request larger than this is written on its own, in one transaction.
pub const GROUP_ROWS: usize = super::inbox::INSERT_CHUNK;

/// Requests waiting for a writer, beyond which new requests wait to be queued.
const QUEUE_DEPTH: usize = 4_096;

struct Pending {
    events: Vec<NewInboxEvent>,
    max_attempts: i64,
    done: oneshot::Sender<Result<u64, StoreError>>,
}

/// The waiting requests, and one taken that did not fit the last group.
struct Intake {
    waiting: mpsc::Receiver<Pending>,
    held: Option<Pending>,
}

/// The handle requests use; clones share the writers.
#[derive(Clone)]
pub struct InboxWriter {
    sender: mpsc::Sender<Pending>,
}

impl InboxWriter {
    /// Starts `writers` writer tasks on `store` (at least one).
    pub fn start(store: Store, writers: usize) -> InboxWriter {
        let (sender, waiting) = mpsc::channel(QUEUE_DEPTH);
        let intake = Arc::new(Mutex::new(Intake { waiting, held: None }));
        for _ in 0..writers.max(1) {
            tokio::spawn(write_groups(store.clone(), intake.clone()));
        }
        InboxWriter { sender }
    }

    /// Stores the events of one request, grouped with whatever else is waiting; returns
    /// how many were new (redeliveries are skipped by the inbox's unique key).
    pub async fn insert(&self, events: Vec<NewInboxEvent>, max_attempts: i64) -> Result<u64, StoreError> {
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            events,
            max_attempts,
            done,
        };
        self.sender
            .send(pending)
            .await
            .map_err(|_| StoreError::Exhausted("the inbox writers have stopped"))?;
        answer
            .await
            .map_err(|_| StoreError::Exhausted("an inbox writer stopped mid-write"))?
    }
}

async fn write_groups(store: Store, intake: Arc<Mutex<Intake>>) {
    while let Some(group) = next_group(&intake).await {
        write_group(&store, group).await;
    }
}

/// Waits for a request, then takes every other one already waiting that fits.
async fn next_group(intake: &Mutex<Intake>) -> Option<Vec<Pending>> {
    let mut intake = intake.lock().await;
    let first = match intake.held.take() {
        Some(held) => held,
        None => intake.waiting.recv().await?,
    };
    let mut rows = first.events.len();
    let mut group = vec![first];
    while rows < GROUP_ROWS {
        let Ok(next) = intake.waiting.try_recv() else {
            break;
        };
        if rows + next.events.len() > GROUP_ROWS {
            intake.held = Some(next);
            break;
        }
        rows += next.events.len();
        group.push(next);
    }
    Some(group)
}

async fn write_group(store: &Store, group: Vec<Pending>) {
    if group.len() > 1 {
        let requests: Vec<(&[NewInboxEvent], i64)> =
            group.iter().map(|p| (p.events.as_slice(), p.max_attempts)).collect();
        if let Ok(counts) = store.insert_inbox_group(&requests).await {
            for (pending, new) in group.into_iter().zip(counts) {
                let _ = pending.done.send(Ok(new));
            }
            return;
        }
        // One request's events may be what the database refused: write each alone, so
        // the others are unaffected and each gets its own answer.
    }
    for pending in group {
        let stored = store.insert_inbox_events(&pending.events, pending.max_attempts).await;
        let _ = pending.done.send(stored);
    }
}

/// How many of each request's events the statement inserted, given the keys it
/// returned. An event carried twice in one group counts for the first request.
pub(super) fn new_per_request(requests: &[(&[NewInboxEvent], i64)], inserted: Vec<(String, String)>) -> Vec<u64> {
    let mut inserted: BTreeSet<(String, String)> = inserted.into_iter().collect();
    requests
        .iter()
        .map(|(events, _)| {
            events
                .iter()
                .filter(|e| inserted.remove(&(e.source.as_str().to_string(), e.dedupe_key.clone())))
                .count() as u64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::inbox::Source;

    fn event(key: &str) -> NewInboxEvent {
        NewInboxEvent {
            source: Source::WhatsApp,
            dedupe_key: key.into(),
            kind: crate::domain::inbox::InboxKind::WhatsAppMessage,
            payload: "{}".into(),
        }
    }

    #[test]
    fn each_request_counts_only_its_own_new_events() {
        let (a, b) = (vec![event("1"), event("2")], vec![event("2"), event("3")]);
        let requests = [(a.as_slice(), 3), (b.as_slice(), 3)];
        let inserted = ["1", "2", "3"].map(|k| ("whatsapp".to_string(), k.to_string()));
        assert_eq!(new_per_request(&requests, inserted.to_vec()), vec![2, 1]);
        let only_three = vec![("whatsapp".to_string(), "3".to_string())];
        assert_eq!(new_per_request(&requests, only_three), vec![0, 1]);
    }
}
