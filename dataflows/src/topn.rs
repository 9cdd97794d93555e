//! The most clicked ads over sliding windows of M minutes ending at each minute, overall and
//! per country, computed in two stages so that no single worker ranks every ad of a window:
//! each of `shards` shards ranks its share of the ads, then one reduce per window merges the
//! shards' candidates. The global top N is always among the shards' top N's.

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use timely::dataflow::operators::vec::Map;

use crate::click::{Measures, Row};
use crate::time::MINUTE_MS;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopNConfig {
    pub n: usize,
    /// Window lengths in minutes (seed 003: 1).
    pub window_minutes: Vec<u64>,
    pub shards: u64,
}

impl Default for TopNConfig {
    fn default() -> Self {
        Self {
            n: 100,
            window_minutes: vec![1, 5, 60],
            shards: 16,
        }
    }
}

/// Which ranking: (window length in minutes, start of the window's last minute, country or
/// `""` for all countries).
pub type RankKey = (u64, u64, String);

/// One ranking: ads with their clicks, most clicked first, ties by ad id.
pub type Ranking = Vec<(String, i64)>;

pub fn top_n<'s>(
    minute_rows: VecCollection<'s, u64, Row, Measures>,
    cfg: &TopNConfig,
) -> VecCollection<'s, u64, (RankKey, Ranking), isize> {
    let (n, shards, windows) = (cfg.n, cfg.shards.max(1), cfg.window_minutes.clone());
    // (minute, country, ad) with diff = clicks, delayed to the next minute boundary: rankings
    // are recomputed once a minute (seed 003: "aggregation every minute"), not on every tick.
    let ad_minutes = minute_rows
        .inner
        .flat_map(|((minute, dims), time, (clicks, _))| {
            (clicks != 0).then_some((
                (minute, dims.country, dims.ad_id),
                next_minute(time),
                clicks as isize,
            ))
        })
        .as_collection();
    let in_windows = ad_minutes.flat_map(move |(minute, country, ad)| {
        let mut out = Vec::new();
        for &m in &windows {
            for k in 0..m {
                let end = minute + k * MINUTE_MS;
                let shard = ad.hashed() % shards;
                out.push(((m, end, String::new(), shard), ad.clone()));
                out.push(((m, end, country.clone(), shard), ad.clone()));
            }
        }
        out
    });
    in_windows
        .reduce_named("TopNShard", move |_key, ads: &[(&String, isize)], out| {
            for (ad, clicks) in best(ads.iter().map(|(a, c)| ((*a).clone(), *c as i64)), n) {
                out.push(((ad, clicks), 1));
            }
        })
        .map(|((m, end, country, _shard), candidate)| ((m, end, country), candidate))
        .reduce_named(
            "TopNMerge",
            move |_key, candidates: &[(&(String, i64), isize)], out| {
                let ranking = best(candidates.iter().map(|(c, _)| (*c).clone()), n);
                out.push((ranking, 1));
            },
        )
}

/// `t` rounded up to a minute boundary.
pub fn next_minute(t: u64) -> u64 {
    t.div_ceil(MINUTE_MS) * MINUTE_MS
}

/// The time after which the ranking of the window whose last minute starts at `end` no
/// longer changes: its end, plus the allowed lateness, rounded up to the minute.
pub fn final_at(end: u64, allowed_lateness_ms: u64) -> u64 {
    next_minute(end + MINUTE_MS + allowed_lateness_ms)
}

/// The `n` best (ad, clicks): most clicks first, then smallest ad id; zero counts excluded.
fn best(ads: impl Iterator<Item = (String, i64)>, n: usize) -> Ranking {
    let mut all: Ranking = ads.filter(|(_, c)| *c > 0).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

#[cfg(test)]
mod tests {
    use super::best;

    #[test]
    fn ranking_breaks_ties_by_ad_id_and_drops_zeros() {
        let r = best(
            [("b", 3), ("a", 3), ("c", 5), ("z", 0)]
                .into_iter()
                .map(|(a, c)| (a.to_string(), c)),
            3,
        );
        assert_eq!(r, vec![("c".into(), 5), ("a".into(), 3), ("b".into(), 3)]);
    }
}
