//! adclick's dataflows: small functions over timely streams and differential collections,
//! free of I/O so that tests drive them with plain data. Sources and sinks live in the
//! `adclick` crate.

pub mod click;
pub mod dedup;
pub mod time;
pub mod watermark;
