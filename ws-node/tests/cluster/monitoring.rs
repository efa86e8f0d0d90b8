//! The Grafana dashboard in deploy/ cannot drift from the services: every
//! metric it queries, and every label value it selects on, is in the
//! `/metrics` output of a freshly started auth-service and ws-node binary.

use crate::helpers::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;

const DASHBOARD: &str = include_str!("../../../deploy/grafana/dashboards/tessera.json");

/// Series Prometheus makes up itself, not scraped from the services.
const PROMETHEUS_OWN: &[&str] = &["up"];

/// PromQL words that are not metrics: aggregations, their modifiers, and
/// keywords (functions are recognised by the `(` that follows them).
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
];

/// One selector in a query: a metric and its exact-match label matchers.
#[derive(Debug)]
struct Selector {
    metric: String,
    labels: Vec<(String, String)>,
}

/// Every `expr` in the dashboard.
fn dashboard_queries() -> Vec<String> {
    fn walk(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", Value::String(expr)) => found.push(expr.clone()),
                        _ => walk(value, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let mut found = Vec::new();
    walk(&dashboard, &mut found);
    found
}

/// The selectors of a PromQL query. A small reading of PromQL, enough for
/// what dashboards write: identifiers followed by `(` are functions, those
/// inside `by (…)`, `on (…)` and their kin are labels, `{…}` holds matchers, `[…]` a
/// range, and Grafana's `$__variables` are skipped.
fn selectors(query: &str) -> Vec<Selector> {
    let chars: Vec<char> = query.chars().collect();
    let mut found: Vec<Selector> = Vec::new();
    let mut i = 0;
    let mut label_list = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += 1;
            }
        } else if c == '{' {
            let end = chars[i..].iter().position(|&c| c == '}').expect("closed") + i;
            let matchers: String = chars[i + 1..end].iter().collect();
            if let Some(selector) = found.last_mut() {
                for matcher in matchers.split(',').filter(|m| !m.trim().is_empty()) {
                    if let Some((label, value)) = matcher.split_once('=')
                        && !label.ends_with(['!', '=', '~'])
                        && !value.starts_with('~')
                    {
                        selector.labels.push((
                            label.trim().to_owned(),
                            value.trim().trim_matches('"').to_owned(),
                        ));
                    }
                }
            }
            i = end;
        } else if c == ')' {
            label_list = false;
        } else if c == '$' {
            while i + 1 < chars.len() && (chars[i + 1].is_alphanumeric() || chars[i + 1] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i + 1 < chars.len()
                && (chars[i + 1].is_ascii_alphanumeric() || "_:".contains(chars[i + 1]))
            {
                i += 1;
            }
            let word: String = chars[start..=i].iter().collect();
            let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str())
            {
                label_list = true;
            } else if !label_list && next != Some(&'(') && !PROMQL_WORDS.contains(&word.as_str()) {
                found.push(Selector {
                    metric: word,
                    labels: Vec::new(),
                });
            }
        }
        i += 1;
    }
    found
}

/// Whether the exposition has a sample of `metric` with every label value of `labels`.
fn exposes(exposition: &str, metric: &str, labels: &[(String, String)]) -> bool {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .any(|line| {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            line[..name_end] == *metric
                && labels
                    .iter()
                    .all(|(label, value)| line.contains(&format!("{label}=\"{value}\"")))
        })
}

#[test]
fn the_query_reader_finds_metrics_and_matchers() {
    let found = selectors(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(x_bucket{a="b",c=~"d"}[$__rate_interval]))) + sum(rate(y_total[5m])) / on (job) z"#,
    );
    let metrics: Vec<_> = found.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(metrics, ["x_bucket", "y_total", "z"]);
    assert_eq!(found[0].labels, [("a".to_owned(), "b".to_owned())]);
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    // auth-service in this process (no ws-node is built here, so this
    // process's metrics are auth-service's alone), and the ws-node binary.
    let stack = Stack::start(0).await;
    let node = NodeProcess::spawn(&stack, "node-metrics", &[]).await;
    // The request metrics appear with their first request.
    let health = stack
        .http
        .get(stack.auth("/healthz"))
        .send()
        .await
        .expect("request");
    assert_eq!(health.status(), 200);
    let mut exposition = String::new();
    for url in [
        stack.auth("/metrics"),
        format!("http://127.0.0.1:{}/metrics", node.port),
    ] {
        let response = stack.http.get(&url).send().await.expect("scrape");
        assert_eq!(response.status(), 200, "{url}");
        exposition.push_str(&response.text().await.expect("text"));
    }

    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "only {} queries found", queries.len());
    let mut missing = BTreeSet::new();
    let mut checked = BTreeSet::new();
    for query in &queries {
        for selector in selectors(query) {
            if PROMETHEUS_OWN.contains(&selector.metric.as_str()) {
                continue;
            }
            checked.insert(selector.metric.clone());
            if !exposes(&exposition, &selector.metric, &selector.labels) {
                missing.insert(format!(
                    "{} {:?} (in `{query}`)",
                    selector.metric, selector.labels
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries what the services do not export:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
    // The dashboard covers what the issue asked of it.
    for needed in [
        "ws_connections",
        "ws_handshakes_total",
        "ws_deliveries_total",
        "ws_fanout_latency_seconds_bucket",
        "ws_subscription_losses_total",
        "tickets_minted_total",
        "ws_tickets_total",
        "logins_total",
        "rate_limited_total",
    ] {
        assert!(
            checked.contains(needed),
            "the dashboard no longer shows {needed}"
        );
    }
}

#[tokio::test]
async fn fan_out_latency_is_measured_on_a_sample_of_messages() {
    let stack = Stack::start(1).await;
    let user = stack.create_user("otto").await;
    let key = stack.api_key(&user, "connect,publish,publish_any").await;
    let mut client = stack.connect(0, &key).await;
    client.subscribe("broadcast:latency").await;
    let sampled = |exposition: &str| {
        exposition
            .lines()
            .find_map(|l| l.strip_prefix("ws_fanout_latency_seconds_count "))
            .map_or(0, |n| n.trim().parse::<u64>().expect("a count"))
    };
    let scrape = || async {
        let response = stack
            .http
            .get(stack.nodes[0].http_url("/metrics"))
            .send()
            .await;
        response.expect("scrape").text().await.expect("text")
    };
    let before = sampled(&scrape().await);
    let messages = 2 * ws_node::cluster::hub::FANOUT_SAMPLE_EVERY;
    for n in 0..messages {
        stack
            .server_publish(&key, "broadcast:latency", json!(n))
            .await;
    }
    for n in 0..messages {
        assert_eq!(client.recv().await["data"], n);
    }
    let after = sampled(&scrape().await);
    assert!(
        after - before >= 1,
        "{before} -> {after} samples for {messages} messages"
    );
}
