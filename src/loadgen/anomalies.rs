//! Planted traffic anomalies (`--spike`, `--drop`): the anomaly detector's ground truth.
//!
//! Both re-draw ordinary slots rather than add any, so the rate stays as configured and
//! everything else about the traffic (and its exact truth) is unchanged:
//! - a spike multiplies one campaign's clicks from one country by `factor` over its minutes:
//!   each click is turned into one of the campaign's ads from that country with the
//!   probability that adds `factor − 1` times the pair's usual share;
//! - a drop keeps each of one publisher's clicks with probability `factor` (default 0.1)
//!   over its minutes and gives the others to other publishers.
//!
//! Outside their windows nothing is drawn, so traffic without anomalies is byte for byte what
//! it was.

use std::str::FromStr;

use anyhow::{Context, bail};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::audience;

/// `--spike campaign=cmp_3,country=DE,at=1800,minutes=10[,factor=100]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spike {
    pub campaign: String,
    pub country: String,
    /// Seconds of simulated time after the traffic's start.
    pub at: u64,
    pub minutes: u64,
    #[serde(default = "hundred")]
    pub factor: f64,
}

/// `--drop publisher=pub_7,at=1800,minutes=10[,factor=0.1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drop {
    pub publisher: String,
    pub at: u64,
    pub minutes: u64,
    #[serde(default = "tenth")]
    pub factor: f64,
}

fn hundred() -> f64 {
    100.0
}

fn tenth() -> f64 {
    0.1
}

/// `k=v,k=v` into a TOML table, so the flag reads like the `[loadgen]` key.
fn pairs<T: for<'de> Deserialize<'de>>(text: &str, what: &str) -> anyhow::Result<T> {
    let mut table = toml::Table::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--{what}: {pair:?} is not key=value"))?;
        let value = match v.parse::<i64>() {
            Ok(n) => toml::Value::Integer(n),
            Err(_) => match v.parse::<f64>() {
                Ok(x) => toml::Value::Float(x),
                Err(_) => toml::Value::String(v.to_string()),
            },
        };
        table.insert(k.trim().to_string(), value);
    }
    T::deserialize(table).map_err(|e| anyhow::anyhow!("--{what} {text:?}: {e}"))
}

impl FromStr for Spike {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        pairs(s, "spike")
    }
}

impl FromStr for Drop {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        pairs(s, "drop")
    }
}

/// The event-time window [from, to) of an anomaly starting `at` s after `start_ms`.
fn window(start_ms: i64, at: u64, minutes: u64) -> (i64, i64) {
    let from = start_ms + at as i64 * 1000;
    (from, from + minutes as i64 * 60_000)
}

/// The anomalies as the truth records them: kind, dimension, key, event-time window, factor.
pub fn describe(spikes: &[Spike], drops: &[Drop], start_ms: i64) -> serde_json::Value {
    let mut out = Vec::new();
    for s in spikes {
        let (from, to) = window(start_ms, s.at, s.minutes);
        out.push(
            serde_json::json!({"kind": "spike", "dimension": "campaign_id,country",
            "key": [s.campaign, s.country], "from_ms": from, "to_ms": to, "factor": s.factor}),
        );
    }
    for d in drops {
        let (from, to) = window(start_ms, d.at, d.minutes);
        out.push(
            serde_json::json!({"kind": "drop", "dimension": "publisher_id",
            "key": [d.publisher], "from_ms": from, "to_ms": to, "factor": d.factor}),
        );
    }
    serde_json::Value::Array(out)
}

/// A spike ready to draw: its window, its campaign's ads, the country, the probability.
#[derive(Debug, Clone)]
struct ArmedSpike {
    window: (i64, i64),
    ads: Vec<u32>,
    country: &'static str,
    p: f64,
}

#[derive(Debug, Clone)]
struct ArmedDrop {
    window: (i64, i64),
    publisher: u32,
    keep: f64,
}

/// What the traffic model asks of the planted anomalies.
#[derive(Debug, Clone, Default)]
pub struct Injector {
    spikes: Vec<ArmedSpike>,
    drops: Vec<ArmedDrop>,
}

/// The catalog facts the injector needs.
pub struct Shape<'a> {
    /// Each ad's probability of being drawn.
    pub ad_share: &'a dyn Fn(u32) -> f64,
    pub ads: u32,
    pub campaigns: u32,
    pub publishers: u32,
    pub start_ms: i64,
}

impl Injector {
    /// Checks the anomalies against the catalog; a spike too large to plant by re-drawing
    /// (the pair's share × (factor − 1) above 1) is refused with what to change.
    pub fn new(spikes: &[Spike], drops: &[Drop], shape: &Shape<'_>) -> anyhow::Result<Self> {
        let index = |id: &str, prefix: &str, n: u32, what: &str| -> anyhow::Result<u32> {
            id.strip_prefix(prefix)
                .and_then(|i| i.parse::<u32>().ok())
                .filter(|i| *i < n)
                .with_context(|| format!("--{what}: no {id:?} among {prefix}0..{prefix}{}", n - 1))
        };
        let total: u32 = audience::COUNTRIES.iter().map(|c| c.1).sum();
        let mut armed = Injector::default();
        for s in spikes {
            let c = index(&s.campaign, "cmp_", shape.campaigns, "spike")?;
            let (country, weight) = *audience::COUNTRIES
                .iter()
                .find(|(code, _)| *code == s.country)
                .with_context(|| {
                    format!(
                        "--spike: the load generator draws no country {:?}",
                        s.country
                    )
                })?;
            let ads: Vec<u32> = (c..shape.ads).step_by(shape.campaigns as usize).collect();
            anyhow::ensure!(!ads.is_empty(), "--spike: {} has no ads", s.campaign);
            let share: f64 = ads.iter().map(|a| (shape.ad_share)(*a)).sum::<f64>()
                * f64::from(weight)
                / f64::from(total);
            let p = share * (s.factor - 1.0);
            if !(s.factor >= 1.0 && p < 1.0) {
                bail!(
                    "--spike {} x {}: factor {} would need {:.0} % of all clicks; pick a smaller \
                     campaign or country, or a smaller factor",
                    s.campaign,
                    s.country,
                    s.factor,
                    p * 100.0
                );
            }
            armed.spikes.push(ArmedSpike {
                window: window(shape.start_ms, s.at, s.minutes),
                ads,
                country,
                p,
            });
        }
        for d in drops {
            anyhow::ensure!(
                (0.0..1.0).contains(&d.factor),
                "--drop: factor must be in [0, 1)"
            );
            anyhow::ensure!(shape.publishers >= 2, "--drop needs at least 2 publishers");
            armed.drops.push(ArmedDrop {
                window: window(shape.start_ms, d.at, d.minutes),
                publisher: index(&d.publisher, "pub_", shape.publishers, "drop")?,
                keep: d.factor,
            });
        }
        Ok(armed)
    }

    /// Re-draws a click at `t` as the anomalies in force want it: its ad, publisher, country.
    pub fn apply(
        &self,
        rng: &mut impl Rng,
        t: i64,
        publishers: u32,
        click: (&mut u32, &mut u32, &mut &'static str),
    ) {
        let (ad, publisher, country) = click;
        let live = |(from, to): (i64, i64)| (from..to).contains(&t);
        for s in self.spikes.iter().filter(|s| live(s.window)) {
            if rng.random_bool(s.p) {
                *ad = s.ads[rng.random_range(0..s.ads.len())];
                *country = s.country;
            }
        }
        for d in self.drops.iter().filter(|d| live(d.window)) {
            if *publisher == d.publisher && !rng.random_bool(d.keep) {
                *publisher = (d.publisher + 1 + rng.random_range(0..publishers - 1)) % publishers;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_like_the_config_and_bad_ones_are_named() {
        let s: Spike = "campaign=cmp_3,country=DE,at=1800,minutes=10"
            .parse()
            .unwrap();
        assert_eq!((s.at, s.minutes, s.factor), (1800, 10, 100.0));
        let d: Drop = "publisher=pub_7,at=60,minutes=5,factor=0.2"
            .parse()
            .unwrap();
        assert_eq!(d.factor, 0.2);
        let e = "campaign=cmp_3,at=1"
            .parse::<Spike>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--spike") && e.contains("country"), "{e}");
        let e = "publisher=pub_7,at=1,minutes=1,speed=2"
            .parse::<Drop>()
            .unwrap_err();
        assert!(e.to_string().contains("speed"), "{e}");
    }

    #[test]
    fn a_spike_too_large_to_plant_is_refused() {
        let shape = Shape {
            ad_share: &|_| 0.1,
            ads: 10,
            campaigns: 5,
            publishers: 3,
            start_ms: 0,
        };
        let spike = |c: &str, factor| Spike {
            campaign: c.into(),
            country: "US".into(),
            at: 0,
            minutes: 1,
            factor,
        };
        // cmp_1 holds 2 of 10 ads (20 %), the US 30 % of clicks: 6 % x 99 is too much.
        let e = Injector::new(&[spike("cmp_1", 100.0)], &[], &shape).unwrap_err();
        assert!(e.to_string().contains("smaller"), "{e}");
        assert!(Injector::new(&[spike("cmp_1", 10.0)], &[], &shape).is_ok());
        assert!(Injector::new(&[spike("cmp_9", 10.0)], &[], &shape).is_err());
    }
}
