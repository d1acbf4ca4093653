//! referloop: turns a customer's happy moment into a two-sided referral over WhatsApp,
//! tracked in HubSpot. `main.rs` only calls [`cli::run`].

pub mod app;
pub mod catalogue;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dev;
pub mod domain;
pub mod http;
pub mod integrations;
pub mod jobs;
pub mod metrics;
pub mod setup;
pub mod signatures;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod whatsapp;

/// The allocator of every program built on this library (the server, its tests and
/// benchmarks). glibc's took a fifth of referloop's own CPU in the whole-referral
/// benchmark's profile (`malloc`, `free`, `malloc_consolidate` across Tokio's threads).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
