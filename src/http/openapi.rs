//! The `/api/v1` operations as one table: the router registers each operation's handler
//! from it, and the OpenAPI 3.1 document served at `/api/v1/openapi.json` is built from
//! it, so a route cannot exist without being documented (nor the reverse).

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, MethodRouter};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{admin, api, AppState};
use crate::domain::access::Role;

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

/// Where a parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    Path,
    Query,
}

#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub place: In,
    /// "integer" or "string".
    pub kind: &'static str,
    pub description: &'static str,
}

const fn query(name: &'static str, kind: &'static str, description: &'static str) -> Param {
    Param {
        name,
        place: In::Query,
        kind,
        description,
    }
}

const fn path(name: &'static str, kind: &'static str, description: &'static str) -> Param {
    Param {
        name,
        place: In::Path,
        kind,
        description,
    }
}

const PERIOD: [Param; 4] = [
    query("days", "integer", "the last N days (1–366; default 30)"),
    query(
        "from",
        "integer",
        "start, Unix milliseconds (with `to`, instead of `days`)",
    ),
    query("to", "integer", "end, Unix milliseconds, exclusive"),
    query("trigger", "string", "only triggers of this kind (funnel only)"),
];
const LIMIT: [Param; 1] = [query("limit", "integer", "items to return (1–200; default 50)")];

/// One operation of the API.
pub struct Operation {
    pub method: Method,
    /// axum's path syntax, which is also OpenAPI's (`{id}`).
    pub path: &'static str,
    pub id: &'static str,
    /// The least role that may call it; `None`: public.
    pub role: Option<Role>,
    pub summary: &'static str,
    pub params: &'static [Param],
    /// The success response: status, description and media type.
    pub success: (u16, &'static str, &'static str),
    /// Other documented answers besides 401, 403 and 503, which every operation has.
    pub errors: &'static [(u16, &'static str)],
    pub handler: fn() -> MethodRouter<AppState>,
}

const JSON: &str = "application/json";

pub const OPERATIONS: &[Operation] = &[
    Operation {
        method: Method::Post,
        path: "/api/v1/conversions",
        id: "recordConversion",
        role: Some(Role::Operator),
        summary: "Record a conversion the business saw (idempotent by external_id)",
        params: &[],
        success: (201, "converted now (200: already converted or recorded before)", JSON),
        errors: &[
            (404, "no referral matches"),
            (422, "invalid fields, or not convertible"),
        ],
        handler: || post(api::post_conversion).layer(DefaultBodyLimit::max(64 * 1024)),
    },
    Operation {
        method: Method::Post,
        path: "/api/v1/referrals/{id}/void",
        id: "voidReferral",
        role: Some(Role::Operator),
        summary: "Void the referral's rewards that are not issued yet (a refund)",
        params: &[path("id", "integer", "the referral")],
        success: (200, "the rewards voided", JSON),
        errors: &[(404, "no such referral")],
        handler: || post(api::void_referral),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/funnel",
        id: "funnel",
        role: Some(Role::Viewer),
        summary: "The funnel of the period's triggers, each step with its rate, and a daily chart",
        params: &PERIOD,
        success: (200, "the steps and the days", JSON),
        errors: &[(422, "a bad period")],
        handler: || get(admin::funnel),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/dropouts",
        id: "dropouts",
        role: Some(Role::Viewer),
        summary: "Why people dropped out: ineligible triggers, refused nominations, message failures, opt-outs",
        params: &PERIOD,
        success: (200, "counts by reason", JSON),
        errors: &[(422, "a bad period")],
        handler: || get(admin::dropouts),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/referrals",
        id: "listReferrals",
        role: Some(Role::Viewer),
        summary: "Referrals, newest first, a page at a time",
        params: &[
            query("state", "string", "only referrals in this state"),
            query("cursor", "string", "the next_cursor of the previous page"),
            LIMIT[0],
        ],
        success: (200, "a page of referrals and next_cursor", JSON),
        errors: &[(422, "an unknown state or cursor")],
        handler: || get(admin::referrals),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/referrals/{id}/timeline",
        id: "referralTimeline",
        role: Some(Role::Viewer),
        summary: "One referral and what happened to it, in order",
        params: &[path("id", "integer", "the referral")],
        success: (200, "the referral and its timeline", JSON),
        errors: &[(404, "no such referral")],
        handler: || get(admin::timeline),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/rewards",
        id: "listRewards",
        role: Some(Role::Viewer),
        summary: "The newest rewards",
        params: &LIMIT,
        success: (200, "rewards", JSON),
        errors: &[],
        handler: || get(admin::rewards),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/rewards/summary",
        id: "rewardSummary",
        role: Some(Role::Viewer),
        summary: "Rewards of the period by state, kind and currency with their value; the code pool level",
        params: &PERIOD,
        success: (200, "totals", JSON),
        errors: &[(422, "a bad period")],
        handler: || get(admin::reward_summary),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/referrers/top",
        id: "topReferrers",
        role: Some(Role::Viewer),
        summary: "The referrers with the most converted friends (all time), with their counts",
        params: &[query("limit", "integer", "referrers to return (1–200; default 20)")],
        success: (200, "referrers with their counts", JSON),
        errors: &[],
        handler: || get(admin::top_referrers),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/conversions",
        id: "listConversions",
        role: Some(Role::Viewer),
        summary: "The newest conversions",
        params: &LIMIT,
        success: (200, "conversions", JSON),
        errors: &[],
        handler: || get(admin::conversions),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/dead",
        id: "listDead",
        role: Some(Role::Viewer),
        summary: "Dead inbox events and jobs with their last error",
        params: &[],
        success: (200, "dead items by queue", JSON),
        errors: &[],
        handler: || get(admin::dead),
    },
    Operation {
        method: Method::Post,
        path: "/api/v1/dead/{queue}/{id}/retry",
        id: "retryDead",
        role: Some(Role::Operator),
        summary: "Re-queue a dead item with fresh attempts (recorded: who, when, what)",
        params: &[
            path("queue", "string", "inbox or jobs"),
            path("id", "integer", "the item"),
        ],
        success: (200, "re-queued", JSON),
        errors: &[(404, "no such queue"), (409, "the item is not dead")],
        handler: || post(admin::retry),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/export/referrals.csv",
        id: "exportReferrals",
        role: Some(Role::Viewer),
        summary: "The referrals nominated in the period, as CSV (phones masked)",
        params: &PERIOD,
        success: (200, "CSV with a header row", "text/csv"),
        errors: &[(422, "a bad period")],
        handler: || get(admin::referrals_csv),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/export/rewards.csv",
        id: "exportRewards",
        role: Some(Role::Viewer),
        summary: "The rewards granted in the period, as CSV (phones masked)",
        params: &PERIOD,
        success: (200, "CSV with a header row", "text/csv"),
        errors: &[(422, "a bad period")],
        handler: || get(admin::rewards_csv),
    },
    Operation {
        method: Method::Get,
        path: "/api/v1/openapi.json",
        id: "openapi",
        role: None,
        summary: "This document",
        params: &[],
        success: (200, "the OpenAPI 3.1 document", JSON),
        errors: &[],
        handler: || get(openapi_json),
    },
];

/// `GET /api/v1/openapi.json` (public: it describes, it reveals nothing).
async fn openapi_json() -> Json<Value> {
    Json(document())
}

fn parameter(p: &Param) -> Value {
    json!({
        "name": p.name,
        "in": match p.place { In::Path => "path", In::Query => "query" },
        "required": p.place == In::Path,
        "description": p.description,
        "schema": {"type": p.kind},
    })
}

fn operation(op: &Operation) -> Value {
    let (status, description, media) = op.success;
    let schema = if media == JSON {
        json!({"type": "object"})
    } else {
        json!({"type": "string"})
    };
    let mut responses = Map::new();
    responses.insert(
        status.to_string(),
        json!({"description": description, "content": {media: {"schema": schema}}}),
    );
    let error = json!({"$ref": "#/components/schemas/Error"});
    let mut errors: Vec<(u16, &str)> = op.errors.to_vec();
    if op.role.is_some() {
        errors.push((401, "a missing or unknown bearer token"));
        errors.push((503, "the API is not configured, or the database is unavailable"));
    }
    if op.role == Some(Role::Operator) {
        errors.push((403, "the token's role may only read"));
    }
    for (status, description) in errors {
        responses.insert(
            status.to_string(),
            json!({"description": description, "content": {JSON: {"schema": error}}}),
        );
    }
    let mut value = json!({
        "operationId": op.id,
        "summary": op.summary,
        "parameters": op.params.iter().map(parameter).collect::<Vec<_>>(),
        "responses": responses,
    });
    match op.role {
        Some(role) => value["x-referloop-role"] = json!(role.as_str()),
        None => value["security"] = json!([]),
    }
    value
}

/// The OpenAPI 3.1 document of every operation.
pub fn document() -> Value {
    let mut paths = Map::new();
    for op in OPERATIONS {
        let entry = paths.entry(op.path).or_insert_with(|| json!({}));
        entry[op.method.as_str()] = operation(op);
    }
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
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}},
        },
        "paths": paths,
    })
}
