//! The rules of referloop, free of I/O: what a received webhook is made of, how its
//! events are identified for deduplication, and how failed work is retried.
//! Everything else (HTTP, storage, outside APIs) depends on this module, never the reverse.

pub mod inbound;
pub mod retry;
