//! The Flow data endpoint's conversation (Data API 3.0), decrypted: what Meta asks
//! ([`FlowRequest`]) and what we answer ([`FlowAnswer`]). Pure: the crypto is in
//! `whatsapp::flow_crypto`, the checks in `app::flow_endpoint`.

use serde_json::{json, Map, Value};

use super::nomination::{FlowReply, Nomination, NominationRefusal};

/// A decrypted endpoint request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowRequest {
    /// Meta's health check.
    Ping,
    /// The client reports a problem with our last answer; we acknowledge it.
    ErrorNotification {
        flow_token: String,
        error: String,
        error_message: String,
    },
    /// The Flow opened (`flow_action: data_exchange`) or the user went back.
    Open { flow_token: String, screen: Option<String> },
    /// The form was submitted.
    DataExchange {
        flow_token: String,
        screen: String,
        form: FlowReply,
    },
}

/// Why a decrypted request is not one we understand (answered 400: it decrypted, so it
/// came from someone holding our public key, but it is not Meta's shape).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowRequestError {
    #[error("the request is not a JSON object")]
    NotJson,
    #[error("the request has no flow_token")]
    NoToken,
    #[error("unknown action {0:?}")]
    UnknownAction(String),
}

impl FlowRequest {
    pub fn parse(plaintext: &str) -> Result<FlowRequest, FlowRequestError> {
        let value: Value = serde_json::from_str(plaintext).map_err(|_| FlowRequestError::NotJson)?;
        let object = value.as_object().ok_or(FlowRequestError::NotJson)?;
        let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_string);
        let action = text("action").unwrap_or_default();
        if action == "ping" {
            return Ok(FlowRequest::Ping);
        }
        let flow_token = text("flow_token")
            .filter(|t| !t.trim().is_empty())
            .ok_or(FlowRequestError::NoToken)?;
        let data = object.get("data").and_then(Value::as_object);
        // An error notification may come with any action; it names the error in `data`.
        if let Some(error) = data.and_then(|d| d.get("error")).and_then(Value::as_str) {
            let error_message = data
                .and_then(|d| d.get("error_message"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Ok(FlowRequest::ErrorNotification {
                flow_token,
                error: error.to_string(),
                error_message: error_message.to_string(),
            });
        }
        match action.as_str() {
            "INIT" | "BACK" => Ok(FlowRequest::Open {
                flow_token,
                screen: text("screen"),
            }),
            "data_exchange" => {
                let form = data.cloned().map(Value::Object).unwrap_or(Value::Null);
                let mut form = super::nomination::flow_reply_from(&form);
                form.flow_token = Some(flow_token.clone());
                Ok(FlowRequest::DataExchange {
                    flow_token,
                    screen: text("screen").unwrap_or_default(),
                    form,
                })
            }
            other => Err(FlowRequestError::UnknownAction(other.chars().take(40).collect())),
        }
    }
}

/// The form field a refusal is shown under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormField {
    FriendName,
    FriendPhone,
    PersonalMessage,
}

impl FormField {
    pub const ALL: [FormField; 3] = [
        FormField::FriendName,
        FormField::FriendPhone,
        FormField::PersonalMessage,
    ];

    /// The screen's data key bound to the field's `error-message`.
    pub fn error_key(self) -> &'static str {
        match self {
            FormField::FriendName => "friend_name_error",
            FormField::FriendPhone => "friend_phone_error",
            FormField::PersonalMessage => "personal_message_error",
        }
    }

    /// Where a refusal belongs; `None` for one that is about the referrer, not a field.
    pub fn of(refusal: &NominationRefusal) -> Option<FormField> {
        match refusal {
            NominationRefusal::InvalidName => Some(FormField::FriendName),
            NominationRefusal::InvalidPhone(_)
            | NominationRefusal::SelfReferral
            | NominationRefusal::AlreadyReferred
            | NominationRefusal::AlreadyCustomer
            | NominationRefusal::FriendOptedOut => Some(FormField::FriendPhone),
            NominationRefusal::MessageTooLong => Some(FormField::PersonalMessage),
            NominationRefusal::TooManyOpenReferrals | NominationRefusal::InvalidToken => None,
        }
    }
}

/// The screen's data with no field in error: what opening the screen needs.
pub fn empty_field_errors() -> Value {
    let errors: Map<String, Value> = FormField::ALL
        .iter()
        .map(|f| (f.error_key().to_string(), Value::String(String::new())))
        .collect();
    Value::Object(errors)
}

/// Our answer, before encryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowAnswer {
    Active,
    Acknowledged,
    /// Show `screen` (again), with an error on the field at fault and as a snackbar.
    Screen {
        screen: String,
        error: Option<(Option<FormField>, String)>,
    },
    /// Close the Flow; WhatsApp sends these parameters in the `nfm_reply`.
    Finish {
        flow_token: String,
        nomination: Nomination,
    },
    /// The token is unknown, forged or already used: 427, and the Flow closes for the user.
    TokenRefused {
        message: String,
    },
}

impl FlowAnswer {
    pub fn status(&self) -> u16 {
        match self {
            FlowAnswer::TokenRefused { .. } => 427,
            _ => 200,
        }
    }

    /// The `answer` label of the endpoint's metric.
    pub fn label(&self) -> &'static str {
        match self {
            FlowAnswer::Active => "active",
            FlowAnswer::Acknowledged => "acknowledged",
            FlowAnswer::Screen { error: None, .. } => "screen",
            FlowAnswer::Screen { error: Some(_), .. } => "field_error",
            FlowAnswer::Finish { .. } => "finished",
            FlowAnswer::TokenRefused { .. } => "token_refused",
        }
    }

    pub fn body(&self) -> Value {
        match self {
            FlowAnswer::Active => json!({"data": {"status": "active"}}),
            FlowAnswer::Acknowledged => json!({"data": {"acknowledged": true}}),
            FlowAnswer::Screen { screen, error } => {
                let mut data = empty_field_errors();
                if let Some((field, message)) = error {
                    if let Some(field) = field {
                        data[field.error_key()] = json!(message);
                    }
                    data["error_message"] = json!(message);
                }
                json!({"screen": screen, "data": data})
            }
            FlowAnswer::Finish { flow_token, nomination } => json!({
                "screen": "SUCCESS",
                "data": {"extension_message_response": {"params": {
                    "flow_token": flow_token,
                    "friend_name": nomination.friend_name,
                    "friend_phone": nomination.friend_phone.as_str(),
                    "personal_message": nomination.personal_message.clone().unwrap_or_default(),
                    "friend_consent": nomination.consent,
                }}}
            }),
            FlowAnswer::TokenRefused { message } => json!({"error_msg": message}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::nomination::{parse_flow_reply, validate};
    use crate::domain::phone::{PhoneError, E164};

    #[test]
    fn parses_each_action() {
        assert_eq!(
            FlowRequest::parse(r#"{"version":"3.0","action":"ping"}"#),
            Ok(FlowRequest::Ping)
        );
        assert_eq!(
            FlowRequest::parse(r#"{"action":"INIT","flow_token":"t"}"#),
            Ok(FlowRequest::Open {
                flow_token: "t".into(),
                screen: None
            })
        );
        assert_eq!(
            FlowRequest::parse(r#"{"action":"BACK","flow_token":"t","screen":"NOMINATE"}"#),
            Ok(FlowRequest::Open {
                flow_token: "t".into(),
                screen: Some("NOMINATE".into())
            })
        );
        assert_eq!(
            FlowRequest::parse(
                r#"{"action":"data_exchange","flow_token":"t","data":{"error":"INVALID_SCREEN","error_message":"x"}}"#
            ),
            Ok(FlowRequest::ErrorNotification {
                flow_token: "t".into(),
                error: "INVALID_SCREEN".into(),
                error_message: "x".into()
            })
        );
        let submitted = FlowRequest::parse(
            r#"{"action":"data_exchange","screen":"REFER_FRIEND","flow_token":"t",
                "data":{"friend_name":"Grace","friend_phone":"+1 202 555 0142","message":"Try it!","friend_consent":true}}"#,
        );
        let Ok(FlowRequest::DataExchange { screen, form, .. }) = submitted else {
            panic!("{submitted:?}");
        };
        assert_eq!(screen, "REFER_FRIEND");
        assert_eq!(form.flow_token.as_deref(), Some("t"));
        assert_eq!(form.personal_message.as_deref(), Some("Try it!"));
        assert!(form.consent);
        assert_eq!(
            FlowRequest::parse(r#"{"action":"INIT"}"#),
            Err(FlowRequestError::NoToken)
        );
        assert_eq!(
            FlowRequest::parse(r#"{"action":"navigate","flow_token":"t"}"#),
            Err(FlowRequestError::UnknownAction("navigate".into()))
        );
        assert_eq!(FlowRequest::parse("[1]"), Err(FlowRequestError::NotJson));
    }

    #[test]
    fn every_refusal_has_its_place_on_the_screen() {
        for refusal in NominationRefusal::ALL {
            let answer = FlowAnswer::Screen {
                screen: "NOMINATE".into(),
                error: Some((FormField::of(&refusal), "why".into())),
            };
            let body = answer.body();
            assert_eq!(body["data"]["error_message"], "why", "{refusal:?}");
            let on_fields = FormField::ALL
                .iter()
                .filter(|f| body["data"][f.error_key()] == "why")
                .count();
            let expected = usize::from(FormField::of(&refusal).is_some());
            assert_eq!(on_fields, expected, "{refusal:?}");
        }
        assert_eq!(
            FormField::of(&NominationRefusal::InvalidPhone(PhoneError::Invalid)),
            Some(FormField::FriendPhone)
        );
    }

    #[test]
    fn a_finished_flow_carries_what_the_nfm_reply_path_reads() {
        let referrer = E164::parse_mobile("+447911123456", "GB").expect("valid");
        let form = FlowReply {
            flow_token: Some("tok".into()),
            friend_name: "Grace Friend".into(),
            friend_phone: "+1 202 555 0142".into(),
            personal_message: Some("Try it!".into()),
            consent: true,
        };
        let nomination = validate(&form, &referrer, "US").expect("valid");
        let answer = FlowAnswer::Finish {
            flow_token: "tok".into(),
            nomination: nomination.clone(),
        };
        let params = &answer.body()["data"]["extension_message_response"]["params"];
        assert_eq!(params["friend_phone"], "+12025550142");
        let round_trip = parse_flow_reply(&params.to_string()).expect("parses");
        assert_eq!(round_trip.flow_token.as_deref(), Some("tok"));
        assert_eq!(validate(&round_trip, &referrer, "US"), Ok(nomination));
        assert_eq!(FlowAnswer::TokenRefused { message: "x".into() }.status(), 427);
        assert_eq!(FlowAnswer::Active.body(), json!({"data": {"status": "active"}}));
    }
}
