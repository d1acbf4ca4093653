//! What the steps work with: the store, the settings and the outside-API clients.

use std::sync::Arc;

use crate::config::{Account, Settings};
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
    pub flow_token_secret: String,
    /// Refused submissions per open Flow (the endpoint's attempt limit).
    pub flow_refusals: crate::app::flow_endpoint::RefusalCounter,
    /// The configured experiments, with each variant's settings.
    pub experiments: Arc<crate::app::experiments::Experiments>,
}

impl Services {
    pub fn new(store: Store, settings: Arc<Settings>, metrics: Arc<Metrics>) -> anyhow::Result<Services> {
        // Each account live or recorded on its own; reward webhooks go with WhatsApp (a
        // programme whose messages are a rehearsal pays nothing out).
        let transport = |account| Outbound::new(&settings, settings.live(account), store.clone(), metrics.clone());
        let whatsapp = transport(Account::WhatsApp)?;
        store.tally_experiments(!settings.experiments.is_empty());
        Ok(Services {
            whatsapp: WhatsAppClient::new(&settings.whatsapp, whatsapp.clone(), &store),
            hubspot: HubSpotClient::new(&settings.hubspot, transport(Account::HubSpot)?, &store),
            stripe: StripeClient::new(&settings.stripe, transport(Account::Stripe)?),
            outbound: whatsapp,
            flow_token_secret: settings.flow_token_secret(),
            flow_refusals: Default::default(),
            experiments: Arc::new(crate::app::experiments::Experiments::new(&settings)),
            store,
            settings,
            metrics,
        })
    }

    /// The settings an invite's variant runs with (the base ones outside experiments).
    pub fn settings_for(&self, experiment: Option<&str>, variant: Option<&str>) -> &Arc<Settings> {
        self.experiments.settings(&self.settings, experiment, variant)
    }

    /// The settings of the variant an invite was given (one read, only while experiments
    /// are configured).
    pub async fn settings_for_invite(&self, invite_id: i64) -> Result<&Arc<Settings>, crate::store::StoreError> {
        if self.experiments.is_empty() {
            return Ok(&self.settings);
        }
        Ok(match self.store.invite(invite_id).await? {
            Some(invite) => self.settings_for(invite.experiment.as_deref(), invite.variant.as_deref()),
            None => &self.settings,
        })
    }

    /// The same, read in `tx`: a step that holds a connection must not wait for another
    /// from the pool (under load, every connection may be held by such a step).
    pub async fn settings_for_invite_in(
        &self,
        tx: &mut crate::store::Tx,
        invite_id: i64,
    ) -> Result<&Arc<Settings>, crate::store::StoreError> {
        if self.experiments.is_empty() {
            return Ok(&self.settings);
        }
        Ok(match tx.invite_variant(invite_id).await? {
            Some((experiment, variant)) => self.settings_for(experiment.as_deref(), variant.as_deref()),
            None => &self.settings,
        })
    }

    /// Milliseconds since the Unix epoch, by the store's clock (which tests move).
    pub fn now_ms(&self) -> i64 {
        self.store.now_ms()
    }
}
