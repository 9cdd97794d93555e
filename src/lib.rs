//! adclick: an exactly-once ad click aggregator.
//!
//! I/O lives at the edges: [`redirect`] (the click endpoint), [`kafka`] (producers, the
//! embedded broker, the outbox), [`spool`] (disk), [`loadgen`] (traffic and ground truth).
//! The click itself ([`event`]), its signatures ([`token`]) and the configuration
//! ([`config`]) are plain logic that every binary shares. The dataflows are in the
//! `adclick-dataflows` crate.

pub mod aggregator;
pub mod alert_log;
pub mod cli;
pub mod config;
pub mod disk;
pub mod event;
#[cfg(test)]
mod exported_metrics;
pub mod health;
pub mod http_server;
pub mod kafka;
pub mod loadgen;
pub mod memory;
pub mod query;
pub mod redirect;
pub mod spool;
pub mod timefmt;
pub mod token;
