//! HTTP and storage tests, each run against both PostgreSQL and SQLite.

mod chaos;
mod cli;
mod concurrency;
mod contract;
mod dashboard;
mod deploy;
mod doctor;
mod fakes;
mod flow_endpoint;
mod helpers;

mod admin;
mod api_document;
mod attribution;
mod browser;
mod fuzz;
mod health;
mod hostile;
mod hubspot;
mod interruptions;
mod kills;
mod languages;
mod lifecycle;
mod metrics;
mod outside;
mod pacing;
mod queue;
mod restart;
mod reward_property;
mod rewards;
mod sandbox;
mod setup;
mod stripe;
mod templates;
mod whatsapp;
mod worker;
