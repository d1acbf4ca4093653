//! Quiet hours and the weekly frequency cap, end to end on both stores with the app's
//! controlled clock: an invite triggered outside the recipient's send window waits,
//! without using an attempt, until the window opens in the recipient's zone (from the
//! contact's `hs_timezone`, else the number's country); a reply to a tap goes at once; a
//! marketing template over the cap waits until the oldest counted one is a week old.
//! The zone arithmetic itself (daylight saving, the date line) is tested in
//! `domain::send_window`.

use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use referloop::domain::funnel::Period;
use referloop::domain::messaging::{MessagePurpose, MessageStatus};
use referloop::domain::send_window::HoldReason;
use referloop::domain::work::{ItemKind, JobKind};
use referloop::store::{Backend, MessageRow, Queue};
use serde_json::json;

use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;

/// A second customer, in London by their number's country (GB keeps one local time).
const BEN_PHONE: &str = "+447911123459";

/// The local hour in `zone` at `now`.
fn local_hour(now: i64, zone: &str) -> i8 {
    let zone = TimeZone::get(zone).expect("a zone");
    Timestamp::from_millisecond(now).expect("now").to_zoned(zone).hour()
}

/// The next time after `now` that `zone`'s clocks show `hour`:00, in Unix ms.
fn next_local(now: i64, zone: &str, hour: i8) -> i64 {
    let tz = TimeZone::get(zone).expect("a zone");
    let local = Timestamp::from_millisecond(now).expect("now").to_zoned(tz.clone());
    let mut day = local.date();
    loop {
        let at = day
            .at(hour, 0, 0, 0)
            .to_zoned(tz.clone())
            .expect("a local time")
            .timestamp()
            .as_millisecond();
        if at > now {
            return at;
        }
        day = day.tomorrow().expect("a next day");
    }
}

async fn invite_messages(lc: &Lifecycle, phone: &str) -> Vec<MessageRow> {
    let mut messages: Vec<MessageRow> = lc
        .app
        .store
        .list_messages(50)
        .await
        .expect("messages")
        .into_iter()
        .filter(|m| m.to_phone.as_str() == phone && m.purpose == MessagePurpose::Invite)
        .collect();
    messages.sort_by_key(|m| m.id);
    messages
}

async fn invites_sent_to(lc: &Lifecycle, phone: &str) -> usize {
    let digits = phone.trim_start_matches('+');
    lc.sent_of("tmpl_referral_invite")
        .await
        .iter()
        .filter(|body| body["to"].as_str().map(|to| to.trim_start_matches('+')) == Some(digits))
        .count()
}

async fn quiet_hours_hold_until_the_recipients_window_opens(backend: Backend) {
    // A window two hours ahead of London's clock: closed now in London and in Tokyo.
    let now = referloop::clock::system_ms();
    let opens = (local_hour(now, "Europe/London") + 2).rem_euclid(24);
    let window = format!("{opens:02}:00-{:02}:00", (opens + 1) % 24);
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_MESSAGING__SEND_WINDOW", &window);
        set_env(env, "REFERLOOP_MESSAGING__DEFAULT_TIMEZONE", "America/New_York");
    })
    .await;
    // Ana's contact says Tokyo (HubSpot's spelling); Ben's says nothing, and his number is
    // British.
    let ana = json!({"hs_object_id": "91001", "firstname": "Ana", "mobilephone": REFERRER_PHONE,
                     "hs_feedback_last_nps_rating": "10", "hs_timezone": "asia_slash_tokyo"});
    let ben = json!({"hs_object_id": "91002", "firstname": "Ben", "mobilephone": BEN_PHONE,
                     "hs_feedback_last_nps_rating": "9"});
    assert_eq!(lc.trigger("trigger=nps", ana).await, 200);
    assert_eq!(lc.trigger("trigger=nps", ben).await, 200);
    lc.settle().await;
    assert_eq!(invites_sent_to(&lc, REFERRER_PHONE).await, 0, "nothing at night");
    assert_eq!(invites_sent_to(&lc, BEN_PHONE).await, 0, "nothing at night");

    let now = lc.app.store.now_ms();
    let ana_opens = next_local(now, "Asia/Tokyo", opens);
    let ben_opens = next_local(now, "Europe/London", opens);
    assert_ne!(ana_opens, ben_opens, "the two zones open apart");
    for (phone, until) in [(REFERRER_PHONE, ana_opens), (BEN_PHONE, ben_opens)] {
        let invite = &invite_messages(&lc, phone).await[0];
        assert_eq!(invite.status, MessageStatus::Queued);
        assert_eq!(invite.held_reason, Some(HoldReason::QuietHours), "{phone}");
        assert_eq!(
            invite.held_until,
            Some(until),
            "{phone} waits for its own zone's window"
        );
    }
    // Waiting used no attempt.
    let sends = lc.app.store.list(Queue::Jobs, None, 50).await.expect("jobs");
    let sends: Vec<_> = sends
        .iter()
        .filter(|j| j.kind == ItemKind::Job(JobKind::SendWhatsApp))
        .collect();
    assert_eq!(sends.len(), 2, "{sends:?}");
    assert!(sends.iter().all(|j| j.attempts == 0), "{sends:?}");

    // A tap on the invite is answered at once: the Flow is a reply to what Ana just did.
    let invite_id = invite_messages(&lc, REFERRER_PHONE).await[0]
        .invite_id
        .expect("an invite");
    assert_eq!(
        lc.inbound(refer_tap(REFERRER_PHONE, "wamid.QTAP", invite_id)).await,
        200
    );
    lc.settle().await;
    let flows = lc.sent_of("interactive").await;
    assert_eq!(flows.len(), 1, "the Flow went in quiet hours");
    // Ana nominates Zoë, who consents: the friend's invite is unprompted for Zoë, and
    // her British number puts her in London's night too.
    let token = flows[0]["interactive"]["action"]["parameters"]["flow_token"]
        .as_str()
        .expect("a flow token");
    let reply = flow_reply(
        REFERRER_PHONE,
        "wamid.QR1",
        "x",
        crate::lifecycle::nomination(Some(token), FRIEND_PHONE, true),
    );
    assert_eq!(lc.inbound(reply).await, 200);
    lc.settle().await;
    assert!(lc.sent_of("tmpl_referral_friend_invite").await.is_empty());
    let referral = lc.app.store.list_referrals(5).await.expect("referrals")[0].clone();
    let timeline = lc.app.store.timeline(&referral).await.expect("timeline");
    let said: Vec<&str> = timeline.iter().map(|e| e.what.as_str()).collect();
    let ben_opening = referloop::clock::for_people(next_local(lc.app.store.now_ms(), "Europe/London", opens));
    assert!(
        said.contains(&format!("friend_invite message held for quiet hours until {ben_opening}").as_str()),
        "{said:#?}"
    );
    assert!(
        said.iter()
            .any(|s| s.starts_with("invite message held for quiet hours until")),
        "{said:#?}"
    );

    // Each invite leaves when its own window opens, not before.
    let (first, second, first_phone, second_phone) = if ana_opens < ben_opens {
        (ana_opens, ben_opens, REFERRER_PHONE, BEN_PHONE)
    } else {
        (ben_opens, ana_opens, BEN_PHONE, REFERRER_PHONE)
    };
    let advance_to = |at: i64| {
        let by = (at - lc.app.store.now_ms()).max(0) as u64 + 1_000;
        lc.app.store.clock().advance(Duration::from_millis(by));
    };
    advance_to(first);
    lc.settle().await;
    assert_eq!(invites_sent_to(&lc, first_phone).await, 1);
    assert_eq!(invites_sent_to(&lc, second_phone).await, 0);
    advance_to(second);
    lc.settle().await;
    assert_eq!(invites_sent_to(&lc, second_phone).await, 1);
    assert_eq!(invites_sent_to(&lc, first_phone).await, 1, "each invite once");
    assert_eq!(
        lc.sent_of("tmpl_referral_friend_invite").await.len(),
        1,
        "Zoë's morning came"
    );

    // The funnel counts each held send once; the API says so too.
    let period = Period::last_days(1, lc.app.store.now_ms()).expect("a period");
    let counts = lc.app.store.funnel(period, None).await.expect("funnel");
    assert_eq!(counts.held_quiet_hours, 3, "two invites and a friend's invite");
    assert_eq!(counts.held_frequency_cap, 0);
    let answer: serde_json::Value = lc
        .app
        .client
        .get(lc.app.url("/api/v1/funnel?days=1"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["held"]["quiet_hours"], 3, "{answer}");
    lc.shutdown().await;
}

/// Moves the app's clock forward to `at` (RFC 3339), which must be ahead of it.
fn move_clock_to(lc: &Lifecycle, at: &str) {
    let target = at.parse::<Timestamp>().expect("a timestamp").as_millisecond();
    let by = target - lc.app.store.now_ms();
    assert!(by > 0, "{at} is ahead of the clock");
    lc.app.store.clock().advance(Duration::from_millis(by as u64));
}

async fn the_window_follows_daylight_saving_and_the_date_line(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_MESSAGING__SEND_WINDOW", "09:00-20:00");
    })
    .await;
    // 06:00 UTC on 2027-03-14, the night New York's clocks go forward: 01:00 EST there,
    // and already 20:00 on the same date in Kiritimati (+14:00), the window just closed.
    move_clock_to(&lc, "2027-03-14T06:00:00Z");
    let ny = json!({"hs_object_id": "94001", "firstname": "Ana", "mobilephone": REFERRER_PHONE,
                    "hs_feedback_last_nps_rating": "10", "hs_timezone": "america_slash_new_york"});
    let kiritimati = json!({"hs_object_id": "94002", "firstname": "Ben", "mobilephone": BEN_PHONE,
                            "hs_feedback_last_nps_rating": "10", "hs_timezone": "Pacific/Kiritimati"});
    assert_eq!(lc.trigger("trigger=nps", ny).await, 200);
    assert_eq!(lc.trigger("trigger=nps", kiritimati).await, 200);
    lc.settle().await;
    let at = |text: &str| text.parse::<Timestamp>().expect("a timestamp").as_millisecond();
    // 09:00 EDT (UTC-4 after the change), not 09:00 EST.
    let ana = &invite_messages(&lc, REFERRER_PHONE).await[0];
    assert_eq!(ana.held_until, Some(at("2027-03-14T13:00:00Z")));
    // 09:00 the next local day in Kiritimati: 19:00 UTC on the 14th.
    let ben = &invite_messages(&lc, BEN_PHONE).await[0];
    assert_eq!(ben.held_until, Some(at("2027-03-14T19:00:00Z")));
    move_clock_to(&lc, "2027-03-14T13:00:01Z");
    lc.settle().await;
    assert_eq!(invites_sent_to(&lc, REFERRER_PHONE).await, 1);
    assert_eq!(invites_sent_to(&lc, BEN_PHONE).await, 0);
    move_clock_to(&lc, "2027-03-14T19:00:01Z");
    lc.settle().await;
    assert_eq!(invites_sent_to(&lc, BEN_PHONE).await, 1);
    lc.shutdown().await;
}

async fn the_weekly_cap_holds_a_marketing_template_over_it(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_MESSAGING__MAX_MARKETING_PER_CONTACT_PER_WEEK", "1");
        // The week this test waits through would bring the promoters' reminders (tested
        // with the cap in tests/api/reminders.rs).
        set_env(env, "REFERLOOP_REMINDERS__PROMOTER", "false");
    })
    .await;
    // Two contacts share one number: the second invite is a second marketing template to
    // that number within the week.
    for contact in ["92001", "92002"] {
        let body = json!({"hs_object_id": contact, "firstname": "Ana", "mobilephone": REFERRER_PHONE,
                          "hs_feedback_last_nps_rating": "10"});
        assert_eq!(lc.trigger("trigger=nps", body).await, 200);
        lc.settle().await;
    }
    assert_eq!(invites_sent_to(&lc, REFERRER_PHONE).await, 1, "one a week");
    let invites = invite_messages(&lc, REFERRER_PHONE).await;
    assert_eq!(invites.len(), 2);
    // Handed to Meta (what the cap counts) just before Meta accepted it.
    let accepted_at = invites[0].updated_at;
    let held = &invites[1];
    assert_eq!(held.held_reason, Some(HoldReason::FrequencyCap));
    let until = held.held_until.expect("held until");
    let week = 7 * 86_400_000;
    assert!(
        (accepted_at - 15_000..=accepted_at).contains(&(until - week)),
        "held until the first is a week old: {until} against {accepted_at}"
    );

    lc.app.store.clock().advance(Duration::from_millis(
        (until - lc.app.store.now_ms()).max(0) as u64 + 1_000,
    ));
    lc.settle().await;
    assert_eq!(
        invites_sent_to(&lc, REFERRER_PHONE).await,
        2,
        "sent once the week passed"
    );
    let period = Period::last_days(30, lc.app.store.now_ms()).expect("a period");
    let counts = lc.app.store.funnel(period, None).await.expect("funnel");
    assert_eq!(counts.held_frequency_cap, 1);
    lc.shutdown().await;
}

both_backends!(
    quiet_hours_hold_until_the_recipients_window_opens,
    the_window_follows_daylight_saving_and_the_date_line,
    the_weekly_cap_holds_a_marketing_template_over_it,
);
