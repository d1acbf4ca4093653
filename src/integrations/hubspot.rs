//! HubSpot CRM client (bearer token: a private-app token or a service key): update,
//! search and create contacts, kept under the account's limits, backing off on 429 by
//! the policy HubSpot names. Property writes of jobs running at once go together, as
//! batch updates (`contact_writes`).

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};

use super::contact_writes::ContactWrites;
use super::pacer::Pacer;
use super::{Outbound, OutboundRequest, OutboundResponse};
use crate::config::HubSpotSettings;
use crate::domain::ids::{path_segment, HubSpotId};
use crate::domain::phone::E164;
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HubSpotError {
    #[error("rate limited ({policy}); retry in {retry_after:?}")]
    RateLimited { retry_after: Duration, policy: String },
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Permanent(String),
    /// 404: the object (a property, a group) does not exist.
    #[error("{0}")]
    NotFound(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FoundContact {
    pub id: String,
    pub properties: Map<String, Value>,
}

impl FoundContact {
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
}

#[derive(Clone)]
pub struct HubSpotClient {
    outbound: Outbound,
    api_base: String,
    contacts_url: String,
    token: Option<String>,
    requests: Arc<Pacer>,
    searches: Arc<Pacer>,
    writes: ContactWrites,
}

/// The phone properties a search candidate is re-checked against.
const PHONE_PROPERTIES: [&str; 4] = [
    "phone",
    "mobilephone",
    "hs_calculated_phone_number",
    "hs_calculated_mobile_number",
];

impl HubSpotClient {
    pub fn new(settings: &HubSpotSettings, outbound: Outbound, store: &Store) -> HubSpotClient {
        let second = Duration::from_secs(1);
        let requests = outbound.pacer(store, settings.requests_per_10s, second * 10, "hubspot:requests");
        let searches = outbound.pacer(store, settings.searches_per_second, second, "hubspot:searches");
        HubSpotClient {
            outbound,
            api_base: settings.api_base.as_str().to_string(),
            contacts_url: settings.api_base.join(&settings.contacts_path),
            token: settings.access_token.as_ref().map(|t| t.expose_secret().to_string()),
            requests: Arc::new(requests),
            searches: Arc::new(searches),
            writes: ContactWrites::default(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        body: Value,
        job_id: Option<i64>,
    ) -> Result<Option<Value>, HubSpotError> {
        self.requests.wait().await;
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(token) = &self.token {
            headers.push(("authorization".to_string(), format!("Bearer {token}")));
        }
        // GET requests carry no body.
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let request = OutboundRequest {
            method,
            url,
            headers,
            body,
            job_id,
        };
        match self.outbound.send(request).await {
            // Sandbox: the recorded call's number stands in for the id HubSpot would give.
            Ok(OutboundResponse::Recorded { call_id }) => Ok(Some(json!({"id": call_id.to_string(), "results": []}))),
            Ok(OutboundResponse::Sent { status, body, .. }) => interpret(status, &body),
            Err(e) => Err(HubSpotError::Retryable(format!("request failed: {e}"))),
        }
    }

    /// Sets properties on a contact (`""` clears one), sent with the other writes
    /// waiting (live; sandbox records each write as its own call).
    pub async fn update_contact(
        &self,
        id: &HubSpotId,
        properties: &Map<String, Value>,
        job_id: Option<i64>,
    ) -> Result<(), HubSpotError> {
        if self.is_sandbox() {
            return self.patch_contact(id, properties, job_id).await;
        }
        self.writes.write(self, id, properties, job_id).await
    }

    /// This client, its contact writes each sent alone (for the writer that batches them).
    pub(super) fn writing_alone(&self) -> HubSpotClient {
        HubSpotClient {
            writes: ContactWrites::default(),
            ..self.clone()
        }
    }

    /// One contact's properties, in a request of their own.
    pub(super) async fn patch_contact(
        &self,
        id: &HubSpotId,
        properties: &Map<String, Value>,
        job_id: Option<i64>,
    ) -> Result<(), HubSpotError> {
        let url = format!("{}/{}", self.contacts_url, path_segment(id.as_str()));
        self.call(reqwest::Method::PATCH, url, json!({"properties": properties}), job_id)
            .await
            .map(|_| ())
    }

    /// Several contacts' properties in one request (`inputs`: `{id, properties}` each,
    /// at most 100, no id twice); HubSpot's answer, whose `results` are the contacts
    /// updated.
    pub(super) async fn batch_update_contacts(&self, inputs: Vec<Value>) -> Result<Option<Value>, HubSpotError> {
        let url = format!("{}/batch/update", self.contacts_url);
        self.call(reqwest::Method::POST, url, json!({"inputs": inputs}), None)
            .await
    }

    /// Creates a contact; a conflict with an existing one returns that contact's id.
    pub async fn create_contact(
        &self,
        properties: &Map<String, Value>,
        job_id: Option<i64>,
    ) -> Result<HubSpotId, HubSpotError> {
        let id = match self
            .call(
                reqwest::Method::POST,
                self.contacts_url.clone(),
                json!({"properties": properties}),
                job_id,
            )
            .await
        {
            Ok(Some(created)) => created
                .get("id")
                .and_then(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .or_else(|| v.as_i64().map(|n| n.to_string()))
                })
                .ok_or_else(|| HubSpotError::Permanent("created contact without an id".into())),
            Ok(None) => Err(HubSpotError::Permanent("created contact without a body".into())),
            Err(HubSpotError::Permanent(message)) if message.contains("Existing ID") => {
                existing_id(&message).ok_or(HubSpotError::Permanent(message))
            }
            Err(other) => Err(other),
        }?;
        HubSpotId::parse(&id).map_err(|e| HubSpotError::Permanent(e.to_string()))
    }

    /// The type id of our contact-to-contact label (`label`, with `inverse` the other way),
    /// creating the pair when HubSpot does not have it yet.
    pub async fn referral_association_type(
        &self,
        name: &str,
        label: &str,
        inverse: &str,
        job_id: Option<i64>,
    ) -> Result<i64, HubSpotError> {
        let url = format!("{}/crm/v4/associations/contact/contact/labels", self.api_base);
        let find = |answer: &Value| {
            answer.get("results").and_then(Value::as_array).and_then(|results| {
                results
                    .iter()
                    .find(|r| r.get("label").and_then(Value::as_str) == Some(label))
                    .and_then(|r| r.get("typeId").and_then(Value::as_i64))
            })
        };
        let existing = self
            .call(reqwest::Method::GET, url.clone(), Value::Null, job_id)
            .await?
            .unwrap_or(Value::Null);
        if let Some(id) = find(&existing) {
            return Ok(id);
        }
        let body = json!({"name": name, "label": label, "inverseLabel": inverse});
        let created = self
            .call(reqwest::Method::POST, url, body, job_id)
            .await?
            .unwrap_or(Value::Null);
        // Sandbox answers carry no labels: any id will do there.
        Ok(find(&created).unwrap_or(0))
    }

    /// Links two contacts with a user-defined association type (idempotent).
    pub async fn associate_contacts(
        &self,
        from: &HubSpotId,
        to: &HubSpotId,
        type_id: i64,
        job_id: Option<i64>,
    ) -> Result<(), HubSpotError> {
        let url = format!(
            "{}/crm/v4/objects/contact/{}/associations/contact/{}",
            self.api_base,
            path_segment(from.as_str()),
            path_segment(to.as_str())
        );
        let body = json!([{"associationCategory": "USER_DEFINED", "associationTypeId": type_id}]);
        self.call(reqwest::Method::PUT, url, body, job_id).await.map(|_| ())
    }

    /// A note on the timelines of `contacts` (note → contact is HubSpot-defined type 202).
    pub async fn add_note(
        &self,
        contacts: &[&HubSpotId],
        html: &str,
        timestamp_ms: i64,
        job_id: Option<i64>,
    ) -> Result<(), HubSpotError> {
        let associations: Vec<Value> = contacts
            .iter()
            .map(|id| json!({"to": {"id": id.as_str()}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 202}]}))
            .collect();
        let body = json!({"properties": {"hs_timestamp": timestamp_ms.to_string(), "hs_note_body": html}, "associations": associations});
        let url = format!("{}/crm/v3/objects/notes", self.api_base);
        self.call(reqwest::Method::POST, url, body, job_id).await.map(|_| ())
    }

    /// A HubSpot read (`path` with its query), answered raw.
    pub async fn probe(&self, path: &str) -> Result<Option<(u16, Value)>, String> {
        super::probe(
            &self.outbound,
            format!("{}{path}", self.api_base),
            self.token.as_deref(),
        )
        .await
    }

    /// Whether calls are recorded instead of sent (sandbox mode).
    pub fn is_sandbox(&self) -> bool {
        matches!(self.outbound, Outbound::Sandbox(_))
    }

    /// The scopes granted to the private-app token (HubSpot's token introspection,
    /// `POST /oauth/v2/private-apps/get/access-token-info`). Service keys have no such
    /// endpoint; HubSpot's refusal comes back as an error.
    pub async fn token_scopes(&self) -> Result<Vec<String>, HubSpotError> {
        let token = self.token.clone().unwrap_or_default();
        let url = format!("{}/oauth/v2/private-apps/get/access-token-info", self.api_base);
        let answer = self
            .call(reqwest::Method::POST, url, json!({"tokenKey": token}), None)
            .await?
            .unwrap_or(Value::Null);
        let scopes = answer["scopes"]
            .as_array()
            .map(|all| all.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        Ok(scopes)
    }

    fn property_url(&self, rest: &str) -> String {
        format!("{}/crm/v3/properties/contacts{rest}", self.api_base)
    }

    /// A contact property's definition; `None` when HubSpot has no such property.
    pub async fn contact_property(&self, name: &str) -> Result<Option<Value>, HubSpotError> {
        let url = self.property_url(&format!("/{}", path_segment(name)));
        match self.call(reqwest::Method::GET, url, Value::Null, None).await {
            Ok(found) => Ok(found),
            Err(HubSpotError::NotFound(_)) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Creates a contact property from its definition (`name`, `label`, `type`,
    /// `fieldType`, `groupName`).
    pub async fn create_contact_property(&self, definition: &Value) -> Result<(), HubSpotError> {
        self.call(reqwest::Method::POST, self.property_url(""), definition.clone(), None)
            .await
            .map(|_| ())
    }

    /// A contact property group; `None` when it does not exist.
    pub async fn contact_property_group(&self, name: &str) -> Result<Option<Value>, HubSpotError> {
        let url = self.property_url(&format!("/groups/{}", path_segment(name)));
        match self.call(reqwest::Method::GET, url, Value::Null, None).await {
            Ok(found) => Ok(found),
            Err(HubSpotError::NotFound(_)) => Ok(None),
            Err(other) => Err(other),
        }
    }

    pub async fn create_contact_property_group(&self, name: &str, label: &str) -> Result<(), HubSpotError> {
        let body = json!({"name": name, "label": label, "displayOrder": -1});
        self.call(reqwest::Method::POST, self.property_url("/groups"), body, None)
            .await
            .map(|_| ())
    }

    /// The contacts associated with a deal (v4 associations API).
    pub async fn deal_contacts(
        &self,
        deal_id: &HubSpotId,
        job_id: Option<i64>,
    ) -> Result<Vec<HubSpotId>, HubSpotError> {
        let url = format!(
            "{}/crm/v4/objects/deal/{}/associations/contact",
            self.api_base,
            path_segment(deal_id.as_str())
        );
        let answer = self
            .call(reqwest::Method::GET, url, Value::Null, job_id)
            .await?
            .unwrap_or(Value::Null);
        let ids = answer
            .get("results")
            .and_then(Value::as_array)
            .map(|results| {
                results
                    .iter()
                    .filter_map(|r| r.get("toObjectId"))
                    .filter_map(|id| {
                        id.as_str()
                            .map(str::to_string)
                            .or_else(|| id.as_i64().map(|n| n.to_string()))
                    })
                    // An answer that names no valid contact adds none.
                    .filter_map(|id| HubSpotId::parse(&id).ok())
                    .collect()
            })
            .unwrap_or_default();
        Ok(ids)
    }

    /// Contacts whose phone is `phone`: HubSpot stores free text, so search the computed
    /// national-number properties and the raw ones, then keep candidates whose numbers
    /// normalise to the same E.164.
    pub async fn search_by_phone(
        &self,
        phone: &E164,
        properties: &[&str],
        default_region: &str,
        job_id: Option<i64>,
    ) -> Result<Vec<FoundContact>, HubSpotError> {
        self.searches.wait().await;
        self.search_now(phone, properties, default_region, job_id).await
    }

    /// The same search if the search pace has a place within `limit`; `Ok(None)` at once
    /// when it has not (the place is left to callers that can wait).
    pub async fn search_by_phone_within(
        &self,
        phone: &E164,
        properties: &[&str],
        default_region: &str,
        limit: Duration,
    ) -> Result<Option<Vec<FoundContact>>, HubSpotError> {
        if !self.searches.wait_at_most(Some(limit)).await {
            return Ok(None);
        }
        self.search_now(phone, properties, default_region, None).await.map(Some)
    }

    async fn search_now(
        &self,
        phone: &E164,
        properties: &[&str],
        default_region: &str,
        job_id: Option<i64>,
    ) -> Result<Vec<FoundContact>, HubSpotError> {
        let national = phone.national_digits();
        let filter =
            |name: &str, value: &str| json!({"filters": [{"propertyName": name, "operator": "EQ", "value": value}]});
        let mut wanted: Vec<&str> = properties.to_vec();
        wanted.extend(PHONE_PROPERTIES);
        let body = json!({
            "filterGroups": [
                filter("hs_searchable_calculated_phone_number", &national),
                filter("hs_searchable_calculated_mobile_number", &national),
                filter("phone", phone.as_str()),
                filter("mobilephone", phone.as_str()),
            ],
            "properties": wanted,
            "limit": 20,
        });
        let url = format!("{}/search", self.contacts_url);
        let answer = self
            .call(reqwest::Method::POST, url, body, job_id)
            .await?
            .unwrap_or(Value::Null);
        let results = answer
            .get("results")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let found = results
            .into_iter()
            .filter_map(|r| {
                let id = r.get("id").and_then(Value::as_str)?.to_string();
                let properties = r
                    .get("properties")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                Some(FoundContact { id, properties })
            })
            .filter(|c| {
                PHONE_PROPERTIES
                    .iter()
                    .filter_map(|p| c.property(p))
                    .any(|raw| E164::parse_mobile(raw, default_region).is_ok_and(|n| &n == phone))
            })
            .collect();
        Ok(found)
    }
}

fn existing_id(message: &str) -> Option<String> {
    let after = message.split("Existing ID:").nth(1)?;
    let id: String = after.trim_start().chars().take_while(char::is_ascii_digit).collect();
    (!id.is_empty()).then_some(id)
}

fn interpret(status: u16, body: &str) -> Result<Option<Value>, HubSpotError> {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    if (200..300).contains(&status) {
        return Ok(parsed);
    }
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|p| p.get(name))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let message = format!(
        "HTTP {status}: {} (correlationId {})",
        field("message"),
        field("correlationId")
    );
    match status {
        429 => {
            let policy = field("policyName");
            let retry_after = match policy.as_str() {
                "SECONDLY" => Duration::from_secs(1),
                "DAILY" => Duration::from_secs(3600),
                _ => Duration::from_secs(10),
            };
            Err(HubSpotError::RateLimited { retry_after, policy })
        }
        423 | 477 | 500..=599 => Err(HubSpotError::Retryable(message)),
        404 => Err(HubSpotError::NotFound(message)),
        _ => Err(HubSpotError::Permanent(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interprets_answers() {
        assert!(matches!(interpret(200, r#"{"id":"1"}"#), Ok(Some(_))));
        assert_eq!(interpret(204, ""), Ok(None));
        let limited = interpret(429, r#"{"status":"error","policyName":"TEN_SECONDLY_ROLLING"}"#);
        assert_eq!(
            limited,
            Err(HubSpotError::RateLimited {
                retry_after: Duration::from_secs(10),
                policy: "TEN_SECONDLY_ROLLING".into()
            })
        );
        let secondly = interpret(429, r#"{"policyName":"SECONDLY"}"#);
        assert!(
            matches!(secondly, Err(HubSpotError::RateLimited { retry_after, .. }) if retry_after == Duration::from_secs(1))
        );
        assert!(matches!(interpret(502, "bad gateway"), Err(HubSpotError::Retryable(_))));
        assert!(matches!(
            interpret(400, r#"{"message":"Property does not exist"}"#),
            Err(HubSpotError::Permanent(_))
        ));
    }

    #[test]
    fn conflict_names_the_existing_contact() {
        let body = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/hubspot/contact-create-conflict-409.json"
        ))
        .expect("fixture");
        let error = interpret(409, &body).expect_err("conflict");
        match error {
            HubSpotError::Permanent(message) => assert_eq!(existing_id(&message), Some("90002".into())),
            other => panic!("{other:?}"),
        }
    }
}
