//! The Graph API request bodies for every message referloop sends, in the shapes Meta
//! documents: templates by `[templates]`, and the texts referloop writes itself from the
//! recipient's language's catalogue (`templates/messages/`). The caller sets
//! `biz_opaque_callback_data` (the message's idempotency key).

use serde_json::{json, Value};

use crate::catalogue::{fill, Catalogue};
use crate::config::{FlowKind, Settings, TemplateParameter};
use crate::domain::messaging::first_name;
use crate::domain::nomination::{single_line, NominationRefusal};

fn envelope(to: &str, kind: &str, content: Value) -> Value {
    let mut body = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": kind,
    });
    body[kind] = content;
    body
}

fn text_params(values: &[String]) -> Value {
    Value::Array(values.iter().map(|v| json!({"type": "text", "text": v})).collect())
}

pub struct Template<'a> {
    pub to: &'a str,
    pub name: &'a str,
    pub language: &'a str,
    pub body_params: Vec<String>,
    /// (button index, code)
    pub copy_code: Option<(u8, &'a str)>,
    /// (button index, payload)
    pub quick_replies: Vec<(u8, String)>,
    /// (button index, flow token)
    pub flow_button: Option<(u8, &'a str)>,
}

pub fn template(t: Template<'_>) -> Value {
    let mut components = vec![];
    if !t.body_params.is_empty() {
        components.push(json!({"type": "body", "parameters": text_params(&t.body_params)}));
    }
    if let Some((index, code)) = t.copy_code {
        components.push(
            json!({"type": "button", "sub_type": "copy_code", "index": index.to_string(),
            "parameters": [{"type": "coupon_code", "coupon_code": code}]}),
        );
    }
    for (index, payload) in &t.quick_replies {
        components.push(
            json!({"type": "button", "sub_type": "quick_reply", "index": index.to_string(),
            "parameters": [{"type": "payload", "payload": payload}]}),
        );
    }
    if let Some((index, token)) = t.flow_button {
        components.push(json!({"type": "button", "sub_type": "flow", "index": index.to_string(),
            "parameters": [{"type": "action", "action": {"flow_token": token}}]}));
    }
    envelope(
        t.to,
        "template",
        // Meta's contract: a button's index is a string, and the language names its policy.
        json!({"name": t.name, "language": {"policy": "deterministic", "code": t.language}, "components": components}),
    )
}

/// Free-form text inside the 24-hour window.
pub fn text(to: &str, body: &str) -> Value {
    envelope(to, "text", json!({"preview_url": false, "body": body}))
}

/// The values a template body parameter can take, for one message.
pub struct Params<'a> {
    pub first_name: &'a str,
    pub code: &'a str,
    pub friend_name: &'a str,
    pub referrer_name: &'a str,
    pub personal_message: &'a str,
    pub reward: &'a str,
    pub share_link: &'a str,
    pub milestone: &'a str,
}

impl<'a> Params<'a> {
    /// For messages about the recipient alone: every name parameter is their name.
    fn recipient(first_name: &'a str, code: &'a str) -> Params<'a> {
        Params {
            first_name,
            code,
            friend_name: first_name,
            referrer_name: first_name,
            personal_message: first_name,
            reward: first_name,
            share_link: first_name,
            milestone: first_name,
        }
    }
}

fn params(order: &[TemplateParameter], p: &Params<'_>) -> Vec<String> {
    order
        .iter()
        .map(|parameter| match parameter {
            TemplateParameter::FirstName => p.first_name,
            TemplateParameter::Code => p.code,
            TemplateParameter::FriendName => p.friend_name,
            TemplateParameter::ReferrerName => p.referrer_name,
            TemplateParameter::PersonalMessage => p.personal_message,
            TemplateParameter::Reward => p.reward,
            TemplateParameter::ShareLink => p.share_link,
            TemplateParameter::Milestone => p.milestone,
        })
        .map(str::to_string)
        .collect()
}

/// A name as a greeting uses it, with a fallback for an unknown name.
fn name_or(name: &str, fallback: &str) -> String {
    if name.trim().is_empty() {
        fallback.to_string()
    } else {
        first_name(name)
    }
}

/// `tmpl_referral_invite`: the code (copy-code button), "Refer someone" and "Stop".
pub fn invite(settings: &Settings, to: &str, language: &str, name: &str, code: &str, invite_id: i64) -> Value {
    let t = &settings.templates;
    with_invite_buttons(
        settings,
        (&t.invite, &t.invite_body),
        to,
        language,
        name,
        code,
        invite_id,
    )
}

/// A template laid out as the invite: `(name, body parameters)`, with the invite's buttons.
fn with_invite_buttons(
    settings: &Settings,
    (name, body): (&str, &[TemplateParameter]),
    to: &str,
    language: &str,
    recipient: &str,
    code: &str,
    invite_id: i64,
) -> Value {
    let t = &settings.templates;
    let first = name_or(recipient, &settings.catalogues.get(language).replies.unknown_name);
    let values = Params::recipient(&first, code);
    template(Template {
        to,
        name,
        language,
        body_params: params(body, &values),
        copy_code: Some((t.invite_copy_code_button, code)),
        quick_replies: vec![
            (t.invite_refer_button, format!("refer:{invite_id}")),
            (t.invite_stop_button, "stop".into()),
        ],
        flow_button: None,
    })
}

/// `tmpl_referral_reminder`: the invite again, in other words, with its buttons.
pub fn reminder(settings: &Settings, to: &str, language: &str, name: &str, code: &str, invite_id: i64) -> Value {
    let t = &settings.templates;
    with_invite_buttons(
        settings,
        (&t.reminder, &t.reminder_body),
        to,
        language,
        name,
        code,
        invite_id,
    )
}

/// `tmpl_referral_flow`: the nomination Flow as a template (outside any window).
pub fn flow_template(settings: &Settings, to: &str, language: &str, name: &str, code: &str, token: &str) -> Value {
    let t = &settings.templates;
    let first = name_or(name, &settings.catalogues.get(language).replies.unknown_name);
    let values = Params::recipient(&first, code);
    template(Template {
        to,
        name: &t.flow,
        language,
        body_params: params(&t.flow_body, &values),
        copy_code: None,
        quick_replies: vec![],
        flow_button: Some((t.flow_button, token)),
    })
}

/// The Flow for a language, as `referloop setup whatsapp` names them: the static Flow is
/// `<flow_name>` in the default language (or `templates.flow_id`) and
/// `<flow_name>_<language>` in the others; the endpoint Flow adds `_endpoint` after
/// `<flow_name>`, so switching `whatsapp.flow_kind` creates Flows of its own (a published
/// Flow's JSON cannot be replaced).
pub fn flow_name(settings: &Settings, language: &str) -> String {
    let t = &settings.templates;
    let base = match settings.whatsapp.flow_kind {
        FlowKind::Static => t.flow_name.clone(),
        FlowKind::Endpoint => format!("{}_endpoint", t.flow_name),
    };
    if language == t.default_language {
        base
    } else {
        format!("{base}_{language}")
    }
}

/// The nomination Flow as an interactive message, inside the window the tap opened.
pub fn flow_prompt(settings: &Settings, to: &str, language: &str, name: &str, token: &str) -> Value {
    let t = &settings.templates;
    let texts = &settings.catalogues.get(language).replies;
    let greeting = if name.trim().is_empty() {
        String::new()
    } else {
        format!(", {}", first_name(name))
    };
    let body_text = fill(&texts.flow_prompt, &[("greeting", &greeting)]);
    let mut parameters = json!({
        "flow_message_version": "3",
        "flow_cta": texts.flow_cta,
        "flow_token": token,
    });
    match settings.whatsapp.flow_kind {
        FlowKind::Static => {
            parameters["flow_action"] = json!("navigate");
            parameters["flow_action_payload"] = json!({"screen": t.flow_screen});
        }
        // The client asks the endpoint for the first screen (INIT); Meta refuses a
        // payload with this action.
        FlowKind::Endpoint => parameters["flow_action"] = json!("data_exchange"),
    }
    let by_id = settings.whatsapp.flow_kind == FlowKind::Static && language == t.default_language;
    if by_id && !t.flow_id.is_empty() {
        parameters["flow_id"] = json!(t.flow_id);
    } else {
        parameters["flow_name"] = json!(flow_name(settings, language));
    }
    envelope(
        to,
        "interactive",
        json!({"type": "flow", "body": {"text": body_text}, "action": {"name": "flow", "parameters": parameters}}),
    )
}

/// The template (name, language) a message we render sends, if it is a template.
pub fn template_of(body: &str) -> Option<(String, String)> {
    let body: Value = serde_json::from_str(body).ok()?;
    let name = body.pointer("/template/name")?.as_str()?.to_string();
    let language = body.pointer("/template/language/code")?.as_str()?.to_string();
    Some((name, language))
}

/// The flow_token inside a Flow message we sent (template or interactive).
pub fn flow_token_of(body: &str) -> Option<String> {
    let body: Value = serde_json::from_str(body).ok()?;
    let interactive = body.pointer("/interactive/action/parameters/flow_token");
    let in_template = || {
        body.pointer("/template/components")
            .and_then(Value::as_array)
            .and_then(|components| {
                components
                    .iter()
                    .find_map(|c| c.pointer("/parameters/0/action/flow_token"))
            })
    };
    interactive
        .or_else(in_template)
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// What the messages about one referral say of it.
pub struct ReferralText<'a> {
    pub code: &'a str,
    pub referrer_name: &'a str,
    pub friend_name: &'a str,
    pub personal_message: Option<&'a str>,
    pub language: &'a str,
}

impl ReferralText<'_> {
    fn texts<'s>(&self, settings: &'s Settings) -> &'s Catalogue {
        settings.catalogues.get(self.language)
    }

    fn friend_first(&self, settings: &Settings) -> String {
        // A code-only referral knows no name (Meta refuses empty parameters).
        name_or(self.friend_name, &self.texts(settings).replies.unknown_friend)
    }

    fn referrer_first(&self, settings: &Settings) -> String {
        name_or(self.referrer_name, &self.texts(settings).replies.unknown_referrer)
    }

    fn personal(&self, settings: &Settings) -> String {
        self.personal_message
            .map(single_line)
            .unwrap_or_else(|| self.texts(settings).replies.default_personal_message.clone())
    }

    /// (friend's first name, referrer's first name, personal message)
    fn names(&self, settings: &Settings) -> (String, String, String) {
        (
            self.friend_first(settings),
            self.referrer_first(settings),
            self.personal(settings),
        )
    }
}

/// `tmpl_referral_friend_invite` to a consenting friend.
pub fn friend_invite(settings: &Settings, r: &ReferralText<'_>, to: &str) -> Value {
    let t = &settings.templates;
    let (friend, referrer, personal) = r.names(settings);
    let values = Params {
        first_name: &referrer,
        code: r.code,
        friend_name: &friend,
        referrer_name: &referrer,
        personal_message: &personal,
        reward: r.code,
        share_link: r.code,
        milestone: r.code,
    };
    template(Template {
        to,
        name: &t.friend_invite,
        language: r.language,
        body_params: params(&t.friend_invite_body, &values),
        copy_code: Some((t.friend_invite_copy_code_button, r.code)),
        // The payload is ours whatever the language of the button's label.
        quick_replies: vec![(t.friend_invite_stop_button, "stop".into())],
        flow_button: None,
    })
}

/// `https://wa.me/<business number>?text=<the prefilled text with the code>`: the configured
/// number, else the one Meta's webhook displayed.
fn click_to_chat(settings: &Settings, r: &ReferralText<'_>, business_number: &str) -> String {
    let configured = &settings.whatsapp.business_number;
    let number: String = if configured.is_empty() {
        business_number
    } else {
        configured.as_str()
    }
    .chars()
    .filter(char::is_ascii_digit)
    .collect();
    let prefilled = fill(&r.texts(settings).replies.share_prefill, &[("code", r.code)]);
    format!(
        "https://wa.me/{number}?text={}",
        url::form_urlencoded::byte_serialize(prefilled.as_bytes()).collect::<String>()
    )
}

/// `tmpl_referral_nudge` to the referrer: the friend has not converted; a link to forward.
pub fn nudge(settings: &Settings, r: &ReferralText<'_>, to: &str, business_number: &str) -> Value {
    let t = &settings.templates;
    let (friend, referrer) = (r.friend_first(settings), r.referrer_first(settings));
    let link = click_to_chat(settings, r, business_number);
    let values = Params {
        friend_name: &friend,
        share_link: &link,
        ..Params::recipient(&referrer, r.code)
    };
    template(Template {
        to,
        name: &t.nudge,
        language: r.language,
        body_params: params(&t.nudge_body, &values),
        copy_code: None,
        quick_replies: vec![(t.nudge_stop_button, "stop".into())],
        flow_button: None,
    })
}

/// The forwardable message with a click-to-chat link, to the referrer.
pub fn share_link(settings: &Settings, r: &ReferralText<'_>, to: &str, business_number: &str) -> Value {
    let texts = &r.texts(settings).replies;
    let link = click_to_chat(settings, r, business_number);
    let (friend, referrer, personal) = r.names(settings);
    let body = fill(
        &texts.share_link,
        &[
            ("friend_name", &friend),
            ("referrer_name", &referrer),
            ("personal_message", &personal),
            ("code", r.code),
            ("link", &link),
        ],
    );
    text(to, &body)
}

/// The friend's reminder, inside the window their message opened.
pub fn friend_reminder(settings: &Settings, r: &ReferralText<'_>, to: &str) -> Value {
    let (friend, referrer) = (r.friend_first(settings), r.referrer_first(settings));
    let body = fill(
        &r.texts(settings).replies.friend_reminder,
        &[("friend_name", &friend), ("referrer_name", &referrer), ("code", r.code)],
    );
    text(to, &body)
}

/// The welcome to a friend who wrote to us through the share link.
pub fn friend_welcome(settings: &Settings, r: &ReferralText<'_>, to: &str) -> Value {
    let (friend, referrer, personal) = r.names(settings);
    let body = fill(
        &r.texts(settings).replies.friend_welcome,
        &[
            ("friend_name", &friend),
            ("referrer_name", &referrer),
            ("personal_message", &personal),
            ("code", r.code),
        ],
    );
    text(to, &body)
}

/// A refused nomination, to the referrer, in their language.
pub fn refusal(settings: &Settings, language: &str, refusal: &NominationRefusal, friend_name: &str, to: &str) -> Value {
    text(to, &settings.catalogues.get(language).refusal(refusal, friend_name))
}

/// `tmpl_referral_thanks` to the referrer.
pub fn thanks(settings: &Settings, r: &ReferralText<'_>, to: &str) -> Value {
    let t = &settings.templates;
    let (friend, referrer) = (r.friend_first(settings), r.referrer_first(settings));
    let values = Params {
        friend_name: &friend,
        ..Params::recipient(&referrer, r.code)
    };
    template(Template {
        to,
        name: &t.thanks,
        language: r.language,
        body_params: params(&t.thanks_body, &values),
        copy_code: None,
        quick_replies: vec![],
        flow_button: None,
    })
}

/// `tmpl_referral_reward` to a beneficiary; `given` is the code or the description.
pub fn reward(settings: &Settings, to: &str, language: &str, name: &str, given: &str) -> Value {
    let t = &settings.templates;
    let first = first_name(name);
    let values = Params {
        reward: given,
        ..Params::recipient(&first, given)
    };
    template(Template {
        to,
        name: &t.reward,
        language,
        body_params: params(&t.reward_body, &values),
        copy_code: None,
        quick_replies: vec![],
        flow_button: None,
    })
}

/// `tmpl_referral_bonus` to a referrer who reached a milestone: `given` is the code or the
/// description.
pub fn bonus(settings: &Settings, to: &str, language: &str, name: &str, conversions: i64, given: &str) -> Value {
    let t = &settings.templates;
    let first = first_name(name);
    let reached = conversions.to_string();
    let values = Params {
        reward: given,
        milestone: &reached,
        ..Params::recipient(&first, given)
    };
    template(Template {
        to,
        name: &t.bonus,
        language,
        body_params: params(&t.bonus_body, &values),
        copy_code: None,
        quick_replies: vec![],
        flow_button: None,
    })
}

/// The acknowledgement of a stop keyword, in the keyword's language.
pub fn opt_out_ack(settings: &Settings, language: &str, to: &str) -> Value {
    text(to, &settings.catalogues.get(language).replies.opt_out_ack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_body_matches_the_documented_shape() {
        let body = template(Template {
            to: "+447911123456",
            name: "tmpl_referral_invite",
            language: "en_US",
            body_params: vec!["Zoë".into(), "ZEK7Q2".into()],
            copy_code: Some((0, "ZEK7Q2")),
            quick_replies: vec![(1, "refer:7".into())],
            flow_button: None,
        });
        assert_eq!(body["type"], "template");
        assert_eq!(body["template"]["components"][0]["parameters"][0]["text"], "Zoë");
        assert_eq!(body["template"]["components"][1]["sub_type"], "copy_code");
        assert_eq!(
            body["template"]["components"][1]["parameters"][0]["coupon_code"],
            "ZEK7Q2"
        );
        assert_eq!(body["template"]["components"][2]["parameters"][0]["payload"], "refer:7");
    }

    #[test]
    fn flow_tokens_are_found_in_either_shape() {
        let settings = Settings::load_from(None, Vec::new()).expect("defaults");
        let interactive = flow_prompt(&settings, "+447911123456", "en_US", "Ana Lima", "tok1");
        assert_eq!(flow_token_of(&interactive.to_string()).as_deref(), Some("tok1"));
        assert!(interactive["interactive"]["body"]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Thanks, Ana!")));
        let templated = flow_template(&settings, "+447911123456", "en_US", "Ana", "ANA7", "tok2");
        assert_eq!(flow_token_of(&templated.to_string()).as_deref(), Some("tok2"));
        assert_eq!(flow_token_of("not json"), None);
    }

    #[test]
    fn replies_come_from_configuration() {
        let settings = Settings::load_from(None, Vec::new()).expect("defaults");
        let r = ReferralText {
            code: "ANA7KQ2",
            referrer_name: "Ana Lima",
            friend_name: "Zoë Ñúñez",
            personal_message: Some("Você vai adorar!\nÉ ótimo"),
            language: "en_US",
        };
        let share = share_link(&settings, &r, "+447911123456", "+1 555 000 1234");
        let body = share["text"]["body"].as_str().unwrap_or_default();
        assert!(body.contains("Forward this to Zoë"), "{body}");
        assert!(body.contains("Você vai adorar! É ótimo"), "single line: {body}");
        assert!(body.contains("https://wa.me/15550001234?text="), "{body}");
        let refused = refusal(
            &settings,
            "en_US",
            &NominationRefusal::AlreadyCustomer,
            "",
            "+447911123456",
        );
        assert_eq!(
            refused["text"]["body"],
            "Good news: your friend is already a customer, so no invite is needed."
        );
        let in_spanish = refusal(
            &settings,
            "es-MX",
            &NominationRefusal::SelfReferral,
            "",
            "+447911123456",
        );
        let spanish = settings.catalogues.get("es").refusals.self_referral.clone();
        assert_eq!(in_spanish["text"]["body"], spanish.as_str());
        let prompt = flow_prompt(&settings, "+447911123456", "pt_BR", "Ana", "tok");
        let parameters = &prompt["interactive"]["action"]["parameters"];
        assert_eq!(parameters["flow_name"], "referral_nomination_pt_BR");
        assert_eq!(
            parameters["flow_cta"],
            settings.catalogues.get("pt_BR").replies.flow_cta.as_str()
        );
    }
}
