//! Prometheus metrics: HTTP requests by route and status with a latency histogram,
//! webhook rejections by reason, stored events, worker outcomes, calls to outside APIs by
//! outcome, and (read from the database at scrape time, so every replica reports the
//! truth) queue sizes by state, the age of the oldest due item, and rewards by state.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub source: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub queue: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueNameLabels {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutsideCallLabels {
    /// whatsapp, hubspot, stripe or reward_webhook.
    pub api: String,
    /// ok, auth_refused (401/403), rate_limited (429), refused (other 4xx),
    /// server_error (5xx), timeout or unreachable.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RewardLabels {
    pub beneficiary: String,
    pub state: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TemplateLabels {
    pub template: String,
    pub language: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TemplateChangeLabels {
    pub template: String,
    pub language: String,
    /// The new quality score or category.
    pub value: String,
}

pub struct Metrics {
    registry: Registry,
    /// Template quality and category changes Meta reported.
    pub template_quality_changes: Family<TemplateChangeLabels, Counter>,
    pub template_category_changes: Family<TemplateChangeLabels, Counter>,
    /// Sends held back because their template is paused, disabled or rejected.
    pub template_sends_held: Family<TemplateLabels, Counter>,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: HistogramFamily,
    pub webhook_rejections: Family<RejectionLabels, Counter>,
    pub webhook_events_stored: Family<SourceLabels, Counter>,
    pub queue_items: Family<QueueLabels, Gauge>,
    pub worker_outcomes: Family<OutcomeLabels, Counter>,
    pub whatsapp_send_errors: Family<SendErrorLabels, Counter>,
    pub reward_pool_exhausted: Counter,
    pub reward_codes_free: Gauge,
    /// How long the oldest due item of each queue has waited (scrape time).
    pub queue_oldest_due_seconds: Family<QueueNameLabels, Gauge>,
    pub outside_calls: Family<OutsideCallLabels, Counter>,
    /// Rewards in the ledger by beneficiary and state (scrape time).
    pub rewards: Family<RewardLabels, Gauge>,
    /// The Flow data endpoint's answers by kind.
    pub flow_endpoint_answers: Family<FlowAnswerLabels, Counter>,
    /// Inbox events not yet handled, the age of the oldest, and whether that is over the
    /// configured bound (scrape time).
    pub inbox_backlog: Gauge,
    pub inbox_oldest_age_seconds: Gauge,
    pub inbox_backlogged: Gauge,
    /// Finished items deleted by the worker's upkeep, by queue.
    pub queue_pruned: Family<QueueNameLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowAnswerLabels {
    /// active, acknowledged, screen, field_error, finished, token_refused, undecryptable,
    /// signature_failed, bad_request, not_configured, unavailable
    pub answer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SendErrorLabels {
    pub class: String,
    pub code: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("referloop");
        let http_requests = Family::<RequestLabels, Counter>::default();
        let http_duration = HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        let webhook_rejections = Family::<RejectionLabels, Counter>::default();
        let webhook_events_stored = Family::<SourceLabels, Counter>::default();
        let queue_items = Family::<QueueLabels, Gauge>::default();
        let worker_outcomes = Family::<OutcomeLabels, Counter>::default();
        let whatsapp_send_errors = Family::<SendErrorLabels, Counter>::default();
        let reward_pool_exhausted = Counter::default();
        let reward_codes_free = Gauge::default();
        let template_sends_held = Family::<TemplateLabels, Counter>::default();
        let template_quality_changes = Family::<TemplateChangeLabels, Counter>::default();
        let template_category_changes = Family::<TemplateChangeLabels, Counter>::default();
        let queue_oldest_due_seconds = Family::<QueueNameLabels, Gauge>::default();
        let outside_calls = Family::<OutsideCallLabels, Counter>::default();
        let rewards = Family::<RewardLabels, Gauge>::default();
        let flow_endpoint_answers = Family::<FlowAnswerLabels, Counter>::default();
        let queue_pruned = Family::<QueueNameLabels, Counter>::default();
        registry.register(
            "queue_pruned",
            "Finished inbox events and jobs deleted after worker.keep_done_days (statuses: worker.keep_done_statuses_seconds)",
            queue_pruned.clone(),
        );
        let (inbox_backlog, inbox_oldest_age_seconds, inbox_backlogged) =
            (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register(
            "inbox_backlog",
            "Webhook events received and not yet handled (queued, waiting for a retry, or in hand; read from the database at scrape time)",
            inbox_backlog.clone(),
        );
        registry.register(
            "inbox_oldest_age_seconds",
            "How long the oldest webhook event not yet handled has waited since it was received (0 when none)",
            inbox_oldest_age_seconds.clone(),
        );
        registry.register(
            "inbox_backlogged",
            "1 while the inbox backlog is over worker.inbox_backlog_events or worker.inbox_backlog_seconds, else 0",
            inbox_backlogged.clone(),
        );
        registry.register(
            "flow_endpoint_answers",
            "Answers of the Flow data endpoint by kind (active, acknowledged, screen, field_error, finished, token_refused, undecryptable, signature_failed, bad_request, not_configured, unavailable)",
            flow_endpoint_answers.clone(),
        );
        registry.register(
            "queue_oldest_due_seconds",
            "How long the oldest item due in each queue has been waiting (0 when none; read from the database at scrape time)",
            queue_oldest_due_seconds.clone(),
        );
        registry.register(
            "outside_calls",
            "Calls to outside APIs by api (whatsapp, hubspot, stripe, reward_webhook) and outcome (ok, auth_refused, rate_limited, refused, server_error, timeout, unreachable)",
            outside_calls.clone(),
        );
        registry.register(
            "rewards",
            "Rewards in the ledger by beneficiary and state (read from the database at scrape time)",
            rewards.clone(),
        );
        registry.register(
            "template_quality_changes",
            "Template quality scores Meta reported (value: GREEN, YELLOW, RED, UNKNOWN)",
            template_quality_changes.clone(),
        );
        registry.register(
            "template_category_changes",
            "Template categories Meta changed or will change (value: the category)",
            template_category_changes.clone(),
        );
        registry.register(
            "template_sends_held",
            "Sends waiting because their template is paused, disabled or rejected (by template and language)",
            template_sends_held.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            http_duration.clone(),
        );
        registry.register(
            "webhook_rejections",
            "Webhook requests refused, by source and reason",
            webhook_rejections.clone(),
        );
        registry.register(
            "webhook_events_stored",
            "New webhook events stored in the inbox",
            webhook_events_stored.clone(),
        );
        registry.register("queue_items", "Inbox events and jobs by state", queue_items.clone());
        registry.register(
            "worker_outcomes",
            "Items the worker finished, by outcome",
            worker_outcomes.clone(),
        );
        registry.register(
            "whatsapp_send_errors",
            "WhatsApp sends Meta refused, by class and code (class account_level: every send will fail)",
            whatsapp_send_errors.clone(),
        );
        registry.register(
            "reward_pool_exhausted",
            "Rewards that found the discount-code pool empty",
            reward_pool_exhausted.clone(),
        );
        registry.register(
            "reward_codes_free",
            "Unused codes in the reward code pool (read from the database at scrape time)",
            reward_codes_free.clone(),
        );
        Metrics {
            registry,
            template_quality_changes,
            template_category_changes,
            template_sends_held,
            http_requests,
            http_duration,
            webhook_rejections,
            webhook_events_stored,
            queue_items,
            worker_outcomes,
            whatsapp_send_errors,
            reward_pool_exhausted,
            reward_codes_free,
            queue_oldest_due_seconds,
            outside_calls,
            rewards,
            flow_endpoint_answers,
            inbox_backlog,
            inbox_oldest_age_seconds,
            inbox_backlogged,
            queue_pruned,
        }
    }

    pub fn flow_answer(&self, answer: &str) {
        self.flow_endpoint_answers
            .get_or_create(&FlowAnswerLabels { answer: answer.into() })
            .inc();
    }

    pub fn outside_call(&self, api: &str, outcome: &str) {
        self.outside_calls
            .get_or_create(&OutsideCallLabels {
                api: api.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn reject(&self, source: &str, reason: &str) {
        self.webhook_rejections
            .get_or_create(&RejectionLabels {
                source: source.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn worker_outcome(&self, queue: &str, outcome: &str) {
        self.worker_outcomes
            .get_or_create(&OutcomeLabels {
                queue: queue.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn whatsapp_send_error(&self, class: &str, code: Option<i64>) {
        let code = code.map(|c| c.to_string()).unwrap_or_else(|| "none".into());
        self.whatsapp_send_errors
            .get_or_create(&SendErrorLabels {
                class: class.into(),
                code,
            })
            .inc();
    }

    pub fn queue_pruned(&self, queue: &str, n: u64) {
        self.queue_pruned
            .get_or_create(&QueueNameLabels { queue: queue.into() })
            .inc_by(n);
    }

    pub fn reward_pool_exhausted(&self) {
        self.reward_pool_exhausted.inc();
    }

    pub fn set_queue_items(&self, queue: &str, state: &str, n: i64) {
        self.queue_items
            .get_or_create(&QueueLabels {
                queue: queue.into(),
                state: state.into(),
            })
            .set(n);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
