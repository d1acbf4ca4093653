//! HTTP and storage tests, each run against both PostgreSQL and SQLite.

mod helpers;

mod health;
mod hubspot;
mod metrics;
mod queue;
mod restart;
mod stripe;
mod whatsapp;
mod worker;
