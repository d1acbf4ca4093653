//! The real binary, killed with SIGKILL right after acknowledging a webhook, loses nothing.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use referloop::signatures::sign_meta;
use referloop::store::{Backend, Queue, QueueState};

use crate::both_backends;
use crate::helpers::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start(db_url: &str, port: u16) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_referloop"));
    command
        .arg("serve")
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in base_env(db_url) {
        command.env(key, value);
    }
    command
        .env("REFERLOOP_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("REFERLOOP_WORKER__LEASE_SECONDS", "1")
        .spawn()
        .expect("start referloop")
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let ready = eventually(Duration::from_secs(30), || async {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    assert!(ready, "referloop did not become ready");
}

async fn sigkill_after_acknowledgement_loses_nothing(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    let mut first = start(&db.url, port);
    wait_ready(&client, &base).await;
    let body = crate::whatsapp::texts_body();
    let response = client
        .post(format!("{base}/webhooks/whatsapp"))
        .header("x-hub-signature-256", sign_meta(WHATSAPP_APP_SECRET, &body))
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    first.kill().expect("SIGKILL");
    let _ = first.wait();

    let store = db.store().await;
    assert_eq!(
        store.count_inbox_events("whatsapp").await.expect("count"),
        3,
        "acknowledged means stored"
    );

    let mut second = start(&db.url, port);
    wait_ready(&client, &base).await;
    let processed = eventually(Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            store
                .list(Queue::Inbox, Some(QueueState::Done), 10)
                .await
                .map(|r| r.len() == 3)
                .unwrap_or(false)
        }
    })
    .await;
    let _ = second.kill();
    let _ = second.wait();
    assert!(processed, "every event is processed after the restart");
    assert_eq!(
        store.count_inbox_events("whatsapp").await.expect("count"),
        3,
        "and none twice"
    );
}

both_backends!(sigkill_after_acknowledgement_loses_nothing);
