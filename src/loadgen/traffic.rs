//! The traffic model: a pure, seeded generator of [`Emission`]s. Same configuration and seed,
//! same sequence, byte for byte, whatever the output; nothing here reads a clock.
//!
//! Emission `i` occupies the time slot `start_ms + i * 1000 / rate` (with `daily_cycle`, where
//! the cycle's cumulative rate reaches `i`: [`super::cycle`]). A slot carries either a
//! follow-up that fell due (a duplicate or retry of an earlier click) or a fresh draw:
//! malformed, forged (HTTP only), allowed-late, too-late, bot, hostile ([`Hostile`], with
//! `hostile` > 0), or a normal click.
//!
//! Late events are where a load generator can silently lie, so their timing keeps wide
//! margins on both sides of the consumer's lateness test (watermark = max event time seen in
//! a partition − the out-of-orderness bound; late = behind it by more than the allowed
//! lateness):
//! - nothing emitted so far is later than `base + 2 s` (duplicates may run 2 s ahead of their
//!   original), so an allowed-late click, at most `allowed_lateness − 30 s` behind `base`,
//!   is at least 33 s short of being late under any interleaving;
//! - a too-late click is only drawn once every shard has seen a click no older than
//!   [`LATE_GUARD_MS`], so every partition's watermark is at most `guard + bound` behind
//!   `base`; being `bound + allowed_lateness + 60 s` (or more) behind `base`, it is late by at
//!   least 30 s in every partition, and under a global (min over partitions) watermark as
//!   long as consumers read partitions within 30 s of each other.

use std::collections::BTreeMap;

use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::Zipf;
use serde::Serialize;

use super::LoadgenConfig;
use super::audience;
use super::catalog::Catalog;
use super::cycle::Slots;
use super::partition::Partitioner;
use crate::event::enrich::{Enricher, Observed};
use crate::event::{ClickEvent, Device};

/// The `source` of every event the load generator builds.
pub const SOURCE: &str = "loadgen";
/// Too-late clicks wait until every shard has seen a click at most this far behind `base`.
pub const LATE_GUARD_MS: i64 = 30_000;
/// ... and until this much simulated time has passed, so consumers have seen real traffic.
pub const LATE_WARMUP_MS: i64 = 10_000;
/// A follow-up (duplicate or retry) comes about 1 to this many emissions after its original.
pub const MAX_FOLLOW_UP_DELAY: u64 = 50;
/// A duplicate's event time is its original's ± up to this.
pub const DUPLICATE_JITTER_MS: i64 = 2_000;
/// A future-dated hostile event is at most this late: 2099-12-31T23:59:00Z, the partner line
/// of issue 11 that carried a watermark into 2099 (and still a valid event time).
pub const FUTURE_LATEST_MS: i64 = 4_102_444_740_000;
/// ... and at least this much earlier.
pub const FUTURE_SPREAD_MS: i64 = 30 * DAY_MS;
/// An ancient hostile event is this many days behind its slot, or up to 5 days more.
pub const ANCIENT_MIN_MS: i64 = 2 * DAY_MS;
pub const ANCIENT_SPREAD_MS: i64 = 5 * DAY_MS;
/// An oversized record or partner line: a user agent padded to between these many bytes,
/// beyond the redirect's 64 KiB line limit and the 1 KiB user-agent limit of a decoded event.
pub const OVERSIZED_BYTES: std::ops::RangeInclusive<usize> = 70_000..=100_000;
const DAY_MS: i64 = 86_400_000;
/// Tracking parameters an ad platform or mail tool appends to click URLs; the redirect
/// forwards these (`redirect.forward_params` by default) to the landing page.
pub const TRACKING_PARAMS: [&str; 6] = [
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "gclid",
    "fbclid",
    "msclkid",
];
/// Unsigned parameters the redirect must drop, not forward.
pub const UNFORWARDED_PARAMS: [&str; 3] = ["ref", "session", "_hsenc"];

/// The run-specific facts the generator needs beyond the configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    /// Simulated time of emission 0, epoch milliseconds.
    pub start_ms: i64,
    /// Number of emissions.
    pub count: u64,
    /// How impressions map to the output's shards (files, Kafka partitions).
    pub partitioner: Partitioner,
    /// Whether the output is HTTP: only then are forged clicks drawn (only HTTP has
    /// signatures to forge), and the HTTP-only hostile variants (tracking parameters,
    /// keyless partner batches, stalled connections).
    pub forgeries: bool,
}

/// One record for an output to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Emission {
    pub seq: u64,
    /// This slot's simulated time; event times are derived from it.
    pub base_ms: i64,
    pub kind: Kind,
    /// The click this emission is about. For malformed and forged emissions, the valid
    /// click the defect was applied to.
    pub click: Click,
    /// `partitioner.shard(impression_id)`.
    pub shard: u32,
    /// No later emission concerns this impression, so the truth can settle it now.
    pub settles: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Click,
    Bot,
    /// Another click on an earlier impression, with its own click id and event time.
    Duplicate,
    /// An earlier record re-sent unchanged (same click id).
    Retry,
    /// Behind the watermark but within the allowed lateness: corrects its window.
    AllowedLate,
    /// Beyond the allowed lateness: tallied late, never counted.
    TooLate,
    Malformed(Flaw),
    Forged(Forgery),
    Hostile(Hostile),
    /// Planted invalid traffic, or a benign near miss of a rule (`--invalid`).
    Scheme(Scheme),
}

impl Kind {
    pub const NAMES: [&'static str; 24] = [
        "click",
        "bot",
        "duplicate",
        "retry",
        "allowed_late",
        "too_late",
        "malformed",
        "forged",
        "hostile_future",
        "hostile_ancient",
        "hostile_oversized",
        "hostile_tracked",
        "hostile_keyless",
        "hostile_stalled",
        "scheme_crawler",
        "scheme_headless",
        "scheme_no_user_agent",
        "scheme_datacenter",
        "scheme_ip_flood",
        "scheme_user_flood",
        "scheme_too_fast",
        "scheme_near_miss_ip",
        "scheme_near_miss_split",
        "scheme_near_miss_user",
    ];

    pub fn name(&self) -> &'static str {
        Self::NAMES[match self {
            Kind::Click => 0,
            Kind::Bot => 1,
            Kind::Duplicate => 2,
            Kind::Retry => 3,
            Kind::AllowedLate => 4,
            Kind::TooLate => 5,
            Kind::Malformed(_) => 6,
            Kind::Forged(_) => 7,
            Kind::Hostile(Hostile::Future) => 8,
            Kind::Hostile(Hostile::Ancient) => 9,
            Kind::Hostile(Hostile::Oversized(_)) => 10,
            Kind::Hostile(Hostile::Tracked(_)) => 11,
            Kind::Hostile(Hostile::Keyless { .. }) => 12,
            Kind::Hostile(Hostile::Stalled) => 13,
            Kind::Scheme(s) => 14 + *s as usize,
        }]
    }

    /// Whether the pipeline receives this emission as a valid click (counted, or a duplicate
    /// of one): what moves a partition's watermark.
    pub fn is_valid_click(&self) -> bool {
        matches!(
            self,
            Kind::Click
                | Kind::Bot
                | Kind::Duplicate
                | Kind::Retry
                | Kind::AllowedLate
                | Kind::Hostile(Hostile::Tracked(_))
                | Kind::Scheme(_)
        )
    }
}

/// Input that production brings and that must never cost a click (issue 11), drawn for a
/// `hostile` share of fresh slots. Each has one known fate, which the truth books:
#[derive(Debug, Clone, PartialEq)]
pub enum Hostile {
    /// An event time in 2099 (a partner's or producer's broken clock): dead-lettered
    /// `event_time_in_future` (by the redirect's partner API, or the aggregator's sources),
    /// never counted, never moving a watermark.
    Future,
    /// Days old: beyond the allowed lateness in every partition, so tallied late.
    Ancient,
    /// A record (or partner line) of this many bytes, over 64 KiB, through a padded user agent:
    /// rejected as `line_too_long` by the redirect, as `invalid_user_agent` by the aggregator.
    Oversized(usize),
    /// HTTP: a click URL with tracking parameters appended (name, value), unsigned. Counted
    /// like any click; the forwarded ones ([`TRACKING_PARAMS`]) reach the 302's `Location`,
    /// the others ([`UNFORWARDED_PARAMS`]) do not.
    Tracked(Vec<(String, String)>),
    /// HTTP: a partner batch without an API key (or with a wrong one): 401, nothing read.
    Keyless { wrong_key: bool },
    /// HTTP: a connection that sends half of a signed click's request head, then trickles
    /// header bytes and never finishes it; the redirect closes it, and the click never counts.
    Stalled,
}

/// Invalid traffic the generator plants (issue 12), and near misses that must stay billable.
/// The truth never takes a scheme's word for a verdict: it applies the rules to what was
/// sent. Bursts are fresh impressions from one actor, planted a few slots ahead, each with
/// duplicates and retries like any click; an ip flood's earliest click may come allowed-late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// A crawler's user agent ([`audience::CRAWLER_USER_AGENTS`]): `known_bot`.
    Crawler,
    /// A headless browser: `headless`.
    Headless,
    /// No user agent at all: `no_user_agent`.
    NoUserAgent,
    /// A browser's user agent from a data-center address: `datacenter` where the redirect
    /// sees the address (HTTP click URLs with a client IP header), billable elsewhere.
    Datacenter,
    /// 6 to 10 clicks from one address on one ad within about a second: `ip_flood` beyond
    /// the 5th in each minute.
    IpFlood,
    /// 21 to 26 clicks from one user on one campaign's ads, about a second apart, each from
    /// another address: `user_flood` beyond the 20th in each hour.
    UserFlood,
    /// Clicked 0 to 2.5 s after its impression was served: `too_fast` under 1 s.
    TooFast,
    /// Exactly 5 clicks from one address on one ad within one minute.
    NearMissIp,
    /// 5 clicks from one address on one ad before a minute boundary, and a 6th after it.
    NearMissSplit,
    /// Exactly 20 clicks from one user on one campaign within one hour.
    NearMissUser,
}

impl Scheme {
    /// Whether the scheme is several clicks, planted ahead.
    pub fn is_burst(self) -> bool {
        matches!(
            self,
            Scheme::IpFlood
                | Scheme::UserFlood
                | Scheme::NearMissIp
                | Scheme::NearMissSplit
                | Scheme::NearMissUser
        )
    }

    pub const ALL: [Scheme; 10] = [
        Scheme::Crawler,
        Scheme::Headless,
        Scheme::NoUserAgent,
        Scheme::Datacenter,
        Scheme::IpFlood,
        Scheme::UserFlood,
        Scheme::TooFast,
        Scheme::NearMissIp,
        Scheme::NearMissSplit,
        Scheme::NearMissUser,
    ];
}

/// The kind of client behind a click, as the generator chose it: what the user-agent rules
/// must find.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Agent {
    #[default]
    Browser,
    /// A declared crawler or an HTTP library.
    Crawler,
    Headless,
    /// No user agent.
    Empty,
}

/// What is wrong with a malformed record; each output renders it in its own format.
#[derive(Debug, Clone, PartialEq)]
pub enum Flaw {
    /// Bytes that encode nothing.
    Garbage(Vec<u8>),
    /// The record cut short at this fraction of its length, as by a torn write.
    Truncated(f64),
    /// A required field left out.
    Missing(&'static str),
    /// `XX`: shaped like a country code, assigned to none.
    BadCountry,
    ZeroTime,
    /// An ad id with a space in it.
    BadAdId,
    /// A click id that is not a UUID.
    BadClickId,
}

/// Fields every input format requires, named as in the click event.
pub const REQUIRED_FIELDS: [&str; 6] = [
    "impression_id",
    "ad_id",
    "campaign_id",
    "advertiser_id",
    "publisher_id",
    "event_time",
];

/// How a forged click URL is broken; the redirect must answer 403 to each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    BadSignature,
    /// A signed parameter changed after signing.
    AlteredParam,
    Expired,
    /// Signed with a key the redirect does not have.
    UnknownKey,
}

/// A valid click and the intentions behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Click {
    /// The event as the pipeline should record it: built by the same [`Enricher`] as the
    /// redirect's, with a click id derived from the seed.
    pub event: ClickEvent,
    /// Catalog indices of the ad and publisher.
    pub ad: u32,
    pub publisher: u32,
    /// The dimensions the truth counts under, as chosen (not as classified).
    pub country: &'static str,
    pub device: Device,
    /// What the browser sends; only hashes of these are in `event`.
    pub user_id: Option<String>,
    pub ip: String,
    /// The client, as chosen.
    pub agent: Agent,
    /// `ip` was drawn from data-center ranges ([`audience::DATACENTER_RANGES`]).
    pub datacenter: bool,
    /// The redirect saw `ip` itself, raw (an HTTP click URL with the client IP header), so
    /// it could find a data center; set by the HTTP output.
    pub edge: bool,
}

/// Whose click a fresh slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Human,
    Bot,
    Scheme(Scheme),
}

/// Who clicks, beyond what is clicked.
struct Persona {
    device: Device,
    agent: Agent,
    user_agent: &'static str,
    user_id: Option<String>,
    ip: String,
    datacenter: bool,
}

pub struct Traffic {
    cfg: LoadgenConfig,
    schedule: Schedule,
    catalog: Catalog,
    enricher: Enricher,
    rng: ChaCha8Rng,
    zipf: Zipf<f64>,
    countries: WeightedIndex<u32>,
    devices: WeightedIndex<u32>,
    impression_prefix: String,
    seq: u64,
    /// Follow-ups by (due slot, original slot, 0) and planted clicks by (due slot, slot
    /// planted, member number from 1).
    pending: BTreeMap<(u64, u64, u32), Emission>,
    /// Actors of planted invalid traffic so far: each gets its own address.
    actors: u32,
    /// Latest event time of a valid click emitted to each shard.
    shard_latest: Vec<i64>,
    /// Planted spikes and drops (`--spike`, `--drop`).
    injector: super::anomalies::Injector,
    /// When each slot falls: evenly, or following the daily cycle.
    slots: Slots,
}

/// What a fresh slot holds, before any detail is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Draw {
    Malformed,
    Forged,
    AllowedLate,
    TooLate,
    Bot,
    Hostile(HostileDraw),
    Scheme,
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostileDraw {
    Future,
    Ancient,
    Oversized,
    Tracked,
    Keyless,
    Stalled,
}

impl HostileDraw {
    /// The variants every output can carry, then those only HTTP can.
    const ANY: [HostileDraw; 3] = [
        HostileDraw::Future,
        HostileDraw::Ancient,
        HostileDraw::Oversized,
    ];
    const HTTP: [HostileDraw; 3] = [
        HostileDraw::Tracked,
        HostileDraw::Keyless,
        HostileDraw::Stalled,
    ];
}

impl Traffic {
    /// `cfg` must have passed [`LoadgenConfig::check`].
    pub fn new(cfg: &LoadgenConfig, schedule: Schedule, enricher: Enricher) -> Self {
        let catalog = Catalog::new(cfg.catalog_size());
        Self {
            zipf: Zipf::new(f64::from(cfg.ads), cfg.zipf_exponent)
                .expect("checked: ads >= 1, exponent >= 0"),
            countries: WeightedIndex::new(audience::COUNTRIES.iter().map(|c| c.1))
                .expect("positive weights"),
            devices: WeightedIndex::new(audience::DEVICES.iter().map(|d| d.1))
                .expect("positive weights"),
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            impression_prefix: format!("imp_{:x}_", cfg.seed),
            seq: 0,
            pending: BTreeMap::new(),
            actors: 0,
            shard_latest: vec![i64::MIN; schedule.partitioner.shards() as usize],
            injector: cfg
                .injector(schedule.start_ms)
                .expect("checked by LoadgenConfig::check"),
            slots: Slots::new(schedule.start_ms, cfg.rate, cfg.daily_cycle),
            cfg: cfg.clone(),
            schedule,
            catalog,
            enricher,
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Simulated time of slot `seq`.
    pub fn base_ms(&self, seq: u64) -> i64 {
        self.slots.time(seq)
    }

    fn fresh(&mut self, seq: u64, base_ms: i64) -> Emission {
        let mut draw = self.draw(base_ms);
        let mut scheme = None;
        if draw == Draw::Scheme {
            let s = Scheme::ALL[self.rng.random_range(0..Scheme::ALL.len())];
            if s.is_burst() {
                // The burst's clicks come in later slots; this one is an ordinary click.
                self.plant(seq, base_ms, s);
                draw = Draw::Normal;
            } else {
                scheme = Some(s);
            }
        }
        let impression_id = format!("{}{seq}", self.impression_prefix);
        let who = match (draw, scheme) {
            (_, Some(s)) => Who::Scheme(s),
            (Draw::Bot, None) => Who::Bot,
            _ => Who::Human,
        };
        let offset = match draw {
            Draw::AllowedLate => self.rng.random_range(
                self.cfg.out_of_orderness_ms + 5_000..=self.cfg.allowed_lateness_ms - 30_000,
            ),
            Draw::TooLate => {
                self.cfg.out_of_orderness_ms
                    + self.cfg.allowed_lateness_ms
                    + 60_000
                    + self.rng.random_range(0..=600_000)
            }
            Draw::Hostile(HostileDraw::Ancient) => {
                ANCIENT_MIN_MS + self.rng.random_range(0..=ANCIENT_SPREAD_MS)
            }
            Draw::Hostile(HostileDraw::Future) => {
                base_ms - FUTURE_LATEST_MS + self.rng.random_range(0..=FUTURE_SPREAD_MS)
            }
            _ => self.rng.random_range(0..=self.cfg.max_disorder_ms),
        };
        let mut click = self.click(impression_id, base_ms - offset, who);
        let kind = match (draw, scheme) {
            (_, Some(s)) => Kind::Scheme(s),
            (Draw::Malformed, _) => Kind::Malformed(self.flaw()),
            (Draw::Forged, _) => Kind::Forged(self.forgery()),
            (Draw::AllowedLate, _) => Kind::AllowedLate,
            (Draw::TooLate, _) => Kind::TooLate,
            (Draw::Bot, _) => Kind::Bot,
            (Draw::Hostile(h), _) => Kind::Hostile(self.hostile(h)),
            (Draw::Normal | Draw::Scheme, _) => Kind::Click,
        };
        // With invalid traffic on, clicks carry their impression's time, as signed click URLs
        // do (partner feeds and late events do not).
        if self.cfg.invalid > 0.0
            && matches!(
                kind,
                Kind::Click | Kind::Bot | Kind::Scheme(_) | Kind::Hostile(Hostile::Tracked(_))
            )
        {
            let gap = self.impression_gap(scheme == Some(Scheme::TooFast));
            click.event.impression_time_ms = click.event.event_time_ms - gap;
        }
        let mut emission = Emission {
            seq,
            base_ms,
            kind,
            shard: self
                .schedule
                .partitioner
                .shard(click.event.impression_id.as_bytes()),
            click,
            settles: true,
        };
        if matches!(
            emission.kind,
            Kind::Click | Kind::Scheme(_) | Kind::Hostile(Hostile::Tracked(_))
        ) {
            self.maybe_follow_up(&mut emission);
        }
        emission
    }

    /// How long before its click an impression was served: 1.5 s to 10 min, or for a
    /// too-fast click 0 to 2.5 s (exactly 1 s now and then, the rule's edge). Over HTTP the
    /// redirect stamps the click, some milliseconds after the loadgen sent it, so there a
    /// too-fast click keeps clear of the edge: 0 to 0.4 s or 1.6 to 2.5 s.
    fn impression_gap(&mut self, too_fast: bool) -> i64 {
        if !too_fast {
            return self.rng.random_range(1_500..=600_000);
        }
        if self.schedule.forgeries {
            if self.rng.random_bool(0.5) {
                self.rng.random_range(0..=400)
            } else {
                self.rng.random_range(1_600..=2_500)
            }
        } else if self.rng.random_bool(0.1) {
            1_000
        } else {
            self.rng.random_range(0..=2_500)
        }
    }

    /// The first slot whose time is at or after `t`.
    fn slot_at(&self, t: i64) -> u64 {
        self.slots.first_at(t)
    }

    /// Plants the clicks of a burst as pending emissions (fresh impressions, due in the slots
    /// of their event times), unless the stream ends too soon for all of them.
    fn plant(&mut self, seq: u64, base_ms: i64, scheme: Scheme) {
        const MINUTE: i64 = 60_000;
        const HOUR: i64 = 3_600_000;
        let next = |t: i64, window: i64| (t.div_euclid(window) + 1) * window;
        // Members are at least 100 ms and one slot apart; a user's about a second.
        let gap = ((1000.0 / self.cfg.rate).ceil() as i64).max(100);
        let user_gap = gap.max(1_000);
        let t0 = base_ms + 2 * gap;
        let times: Vec<i64> = match scheme {
            Scheme::IpFlood => {
                let n = self.rng.random_range(6..=10);
                (0..n).map(|k| t0 + k * gap).collect()
            }
            Scheme::NearMissIp => {
                let first = if t0 + 4 * gap < next(t0, MINUTE) - 500 {
                    t0
                } else {
                    next(t0, MINUTE) + 500
                };
                (0..5).map(|k| first + k * gap).collect()
            }
            Scheme::NearMissSplit => {
                let boundary = next(t0 + 4 * gap + 600, MINUTE);
                (0..5)
                    .map(|k| boundary - 600 - (4 - k) * gap)
                    .chain([boundary + 500])
                    .collect()
            }
            Scheme::UserFlood => {
                let n = self.rng.random_range(21..=26);
                (0..n).map(|k| t0 + k * user_gap).collect()
            }
            Scheme::NearMissUser => {
                let first = if t0 + 19 * user_gap < next(t0, HOUR) - 1_000 {
                    t0
                } else {
                    next(t0, HOUR) + 1_000
                };
                (0..20).map(|k| first + k * user_gap).collect()
            }
            single => unreachable!("{single:?} is no burst"),
        };
        let slots: Vec<u64> = times
            .iter()
            .map(|&t| self.slot_at(t).max(seq + 1))
            .collect();
        let room = self.schedule.count - seq - 1;
        let last = slots.iter().copied().max().unwrap_or(seq);
        if last >= self.schedule.count || self.pending.len() + slots.len() > room as usize {
            return;
        }
        // One actor: a click farm's device on one ad, or a user on one campaign's ads.
        let per_user = matches!(scheme, Scheme::UserFlood | Scheme::NearMissUser);
        let ad = self.ad();
        let publisher = self.rng.random_range(0..self.cfg.publishers);
        let country = audience::COUNTRIES[self.countries.sample(&mut self.rng)].0;
        let device = audience::DEVICES[self.devices.sample(&mut self.rng)].0;
        let agents = audience::user_agents(device);
        let user_agent = agents[self.rng.random_range(0..agents.len())];
        let user_id = per_user.then(|| format!("actor_{:x}_{seq}", self.cfg.seed));
        let address = self.actor_ip();
        let campaign = ad % self.cfg.campaigns;
        let campaign_ads = (self.cfg.ads - campaign).div_ceil(self.cfg.campaigns);
        // An ip flood's earliest click may arrive allowed-late, after the others.
        let late_first = scheme == Scheme::IpFlood && self.rng.random_bool(0.3);
        for (k, (&t, &slot)) in times.iter().zip(&slots).enumerate() {
            let mut slot = slot;
            let ad = if per_user {
                campaign + self.rng.random_range(0..campaign_ads) * self.cfg.campaigns
            } else {
                ad
            };
            let persona = Persona {
                device,
                agent: Agent::Browser,
                user_agent,
                user_id: user_id.clone(),
                ip: if per_user {
                    self.actor_ip()
                } else {
                    address.clone()
                },
                datacenter: false,
            };
            let impression_id = format!("{}{seq}m{k}", self.impression_prefix);
            let mut click = self.build(impression_id, t, ad, publisher, country, persona);
            let mut kind = Kind::Scheme(scheme);
            if late_first && k == 0 {
                let (lo, hi) = (
                    self.cfg.out_of_orderness_ms + 5_000,
                    (self.cfg.allowed_lateness_ms - 30_000)
                        .min(self.cfg.out_of_orderness_ms + 25_000),
                );
                let behind = self.rng.random_range(lo..=hi);
                let late_slot = self.slot_at(t + behind);
                if late_slot < self.schedule.count {
                    kind = Kind::AllowedLate;
                    slot = late_slot;
                }
            }
            if kind != Kind::AllowedLate {
                let gap = self.impression_gap(false);
                click.event.impression_time_ms = t - gap;
            }
            let emission = Emission {
                seq: slot,
                base_ms: self.base_ms(slot),
                kind,
                shard: self
                    .schedule
                    .partitioner
                    .shard(click.event.impression_id.as_bytes()),
                click,
                settles: true,
            };
            self.pending.insert((slot, seq, k as u32 + 1), emission);
        }
    }

    fn actor_ip(&mut self) -> String {
        self.actors += 1;
        audience::actor_ip(self.actors)
    }

    /// The details of a hostile variant.
    fn hostile(&mut self, h: HostileDraw) -> Hostile {
        match h {
            HostileDraw::Future => Hostile::Future,
            HostileDraw::Ancient => Hostile::Ancient,
            HostileDraw::Oversized => Hostile::Oversized(self.rng.random_range(OVERSIZED_BYTES)),
            HostileDraw::Tracked => {
                let n = self.rng.random_range(1..=3);
                let mut params: Vec<(String, String)> = Vec::with_capacity(n + 1);
                for _ in 0..n {
                    let name = TRACKING_PARAMS[self.rng.random_range(0..TRACKING_PARAMS.len())];
                    if params.iter().all(|(k, _)| k != name) {
                        let value = self.token();
                        params.push((name.to_string(), value));
                    }
                }
                if self.rng.random_bool(0.5) {
                    let name =
                        UNFORWARDED_PARAMS[self.rng.random_range(0..UNFORWARDED_PARAMS.len())];
                    let value = self.token();
                    params.push((name.to_string(), value));
                }
                Hostile::Tracked(params)
            }
            HostileDraw::Keyless => Hostile::Keyless {
                wrong_key: self.rng.random_bool(0.5),
            },
            HostileDraw::Stalled => Hostile::Stalled,
        }
    }

    /// A tracking parameter's value: letters, digits, and the odd character that needs
    /// percent-encoding.
    fn token(&mut self) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ .";
        let len = self.rng.random_range(4..=24);
        (0..len)
            .map(|_| char::from(CHARS[self.rng.random_range(0..CHARS.len())]))
            .collect()
    }

    fn draw(&mut self, base_ms: i64) -> Draw {
        let c = &self.cfg;
        let forged = if self.schedule.forgeries {
            c.forged_share
        } else {
            0.0
        };
        let shares = [
            (Draw::Malformed, c.malformed_share),
            (Draw::Forged, forged),
            (Draw::AllowedLate, c.allowed_late_share),
            (Draw::TooLate, c.late_share),
            (Draw::Bot, c.bot_share),
            (Draw::Hostile(HostileDraw::Future), c.hostile),
            (Draw::Scheme, c.invalid),
        ];
        let mut u: f64 = self.rng.random();
        let draw = shares
            .into_iter()
            .find(|&(_, share)| {
                u -= share;
                u < 0.0
            })
            .map_or(Draw::Normal, |(d, _)| d);
        let draw = match draw {
            Draw::Hostile(_) => {
                let http: &[HostileDraw] = if self.schedule.forgeries {
                    &HostileDraw::HTTP
                } else {
                    &[]
                };
                let n = HostileDraw::ANY.len() + http.len();
                let i = self.rng.random_range(0..n);
                Draw::Hostile(
                    *HostileDraw::ANY
                        .iter()
                        .chain(http)
                        .nth(i)
                        .expect("in range"),
                )
            }
            d => d,
        };
        let late = matches!(draw, Draw::TooLate | Draw::Hostile(HostileDraw::Ancient));
        if late && !self.late_is_safe(base_ms) {
            Draw::Normal
        } else {
            draw
        }
    }

    /// Whether a too-late click drawn now is late under every partition's watermark.
    fn late_is_safe(&self, base_ms: i64) -> bool {
        base_ms - self.schedule.start_ms >= LATE_WARMUP_MS
            && self
                .shard_latest
                .iter()
                .all(|&t| t >= base_ms - LATE_GUARD_MS)
    }

    /// An ad: the hot one at its share, otherwise by Zipf.
    fn ad(&mut self) -> u32 {
        if self.rng.random_bool(self.cfg.hot_ad_share) {
            0
        } else {
            // Zipf draws ranks 1..=n; rank 1 is ad_0.
            (self.zipf.sample(&mut self.rng) as u32 - 1).min(self.cfg.ads - 1)
        }
    }

    fn click(&mut self, impression_id: String, event_time_ms: i64, who: Who) -> Click {
        let mut ad = self.ad();
        let mut publisher = self.rng.random_range(0..self.cfg.publishers);
        let mut country = audience::COUNTRIES[self.countries.sample(&mut self.rng)].0;
        let place = (&mut ad, &mut publisher, &mut country);
        let publishers = self.cfg.publishers;
        (self.injector).apply(&mut self.rng, event_time_ms, publishers, place);
        let persona = match who {
            Who::Bot | Who::Scheme(Scheme::Crawler) => {
                let agents = if who == Who::Bot {
                    audience::BOT_USER_AGENTS
                } else {
                    audience::CRAWLER_USER_AGENTS
                };
                let ua = agents[self.rng.random_range(0..agents.len())];
                let ip = audience::BOT_IPS[self.rng.random_range(0..audience::BOT_IPS.len())];
                Persona {
                    device: Device::Bot,
                    agent: Agent::Crawler,
                    user_agent: ua,
                    user_id: None,
                    ip: ip.to_string(),
                    datacenter: false,
                }
            }
            Who::Human | Who::Scheme(Scheme::TooFast) => {
                let device = audience::DEVICES[self.devices.sample(&mut self.rng)].0;
                let agents = audience::user_agents(device);
                let ua = agents[self.rng.random_range(0..agents.len())];
                let user = self.rng.random_range(0..self.cfg.users);
                Persona {
                    device,
                    agent: Agent::Browser,
                    user_agent: ua,
                    user_id: Some(format!("u_{user}")),
                    ip: audience::user_ip(user),
                    datacenter: false,
                }
            }
            // Headless browsers run in data centers half of the time.
            Who::Scheme(Scheme::Headless) => {
                let agents = audience::HEADLESS_USER_AGENTS;
                let ua = agents[self.rng.random_range(0..agents.len())];
                let datacenter = self.rng.random_bool(0.5);
                Persona {
                    device: Device::Bot,
                    agent: Agent::Headless,
                    user_agent: ua,
                    user_id: None,
                    ip: if datacenter {
                        audience::datacenter_ip(self.rng.random())
                    } else {
                        self.actor_ip()
                    },
                    datacenter,
                }
            }
            Who::Scheme(Scheme::NoUserAgent) => Persona {
                device: Device::Other,
                agent: Agent::Empty,
                user_agent: "",
                user_id: None,
                ip: self.actor_ip(),
                datacenter: false,
            },
            // A scraper on a cloud server, passing for a desktop browser.
            Who::Scheme(Scheme::Datacenter) => {
                let agents = audience::user_agents(Device::Desktop);
                Persona {
                    device: Device::Desktop,
                    agent: Agent::Browser,
                    user_agent: agents[self.rng.random_range(0..agents.len())],
                    user_id: None,
                    ip: audience::datacenter_ip(self.rng.random()),
                    datacenter: true,
                }
            }
            Who::Scheme(burst) => unreachable!("{burst:?} clicks are planted"),
        };
        self.build(
            impression_id,
            event_time_ms,
            ad,
            publisher,
            country,
            persona,
        )
    }

    /// The click, enriched as the redirect would enrich it and left unclassified, as a file
    /// or Kafka record carries it (the redirect classifies what it forwards).
    fn build(
        &mut self,
        impression_id: String,
        event_time_ms: i64,
        ad: u32,
        publisher: u32,
        country: &'static str,
        p: Persona,
    ) -> Click {
        let owner = self.catalog.ad(ad);
        let observed = Observed {
            impression_id,
            ad_id: owner.ad_id.to_string(),
            campaign_id: owner.campaign_id.to_string(),
            advertiser_id: owner.advertiser_id.to_string(),
            publisher_id: self.catalog.publisher_id(publisher).to_string(),
            event_time_ms,
            country: Some(country.to_string()),
            ip: Some(p.ip.clone()),
            user_id: p.user_id.clone(),
            user_agent: Some(p.user_agent.to_string()),
        };
        let mut event = self
            .enricher
            .enrich(observed, SOURCE)
            .expect("generated clicks are valid (checked: start within 2000..2099)");
        event.click_id = self.click_id(event_time_ms);
        event.classified = false;
        event.invalid_reasons.clear();
        Click {
            event,
            ad,
            publisher,
            country,
            device: p.device,
            user_id: p.user_id,
            ip: p.ip,
            agent: p.agent,
            datacenter: p.datacenter,
            edge: false,
        }
    }

    /// A UUIDv7 stamped with the event time, its random bits from the seed.
    fn click_id(&mut self, event_time_ms: i64) -> String {
        let mut random = [0u8; 10];
        self.rng.fill(&mut random);
        uuid::Builder::from_unix_timestamp_millis(event_time_ms as u64, &random)
            .into_uuid()
            .to_string()
    }

    /// Maybe schedules a duplicate or retry of `original`, due 1..=50 slots later. It is
    /// skipped if it could not be emitted before the stream ends.
    fn maybe_follow_up(&mut self, original: &mut Emission) {
        let u: f64 = self.rng.random();
        let delay = self.rng.random_range(1..=MAX_FOLLOW_UP_DELAY);
        let kind = if u < self.cfg.duplicate_share {
            Kind::Duplicate
        } else if u < self.cfg.duplicate_share + self.cfg.retry_share {
            Kind::Retry
        } else {
            return;
        };
        let due = original.seq + delay;
        let room = self.schedule.count - original.seq - 1;
        if due >= self.schedule.count || self.pending.len() as u64 >= room {
            return;
        }
        let mut click = original.click.clone();
        if kind == Kind::Duplicate {
            let t = click.event.event_time_ms
                + self
                    .rng
                    .random_range(-DUPLICATE_JITTER_MS..=DUPLICATE_JITTER_MS);
            click.event.event_time_ms = t;
            click.event.click_id = self.click_id(t);
        }
        original.settles = false;
        let follow_up = Emission {
            kind,
            click,
            settles: true,
            ..original.clone()
        };
        self.pending.insert((due, original.seq, 0), follow_up);
    }

    fn flaw(&mut self) -> Flaw {
        match self.rng.random_range(0..7) {
            0 => {
                let len = self.rng.random_range(8..=64);
                let mut bytes = vec![0u8; len];
                self.rng.fill(&mut bytes[..]);
                Flaw::Garbage(bytes)
            }
            1 => Flaw::Truncated(self.rng.random_range(0.1..0.9)),
            2 => Flaw::Missing(REQUIRED_FIELDS[self.rng.random_range(0..REQUIRED_FIELDS.len())]),
            3 => Flaw::BadCountry,
            4 => Flaw::ZeroTime,
            5 => Flaw::BadAdId,
            _ => Flaw::BadClickId,
        }
    }

    fn forgery(&mut self) -> Forgery {
        [
            Forgery::BadSignature,
            Forgery::AlteredParam,
            Forgery::Expired,
            Forgery::UnknownKey,
        ][self.rng.random_range(0..4)]
    }

    fn next_emission(&mut self) -> Option<Emission> {
        let seq = self.seq;
        if seq >= self.schedule.count {
            return None;
        }
        self.seq += 1;
        let base_ms = self.base_ms(seq);
        let remaining = self.schedule.count - seq;
        let follow_up_due = self
            .pending
            .first_key_value()
            .is_some_and(|(&(due, _, _), _)| due <= seq || remaining <= self.pending.len() as u64);
        let emission = if follow_up_due {
            let ((_, _, member), mut e) = self.pending.pop_first().expect("non-empty");
            e.seq = seq;
            e.base_ms = base_ms;
            // A planted click is a fresh impression: it may have follow-ups of its own.
            if member > 0 && matches!(e.kind, Kind::Scheme(_)) {
                self.maybe_follow_up(&mut e);
            }
            e
        } else {
            self.fresh(seq, base_ms)
        };
        if emission.kind.is_valid_click() {
            let latest = &mut self.shard_latest[emission.shard as usize];
            *latest = (*latest).max(emission.click.event.event_time_ms);
        }
        Some(emission)
    }
}

impl Iterator for Traffic {
    type Item = Emission;

    fn next(&mut self) -> Option<Emission> {
        self.next_emission()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.schedule.count - self.seq) as usize;
        (left, Some(left))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// 2026-04-20T12:00:00Z
    pub(crate) const START: i64 = 1_776_686_400_000;

    pub(crate) fn traffic(cfg: &LoadgenConfig, count: u64, shards: u32) -> Traffic {
        cfg.check().unwrap();
        Traffic::new(
            cfg,
            Schedule {
                start_ms: START,
                count,
                partitioner: Partitioner::Crc32 { shards },
                forgeries: false,
            },
            Enricher::new("test-salt"),
        )
    }

    /// [`traffic`] as the HTTP output draws it (forgeries, HTTP-only hostile variants).
    pub(crate) fn http_traffic(cfg: &LoadgenConfig, count: u64, shards: u32) -> Traffic {
        let mut t = traffic(cfg, count, shards);
        t.schedule.forgeries = true;
        t
    }

    fn counts(emissions: &[Emission]) -> HashMap<&'static str, usize> {
        let mut m = HashMap::new();
        for e in emissions {
            *m.entry(e.kind.name()).or_default() += 1;
        }
        m
    }

    #[test]
    fn same_seed_same_emissions_other_seed_others() {
        let cfg = LoadgenConfig::default();
        let a: Vec<_> = traffic(&cfg, 3_000, 3).collect();
        let b: Vec<_> = traffic(&cfg, 3_000, 3).collect();
        assert_eq!(a.len(), 3_000);
        assert_eq!(a, b);
        let other = LoadgenConfig {
            seed: cfg.seed + 1,
            ..cfg
        };
        let c: Vec<_> = traffic(&other, 3_000, 3).collect();
        assert_ne!(a[0].click.event, c[0].click.event);
        let differing = a.iter().zip(&c).filter(|(x, y)| x.click != y.click).count();
        assert!(differing > 2_900, "{differing}");
    }

    #[test]
    fn every_kind_appears_in_about_its_share() {
        let cfg = LoadgenConfig {
            late_share: 0.02,
            ..LoadgenConfig::default()
        };
        let n = 100_000;
        let all: Vec<_> = traffic(&cfg, n, 4).collect();
        let got = counts(&all);
        let near = |name: &str, share: f64| {
            let want = share * n as f64;
            let have = got.get(name).copied().unwrap_or(0) as f64;
            assert!(
                (have - want).abs() < 5.0 * want.sqrt() + 0.02 * want,
                "{name}: {have} vs {want}"
            );
        };
        near("malformed", cfg.malformed_share);
        near("allowed_late", cfg.allowed_late_share);
        near("bot", cfg.bot_share);
        // Too-late clicks wait 10 s of 100 s, and normal clicks absorb the rest.
        near("too_late", cfg.late_share * 0.9);
        let normal = got["click"] as f64;
        near("duplicate", cfg.duplicate_share * normal / n as f64);
        near("retry", cfg.retry_share * normal / n as f64);
        assert_eq!(got.get("forged"), None, "no forgeries without HTTP");
    }

    /// Also at a trickle over many shards, where the late guard has real work to do.
    #[test]
    fn event_times_keep_their_margins() {
        for (rate, shards, count) in [(200.0, 3, 40_000), (1.0, 16, 10_000)] {
            let cfg = LoadgenConfig {
                late_share: 0.05,
                rate,
                ..LoadgenConfig::default()
            };
            check_margins(&cfg, shards, count);
        }
    }

    fn check_margins(cfg: &LoadgenConfig, shards: u32, count: u64) {
        let mut latest_per_shard: HashMap<u32, i64> = HashMap::new();
        let mut latest = i64::MIN;
        let mut originals: HashMap<String, i64> = HashMap::new();
        let mut too_late = 0;
        for e in traffic(cfg, count, shards) {
            let t = e.click.event.event_time_ms;
            let behind = e.base_ms - t;
            match e.kind {
                Kind::Click | Kind::Bot => {
                    assert!((0..=cfg.max_disorder_ms).contains(&behind));
                    originals.insert(e.click.event.impression_id.clone(), t);
                }
                // Planted clicks may wait a few slots for their turn, never for the bound.
                Kind::Scheme(_) => {
                    assert!((0..cfg.out_of_orderness_ms).contains(&behind), "{behind}");
                    originals.insert(e.click.event.impression_id.clone(), t);
                }
                Kind::Duplicate | Kind::Retry => {
                    let orig = originals[&e.click.event.impression_id];
                    assert!((t - orig).abs() <= DUPLICATE_JITTER_MS);
                    assert!(t <= e.base_ms + DUPLICATE_JITTER_MS);
                }
                Kind::AllowedLate => {
                    // Never late, even under the most advanced watermark possible.
                    let watermark = latest - cfg.out_of_orderness_ms;
                    assert!(t > watermark - cfg.allowed_lateness_ms + 30_000);
                    assert!(behind > cfg.out_of_orderness_ms);
                }
                Kind::TooLate | Kind::Hostile(Hostile::Ancient) => {
                    too_late += 1;
                    assert!(e.base_ms - START >= LATE_WARMUP_MS, "too late too early");
                    // Late under every shard's watermark, with room to spare.
                    for shard in 0..shards {
                        let seen = latest_per_shard.get(&shard).copied();
                        let watermark = seen.expect("shard has traffic") - cfg.out_of_orderness_ms;
                        assert!(
                            t < watermark - cfg.allowed_lateness_ms - 29_000,
                            "seq {} shard {shard}",
                            e.seq
                        );
                    }
                }
                _ => {}
            }
            if e.kind.is_valid_click() {
                latest = latest.max(t);
                let s = latest_per_shard.entry(e.shard).or_insert(t);
                *s = (*s).max(t);
            }
        }
        assert!(
            too_late > 10,
            "{too_late} too-late clicks at rate {}",
            cfg.rate
        );
    }

    #[test]
    fn duplicates_follow_their_original_and_all_are_emitted() {
        let cfg = LoadgenConfig {
            duplicate_share: 0.3,
            retry_share: 0.2,
            ..LoadgenConfig::default()
        };
        let all: Vec<_> = traffic(&cfg, 5_000, 2).collect();
        assert_eq!(all.len(), 5_000);
        let mut first: HashMap<&str, &Emission> = HashMap::new();
        let mut earlier_duplicates = 0;
        for e in &all {
            let imp = e.click.event.impression_id.as_str();
            match e.kind {
                Kind::Duplicate | Kind::Retry => {
                    let orig = first.remove(imp).expect("follow-up after its original");
                    assert!(!orig.settles && e.settles);
                    assert!(e.seq > orig.seq && e.seq - orig.seq < 3 * MAX_FOLLOW_UP_DELAY);
                    assert_eq!(e.shard, orig.shard);
                    if e.kind == Kind::Retry {
                        assert_eq!(e.click, orig.click);
                    } else {
                        assert_ne!(e.click.event.click_id, orig.click.event.click_id);
                        assert_eq!(e.click.event.user_id_hash, orig.click.event.user_id_hash);
                        if e.click.event.event_time_ms < orig.click.event.event_time_ms {
                            earlier_duplicates += 1;
                        }
                    }
                }
                _ => {
                    assert!(first.insert(imp, e).is_none(), "impression ids are fresh");
                }
            }
        }
        assert!(
            first.values().all(|e| e.settles),
            "every announced follow-up came"
        );
        assert!(
            earlier_duplicates > 50,
            "duplicates can win: {earlier_duplicates}"
        );
    }

    #[test]
    fn hostile_variants_fit_their_output() {
        let cfg = LoadgenConfig {
            hostile: 0.3,
            ..LoadgenConfig::default()
        };
        for http in [false, true] {
            let t = if http {
                http_traffic(&cfg, 20_000, 4)
            } else {
                traffic(&cfg, 20_000, 4)
            };
            let all: Vec<_> = t.collect();
            let got = counts(&all);
            let names = if http {
                &Kind::NAMES[8..]
            } else {
                &Kind::NAMES[8..11]
            };
            for name in Kind::NAMES[8..14].iter() {
                let n = got.get(name).copied().unwrap_or(0);
                assert_eq!(n > 200, names.contains(name), "{name}: {n} (http: {http})");
            }
            for e in &all {
                let t = e.click.event.event_time_ms;
                match &e.kind {
                    Kind::Hostile(Hostile::Future) => {
                        assert!(
                            (FUTURE_LATEST_MS - FUTURE_SPREAD_MS..=FUTURE_LATEST_MS).contains(&t)
                        );
                        e.click.event.validate().unwrap();
                    }
                    Kind::Hostile(Hostile::Ancient) => assert!(t <= e.base_ms - ANCIENT_MIN_MS),
                    Kind::Hostile(Hostile::Oversized(n)) => {
                        assert!(OVERSIZED_BYTES.contains(n))
                    }
                    Kind::Hostile(Hostile::Tracked(params)) => {
                        assert!(!params.is_empty() && params.len() <= 4);
                        assert!(
                            params
                                .iter()
                                .any(|(k, _)| TRACKING_PARAMS.contains(&k.as_str()))
                        );
                    }
                    _ => {}
                }
            }
            // Tracked clicks have follow-ups like any click.
            assert!(all.iter().any(|e| e.kind == Kind::Duplicate));
        }
    }

    #[test]
    fn ancient_events_keep_the_late_margins() {
        let cfg = LoadgenConfig {
            late_share: 0.02,
            hostile: 0.1,
            ..LoadgenConfig::default()
        };
        check_margins(&cfg, 4, 30_000);
    }

    #[test]
    fn hot_ad_share_is_honoured() {
        let cfg = LoadgenConfig {
            hot_ad_share: 0.3,
            ads: 1_000,
            ..LoadgenConfig::default()
        };
        let n = 50_000;
        let clicks: Vec<_> = traffic(&cfg, n, 1)
            .filter(|e| e.kind == Kind::Click)
            .collect();
        let on_hot = clicks.iter().filter(|e| e.click.ad == 0).count() as f64;
        // Zipf's own rank 1 also lands on ad_0.
        let harmonic: f64 = (1..=cfg.ads)
            .map(|k| f64::from(k).powf(-cfg.zipf_exponent))
            .sum();
        let want = cfg.hot_ad_share + (1.0 - cfg.hot_ad_share) / harmonic;
        let have = on_hot / clicks.len() as f64;
        assert!((have - want).abs() < 0.01, "{have} vs {want}");
        assert!(clicks.iter().all(|e| e.click.ad < cfg.ads));
    }

    #[test]
    fn events_are_valid_and_carry_the_intended_dimensions() {
        let cfg = LoadgenConfig::default();
        for e in traffic(&cfg, 5_000, 1) {
            let ev = &e.click.event;
            ev.validate().unwrap();
            assert_eq!(ev.country, e.click.country);
            assert_eq!(ev.device(), Some(e.click.device));
            assert_eq!(ev.source, SOURCE);
            let id = uuid::Uuid::parse_str(&ev.click_id).unwrap();
            assert_eq!(id.get_version_num(), 7);
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            assert_eq!(
                secs as i64 * 1000 + i64::from(nanos) / 1_000_000,
                ev.event_time_ms
            );
            assert_eq!(e.kind == Kind::Bot, e.click.device == Device::Bot);
        }
    }

    #[test]
    fn slots_follow_the_rate() {
        let cfg = LoadgenConfig {
            rate: 400.0,
            ..LoadgenConfig::default()
        };
        let t = traffic(&cfg, 10, 1);
        assert_eq!(t.base_ms(0), START);
        assert_eq!(t.base_ms(1), START + 2);
        assert_eq!(t.base_ms(400), START + 1_000);
        let bases: Vec<_> = t.map(|e| e.base_ms).collect();
        assert!(bases.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn planted_traffic_is_valid_reproducible_and_keeps_the_margins() {
        let cfg = LoadgenConfig {
            invalid: 0.05,
            late_share: 0.02,
            ads: 50,
            campaigns: 10,
            ..LoadgenConfig::default()
        };
        let all: Vec<_> = traffic(&cfg, 30_000, 3).collect();
        assert_eq!(all, traffic(&cfg, 30_000, 3).collect::<Vec<_>>());
        let mut impressions = std::collections::HashSet::new();
        for e in &all {
            let ev = &e.click.event;
            if !matches!(e.kind, Kind::Duplicate | Kind::Retry) {
                assert!(impressions.insert(ev.impression_id.clone()), "fresh ids");
            }
            if !e.kind.is_valid_click() {
                continue;
            }
            ev.validate().unwrap();
            assert_eq!(ev.device(), Some(e.click.device), "{:?}", e.kind);
            assert!(!ev.classified && ev.invalid_reasons.is_empty());
            let (agent, ua) = (e.click.agent, ev.user_agent.as_str());
            assert_eq!(agent == Agent::Empty, ua.is_empty());
            assert_eq!(agent == Agent::Headless, ua.contains("HeadlessChrome"));
            assert_eq!(
                agent == Agent::Crawler,
                e.click.device == Device::Bot && !ua.contains("Headless")
            );
            assert!(!e.click.edge, "only the HTTP output sets edge");
            // Signed-link clicks carry their impression's time; partner events do not.
            let known = ev.impression_time_ms != 0;
            assert_eq!(known, e.kind != Kind::AllowedLate, "{:?}", e.kind);
            if let Kind::Scheme(s) = e.kind {
                let gap = ev.event_time_ms - ev.impression_time_ms;
                let range = if s == Scheme::TooFast {
                    0..=2_500
                } else {
                    1_500..=600_000
                };
                assert!(range.contains(&gap), "{s:?} {gap}");
                if s.is_burst() {
                    assert!(e.base_ms >= ev.event_time_ms, "never ahead of its slot");
                }
            }
        }
        check_margins(&cfg, 3, 30_000);
    }
}
