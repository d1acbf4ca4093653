//! The `/api/v1` operations as one table: the router registers each operation's handler
//! and enforces its role from it, and the OpenAPI 3.1 document served at
//! `/api/v1/openapi.json` is built from it, its schemas generated from the types the
//! handlers read and answer (`wire.rs`). A route cannot exist without being documented,
//! nor be documented other than it behaves.

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, MethodRouter};
use axum::Json;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::problem::ErrorAnswer;
use super::wire::{
    ConversionAnswer, ConversionRequest, ConversionsAnswer, DeadAnswer, DeadItemPath, DropoutsAnswer, EconomicsAnswer,
    ExperimentAnswer, ExperimentPath, ExperimentsAnswer, FunnelAnswer, FunnelQuery, LimitQuery, PageQuery, PeriodQuery,
    ReferralPath, ReferralsPage, RetryAnswer, RewardSummaryAnswer, RewardsAnswer, TimelineAnswer, TopReferrersAnswer,
    VoidAnswer,
};
use super::{admin, api, AppState};
use crate::domain::access::Role;
use crate::domain::state::Persisted;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
        }
    }
}

/// A schema taken from a type, written where the table names the type.
pub type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T` (a reference into the document's components when `T` is named).
fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// The object schema of `T` itself, whose properties become parameters.
fn object<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    T::json_schema(generator)
}

/// An OpenAPI document (described by its own specification, not here).
fn openapi_object(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "object", "required": ["openapi", "paths"]})
}

/// What an answer's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `{"error": ...}`
    Error,
    /// The operation's success schema (with another status).
    Answer,
}

/// The success response.
#[derive(Clone, Copy)]
pub enum Success {
    Json(u16, &'static str, SchemaOf),
    Csv(&'static str),
}

/// One operation of the API.
#[derive(Clone, Copy)]
pub struct Operation {
    pub method: Method,
    /// axum's path syntax, which is also OpenAPI's (`{id}`).
    pub path: &'static str,
    pub id: &'static str,
    /// The least role that may call it, enforced by the router; `None`: public.
    pub role: Option<Role>,
    pub summary: &'static str,
    /// The query parameters, as the properties of a type's schema.
    pub query: Option<SchemaOf>,
    /// The path parameters, likewise.
    pub path_params: Option<SchemaOf>,
    /// The required JSON body.
    pub body: Option<SchemaOf>,
    pub success: Success,
    /// Other answers besides 400 (parameters or body), 401, 403 and 503, which every
    /// operation that can give them documents.
    pub errors: &'static [(u16, &'static str, Body)],
    pub handler: fn() -> MethodRouter<AppState>,
}

const BAD_PERIOD: (u16, &str, Body) = (422, "a period the store cannot answer", Body::Error);

pub const OPERATIONS: &[Operation] = &[
    Operation {
        method: Method::Post,
        path: "/api/v1/conversions",
        id: "recordConversion",
        role: Some(Role::Operator),
        summary: "Record a conversion the business saw (idempotent by external_id)",
        query: None,
        path_params: None,
        body: Some(schema::<ConversionRequest>),
        success: Success::Json(201, "converted now", schema::<ConversionAnswer>),
        errors: &[
            (200, "converted before (by this or another signal)", Body::Answer),
            (404, "no referral matches (recorded as unattributed)", Body::Answer),
            (
                409,
                "the referral cannot convert: outside the attribution window, refused or expired",
                Body::Answer,
            ),
            (413, "the body is over 64 KiB", Body::Error),
            (
                422,
                "none of referral_code, friend_phone and hubspot_contact_id",
                Body::Error,
            ),
        ],
        handler: || post(api::post_conversion).layer(DefaultBodyLimit::max(64 * 1024)),
    },
    Operation {
        method: Method::Post,
        path: "/api/v1/referrals/{id}/void",
        id: "voidReferral",
        role: Some(Role::Operator),
        summary: "Void the referral's rewards that are not issued yet (a refund)",
        query: None,
        path_params: Some(object::<ReferralPath>),
        body: None,
        success: Success::Json(200, "the rewards voided", schema::<VoidAnswer>),
        errors: &[(404, "no such referral", Body::Error)],
        handler: || post(api::void_referral),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/funnel",
        id: "funnel",
        role: Some(Role::Viewer),
        summary: "The funnel of the period's triggers, each step with its rate, and a daily chart",
        query: Some(object::<FunnelQuery>),
        path_params: None,
        body: None,
        success: Success::Json(200, "the steps and the days", schema::<FunnelAnswer>),
        errors: &[BAD_PERIOD],
        handler: || get(admin::funnel),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/economics",
        id: "economics",
        role: Some(Role::Viewer),
        summary: "What the period's triggers cost (messages, rewards) and earned, by trigger kind, with cost per acquired customer and return",
        query: Some(object::<FunnelQuery>),
        path_params: None,
        body: None,
        success: Success::Json(200, "each cohort, the total, what could not be counted, and the assumptions", schema::<EconomicsAnswer>),
        errors: &[BAD_PERIOD],
        handler: || get(admin::economics),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/export/economics.csv",
        id: "exportEconomics",
        role: Some(Role::Viewer),
        summary: "The economics of the period, one row per trigger kind and one for the total, as CSV",
        query: Some(object::<FunnelQuery>),
        path_params: None,
        body: None,
        success: Success::Csv("CSV with a header row"),
        errors: &[BAD_PERIOD],
        handler: || get(admin::economics_csv),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/experiments",
        id: "listExperiments",
        role: Some(Role::Viewer),
        summary: "The configured experiments, each variant with its funnel, conversion rate and interval, cost per customer and comparison with the control",
        query: None,
        path_params: None,
        body: None,
        success: Success::Json(200, "the experiments and their results", schema::<ExperimentsAnswer>),
        errors: &[],
        handler: || get(admin::experiments),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/experiments/{name}",
        id: "experimentResults",
        role: Some(Role::Viewer),
        summary: "One experiment's results",
        query: None,
        path_params: Some(object::<ExperimentPath>),
        body: None,
        success: Success::Json(200, "its variants and their results", schema::<ExperimentAnswer>),
        errors: &[(404, "no such experiment", Body::Error)],
        handler: || get(admin::experiment),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/dropouts",
        id: "dropouts",
        role: Some(Role::Viewer),
        summary: "Why people dropped out: ineligible triggers, refused nominations, message failures, opt-outs",
        query: Some(object::<PeriodQuery>),
        path_params: None,
        body: None,
        success: Success::Json(200, "counts by reason", schema::<DropoutsAnswer>),
        errors: &[BAD_PERIOD],
        handler: || get(admin::dropouts),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/referrals",
        id: "listReferrals",
        role: Some(Role::Viewer),
        summary: "Referrals, newest first, a page at a time",
        query: Some(object::<PageQuery>),
        path_params: None,
        body: None,
        success: Success::Json(200, "a page of referrals and next_cursor", schema::<ReferralsPage>),
        errors: &[],
        handler: || get(admin::referrals),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/referrals/{id}/timeline",
        id: "referralTimeline",
        role: Some(Role::Viewer),
        summary: "One referral and what happened to it, in order",
        query: None,
        path_params: Some(object::<ReferralPath>),
        body: None,
        success: Success::Json(200, "the referral and its timeline", schema::<TimelineAnswer>),
        errors: &[(404, "no such referral", Body::Error)],
        handler: || get(admin::timeline),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/rewards",
        id: "listRewards",
        role: Some(Role::Viewer),
        summary: "The newest rewards",
        query: Some(object::<LimitQuery>),
        path_params: None,
        body: None,
        success: Success::Json(200, "rewards", schema::<RewardsAnswer>),
        errors: &[],
        handler: || get(admin::rewards),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/rewards/summary",
        id: "rewardSummary",
        role: Some(Role::Viewer),
        summary: "Rewards of the period by state, kind and currency with their value; the code pool level",
        query: Some(object::<PeriodQuery>),
        path_params: None,
        body: None,
        success: Success::Json(200, "totals", schema::<RewardSummaryAnswer>),
        errors: &[BAD_PERIOD],
        handler: || get(admin::reward_summary),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/referrers/top",
        id: "topReferrers",
        role: Some(Role::Viewer),
        summary: "The referrers with the most converted friends (all time), with their counts",
        query: Some(object::<LimitQuery>),
        path_params: None,
        body: None,
        success: Success::Json(200, "referrers with their counts", schema::<TopReferrersAnswer>),
        errors: &[],
        handler: || get(admin::top_referrers),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/conversions",
        id: "listConversions",
        role: Some(Role::Viewer),
        summary: "The newest conversions",
        query: Some(object::<LimitQuery>),
        path_params: None,
        body: None,
        success: Success::Json(200, "conversions", schema::<ConversionsAnswer>),
        errors: &[],
        handler: || get(admin::conversions),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/dead",
        id: "listDead",
        role: Some(Role::Viewer),
        summary: "Dead inbox events and jobs with their last error",
        query: None,
        path_params: None,
        body: None,
        success: Success::Json(200, "dead items by queue", schema::<DeadAnswer>),
        errors: &[],
        handler: || get(admin::dead),
    },
    Operation {
        method: Method::Post,
        path: "/api/v1/dead/{queue}/{id}/retry",
        id: "retryDead",
        role: Some(Role::Operator),
        summary: "Re-queue a dead item with fresh attempts (recorded: who, when, what)",
        query: None,
        path_params: Some(object::<DeadItemPath>),
        body: None,
        success: Success::Json(200, "re-queued", schema::<RetryAnswer>),
        errors: &[(409, "the item is not dead (or does not exist)", Body::Error)],
        handler: || post(admin::retry),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/export/referrals.csv",
        id: "exportReferrals",
        role: Some(Role::Viewer),
        summary: "The referrals nominated in the period, as CSV (phones masked)",
        query: Some(object::<PeriodQuery>),
        path_params: None,
        body: None,
        success: Success::Csv("CSV with a header row"),
        errors: &[BAD_PERIOD],
        handler: || get(admin::referrals_csv),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/export/rewards.csv",
        id: "exportRewards",
        role: Some(Role::Viewer),
        summary: "The rewards granted in the period, as CSV (phones masked; codes for operators only)",
        query: Some(object::<PeriodQuery>),
        path_params: None,
        body: None,
        success: Success::Csv("CSV with a header row"),
        errors: &[BAD_PERIOD],
        handler: || get(admin::rewards_csv),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/openapi.json",
        id: "openapi",
        role: None,
        summary: "This document",
        query: None,
        path_params: None,
        body: None,
        success: Success::Json(200, "the OpenAPI 3.1 document", openapi_object),
        errors: &[],
        handler: || get(openapi_json),
    },
];

/// `GET /api/v1/openapi.json` (public: it describes, it reveals nothing).
async fn openapi_json() -> Json<Value> {
    Json(document())
}

/// A parameter's schema without `null`: a parameter is absent rather than null.
fn without_null(mut schema: Value) -> Value {
    if let Some(types) = schema.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            schema["type"] = types[0].clone();
        }
    }
    if let Some(values) = schema.get_mut("enum").and_then(Value::as_array_mut) {
        values.retain(|v| !v.is_null());
    }
    if let Some(any_of) = schema.get("anyOf").and_then(Value::as_array) {
        let rest: Vec<&Value> = any_of
            .iter()
            .filter(|s| s.get("type") != Some(&json!("null")))
            .collect();
        if let [only] = rest.as_slice() {
            return (*only).clone();
        }
    }
    schema
}

/// The parameters `place` ("query" or "path") holds: the properties of `of`'s schema.
fn parameters(generator: &mut SchemaGenerator, of: SchemaOf, place: &str) -> Vec<Value> {
    let object = of(generator).to_value();
    let required: Vec<&Value> = object["required"]
        .as_array()
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    let Some(properties) = object["properties"].as_object() else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, property)| {
            let mut schema = without_null(property.clone());
            let description = schema
                .as_object_mut()
                .and_then(|s| s.remove("description"))
                .unwrap_or_else(|| json!(""));
            json!({
                "name": name,
                "in": place,
                "required": place == "path" || required.contains(&&json!(name)),
                "description": description,
                "schema": schema,
            })
        })
        .collect()
}

fn operation(op: &Operation, generator: &mut SchemaGenerator) -> Value {
    let error = schema::<ErrorAnswer>(generator).to_value();
    let mut responses = Map::new();
    let answer = match op.success {
        Success::Json(status, description, of) => {
            let answer = of(generator).to_value();
            responses.insert(
                status.to_string(),
                json!({"description": description, "content": {"application/json": {"schema": answer}}}),
            );
            answer
        }
        Success::Csv(description) => {
            responses.insert(
                "200".into(),
                json!({"description": description, "content": {"text/csv": {"schema": {"type": "string"}}}}),
            );
            error.clone()
        }
    };
    let mut errors: Vec<(u16, &str, Body)> = op.errors.to_vec();
    if op.query.is_some() || op.path_params.is_some() || op.body.is_some() {
        errors.push((
            400,
            "a parameter or the body is not as this document describes it",
            Body::Error,
        ));
    }
    if let Some(role) = op.role {
        errors.push((401, "a missing or unknown bearer token", Body::Error));
        errors.push((
            503,
            "the API is not configured, or the database is unavailable",
            Body::Error,
        ));
        if role == Role::Operator {
            errors.push((403, "the token's role may only read", Body::Error));
        }
    }
    for (status, description, body) in errors {
        let schema = match body {
            Body::Error => error.clone(),
            Body::Answer => answer.clone(),
        };
        responses.insert(
            status.to_string(),
            json!({"description": description, "content": {"application/json": {"schema": schema}}}),
        );
    }
    let mut params = Vec::new();
    if let Some(of) = op.path_params {
        let mut path_params = parameters(generator, of, "path");
        // In the order the template names them.
        path_params.sort_by_key(|p| op.path.find(&format!("{{{}}}", p["name"].as_str().unwrap_or(""))));
        params.extend(path_params);
    }
    if let Some(of) = op.query {
        params.extend(parameters(generator, of, "query"));
    }
    let mut value = json!({
        "operationId": op.id,
        "summary": op.summary,
        "parameters": params,
        "responses": responses,
    });
    if let Some(of) = op.body {
        value["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": of(generator).to_value()}},
        });
    }
    match op.role {
        Some(role) => value["x-referloop-role"] = json!(role.as_str()),
        None => value["security"] = json!([]),
    }
    value
}

/// The OpenAPI 3.1 document of every operation, its schemas generated from the types the
/// handlers read and answer.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|settings| {
            settings.definitions_path = "/components/schemas".into();
            settings.meta_schema = None;
        })
        .into_generator();
    let mut paths = Map::new();
    for op in OPERATIONS {
        let entry = paths.entry(op.path).or_insert_with(|| json!({}));
        entry[op.method.as_str()] = operation(op, &mut generator);
    }
    let schemas = generator.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "referloop admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The referral programme's funnel, referrals, rewards, conversions and dead work. Bearer tokens are configured as SHA-256 digests in api.tokens; a viewer token reads, an operator token also acts (x-referloop-role).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "paths": paths,
    })
}
