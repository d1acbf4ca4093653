//! Reminders, end to end on both stores with the app's controlled clock. The promoter's:
//! sent once, `reminders.promoter_after` after an invite nobody acted on; cancelled by a
//! tap (and so by the nomination after it) or an opt-out, also when the tap arrives while
//! the reminder is due; skipped over the weekly cap. The referrer's nudge: once,
//! `reminders.friend_after` after a nomination that has not converted, with a link to
//! forward; cancelled by the conversion. Each counted in the funnel with what came after.

use std::time::Duration;

use referloop::domain::funnel::Period;
use referloop::domain::messaging::{MessagePurpose, MessageStatus};
use referloop::domain::state::QueueState;
use referloop::domain::work::{ItemKind, JobKind};
use referloop::store::{Backend, Queue, QueueRow};
use serde_json::{json, Value};

use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;

const THREE_DAYS: Duration = Duration::from_secs(3 * 86_400);

async fn trigger(lc: &Lifecycle, contact: &str, phone: &str) {
    let body = json!({"hs_object_id": contact, "firstname": "Ana", "mobilephone": phone,
                      "hs_feedback_last_nps_rating": "10"});
    assert_eq!(lc.trigger("trigger=nps", body).await, 200);
}

async fn reminders_to(lc: &Lifecycle, phone: &str) -> Vec<Value> {
    let digits = phone.trim_start_matches('+');
    lc.sent_of("tmpl_referral_reminder")
        .await
        .into_iter()
        .filter(|body| body["to"].as_str().map(|to| to.trim_start_matches('+')) == Some(digits))
        .collect()
}

async fn invite_of(lc: &Lifecycle, phone: &str) -> i64 {
    lc.app
        .store
        .list_invites(50)
        .await
        .expect("invites")
        .into_iter()
        .find(|i| i.phone.as_ref().map(|p| p.as_str()) == Some(phone))
        .map(|i| i.id)
        .expect("an invite")
}

async fn reminder_job(lc: &Lifecycle, invite_id: i64) -> QueueRow {
    lc.app
        .store
        .list(Queue::Jobs, None, 200)
        .await
        .expect("jobs")
        .into_iter()
        .find(|j| {
            j.kind == ItemKind::Job(JobKind::PromoterReminder) && j.key == format!("reminder.promoter:{invite_id}")
        })
        .expect("the reminder's job")
}

fn funnel_now(lc: &Lifecycle) -> Period {
    Period::last_days(30, lc.app.store.now_ms()).expect("a period")
}

async fn a_promoter_who_does_nothing_is_reminded_once(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    trigger(&lc, "93001", REFERRER_PHONE).await;
    lc.settle().await;
    assert_eq!(lc.sent_of("tmpl_referral_invite").await.len(), 1);
    // A day before it is due: nothing.
    lc.app.store.clock().advance(THREE_DAYS - Duration::from_secs(86_400));
    lc.settle().await;
    assert!(reminders_to(&lc, REFERRER_PHONE).await.is_empty());
    // Due: one reminder, with the code and a "Refer someone" button for the invite.
    lc.app.store.clock().advance(Duration::from_secs(86_400 + 1));
    lc.settle().await;
    let invite_id = invite_of(&lc, REFERRER_PHONE).await;
    let sent = reminders_to(&lc, REFERRER_PHONE).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let components = sent[0]["template"]["components"].to_string();
    assert!(components.contains(&format!("refer:{invite_id}")), "{components}");
    // Never a second one.
    lc.app.store.clock().advance(THREE_DAYS * 3);
    lc.settle().await;
    assert_eq!(reminders_to(&lc, REFERRER_PHONE).await.len(), 1);

    // The reminder's "Refer someone" opens the Flow; the nomination counts as one after a
    // reminder.
    assert_eq!(
        lc.inbound(refer_tap(REFERRER_PHONE, "wamid.RTAP", invite_id)).await,
        200
    );
    lc.settle().await;
    let flows = lc.sent_of("interactive").await;
    let token = flows[0]["interactive"]["action"]["parameters"]["flow_token"]
        .as_str()
        .expect("a token");
    let reply = flow_reply(
        REFERRER_PHONE,
        "wamid.RR1",
        "x",
        crate::lifecycle::nomination(Some(token), FRIEND_PHONE, true),
    );
    assert_eq!(lc.inbound(reply).await, 200);
    lc.settle().await;
    let counts = lc.app.store.funnel(funnel_now(&lc), None).await.expect("funnel");
    assert_eq!((counts.reminded, counts.nominated_after_reminder), (1, 1));
    let answer: Value = lc
        .app
        .client
        .get(lc.app.url("/api/v1/funnel?days=30"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(
        answer["reminders"],
        json!({"reminded": 1, "nominated_after": 1, "converted_after": 0, "nudged": 0,
               "converted_after_nudge": 0, "friend_reminded": 0})
    );
    lc.shutdown().await;
}

async fn a_tap_or_an_opt_out_cancels_the_reminder(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    let stopper = "+447911123460";
    trigger(&lc, "93101", REFERRER_PHONE).await;
    trigger(&lc, "93102", stopper).await;
    lc.settle().await;
    let tapped = invite_of(&lc, REFERRER_PHONE).await;
    let stopped = invite_of(&lc, stopper).await;
    assert_eq!(lc.inbound(refer_tap(REFERRER_PHONE, "wamid.CTAP", tapped)).await, 200);
    assert_eq!(lc.inbound(text_message(stopper, "wamid.CSTOP", "STOP")).await, 200);
    lc.settle().await;
    // The tap ended the reminder's job at once; the opt-out leaves it to find out.
    let job = reminder_job(&lc, tapped).await;
    assert_eq!(job.state, QueueState::Done);
    assert_eq!(job.note.as_deref(), Some("cancelled: the customer is flow_sent now"));
    lc.app.store.clock().advance(THREE_DAYS + Duration::from_secs(1));
    lc.settle().await;
    assert!(reminders_to(&lc, REFERRER_PHONE).await.is_empty());
    assert!(reminders_to(&lc, stopper).await.is_empty());
    let job = reminder_job(&lc, stopped).await;
    assert_eq!(job.state, QueueState::Done);
    assert_eq!(job.note.as_deref(), Some("cancelled: the customer opted out"));
    let counts = lc.app.store.funnel(funnel_now(&lc), None).await.expect("funnel");
    assert_eq!(counts.reminded, 0);
    lc.shutdown().await;
}

async fn a_reminder_over_the_weekly_cap_is_skipped_not_held(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_MESSAGING__MAX_MARKETING_PER_CONTACT_PER_WEEK", "1");
    })
    .await;
    trigger(&lc, "93301", REFERRER_PHONE).await;
    lc.settle().await;
    lc.app.store.clock().advance(THREE_DAYS + Duration::from_secs(1));
    lc.settle().await;
    assert!(reminders_to(&lc, REFERRER_PHONE).await.is_empty());
    let job = reminder_job(&lc, invite_of(&lc, REFERRER_PHONE).await).await;
    assert_eq!(job.state, QueueState::Done);
    assert_eq!(
        job.note.as_deref(),
        Some("skipped: 1 marketing templates in the last seven days")
    );
    let counts = lc.app.store.funnel(funnel_now(&lc), None).await.expect("funnel");
    assert_eq!((counts.reminded, counts.held_frequency_cap), (0, 0));
    lc.shutdown().await;
}

async fn nudges_to(lc: &Lifecycle) -> Vec<Value> {
    lc.sent_of("tmpl_referral_nudge").await
}

fn nudge_job(jobs: &[QueueRow]) -> Option<&QueueRow> {
    jobs.iter().find(|j| j.kind == ItemKind::Job(JobKind::ReferrerNudge))
}

async fn a_referrer_is_nudged_once_about_a_friend_who_has_not_converted(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    crate::lifecycle::nominate_friend(&lc, true).await;
    assert_eq!(lc.sent_of("tmpl_referral_friend_invite").await.len(), 1);
    // Six days on: nothing yet.
    lc.app.store.clock().advance(Duration::from_secs(6 * 86_400));
    lc.settle().await;
    assert!(nudges_to(&lc).await.is_empty());
    lc.app.store.clock().advance(Duration::from_secs(86_400 + 1));
    lc.settle().await;
    let nudges = nudges_to(&lc).await;
    assert_eq!(nudges.len(), 1, "{nudges:?}");
    assert_eq!(
        nudges[0]["to"].as_str().map(|to| to.trim_start_matches('+')),
        Some(REFERRER_PHONE.trim_start_matches('+'))
    );
    let code = lc.app.store.list_referrals(1).await.expect("referrals")[0]
        .referral_code
        .clone();
    let params = nudges[0]["template"]["components"][0]["parameters"].to_string();
    assert!(params.contains("Zo"), "the friend's name: {params}");
    assert!(
        params.contains("https://wa.me/") && params.contains(&code),
        "a link with the code: {params}"
    );
    // Never a second one.
    lc.app.store.clock().advance(Duration::from_secs(14 * 86_400));
    lc.settle().await;
    assert_eq!(nudges_to(&lc).await.len(), 1);
    // The friend buys after the nudge: counted as a conversion after it.
    let (status, _) = lc
        .api_conversion(json!({"external_id": "order-nudged", "referral_code": code}))
        .await;
    assert!(status < 300, "{status}");
    lc.settle().await;
    let counts = lc.app.store.funnel(funnel_now(&lc), None).await.expect("funnel");
    assert_eq!((counts.nudged, counts.converted_after_nudge), (1, 1));
    lc.shutdown().await;
}

async fn a_conversion_before_the_nudge_cancels_it(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    crate::lifecycle::nominate_friend(&lc, true).await;
    let code = lc.app.store.list_referrals(1).await.expect("referrals")[0]
        .referral_code
        .clone();
    let (status, _) = lc
        .api_conversion(json!({"external_id": "order-early", "referral_code": code}))
        .await;
    assert!(status < 300, "{status}");
    lc.settle().await;
    let jobs = lc.app.store.list(Queue::Jobs, None, 200).await.expect("jobs");
    let job = nudge_job(&jobs).expect("the nudge's job");
    assert_eq!(job.state, QueueState::Done);
    assert_eq!(job.note.as_deref(), Some("cancelled: the referral is converted now"));
    lc.app.store.clock().advance(Duration::from_secs(8 * 86_400));
    lc.settle().await;
    assert!(nudges_to(&lc).await.is_empty());
    let counts = lc.app.store.funnel(funnel_now(&lc), None).await.expect("funnel");
    assert_eq!((counts.nudged, counts.converted_after_nudge), (0, 0));
    lc.shutdown().await;
}

async fn an_expired_referral_or_an_opted_out_referrer_is_not_nudged(backend: Backend) {
    // The attribution window (5 days) ends before the nudge is due (7 days).
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_PROGRAMME__ATTRIBUTION_WINDOW_DAYS", "5");
    })
    .await;
    crate::lifecycle::nominate_friend(&lc, true).await;
    lc.app.store.clock().advance(Duration::from_secs(7 * 86_400 + 1));
    lc.settle().await;
    assert!(nudges_to(&lc).await.is_empty());
    let jobs = lc.app.store.list(Queue::Jobs, None, 200).await.expect("jobs");
    let job = nudge_job(&jobs).expect("the nudge's job");
    assert_eq!(job.note.as_deref(), Some("cancelled: past the attribution window"));
    lc.shutdown().await;

    let lc = Lifecycle::start(backend, |_| {}).await;
    crate::lifecycle::nominate_friend(&lc, true).await;
    assert_eq!(
        lc.inbound(text_message(REFERRER_PHONE, "wamid.NSTOP", "STOP")).await,
        200
    );
    lc.settle().await;
    lc.app.store.clock().advance(Duration::from_secs(7 * 86_400 + 1));
    lc.settle().await;
    assert!(nudges_to(&lc).await.is_empty());
    let jobs = lc.app.store.list(Queue::Jobs, None, 200).await.expect("jobs");
    let job = nudge_job(&jobs).expect("the nudge's job");
    assert_eq!(job.note.as_deref(), Some("cancelled: the referrer opted out"));
    lc.shutdown().await;
}

async fn a_refused_nomination_is_not_nudged(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    // HubSpot knows the friend as a customer already: the screening refuses the nomination.
    lc.hubspot_search_finds(
        None,
        json!({"id": "777", "properties": {"mobilephone": FRIEND_PHONE, "lifecyclestage": "customer"}}),
    )
    .await;
    crate::lifecycle::nominate_friend(&lc, true).await;
    let referral = lc.app.store.list_referrals(1).await.expect("referrals")[0].clone();
    assert_eq!(referral.state, referloop::domain::referral::ReferralState::Refused);
    let jobs = lc.app.store.list(Queue::Jobs, None, 200).await.expect("jobs");
    let job = nudge_job(&jobs).expect("the nudge's job");
    assert_eq!(job.state, QueueState::Done);
    assert_eq!(job.note.as_deref(), Some("cancelled: the referral is refused now"));
    lc.app.store.clock().advance(Duration::from_secs(7 * 86_400 + 1));
    lc.settle().await;
    assert!(nudges_to(&lc).await.is_empty());
    lc.shutdown().await;
}

/// A conversion arriving while the nudge falls due: whichever commits first, the nudge
/// job ends done and a nudge still queued when the conversion commits is never sent.
async fn a_conversion_racing_the_due_nudge_sends_one_at_most(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_WORKER__JOB_CONCURRENCY", "4");
    })
    .await;
    crate::lifecycle::nominate_friend(&lc, true).await;
    let code = lc.app.store.list_referrals(1).await.expect("referrals")[0]
        .referral_code
        .clone();
    lc.app.store.clock().advance(Duration::from_secs(7 * 86_400 + 1));
    let (status, _) = lc
        .api_conversion(json!({"external_id": "order-race", "referral_code": code}))
        .await;
    assert!(status < 300, "{status}");
    lc.settle().await;
    let messages = lc.app.store.list_messages(200).await.expect("messages");
    let nudges: Vec<_> = messages.iter().filter(|m| m.purpose == MessagePurpose::Nudge).collect();
    assert!(nudges.len() <= 1, "{nudges:?}");
    let sent = nudges_to(&lc).await.len();
    match nudges.first() {
        Some(m) if m.status != MessageStatus::Suppressed => assert_eq!(sent, 1, "{m:?}"),
        _ => assert_eq!(sent, 0),
    }
    let jobs = lc.app.store.list(Queue::Jobs, None, 200).await.expect("jobs");
    assert_eq!(nudge_job(&jobs).expect("the nudge's job").state, QueueState::Done);
    lc.shutdown().await;
}

/// The friend arrives through the share link (Ana's nomination without consent): their
/// text opens a 24-hour window.
async fn friend_writes(lc: &Lifecycle) -> String {
    crate::lifecycle::nominate_friend(lc, false).await;
    let code = lc.app.store.list_referrals(1).await.expect("referrals")[0]
        .referral_code
        .clone();
    let hello = text_now(
        lc,
        "wamid.FHELLO",
        &format!("Hi! I'd like to join. My referral code is {code}"),
    );
    assert_eq!(lc.inbound(hello).await, 200);
    lc.settle().await;
    code
}

/// A text from the friend, sent now by the app's clock (its time opens the window).
fn text_now(lc: &Lifecycle, wamid: &str, body: &str) -> Value {
    let mut message = text_message(FRIEND_PHONE, wamid, body);
    message["timestamp"] = json!((lc.app.store.now_ms() / 1000).to_string());
    message
}

async fn friend_reminders(lc: &Lifecycle) -> Vec<String> {
    lc.sent_of("text")
        .await
        .iter()
        .filter(|t| t["to"] == FRIEND_PHONE)
        .filter_map(|t| t["text"]["body"].as_str().map(str::to_string))
        .filter(|body| body.contains("Just a reminder"))
        .collect()
}

async fn a_friend_who_wrote_is_reminded_once_inside_their_window(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    let code = friend_writes(&lc).await;
    assert!(friend_reminders(&lc).await.is_empty());
    // Writing again does not make a second one.
    let again = text_now(&lc, "wamid.FAGAIN", "Hello?");
    assert_eq!(lc.inbound(again).await, 200);
    lc.app.store.clock().advance(Duration::from_secs(2 * 3600 + 1));
    lc.settle().await;
    let sent = friend_reminders(&lc).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains(&code), "{}", sent[0]);
    lc.app.store.clock().advance(Duration::from_secs(3 * 3600));
    lc.settle().await;
    assert_eq!(friend_reminders(&lc).await.len(), 1);
    // A free-form text, never a template to a friend who did not consent.
    assert!(lc.sent_of("tmpl_referral_friend_invite").await.is_empty());
    let counts = lc.app.store.funnel(funnel_now(&lc), None).await.expect("funnel");
    assert_eq!(counts.friend_reminded, 1);
    lc.shutdown().await;
}

async fn a_conversion_before_the_friends_reminder_cancels_it(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    let code = friend_writes(&lc).await;
    let (status, _) = lc
        .api_conversion(json!({"external_id": "order-f", "referral_code": code}))
        .await;
    assert!(status < 300, "{status}");
    lc.settle().await;
    let jobs = lc.app.store.list(Queue::Jobs, None, 200).await.expect("jobs");
    let job = jobs
        .iter()
        .find(|j| j.kind == ItemKind::Job(JobKind::FriendReminder))
        .expect("the friend reminder's job");
    assert_eq!(job.state, QueueState::Done);
    assert_eq!(job.note.as_deref(), Some("cancelled: the referral is converted now"));
    lc.app.store.clock().advance(Duration::from_secs(2 * 3600 + 1));
    lc.settle().await;
    assert!(friend_reminders(&lc).await.is_empty());
    lc.shutdown().await;
}

async fn a_friend_reminder_is_skipped_once_the_window_would_close(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_REMINDERS__FRIEND_REMINDER_AFTER", "1day");
    })
    .await;
    friend_writes(&lc).await;
    lc.app.store.clock().advance(Duration::from_secs(86_400 + 1));
    lc.settle().await;
    assert!(friend_reminders(&lc).await.is_empty());
    let jobs = lc.app.store.list(Queue::Jobs, None, 200).await.expect("jobs");
    let job = jobs
        .iter()
        .find(|j| j.kind == ItemKind::Job(JobKind::FriendReminder))
        .expect("the friend reminder's job");
    assert_eq!(job.state, QueueState::Done);
    assert_eq!(
        job.note.as_deref(),
        Some("skipped: the window the friend opened closes first")
    );
    lc.shutdown().await;
}

/// Taps arriving while their reminders fall due, for several customers at once: whichever
/// commits first, each reminder job ends done, a reminder still queued when its tap
/// commits is never sent, and none is sent twice.
async fn a_tap_racing_the_due_reminder_sends_one_at_most(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_WORKER__JOB_CONCURRENCY", "4");
        set_env(env, "REFERLOOP_WORKER__INBOX_CONCURRENCY", "3");
    })
    .await;
    let phones: Vec<String> = (0..6).map(|n| format!("+4479111235{n:02}")).collect();
    for (n, phone) in phones.iter().enumerate() {
        trigger(&lc, &format!("9320{n}"), phone).await;
    }
    lc.settle().await;
    let mut invites = Vec::new();
    for phone in &phones {
        invites.push(invite_of(&lc, phone).await);
    }
    lc.app.store.clock().advance(THREE_DAYS + Duration::from_secs(1));
    // All the taps in one webhook (Meta batches), handled by three inbox loops while four
    // job loops run the reminders that just fell due.
    let taps: Vec<Value> = phones
        .iter()
        .zip(&invites)
        .enumerate()
        .map(|(n, (phone, invite))| refer_tap(phone, &format!("wamid.RACE{n}"), *invite))
        .collect();
    assert_eq!(lc.whatsapp("messages", json!({"messages": taps})).await, 200);
    lc.settle().await;
    let messages = lc.app.store.list_messages(200).await.expect("messages");
    for (phone, invite) in phones.iter().zip(&invites) {
        let reminders: Vec<_> = messages
            .iter()
            .filter(|m| m.purpose == MessagePurpose::Reminder && m.invite_id == Some(*invite))
            .collect();
        assert!(reminders.len() <= 1, "{reminders:?}");
        let sent = reminders_to(&lc, phone).await.len();
        match reminders.first() {
            None => assert_eq!(sent, 0),
            Some(m) if m.status == MessageStatus::Suppressed => assert_eq!(sent, 0, "{m:?}"),
            Some(m) => {
                assert_eq!(sent, 1, "{m:?}");
                assert!(m.wamid.is_some(), "{m:?}");
            }
        }
        let job = reminder_job(&lc, *invite).await;
        assert_eq!(job.state, QueueState::Done, "{job:?}");
    }
    let dead = lc
        .app
        .store
        .list(Queue::Jobs, Some(QueueState::Dead), 50)
        .await
        .expect("jobs");
    assert!(dead.is_empty(), "{dead:?}");
    lc.shutdown().await;
}

both_backends!(
    a_promoter_who_does_nothing_is_reminded_once,
    a_tap_or_an_opt_out_cancels_the_reminder,
    a_reminder_over_the_weekly_cap_is_skipped_not_held,
    a_referrer_is_nudged_once_about_a_friend_who_has_not_converted,
    a_conversion_before_the_nudge_cancels_it,
    an_expired_referral_or_an_opted_out_referrer_is_not_nudged,
    a_refused_nomination_is_not_nudged,
    a_conversion_racing_the_due_nudge_sends_one_at_most,
    a_friend_who_wrote_is_reminded_once_inside_their_window,
    a_friend_reminder_is_skipped_once_the_window_would_close,
    a_conversion_before_the_friends_reminder_cancels_it,
    a_tap_racing_the_due_reminder_sends_one_at_most,
);
