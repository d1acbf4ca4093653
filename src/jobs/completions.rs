//! Completions of jobs whose step wrote nothing of ours (an outside call made, a note to
//! keep): those of the jobs running at once are recorded together, in one statement, so a
//! busy replica pays one round trip for many. Each job still waits for its own completion
//! before it gives up its place.

use tokio::sync::{mpsc, oneshot};

use crate::store::{Queue, Store, StoreError};

/// Completions one statement records at most.
const MOST: usize = 100;

struct Request {
    id: i64,
    owner: String,
    note: String,
    recorded: oneshot::Sender<Result<bool, StoreError>>,
}

/// The handle jobs complete through; clones share one recorder, which stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Completions {
    sender: mpsc::Sender<Request>,
}

impl Completions {
    /// Starts the recorder of `queue`'s completions on `store`.
    pub fn start(store: Store, queue: Queue) -> Completions {
        let (sender, waiting) = mpsc::channel(4 * MOST);
        tokio::spawn(record(store, queue, waiting));
        Completions { sender }
    }

    /// Marks item `id` done with `note`, recorded with whatever else is waiting. False
    /// when `owner` no longer holds its lease.
    pub async fn complete(&self, id: i64, owner: &str, note: String) -> Result<bool, StoreError> {
        let (recorded, answer) = oneshot::channel();
        let request = Request {
            id,
            owner: owner.to_string(),
            note,
            recorded,
        };
        if self.sender.send(request).await.is_err() {
            return Err(StoreError::Misuse("the completion recorder has stopped"));
        }
        answer
            .await
            .unwrap_or(Err(StoreError::Misuse("the completion recorder has stopped")))
    }
}

/// Takes every completion waiting (up to [`MOST`]) and records them in one statement; if
/// that fails, each is recorded alone, so each job learns its own outcome.
async fn record(store: Store, queue: Queue, mut waiting: mpsc::Receiver<Request>) {
    while let Some(first) = waiting.recv().await {
        let mut batch = vec![first];
        while batch.len() < MOST {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let items: Vec<(i64, String, String)> = batch.iter().map(|r| (r.id, r.owner.clone(), r.note.clone())).collect();
        match store.complete_many(queue, &items).await {
            Ok(done) => {
                for request in batch {
                    let _ = request.recorded.send(Ok(done.contains(&request.id)));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "completions not recorded together; recording each alone");
                for request in batch {
                    let alone = store
                        .complete(queue, request.id, &request.owner, Some(&request.note))
                        .await;
                    let _ = request.recorded.send(alone);
                }
            }
        }
    }
}
