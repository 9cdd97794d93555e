//! The Grafana dashboard (`docs/grafana/`) and the Prometheus alert rules (`docs/alerts/`)
//! name only metrics that adclick exports: each test renders both services' `/metrics` with
//! every family present and fails on any `adclick_` name the files use that is not there, so
//! a misspelt or renamed metric cannot leave a panel blank or an alert silent.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::registry::Registry;
use serde_json::Value;

use crate::health::Health;
use crate::kafka::outbox::OutboxMetrics;
use crate::query::metrics::QueryMetrics;
use crate::redirect::metrics::RedirectMetrics;

const DASHBOARD: &str = include_str!("../docs/grafana/adclick-aggregator.json");
const RULES: &str = include_str!("../docs/alerts/adclick-rules.yml");

/// Identifiers starting with `adclick_`.
fn metric_names(expr: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut rest = expr;
    let mut prev_ident = false;
    while let Some(c) = rest.chars().next() {
        if !prev_ident && rest.starts_with("adclick_") {
            let end = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
            names.push(rest[..end].to_string());
            rest = &rest[end..];
            prev_ident = true;
            continue;
        }
        prev_ident = ident(c);
        rest = &rest[c.len_utf8()..];
    }
    names
}

/// The sample names of a text exposition.
fn sample_names(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l[..l.find(['{', ' ']).unwrap_or(l.len())].to_string())
}

/// The aggregator's sample names, with one observation in every family.
fn aggregator_exposed() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let m = QueryMetrics::watching_disks(vec![("checkpoint", dir.path().to_path_buf())]);
    m.observe("stats", 200, Duration::from_millis(3));
    m.window_completion.observe(0.2);
    let health = Health::default();
    health.tallies.lock().unwrap().received = 5;
    health.frontier.store(1, Ordering::Relaxed);
    health.set_partition(0, 10, 12);
    health
        .checkpoint_interval_ms
        .store(10_000, Ordering::Relaxed);
    *health.checkpoint.lock().unwrap() = Some(crate::health::Checkpointed {
        frontier: 1,
        bytes: 2,
        duration_ms: 3,
    });
    sample_names(&m.render(&health)).collect()
}

/// The redirect's sample names (its metrics and the outbox's), every family present.
fn redirect_exposed() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::with_prefix("adclick_redirect");
    let m = RedirectMetrics::register(&mut registry);
    let outbox = OutboxMetrics::register(&mut registry);
    m.observe_disk("spool", dir.path());
    outbox.routed.get_or_create(&vec![("route", "kafka")]).inc();
    outbox
        .quarantined
        .get_or_create(&vec![("reason", "too_large")])
        .inc();
    outbox.produce_latency.observe(0.001);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    sample_names(&text).collect()
}

/// Fails naming every `adclick_` name in `exprs` that neither service exports; returns how
/// many names were checked.
fn check(what: &str, exprs: &[String]) -> usize {
    let exposed: BTreeSet<String> = aggregator_exposed()
        .into_iter()
        .chain(redirect_exposed())
        .collect();
    let mut used = 0;
    for expr in exprs {
        for name in metric_names(expr) {
            assert!(
                exposed.contains(&name),
                "{what} uses {name}, which /metrics does not export, in {expr}\n\
                 exported: {exposed:?}"
            );
            used += 1;
        }
    }
    used
}

/// Every `expr` of every panel target, rows' nested panels included, and every query
/// variable's query.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("a target without expr");
                out.push(expr.to_string());
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] == "query" {
            let q = &var["query"];
            out.push(q["query"].as_str().or(q.as_str()).unwrap().to_string());
        }
    }
    out
}

/// One alerting rule as the rules file spells it: the name, the expression (one line, or a
/// `|` block of the lines indented under it) and the severity label.
#[derive(Debug, Default)]
struct Rule {
    alert: String,
    expr: String,
    severity: String,
}

/// The rules of a Prometheus rules file in the subset of YAML `docs/alerts` uses (`promtool
/// check rules`, run by scripts/test.sh, checks the whole syntax).
fn rules(yaml: &str) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    let mut lines = yaml.lines().peekable();
    let indent = |l: &str| l.len() - l.trim_start().len();
    while let Some(line) = lines.next() {
        let t = line.trim_start().trim_start_matches("- ");
        if let Some(name) = t.strip_prefix("alert:") {
            out.push(Rule {
                alert: name.trim().to_string(),
                ..Rule::default()
            });
        } else if let Some(expr) = t.strip_prefix("expr:") {
            let rule = out.last_mut().expect("an expr before any alert");
            let expr = expr.trim();
            if expr == "|" || expr == ">" {
                let base = indent(line);
                while let Some(next) = lines.peek() {
                    if !next.trim().is_empty() && indent(next) <= base {
                        break;
                    }
                    rule.expr.push_str(next.trim());
                    rule.expr.push('\n');
                    lines.next();
                }
            } else {
                rule.expr = expr.to_string();
            }
        } else if let Some(s) = t.strip_prefix("severity:") {
            out.last_mut().expect("a label before any alert").severity = s.trim().to_string();
        }
    }
    out
}

#[test]
fn the_grafana_dashboard_only_uses_exported_metrics() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    assert_eq!(dashboard["title"], "adclick aggregator");
    let panels = dashboard["panels"].as_array().expect("panels");
    let graphs = panels.iter().filter(|p| p["type"] != "row").count();
    assert!(graphs >= 6, "only {graphs} panels");
    for p in panels {
        assert!(p["gridPos"]["w"].as_u64().is_some(), "no gridPos: {p}");
    }

    let exposed = aggregator_exposed();
    for family in [
        "query_duration_seconds_bucket",
        "window_completion_latency_seconds_count",
        "records",
        "watermark_delay_seconds",
        "partition_lag_records",
    ] {
        assert!(
            exposed.contains(&format!("adclick_aggregator_{family}")),
            "{family} not in {exposed:?}"
        );
    }
    assert!(!exposed.contains("adclick_aggregator_record"));

    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 6, "{exprs:?}");
    let used = check("the dashboard", &exprs);
    assert!(
        used >= exprs.len(),
        "an expr without an adclick_ metric: {exprs:?}"
    );
}

#[test]
fn alert_rules_only_use_exported_metrics_and_are_tiered() {
    let rules = rules(RULES);
    let names: Vec<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    // The issue's tiers: each condition it lists has its rule at its severity.
    for (alert, severity) in [
        ("AdclickIngestBelowBaseline", "critical"),
        ("AdclickConsumerLagHigh", "critical"),
        ("AdclickDeadLetterRateHigh", "critical"),
        ("AdclickRedirectErrorRateHigh", "critical"),
        ("AdclickSpoolGrowing", "critical"),
        ("AdclickCheckpointMissing", "critical"),
        ("AdclickDiskFilling", "warning"),
        ("AdclickCheckpointDurationRising", "warning"),
        ("AdclickConsumerLagElevated", "warning"),
    ] {
        let rule = rules
            .iter()
            .find(|r| r.alert == alert)
            .unwrap_or_else(|| panic!("no rule {alert} in {names:?}"));
        assert_eq!(rule.severity, severity, "{alert}");
    }
    for r in &rules {
        assert!(
            !metric_names(&r.expr).is_empty(),
            "{} has no adclick_ metric: {:?}",
            r.alert,
            r.expr
        );
        assert!(
            ["critical", "warning"].contains(&r.severity.as_str()),
            "{}: severity {:?}",
            r.alert,
            r.severity
        );
    }
    let exprs: Vec<String> = rules.into_iter().map(|r| r.expr).collect();
    check("the alert rules", &exprs);
}

#[test]
fn a_misspelt_metric_in_a_rule_fails_the_check() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          \
                adclick_aggregator_records > 0\n          and adclick_aggregator_recods > 0\n        \
                labels:\n          severity: warning\n";
    let rules = rules(yaml);
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].severity, "warning");
    let exprs = vec![rules[0].expr.clone()];
    let e = std::panic::catch_unwind(|| check("a rule", &exprs)).unwrap_err();
    let message = e.downcast_ref::<String>().unwrap();
    assert!(message.contains("adclick_aggregator_recods"), "{message}");
}

#[test]
fn metric_names_are_whole_identifiers() {
    assert_eq!(
        metric_names(r#"sum(rate(adclick_a_b{x="y"}[5m])) / xadclick_c + adclick_d:e"#),
        ["adclick_a_b", "adclick_d:e"]
    );
}
