//! From HTTP query parameters to a [`QueryKind`], strictly: every problem is a 400 whose
//! message names the parameter. Plain functions, tested without a server.

use std::collections::HashMap;

use adclick_dataflows::click::Sym;
use adclick_dataflows::query::{Filter, Granularity, GroupBy, QueryKind};
use adclick_dataflows::time::MINUTE_MS;
use adclick_dataflows::topn::all_countries;

use crate::timefmt::parse_millis;

/// What the caller may see: everything, or one advertiser's campaigns and ads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Admin,
    Advertiser(String),
}

impl Access {
    fn advertiser(&self) -> Option<Sym> {
        match self {
            Access::Admin => None,
            Access::Advertiser(a) => Some(Sym::of(a)),
        }
    }
}

/// A bad parameter: the name, and what is wrong with it.
#[derive(Debug, PartialEq, Eq)]
pub struct BadParam(pub String);

fn bad(param: &str, what: impl std::fmt::Display) -> BadParam {
    BadParam(format!("parameter `{param}`: {what}"))
}

/// What the server knows when it plans a query.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The data frontier (ms): rows before `now − minute_retention` may be gone.
    pub frontier: u64,
    pub minute_retention_ms: u64,
    pub top_n: usize,
    pub top_windows: Vec<u64>,
}

type Params = HashMap<String, String>;

/// The dimensions rows can be filtered and grouped by, in `Dims` field order.
const DIMENSIONS: [&str; 6] = [
    "ad_id",
    "campaign_id",
    "advertiser_id",
    "publisher_id",
    "country",
    "device",
];

fn only(params: &Params, allowed: &[&str]) -> Result<(), BadParam> {
    match params.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad(
            k,
            format!("unknown; expected one of {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// RFC 3339 time or a date (`2026-04-20`, midnight UTC), in ms.
fn time(params: &Params, name: &str) -> Result<Option<u64>, BadParam> {
    let Some(v) = params.get(name) else {
        return Ok(None);
    };
    let text = if v.len() == 10 {
        format!("{v}T00:00:00Z")
    } else {
        v.clone()
    };
    parse_millis(&text)
        .ok()
        .filter(|ms| *ms >= 0)
        .map(|ms| Some(ms as u64))
        .ok_or_else(|| bad(name, format!("{v:?} is not an RFC 3339 time or a date")))
}

fn range(params: &Params) -> Result<(u64, u64), BadParam> {
    let from = time(params, "from")?.ok_or_else(|| bad("from", "required"))?;
    let to = time(params, "to")?.ok_or_else(|| bad("to", "required"))?;
    if to <= from {
        return Err(bad("to", "must be after `from`"));
    }
    Ok((from, to))
}

/// The finest rows that answer [from, to): minutes while they are kept, else hours or days
/// if the range is aligned to them.
fn source(plan: &Plan, from: u64, to: u64) -> Result<Granularity, BadParam> {
    let minutes_from = plan.frontier.saturating_sub(plan.minute_retention_ms);
    if from >= minutes_from {
        return Ok(Granularity::Minute);
    }
    for g in [Granularity::Hour, Granularity::Day] {
        if from.is_multiple_of(g.ms()) && to.is_multiple_of(g.ms()) {
            return Ok(g);
        }
    }
    Err(bad(
        "from",
        "minute rows before the minute retention are gone: align the range to hours or days",
    ))
}

/// `filter=country:US,device:mobile` and/or the dimension parameters themselves.
fn filter(params: &Params, access: &Access) -> Result<Filter, BadParam> {
    let mut f = Filter::default();
    let mut set = |name: &str, value: &str, from: &str| -> Result<(), BadParam> {
        let slot = match name {
            "ad_id" => &mut f.ad_id,
            "campaign_id" => &mut f.campaign_id,
            "advertiser_id" => &mut f.advertiser_id,
            "publisher_id" => &mut f.publisher_id,
            "country" => &mut f.country,
            "device" => &mut f.device,
            other => return Err(bad(from, format!("cannot filter by {other:?}"))),
        };
        if value.is_empty() {
            return Err(bad(from, format!("empty value for {name}")));
        }
        *slot = Some(Sym::of(value));
        Ok(())
    };
    for dim in DIMENSIONS {
        if let Some(v) = params.get(dim) {
            set(dim, v, dim)?;
        }
    }
    if let Some(spec) = params.get("filter") {
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once(':')
                .ok_or_else(|| bad("filter", format!("{part:?} is not dimension:value")))?;
            set(name, value, "filter")?;
        }
    }
    if let Some(adv) = access.advertiser() {
        if f.advertiser_id.is_some_and(|a| a != adv) {
            return Err(BadParam("not found".into()));
        }
        f.advertiser_id = Some(adv);
    }
    Ok(f)
}

pub fn ad_count(
    ad: &str,
    params: &Params,
    access: &Access,
    plan: &Plan,
) -> Result<QueryKind, BadParam> {
    only(
        params,
        &[
            "from",
            "to",
            "filter",
            "campaign_id",
            "publisher_id",
            "country",
            "device",
        ],
    )?;
    let (from, to) = range(params)?;
    Ok(QueryKind::AdCount {
        ad: Sym::of(ad),
        from,
        to,
        source: source(plan, from, to)?,
        filter: filter(params, access)?,
    })
}

pub fn report(params: &Params, access: &Access, plan: &Plan) -> Result<QueryKind, BadParam> {
    let mut allowed = vec!["from", "to", "groupBy", "filter"];
    allowed.extend(DIMENSIONS);
    only(params, &allowed)?;
    let (from, to) = range(params)?;
    let mut group = GroupBy::default();
    for g in params
        .get("groupBy")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .filter(|g| !g.is_empty())
    {
        let time = |group: &mut GroupBy, gr| match group.time {
            Some(_) => Err(bad("groupBy", "at most one of minute, hour, day")),
            None => {
                group.time = Some(gr);
                Ok(())
            }
        };
        match g {
            "minute" => time(&mut group, Granularity::Minute)?,
            "hour" => time(&mut group, Granularity::Hour)?,
            "day" => time(&mut group, Granularity::Day)?,
            other => match DIMENSIONS.iter().position(|d| *d == other) {
                Some(i) => group.dims[i] = true,
                None => {
                    return Err(bad(
                        "groupBy",
                        format!(
                            "{other:?} is not one of minute, hour, day, {}",
                            DIMENSIONS.join(", ")
                        ),
                    ));
                }
            },
        }
    }
    let src = source(plan, from, to)?;
    if group.time.is_some_and(|g| g.ms() < src.ms()) {
        return Err(bad("groupBy", "finer than the rows kept for this range"));
    }
    Ok(QueryKind::Report {
        from,
        to,
        source: src,
        group,
        filter: filter(params, access)?,
    })
}

pub fn popular(params: &Params, access: &Access, plan: &Plan) -> Result<QueryKind, BadParam> {
    only(params, &["count", "window", "filter"])?;
    let n = match params.get("count") {
        None => plan.top_n.min(10),
        Some(c) => c
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=plan.top_n).contains(n))
            .ok_or_else(|| bad("count", format!("must be 1 to {}", plan.top_n)))?,
    };
    let m = match params.get("window") {
        None => plan.top_windows.first().copied().unwrap_or(1),
        Some(w) => w
            .parse::<u64>()
            .ok()
            .filter(|m| plan.top_windows.contains(m))
            .ok_or_else(|| bad("window", format!("must be one of {:?}", plan.top_windows)))?,
    };
    let mut country = all_countries();
    if let Some(spec) = params.get("filter") {
        match spec.split_once(':') {
            Some(("country", c)) if !c.is_empty() => country = Sym::of(c),
            _ => return Err(bad("filter", "only country:CC is kept for rankings")),
        }
    }
    // The latest minute the frontier has passed the end of.
    let end = (plan.frontier / MINUTE_MS).saturating_sub(1) * MINUTE_MS;
    Ok(QueryKind::Top {
        key: (m, end, country),
        n,
        advertiser: access.advertiser(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn plan() -> Plan {
        Plan {
            frontier: 1_776_690_000_000,
            minute_retention_ms: 48 * 3_600_000,
            top_n: 100,
            top_windows: vec![1, 5, 60],
        }
    }

    #[test]
    fn errors_name_the_parameter() {
        let a = Access::Admin;
        let cases = [
            (p(&[("to", "2026-04-20")]), "`from`"),
            (p(&[("from", "yesterday"), ("to", "2026-04-20")]), "`from`"),
            (p(&[("from", "2026-04-20"), ("to", "2026-04-20")]), "`to`"),
            (
                p(&[("from", "2026-04-20"), ("to", "2026-04-21"), ("bogus", "1")]),
                "`bogus`",
            ),
            (
                p(&[
                    ("from", "2026-04-20"),
                    ("to", "2026-04-21"),
                    ("filter", "x"),
                ]),
                "`filter`",
            ),
        ];
        for (params, name) in cases {
            let e = ad_count("ad_1", &params, &a, &plan()).unwrap_err();
            assert!(e.0.contains(name), "{e:?} should name {name}");
        }
        let e = report(
            &p(&[
                ("from", "2026-04-20"),
                ("to", "2026-04-21"),
                ("groupBy", "minute,week"),
            ]),
            &a,
            &plan(),
        )
        .unwrap_err();
        assert!(e.0.contains("`groupBy`"), "{e:?}");
        let e = popular(&p(&[("window", "7")]), &a, &plan()).unwrap_err();
        assert!(e.0.contains("`window`"), "{e:?}");
        let e = popular(&p(&[("count", "1000")]), &a, &plan()).unwrap_err();
        assert!(e.0.contains("`count`"), "{e:?}");
    }

    #[test]
    fn advertisers_are_confined_to_their_own_rows() {
        let adv = Access::Advertiser("adv_1".into());
        let params = p(&[("from", "2026-04-20"), ("to", "2026-04-21")]);
        let QueryKind::Report { filter, .. } = report(&params, &adv, &plan()).unwrap() else {
            panic!()
        };
        assert_eq!(filter.advertiser_id, Some(Sym::of("adv_1")));
        let other = p(&[
            ("from", "2026-04-20"),
            ("to", "2026-04-21"),
            ("advertiser_id", "adv_2"),
        ]);
        assert!(report(&other, &adv, &plan()).is_err());
    }

    #[test]
    fn old_ranges_read_coarser_rows_when_aligned() {
        let a = Access::Admin;
        let params = p(&[("from", "2026-01-01"), ("to", "2026-01-02")]);
        let QueryKind::AdCount { source, .. } = ad_count("x", &params, &a, &plan()).unwrap() else {
            panic!()
        };
        assert_eq!(source, Granularity::Hour);
        let unaligned = p(&[
            ("from", "2026-01-01T00:01:00Z"),
            ("to", "2026-01-02T00:00:00Z"),
        ]);
        assert!(ad_count("x", &unaligned, &a, &plan()).is_err());
    }
}
