//! Spaces calls evenly: at most `per_interval` calls per `interval`, in this process.
//! (Several replicas each keep their own pace; size the limits for the replica count.)

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct Pacer {
    spacing: Duration,
    next_slot: Mutex<Instant>,
}

impl Pacer {
    pub fn new(per_interval: u32, interval: Duration) -> Pacer {
        let spacing = interval / per_interval.max(1);
        Pacer {
            spacing,
            next_slot: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this call's slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next_slot.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.spacing;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}
