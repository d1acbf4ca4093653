//! With no credentials (sandbox mode) a referral runs from trigger to invited friend and
//! every outbound call is recorded instead of sent.

use referloop::clock::system_ms;
use referloop::dev;
use referloop::domain::state::Persisted;
use referloop::signatures::{sign_hubspot_v3, sign_meta};
use referloop::store::Backend;
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

async fn post_whatsapp(app: &TestApp, body: Vec<u8>) {
    let payload: serde_json::Value = serde_json::from_slice(&body).expect("a JSON fixture");
    if let Err(off) = crate::contract::Contract::meta().check_webhook(&payload) {
        panic!("a sandbox webhook off Meta's contract: {off}");
    }
    let response = app
        .client
        .post(app.url("/webhooks/whatsapp"))
        .header("x-hub-signature-256", sign_meta(WHATSAPP_APP_SECRET, &body))
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
}

async fn sandbox_carries_a_referral_to_the_invited_friend(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let settle = || async {
        let store = app.store.clone();
        eventually(std::time::Duration::from_secs(15), || {
            let store = store.clone();
            async move {
                // Settled: nothing running or due within a minute (a promoter's reminder
                // waits days), and nothing failed.
                let now = store.now_ms();
                let mut settled = true;
                for queue in [referloop::store::Queue::Inbox, referloop::store::Queue::Jobs] {
                    let counts = store.count_by_state(queue).await.unwrap_or_default();
                    let failed = counts
                        .iter()
                        .any(|(s, n)| *n > 0 && matches!(s.as_str(), "failed" | "dead"));
                    settled &= !failed
                        && store
                            .outlook(queue, now)
                            .await
                            .is_ok_and(|o| o.busy == 0 && o.next_run_at.is_none_or(|at| at > now + 60_000));
                }
                settled
            }
        })
        .await
    };
    let body = json!({"hs_object_id": "90001", "firstname": "Ana", "phone": "+44 7911 123456",
                      "hs_feedback_last_nps_rating": "PROMOTER"})
    .to_string()
    .into_bytes();
    let timestamp = system_ms().to_string();
    let uri = format!("{PUBLIC_BASE_URL}/webhooks/hubspot?trigger=nps");
    let signature = sign_hubspot_v3(HUBSPOT_CLIENT_SECRET, "POST", &uri, &body, &timestamp);
    let response = app
        .client
        .post(app.url("/webhooks/hubspot?trigger=nps"))
        .header("x-hubspot-signature-v3", signature)
        .header("x-hubspot-request-timestamp", timestamp)
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert!(settle().await);
    let invite = app.store.list_invites(1).await.expect("invites")[0].clone();
    post_whatsapp(&app, dev::refer_tap("+447911123456", invite.id)).await;
    assert!(settle().await);
    let (referrer, token) = dev::latest_flow_token(&app.store, invite.id).await.expect("flow token");
    post_whatsapp(
        &app,
        dev::flow_reply(&referrer, &token, "Zoë", "+447911123457", "Olá!", true),
    )
    .await;
    assert!(settle().await);
    let messages = app.store.list_messages(10).await.expect("messages");
    let friend_invite = messages
        .iter()
        .find(|m| m.purpose.as_str() == "friend_invite")
        .expect("friend invite");
    let wamid = friend_invite.wamid.clone().expect("sandbox wamid");
    post_whatsapp(&app, dev::status(&wamid, "delivered", "+447911123457")).await;
    assert!(settle().await);
    assert_eq!(
        app.store.list_referrals(1).await.expect("referrals")[0].state.as_str(),
        "friend_invited"
    );

    let calls = app.store.list_outbound_calls(50).await.expect("calls");
    let graph: Vec<_> = calls.iter().filter(|c| c.url.contains("/messages")).collect();
    assert_eq!(graph.len(), 3, "invite, Flow, friend invite recorded");
    assert!(graph
        .iter()
        .any(|c| c.body.contains("tmpl_referral_friend_invite") && c.body.contains("Olá!")));
    assert!(calls
        .iter()
        .any(|c| c.method == "PATCH" && c.body.contains("friend_invited")));
    app.shutdown().await;
}

both_backends!(sandbox_carries_a_referral_to_the_invited_friend);
