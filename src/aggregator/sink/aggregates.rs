//! Final window reports to the `click-aggregates` topic, exactly once for readers that honour
//! its commit markers, without Kafka transactions.
//!
//! Every record carries the run that wrote it (a fresh id per process start) and `since`, the
//! checkpoint frontier its epoch began at. When checkpoint `F` is committed (its manifest on
//! disk), a commit marker `(run, F)` goes to every partition: it commits that run's records
//! with `since < F`. The writer flushes every record of an epoch before the checkpoint that
//! closes it is recorded, so a marker always follows the records it commits.
//!
//! A crash loses nothing and doubles nothing: the restarted run goes on from the newest
//! checkpoint `G`, first sending `G`'s marker again (under the run that took it, in case the
//! crash came between manifest and marker), and writes every later final report anew under
//! its own run id. The crashed run's records after `G` never get a marker. Each final report
//! belongs to exactly one epoch (reports go out at end + lateness exactly), so over the
//! committed epochs each window appears once. [`CommittedReader`] applies the rule.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde::{Deserialize, Serialize};

use super::kafka::send;
use super::output::Line;
use crate::config::KafkaConfig;

/// A record of the topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AggregateRecord {
    /// A final window report ([`Line::Window`]).
    Window {
        run: String,
        since: u64,
        window: Box<Line>,
    },
    /// A group's final reach in an hour or a day ([`Line::Reach`]: estimate, whether it is
    /// exact, and the sketch's bytes in base64), committed as windows are.
    Reach {
        run: String,
        since: u64,
        reach: Box<Line>,
    },
    /// Commits `run`'s windows and reach with `since < frontier`.
    Commit { run: String, frontier: u64 },
}

/// Key of a window's record: window and dimensions, so that a compacted topic keeps one per
/// window; of a reach record: `reach|`, window, group kind, traffic and dimensions.
fn key(line: &Line) -> Option<String> {
    if let Line::Reach {
        granularity,
        window_start_ms,
        group_by,
        traffic,
        ad_id,
        campaign_id,
        advertiser_id,
        publisher_id,
        country,
        ..
    } = line
    {
        return Some(format!(
            "reach|{granularity}|{window_start_ms}|{group_by}|{traffic}|{ad_id}|{campaign_id}|\
             {advertiser_id}|{publisher_id}|{country}"
        ));
    }
    let w = line.window()?;
    Some(format!(
        "{}|{}|{}",
        w.granularity,
        w.start,
        w.dims.join("|")
    ))
}

type Kafka = ThreadedProducer<DefaultProducerContext>;

/// Worker 0's writer of final reports.
pub struct AggregatesSink {
    producer: Arc<Kafka>,
    topic: String,
    run: String,
    since: u64,
    /// A record Kafka will never take, sent since the last seal.
    failed: Option<anyhow::Error>,
}

impl AggregatesSink {
    /// A sink whose first epoch begins at `since` (the restored checkpoint's frontier, or 0).
    pub fn new(kafka: &KafkaConfig, run: &str, since: u64) -> anyhow::Result<Self> {
        let producer: Kafka = crate::kafka::producer_config(kafka).create()?;
        Ok(Self {
            producer: Arc::new(producer),
            topic: kafka.aggregates_topic.clone(),
            run: run.into(),
            since,
            failed: None,
        })
    }

    /// Sends a final window or reach report (other lines are not for this topic). A record
    /// Kafka will never take is kept as the epoch's error, which [`AggregatesSink::seal`]
    /// returns.
    pub fn send(&mut self, line: &Line) {
        let Some(key) = key(line) else { return };
        if self.failed.is_some() {
            return;
        }
        let (run, since) = (self.run.clone(), self.since);
        let record = if matches!(line, Line::Reach { .. }) {
            AggregateRecord::Reach {
                run,
                since,
                reach: Box::new(line.clone()),
            }
        } else {
            AggregateRecord::Window {
                run,
                since,
                window: Box::new(line.clone()),
            }
        };
        let value = serde_json::to_vec(&record).expect("a record encodes");
        if let Err(e) = send(&self.producer, &self.topic, key.as_bytes(), &value) {
            self.failed = Some(e);
        }
    }

    /// Ends the epoch at checkpoint frontier `f`: returns once every record sent so far is
    /// acknowledged (retrying while the broker is away: a checkpoint cannot be taken without),
    /// or with the error of a record Kafka refused for good.
    pub fn seal(&mut self, f: u64) -> anyhow::Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        while let Err(e) = self.producer.flush(Duration::from_secs(10)) {
            tracing::warn!("click-aggregates: flushing before checkpoint {f}: {e}; retrying");
        }
        self.since = f;
        Ok(())
    }

    /// What sends the commit markers, from the thread that commits checkpoints.
    pub fn committer(&self) -> Committer {
        Committer {
            producer: self.producer.clone(),
            topic: self.topic.clone(),
        }
    }
}

/// Sends commit markers.
#[derive(Clone)]
pub struct Committer {
    producer: Arc<Kafka>,
    topic: String,
}

impl Committer {
    /// Commits `run`'s records before `frontier` on every partition, and waits for it.
    pub fn commit(&self, run: &str, frontier: u64) -> anyhow::Result<()> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), Duration::from_secs(10))?;
        let partitions = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
        anyhow::ensure!(partitions > 0, "topic {} has no partitions", self.topic);
        let value = serde_json::to_vec(&AggregateRecord::Commit {
            run: run.into(),
            frontier,
        })?;
        for p in 0..partitions {
            let record = BaseRecord::to(&self.topic)
                .partition(p)
                .key("commit")
                .payload(&value);
            self.producer
                .send(record)
                .map_err(|(e, _)| anyhow::anyhow!("commit marker to {}/{p}: {e}", self.topic))?;
        }
        self.producer.flush(Duration::from_secs(30))?;
        Ok(())
    }
}

/// Reads one partition of the topic as committed windows and reach lines: records wait until a marker
/// commits them; records no marker will commit are dropped. Those are the records of a run
/// that crashed after its last commit: once a record of another run arrives (which a
/// restarted run writes only after re-sending the marker of the checkpoint it restored), no
/// marker for them can come any more.
#[derive(Default)]
pub struct CommittedReader {
    /// Uncommitted windows by run, each with its `since`.
    waiting: BTreeMap<String, Vec<(u64, Line)>>,
}

impl CommittedReader {
    /// Takes the partition's next record; returns the window and reach lines it commits.
    pub fn push(&mut self, record: AggregateRecord) -> Vec<Line> {
        match record {
            AggregateRecord::Window { run, since, window }
            | AggregateRecord::Reach {
                run,
                since,
                reach: window,
            } => {
                self.waiting.retain(|r, _| *r == run);
                self.waiting.entry(run).or_default().push((since, *window));
                Vec::new()
            }
            AggregateRecord::Commit { run, frontier } => {
                let Some(waiting) = self.waiting.get_mut(&run) else {
                    return Vec::new();
                };
                let (now, later): (Vec<_>, Vec<_>) =
                    waiting.drain(..).partition(|(since, _)| *since < frontier);
                *waiting = later;
                now.into_iter().map(|(_, w)| w).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(n: u64) -> Line {
        Line::Window {
            granularity: "minute".into(),
            window_start: String::new(),
            window_start_ms: n,
            ad_id: "ad".into(),
            campaign_id: "c".into(),
            advertiser_id: "a".into(),
            publisher_id: "p".into(),
            country: "US".into(),
            device: "mobile".into(),
            clicks: 1,
            duplicates: 0,
            invalid: Default::default(),
            status: "final".into(),
        }
    }

    fn w(run: &str, since: u64, n: u64) -> AggregateRecord {
        AggregateRecord::Window {
            run: run.into(),
            since,
            window: Box::new(window(n)),
        }
    }

    fn commit(run: &str, frontier: u64) -> AggregateRecord {
        AggregateRecord::Commit {
            run: run.into(),
            frontier,
        }
    }

    /// Run A commits epochs up to 20 and crashes with windows of epoch 20 unsent to a
    /// marker; run B restores checkpoint 20, re-sends its marker, and goes on. The reader
    /// sees windows 1 to 4 once each, and never A's uncommitted window 3.
    #[test]
    fn a_reader_sees_committed_windows_once_and_never_a_crashed_runs_tail() {
        let mut r = CommittedReader::default();
        let mut seen = Vec::new();
        for record in [
            w("A", 0, 1),
            commit("A", 10),
            w("A", 10, 2),
            commit("A", 20),
            w("A", 20, 3),   // the crashed run's tail: never committed
            commit("A", 20), // B re-sends the restored checkpoint's marker
            w("B", 20, 3),
            w("B", 20, 4),
            commit("B", 30),
            commit("A", 20), // a stale marker again commits nothing twice
        ] {
            for line in r.push(record.clone()) {
                let Line::Window {
                    window_start_ms, ..
                } = line
                else {
                    unreachable!()
                };
                seen.push(window_start_ms);
            }
        }
        assert_eq!(seen, vec![1, 2, 3, 4]);
        // Reach records wait for their run's marker as windows do.
        let reach = Line::Reach {
            granularity: "day".into(),
            window_start: String::new(),
            window_start_ms: 0,
            group_by: "campaign".into(),
            traffic: "all".into(),
            ad_id: String::new(),
            campaign_id: "c".into(),
            advertiser_id: "a".into(),
            publisher_id: String::new(),
            country: String::new(),
            unique_users: 1,
            exact: true,
            sketch: String::new(),
        };
        let record = AggregateRecord::Reach {
            run: "B".into(),
            since: 30,
            reach: Box::new(reach.clone()),
        };
        assert!(r.push(record).is_empty());
        assert!(r.push(commit("B", 30)).is_empty());
        assert_eq!(r.push(commit("B", 40)), vec![reach.clone()]);
        assert_eq!(
            key(&reach).as_deref(),
            Some("reach|day|0|campaign|all||c|a||")
        );
        let json = serde_json::to_string(&commit("A", 5)).unwrap();
        assert_eq!(json, r#"{"type":"commit","run":"A","frontier":5}"#);
    }
}
