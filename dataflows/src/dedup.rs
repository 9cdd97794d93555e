//! Exact deduplication by impression, as a timely operator whose output is a differential
//! collection of window rows with (clicks, duplicates) measures.
//!
//! Clicks are exchanged by impression, so each worker owns its impressions' state: the current
//! winner (earliest event time, then smallest click id). Input is processed in timely-time
//! order once the frontier passes each time, so every update is stamped with the time at which
//! it became true. A new winner retracts the old one's click (which becomes a duplicate in its
//! own row); every other click of the impression is a duplicate in its own row. The final
//! result depends only on the set of clicks, not on their arrival order.
//!
//! State is evicted once the frontier passes the winner's event time plus the horizon: a click
//! for the same impression after that counts again, by definition of the horizon.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use crate::click::{Click, Dims, Measures, Row};
use crate::time::{MINUTE_MS, window_start};

/// What the dedup remembers about an impression.
pub struct Winner {
    event_time: u64,
    click_id: String,
    dims: Dims,
    evict_at: u64,
}

type Update = (Row, u64, Measures);

/// Deduplicates `clicks` (any timely time ≥ nothing in particular) over `horizon_ms` of event time.
pub fn dedup<'s>(
    clicks: Stream<'s, u64, Vec<Click>>,
    horizon_ms: u64,
) -> VecCollection<'s, u64, Row, Measures> {
    let exchange = Exchange::new(|c: &Click| c.impression_id.hashed());
    clicks
        .unary_frontier::<CapacityContainerBuilder<Vec<Update>>, _, _, _>(
            exchange,
            "Dedup",
            move |_cap, _info| {
                let mut pending: BTreeMap<u64, (Capability<u64>, Vec<Click>)> = BTreeMap::new();
                let mut winners: HashMap<String, Winner> = HashMap::new();
                let mut evictions: BTreeMap<u64, Vec<String>> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| {
                        let Some(cap) = cap.retain_least(0) else {
                            return;
                        };
                        let entry = pending
                            .entry(*cap.time())
                            .or_insert_with(|| (cap, Vec::new()));
                        for batch in data {
                            entry.1.append(batch);
                        }
                    });
                    // Times the frontier has passed are complete: process them in order.
                    while let Some(entry) = pending.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let (cap, clicks) = entry.remove();
                        let time = *cap.time();
                        let mut session = output.session(&cap);
                        for click in clicks {
                            for update in decide(&mut winners, &mut evictions, click, horizon_ms) {
                                session.give((update.0, time, update.1));
                            }
                        }
                    }
                    // Forget impressions whose horizon the frontier has passed.
                    let done_before = frontier.frontier().first().copied().unwrap_or(u64::MAX);
                    while let Some(entry) = evictions.first_entry() {
                        if *entry.key() >= done_before {
                            break;
                        }
                        for imp in entry.remove() {
                            if winners.get(&imp).is_some_and(|w| w.evict_at < done_before) {
                                winners.remove(&imp);
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

fn row(event_time: u64, dims: Dims) -> Row {
    (window_start(event_time, MINUTE_MS), dims)
}

/// The updates one click causes, given the state so far (`winners` per impression, and the
/// impressions to forget by eviction time).
pub fn decide(
    winners: &mut HashMap<String, Winner>,
    evictions: &mut BTreeMap<u64, Vec<String>>,
    click: Click,
    horizon_ms: u64,
) -> Vec<(Row, Measures)> {
    match winners.get_mut(&click.impression_id) {
        None => {
            let evict_at = click.event_time.saturating_add(horizon_ms);
            evictions
                .entry(evict_at)
                .or_default()
                .push(click.impression_id.clone());
            let update = (row(click.event_time, click.dims.clone()), (1, 0));
            winners.insert(
                click.impression_id,
                Winner {
                    event_time: click.event_time,
                    click_id: click.click_id,
                    dims: click.dims,
                    evict_at,
                },
            );
            vec![update]
        }
        Some(w) if click.rank() < (w.event_time, w.click_id.as_str()) => {
            let old = row(w.event_time, std::mem::take(&mut w.dims));
            w.event_time = click.event_time;
            w.click_id = click.click_id;
            w.dims = click.dims.clone();
            vec![(old, (-1, 1)), (row(click.event_time, click.dims), (1, 0))]
        }
        Some(_) => vec![(row(click.event_time, click.dims), (0, 1))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click(imp: &str, id: &str, t: u64, ad: &str) -> Click {
        Click {
            impression_id: imp.into(),
            click_id: id.into(),
            event_time: t,
            dims: Dims {
                ad_id: ad.into(),
                ..Dims::default()
            },
        }
    }

    fn net(clicks: Vec<Click>) -> BTreeMap<Row, Measures> {
        let (mut w, mut e) = (HashMap::new(), BTreeMap::new());
        let mut out: BTreeMap<Row, Measures> = BTreeMap::new();
        for c in clicks {
            for (r, (a, b)) in decide(&mut w, &mut e, c, 86_400_000) {
                let m = out.entry(r).or_default();
                m.0 += a;
                m.1 += b;
            }
        }
        out.retain(|_, m| *m != (0, 0));
        out
    }

    #[test]
    fn the_winner_does_not_depend_on_arrival_order() {
        let a = click("i", "b-id", 59_000, "x");
        let b = click("i", "a-id", 61_000, "x");
        let c = click("i", "c-id", 59_000, "x");
        let orders = [
            vec![a.clone(), b.clone(), c.clone()],
            vec![b.clone(), c.clone(), a.clone()],
            vec![c.clone(), a.clone(), b.clone()],
        ];
        let results: Vec<_> = orders.into_iter().map(net).collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        // Winner: 59 000 with the smaller click id ("b-id"); minute 0 has it and one duplicate,
        // minute 60 000 has one duplicate.
        let r = &results[0];
        assert_eq!(r[&(0, a.dims.clone())], (1, 1));
        assert_eq!(r[&(60_000, a.dims.clone())], (0, 1));
    }

    #[test]
    fn an_identical_retry_is_a_duplicate() {
        let a = click("i", "id", 1_000, "x");
        let r = net(vec![a.clone(), a.clone()]);
        assert_eq!(r[&(0, a.dims)], (1, 1));
    }
}
