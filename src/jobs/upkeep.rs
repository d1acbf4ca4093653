//! The worker's upkeep: finished items are deleted once they are older than the settings
//! keep them (`worker.keep_done_days`; Meta's statuses `worker.keep_done_statuses_seconds`),
//! so the queues hold a week's work, not everything ever received. At Meta's top tier,
//! three statuses for each of 1,000 sends a second would otherwise add 259 million rows a
//! day. Dead items stay until a person re-drives them.

use std::time::Duration;

use tokio::sync::watch;

use super::{Worker, BATCHED};
use crate::store::{duration_ms, Finished, Queue, StoreError};

/// How often a replica prunes (the first time this long after it starts).
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Items one statement deletes: each is a short transaction that holds no queue long.
const PRUNE_CHUNK: usize = 5_000;
/// Statements one pass runs at most (a million items); what is left waits for the next.
const PRUNE_STATEMENTS_PER_PASS: usize = 200;

impl Worker {
    /// Deletes the finished items older than the settings keep them; returns how many.
    pub async fn prune_finished(&self) -> Result<u64, StoreError> {
        self.prune(|| true).await
    }

    /// As [`Worker::prune_finished`], stopping between statements once `go_on` is false.
    async fn prune(&self, go_on: impl Fn() -> bool) -> Result<u64, StoreError> {
        let now = self.store.now_ms();
        let rounds = [
            (Queue::Inbox, Finished::Only(BATCHED), self.settings.keep_done_statuses),
            (Queue::Inbox, Finished::AllBut(BATCHED), self.settings.keep_done),
            (Queue::Jobs, Finished::Any, self.settings.keep_done),
        ];
        let (mut total, mut statements) = (0, 0);
        for (queue, which, keep) in rounds {
            let before = now.saturating_sub(duration_ms(keep));
            let mut pruned = 0;
            while statements < PRUNE_STATEMENTS_PER_PASS && go_on() {
                statements += 1;
                let n = self.store.prune_done(queue, which, before, PRUNE_CHUNK).await?;
                pruned += n;
                if n < PRUNE_CHUNK as u64 {
                    break;
                }
            }
            if pruned > 0 {
                self.metrics.queue_pruned(queue.name(), pruned);
                tracing::info!(queue = queue.name(), pruned, "finished items deleted");
            }
            total += pruned;
        }
        Ok(total)
    }

    /// Prunes every [`PRUNE_EVERY`] until `shutdown` turns true (checked between
    /// statements too, so a long pass never holds up a shutdown).
    pub(super) async fn run_upkeep(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PRUNE_EVERY) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = self.prune(|| !*shutdown.borrow()).await {
                tracing::warn!(error = %e, "could not delete finished items; trying again later");
            }
        }
    }
}
