//! The customer's language: templates, Flows and every text referloop writes itself come
//! in the contact's language (with the fallback chain), and stop keywords work in each.

use referloop::store::Backend;
use serde_json::{json, Value};

use crate::both_backends;
use crate::fakes::*;
use crate::helpers::*;

fn catalogue(language: &str) -> toml::Table {
    let text = match language {
        "en_US" => include_str!("../../templates/messages/en_US.toml"),
        "es" => include_str!("../../templates/messages/es.toml"),
        "pt_BR" => include_str!("../../templates/messages/pt_BR.toml"),
        "fr" => include_str!("../../templates/messages/fr.toml"),
        "de" => include_str!("../../templates/messages/de.toml"),
        other => panic!("no catalogue {other}"),
    };
    text.parse().expect("toml")
}

fn text_of(language: &str, table: &str, key: &str) -> String {
    catalogue(language)[table][key].as_str().unwrap_or_default().to_string()
}

/// Triggers an invite for a contact with a language; returns the invite template sent.
async fn invite_in(lc: &Lifecycle, contact_id: &str, phone: &str, language: &str) -> Value {
    let body = json!({"hs_object_id": contact_id, "firstname": "Ana", "mobilephone": phone,
                      "hs_language": language, "hs_feedback_last_nps_rating": "10"});
    assert_eq!(lc.trigger("trigger=nps", body).await, 200);
    lc.settle().await;
    lc.sent_of("tmpl_referral_invite")
        .await
        .into_iter()
        .find(|m| m["to"] == phone)
        .expect("an invite")
}

const ALL_FIVE: &str = "en_US,es,pt_BR,fr,de";

async fn a_contacts_language_picks_templates_flow_and_replies(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| set_env(env, "REFERLOOP_TEMPLATES__LANGUAGES", ALL_FIVE)).await;
    let cases = [
        ("91001", "+447911200001", "es-MX", "es"),
        ("91002", "+447911200002", "pt", "pt_BR"),
        ("91003", "+447911200003", "PT-br", "pt_BR"),
        ("91004", "+447911200004", "fr", "fr"),
        ("91005", "+447911200005", "de-AT", "de"),
        ("91006", "+447911200006", "ja", "en_US"),
        ("91007", "+447911200007", "", "en_US"),
    ];
    for (contact, phone, contact_language, expected) in cases {
        let invite = invite_in(&lc, contact, phone, contact_language).await;
        assert_eq!(invite["template"]["language"]["code"], expected, "{contact_language}");
    }
    // The Spanish referrer taps "Refer someone": the Spanish Flow, in Spanish words.
    let invites = lc.app.store.list_invites(20).await.expect("invites");
    let spanish = invites
        .iter()
        .find(|i| i.phone.as_ref().map(|p| p.as_str()) == Some("+447911200001"))
        .expect("the Spanish invite");
    assert_eq!(spanish.language, "es");
    assert_eq!(
        lc.inbound(refer_tap("+447911200001", "wamid.ES.TAP", spanish.id)).await,
        200
    );
    lc.settle().await;
    let flow = lc
        .sent_of("interactive")
        .await
        .into_iter()
        .find(|m| m["to"] == "+447911200001")
        .expect("a Flow");
    let parameters = &flow["interactive"]["action"]["parameters"];
    assert_eq!(parameters["flow_name"], "referral_nomination_es");
    assert_eq!(parameters["flow_cta"], text_of("es", "replies", "flow_cta").as_str());
    let prompt = text_of("es", "replies", "flow_prompt").replace("{greeting}", ", Ana");
    assert_eq!(flow["interactive"]["body"]["text"], prompt.as_str());
    // Nominating themselves: the refusal comes in Spanish.
    let token = parameters["flow_token"].as_str().expect("token").to_string();
    let reply = flow_reply(
        "+447911200001",
        "wamid.ES.R1",
        "x",
        json!({"flow_token": token, "friend_name": "Yo", "friend_phone": "+447911200001"}),
    );
    assert_eq!(lc.inbound(reply).await, 200);
    lc.settle().await;
    let refusal = lc
        .sent_of("text")
        .await
        .into_iter()
        .find(|m| m["to"] == "+447911200001")
        .expect("a refusal");
    assert_eq!(
        refusal["text"]["body"],
        text_of("es", "refusals", "self_referral").as_str()
    );
    lc.shutdown().await;
}

/// With the defaults: templates in English only, stop keywords in all five languages.
async fn stop_keywords_in_each_language_opt_out_and_answer_in_it(backend: Backend) {
    let lc = Lifecycle::start(backend, |_| {}).await;
    let cases = [
        ("+447911000101", "STOP", "en_US"),
        ("+447911000102", "¡Baja!", "es"),
        ("+447911000103", "  parar ", "es"),
        ("+447911000104", "Sair", "pt_BR"),
        ("+447911000105", "Arrêter", "fr"),
        ("+447911000106", "ARRETER", "fr"),
        ("+447911000107", "désabonner.", "fr"),
        ("+447911000108", "Stopp", "de"),
        ("+447911000109", "ABMELDEN", "de"),
    ];
    for (i, (phone, keyword, _)) in cases.iter().enumerate() {
        let message = text_message(phone, &format!("wamid.STOP{i}"), keyword);
        assert_eq!(lc.inbound(message).await, 200);
    }
    let not_a_keyword = text_message("+447911000110", "wamid.NOSTOP", "please don't stop");
    assert_eq!(lc.inbound(not_a_keyword).await, 200);
    lc.settle().await;
    let texts = lc.sent_of("text").await;
    for (phone, keyword, language) in cases {
        assert!(
            lc.app.store.is_opted_out(&e164(phone)).await.expect("store"),
            "{keyword} opts out"
        );
        let acks: Vec<&Value> = texts.iter().filter(|m| m["to"] == phone).collect();
        assert_eq!(acks.len(), 1, "{keyword}: one acknowledgement");
        assert_eq!(
            acks[0]["text"]["body"],
            text_of(language, "replies", "opt_out_ack").as_str(),
            "{keyword}: answered in {language}"
        );
    }
    assert!(!lc.app.store.is_opted_out(&e164("+447911000110")).await.expect("store"));
    lc.shutdown().await;
}

async fn a_language_left_out_of_the_configuration_falls_back(backend: Backend) {
    let lc = Lifecycle::start(backend, |env| {
        set_env(env, "REFERLOOP_TEMPLATES__LANGUAGES", "en_US,pt_BR");
        set_env(env, "REFERLOOP_PROGRAMME__STOP_KEYWORD_LANGUAGES", "");
    })
    .await;
    let invite = invite_in(&lc, "92001", "+447911000201", "es").await;
    assert_eq!(invite["template"]["language"]["code"], "en_US", "es is not configured");
    let invite = invite_in(&lc, "92002", "+447911000202", "pt-PT").await;
    assert_eq!(invite["template"]["language"]["code"], "pt_BR", "pt_PT → pt → pt_BR");
    // With no extra stop keyword languages, only the configured languages' words count.
    for (i, (phone, word)) in [
        ("+447911000203", "BAJA"),
        ("+447911000204", "SAIR"),
        ("+447911000205", "stop"),
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(lc.inbound(text_message(phone, &format!("wamid.F{i}"), word)).await, 200);
    }
    lc.settle().await;
    let store = &lc.app.store;
    assert!(!store.is_opted_out(&e164("+447911000203")).await.expect("store"));
    assert!(store.is_opted_out(&e164("+447911000204")).await.expect("store"));
    assert!(store.is_opted_out(&e164("+447911000205")).await.expect("store"));
    lc.shutdown().await;
}

both_backends!(
    a_contacts_language_picks_templates_flow_and_replies,
    stop_keywords_in_each_language_opt_out_and_answer_in_it,
    a_language_left_out_of_the_configuration_falls_back,
);
