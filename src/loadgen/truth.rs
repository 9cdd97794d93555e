//! The ground truth: what an exactly-once aggregator must report for the traffic that was
//! emitted, computed exactly and independently of the pipeline.
//!
//! Per impression, the winner is the click with the earliest event time, ties broken by the
//! smallest click id; every other click on it is a duplicate, counted in its own row (the row
//! of its own event time and dimensions), so a duplicate's measure never moves when the winner
//! changes. Rows are keyed by (minute, ad, campaign, advertiser, publisher, country, device),
//! with the country and device the generator intended.
//!
//! Every winner is then billable or invalid, under the first of its reasons in the order of
//! [`REASONS`] (issue 12), by rules implemented here on their own, never with the pipeline's
//! code ([`Rules`] holds their parameters, the aggregator's `invalid.*` defaults):
//! - `known_bot`, `headless`, `no_user_agent`: the kind of client the generator chose
//!   (a crawler, a headless browser, no user agent), on every path;
//! - `datacenter`: an address the generator drew from data-center ranges, and only on a
//!   click the redirect saw with its raw address ([`Click::edge`]): file and Kafka records
//!   carry hashes only;
//! - `ip_flood`: among the winners from one address on one ad in one epoch-aligned window of
//!   `ip_flood_window_ms`, ordered by (event time, click id), every one beyond the
//!   `ip_flood_clicks`th;
//! - `user_flood`: the same over one user on one campaign in windows of
//!   `user_flood_window_ms`, beyond the `user_flood_clicks`th (clicks without a user id never);
//! - `too_fast`: less than `too_fast_ms` between the impression (when known) and the click.
//!
//! Floods rank every winner (late clicks are not winners: they were never counted), whatever
//! its other reasons. Winners wait in buckets of event time until no click still to come can
//! fall in their windows, so memory stays bounded by the rules' windows and the lateness.
//!
//! Reach (issue 14): the distinct users behind the winners, per ad and hour and per campaign
//! and day, among the billable winners (`users`) and among all of them (`all_users`, what
//! `traffic=all` owes). A user is the click's user id, or its address when it has none, as
//! the pipeline takes `user_id_hash`, falling back to `ip_hash`; raw values here, since the
//! hashes are keyed and one-to-one. Over HTTP the address is the one the generator intended,
//! which the redirect hashes only when it reads it from the client IP header.
//!
//! Every emission lands in exactly one tally:
//! `emitted = counted + invalid + duplicates + late + rejected`, where `counted` is billable.
//! Hostile emissions ([`Hostile`]) are booked by the fate the pipeline owes them:
//! future-dated, oversized, keyless and stalled ones are `rejected` (each with its own tally
//! too), ancient ones `late` (and `ancient`), and clicks with tracking parameters are clicks
//! (and `tracked`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::catalog::Catalog;
use super::traffic::{Agent, Click, DUPLICATE_JITTER_MS, Emission, Hostile, Kind};
use crate::event::Device;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The reasons a click is not billable, in their order of precedence: a click with several
/// counts once, under the first. The names are the output's (`"invalid": {"<reason>": n}`).
pub const REASONS: [&str; 7] = [
    "known_bot",
    "datacenter",
    "no_user_agent",
    "headless",
    "ip_flood",
    "user_flood",
    "too_fast",
];
const KNOWN_BOT: u8 = 1 << 0;
const DATACENTER: u8 = 1 << 1;
const NO_USER_AGENT: u8 = 1 << 2;
const HEADLESS: u8 = 1 << 3;
const IP_FLOOD: u8 = 1 << 4;
const USER_FLOOD: u8 = 1 << 5;
const TOO_FAST: u8 = 1 << 6;

/// The parameters of the behavioural rules; keep them equal to the aggregator's `invalid.*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// Clicks from one address on one ad in one window that are still billable.
    pub ip_flood_clicks: u32,
    pub ip_flood_window_ms: i64,
    /// Clicks from one user on one campaign in one window that are still billable.
    pub user_flood_clicks: u32,
    pub user_flood_window_ms: i64,
    /// A click sooner than this after its impression is too fast.
    pub too_fast_ms: i64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            ip_flood_clicks: 5,
            ip_flood_window_ms: MINUTE_MS,
            user_flood_clicks: 20,
            user_flood_window_ms: 60 * MINUTE_MS,
            too_fast_ms: 1_000,
        }
    }
}

impl Rules {
    /// Buckets of winners are this long: every window of both flood rules lies in one.
    fn bucket_ms(&self) -> i64 {
        let (a, b) = (self.ip_flood_window_ms, self.user_flood_window_ms);
        let gcd = |mut x: i64, mut y: i64| {
            while y != 0 {
                (x, y) = (y, x % y);
            }
            x
        };
        a / gcd(a, b) * b
    }

    pub fn check(&self) -> anyhow::Result<()> {
        for (key, ms) in [
            ("ip_flood_window_ms", self.ip_flood_window_ms),
            ("user_flood_window_ms", self.user_flood_window_ms),
        ] {
            anyhow::ensure!(
                (1..=7 * 86_400_000).contains(&ms),
                "invalid.{key} must be between 1 ms and 7 days"
            );
        }
        anyhow::ensure!(self.too_fast_ms >= 0, "invalid.too_fast_ms must be >= 0");
        anyhow::ensure!(
            self.bucket_ms() <= 7 * 86_400_000,
            "the flood windows' least common multiple is over 7 days"
        );
        Ok(())
    }
}

/// The accumulator. Impressions are kept only until their last emission (see
/// [`Emission::settles`]), and their winners only until no later click can share a window
/// with them, so memory stays bounded however long the stream.
pub struct GroundTruth {
    catalog: Catalog,
    rules: Rules,
    /// How far behind the latest event time seen a counted click may still come.
    horizon_ms: i64,
    open: HashMap<String, Winner>,
    /// Event times of the open impressions' current winners (a multiset).
    open_times: BTreeMap<i64, u32>,
    /// Settled winners by bucket start, waiting for their verdicts.
    buckets: BTreeMap<i64, Vec<Member>>,
    /// Buckets before this are settled: a winner arriving there is a bug of the truth's.
    closed_before: i64,
    latest_ms: i64,
    addresses: HashMap<String, u32>,
    users: HashMap<String, u32>,
    rows: HashMap<RowKey, Counts>,
    reach: ReachSets,
    tallies: Tallies,
    kinds: BTreeMap<String, u64>,
}

/// The users behind the judged winners, by (window start, ad or campaign index).
#[derive(Default)]
struct ReachSets {
    ad_hour: HashMap<(i64, u32), Users>,
    campaign_day: HashMap<(i64, u32), Users>,
}

/// One group's users: every winner's, and the billable winners'.
#[derive(Default)]
struct Users {
    all: HashSet<u64>,
    billable: HashSet<u64>,
}

impl Users {
    fn add(&mut self, who: u64, billable: bool) {
        self.all.insert(who);
        if billable {
            self.billable.insert(who);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RowKey {
    minute_ms: i64,
    ad: u32,
    publisher: u32,
    country: &'static str,
    device: Device,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    clicks: u64,
    duplicates: u64,
    invalid: [u64; 7],
}

/// A counted click awaiting its verdict.
#[derive(Debug, Clone, Copy)]
struct Member {
    event_time_ms: i64,
    /// UUIDs order like their canonical lowercase text, so this is the click-id order.
    click_id: uuid::Uuid,
    row: RowKey,
    /// Interned address and user; `u32::MAX` for none.
    address: u32,
    user: u32,
    campaign: u32,
    /// Reasons known without the other clicks: the client, the address, the impression time.
    reasons: u8,
}

const NOBODY: u32 = u32::MAX;

impl Member {
    /// Who the click counts as in reach: its user, else its address, else nobody. Users and
    /// addresses are interned apart, so the two kinds are told apart by the upper half.
    fn reach_user(&self) -> Option<u64> {
        if self.user != NOBODY {
            Some(1 << 32 | u64::from(self.user))
        } else if self.address != NOBODY {
            Some(u64::from(self.address))
        } else {
            None
        }
    }
}

/// The best click on an open impression so far.
struct Winner {
    member: Member,
    duplicates: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tallies {
    pub emitted: u64,
    /// Billable: distinct valid impressions within the allowed lateness whose winning click
    /// has no invalid reason (= the sum of `clicks`).
    pub counted: u64,
    /// Distinct valid impressions within the allowed lateness whose winning click is invalid
    /// traffic (= the sum of the rows' `invalid`): flagged, never dropped.
    #[serde(default)]
    pub invalid: u64,
    /// `invalid` by reason, each click under its first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub invalid_by_reason: BTreeMap<String, u64>,
    pub duplicates: u64,
    /// Beyond the allowed lateness.
    pub late: u64,
    /// `malformed + forged + future + oversized + keyless + stalled`: never counted, not late.
    pub rejected: u64,
    pub malformed: u64,
    /// Forged click URLs, which the redirect refuses (403) before anything is recorded.
    pub forged: u64,
    /// Hostile: event times in 2099, dead-lettered `event_time_in_future` (by the redirect's
    /// partner API over HTTP, by the aggregator otherwise).
    #[serde(default)]
    pub future: u64,
    /// Hostile: records and partner lines over 64 KiB, dead-lettered (`line_too_long` at the
    /// redirect, `invalid_user_agent` at the aggregator).
    #[serde(default)]
    pub oversized: u64,
    /// Hostile, HTTP: partner batches without a valid API key, answered 401; never received.
    #[serde(default)]
    pub keyless: u64,
    /// Hostile, HTTP: half-sent click requests on stalled connections; never received.
    #[serde(default)]
    pub stalled: u64,
    /// Hostile: days-old events, part of `late`.
    #[serde(default)]
    pub ancient: u64,
    /// Hostile, HTTP: clicks with tracking parameters, part of `counted` (or `duplicates`).
    #[serde(default)]
    pub tracked: u64,
    /// HTTP clicks whose response came in another minute than their request went out: the
    /// redirect's timestamp may put them in the next minute's row.
    pub ambiguous: u64,
}

/// Distinct users per group, as the aggregator owes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReachTruth {
    /// Per ad and hour, sorted by hour, then ad.
    pub ad_hour: Vec<ReachRow>,
    /// Per campaign and day, sorted by day, then campaign.
    pub campaign_day: Vec<ReachRow>,
}

/// The distinct users of one group (an ad in an hour, a campaign in a day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReachRow {
    /// The window's start, RFC 3339, UTC.
    pub start: String,
    pub start_ms: i64,
    /// The ad's or the campaign's id.
    pub id: String,
    /// Distinct users among the billable clicks.
    pub users: u64,
    /// Distinct users among every deduplicated click, billable or invalid.
    pub all_users: u64,
}

impl Tallies {
    /// Hostile emissions of every variant.
    pub fn hostile(&self) -> u64 {
        self.future + self.oversized + self.keyless + self.stalled + self.ancient + self.tracked
    }

    /// Deduplicated clicks within the allowed lateness, billable or not.
    pub fn deduplicated(&self) -> u64 {
        self.counted + self.invalid
    }
}

/// One window row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// RFC 3339, UTC.
    pub minute: String,
    pub minute_ms: i64,
    pub ad_id: String,
    pub campaign_id: String,
    pub advertiser_id: String,
    pub publisher_id: String,
    pub country: String,
    pub device: String,
    /// Billable clicks.
    pub clicks: u64,
    pub duplicates: u64,
    /// Invalid clicks by reason name ([`REASONS`]), each under its first reason; reasons
    /// without clicks are left out, and the whole map when there are none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub invalid: BTreeMap<String, u64>,
}

impl Row {
    /// Invalid clicks, whatever the reason.
    pub fn invalid_total(&self) -> u64 {
        self.invalid.values().sum()
    }
}

/// The truth file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruthReport {
    /// The resolved configuration that produced the traffic.
    pub config: serde_json::Value,
    /// The invalid-traffic rules the rows follow.
    #[serde(default)]
    pub rules: Rules,
    pub tallies: Tallies,
    /// Emissions by kind (click, bot, duplicate, retry, allowed_late, too_late, malformed,
    /// forged, hostile_*, scheme_*), for diagnosis.
    pub kinds: BTreeMap<String, u64>,
    /// Sorted by minute, then the dimensions.
    pub windows: Vec<Row>,
    /// Distinct users (absent from truths written before it: empty).
    #[serde(default)]
    pub reach: ReachTruth,
}

impl GroundTruth {
    /// A truth under the default [`Rules`].
    pub fn new(catalog: Catalog) -> Self {
        Self::with_rules(catalog, Rules::default())
    }

    pub fn with_rules(catalog: Catalog, rules: Rules) -> Self {
        rules.check().expect("invalid-traffic rules");
        Self {
            catalog,
            rules,
            horizon_ms: 2 * 3_600_000,
            open: HashMap::new(),
            open_times: BTreeMap::new(),
            buckets: BTreeMap::new(),
            closed_before: i64::MIN,
            latest_ms: i64::MIN,
            addresses: HashMap::new(),
            users: HashMap::new(),
            rows: HashMap::new(),
            reach: ReachSets::default(),
            tallies: Tallies::default(),
            kinds: BTreeMap::new(),
        }
    }

    /// How far behind the latest event time recorded a click still to come may be and yet
    /// be counted (the allowed lateness and the out-of-orderness bound, with room to spare);
    /// 2 hours unless told.
    pub fn horizon(mut self, horizon_ms: i64) -> Self {
        self.horizon_ms = horizon_ms;
        self
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Records an emission as delivered. Emissions about one impression must be recorded in
    /// the order they were generated.
    pub fn record(&mut self, e: &Emission) {
        self.tallies.emitted += 1;
        *self.kinds.entry(e.kind.name().to_string()).or_default() += 1;
        match e.kind {
            Kind::TooLate => self.tallies.late += 1,
            Kind::Malformed(_) => {
                self.tallies.rejected += 1;
                self.tallies.malformed += 1;
            }
            Kind::Forged(_) => {
                self.tallies.rejected += 1;
                self.tallies.forged += 1;
            }
            Kind::Hostile(Hostile::Ancient) => {
                self.tallies.late += 1;
                self.tallies.ancient += 1;
            }
            Kind::Hostile(Hostile::Tracked(_)) => {
                self.tallies.tracked += 1;
                self.click(&e.click, e.settles)
            }
            Kind::Hostile(ref h) => {
                self.tallies.rejected += 1;
                *match h {
                    Hostile::Future => &mut self.tallies.future,
                    Hostile::Oversized(_) => &mut self.tallies.oversized,
                    Hostile::Keyless { .. } => &mut self.tallies.keyless,
                    Hostile::Stalled => &mut self.tallies.stalled,
                    Hostile::Ancient | Hostile::Tracked(_) => unreachable!("matched above"),
                } += 1;
            }
            Kind::Click
            | Kind::Bot
            | Kind::Duplicate
            | Kind::Retry
            | Kind::AllowedLate
            | Kind::Scheme(_) => self.click(&e.click, e.settles),
        }
    }

    pub fn note_ambiguous(&mut self) {
        self.tallies.ambiguous += 1;
    }

    pub fn tallies(&self) -> &Tallies {
        &self.tallies
    }

    fn intern(map: &mut HashMap<String, u32>, key: Option<&str>) -> u32 {
        match key.map(str::trim) {
            None | Some("") => NOBODY,
            Some(k) => {
                let next = map.len() as u32;
                *map.entry(k.to_string()).or_insert(next)
            }
        }
    }

    /// The click as a member of the flood sets, with the reasons it has on its own.
    fn member(&mut self, click: &Click) -> Member {
        let e = &click.event;
        let mut reasons = match click.agent {
            Agent::Browser => 0,
            Agent::Crawler => KNOWN_BOT,
            Agent::Headless => HEADLESS,
            Agent::Empty => NO_USER_AGENT,
        };
        if click.datacenter && click.edge {
            reasons |= DATACENTER;
        }
        if e.impression_time_ms != 0
            && e.event_time_ms - e.impression_time_ms < self.rules.too_fast_ms
        {
            reasons |= TOO_FAST;
        }
        Member {
            event_time_ms: e.event_time_ms,
            click_id: uuid::Uuid::parse_str(&e.click_id).expect("generated click ids are UUIDs"),
            row: RowKey {
                minute_ms: e.event_time_ms.div_euclid(MINUTE_MS) * MINUTE_MS,
                ad: click.ad,
                publisher: click.publisher,
                country: click.country,
                device: click.device,
            },
            address: Self::intern(&mut self.addresses, Some(&click.ip)),
            user: Self::intern(&mut self.users, click.user_id.as_deref()),
            campaign: click.ad % self.catalog.size().campaigns,
            reasons,
        }
    }

    fn click(&mut self, click: &Click, settles: bool) {
        let m = self.member(click);
        self.latest_ms = self.latest_ms.max(m.event_time_ms);
        let winner = match self.open.remove(&click.event.impression_id) {
            Some(mut w) => {
                self.forget_open(w.member.event_time_ms);
                // The loser of the two is a duplicate, counted in its own row.
                let loser = if (m.event_time_ms, m.click_id)
                    < (w.member.event_time_ms, w.member.click_id)
                {
                    std::mem::replace(&mut w.member, m).row
                } else {
                    m.row
                };
                w.duplicates += 1;
                self.rows.entry(loser).or_default().duplicates += 1;
                w
            }
            None => Winner {
                member: m,
                duplicates: 0,
            },
        };
        if settles {
            self.settle(winner);
        } else {
            *self
                .open_times
                .entry(winner.member.event_time_ms)
                .or_default() += 1;
            self.open.insert(click.event.impression_id.clone(), winner);
        }
        self.close_buckets(false);
    }

    fn forget_open(&mut self, t: i64) {
        let n = self.open_times.get_mut(&t).expect("an open winner's time");
        *n -= 1;
        if *n == 0 {
            self.open_times.remove(&t);
        }
    }

    fn settle(&mut self, w: Winner) {
        self.tallies.duplicates += w.duplicates;
        let bucket_ms = self.rules.bucket_ms();
        let bucket = w.member.event_time_ms.div_euclid(bucket_ms) * bucket_ms;
        assert!(
            bucket >= self.closed_before,
            "ground truth: a click at {} arrived after its flood windows were settled (the \
             truth's horizon of {} ms is too short)",
            w.member.event_time_ms,
            self.horizon_ms
        );
        self.buckets.entry(bucket).or_default().push(w.member);
    }

    /// Gives their verdicts to the winners of every bucket no click still to come can fall
    /// in: behind the latest event time by more than the horizon, and before every open
    /// impression's winner (a duplicate may still come earlier by its jitter). All of them
    /// with `all`.
    fn close_buckets(&mut self, all: bool) {
        let bucket_ms = self.rules.bucket_ms();
        let mut safe = self.latest_ms.saturating_sub(self.horizon_ms);
        if let Some((&t, _)) = self.open_times.first_key_value() {
            safe = safe.min(t - DUPLICATE_JITTER_MS - 1);
        }
        while let Some((&start, _)) = self.buckets.first_key_value() {
            if !all && start + bucket_ms > safe {
                break;
            }
            let (_, members) = self.buckets.pop_first().expect("non-empty");
            self.closed_before = start + bucket_ms;
            self.judge(members);
        }
        if !all {
            self.closed_before = self
                .closed_before
                .max(safe.div_euclid(bucket_ms) * bucket_ms);
        }
    }

    /// The verdicts on one bucket's winners: floods over the whole set, then each winner
    /// counted under its first reason, or billable.
    fn judge(&mut self, mut members: Vec<Member>) {
        let r = self.rules;
        members.sort_by_key(|m| (m.event_time_ms, m.click_id));
        let flag = |members: &mut [Member],
                    window_ms: i64,
                    limit: u32,
                    bit: u8,
                    key: fn(&Member) -> (u32, u32)| {
            let mut seen: HashMap<(u32, u32, i64), u32> = HashMap::new();
            // In (event time, click id) order, so each key's count is its rank.
            for m in members.iter_mut() {
                let (who, what) = key(m);
                if who == NOBODY {
                    continue;
                }
                let window = m.event_time_ms.div_euclid(window_ms);
                let n = seen.entry((who, what, window)).or_default();
                *n += 1;
                if *n > limit {
                    m.reasons |= bit;
                }
            }
        };
        flag(
            &mut members,
            r.ip_flood_window_ms,
            r.ip_flood_clicks,
            IP_FLOOD,
            |m| (m.address, m.row.ad),
        );
        flag(
            &mut members,
            r.user_flood_window_ms,
            r.user_flood_clicks,
            USER_FLOOD,
            |m| (m.user, m.campaign),
        );
        for m in members {
            if let Some(who) = m.reach_user() {
                let hour = m.event_time_ms.div_euclid(HOUR_MS) * HOUR_MS;
                let day = m.event_time_ms.div_euclid(DAY_MS) * DAY_MS;
                let billable = m.reasons == 0;
                let r = &mut self.reach;
                r.ad_hour
                    .entry((hour, m.row.ad))
                    .or_default()
                    .add(who, billable);
                r.campaign_day
                    .entry((day, m.campaign))
                    .or_default()
                    .add(who, billable);
            }
            let counts = self.rows.entry(m.row).or_default();
            if m.reasons == 0 {
                counts.clicks += 1;
                self.tallies.counted += 1;
            } else {
                let first = m.reasons.trailing_zeros() as usize;
                counts.invalid[first] += 1;
                self.tallies.invalid += 1;
                *self
                    .tallies
                    .invalid_by_reason
                    .entry(REASONS[first].to_string())
                    .or_default() += 1;
            }
        }
    }

    /// Settles what is still open and builds the report. Panics if the tallies do not add
    /// up: that is a bug here, and a truth that is wrong must never be written.
    pub fn finish(mut self, config: serde_json::Value) -> TruthReport {
        for (_, w) in std::mem::take(&mut self.open) {
            self.settle(w);
        }
        self.open_times.clear();
        self.close_buckets(true);
        let mut windows: Vec<Row> = self
            .rows
            .iter()
            .map(|(k, c)| {
                let ad = self.catalog.ad(k.ad);
                Row {
                    minute: crate::timefmt::format_millis(k.minute_ms),
                    minute_ms: k.minute_ms,
                    ad_id: ad.ad_id.to_string(),
                    campaign_id: ad.campaign_id.to_string(),
                    advertiser_id: ad.advertiser_id.to_string(),
                    publisher_id: self.catalog.publisher_id(k.publisher).to_string(),
                    country: k.country.to_string(),
                    device: k.device.as_str().to_string(),
                    clicks: c.clicks,
                    duplicates: c.duplicates,
                    invalid: REASONS
                        .iter()
                        .zip(c.invalid)
                        .filter(|(_, n)| *n > 0)
                        .map(|(r, n)| (r.to_string(), n))
                        .collect(),
                }
            })
            .collect();
        windows.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let reach = self.reach_truth();
        let report = TruthReport {
            config,
            rules: self.rules,
            tallies: self.tallies,
            kinds: self.kinds,
            windows,
            reach,
        };
        if let Err(e) = report.verify() {
            panic!("ground truth is inconsistent: {e}");
        }
        report
    }

    fn reach_truth(&self) -> ReachTruth {
        let rows = |groups: &HashMap<(i64, u32), Users>, id: &dyn Fn(u32) -> String| {
            let mut rows: Vec<ReachRow> = groups
                .iter()
                .map(|(&(start_ms, i), u)| ReachRow {
                    start: crate::timefmt::format_millis(start_ms),
                    start_ms,
                    id: id(i),
                    users: u.billable.len() as u64,
                    all_users: u.all.len() as u64,
                })
                .collect();
            rows.sort_by(|a, b| (a.start_ms, &a.id).cmp(&(b.start_ms, &b.id)));
            rows
        };
        let c = &self.catalog;
        ReachTruth {
            ad_hour: rows(&self.reach.ad_hour, &|ad| c.ad(ad).ad_id.to_string()),
            campaign_day: rows(&self.reach.campaign_day, &|campaign| {
                c.campaign_id(campaign).to_string()
            }),
        }
    }

    /// Reads a truth file written by [`TruthReport::write`].
    pub fn read(path: &Path) -> anyhow::Result<TruthReport> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading truth file {}", path.display()))?;
        let report: TruthReport = serde_json::from_str(&text)
            .with_context(|| format!("parsing truth file {}", path.display()))?;
        report
            .verify()
            .map_err(|e| anyhow::anyhow!("truth file {}: {e}", path.display()))?;
        Ok(report)
    }
}

impl Row {
    fn sort_key(&self) -> (i64, &str, &str, &str, &str, &str, &str) {
        (
            self.minute_ms,
            &self.ad_id,
            &self.campaign_id,
            &self.advertiser_id,
            &self.publisher_id,
            &self.country,
            &self.device,
        )
    }
}

impl TruthReport {
    /// Checks that the tallies add up and agree with the rows.
    pub fn verify(&self) -> Result<(), String> {
        let t = &self.tallies;
        let accounted = t.counted + t.invalid + t.duplicates + t.late + t.rejected;
        if t.emitted != accounted {
            return Err(format!(
                "emitted {} != counted {} + invalid {} + duplicates {} + late {} + rejected {}",
                t.emitted, t.counted, t.invalid, t.duplicates, t.late, t.rejected
            ));
        }
        if t.rejected != t.malformed + t.forged + t.future + t.oversized + t.keyless + t.stalled {
            return Err(format!(
                "rejected {} != malformed {} + forged {} + future {} + oversized {} + keyless {} \
                 + stalled {}",
                t.rejected, t.malformed, t.forged, t.future, t.oversized, t.keyless, t.stalled
            ));
        }
        if t.ancient > t.late {
            return Err(format!("ancient {} > late {}", t.ancient, t.late));
        }
        if t.invalid_by_reason.values().sum::<u64>() != t.invalid {
            return Err(format!(
                "invalid {} != the sum of invalid_by_reason {:?}",
                t.invalid, t.invalid_by_reason
            ));
        }
        let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
        for (reason, n) in self.windows.iter().flat_map(|r| &r.invalid) {
            if !REASONS.contains(&reason.as_str()) || *n == 0 {
                return Err(format!("a row counts {n} clicks under {reason:?}"));
            }
            *by_reason.entry(reason.clone()).or_default() += n;
        }
        if by_reason != t.invalid_by_reason {
            return Err(format!(
                "rows hold invalid clicks {by_reason:?}, tallies say {:?}",
                t.invalid_by_reason
            ));
        }
        let clicks: u64 = self.windows.iter().map(|r| r.clicks).sum();
        let duplicates: u64 = self.windows.iter().map(|r| r.duplicates).sum();
        if (clicks, duplicates) != (t.counted, t.duplicates) {
            return Err(format!(
                "rows hold {clicks} clicks and {duplicates} duplicates, tallies say {} and {}",
                t.counted, t.duplicates
            ));
        }
        if self.kinds.values().sum::<u64>() != t.emitted {
            return Err("kinds do not add up to emitted".into());
        }
        if !self
            .windows
            .windows(2)
            .all(|w| w[0].sort_key() < w[1].sort_key())
        {
            return Err("rows are not sorted and unique".into());
        }
        Ok(())
    }

    /// Writes pretty JSON, atomically: a reader never sees half a truth.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let mut text = serde_json::to_string_pretty(self).expect("a report serializes");
        text.push('\n');
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::LoadgenConfig;
    use crate::loadgen::traffic::Scheme;
    use crate::loadgen::traffic::tests::{START, traffic};

    fn sample(n: u64) -> (LoadgenConfig, Vec<Emission>) {
        let cfg = LoadgenConfig {
            duplicate_share: 0.2,
            retry_share: 0.05,
            late_share: 0.02,
            ..LoadgenConfig::default()
        };
        let all = traffic(&cfg, n, 3).collect();
        (cfg, all)
    }

    fn report(cfg: &LoadgenConfig, emissions: &[Emission]) -> TruthReport {
        let mut truth = GroundTruth::new(Catalog::new(cfg.catalog_size()));
        for e in emissions {
            truth.record(e);
        }
        truth.finish(serde_json::json!({}))
    }

    #[test]
    fn tallies_add_up_and_match_the_kinds() {
        let (cfg, all) = sample(30_000);
        let r = report(&cfg, &all);
        r.verify().unwrap();
        let t = &r.tallies;
        assert_eq!(t.emitted, 30_000);
        assert_eq!(t.duplicates, r.kinds["duplicate"] + r.kinds["retry"]);
        assert_eq!(t.late, r.kinds["too_late"]);
        assert_eq!(t.malformed, r.kinds["malformed"]);
        assert_eq!(
            t.deduplicated(),
            r.kinds["click"] + r.kinds["bot"] + r.kinds["allowed_late"]
        );
        // Crawlers are known bots, whatever --invalid says.
        assert_eq!(t.invalid_by_reason["known_bot"], r.kinds["bot"]);
        assert!(t.late > 0 && t.duplicates > 0 && t.rejected > 0);
    }

    #[test]
    fn hostile_emissions_are_booked_by_their_fate() {
        let cfg = LoadgenConfig {
            hostile: 0.2,
            ..LoadgenConfig::default()
        };
        let all: Vec<_> = crate::loadgen::traffic::tests::http_traffic(&cfg, 20_000, 3).collect();
        let r = report(&cfg, &all);
        let t = &r.tallies;
        let kind = |k: &str| r.kinds.get(k).copied().unwrap_or(0);
        assert_eq!(t.future, kind("hostile_future"));
        assert_eq!(t.oversized, kind("hostile_oversized"));
        assert_eq!(t.keyless, kind("hostile_keyless"));
        assert_eq!(t.stalled, kind("hostile_stalled"));
        assert_eq!(t.ancient, kind("hostile_ancient"));
        assert_eq!(t.tracked, kind("hostile_tracked"));
        assert_eq!(t.late, kind("too_late") + t.ancient);
        assert_eq!(
            t.deduplicated(),
            kind("click") + kind("bot") + kind("allowed_late") + t.tracked
        );
        assert!(t.future > 0 && t.oversized > 0 && t.keyless > 0 && t.stalled > 0);
        assert!(t.ancient > 0 && t.tracked > 0);
        assert_eq!(
            t.hostile(),
            (8..14).map(|i| kind(Kind::NAMES[i])).sum::<u64>()
        );
        let mut broken = r.clone();
        broken.tallies.stalled += 1;
        assert!(broken.verify().unwrap_err().contains("stalled"));
    }

    #[test]
    fn settling_early_changes_nothing() {
        let (cfg, all) = sample(10_000);
        let never_settled: Vec<_> = all
            .iter()
            .cloned()
            .map(|e| Emission {
                settles: false,
                ..e
            })
            .collect();
        assert_eq!(report(&cfg, &all), report(&cfg, &never_settled));
    }

    /// An original and a duplicate on one impression, straddling a minute boundary.
    fn pair(orig_time: i64, dup_time: i64, orig_id: &str, dup_id: &str) -> TruthReport {
        let (cfg, all) = sample(1);
        let mut orig = all[0].clone();
        orig.kind = Kind::Click;
        orig.settles = false;
        orig.click.event.event_time_ms = orig_time;
        orig.click.event.click_id = orig_id.into();
        let mut dup = orig.clone();
        dup.kind = Kind::Duplicate;
        dup.settles = true;
        dup.click.event.event_time_ms = dup_time;
        dup.click.event.click_id = dup_id.into();
        report(&cfg, &[orig, dup])
    }

    const LOW: &str = "01900000-0000-7000-8000-000000000001";
    const HIGH: &str = "01900000-0000-7000-8000-000000000002";

    #[test]
    fn the_earlier_duplicate_wins_and_carries_the_row() {
        // The later original loses: a duplicate in its own minute; the click counts in the
        // duplicate's (earlier) minute.
        let r = pair(START + 60_500, START + 59_500, LOW, HIGH);
        assert_eq!(r.windows.len(), 2);
        assert_eq!(r.windows[0].minute_ms, START);
        assert_eq!(r.windows[0].minute, "2026-04-20T12:00:00Z");
        assert_eq!((r.windows[0].clicks, r.windows[0].duplicates), (1, 0));
        assert_eq!(r.windows[1].minute_ms, START + 60_000);
        assert_eq!((r.windows[1].clicks, r.windows[1].duplicates), (0, 1));
        let r = pair(START + 59_500, START + 60_500, HIGH, LOW);
        assert_eq!((r.windows[0].minute_ms, r.windows[0].clicks), (START, 1));
        assert_eq!((r.windows[1].clicks, r.windows[1].duplicates), (0, 1));
    }

    #[test]
    fn ties_go_to_the_smaller_click_id() {
        // Same event time: the rows only differ through the winner's dimensions, so give the
        // duplicate another publisher and see whose row is counted.
        let (cfg, all) = sample(1);
        let mut orig = all[0].clone();
        orig.kind = Kind::Click;
        orig.settles = false;
        orig.click.event.click_id = HIGH.into();
        let mut dup = orig.clone();
        dup.kind = Kind::Duplicate;
        dup.settles = true;
        dup.click.publisher = (orig.click.publisher + 1) % cfg.publishers;
        dup.click.event.click_id = LOW.into();
        let counted = |r: &TruthReport| {
            let rows: Vec<_> = r.windows.iter().filter(|w| w.clicks == 1).collect();
            assert_eq!(rows.len(), 1);
            assert_eq!(
                r.windows.len(),
                2,
                "the loser is a duplicate in its own row"
            );
            rows[0].publisher_id.clone()
        };
        let r = report(&cfg, &[orig.clone(), dup.clone()]);
        assert_eq!(counted(&r), cfg_publisher(dup.click.publisher));
        // And the other way round.
        dup.click.event.click_id = "01900000-0000-7000-8000-000000000003".into();
        let r = report(&cfg, &[orig.clone(), dup]);
        assert_eq!(counted(&r), cfg_publisher(orig.click.publisher));
    }

    fn cfg_publisher(p: u32) -> String {
        format!("pub_{p}")
    }

    #[test]
    fn written_reports_read_back_and_bad_ones_are_refused() {
        let (cfg, all) = sample(2_000);
        let r = report(&cfg, &all);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truth.json");
        r.write(&path).unwrap();
        assert_eq!(GroundTruth::read(&path).unwrap(), r);
        let mut broken = r.clone();
        broken.tallies.counted += 1;
        broken.write(&path).unwrap();
        let err = GroundTruth::read(&path).unwrap_err();
        assert!(format!("{err:#}").contains("emitted"), "{err:#}");
    }

    // --- Invalid traffic, on hand-built clicks ---

    /// 2026-04-20T12:00:00Z, a minute and an hour boundary.
    const T: i64 = START;

    /// Builds clicks by hand: each a fresh impression unless told.
    struct Hand {
        cfg: LoadgenConfig,
        proto: Emission,
        out: Vec<Emission>,
        next: u32,
    }

    impl Hand {
        fn new() -> Self {
            let (cfg, all) = sample(1);
            let mut proto = all[0].clone();
            proto.kind = Kind::Click;
            proto.settles = true;
            proto.click.agent = Agent::Browser;
            proto.click.datacenter = false;
            proto.click.edge = false;
            proto.click.ip = "100.64.0.1".into();
            proto.click.user_id = None;
            proto.click.event.impression_time_ms = 0;
            Self {
                cfg,
                proto,
                out: Vec::new(),
                next: 0,
            }
        }

        /// A click at `t` with click id number `id` (ids order by number).
        fn click(&mut self, t: i64, id: u32) -> &mut Emission {
            let mut e = self.proto.clone();
            self.next += 1;
            e.click.event.impression_id = format!("hand_{}", self.next);
            e.click.event.event_time_ms = t;
            e.click.event.click_id = format!("01900000-0000-7000-8000-{id:012x}");
            self.out.push(e);
            self.out.last_mut().unwrap()
        }

        fn report(&self, rules: Rules) -> TruthReport {
            let mut truth = GroundTruth::with_rules(Catalog::new(self.cfg.catalog_size()), rules);
            for e in &self.out {
                truth.record(e);
            }
            truth.finish(serde_json::json!({}))
        }
    }

    /// Reach counts users (by user id, else address) per ad and hour and per campaign and
    /// day: a user's repeated clicks once, a duplicate never, a flooded click in `all_users`
    /// only, and hour and day windows by event time.
    #[test]
    fn reach_counts_distinct_users_of_the_winners() {
        let mut h = Hand::new();
        let ad = h.proto.click.ad;
        let hour = T.div_euclid(HOUR_MS) * HOUR_MS;
        let day = T.div_euclid(DAY_MS) * DAY_MS;
        // Two users with ids, clicking three times each (different addresses), in one hour.
        for k in 0..6 {
            let e = h.click(hour + 1_000 * k, k as u32);
            e.click.user_id = Some(format!("u{}", k % 2));
            e.click.ip = format!("100.64.2.{k}");
        }
        // A duplicate of the first click from a third user: a duplicate is no user.
        h.out[0].settles = false;
        let mut dup = h.out[0].clone();
        dup.settles = true;
        dup.kind = Kind::Duplicate;
        dup.click.event.event_time_ms += 10;
        dup.click.event.click_id = "01900000-0000-7000-8000-0000000000ff".into();
        dup.click.user_id = Some("u_duplicate".into());
        h.out.push(dup);
        // Seven clicks from one address without a user id in one minute: one user, billable
        // through its first five clicks though the sixth and seventh are flooded.
        for k in 0..7 {
            h.click(hour + 120_000 + k, 100 + k as u32);
        }
        // A crawler's only click: its address is in all_users, not in users.
        let bot = h.click(hour + 180_000, 200);
        bot.click.ip = "100.64.3.1".into();
        bot.click.agent = Agent::Crawler;
        // The next hour, the same day: user u0 again.
        let next = h.click(hour + HOUR_MS + 5, 300);
        next.click.user_id = Some("u0".into());
        let r = h.report(Rules::default());
        let ad_id = Catalog::new(h.cfg.catalog_size()).ad(ad).ad_id.to_string();
        let campaign_id = Catalog::new(h.cfg.catalog_size())
            .ad(ad)
            .campaign_id
            .to_string();
        let row = |start_ms: i64, id: &str, users: u64, all_users: u64| ReachRow {
            start: crate::timefmt::format_millis(start_ms),
            start_ms,
            id: id.to_string(),
            users,
            all_users,
        };
        assert_eq!(
            r.reach.ad_hour,
            [row(hour, &ad_id, 3, 4), row(hour + HOUR_MS, &ad_id, 1, 1)]
        );
        // The day: u0, u1, the address 100.64.0.1, and the bot's address.
        assert_eq!(r.reach.campaign_day, [row(day, &campaign_id, 3, 4)]);
        assert_eq!(r.tallies.invalid_by_reason["ip_flood"], 2);
        // Written and read back.
        let dir = std::env::temp_dir().join(format!("reach-truth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("truth.json");
        r.write(&path).unwrap();
        assert_eq!(GroundTruth::read(&path).unwrap().reach, r.reach);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn invalid(r: &TruthReport) -> BTreeMap<String, u64> {
        r.tallies.invalid_by_reason.clone()
    }

    fn reasons(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn five_clicks_in_a_minute_are_billable_the_sixth_is_a_flood() {
        let mut h = Hand::new();
        for k in 0..5 {
            h.click(T + 1_000 * k, 100 + k as u32);
        }
        let r = h.report(Rules::default());
        assert_eq!((r.tallies.counted, r.tallies.invalid), (5, 0));
        assert!(r.windows.iter().all(|w| w.invalid.is_empty()));
        // A sixth in the same minute, however early it is recorded, flags the latest.
        h.click(T + 59_999, 99);
        let r = h.report(Rules::default());
        assert_eq!((r.tallies.counted, r.tallies.invalid), (5, 1));
        assert_eq!(invalid(&r), reasons(&[("ip_flood", 1)]));
        // 5 + 1 across the minute boundary: all billable.
        let mut h = Hand::new();
        for k in 0..5 {
            h.click(T + 55_000 + 1_000 * k, k as u32);
        }
        h.click(T + 60_000, 5);
        let r = h.report(Rules::default());
        assert_eq!((r.tallies.counted, r.tallies.invalid), (6, 0));
        // Other addresses, other ads, and no address at all never add up.
        let mut h = Hand::new();
        for k in 0..12 {
            let e = h.click(T + k, k as u32);
            match k % 3 {
                0 => e.click.ip = format!("100.64.1.{k}"),
                1 => e.click.ad += 1 + k as u32,
                _ => e.click.ip = String::new(),
            }
        }
        assert_eq!(h.report(Rules::default()).tallies.invalid, 0);
    }

    #[test]
    fn the_flood_ranks_by_event_time_then_click_id() {
        // Six clicks at one instant: the largest click id is the sixth, whatever the order
        // they are recorded in. It alone is on another publisher, so its row shows it.
        for largest_first in [false, true] {
            let mut h = Hand::new();
            let mut ids: Vec<u32> = (1..=6).collect();
            if largest_first {
                ids.reverse();
            }
            let other = (h.proto.click.publisher + 1) % h.cfg.publishers;
            for id in ids {
                let e = h.click(T + 30_000, id);
                if id == 6 {
                    e.click.publisher = other;
                }
            }
            let r = h.report(Rules::default());
            let flagged: Vec<_> = r.windows.iter().filter(|w| !w.invalid.is_empty()).collect();
            assert_eq!(flagged.len(), 1);
            assert_eq!(flagged[0].publisher_id, format!("pub_{other}"));
            assert_eq!((flagged[0].clicks, flagged[0].invalid_total()), (0, 1));
        }
    }

    #[test]
    fn a_late_earlier_click_makes_another_the_sixth_and_a_too_late_one_counts_for_nothing() {
        let other = |h: &Hand| (h.proto.click.publisher + 1) % h.cfg.publishers;
        // Five clicks, then one earlier than all of them arriving allowed-late: the fifth by
        // time becomes the sixth.
        let mut h = Hand::new();
        let p = other(&h);
        for k in 0..5 {
            let e = h.click(T + 10_000 + k, 10 + k as u32);
            if k == 4 {
                e.click.publisher = p;
            }
        }
        h.click(T + 1_000, 99).kind = Kind::AllowedLate;
        let r = h.report(Rules::default());
        assert_eq!((r.tallies.counted, r.tallies.invalid), (5, 1));
        let flagged: Vec<_> = r.windows.iter().filter(|w| !w.invalid.is_empty()).collect();
        assert_eq!(flagged[0].publisher_id, format!("pub_{p}"));
        // The same earlier click too late: never counted, so no flood.
        h.out.last_mut().unwrap().kind = Kind::TooLate;
        let r = h.report(Rules::default());
        assert_eq!(
            (r.tallies.counted, r.tallies.invalid, r.tallies.late),
            (5, 0, 1)
        );
    }

    #[test]
    fn duplicates_of_flood_clicks_are_duplicates() {
        let mut h = Hand::new();
        for k in 0..6 {
            h.click(T + 1_000 * k, k as u32).settles = k != 2;
        }
        // A duplicate of the third click, earlier than the first: it wins its impression and
        // the flood's order changes, but the impression is still one click.
        let mut dup = h.out[2].clone();
        dup.kind = Kind::Duplicate;
        dup.settles = true;
        dup.click.event.event_time_ms = T - 1;
        dup.click.event.click_id = "01900000-0000-7000-8000-0000000000ff".into();
        h.out.push(dup);
        let r = h.report(Rules::default());
        let t = &r.tallies;
        // T - 1 is in the minute before: five clicks left in this one, none flagged.
        assert_eq!((t.counted, t.invalid, t.duplicates), (6, 0, 1));
        h.out.last_mut().unwrap().click.event.event_time_ms = T + 2_500;
        let r = h.report(Rules::default());
        let t = &r.tallies;
        assert_eq!((t.counted, t.invalid, t.duplicates), (5, 1, 1));
    }

    #[test]
    fn twenty_clicks_from_a_user_on_a_campaign_in_an_hour_are_billable() {
        let campaigns = Hand::new().cfg.campaigns;
        let user_clicks = |n: u32, start: i64, user: Option<&str>| {
            let mut h = Hand::new();
            let ad = h.proto.click.ad % campaigns;
            for k in 0..n {
                let e = h.click(start + i64::from(k) * 60_000, k);
                // Another ad of the campaign, another address each time: no ip flood.
                e.click.ad = ad + (k % 3) * campaigns;
                e.click.ip = format!("100.64.2.{k}");
                e.click.user_id = user.map(String::from);
            }
            h.report(Rules::default())
        };
        let r = user_clicks(20, T, Some("u_1"));
        assert_eq!((r.tallies.counted, r.tallies.invalid), (20, 0));
        let r = user_clicks(21, T, Some("u_1"));
        assert_eq!(invalid(&r), reasons(&[("user_flood", 1)]));
        let flagged: Vec<_> = r.windows.iter().filter(|w| !w.invalid.is_empty()).collect();
        assert_eq!(
            flagged[0].minute_ms,
            T + 20 * 60_000,
            "the latest is the 21st"
        );
        // Across an hour boundary, or without a user id: no flood.
        let r = user_clicks(21, T - 10 * 60_000, Some("u_1"));
        assert_eq!(r.tallies.invalid, 0);
        let r = user_clicks(25, T, None);
        assert_eq!(r.tallies.invalid, 0);
    }

    #[test]
    fn a_click_with_several_reasons_counts_once_under_the_first() {
        let mut h = Hand::new();
        // Headless, too fast, and the sixth from its address: headless.
        for k in 0..6 {
            let e = h.click(T + k, k as u32);
            if k == 5 {
                e.click.agent = Agent::Headless;
                e.click.event.impression_time_ms = T + k - 10;
            }
        }
        // A crawler on a data-center address through the redirect: known_bot.
        let e = h.click(T + 5_000, 50);
        e.click.ip = "3.80.0.1".into();
        e.click.agent = Agent::Crawler;
        e.click.datacenter = true;
        e.click.edge = true;
        // A browser on a data-center address, through the redirect and not: datacenter once.
        for edge in [true, false] {
            let e = h.click(T + 6_000, 60);
            e.click.ip = "3.80.0.2".into();
            e.click.datacenter = true;
            e.click.edge = edge;
            e.click.event.impression_time_ms = T;
        }
        // No user agent; too fast by a millisecond, and exactly at the limit.
        h.click(T + 7_000, 70).click.agent = Agent::Empty;
        for (gap, id) in [(999, 80), (1_000, 81)] {
            let e = h.click(T + 8_000, id);
            e.click.ip = format!("100.64.3.{id}");
            e.click.event.impression_time_ms = T + 8_000 - gap;
        }
        let r = h.report(Rules::default());
        assert_eq!(
            invalid(&r),
            reasons(&[
                ("datacenter", 1),
                ("headless", 1),
                ("known_bot", 1),
                ("no_user_agent", 1),
                ("too_fast", 1),
            ])
        );
        // The browser on a data-center address read from a file is billable (the one at
        // T + 6 s, 6 s after its impression).
        assert_eq!(r.tallies.counted, 5 + 1 + 1);
        // The rules are parameters: a 2 s limit makes both too fast, and 3 clicks a flood.
        let r = h.report(Rules {
            too_fast_ms: 2_000,
            ip_flood_clicks: 3,
            ..Rules::default()
        });
        assert_eq!(r.tallies.invalid_by_reason["too_fast"], 2);
        // Among the first six, the 4th and 5th are flooded; the 6th stays headless. The
        // no-user-agent click is the 7th on the address (100.64.0.1): still no_user_agent.
        assert_eq!(r.tallies.invalid_by_reason["ip_flood"], 2);
        assert_eq!(r.tallies.invalid_by_reason["headless"], 1);
        assert_eq!(r.tallies.invalid_by_reason["no_user_agent"], 1);
    }

    #[test]
    fn names_and_order_are_the_contracts() {
        let contract: Vec<_> = adclick_dataflows::invalid::Reason::ALL
            .iter()
            .map(|r| r.name())
            .collect();
        assert_eq!(REASONS.to_vec(), contract);
    }

    fn invalid_sample(n: u64, shards: u32) -> (LoadgenConfig, Vec<Emission>) {
        let cfg = LoadgenConfig {
            invalid: 0.05,
            duplicate_share: 0.2,
            retry_share: 0.05,
            late_share: 0.02,
            allowed_late_share: 0.03,
            ads: 50,
            campaigns: 10,
            ..LoadgenConfig::default()
        };
        let all = traffic(&cfg, n, shards).collect();
        (cfg, all)
    }

    #[test]
    fn planted_traffic_is_flagged_and_near_misses_are_not() {
        // 130 s from a minute boundary: room for 5 + 1 across the next two boundaries.
        let (cfg, all) = invalid_sample(130_000, 3);
        let r = report(&cfg, &all);
        let by = &r.tallies.invalid_by_reason;
        for reason in REASONS {
            // Data centers only show through the redirect.
            let want = reason != "datacenter";
            assert_eq!(
                by.get(reason).is_some_and(|&n| n > 5),
                want,
                "{reason}: {by:?}"
            );
        }
        for kind in Kind::NAMES[14..].iter() {
            assert!(
                r.kinds.get(*kind).is_some_and(|&n| n > 20),
                "{kind}: {:?}",
                r.kinds
            );
        }
        // Near misses alone stay billable.
        let near: Vec<_> = all
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    Kind::Scheme(Scheme::NearMissIp | Scheme::NearMissSplit | Scheme::NearMissUser)
                )
            })
            .cloned()
            .collect();
        let r = report(&cfg, &near);
        assert_eq!(r.tallies.invalid, 0, "{:?}", r.tallies);
        assert!(r.tallies.counted > 100);
        // Through the redirect, with the client address: data centers show.
        let edged: Vec<_> = all
            .iter()
            .cloned()
            .map(|mut e| {
                e.click.edge = true;
                e
            })
            .collect();
        let r = report(&cfg, &edged);
        assert!(r.tallies.invalid_by_reason["datacenter"] > 5);
    }

    #[test]
    fn verdicts_do_not_depend_on_when_buckets_close() {
        let (cfg, all) = invalid_sample(40_000, 2);
        let streaming = report(&cfg, &all);
        let mut truth = GroundTruth::new(Catalog::new(cfg.catalog_size())).horizon(i64::MAX / 4);
        for e in &all {
            truth.record(e);
        }
        assert_eq!(truth.finish(serde_json::json!({})), streaming);
        // And with a one-minute bucket, closed as soon as possible.
        let rules = Rules {
            user_flood_window_ms: 60_000,
            ..Rules::default()
        };
        let mut tight = GroundTruth::with_rules(Catalog::new(cfg.catalog_size()), rules)
            .horizon(cfg.allowed_lateness_ms + cfg.out_of_orderness_ms + 60_000);
        let mut all_at_once =
            GroundTruth::with_rules(Catalog::new(cfg.catalog_size()), rules).horizon(i64::MAX / 4);
        for e in &all {
            tight.record(e);
            all_at_once.record(e);
        }
        assert_eq!(
            tight.finish(serde_json::json!({})),
            all_at_once.finish(serde_json::json!({}))
        );
    }

    #[test]
    fn reports_with_invalid_rows_read_back() {
        let (cfg, all) = invalid_sample(5_000, 1);
        let r = report(&cfg, &all);
        assert!(r.windows.iter().any(|w| !w.invalid.is_empty()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truth.json");
        r.write(&path).unwrap();
        assert_eq!(GroundTruth::read(&path).unwrap(), r);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"invalid\": {"),
            "rows carry invalid by reason"
        );
        let mut broken = r.clone();
        let row = broken
            .windows
            .iter_mut()
            .find(|w| !w.invalid.is_empty())
            .unwrap();
        *row.invalid.values_mut().next().unwrap() += 1;
        assert!(broken.verify().unwrap_err().contains("invalid"));
    }
}
