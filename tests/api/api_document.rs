//! Our own API held to its own document: every answer the API tests get is checked
//! against the schema `/api/v1/openapi.json` gives for that operation and status
//! ([`check_answer`]), and schemathesis, a property-based tester driven by the document,
//! must find no failure against a seeded database ([`schemathesis_finds_nothing`]).

use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::admin::{self, digest, seed, OPERATOR, VIEWER};
use referloop::store::Backend;

use crate::helpers::{set_env, TestApp};

fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(referloop::http::openapi::document)
}

/// The documented path template `path` (without its query) matches.
fn template_of(path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or(path);
    let parts: Vec<&str> = path.split('/').collect();
    document()["paths"]
        .as_object()?
        .keys()
        .map(String::as_str)
        .find(|template| {
            let segments: Vec<&str> = template.split('/').collect();
            segments.len() == parts.len()
                && segments
                    .iter()
                    .zip(&parts)
                    .all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}')))
        })
}

/// Checks one answer of our API against its document: the status is documented for the
/// operation, and a JSON body matches that status's schema. Panics with what is wrong.
pub fn check_answer(method: &str, path: &str, status: u16, content_type: &str, body: &str) {
    let Some(template) = template_of(path) else {
        panic!("{method} {path}: not in the API's document");
    };
    let operation = &document()["paths"][template][method.to_ascii_lowercase()];
    let response = &operation["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path}: status {status} is not documented for {template}: {body}"
    );
    let media = content_type.split(';').next().unwrap_or("").trim();
    let Some(schema) = response["content"].get(media).map(|c| &c["schema"]) else {
        panic!("{method} {path} {status}: content type {content_type:?} is not documented");
    };
    if media != "application/json" {
        return;
    }
    let answer: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: not JSON: {e}"));
    let mut root = json!({"allOf": [schema]});
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["components"] = document()["components"].clone();
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .unwrap_or_else(|e| panic!("{template} {status}: the schema does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(&answer)
        .map(|e| format!("{e} at `{}`", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: the answer is off its schema: {}\n{answer}",
        errors.join("; ")
    );
}

/// Sends a request and checks its answer against the document; returns the status and
/// the body.
pub async fn checked(request: reqwest::RequestBuilder) -> (u16, String) {
    let built = request.build_split();
    let (client, request) = (built.0, built.1.expect("a request"));
    let method = request.method().to_string();
    let path = request.url().path().to_string();
    let response = client.execute(request).await.expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.text().await.unwrap_or_default();
    check_answer(&method, &path, status, &content_type, &body);
    (status, body)
}

/// The `st` command: `REFERLOOP_SCHEMATHESIS`, else on the PATH (scripts/test installs
/// it in a virtual environment under the target directory).
fn schemathesis() -> String {
    std::env::var("REFERLOOP_SCHEMATHESIS").unwrap_or_else(|_| "st".into())
}

/// Schemathesis generates requests from the document (valid ones, invalid ones, edge
/// values), sends them with an operator token to an app whose database holds a referral
/// in every state, and checks every answer: no 5xx, statuses and bodies as documented,
/// valid requests accepted, invalid ones refused, the token required.
async fn schemathesis_finds_nothing(backend: Backend) {
    let tokens = format!("{},viewer:{}", digest(OPERATOR), digest(VIEWER));
    let app = TestApp::spawn_with(backend, |env| {
        set_env(env, "REFERLOOP_API__TOKENS", &tokens);
        set_env(env, "REFERLOOP_WORKER__ENABLED", "false");
    })
    .await;
    seed(&app.store).await;
    admin::dead_job(&app, "schemathesis").await;
    let url = app.url("/api/v1/openapi.json");
    let st = schemathesis();
    // A fixed seed keeps CI's run the same each time; REFERLOOP_SCHEMATHESIS_SEED and
    // _EXAMPLES explore further.
    let seed = std::env::var("REFERLOOP_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let examples = std::env::var("REFERLOOP_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "40".into());
    let child = tokio::task::spawn_blocking(move || {
        Command::new(&st)
            // Its cache and reports go under the target directory, not the repository.
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .args([
                "run",
                &url,
                "--checks",
                "all",
                "--max-examples",
                &examples,
                "--seed",
                &seed,
            ])
            .args(["--header", &format!("Authorization: Bearer {OPERATOR}")])
            // One worker: schemathesis 4.32's coverage phase has raced with itself on two.
            .args(["--workers", "1", "--no-color"])
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .unwrap_or_else(|e| {
                panic!("{st}: {e}; install schemathesis (scripts/test does) or set REFERLOOP_SCHEMATHESIS")
            })
    });
    let output = child.await.expect("schemathesis ran");
    let report = String::from_utf8_lossy(&output.stdout);
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("schemathesis-{backend:?}.txt"));
    std::fs::write(&log, report.as_bytes()).expect("schemathesis report written");
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.len() < 200 && (l.contains("passed") || l.contains("failed") || l.contains("error")))
        .collect();
    eprintln!("schemathesis ({backend:?}): {}", summary.join(" | "));
    assert!(
        output.status.success(),
        "schemathesis found failures ({backend:?}):\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    app.shutdown().await;
}

crate::both_backends!(schemathesis_finds_nothing);
