//! From HTTP query parameters to a [`QueryKind`], strictly: every problem is a 400 whose
//! message names the parameter. Plain functions, tested without a server.
//!
//! Values are read as ingest wrote them: ids pass the same check as at ingest
//! ([`check_id`]: a length cap and a character set), countries and devices are normalised by
//! ingest's own functions. A value ingest could never have stored is a 400, not a query that
//! silently matches nothing (`country=us` once read no rows, since rows say `US`).

use std::collections::HashMap;

use adclick_dataflows::anomaly::Severity;
use adclick_dataflows::click::Sym;
use adclick_dataflows::query::{Filter, Granularity, GroupBy, QueryKind};
use adclick_dataflows::topn::{advertiser_scope, all_countries};
use warp::http::StatusCode;

use crate::event::{Device, check_id, country};
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

/// Why a query is not answered, each with its HTTP status.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A bad parameter: the message names it and says what is wrong with it (a 400).
    #[error("{0}")]
    BadParam(String),
    /// What the caller may not see, answered as if it did not exist (a 404): an advertiser
    /// asking about another advertiser's ads learns nothing of them.
    #[error("not found")]
    NotFound,
    /// What this aggregator is configured not to keep (a 409): the message says what is off
    /// and the setting that turns it on.
    #[error("{0}")]
    Off(&'static str),
}

/// Why a reach query is refused when `aggregator.reach = false`.
pub const REACH_OFF: QueryError = QueryError::Off(
    "reach (unique users) is off in this aggregator: no sketches are kept \
     (aggregator.reach = false)",
);

impl QueryError {
    pub fn status(&self) -> StatusCode {
        match self {
            QueryError::BadParam(_) => StatusCode::BAD_REQUEST,
            QueryError::NotFound => StatusCode::NOT_FOUND,
            QueryError::Off(_) => StatusCode::CONFLICT,
        }
    }
}

fn bad(param: &str, what: impl std::fmt::Display) -> QueryError {
    QueryError::BadParam(format!("parameter `{param}`: {what}"))
}

/// A value as an error message shows it: quoted, and cut, so that a 10 KB id does not come
/// back in full.
fn shown(value: &str) -> String {
    const MOST: usize = 40;
    match value.char_indices().nth(MOST) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// Decodes `%XX` escapes. `None` for a malformed escape or bytes that are not UTF-8. Warp
/// hands path segments over as sent, so `/ads/%61d_0/…` would otherwise ask for an ad
/// literally named `%61d_0`. `+` stays a `+`: it means a space only in query strings.
fn percent_decode(raw: &str) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex = |b: Option<u8>| (b? as char).to_digit(16);
        let (hi, lo) = (hex(bytes.next())?, hex(bytes.next())?);
        out.push((hi * 16 + lo) as u8);
    }
    String::from_utf8(out).ok()
}

/// An id from a path segment (`param` names it in errors): percent-decoded, then held to the
/// rules ingest holds ids to, so a path can only name an id that could exist.
pub fn path_id(param: &str, raw: &str) -> Result<String, QueryError> {
    let text = percent_decode(raw).ok_or_else(|| bad(param, "malformed %-escape, or not UTF-8"))?;
    check_id("id", &text).map_err(|e| bad(param, format!("{}: {}", shown(&text), e.problem)))?;
    Ok(text)
}

/// The fingerprint rows carry for value `value` of dimension `dim`, or what is wrong with it:
/// ids as they are if ingest would accept them ([`check_id`]), countries as ingest normalises
/// them ([`country::normalize`]: `us`, `USA` → `US`), devices by their name in any case
/// (`MOBILE` → `mobile`, the names of [`Device::as_str`]).
pub fn dimension_value(dim: &str, value: &str) -> Result<Sym, String> {
    let text = match dim {
        "country" => country::normalize(value).ok_or_else(|| {
            format!(
                "country {}: not an ISO 3166-1 alpha-2 or alpha-3 code",
                shown(value)
            )
        })?,
        "device" => Device::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(value.trim()))
            .map(Device::as_str)
            .ok_or_else(|| {
                let names: Vec<&str> = Device::ALL.iter().map(|d| d.as_str()).collect();
                format!(
                    "device {}: expected one of {}",
                    shown(value),
                    names.join(", ")
                )
            })?,
        _ => {
            check_id("id", value).map_err(|e| format!("{dim} {}: {}", shown(value), e.problem))?;
            value
        }
    };
    Ok(Sym::of(text))
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

fn only(params: &Params, allowed: &[&str]) -> Result<(), QueryError> {
    match params.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad(
            k,
            format!("unknown; expected one of {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// RFC 3339 time or a date (`2026-04-20`, midnight UTC), in ms.
fn time(params: &Params, name: &str) -> Result<Option<u64>, QueryError> {
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

fn range(params: &Params) -> Result<(u64, u64), QueryError> {
    let from = time(params, "from")?.ok_or_else(|| bad("from", "required"))?;
    let to = time(params, "to")?.ok_or_else(|| bad("to", "required"))?;
    if to <= from {
        return Err(bad("to", "must be after `from`"));
    }
    Ok((from, to))
}

/// `GET /api/v1/alerts`: the event-time range [from, to) (required) and the least severity
/// (`warning`, the default, or `critical`).
pub fn alerts(params: &Params) -> Result<(u64, u64, Severity), QueryError> {
    only(params, &["from", "to", "severity"])?;
    let (from, to) = range(params)?;
    let least = match params.get("severity") {
        None => Severity::Warning,
        Some(v) => Severity::from_name(v)
            .ok_or_else(|| bad("severity", format!("{v:?}: expected warning or critical")))?,
    };
    Ok((from, to, least))
}

/// The finest rows that answer [from, to): minutes while they are kept, else hours or days
/// if the range is aligned to them.
fn source(plan: &Plan, from: u64, to: u64) -> Result<Granularity, QueryError> {
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
fn filter(params: &Params, access: &Access) -> Result<Filter, QueryError> {
    let mut f = Filter::default();
    let mut set = |name: &str, value: &str, from: &str| -> Result<(), QueryError> {
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
        *slot = Some(dimension_value(name, value).map_err(|e| bad(from, e))?);
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
            return Err(QueryError::NotFound);
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
) -> Result<QueryKind, QueryError> {
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

/// Which clicks a report's `clicks` counts (`traffic=`), and whether its rows are split by
/// invalid reason (`groupBy=invalid_reason`): how the rows are shown, not which are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportShape {
    pub traffic: Traffic,
    pub by_reason: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Traffic {
    /// What advertisers pay for (the default).
    #[default]
    Billable,
    /// Invalid clicks only, whatever the reason.
    Invalid,
    /// Both.
    All,
}

/// A report's [`ReportShape`] from its parameters.
pub fn report_shape(params: &Params) -> Result<ReportShape, QueryError> {
    let traffic = match params.get("traffic").map(String::as_str) {
        None | Some("billable") => Traffic::Billable,
        Some("invalid") => Traffic::Invalid,
        Some("all") => Traffic::All,
        Some(other) => {
            return Err(bad(
                "traffic",
                format!("{other:?} is not one of billable, invalid, all"),
            ));
        }
    };
    let by_reason = params
        .get("groupBy")
        .is_some_and(|g| g.split(',').any(|g| g == INVALID_REASON));
    Ok(ReportShape { traffic, by_reason })
}

/// The `groupBy` value that splits rows by invalid reason.
const INVALID_REASON: &str = "invalid_reason";

pub fn report(params: &Params, access: &Access, plan: &Plan) -> Result<QueryKind, QueryError> {
    let mut allowed = vec!["from", "to", "groupBy", "filter", "traffic", "metrics"];
    allowed.extend(DIMENSIONS);
    only(params, &allowed)?;
    let (from, to) = range(params)?;
    let mut group = GroupBy::default();
    for g in params
        .get("groupBy")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .filter(|g| !g.is_empty() && *g != INVALID_REASON)
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
                            "{other:?} is not one of minute, hour, day, {}, {INVALID_REASON}",
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

/// `GET /api/v1/reports/reach`: distinct users over whole hours `[from, to)`, of the groups
/// the dimensions (in `groupBy` or as filters) name: an ad, a campaign, a campaign by country,
/// a publisher or a country (the last two span advertisers: admin keys only); per `hour` or
/// `day` if grouped by one; billable clicks' users, or every click's with `traffic=all`.
pub fn reach(params: &Params, access: &Access, lateness_ms: u64) -> Result<QueryKind, QueryError> {
    use adclick_dataflows::reach::GroupBy as By;
    const DIMS: [&str; 4] = ["ad_id", "campaign_id", "publisher_id", "country"];
    let mut allowed = vec!["from", "to", "groupBy", "traffic"];
    allowed.extend(DIMS);
    only(params, &allowed)?;
    let (from, to) = hour_range(params)?;
    let billable = match params.get("traffic").map(String::as_str) {
        None | Some("billable") => true,
        Some("all") => false,
        Some(other) => {
            return Err(bad(
                "traffic",
                format!("{other:?} is not one of billable, all"),
            ));
        }
    };
    let mut time = None;
    let mut named: Vec<&str> = DIMS
        .into_iter()
        .filter(|d| params.contains_key(*d))
        .collect();
    for g in params
        .get("groupBy")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .filter(|g| !g.is_empty())
    {
        match g {
            "hour" | "day" if time.is_some() => {
                return Err(bad("groupBy", "at most one of hour, day"));
            }
            "hour" => time = Some(Granularity::Hour),
            "day" => time = Some(Granularity::Day),
            d if DIMS.contains(&d) => named.push(d),
            other => {
                return Err(bad(
                    "groupBy",
                    format!("{other:?} is not one of hour, day, {}", DIMS.join(", ")),
                ));
            }
        }
    }
    let has = |d: &str| named.contains(&d);
    let by = match (
        has("ad_id"),
        has("campaign_id"),
        has("publisher_id"),
        has("country"),
    ) {
        (true, _, false, false) => By::Ad,
        (false, true, false, true) => By::CampaignCountry,
        (false, true, false, false) => By::Campaign,
        (false, false, true, false) => By::Publisher,
        (false, false, false, true) => By::Country,
        (false, false, false, false) => {
            return Err(bad(
                "groupBy",
                "reach is kept per ad, campaign, campaign and country, publisher or country: \
                 name one (in groupBy or as a filter)",
            ));
        }
        _ => {
            return Err(bad(
                "groupBy",
                "reach is kept per ad, campaign, campaign and country, publisher or country, \
                 not for this combination",
            ));
        }
    };
    if matches!(by, By::Publisher | By::Country) && *access != Access::Admin {
        return Err(bad(
            "groupBy",
            "publisher and country reach span advertisers: admin keys only",
        ));
    }
    let filter = filter(params, access)?;
    let key = match by {
        By::Ad => filter.ad_id,
        By::Campaign | By::CampaignCountry => filter.campaign_id,
        By::Publisher => filter.publisher_id,
        By::Country => filter.country,
    };
    Ok(QueryKind::Reach {
        by,
        key,
        from,
        to,
        time,
        billable,
        filter,
        lateness_ms,
    })
}

/// What a report's rows show (`metrics=clicks,unique_users`; `clicks` alone by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metrics {
    pub clicks: bool,
    pub unique_users: bool,
}

pub fn report_metrics(params: &Params) -> Result<Metrics, QueryError> {
    let Some(spec) = params.get("metrics") else {
        return Ok(Metrics {
            clicks: true,
            unique_users: false,
        });
    };
    let mut m = Metrics {
        clicks: false,
        unique_users: false,
    };
    for name in spec.split(',').filter(|n| !n.is_empty()) {
        match name {
            "clicks" => m.clicks = true,
            "unique_users" => m.unique_users = true,
            other => {
                return Err(bad(
                    "metrics",
                    format!("{other:?} is not one of clicks, unique_users"),
                ));
            }
        }
    }
    if !(m.clicks || m.unique_users) {
        return Err(bad("metrics", "empty; expected clicks and/or unique_users"));
    }
    Ok(m)
}

/// The names a report's rows are keyed by, as its JSON shows them (`hour`, `day`, `adId`,
/// `campaignId`, `publisherId`, `country`): what its `uniqueUsers` are joined on.
pub fn grouped_names(params: &Params) -> Vec<&'static str> {
    let groups = params.get("groupBy").map(String::as_str).unwrap_or("");
    [
        ("hour", "hour"),
        ("day", "day"),
        ("ad_id", "adId"),
        ("campaign_id", "campaignId"),
        ("publisher_id", "publisherId"),
        ("country", "country"),
    ]
    .into_iter()
    .filter(|(g, _)| groups.split(',').any(|x| x == *g))
    .map(|(_, name)| name)
    .collect()
}

/// A report's `unique_users`: the reach query of its range, groups and filters, which must be
/// ones reach is kept by (whole hours; hour or day; an ad, a campaign, a campaign by country,
/// a publisher or a country; billable or all traffic), else a 400 naming `metrics`.
pub fn report_reach(
    params: &Params,
    access: &Access,
    lateness_ms: u64,
) -> Result<QueryKind, QueryError> {
    let mut p = Params::new();
    for (k, v) in params {
        match k.as_str() {
            "metrics" => {}
            "traffic" if v == "invalid" => {
                return Err(bad(
                    "metrics",
                    "unique_users counts billable or all traffic",
                ));
            }
            "from" | "to" | "groupBy" | "traffic" | "ad_id" | "campaign_id" | "publisher_id"
            | "country" => {
                p.insert(k.clone(), v.clone());
            }
            other => {
                return Err(bad(
                    "metrics",
                    format!("unique_users is not kept by {other}"),
                ));
            }
        }
    }
    reach(&p, access, lateness_ms).map_err(|e| match e {
        QueryError::BadParam(m) => QueryError::BadParam(format!("{m} (for metrics=unique_users)")),
        other => other,
    })
}

/// `aggregated_count`'s `unique_users`: the ad's billable reach over the range, when the
/// range is whole hours and nothing but the ad narrows it (reach is not kept per device or
/// publisher of an ad); `None` otherwise.
pub fn ad_reach(ad: &str, params: &Params, access: &Access, lateness_ms: u64) -> Option<QueryKind> {
    let narrowed = ["filter", "campaign_id", "publisher_id", "country", "device"]
        .iter()
        .any(|p| params.contains_key(*p));
    let (from, to) = hour_range(params).ok()?;
    (!narrowed).then(|| QueryKind::Reach {
        by: adclick_dataflows::reach::GroupBy::Ad,
        key: Some(Sym::of(ad)),
        from,
        to,
        time: None,
        billable: true,
        filter: Filter {
            advertiser_id: access.advertiser(),
            ..Filter::default()
        },
        lateness_ms,
    })
}

/// [from, to) in whole hours: reach is sketched by the hour.
fn hour_range(params: &Params) -> Result<(u64, u64), QueryError> {
    let (from, to) = range(params)?;
    let hour = Granularity::Hour.ms();
    for (name, t) in [("from", from), ("to", to)] {
        if !t.is_multiple_of(hour) {
            return Err(bad(name, "reach is kept by the hour: give a whole hour"));
        }
    }
    Ok((from, to))
}

/// The dimensions a traffic-quality report may group by.
pub const QUALITY_GROUPS: [&str; 3] = ["publisher_id", "campaign_id", "country"];

/// `traffic_quality`: the invalid share per publisher, campaign or country over `[from, to)`,
/// as a report grouped by that one dimension (publisher by default).
pub fn traffic_quality(
    params: &Params,
    access: &Access,
    plan: &Plan,
) -> Result<QueryKind, QueryError> {
    let mut allowed = vec!["from", "to", "groupBy", "filter"];
    allowed.extend(DIMENSIONS);
    only(params, &allowed)?;
    if params.contains_key("traffic") {
        return Err(bad(
            "traffic",
            "unknown; expected one of from, to, groupBy, filter",
        ));
    }
    let by = params.get("groupBy").map_or("publisher_id", String::as_str);
    if !QUALITY_GROUPS.contains(&by) {
        return Err(bad(
            "groupBy",
            format!("{by:?} is not one of {}", QUALITY_GROUPS.join(", ")),
        ));
    }
    report(params, access, plan).map(|kind| match kind {
        QueryKind::Report {
            from,
            to,
            source,
            filter,
            ..
        } => {
            let mut group = GroupBy::default();
            group.dims[DIMENSIONS
                .iter()
                .position(|d| *d == by)
                .expect("a dimension")] = true;
            QueryKind::Report {
                from,
                to,
                source,
                group,
                filter,
            }
        }
        other => other,
    })
}

pub fn popular(params: &Params, access: &Access, plan: &Plan) -> Result<QueryKind, QueryError> {
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
            Some(("country", c)) => {
                country = dimension_value("country", c).map_err(|e| bad("filter", e))?
            }
            _ => return Err(bad("filter", "only country:CC is kept for rankings")),
        }
    }
    // An advertiser reads the ranking of its own ads, not the global one cut to them.
    let scope = match access.advertiser() {
        Some(adv) => advertiser_scope(country, adv),
        None => country,
    };
    // The window's end: the latest minute ranked at the read time, set by the cluster.
    Ok(QueryKind::Top {
        key: (m, 0, scope),
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

    /// Reach is asked by the group kind the named dimensions (grouped or filtered) select,
    /// over whole hours; what it is not kept by is a 400 naming the parameter, and publisher
    /// and country reach are for admins.
    #[test]
    fn reach_queries_name_a_kept_group_or_the_parameter() {
        use adclick_dataflows::reach::GroupBy as By;
        let (admin, adv) = (Access::Admin, Access::Advertiser("adv_1".into()));
        let day = [("from", "2026-04-20"), ("to", "2026-04-21")];
        let with = |extra: &[(&str, &str)]| {
            let mut all = day.to_vec();
            all.extend_from_slice(extra);
            p(&all)
        };
        let Ok(QueryKind::Reach {
            by,
            key,
            time,
            billable,
            filter,
            ..
        }) = reach(
            &with(&[("campaign_id", "cmp_1"), ("groupBy", "day,country")]),
            &adv,
            300_000,
        )
        else {
            panic!("a campaign by country")
        };
        assert_eq!(
            (by, key, time),
            (
                By::CampaignCountry,
                Some(Sym::of("cmp_1")),
                Some(Granularity::Day)
            )
        );
        assert!(billable);
        assert_eq!(filter.advertiser_id, Some(Sym::of("adv_1")));
        let Ok(QueryKind::Reach {
            by, key, filter, ..
        }) = reach(
            &with(&[
                ("campaign_id", "cmp_1"),
                ("groupBy", "ad_id"),
                ("traffic", "all"),
            ]),
            &admin,
            0,
        )
        else {
            panic!("ads of a campaign")
        };
        assert_eq!(
            (by, key, filter.campaign_id),
            (By::Ad, None, Some(Sym::of("cmp_1")))
        );
        for (params, access, named) in [
            (with(&[]), &admin, "`groupBy`"),
            (with(&[("groupBy", "ad_id,country")]), &admin, "`groupBy`"),
            (with(&[("groupBy", "device")]), &admin, "`groupBy`"),
            (with(&[("groupBy", "publisher_id")]), &adv, "`groupBy`"),
            (
                with(&[("groupBy", "hour,day"), ("ad_id", "a")]),
                &admin,
                "`groupBy`",
            ),
            (
                with(&[("ad_id", "a"), ("traffic", "invalid")]),
                &admin,
                "`traffic`",
            ),
            (
                with(&[("ad_id", "a"), ("device", "mobile")]),
                &admin,
                "`device`",
            ),
            (
                p(&[
                    ("from", "2026-04-20T10:30:00Z"),
                    ("to", "2026-04-21"),
                    ("ad_id", "a"),
                ]),
                &admin,
                "`from`",
            ),
        ] {
            let e = reach(&params, access, 0).unwrap_err().to_string();
            assert!(e.contains(named), "{params:?}: {e}");
        }
        // A report's unique_users: the same rules, named as the metric's.
        let e = report_reach(&with(&[("groupBy", "device")]), &admin, 0).unwrap_err();
        assert!(e.to_string().contains("metrics"), "{e}");
        assert!(report_reach(&with(&[("groupBy", "day,campaign_id")]), &admin, 0).is_ok());
        for bad in ["", "clicks,users"] {
            let e = report_metrics(&p(&[("metrics", bad)])).unwrap_err();
            assert!(e.to_string().contains("`metrics`"), "{e}");
        }
        // aggregated_count's unique_users only for whole hours without other filters.
        assert!(ad_reach("a", &with(&[]), &admin, 0).is_some());
        assert!(ad_reach("a", &with(&[("country", "US")]), &admin, 0).is_none());
        assert!(
            ad_reach(
                "a",
                &p(&[("from", "2026-04-20T00:01:00Z"), ("to", "2026-04-21")]),
                &admin,
                0
            )
            .is_none()
        );
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
            assert!(e.to_string().contains(name), "{e:?} should name {name}");
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
        assert!(e.to_string().contains("`groupBy`"), "{e:?}");
        let e = popular(&p(&[("window", "7")]), &a, &plan()).unwrap_err();
        assert!(e.to_string().contains("`window`"), "{e:?}");
        let e = popular(&p(&[("count", "1000")]), &a, &plan()).unwrap_err();
        assert!(e.to_string().contains("`count`"), "{e:?}");
    }

    #[test]
    fn traffic_quality_groups_by_one_allowed_dimension_within_the_callers_rows() {
        let adv = Access::Advertiser("adv_1".into());
        let day = [("from", "2026-04-20"), ("to", "2026-04-21")];
        let QueryKind::Report { group, filter, .. } =
            traffic_quality(&p(&day), &adv, &plan()).unwrap()
        else {
            panic!()
        };
        assert_eq!(filter.advertiser_id, Some(Sym::of("adv_1")));
        let publisher = DIMENSIONS
            .iter()
            .position(|d| *d == "publisher_id")
            .unwrap();
        assert!(group.time.is_none());
        assert_eq!(
            group.dims.iter().filter(|d| **d).count(),
            1,
            "one dimension"
        );
        assert!(group.dims[publisher]);
        let mut by = day.to_vec();
        by.push(("groupBy", "ad_id"));
        let e = traffic_quality(&p(&by), &adv, &plan()).unwrap_err();
        assert!(e.to_string().contains("`groupBy`"), "{e}");
        by.pop();
        by.push(("groupBy", "minute,country"));
        assert!(traffic_quality(&p(&by), &adv, &plan()).is_err());
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

    /// Hostile input, item 8 of issue 11: filter values mean what ingest stored (`us`, `USA`
    /// and `MOBILE` once matched no row and answered an empty 200), or are a 400 naming the
    /// parameter.
    #[test]
    fn filter_values_are_normalised_as_ingest_does_or_rejected() {
        let a = Access::Admin;
        let range = [("from", "2026-04-20"), ("to", "2026-04-21")];
        let filter_of = |extra: &[(&str, &str)]| {
            let mut params = p(&range);
            params.extend(p(extra));
            report(&params, &a, &plan()).map(|k| match k {
                QueryKind::Report { filter, .. } => filter,
                _ => unreachable!(),
            })
        };
        let us = Some(Sym::of("US"));
        for spelling in ["US", "us", "USA", "usa", " Us "] {
            assert_eq!(filter_of(&[("country", spelling)]).unwrap().country, us);
            let spec = format!("country:{spelling}");
            assert_eq!(filter_of(&[("filter", &spec)]).unwrap().country, us);
        }
        let mobile = Some(Sym::of("mobile"));
        for spelling in ["mobile", "MOBILE", "Mobile"] {
            assert_eq!(filter_of(&[("device", spelling)]).unwrap().device, mobile);
        }
        for (param, value, named) in [
            ("country", "XX", "`country`"),
            ("country", "United States", "`country`"),
            ("device", "phone", "`device`"),
            ("filter", "country:UK", "`filter`"),
            ("filter", "device:robot", "`filter`"),
            ("campaign_id", "camp 1", "`campaign_id`"),
        ] {
            let e = filter_of(&[(param, value)]).unwrap_err();
            assert!(e.to_string().contains(named), "{param}={value}: {e:?}");
        }
        let QueryKind::Top { key, .. } =
            popular(&p(&[("filter", "country:usa")]), &a, &plan()).unwrap()
        else {
            panic!()
        };
        assert_eq!(key.2, Sym::of("US"));
        let e = popular(&p(&[("filter", "country:XX")]), &a, &plan()).unwrap_err();
        assert!(e.to_string().contains("`filter`"), "{e:?}");
    }

    /// Ids in paths are percent-decoded (`%61d_0` is `ad_0`), and ids in paths and filters are
    /// held to ingest's cap and characters: a 10 KB ad id once got a 200.
    #[test]
    fn ids_are_percent_decoded_and_capped_as_at_ingest() {
        assert_eq!(path_id("ad_id", "%61d_0").unwrap(), "ad_0");
        assert_eq!(path_id("ad_id", "ad%5F0").unwrap(), "ad_0");
        let cap = crate::event::MAX_ID_LEN;
        assert_eq!(path_id("ad_id", &"a".repeat(cap)).unwrap().len(), cap);
        for raw in [
            "a".repeat(cap + 1),
            "a".repeat(10_000),
            "%61".repeat(cap + 1),
            "%zz".into(),
            "ad%2".into(),
            "ad%FF".into(),
            "ad%200".into(),
            "ad+0".into(),
        ] {
            let e = path_id("ad_id", &raw).unwrap_err();
            assert!(e.to_string().contains("`ad_id`"), "{raw:.20}: {e:?}");
            assert!(
                e.to_string().len() < 200,
                "the message echoes a cut value: {}",
                e.to_string().len()
            );
        }
        let long = "c".repeat(10_000);
        let params = p(&[
            ("from", "2026-04-20"),
            ("to", "2026-04-21"),
            ("campaign_id", &long),
        ]);
        let e = report(&params, &Access::Admin, &plan()).unwrap_err();
        assert!(e.to_string().contains("`campaign_id`"), "{e:?}");
        let spec = format!("ad_id:{long}");
        let params = p(&[
            ("from", "2026-04-20"),
            ("to", "2026-04-21"),
            ("filter", &spec),
        ]);
        let e = report(&params, &Access::Admin, &plan()).unwrap_err();
        assert!(e.to_string().contains("`filter`"), "{e:?}");
    }

    /// Item 9 of issue 11: an advertiser reads the ranking of its own ads (in all countries or
    /// one), not the global ranking.
    #[test]
    fn an_advertiser_reads_its_own_ranking() {
        let adv = Access::Advertiser("adv_1".into());
        let top = |params| match popular(&params, &adv, &plan()).unwrap() {
            QueryKind::Top { key, .. } => key.2,
            _ => unreachable!(),
        };
        let own = Sym::of("adv_1");
        assert_eq!(top(p(&[])), advertiser_scope(all_countries(), own));
        assert_eq!(
            top(p(&[("filter", "country:de")])),
            advertiser_scope(Sym::of("DE"), own)
        );
        let QueryKind::Top { key, .. } = popular(&p(&[]), &Access::Admin, &plan()).unwrap() else {
            panic!()
        };
        assert_eq!(key.2, all_countries());
    }
}
