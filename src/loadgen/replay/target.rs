//! Where a replay sends: the clicks topic (through the one send path), or the redirect's
//! partner endpoint.

use std::fmt;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::recording::{Entry, Lane};
use super::{PartitionBy, ReplayArgs};
use crate::config::{Config, KafkaConfig};
use crate::loadgen::output::kafka::ClicksProducer;
use crate::loadgen::partition::Partitioner;

/// What the target confirmed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Delivered {
    #[default]
    Nothing,
    /// Records Kafka acknowledged.
    Kafka { acknowledged: u64 },
    /// Partner lines the redirect accepted (into the clicks topic) and rejected (into the
    /// dead-letter topic), over this many batches.
    Http {
        batches: u64,
        accepted: u64,
        rejected: u64,
    },
}

impl fmt::Display for Delivered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Delivered::Nothing => write!(f, "nothing delivered"),
            Delivered::Kafka { acknowledged } => {
                write!(f, "Kafka acknowledged {acknowledged}")
            }
            Delivered::Http {
                batches,
                accepted,
                rejected,
            } => write!(
                f,
                "the redirect accepted {accepted} and rejected {rejected} in {batches} batches"
            ),
        }
    }
}

pub trait Target {
    /// Sends one record of a lane whose recording implies `partition`.
    fn send(&mut self, partition: u32, entry: &Entry) -> anyhow::Result<()>;
    /// Sends what waits in a batch (the replay is ahead of the recording's clock).
    fn flush(&mut self) -> anyhow::Result<()>;
    /// Sends the rest and waits for every confirmation; fails if anything did not arrive.
    fn finish(&mut self) -> anyhow::Result<Delivered>;
}

pub struct Kafka {
    producer: ClicksProducer,
    by_key: Option<Partitioner>,
}

impl Kafka {
    /// Connects; refuses a topic with fewer partitions than the recording implies.
    pub fn connect(kafka: &KafkaConfig, lanes: &[Lane], by: PartitionBy) -> anyhow::Result<Self> {
        let producer = ClicksProducer::connect(kafka)?;
        let partitions = producer.partitions();
        if by == PartitionBy::Recording
            && let Some(lane) = lanes.iter().find(|l| l.partition >= partitions)
        {
            bail!(
                "{} is partition {} of the recording, but `{}` has {partitions} partitions: \
                 create it with at least {}, or replay with --partition-by key (lateness may \
                 then be judged differently from the batch aggregator)",
                lane.name,
                lane.partition,
                kafka.clicks_topic,
                lanes.iter().map(|l| l.partition + 1).max().unwrap_or(1)
            );
        }
        Ok(Self {
            producer,
            by_key: (by == PartitionBy::Key).then_some(Partitioner::Murmur2 { shards: partitions }),
        })
    }
}

impl Target for Kafka {
    fn send(&mut self, partition: u32, entry: &Entry) -> anyhow::Result<()> {
        let partition = match self.by_key {
            Some(p) if !entry.key.is_empty() => p.shard(&entry.key),
            Some(_) => partition % self.producer.partitions(),
            None => partition,
        };
        self.producer.send(partition, &entry.key, &entry.value)
    }

    /// librdkafka sends on its own within its linger time.
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<Delivered> {
        self.producer.finish()?;
        Ok(Delivered::Kafka {
            acknowledged: self.producer.acknowledged(),
        })
    }
}

/// Partner NDJSON batches to `POST /api/v1/events`, one at a time, in order.
pub struct Partner {
    runtime: tokio::runtime::Runtime,
    client: Client<HttpConnector, Full<Bytes>>,
    url: String,
    key: String,
    max_lines: usize,
    body: Vec<u8>,
    lines: usize,
    delivered: (u64, u64, u64),
}

#[derive(serde::Deserialize)]
struct BatchAnswer {
    accepted: u64,
    rejected: u64,
}

impl Partner {
    pub fn new(args: &ReplayArgs, config: &Config) -> anyhow::Result<Self> {
        let base = args
            .target
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.redirect.listen));
        let key = match &args.partner_key {
            Some(k) => k.clone(),
            None => config
                .redirect
                .partners
                .first()
                .map(|p| p.api_key.clone())
                .context("--to http needs --partner-key or a redirect.partners entry")?,
        };
        if args.batch_lines == 0 {
            bail!("--batch-lines must be at least 1");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            runtime,
            client: Client::builder(TokioExecutor::new()).build_http(),
            url: format!("{}/api/v1/events", base.trim_end_matches('/')),
            key,
            max_lines: args.batch_lines,
            body: Vec::new(),
            lines: 0,
            delivered: (0, 0, 0),
        })
    }

    fn post(&mut self) -> anyhow::Result<()> {
        if self.lines == 0 {
            return Ok(());
        }
        let body = Bytes::from(std::mem::take(&mut self.body));
        let lines = std::mem::take(&mut self.lines);
        let request = Request::builder()
            .method(Method::POST)
            .uri(&self.url)
            .header(AUTHORIZATION, format!("Bearer {}", self.key))
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(Full::new(body))?;
        let (status, answer) = self
            .runtime
            .block_on(async {
                let response = self.client.request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                anyhow::Ok((status, body))
            })
            .with_context(|| format!("POST {}", self.url))?;
        // A batch is never sent twice: its accepted lines would come back as duplicates.
        if status != StatusCode::OK {
            bail!(
                "POST {} answered {status} to a batch of {lines} lines: {}",
                self.url,
                String::from_utf8_lossy(&answer)
            );
        }
        let answer: BatchAnswer = serde_json::from_slice(&answer)
            .with_context(|| format!("the answer of POST {}", self.url))?;
        self.delivered.0 += 1;
        self.delivered.1 += answer.accepted;
        self.delivered.2 += answer.rejected;
        Ok(())
    }
}

impl Target for Partner {
    fn send(&mut self, _: u32, entry: &Entry) -> anyhow::Result<()> {
        self.body.extend_from_slice(&entry.value);
        self.body.push(b'\n');
        self.lines += 1;
        if self.lines >= self.max_lines {
            self.post()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.post()
    }

    fn finish(&mut self) -> anyhow::Result<Delivered> {
        self.post()?;
        let (batches, accepted, rejected) = self.delivered;
        Ok(Delivered::Http {
            batches,
            accepted,
            rejected,
        })
    }
}
