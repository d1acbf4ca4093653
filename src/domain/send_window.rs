//! Quiet hours: an unprompted message (an invite, a reminder, a friend's invite, a share
//! link) goes out only while the recipient's local time is inside the send window
//! (`messaging.send_window`), and the frequency cap on marketing templates. The zone
//! arithmetic is jiff's, with its bundled time zone database: daylight saving changes
//! and the date line are the database's, never a hand-written offset.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use super::country_zones::ONE_LOCAL_TIME;
use super::messaging::MessagePurpose;
use super::phone::E164;
use super::state::persisted;

/// When a message may go out: at once (a reply to something the recipient just did), or
/// inside the recipient's send window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendTiming {
    Immediately,
    RecipientDaytime,
}

persisted!(SendTiming {
    Immediately => "immediately",
    RecipientDaytime => "daytime",
});

impl MessagePurpose {
    /// Messages the recipient did not just ask for wait for their daytime; replies to
    /// something they did (the Flow after a tap, a refusal, reward notices, the thanks,
    /// an opt-out acknowledgement, the welcome of a friend who wrote first) go at once.
    pub fn timing(self) -> SendTiming {
        match self {
            MessagePurpose::Invite
            | MessagePurpose::FriendInvite
            | MessagePurpose::ShareLink
            | MessagePurpose::Reminder
            | MessagePurpose::Nudge
            | MessagePurpose::FriendReminder => SendTiming::RecipientDaytime,
            MessagePurpose::Flow
            | MessagePurpose::FriendWelcome
            | MessagePurpose::Refusal
            | MessagePurpose::Thanks
            | MessagePurpose::Reward
            | MessagePurpose::Reply => SendTiming::Immediately,
        }
    }

    /// Marketing templates, which the per-contact frequency cap counts.
    pub fn is_marketing_template(self) -> bool {
        matches!(
            self,
            MessagePurpose::Invite | MessagePurpose::FriendInvite | MessagePurpose::Reminder | MessagePurpose::Nudge
        )
    }
}

/// Why a send waits without using an attempt (recorded on the message for its timeline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    QuietHours,
    FrequencyCap,
}

persisted!(HoldReason {
    QuietHours => "quiet_hours",
    FrequencyCap => "frequency_cap",
});

impl HoldReason {
    /// As the timeline says it: "held for quiet hours until …".
    pub fn for_people(self) -> &'static str {
        match self {
            HoldReason::QuietHours => "held for quiet hours",
            HoldReason::FrequencyCap => "held by the weekly frequency cap",
        }
    }
}

/// The local hours in which unprompted messages go out: `"09:00-20:00"`. A window whose
/// end is before its start runs over midnight (`"20:00-08:00"`); `"00:00-24:00"` is
/// always open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow {
    /// Minutes after local midnight.
    opens: u16,
    /// Minutes after local midnight; 1440 for midnight at the day's end.
    closes: u16,
}

const DAY_MINUTES: u16 = 24 * 60;

impl SendWindow {
    pub const ALWAYS: SendWindow = SendWindow {
        opens: 0,
        closes: DAY_MINUTES,
    };

    pub fn parse(text: &str) -> Result<SendWindow, String> {
        let shape = || format!("{text:?} is not a window like \"09:00-20:00\"");
        let (opens, closes) = text.trim().split_once('-').ok_or_else(shape)?;
        let minutes = |part: &str| -> Result<u16, String> {
            let (h, m) = part.trim().split_once(':').ok_or_else(shape)?;
            let (h, m): (u16, u16) = (h.parse().map_err(|_| shape())?, m.parse().map_err(|_| shape())?);
            let total = h * 60 + m;
            if h > 24 || m > 59 || total > DAY_MINUTES || h.to_string().len() > 2 {
                return Err(shape());
            }
            Ok(total)
        };
        let (opens, closes) = (minutes(opens)?, minutes(closes)?);
        if opens == DAY_MINUTES {
            return Err(format!("{text:?}: a window cannot open at 24:00"));
        }
        if opens == closes {
            return Err(format!(
                "{text:?} is empty: a window that is always open is \"00:00-24:00\""
            ));
        }
        Ok(SendWindow { opens, closes })
    }

    pub fn is_always_open(self) -> bool {
        self == SendWindow::ALWAYS
    }

    fn contains(self, minute: u16) -> bool {
        if self.opens < self.closes {
            (self.opens..self.closes).contains(&minute)
        } else {
            minute >= self.opens || minute < self.closes
        }
    }

    /// `None` while `now` is inside the window in `zone`; otherwise the next moment it
    /// opens. An opening that falls in a daylight-saving gap (02:30 on the night clocks
    /// go forward) is the first moment after the gap.
    pub fn next_opening(self, now: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        let local = now.to_zoned(zone.clone());
        let minute = (local.hour() as u16) * 60 + local.minute() as u16;
        if self.contains(minute) {
            return None;
        }
        let opens = Time::new((self.opens / 60) as i8, (self.opens % 60) as i8, 0, 0).ok()?;
        let date = local.date();
        // Today's opening, or tomorrow's when today's has passed.
        [date, date.checked_add(1.day()).ok()?]
            .into_iter()
            .filter_map(|day| zone.to_ambiguous_zoned(day.to_datetime(opens)).compatible().ok())
            .map(|zoned| zoned.timestamp())
            .find(|at| *at > now)
    }
}

impl fmt::Display for SendWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.opens), hm(self.closes))
    }
}

/// A time zone known by its IANA name (`Europe/Berlin`).
#[derive(Clone, PartialEq)]
pub struct LocalZone {
    name: String,
    zone: TimeZone,
}

impl fmt::Debug for LocalZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Display for LocalZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl LocalZone {
    /// An IANA name (case as the database spells it is not required), or HubSpot's
    /// `hs_timezone` spelling of one (`america_slash_new_york`,
    /// `america_slash_port_hyphen_au_hyphen_prince`).
    pub fn parse(text: &str) -> Result<LocalZone, UnknownZone> {
        let text = text.trim();
        let iana = text.replace("_slash_", "/").replace("_hyphen_", "-");
        let zone = TimeZone::get(&iana).map_err(|_| UnknownZone(text.to_string()))?;
        let name = zone.iana_name().unwrap_or(&iana).to_string();
        Ok(LocalZone { name, zone })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    /// The recipient's zone: the one their CRM record gives, else their number's
    /// country's when that country keeps one local time, else `default`.
    pub fn of_recipient(known: Option<LocalZone>, phone: &E164, default: &LocalZone) -> LocalZone {
        known
            .or_else(|| {
                let country = phone.country()?;
                let at = ONE_LOCAL_TIME
                    .binary_search_by(|(c, _)| (*c).cmp(country.as_str()))
                    .ok()?;
                LocalZone::parse(ONE_LOCAL_TIME[at].1).ok()
            })
            .unwrap_or_else(|| default.clone())
    }
}

/// A name the time zone database does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a known time zone")]
pub struct UnknownZone(pub String);

impl TryFrom<String> for LocalZone {
    type Error = UnknownZone;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        LocalZone::parse(&text)
    }
}

/// `messaging.max_marketing_per_contact_per_week`: a marketing template to a number that
/// already had this many in the last seven days waits until the oldest of them is a
/// week old.
pub const CAP_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);

/// When a capped send may go: `None` when fewer than `cap` were sent since the period
/// began; otherwise when the oldest of those counted leaves the period. `sent` are the
/// send times (Unix ms) of the recipient's marketing templates in the last period,
/// oldest first.
pub fn cap_frees_at(sent: &[i64], cap: NonZeroU32, now: i64) -> Option<i64> {
    let period = i64::try_from(CAP_PERIOD.as_millis()).unwrap_or(i64::MAX);
    let in_period: Vec<i64> = sent.iter().copied().filter(|at| *at > now - period).collect();
    let cap = cap.get() as usize;
    if in_period.len() < cap {
        return None;
    }
    // The send that must age out for one more to fit.
    in_period.get(in_period.len() - cap).map(|at| at + period)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a timestamp")
    }

    fn zone(name: &str) -> LocalZone {
        LocalZone::parse(name).expect("a zone")
    }

    fn window() -> SendWindow {
        SendWindow::parse("09:00-20:00").expect("a window")
    }

    #[test]
    fn windows_are_read_and_refused_with_their_text() {
        assert_eq!(window().to_string(), "09:00-20:00");
        assert!(SendWindow::parse("00:00-24:00").expect("open").is_always_open());
        assert_eq!(
            SendWindow::parse("20:00-08:00").expect("overnight").to_string(),
            "20:00-08:00"
        );
        for bad in [
            "",
            "9-20",
            "09:00",
            "25:00-26:00",
            "09:60-10:00",
            "09:00-09:00",
            "24:00-09:00",
            "x:00-10:00",
        ] {
            assert!(SendWindow::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn inside_the_window_a_send_goes_now_and_outside_it_waits_for_the_local_opening() {
        let berlin = zone("Europe/Berlin");
        // 12:00 in Berlin (CET, +01:00) in winter.
        assert_eq!(window().next_opening(at("2026-12-04T11:00:00Z"), berlin.zone()), None);
        // 03:00 in Berlin: today at 09:00 local, 08:00 UTC.
        assert_eq!(
            window().next_opening(at("2026-12-04T02:00:00Z"), berlin.zone()),
            Some(at("2026-12-04T08:00:00Z"))
        );
        // 21:30 in Berlin: tomorrow at 09:00.
        assert_eq!(
            window().next_opening(at("2026-12-04T20:30:00Z"), berlin.zone()),
            Some(at("2026-12-05T08:00:00Z"))
        );
        // The window's end is not inside it.
        assert!(window()
            .next_opening(at("2026-12-04T19:00:00Z"), berlin.zone())
            .is_some());
        assert_eq!(
            SendWindow::ALWAYS.next_opening(at("2026-12-04T02:00:00Z"), berlin.zone()),
            None
        );
    }

    #[test]
    fn the_same_instant_is_day_in_one_zone_and_night_in_another() {
        let now = at("2026-12-04T14:00:00Z");
        assert_eq!(window().next_opening(now, zone("Europe/London").zone()), None);
        // 06:00 in Los Angeles (PST, -08:00): opens at 17:00 UTC.
        assert_eq!(
            window().next_opening(now, zone("America/Los_Angeles").zone()),
            Some(at("2026-12-04T17:00:00Z"))
        );
        // 19:30 in Kolkata (+05:30) is inside; 21:00 in Tokyo is not.
        assert_eq!(window().next_opening(now, zone("Asia/Kolkata").zone()), None);
        assert_eq!(
            window().next_opening(now, zone("Asia/Tokyo").zone()),
            Some(at("2026-12-05T00:00:00Z"))
        );
    }

    #[test]
    fn daylight_saving_changes_move_the_opening_with_local_time() {
        let new_york = zone("America/New_York");
        // The night clocks go forward (2026-03-08, 02:00 EST -> 03:00 EDT): 01:00 EST
        // waits for 09:00 EDT, 13:00 UTC rather than 14:00.
        assert_eq!(
            window().next_opening(at("2026-03-08T06:00:00Z"), new_york.zone()),
            Some(at("2026-03-08T13:00:00Z"))
        );
        // The night they go back (2026-11-01, 02:00 EDT -> 01:00 EST): 09:00 EST is 14:00 UTC.
        assert_eq!(
            window().next_opening(at("2026-11-01T05:30:00Z"), new_york.zone()),
            Some(at("2026-11-01T14:00:00Z"))
        );
        // An opening inside the gap is the first moment after it: 02:30 does not exist
        // on 2026-03-08, so the window opens an hour later by the clock, at 03:30 EDT (07:30 UTC).
        let early = SendWindow::parse("02:30-20:00").expect("a window");
        assert_eq!(
            early.next_opening(at("2026-03-08T06:00:00Z"), new_york.zone()),
            Some(at("2026-03-08T07:30:00Z"))
        );
    }

    #[test]
    fn across_the_date_line_the_local_day_decides() {
        // Samoa (+13:00) and Honolulu (-10:00) share the clock time but not the date:
        // 2026-12-04T20:00Z is 09:00 on the 5th in Apia and 10:00 on the 4th in Honolulu.
        let now = at("2026-12-04T20:00:00Z");
        assert_eq!(window().next_opening(now, zone("Pacific/Apia").zone()), None);
        assert_eq!(window().next_opening(now, zone("Pacific/Honolulu").zone()), None);
        // An hour earlier, 08:00 on the 5th in Apia: opens an hour later, still the 5th.
        assert_eq!(
            window().next_opening(at("2026-12-04T19:00:00Z"), zone("Pacific/Apia").zone()),
            Some(at("2026-12-04T20:00:00Z"))
        );
        // Kiritimati (+14:00): 21:00 on the 4th UTC is 11:00 on the 5th there.
        assert_eq!(
            window().next_opening(at("2026-12-04T21:00:00Z"), zone("Pacific/Kiritimati").zone()),
            None
        );
    }

    #[test]
    fn an_overnight_window_spans_midnight() {
        let night = SendWindow::parse("20:00-08:00").expect("a window");
        let utc = zone("UTC");
        assert_eq!(night.next_opening(at("2026-12-04T23:00:00Z"), utc.zone()), None);
        assert_eq!(night.next_opening(at("2026-12-04T07:59:00Z"), utc.zone()), None);
        assert_eq!(
            night.next_opening(at("2026-12-04T12:00:00Z"), utc.zone()),
            Some(at("2026-12-04T20:00:00Z"))
        );
    }

    #[test]
    fn a_recipients_zone_comes_from_the_crm_then_the_country_then_the_default() {
        let default = zone("UTC");
        let german = E164::from_wa_id("4915112345678").expect("a number");
        let american = E164::from_wa_id("14155552671").expect("a number");
        assert_eq!(LocalZone::of_recipient(None, &german, &default).name(), "Europe/Berlin");
        // Several local times: the default.
        assert_eq!(LocalZone::of_recipient(None, &american, &default).name(), "UTC");
        let known = zone("america_slash_los_angeles");
        assert_eq!(known.name(), "America/Los_Angeles");
        assert_eq!(
            LocalZone::of_recipient(Some(known), &german, &default).name(),
            "America/Los_Angeles"
        );
        assert_eq!(
            zone("america_slash_port_hyphen_au_hyphen_prince").name(),
            "America/Port-au-Prince"
        );
        assert!(LocalZone::parse("Mars/Olympus_Mons").is_err());
    }

    #[test]
    fn the_country_table_names_only_zones_the_database_knows() {
        assert!(ONE_LOCAL_TIME.windows(2).all(|pair| pair[0].0 < pair[1].0));
        for (country, name) in ONE_LOCAL_TIME {
            assert!(LocalZone::parse(name).is_ok(), "{country}: {name}");
        }
    }

    #[test]
    fn the_cap_counts_the_last_seven_days() {
        let day = 86_400_000;
        let cap = |n: u32| NonZeroU32::new(n).expect("not zero");
        let now = 100 * day;
        assert_eq!(cap_frees_at(&[], cap(2), now), None);
        assert_eq!(cap_frees_at(&[now - day], cap(2), now), None);
        // Two in the week: the next waits until the older is a week old.
        assert_eq!(
            cap_frees_at(&[now - 3 * day, now - day], cap(2), now),
            Some(now + 4 * day)
        );
        // One older than a week does not count.
        assert_eq!(cap_frees_at(&[now - 8 * day, now - day], cap(2), now), None);
        assert_eq!(
            cap_frees_at(&[now - 6 * day, now - 3 * day, now - day], cap(2), now),
            Some(now + 4 * day)
        );
        assert_eq!(cap_frees_at(&[now - day], cap(1), now), Some(now + 6 * day));
    }
}
