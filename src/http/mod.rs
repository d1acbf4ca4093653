//! The HTTP layer: routes, the shared state, and the middleware every request passes
//! through (request id, tracing span, timeout, metrics).

mod admin;
mod api;
mod dashboard;
mod error;
mod flow;
mod health;
pub mod openapi;
mod problem;
mod serve;
mod webhooks;
pub mod wire;
mod words;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::app::Services;
use crate::config::Settings;
use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::store::{InboxWriter, Store};
use crate::whatsapp::flow_crypto::FlowKey;

pub use error::ApiError;
pub use serve::{serve, ConnectionLimits};

/// Meta batches up to 1,000 updates and 3 MB in one POST.
pub const WHATSAPP_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// HubSpot and Stripe send one record or event per request.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Where webhook events are stored (grouped with other requests' events).
    pub inbox: InboxWriter,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    /// The worker's services, for the API's synchronous conversions.
    pub services: Arc<Services>,
    /// The Flow data endpoint's private key, when one is configured.
    pub flow_key: Option<Arc<FlowKey>>,
}

pub fn router(state: AppState) -> Router {
    router_with(state, openapi::OPERATIONS)
}

/// [`router`] with the API's routes and roles from `operations` (the published table, or
/// a test's changed copy of it).
pub fn router_with(state: AppState, operations: &[openapi::Operation]) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let timeout = state.settings.server.request_timeout;
    let mut routes = Router::new();
    // The API's routes and their roles come from the table its OpenAPI document is built
    // from: the documented role is the one the router enforces.
    for op in operations {
        let mut handler = (op.handler)();
        if let Some(least) = op.role {
            handler = handler.route_layer(middleware::from_fn_with_state(
                (state.clone(), least),
                problem::require_role,
            ));
        }
        routes = routes.route(op.path, handler);
    }
    routes
        .route("/admin", get(dashboard::funnel))
        .route("/admin/style.css", get(dashboard::style))
        .route("/admin/login", get(dashboard::login_form).post(dashboard::login))
        .route("/admin/logout", post(dashboard::logout))
        .route("/admin/economics", get(dashboard::economics))
        .route("/admin/experiments", get(dashboard::experiments))
        .route("/admin/referrals", get(dashboard::referrals))
        .route("/admin/referrals/{id}", get(dashboard::referral))
        .route("/admin/operations", get(dashboard::operations))
        .route("/admin/operations/retry", post(dashboard::retry))
        .route("/admin/operations/void", post(dashboard::void))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route(
            "/webhooks/whatsapp",
            get(webhooks::whatsapp_verify)
                .post(webhooks::whatsapp_receive)
                .layer(DefaultBodyLimit::max(WHATSAPP_BODY_LIMIT)),
        )
        .route(
            &state.settings.whatsapp.flow_endpoint_path,
            post(flow::flow_data).layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT)),
        )
        .route(
            "/webhooks/hubspot",
            post(webhooks::hubspot_receive).layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT)),
        )
        .route(
            "/webhooks/stripe",
            post(webhooks::stripe_receive).layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT)),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), track_request))
        .with_state(state)
        // Layers run bottom-up for requests: the id is set first, so the span and every
        // log line inside it carry it, and it is echoed on the response.
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let request_id = request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", request_id, method = %request.method(), path = request.uri().path())
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Counts every routed request by route template and status, and records its latency.
async fn track_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = RequestLabels {
        route: route.clone(),
        method,
        status: response.status().as_u16(),
    };
    state.metrics.http_requests.get_or_create(&labels).inc();
    state
        .metrics
        .http_duration
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}
