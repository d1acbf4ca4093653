use referloop::signatures::sign_meta;
use referloop::store::Backend;

use crate::both_backends;
use crate::helpers::*;

fn sample_value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.samples.iter().find_map(|s| {
        let matches = s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v));
        if !matches {
            return None;
        }
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        }
    })
}

async fn metrics_are_valid_prometheus_text(backend: Backend) {
    let app = TestApp::spawn_with(backend, |env| set_env(env, "REFERLOOP_WORKER__ENABLED", "false")).await;
    let body = crate::whatsapp::batch_body();
    let ok = app
        .client
        .post(app.url("/webhooks/whatsapp"))
        .header("x-hub-signature-256", sign_meta(WHATSAPP_APP_SECRET, &body))
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
    let refused = app
        .client
        .post(app.url("/webhooks/whatsapp"))
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 401);

    let response = app.client.get(app.url("/metrics")).send().await.expect("request");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");

    let requests = sample_value(
        &scrape,
        "referloop_http_requests_total",
        &[("route", "/webhooks/whatsapp"), ("method", "POST"), ("status", "200")],
    );
    assert_eq!(requests, Some(1.0), "{text}");
    let rejections = sample_value(
        &scrape,
        "referloop_webhook_rejections_total",
        &[("source", "whatsapp"), ("reason", "signature_missing")],
    );
    assert_eq!(rejections, Some(1.0));
    assert_eq!(
        sample_value(
            &scrape,
            "referloop_queue_items",
            &[("queue", "inbox"), ("state", "queued")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample_value(
            &scrape,
            "referloop_queue_items",
            &[("queue", "jobs"), ("state", "dead")]
        ),
        Some(0.0)
    );
    let histogram = scrape.samples.iter().any(|s| {
        s.metric == "referloop_http_request_duration_seconds"
            && matches!(s.value, prometheus_parse::Value::Histogram(_))
    });
    assert!(histogram, "latency histogram present: {text}");
    app.shutdown().await;
}

/// Every `referloop_*` metric name in `text`, as written (with `_total`, `_bucket`...).
fn metric_names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("referloop_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// A sample name's family: counters are exposed as `<family>_total`, histograms as
/// `<family>_bucket|_sum|_count`.
fn family_of(name: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// The alert rules and the Grafana dashboard in `deploy/` name only metrics referloop
/// exports (a renamed metric would leave an alert silently never firing).
#[tokio::test]
async fn the_alert_rules_and_dashboard_name_exported_metrics() {
    let app = TestApp::spawn_with(Backend::Sqlite, |env| {
        set_env(env, "REFERLOOP_WORKER__ENABLED", "false")
    })
    .await;
    let exposition = app.metrics().await;
    let exported: std::collections::BTreeSet<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    app.shutdown().await;
    assert!(exported.len() >= 15, "{exported:?}");

    let read = |path: &str| {
        let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
    };
    let alerts: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read("deploy/prometheus/alerts.yml")).expect("alerts.yml is YAML");
    let mut alert_exprs = Vec::new();
    for group in alerts["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            assert!(
                rule["alert"].as_str().is_some() && rule["annotations"]["summary"].as_str().is_some(),
                "{rule:?}"
            );
            alert_exprs.push(rule["expr"].as_str().unwrap_or_default().to_string());
        }
    }
    assert!(alert_exprs.len() >= 8, "alert rules: {alert_exprs:?}");
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/referloop.json")).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    let dashboard_exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(dashboard_exprs.len() >= 10, "dashboard queries: {dashboard_exprs:?}");

    for (source, exprs) in [("alerts.yml", &alert_exprs), ("referloop.json", &dashboard_exprs)] {
        let named = metric_names_in(&exprs.join("\n"));
        assert!(!named.is_empty(), "{source} names no metric");
        for name in named {
            assert!(
                exported.contains(family_of(&name)),
                "{source} names {name}, which referloop does not export; exported: {exported:?}"
            );
        }
    }
    // What needs a person has a rule.
    let all_rules = alert_exprs.join("\n");
    for needed in [
        "referloop_queue_oldest_due_seconds",
        "referloop_queue_items",
        "referloop_whatsapp_send_errors_total",
        "referloop_template_sends_held_total",
        "referloop_reward_codes_free",
        "referloop_outside_calls_total",
        "referloop_inbox_backlogged",
    ] {
        assert!(all_rules.contains(needed), "an alert on {needed}");
    }
}

both_backends!(metrics_are_valid_prometheus_text);
