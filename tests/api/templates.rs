//! Templates after going live: a template Meta pauses holds its sends (waiting, not
//! dropped or dead) until Meta approves it again.

use std::time::Duration;

use referloop::domain::messaging::TemplateEvent;
use referloop::domain::state::Persisted;
use referloop::domain::work::{ItemKind, JobKind};
use referloop::store::{Backend, Queue, QueueRow};
use serde_json::json;

use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;

async fn template_status(lc: &Lifecycle, event: &str) -> u16 {
    lc.whatsapp(
        "message_template_status_update",
        json!({"event": event, "message_template_id": 1234, "message_template_name": "tmpl_referral_invite",
               "message_template_language": "en_US", "reason": "NONE",
               "other_info": {"title": "FIRST_PAUSE", "description": "paused for low quality"}}),
    )
    .await
}

/// The invite's send job.
async fn send_job(lc: &Lifecycle) -> QueueRow {
    let jobs = lc.app.store.list(Queue::Jobs, None, 100).await.expect("jobs");
    jobs.into_iter()
        .find(|j| j.kind == ItemKind::Job(JobKind::SendWhatsApp))
        .expect("the send job")
}

/// Waits until the send has been held `times` times and is back in the queue. The hold
/// is counted as the step decides it; the worker records the deferral a moment later,
/// and the clock must not move before it does.
async fn held_and_waiting(lc: &Lifecycle, times: u64) -> bool {
    eventually(Duration::from_secs(10), || async {
        sends_held(lc).await == times && send_job(lc).await.state.as_str() != "running"
    })
    .await
}

/// How many times the invite's send was held for its paused template.
async fn sends_held(lc: &Lifecycle) -> u64 {
    let series = "referloop_template_sends_held_total{template=\"tmpl_referral_invite\",language=\"en_US\"}";
    let text = lc.app.metrics().await;
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

async fn a_paused_template_holds_its_sends_until_approved(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_WHATSAPP__TEMPLATE_RECHECK_SECONDS", "600")
    })
    .await;
    assert_eq!(template_status(&lc, "PAUSED").await, 200);
    lc.settle().await;
    assert_eq!(lc.nps("90001", REFERRER_PHONE, "Ana", "10", "1767225600000").await, 200);
    assert!(held_and_waiting(&lc, 1).await, "the send is held");
    // At the recheck, ten minutes on, the template is still paused: held again.
    lc.app.store.clock().advance(Duration::from_secs(601));
    assert!(held_and_waiting(&lc, 2).await, "held again at the recheck");
    assert!(lc.sent_of("tmpl_referral_invite").await.is_empty(), "held while paused");
    let send = send_job(&lc).await;
    assert_eq!(send.state.as_str(), "queued", "waiting, not failed or dead: {send:?}");
    assert_eq!(send.attempts, 0, "waiting uses no attempt");

    assert_eq!(template_status(&lc, "APPROVED").await, 200);
    let approved = eventually(Duration::from_secs(10), || async {
        let status = lc.app.store.template_status("tmpl_referral_invite", "en_US").await;
        status
            .expect("template status")
            .is_some_and(|(status, _)| status == TemplateEvent::Approved)
    })
    .await;
    assert!(approved, "the approval is recorded");
    // The held send runs at its next recheck.
    lc.app.store.clock().advance(Duration::from_secs(601));
    let sent = eventually(Duration::from_secs(10), || async {
        lc.sent_of("tmpl_referral_invite").await.len() == 1
    })
    .await;
    assert!(sent, "sent once approved again");
    lc.settle().await;
    assert_eq!(lc.sent_of("tmpl_referral_invite").await.len(), 1, "once");
    lc.shutdown().await;
}

/// Quality and category changes are counted and said loudly; nothing dies.
async fn quality_and_category_updates_are_counted(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    let quality = json!({"previous_quality_score": "GREEN", "new_quality_score": "RED", "message_template_id": 1234,
                         "message_template_name": "tmpl_referral_invite", "message_template_language": "en_US"});
    assert_eq!(lc.whatsapp("message_template_quality_update", quality).await, 200);
    let category = json!({"message_template_id": 1235, "message_template_name": "tmpl_referral_reward",
                          "message_template_language": "en_US", "previous_category": "UTILITY", "new_category": "MARKETING"});
    assert_eq!(lc.whatsapp("template_category_update", category).await, 200);
    lc.settle().await;
    let inbox = lc.app.store.list(Queue::Inbox, None, 10).await.expect("inbox");
    assert!(inbox.iter().all(|i| i.state.as_str() == "done"), "{inbox:?}");
    let text = lc.app.metrics().await;
    assert!(
        text.contains("referloop_template_quality_changes_total{template=\"tmpl_referral_invite\",language=\"en_US\",value=\"RED\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("referloop_template_category_changes_total{template=\"tmpl_referral_reward\",language=\"en_US\",value=\"MARKETING\"} 1"),
        "{text}"
    );
    lc.shutdown().await;
}

both_backends!(
    a_paused_template_holds_its_sends_until_approved,
    quality_and_category_updates_are_counted
);
