//! Where the results go. The report writer ([`report`]) is worker 0's single sink: it writes
//! the output lines ([`output`]) and, per checkpoint epoch, the click-aggregates topic
//! ([`aggregates`]) and the Parquet windows ([`parquet`]). Late and rejected clicks go to their
//! Kafka topics from every worker ([`kafka`]); traffic alerts to the alert log and their topic
//! from worker 0 ([`alerts`]); the raw archive is written by the checkpointer
//! ([`parquet::archive`]).

pub mod aggregates;
pub mod alerts;
pub mod kafka;
pub mod output;
pub mod parquet;
pub mod report;
