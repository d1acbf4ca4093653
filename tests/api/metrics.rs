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

both_backends!(metrics_are_valid_prometheus_text);
