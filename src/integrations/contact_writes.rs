//! HubSpot property writes of the jobs running at once, sent together. Each job still
//! writes its own contact when it runs and waits for its own answer; a writer task takes
//! the writes waiting (up to [`MOST`], never two to one contact, as HubSpot refuses
//! duplicate ids in a batch) and sends them as one batch update, which takes one place in
//! HubSpot's ten-second limit instead of one each. A write waiting alone goes as the
//! single `PATCH` it always was. Under a campaign's backlog, when the limit binds, that
//! is up to a hundred property writes per call.
//!
//! What each job learns is what its own `PATCH` would have told it: a contact the batch
//! did not update (a partial failure, or a batch refused for its content) is written
//! again alone, and only a refusal of the whole batch that waiting cures (429, 5xx, a
//! timeout) is every write's answer, for each job to retry on its schedule.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::hubspot::{HubSpotClient, HubSpotError};
use crate::domain::ids::HubSpotId;

/// The most inputs HubSpot takes in one batch update.
pub const MOST: usize = 100;

/// One job's write, and where its answer goes.
struct ContactWrite {
    contact: HubSpotId,
    properties: Map<String, Value>,
    job_id: Option<i64>,
    written: oneshot::Sender<Result<(), HubSpotError>>,
}

/// The handle a client's writes go through; clones share one writer task, started on
/// the first write (and again if it stopped, with the runtime it ran on).
#[derive(Clone, Default)]
pub(super) struct ContactWrites {
    sender: Arc<Mutex<Option<mpsc::Sender<ContactWrite>>>>,
}

impl ContactWrites {
    /// Writes `properties` to `contact` through `client`, together with whatever other
    /// writes are waiting; returns this write's own answer.
    pub async fn write(
        &self,
        client: &HubSpotClient,
        contact: &HubSpotId,
        properties: &Map<String, Value>,
        job_id: Option<i64>,
    ) -> Result<(), HubSpotError> {
        let sender = self.writer(client);
        let (written, answer) = oneshot::channel();
        let write = ContactWrite {
            contact: contact.clone(),
            properties: properties.clone(),
            job_id,
            written,
        };
        if sender.send(write).await.is_err() {
            return Err(HubSpotError::Retryable("the HubSpot writer has stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(HubSpotError::Retryable("the HubSpot writer stopped mid-write".into())))
    }

    /// The running writer's queue, started when there is none.
    fn writer(&self, client: &HubSpotClient) -> mpsc::Sender<ContactWrite> {
        let mut slot = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = slot.as_ref().filter(|sender| !sender.is_closed()) {
            return sender.clone();
        }
        let (sender, waiting) = mpsc::channel(4 * MOST);
        // The writer's client has no handle on this queue, so the queue closes (and the
        // writer ends) when the last client that writes through it is dropped.
        tokio::spawn(send_groups(client.writing_alone(), waiting));
        *slot = Some(sender.clone());
        sender
    }
}

/// The writer: waits for a write, takes those waiting behind it, sends the group.
async fn send_groups(client: HubSpotClient, mut waiting: mpsc::Receiver<ContactWrite>) {
    // A write to a contact already in the group starts the next one, so each contact's
    // writes keep their order.
    let mut held: Option<ContactWrite> = None;
    loop {
        let first = match held.take() {
            Some(write) => write,
            None => match waiting.recv().await {
                Some(write) => write,
                None => return,
            },
        };
        let mut group = vec![first];
        while group.len() < MOST {
            let Ok(next) = waiting.try_recv() else { break };
            if group.iter().any(|write| write.contact == next.contact) {
                held = Some(next);
                break;
            }
            group.push(next);
        }
        send_group(&client, group).await;
    }
}

async fn send_group(client: &HubSpotClient, mut group: Vec<ContactWrite>) {
    if group.len() == 1 {
        if let Some(write) = group.pop() {
            let alone = client
                .patch_contact(&write.contact, &write.properties, write.job_id)
                .await;
            let _ = write.written.send(alone);
        }
        return;
    }
    let inputs: Vec<Value> = group
        .iter()
        .map(|write| json!({"id": write.contact.as_str(), "properties": write.properties}))
        .collect();
    let updated = match client.batch_update_contacts(inputs).await {
        Ok(answer) => updated_ids(answer.as_ref()),
        // Waiting cures it: each job retries on its own schedule.
        Err(refused @ (HubSpotError::RateLimited { .. } | HubSpotError::Retryable(_))) => {
            for write in group {
                let _ = write.written.send(Err(refused.clone()));
            }
            return;
        }
        // Refused for its content: which write was at fault, each alone tells.
        Err(refused) => {
            tracing::warn!(
                writes = group.len(),
                error = %crate::telemetry::escape(&refused.to_string()),
                "HubSpot refused a batch update; writing each contact alone"
            );
            HashSet::new()
        }
    };
    let (done, left): (Vec<ContactWrite>, Vec<ContactWrite>) = group
        .into_iter()
        .partition(|write| updated.contains(write.contact.as_str()));
    for write in done {
        let _ = write.written.send(Ok(()));
    }
    write_each_alone(client, left).await;
}

/// Writes each of `writes` in a request of its own, side by side (each still takes its
/// place in HubSpot's pace), and gives each its answer.
async fn write_each_alone(client: &HubSpotClient, writes: Vec<ContactWrite>) {
    let mut alone = JoinSet::new();
    for write in writes {
        let client = client.clone();
        alone.spawn(async move {
            let answer = client
                .patch_contact(&write.contact, &write.properties, write.job_id)
                .await;
            let _ = write.written.send(answer);
        });
    }
    while alone.join_next().await.is_some() {}
}

/// The ids a batch update answered as updated (`results[].id`; 200, or 207 with the
/// failures under `errors`).
fn updated_ids(answer: Option<&Value>) -> HashSet<String> {
    answer
        .and_then(|a| a.get("results"))
        .and_then(Value::as_array)
        .map(|results| {
            results
                .iter()
                .filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_contacts_in_the_results_count_as_updated() {
        let partial = json!({"status": "COMPLETE", "results": [{"id": "901", "properties": {}}],
                             "numErrors": 1, "errors": [{"status": "error", "category": "OBJECT_NOT_FOUND",
                             "message": "Object not found", "context": {"ids": ["902"]}}]});
        assert_eq!(updated_ids(Some(&partial)), HashSet::from(["901".to_string()]));
        assert!(updated_ids(None).is_empty());
        assert!(updated_ids(Some(&json!({"results": "not a list"}))).is_empty());
    }
}
