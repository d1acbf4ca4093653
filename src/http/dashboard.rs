//! The dashboard under `/admin`: server-rendered HTML (maud, checked at compile time), no
//! JavaScript, charts as inline SVG, one small stylesheet served from here. Users sign in
//! with a password (`referloop users add`); the session lives in an HttpOnly, SameSite
//! cookie, every form carries the session's CSRF token, and actions (retry, void) need the
//! operator role, ask for confirmation and are recorded.

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use maud::{html, Markup, DOCTYPE};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use subtle::ConstantTimeEq;

use super::{words, AppState};
use crate::app::accounts::{self, SignIn, SESSION_MS};
use crate::app::reward;
use crate::clock::for_people as format_ms;
use crate::domain::access::{Action, Role};
use crate::domain::funnel::{Period, MAX_DAYS};
use crate::domain::phone::E164;
use crate::domain::referral::ReferralState;
use crate::domain::state::{Persisted, QueueState};
use crate::store::{AdminSession, Queue, StoreError};
use crate::telemetry::mask_phone;

const COOKIE: &str = "referloop_session";

const STYLE: &str = include_str!("dashboard.css");

/// Headers every dashboard page carries: nothing cached, nothing framed, nothing loaded
/// from elsewhere.
fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn html_page(status: StatusCode, markup: Markup) -> Response {
    secure(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            markup.into_string(),
        )
            .into_response(),
    )
}

/// The page frame: navigation, the signed-in user and the sign-out form.
fn layout(title: &str, session: Option<&AdminSession>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · referloop" }
                link rel="stylesheet" href="/admin/style.css";
            }
            body {
                header {
                    strong { "referloop" }
                    @if let Some(session) = session {
                        nav aria-label="Main" {
                            a href="/admin" { "Funnel" }
                            a href="/admin/economics" { "Economics" }
                            a href="/admin/experiments" { "Experiments" }
                            a href="/admin/referrals" { "Referrals" }
                            a href="/admin/operations" { "Operations" }
                        }
                        form method="post" action="/admin/logout" class="signout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            span { (session.user.name) " (" (session.user.role) ")" }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// Why a dashboard request gets no page of its own. Each answers as a page (or, for a
/// request without a session, the way to the sign-in page); handlers and extractors
/// reach them with `?`.
#[derive(Debug)]
pub enum PageError {
    /// No live session behind the request's cookie.
    SignIn,
    /// The database (or another dependency) failed: logged, never shown.
    Unavailable(String),
    /// Signed in, but the form's CSRF token or the user's role does not allow it.
    Forbidden(&'static str),
    /// A query or form value no page of ours sends; the message says what is accepted.
    Unprocessable(String),
    /// What the request names does not exist (a referral, a dead item).
    NotFound(&'static str),
}

impl PageError {
    fn unavailable(e: impl std::fmt::Display) -> PageError {
        PageError::Unavailable(e.to_string())
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        PageError::unavailable(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = |status, title: &str, body: Markup| html_page(status, layout(title, None, body));
        match self {
            PageError::SignIn => Redirect::to("/admin/login").into_response(),
            PageError::Unavailable(why) => {
                tracing::error!(error = %crate::telemetry::escape(&why), "dashboard: database error");
                page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Temporarily unavailable",
                    html! { p { "Try again in a moment." } },
                )
            }
            PageError::Forbidden(why) => page(StatusCode::FORBIDDEN, "Not allowed", html! { p { (why) } }),
            PageError::Unprocessable(why) => page(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Not understood",
                html! { p { (why) } p { a href="/admin" { "Back to the dashboard" } } },
            ),
            PageError::NotFound(what) => page(
                StatusCode::NOT_FOUND,
                what,
                html! { p { a href="/admin" { "Back to the dashboard" } } },
            ),
        }
    }
}

/// The signed-in user's session, from the request's cookie; without a live one, the
/// request goes to the sign-in page. Read once per request: the other extractors find
/// it in the request's extensions.
#[derive(Clone)]
pub struct Session {
    pub session: AdminSession,
    /// The cookie's token, which signing out ends.
    token: String,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(known) = parts.extensions.get::<Session>() {
            return Ok(known.clone());
        }
        let jar = CookieJar::from_headers(&parts.headers);
        let token = jar
            .get(COOKIE)
            .map(|c| c.value().to_string())
            .ok_or(PageError::SignIn)?;
        let session = accounts::session(&state.store, &token)
            .await?
            .ok_or(PageError::SignIn)?;
        let found = Session { session, token };
        parts.extensions.insert(found.clone());
        Ok(found)
    }
}

/// A signed-in user whose role may `action`; a viewer who tries an action is refused
/// (403) and logged.
async fn allowed(parts: &mut Parts, state: &AppState, action: Action) -> Result<AdminSession, PageError> {
    let Session { session, .. } = Session::from_request_parts(parts, state).await?;
    if !session.user.role.may(action) {
        tracing::warn!(user = %crate::telemetry::escape(&session.user.name), "dashboard: a viewer tried an action");
        return Err(PageError::Forbidden("Your role may only read. Ask an operator."));
    }
    Ok(session)
}

/// A signed-in user: every role may read the dashboard's pages.
pub struct Viewer(pub AdminSession);

impl FromRequestParts<AppState> for Viewer {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        allowed(parts, state, Action::Read).await.map(Viewer)
    }
}

/// A signed-in user whose role may act (retry, void).
pub struct Operator(pub AdminSession);

impl FromRequestParts<AppState> for Operator {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        allowed(parts, state, Action::Act).await.map(Operator)
    }
}

/// A page's query string in its typed form. A value no page of ours sends is refused
/// (422) with its field's own message.
pub struct PageQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for PageQuery<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(PageQuery)
            .map_err(|e| PageError::Unprocessable(e.to_string()))
    }
}

/// A form that carries the session's CSRF token.
pub trait CsrfForm {
    fn csrf(&self) -> &str;
}

/// A form posted from this dashboard: its `csrf` field is the session's token, compared
/// in constant time.
pub struct Posted<T>(pub T);

impl<T: DeserializeOwned + CsrfForm + Send> FromRequest<AppState> for Posted<T> {
    type Rejection = PageError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let Session { session, .. } = Session::from_request_parts(&mut parts, state).await?;
        let Form(form) = Form::<T>::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|e| PageError::Unprocessable(e.body_text()))?;
        let csrf = form.csrf();
        if csrf.is_empty() || !bool::from(csrf.as_bytes().ct_eq(session.csrf.as_bytes())) {
            tracing::warn!(user = %crate::telemetry::escape(&session.user.name), "dashboard: CSRF token missing or wrong");
            return Err(PageError::Forbidden("The form was not sent from this dashboard (its security token did not match). Reload the page and try again."));
        }
        Ok(Posted(form))
    }
}

/// `""` (a form's "any" choice) as no value.
fn blank_as_none<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?;
    Ok(text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
}

/// A number of days a page looks back: 1 to [`MAX_DAYS`]; `""` for none.
fn days<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let Some(text) = blank_as_none(deserializer)? else {
        return Ok(None);
    };
    match text.parse::<i64>() {
        Ok(days) if (1..=MAX_DAYS).contains(&days) => Ok(Some(days)),
        _ => Err(D::Error::custom(format!("Choose between 1 and {MAX_DAYS} days."))),
    }
}

/// A referral state by its stored name; `""` for every state.
fn referral_state<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<ReferralState>, D::Error> {
    let Some(name) = blank_as_none(deserializer)? else {
        return Ok(None);
    };
    ReferralState::parse(&name)
        .map(Some)
        .ok_or_else(|| D::Error::custom("There is no such state: choose one from the list."))
}

pub async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    html_page(
        status,
        layout(
            "Sign in",
            None,
            html! {
                @if let Some(message) = message { p role="alert" class="error" { (message) } }
                form method="post" action="/admin/login" class="login" {
                    label for="name" { "Name" }
                    input id="name" name="name" autocomplete="username" required;
                    label for="password" { "Password" }
                    input id="password" name="password" type="password" autocomplete="current-password" required;
                    button type="submit" { "Sign in" }
                }
            },
        ),
    )
}

pub async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
}

/// The session cookie: for the dashboard's paths only, out of scripts' reach, never sent
/// from another site, and over TLS only when the public URL is https.
fn session_cookie(state: &AppState, token: String, max_age_ms: i64) -> Cookie<'static> {
    Cookie::build((COOKIE, token))
        .path("/admin")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(state.settings.server.public_base_url.is_https())
        .max_age(cookie::time::Duration::milliseconds(max_age_ms))
        .build()
}

pub async fn login(
    State(state): State<AppState>,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> Result<Response, PageError> {
    // A session the client brought along ends here: sign-in always starts a new one.
    if let Some(old) = jar.get(COOKIE) {
        let _ = state.store.end_admin_session(&accounts::token_hash(old.value())).await;
    }
    Ok(
        match accounts::sign_in(&state.store, form.name.trim(), &form.password).await? {
            SignIn::Started { token, .. } => {
                let jar = jar.add(session_cookie(&state, token, SESSION_MS));
                secure((jar, Redirect::to("/admin")).into_response())
            }
            SignIn::Refused => login_page(StatusCode::UNAUTHORIZED, Some("Wrong name or password.")),
            SignIn::Throttled => login_page(
                StatusCode::TOO_MANY_REQUESTS,
                Some("Too many failed attempts for this name. Wait 15 minutes and try again."),
            ),
            SignIn::Busy => login_page(
                StatusCode::TOO_MANY_REQUESTS,
                Some("Too many sign-ins at once. Try again in a moment."),
            ),
        },
    )
}

/// A form whose only field is the CSRF token (signing out).
#[derive(Debug, Deserialize)]
pub struct TokenOnly {
    #[serde(default)]
    csrf: String,
}

impl CsrfForm for TokenOnly {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub async fn logout(
    State(state): State<AppState>,
    session: Session,
    jar: CookieJar,
    _: Posted<TokenOnly>,
) -> Result<Response, PageError> {
    state
        .store
        .end_admin_session(&accounts::token_hash(&session.token))
        .await?;
    let jar = jar.add(session_cookie(&state, String::new(), 0));
    Ok(secure((jar, Redirect::to("/admin/login")).into_response()))
}

#[derive(Debug, Default, Deserialize)]
pub struct DaysQuery {
    /// The last this many days (30 when absent).
    #[serde(default, deserialize_with = "days")]
    days: Option<i64>,
    /// A trigger kind (`nps`, `milestone`) or one milestone (`milestone:renewal`).
    #[serde(default, deserialize_with = "blank_as_none")]
    trigger: Option<String>,
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or("–".to_string(), |r| format!("{:.1} %", r * 100.0))
}

/// Horizontal bars, one per funnel step, scaled to the first.
fn funnel_chart(steps: &[crate::domain::funnel::FunnelStep]) -> Markup {
    let top = steps.first().map_or(1, |s| s.count.max(1)) as f64;
    let height = steps.len() * 28;
    html! {
        svg viewBox=(format!("0 0 400 {height}")) role="img" aria-label="The funnel as bars" class="chart" {
            @for (i, step) in steps.iter().enumerate() {
                @let width = (step.count as f64 / top * 240.0).max(1.0);
                @let y = i * 28;
                text x="0" y=(y + 18) { (words::say(step.step)) }
                rect x="120" y=(y + 4) width=(format!("{width:.1}")) height="20" {}
                text x=(format!("{:.1}", 126.0 + width)) y=(y + 18) { (step.count) }
            }
        }
    }
}

/// The daily chart: a bar per day for its triggers, the converted part darker, with the
/// first and last day written under it.
fn daily_chart(days: &[crate::store::FunnelDay]) -> Markup {
    let most = days.iter().map(|d| d.triggers).max().unwrap_or(1).max(1);
    let width = 350.0 / days.len().max(1) as f64;
    let first = days
        .first()
        .map(|d| format_ms(d.day)[..10].to_string())
        .unwrap_or_default();
    let last = days
        .last()
        .map(|d| format_ms(d.day)[..10].to_string())
        .unwrap_or_default();
    let total: i64 = days.iter().map(|d| d.triggers).sum();
    html! {
        @if total == 0 { p { "No triggers in this period." } } @else {
            // Bars between x 40 and 390, y 10 (the busiest day) and 110 (zero), with the
            // y axis's two values, the first and last dates, and a legend.
            svg viewBox="0 0 400 160" role="img" aria-label=(format!("Triggers per day from {first} to {last}, at most {most} a day")) class="chart" {
                line class="axis" x1="38" y1="10" x2="38" y2="110" {}
                line class="axis" x1="38" y1="110" x2="390" y2="110" {}
                text x="34" y="14" text-anchor="end" { (most) }
                text x="34" y="110" text-anchor="end" { "0" }
                @for (i, day) in days.iter().enumerate() {
                    @let x = 40.0 + i as f64 * width;
                    @let height = day.triggers as f64 / most as f64 * 100.0;
                    @let converted = day.converted as f64 / most as f64 * 100.0;
                    rect x=(format!("{x:.1}")) y=(format!("{:.1}", 110.0 - height)) width=(format!("{:.1}", (width - 1.0).max(0.5))) height=(format!("{height:.1}")) {
                        title { (format_ms(day.day)[..10]) ": " (day.triggers) " triggers, " (day.nominated) " nominated, " (day.converted) " converted" }
                    }
                    rect class="converted" x=(format!("{x:.1}")) y=(format!("{:.1}", 110.0 - converted)) width=(format!("{:.1}", (width - 1.0).max(0.5))) height=(format!("{converted:.1}")) {}
                }
                text x="40" y="126" { (first) }
                text x="390" y="126" text-anchor="end" { (last) }
                rect x="40" y="140" width="10" height="10" {}
                text x="54" y="149" { "triggers" }
                rect class="converted" x="130" y="140" width="10" height="10" {}
                text x="144" y="149" { "of them converted" }
            }
        }
    }
}

/// The trigger filters to offer: each kind seen (all milestones together) and each
/// named milestone.
fn trigger_choices(seen: &[String]) -> Vec<String> {
    let mut choices: Vec<String> = Vec::new();
    for trigger in seen {
        let kind = trigger.split(':').next().unwrap_or(trigger).to_string();
        for choice in [kind, trigger.clone()] {
            if !choices.contains(&choice) {
                choices.push(choice);
            }
        }
    }
    choices.sort();
    choices
}

/// The period's links (7, 30, 90 days) and the form for any number of days and a trigger
/// kind, for the page at `path`.
fn period_nav(path: &str, days: i64, trigger: Option<&str>, triggers: &[String]) -> Markup {
    html! {
        nav aria-label="Period" class="periods" {
            @for d in [7, 30, 90] {
                @if d == days { strong aria-current="page" { (d) " days" } } @else { a href=(format!("{path}?days={d}")) { (d) " days" } }
            }
            form method="get" action=(path) class="custom-period" {
                label for="days" { "Last" }
                input id="days" name="days" type="number" min="1" max="366" value=(days);
                span { "days," }
                label for="trigger" { "trigger" }
                select id="trigger" name="trigger" {
                    option value="" selected[trigger.is_none()] { "all" }
                    @for kind in trigger_choices(triggers) {
                        option value=(kind) selected[trigger == Some(kind.as_str())] { (kind) }
                    }
                }
                button type="submit" { "Show" }
            }
        }
    }
}

/// `/admin`: the funnel, why people dropped out, rewards and top referrers.
pub async fn funnel(
    State(state): State<AppState>,
    Viewer(session): Viewer,
    PageQuery(query): PageQuery<DaysQuery>,
) -> Result<Response, PageError> {
    let days = query.days.unwrap_or(30);
    let period = Period::last_days(days, state.store.now_ms()).map_err(|e| PageError::Unprocessable(e.to_string()))?;
    let store = &state.store;
    let trigger = query.trigger.as_deref();
    let (counts, daily, triggers, dropouts, totals, top, pool) = tokio::try_join!(
        store.funnel(period, trigger),
        store.funnel_days(period, trigger),
        store.funnel_triggers(period),
        store.dropouts(period),
        store.reward_totals(period),
        store.top_referrers(10),
        store.free_pool_codes(),
    )?;
    let steps = counts.steps();
    let rewards = &state.settings.rewards;
    let uses_pool = [&rewards.referrer, &rewards.friend]
        .iter()
        .any(|side| side.kind == crate::domain::reward::RewardKind::CodePool);
    let body = html! {
        (period_nav("/admin", days, trigger, &triggers))
        section aria-labelledby="funnel" {
            h2 id="funnel" { "Funnel, last " (days) " days" @if let Some(t) = trigger { ", " (t) } }
            table {
                thead { tr { th scope="col" { "Step" } th scope="col" { "Count" } th scope="col" { "From the step before" } } }
                tbody {
                    @for step in &steps {
                        tr { th scope="row" title=(step.step) { (words::say(step.step)) } td data-step=(step.step) { (step.count) } td { (percent(step.rate)) } }
                    }
                }
            }
            (funnel_chart(&steps))
            p {
                "Sends held for quiet hours: " strong data-held="quiet_hours" { (counts.held_quiet_hours) }
                "; held by the weekly frequency cap: " strong data-held="frequency_cap" { (counts.held_frequency_cap) }
            }
            p {
                "Promoters reminded: " strong data-reminders="reminded" { (counts.reminded) }
                "; nominations after a reminder: " strong data-reminders="nominated_after" { (counts.nominated_after_reminder) }
                "; conversions of those: " strong data-reminders="converted_after" { (counts.converted_after_reminder) }
            }
            p {
                "Referrers nudged about a friend: " strong data-reminders="nudged" { (counts.nudged) }
                "; of those referrals, converted since: " strong data-reminders="converted_after_nudge" { (counts.converted_after_nudge) }
                "; friends reminded inside their window: " strong data-reminders="friend_reminded" { (counts.friend_reminded) }
            }
            p { "Milestone bonuses granted: " strong data-bonuses="granted" { (counts.bonuses_granted) } }
            h3 { "Triggers per day" }
            (daily_chart(&daily))
        }
        section aria-labelledby="dropouts" {
            h2 id="dropouts" { "Why people dropped out" }
            @for (title, rows) in [("Ineligible triggers", &dropouts.ineligible), ("Refused nominations", &dropouts.refused), ("Message failures", &dropouts.message_failures), ("Opt-outs", &dropouts.opt_outs)] {
                h3 { (title) }
                @if rows.is_empty() { p { "None." } } @else {
                    table { tbody { @for row in rows { tr { th scope="row" title=(row.reason) { (words::reason(&row.reason)) } td { (row.count) } } } } }
                }
            }
        }
        section aria-labelledby="rewards" {
            h2 id="rewards" { "Rewards" }
            @if uses_pool { p { "Unused codes in the pool: " strong data-pool="free" { (pool) } } }
            @if totals.is_empty() { p { "None in this period." } } @else {
                table {
                    thead { tr { th scope="col" { "State" } th scope="col" { "Kind" } th scope="col" { "Count" } th scope="col" { "Value" } } }
                    tbody { @for t in &totals { tr { td title=(t.state.as_str()) { (words::say(t.state.as_str())) } td title=(t.kind.as_str()) { (words::say(t.kind.as_str())) } td { (t.count) } td { (format!("{:.2} {}", t.amount as f64 / 100.0, t.currency.to_uppercase())) } } } }
                }
            }
        }
        section aria-labelledby="referrers" {
            h2 id="referrers" { "Top referrers" }
            @if top.is_empty() { p { "No converted referrals yet." } } @else {
                table {
                    thead { tr { th scope="col" { "Referrer" } th scope="col" { "Nominated" } th scope="col" { "Converted" } } }
                    tbody { @for r in &top { tr { td { (r.name) " (" (r.contact_id) ")" } td { (r.nominated) } td { (r.converted) } } } }
                }
            }
        }
    };
    Ok(html_page(StatusCode::OK, layout("Funnel", Some(&session), body)))
}

/// An amount of the reporting currency, as the page shows it.
fn money(amount: f64, currency: &str) -> String {
    format!("{amount:.2} {currency}")
}

/// `/admin/economics`: what the period's triggers cost and earned, by trigger kind, with
/// what could not be counted and the assumptions behind the figures.
pub async fn economics(
    State(state): State<AppState>,
    Viewer(session): Viewer,
    PageQuery(query): PageQuery<DaysQuery>,
) -> Result<Response, PageError> {
    let days = query.days.unwrap_or(30);
    let period = Period::last_days(days, state.store.now_ms()).map_err(|e| PageError::Unprocessable(e.to_string()))?;
    let trigger = query.trigger.clone();
    let (answer, triggers) = tokio::try_join!(
        super::admin::economics_answer(&state, period, trigger.clone()),
        state.store.funnel_triggers(period),
    )?;
    let currency = answer.currency.as_str();
    let trigger = trigger.as_deref();
    let optional = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("–".to_string(), f);
    let body = html! {
        (period_nav("/admin/economics", days, trigger, &triggers))
        section aria-labelledby="by-trigger" {
            h2 id="by-trigger" { "Cost and return, last " (days) " days" @if let Some(t) = trigger { ", " (t) } }
            p { "The triggers received in the period, each with everything it led to. Amounts in " (currency) "." }
            table {
                thead { tr {
                    th scope="col" { "Trigger" } th scope="col" { "Conversions" } th scope="col" { "Messages" }
                    th scope="col" { "Rewards" } th scope="col" { "Cost" } th scope="col" { "Revenue" }
                    th scope="col" { "Cost per customer" } th scope="col" { "Return" }
                } }
                tbody {
                    @for c in answer.cohorts.iter().chain(std::iter::once(&answer.total)) {
                        tr data-cohort=(c.trigger) {
                            th scope="row" { @if c.trigger == "all" { "All triggers" } @else { (c.trigger) } }
                            td data-figure="conversions" { (c.conversions) }
                            td data-figure="message_cost" { (money(c.message_cost, currency)) }
                            td data-figure="reward_cost" { (money(c.reward_cost, currency)) }
                            td data-figure="cost" { (money(c.cost, currency)) }
                            td data-figure="revenue" { (money(c.revenue, currency)) }
                            td data-figure="cost_per_acquisition" { (optional(c.cost_per_acquisition, &|v| money(v, currency))) }
                            td data-figure="return_on_cost" { (optional(c.return_on_cost, &|v| format!("{v:.2}×"))) }
                        }
                    }
                }
            }
        }
        section aria-labelledby="breakdown" {
            h2 id="breakdown" { "Where the money went" }
            @let total = &answer.total;
            h3 { "Messages, by Meta's pricing category" }
            @if total.messages.is_empty() { p { "No billable message delivered." } } @else {
                table { tbody { @for m in &total.messages {
                    tr data-category=(m.key) { th scope="row" { (m.key) } td { (m.count) " delivered" } td data-figure="amount" { (format!("{:.4} {currency}", m.amount)) } }
                } } }
            }
            p { "Delivered free of charge: " strong data-figure="free_messages" { (total.free_messages) }
                "; billable without a price: " strong data-figure="unpriced_messages" { (total.unpriced_messages) } }
            h3 { "Rewards, by side" }
            @if total.rewards.is_empty() { p { "No reward issued." } } @else {
                table { tbody { @for r in &total.rewards {
                    tr data-side=(r.key) { th scope="row" title=(r.key) { (words::say(&r.key)) } td { (r.count) " issued" } td data-figure="amount" { (money(r.amount, currency)) } }
                } } }
            }
            h3 { "Revenue, by source" }
            @if total.revenue_by_source.is_empty() { p { "No converting purchase." } } @else {
                table { tbody { @for r in &total.revenue_by_source {
                    tr data-source=(r.key) { th scope="row" { (r.key) } td { (r.count) " purchases" } td data-figure="amount" { (money(r.amount, currency)) } }
                } } }
            }
        }
        section aria-labelledby="uncounted" {
            h2 id="uncounted" { "Not counted" }
            @if answer.uncounted.is_empty() { p { "Everything was priced and converted." } } @else {
                table {
                    thead { tr { th scope="col" { "What" } th scope="col" { "Which" } th scope="col" { "Count" } th scope="col" { "Amount, own currency" } } }
                    tbody { @for u in &answer.uncounted {
                        tr data-uncounted=(u.key) {
                            td { @if u.what == "message" { "No price for market:category" } @else { "No exchange rate" } }
                            td { (u.key) } td { (u.count) }
                            td { @if u.what == "money" { (format!("{:.2} {}", u.amount, u.key)) } @else { "–" } }
                        }
                    } }
                }
            }
        }
        section aria-labelledby="assumptions" {
            h2 id="assumptions" { "How these figures are made" }
            ul { @for a in &answer.assumptions { li { (a) } } }
        }
    };
    Ok(html_page(StatusCode::OK, layout("Economics", Some(&session), body)))
}

/// `/admin/experiments`: each configured experiment, its variants' funnels, conversion
/// rates with their intervals, cost per customer and verdict against the control.
pub async fn experiments(State(state): State<AppState>, Viewer(session): Viewer) -> Result<Response, PageError> {
    let mut answers = Vec::new();
    for config in &state.settings.experiments {
        answers.push(super::admin::experiment_answer(&state, config).await?);
    }
    let rate = |r: Option<f64>| r.map_or("–".to_string(), |r| format!("{:.1} %", r * 100.0));
    let body = html! {
        @if answers.is_empty() {
            p { "No experiment is configured. Add one under " code { "[[experiments]]" } " in the configuration." }
        }
        @for e in &answers {
            section aria-labelledby=(format!("experiment-{}", e.name)) data-experiment=(e.name) {
                h2 id=(format!("experiment-{}", e.name)) { (e.name) }
                p {
                    (e.starts) " to " (e.ends) " · " strong data-figure="status" { (e.status) }
                    " · planned sample: " strong data-figure="planned_sample_size" { (e.planned_sample_size) } " invites per variant"
                }
                @if let Some(reason) = &e.refused_because { p class="refused" { "Refused: " (reason) } }
                table {
                    thead { tr {
                        th scope="col" { "Variant" } th scope="col" { "Changes" } th scope="col" { "Invited" }
                        th scope="col" { "Nominated" } th scope="col" { "Converted" } th scope="col" { "Conversion rate (95 % interval)" }
                        th scope="col" { "Difference to control (95 % interval)" } th scope="col" { "Cost per customer" } th scope="col" { "Verdict" }
                    } }
                    tbody {
                        @for v in &e.variants {
                            tr data-variant=(v.name) {
                                th scope="row" { (v.name) @if v.control && v.name != "control" { " (control)" } }
                                td { @if v.changes.is_empty() { "nothing" } @else { @for c in &v.changes { code { (c) } " " } } }
                                td data-figure="invited" { (v.invited) }
                                td data-figure="nominated" { (v.nominated) }
                                td data-figure="converted" { (v.converted) }
                                td data-figure="conversion_rate" {
                                    (rate(v.conversion_rate))
                                    @if let Some([low, high]) = v.conversion_rate_interval { " (" (rate(Some(low))) "–" (rate(Some(high))) ")" }
                                }
                                td data-figure="difference" {
                                    @if let Some(c) = &v.versus_control {
                                        (format!("{:+.1} points ({:+.1} to {:+.1}), p = {:.3}", c.difference * 100.0, c.interval[0] * 100.0, c.interval[1] * 100.0, c.p_value))
                                    } @else { "–" }
                                }
                                td data-figure="cost_per_acquisition" { (v.cost_per_acquisition.map_or("–".to_string(), |c| money(c, &e.currency))) }
                                td data-figure="verdict" { (v.verdict) }
                            }
                        }
                    }
                }
                p { small { (e.method) } }
            }
        }
    };
    Ok(html_page(StatusCode::OK, layout("Experiments", Some(&session), body)))
}

#[derive(Debug, Default, Deserialize)]
pub struct ReferralsQuery {
    /// A code, a HubSpot contact id or a phone number.
    #[serde(default, deserialize_with = "blank_as_none")]
    q: Option<String>,
    /// One state's stored name; empty for every state.
    #[serde(default, deserialize_with = "referral_state")]
    state: Option<ReferralState>,
    /// Nominated in the last this many days; absent or empty for all time.
    #[serde(default, deserialize_with = "days")]
    days: Option<i64>,
    /// The cursor: referrals older than this id.
    before: Option<i64>,
}

/// The periods the referral list offers, in days (`None`: all time).
const LIST_PERIODS: [(Option<i64>, &str); 4] = [
    (Some(7), "Last 7 days"),
    (Some(30), "Last 30 days"),
    (Some(90), "Last 90 days"),
    (None, "All time"),
];

/// Rows per page of the referral list.
const LIST_PAGE: i64 = 50;

/// `/admin/referrals`: the newest referrals, filtered by state and period, page by page;
/// or those found by code, contact id or phone.
pub async fn referrals(
    State(state): State<AppState>,
    Viewer(session): Viewer,
    PageQuery(query): PageQuery<ReferralsQuery>,
) -> Result<Response, PageError> {
    let q = query.q.as_deref();
    let (wanted, days) = (query.state, query.days);
    let since = match days {
        None => None,
        Some(days) => Some(
            Period::last_days(days, state.store.now_ms())
                .map_err(|e| PageError::Unprocessable(e.to_string()))?
                .from,
        ),
    };
    let found = match q {
        Some(q) => {
            let phone = E164::parse_mobile(q, &state.settings.programme.default_region).ok();
            state.store.find_referrals(q, phone.as_ref()).await
        }
        None => state.store.referrals_page(wanted, since, query.before, LIST_PAGE).await,
    };
    let rows = found?;
    // The next page keeps the filters.
    let older = (q.is_none() && rows.len() as i64 == LIST_PAGE)
        .then(|| rows.last().map(|r| r.id))
        .flatten()
        .map(|before| {
            let mut link = format!("/admin/referrals?before={before}");
            if let Some(s) = wanted {
                link.push_str(&format!("&state={}", s.as_str()));
            }
            if let Some(days) = days {
                link.push_str(&format!("&days={days}"));
            }
            link
        });
    let body = html! {
        form method="get" action="/admin/referrals" role="search" {
            label for="q" { "Code, HubSpot contact id or phone" }
            input id="q" name="q" value=(q.unwrap_or(""));
            button type="submit" { "Find" }
        }
        form method="get" action="/admin/referrals" class="filters" {
            label for="state" { "State" }
            select id="state" name="state" {
                option value="" selected[wanted.is_none()] { "Every state" }
                @for s in ReferralState::ALL {
                    option value=(s.as_str()) selected[wanted == Some(*s)] { (words::say(s.as_str())) }
                }
            }
            label for="days" { "Nominated" }
            select id="days" name="days" {
                @for (period, label) in &LIST_PERIODS {
                    option value=(period.map_or(String::new(), |d| d.to_string())) selected[days == *period] { (label) }
                }
            }
            button type="submit" { "Show" }
        }
        @if rows.is_empty() { p { "No referral found." } } @else {
            table {
                thead { tr { th scope="col" { "Referral" } th scope="col" { "Nominated" } th scope="col" { "State" } th scope="col" { "Referrer" } th scope="col" { "Friend" } th scope="col" { "Code" } } }
                tbody {
                    @for r in &rows {
                        tr {
                            td { a href=(format!("/admin/referrals/{}", r.id)) { "#" (r.id) } }
                            td { time datetime=(r.nominated_at) { (format_ms(r.nominated_at)) } }
                            td title=(r.state.as_str()) { (words::say(r.state.as_str())) }
                            td { (r.referrer_name) " " (mask_phone(E164::text_of(r.referrer_phone.as_ref()))) }
                            td { (r.friend_name) " " (mask_phone(E164::text_of(r.friend_phone.as_ref()))) }
                            td { (r.referral_code) }
                        }
                    }
                }
            }
            @if let Some(link) = older { p { a href=(link) { "Older referrals" } } }
        }
    };
    Ok(html_page(StatusCode::OK, layout("Referrals", Some(&session), body)))
}

/// `/admin/referrals/{id}`: one referral's timeline.
pub async fn referral(
    State(state): State<AppState>,
    Viewer(session): Viewer,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    // Any other path segment names no referral: the same answer as an unknown number.
    let no_such = || PageError::NotFound("No such referral");
    let id = id.parse::<i64>().map_err(|_| no_such())?;
    let referral = state.store.referral(id).await?.ok_or_else(no_such)?;
    let timeline = state.store.timeline(&referral).await?;
    let body = html! {
        dl {
            dt { "State" } dd data-referral="state" title=(referral.state.as_str()) { (words::say(referral.state.as_str())) }
            dt { "Referrer" } dd { (referral.referrer_name) " (" (referral.referrer_contact_id) ", " (mask_phone(E164::text_of(referral.referrer_phone.as_ref()))) ")" }
            dt { "Friend" } dd { (referral.friend_name) " (" (mask_phone(E164::text_of(referral.friend_phone.as_ref()))) ")" }
            dt { "Code" } dd { (referral.referral_code) }
        }
        h2 { "Timeline" }
        ol class="timeline" {
            @for entry in timeline.iter().filter(|e| e.kind != OUTSIDE_CALL) {
                li title=(entry.what) { time datetime=(entry.at) { (format_ms(entry.at)) } " " (words::sentence(&entry.what)) }
            }
        }
        @let calls: Vec<_> = timeline.iter().filter(|e| e.kind == OUTSIDE_CALL).collect();
        @if !calls.is_empty() {
            details class="engineering" {
                summary { "Engineering details: the calls to HubSpot, WhatsApp and Stripe (" (calls.len()) ")" }
                ol { @for entry in &calls { li { time datetime=(entry.at) { (format_ms(entry.at)) } " " (entry.what) } } }
            }
        }
    };
    Ok(html_page(
        StatusCode::OK,
        layout(&format!("Referral #{id}"), Some(&session), body),
    ))
}

/// The timeline entries of outside calls: for engineers, folded away.
const OUTSIDE_CALL: &str = "outside call";

/// `/admin/operations`: dead work with "retry", pending rewards with "void".
pub async fn operations(State(state): State<AppState>, Viewer(session): Viewer) -> Result<Response, PageError> {
    let store = &state.store;
    let (inbox, jobs, pending, actions) = tokio::try_join!(
        store.list(Queue::Inbox, Some(QueueState::Dead), 100),
        store.list(Queue::Jobs, Some(QueueState::Dead), 100),
        store.pending_rewards(100),
        store.admin_actions(20),
    )?;
    let operator = session.user.role == Role::Operator;
    let body = html! {
        h2 { "Dead work" }
        @if inbox.is_empty() && jobs.is_empty() { p { "Nothing is dead." } } @else {
            table {
                thead { tr { th scope="col" { "Item" } th scope="col" { "Kind" } th scope="col" { "Last error" } th scope="col" { "Action" } } }
                tbody {
                    @for (queue, items) in [(Queue::Inbox.name(), &inbox), (Queue::Jobs.name(), &jobs)] {
                        @for item in items.iter() {
                            tr {
                                td { (queue) " #" (item.id) }
                                td { (item.kind) }
                                td { (item.last_error.as_deref().unwrap_or("")) }
                                td {
                                    form method="post" action="/admin/operations/retry" {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        input type="hidden" name="queue" value=(queue);
                                        input type="hidden" name="id" value=(item.id);
                                        button type="submit" disabled[!operator] aria-label=(format!("Retry {queue} item {}", item.id)) { "Retry…" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Pending rewards" }
        @if pending.is_empty() { p { "No reward is waiting." } } @else {
            table {
                thead { tr { th scope="col" { "Referral" } th scope="col" { "For" } th scope="col" { "Reward" } th scope="col" { "Action" } } }
                tbody {
                    @for r in &pending {
                        tr {
                            td { a href=(format!("/admin/referrals/{}", r.referral_id)) { "#" (r.referral_id) } }
                            td { (r.beneficiary.as_str()) " " (mask_phone(E164::text_of(r.phone.as_ref()))) }
                            td { (r.kind.as_str()) " " (format!("{:.2} {}", r.amount as f64 / 100.0, r.currency.to_uppercase())) }
                            td {
                                form method="post" action="/admin/operations/void" {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    input type="hidden" name="id" value=(r.referral_id);
                                    button type="submit" disabled[!operator] aria-label=(format!("Void the rewards of referral {}", r.referral_id)) { "Void…" }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !operator { p class="note" { "Your role may only read: retry and void need an operator." } }
        h2 { "Recent actions" }
        @if actions.is_empty() { p { "None yet." } } @else {
            ul { @for a in &actions { li { (format_ms(a.at)) ": " (a.actor) " — " (a.action) " " (a.target) } } }
        }
    };
    Ok(html_page(StatusCode::OK, layout("Operations", Some(&session), body)))
}

/// `confirm=yes` acts; anything else (or nothing) asks first.
fn confirmed<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.as_deref() == Some("yes"))
}

/// A queue by its name (`inbox`, `jobs`).
fn queue_named<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Queue, D::Error> {
    let name = String::deserialize(deserializer)?;
    Queue::named(&name).ok_or_else(|| D::Error::custom(format!("there is no queue `{name}`")))
}

/// Retry a dead item.
#[derive(Debug, Deserialize)]
pub struct RetryForm {
    #[serde(default)]
    csrf: String,
    #[serde(deserialize_with = "queue_named")]
    queue: Queue,
    id: i64,
    #[serde(default, deserialize_with = "confirmed", rename = "confirm")]
    confirmed: bool,
}

impl CsrfForm for RetryForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// Void a referral's rewards that are not issued yet.
#[derive(Debug, Deserialize)]
pub struct VoidForm {
    #[serde(default)]
    csrf: String,
    /// The referral.
    id: i64,
    #[serde(default, deserialize_with = "confirmed", rename = "confirm")]
    confirmed: bool,
}

impl CsrfForm for VoidForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The confirmation step of an action: the same form again, with `confirm=yes`.
fn confirm_page(session: &AdminSession, action: &str, question: &str, fields: &[(&str, String)]) -> Response {
    let body = html! {
        p { (question) }
        form method="post" action=(action) {
            input type="hidden" name="csrf" value=(session.csrf);
            @for (name, value) in fields { input type="hidden" name=(name) value=(value); }
            input type="hidden" name="confirm" value="yes";
            button type="submit" { "Confirm" }
            " "
            a href="/admin/operations" { "Cancel" }
        }
    };
    html_page(StatusCode::OK, layout("Confirm", Some(session), body))
}

/// `POST /admin/operations/retry` (operator): asks, then re-queues a dead item.
pub async fn retry(
    State(state): State<AppState>,
    Operator(session): Operator,
    Posted(form): Posted<RetryForm>,
) -> Result<Response, PageError> {
    let (queue, id) = (form.queue, form.id);
    if !form.confirmed {
        let question = format!("Retry {} item #{id} with fresh attempts?", queue.name());
        let fields = [("queue", queue.name().to_string()), ("id", id.to_string())];
        return Ok(confirm_page(&session, "/admin/operations/retry", &question, &fields));
    }
    let actor = format!("user:{}", session.user.name);
    state.store.retry_dead_by(queue, id, &actor).await?;
    Ok(secure(Redirect::to("/admin/operations").into_response()))
}

/// `POST /admin/operations/void` (operator): asks, then voids a referral's pending rewards.
pub async fn void(
    State(state): State<AppState>,
    Operator(session): Operator,
    Posted(form): Posted<VoidForm>,
) -> Result<Response, PageError> {
    let referral_id = form.id;
    if !form.confirmed {
        let question = format!("Void the rewards of referral #{referral_id} that are not issued yet?");
        let fields = [("id", referral_id.to_string())];
        return Ok(confirm_page(&session, "/admin/operations/void", &question, &fields));
    }
    let actor = format!("user:{}", session.user.name);
    reward::void_by(&state.services, referral_id, &actor)
        .await
        .map_err(PageError::unavailable)?;
    Ok(secure(Redirect::to("/admin/operations").into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_are_offered_together_and_by_name() {
        let seen = [
            "milestone:renewal".to_string(),
            "nps".to_string(),
            "milestone".to_string(),
        ];
        assert_eq!(trigger_choices(&seen), ["milestone", "milestone:renewal", "nps"]);
    }

    #[test]
    fn forms_and_queries_are_typed_or_refused() {
        let retry: RetryForm = serde_urlencoded::from_str("csrf=t&queue=jobs&id=7&confirm=yes").expect("a retry");
        assert_eq!((retry.queue, retry.id, retry.confirmed), (Queue::Jobs, 7, true));
        let asked: RetryForm = serde_urlencoded::from_str("csrf=t&queue=inbox&id=7&confirm=").expect("a question");
        assert!(!asked.confirmed);
        assert!(serde_urlencoded::from_str::<RetryForm>("csrf=t&queue=outbox&id=7").is_err());
        let listed: ReferralsQuery = serde_urlencoded::from_str("q=&state=&days=").expect("every referral");
        assert_eq!((listed.q, listed.state, listed.days), (None, None, None));
        let refused = serde_urlencoded::from_str::<ReferralsQuery>("days=0").map(|_| ());
        assert!(refused.is_err_and(|e| e.to_string().contains("between 1 and 366")));
    }
}
