//! Flags every binary shares, and the glue from flags to [`config::load`].
//!
//! [`config::load`]: crate::config::load

use std::path::PathBuf;

use clap::Args;

use crate::config::{self, Config};
use crate::kafka::embedded::EmbeddedKafka;

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// TOML configuration file; one file can serve every adclick binary.
    #[arg(long, env = "ADCLICK_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers, HOST:PORT,... (overrides kafka.brokers).
    #[arg(long, global = true)]
    pub brokers: Option<String>,
    /// Clicks topic (overrides kafka.clicks_topic).
    #[arg(long, global = true)]
    pub topic: Option<String>,
    /// Start the embedded broker (Tansu by default, see kafka.embedded), use it, and print its
    /// address and what it keeps.
    #[arg(long, global = true)]
    pub embedded_kafka: bool,
}

impl CommonArgs {
    /// Loads the configuration with these flags plus the binary's own `extra` overrides.
    pub fn load(&self, mut extra: Vec<(&'static str, toml::Value)>) -> anyhow::Result<Config> {
        if let Some(b) = &self.brokers {
            extra.push(("kafka.brokers", b.clone().into()));
        }
        if let Some(t) = &self.topic {
            extra.push(("kafka.clicks_topic", t.clone().into()));
        }
        config::load(self.config.as_deref(), extra)
    }

    /// With `--embedded-kafka`, starts the broker, points the configuration at it and prints
    /// its address (on stdout, as `embedded kafka: HOST:PORT`, for scripts to pick up).
    pub fn maybe_embedded_kafka(&self, cfg: &mut Config) -> anyhow::Result<Option<EmbeddedKafka>> {
        if !self.embedded_kafka {
            return Ok(None);
        }
        let kafka = EmbeddedKafka::start(&cfg.kafka)?;
        cfg.kafka.brokers = kafka.bootstrap_servers();
        println!("embedded kafka: {}", cfg.kafka.brokers);
        println!("embedded kafka keeps: {}", kafka.retention_note());
        Ok(Some(kafka))
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled: a signal that comes between (say, right after a server printed
/// its address) must shut it down cleanly, not kill it with the default action. Call it
/// inside a tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    }
}
