//! What the steps work with: the store, the settings and the outside-API clients.

use std::sync::Arc;

use crate::config::Settings;
use crate::domain::code::CodePattern;
use crate::integrations::hubspot::HubSpotClient;
use crate::integrations::stripe::StripeClient;
use crate::integrations::whatsapp::WhatsAppClient;
use crate::integrations::Outbound;
use crate::metrics::Metrics;
use crate::store::Store;

pub struct Services {
    pub store: Store,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub whatsapp: WhatsAppClient,
    pub hubspot: HubSpotClient,
    pub stripe: StripeClient,
    /// For reward fulfilment webhooks to the business's own URL.
    pub outbound: Outbound,
    pub code_pattern: CodePattern,
    pub flow_token_secret: String,
    /// Refused submissions per open Flow (the endpoint's attempt limit).
    pub flow_refusals: crate::app::flow_endpoint::RefusalCounter,
}

impl Services {
    pub fn new(store: Store, settings: Arc<Settings>, metrics: Arc<Metrics>) -> anyhow::Result<Services> {
        let outbound = Outbound::new(&settings, store.clone(), metrics.clone())?;
        let code_pattern = CodePattern::parse(&settings.programme.code_pattern)?;
        Ok(Services {
            whatsapp: WhatsAppClient::new(&settings.whatsapp, outbound.clone(), &store),
            hubspot: HubSpotClient::new(&settings.hubspot, outbound.clone(), &store),
            stripe: StripeClient::new(&settings.stripe, outbound.clone()),
            outbound,
            flow_token_secret: settings.flow_token_secret(),
            flow_refusals: Default::default(),
            code_pattern,
            store,
            settings,
            metrics,
        })
    }
}
