//! The configuration's promises: defaults that load, keys named in every refusal,
//! secrets redacted, and a printed configuration that reads back.

use std::time::Duration;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn defaults_need_no_configuration() {
    let s = Settings::load_from(None, env(&[])).expect("defaults load");
    assert_eq!(s.server.listen, "127.0.0.1:8080");
    assert_eq!(s.database.url, "sqlite://referloop.db");
    assert!(s.sandbox(), "sandbox while no access token");
    assert!(s.whatsapp.app_secret.is_none());
}

#[test]
fn reward_descriptions_follow_the_beneficiarys_language() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("referloop.toml");
    std::fs::write(
        &path,
        "[rewards.friend]\ndescriptions = { es = \"10 $ de descuento\", pt_BR = \"R$ 10 de desconto\" }\n",
    )
    .expect("write");
    let s = Settings::load_from(Some(&path), env(&[])).expect("loads");
    let friend = &s.rewards.friend;
    assert_eq!(friend.description_in("es-MX"), "10 $ de descuento");
    assert_eq!(friend.description_in("pt"), "R$ 10 de desconto");
    assert_eq!(friend.description_in("de"), "$10 off your first order");
    assert_eq!(s.rewards.referrer.description_in("es"), "a $10 thank-you credit");
}

#[test]
fn the_flow_endpoint_path_is_a_path_of_its_own() {
    for bad in [
        "",
        "/",
        "flow",
        "/webhooks/whatsapp",
        "/admin/flow",
        "/api/v1/flow",
        "/flow/{id}",
    ] {
        let loaded = Settings::load_from(None, env(&[("REFERLOOP_WHATSAPP__FLOW_ENDPOINT_PATH", bad)]));
        assert!(loaded.is_err(), "{bad:?}");
    }
    let custom = Settings::load_from(
        None,
        env(&[("REFERLOOP_WHATSAPP__FLOW_ENDPOINT_PATH", "/meta/flow-data")]),
    );
    assert_eq!(custom.expect("loads").whatsapp.flow_endpoint_path, "/meta/flow-data");
}

#[test]
fn file_overrides_defaults_and_env_overrides_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("referloop.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"0.0.0.0:9000\"\n[database]\nmax_connections = 3\n[whatsapp]\nverify_token = \"from-file\"\n",
    )
    .expect("write");
    let s = Settings::load_from(
        Some(&path),
        env(&[
            ("REFERLOOP_DATABASE__MAX_CONNECTIONS", "7"),
            ("REFERLOOP_WHATSAPP__APP_SECRET", "s3cret"),
            ("REFERLOOP_HUBSPOT__WEBHOOK_API_KEY", "007"),
            ("REFERLOOP_SANDBOX", "false"),
            ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", "1e6"),
            ("REFERLOOP_WHATSAPP__PHONE_NUMBER_ID", "100000000000202"),
            ("REFERLOOP_WORKER__RETRY_SCHEDULE_SECONDS", "1,2,3"),
            ("UNRELATED", "x"),
        ]),
    )
    .expect("load");
    assert_eq!(s.server.listen, "0.0.0.0:9000");
    assert_eq!(s.database.max_connections.get(), 7);
    assert_eq!(secret_value(&s.whatsapp.app_secret), Some("s3cret"));
    assert_eq!(secret_value(&s.whatsapp.verify_token), Some("from-file"));
    assert_eq!(s.worker.retry_schedule, [1, 2, 3].map(Duration::from_secs));
    assert_eq!(
        secret_value(&s.hubspot.webhook_api_key),
        Some("007"),
        "secrets stay strings"
    );
    assert_eq!(secret_value(&s.whatsapp.access_token), Some("1e6"));
    assert!(!s.sandbox());
    let one = Settings::load_from(None, env(&[("REFERLOOP_WORKER__RETRY_SCHEDULE_SECONDS", "60")])).expect("one entry");
    assert_eq!(one.worker.retry_schedule, [Duration::from_secs(60)]);
}

#[test]
fn database_url_wins_over_everything() {
    let s = Settings::load_from(
        None,
        env(&[
            ("REFERLOOP_DATABASE__URL", "sqlite://a.db"),
            ("DATABASE_URL", "postgres://root@127.0.0.1/test"),
        ]),
    )
    .expect("load");
    assert_eq!(s.database.url, "postgres://root@127.0.0.1/test");
}

#[test]
fn access_token_turns_sandbox_off_unless_forced() {
    let s = Settings::load_from(
        None,
        env(&[
            ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", "EAAB"),
            ("REFERLOOP_WHATSAPP__PHONE_NUMBER_ID", "1"),
        ]),
    )
    .expect("load");
    assert!(!s.sandbox());
    let err = Settings::load_from(None, env(&[("REFERLOOP_WHATSAPP__ACCESS_TOKEN", "EAAB")])).expect_err("no id");
    assert!(err.to_string().contains("whatsapp.phone_number_id"), "{err}");
    let s = Settings::load_from(
        None,
        env(&[
            ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", "EAAB"),
            ("REFERLOOP_SANDBOX", "true"),
        ]),
    )
    .expect("load");
    assert!(s.sandbox());
}

#[test]
fn each_account_goes_live_with_its_own_credential() {
    let s = Settings::load_from(None, env(&[("REFERLOOP_HUBSPOT__ACCESS_TOKEN", "pat-1")])).expect("load");
    assert!(s.live(Account::HubSpot), "HubSpot can be set up before WhatsApp");
    assert!(!s.live(Account::WhatsApp) && !s.live(Account::Stripe) && s.sandbox());
    let s = Settings::load_from(None, env(&[("REFERLOOP_STRIPE__SECRET_KEY", "sk_test_1")])).expect("load");
    assert!(s.live(Account::Stripe) && !s.live(Account::HubSpot));
    let forced = Settings::load_from(
        None,
        env(&[
            ("REFERLOOP_HUBSPOT__ACCESS_TOKEN", "pat-1"),
            ("REFERLOOP_SANDBOX", "true"),
        ]),
    )
    .expect("load");
    assert!(
        Account::ALL.iter().all(|a| !forced.live(*a)),
        "sandbox = true records every call"
    );
}

#[test]
fn invalid_values_name_the_key() {
    let err = Settings::load_from(None, env(&[("REFERLOOP_SERVER__LISTEN", "nowhere")])).expect_err("invalid listen");
    assert!(err.to_string().contains("server.listen"), "{err}");
    let err =
        Settings::load_from(None, env(&[("REFERLOOP_DATABASE__MAX_CONNECTIONS", "many")])).expect_err("invalid number");
    assert!(err.to_string().contains("max_connections"), "{err}");
    let err = Settings::load_from(None, env(&[("REFERLOOP_LOG__FORMAT", "xml")])).expect_err("bad enum");
    assert!(err.to_string().contains("format"), "{err}");
}

#[test]
fn unknown_keys_are_named_with_a_suggestion() {
    let err = Settings::load_from(None, env(&[("REFERLOOP_WHATSAP__APP_SECRET", "x")])).expect_err("typo");
    let text = err.to_string();
    assert!(text.contains("unknown key `whatsap`"), "{text}");
    assert!(text.contains("REFERLOOP_WHATSAP__APP_SECRET"), "{text}");
    assert!(text.contains("did you mean `whatsapp`?"), "{text}");
    let err = Settings::load_from(None, env(&[("REFERLOOP_WHATSAPP__APP_SECRE", "x")])).expect_err("typo");
    assert!(err.to_string().contains("did you mean `whatsapp.app_secret`?"), "{err}");

    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("referloop.toml");
    std::fs::write(&file, "[whatsap]\napp_secret = \"x\"\n").expect("write");
    let err = Settings::load_from(Some(&file), env(&[])).expect_err("typo in the file");
    let text = err.to_string();
    assert!(
        text.contains("unknown key `whatsap`") && text.contains(&format!("in {}, line 1", file.display())),
        "{text}"
    );
    assert!(text.contains("did you mean `whatsapp`?"), "{text}");
    // The variable naming the file is not a setting.
    assert!(Settings::load_from(None, env(&[("REFERLOOP_CONFIG", "/etc/referloop.toml")])).is_ok());
}

#[test]
fn bad_enum_values_list_the_accepted_ones() {
    let err = Settings::load_from(None, env(&[("REFERLOOP_PROGRAMME__FRIEND_INVITE", "bogus")])).expect_err("bad");
    assert_eq!(
        err.to_string(),
        "configuration key `programme.friend_invite`: `bogus` is not one of `direct`, `share_link`, `auto`"
    );
}

#[test]
fn listen_takes_host_names() {
    for good in ["localhost:8080", "127.0.0.1:8080", "[::]:8080", "referloop.internal:80"] {
        assert!(
            Settings::load_from(None, env(&[("REFERLOOP_SERVER__LISTEN", good)])).is_ok(),
            "{good}"
        );
    }
    for bad in ["localhost", ":8080", "localhost:99999", "a b:80"] {
        assert!(
            Settings::load_from(None, env(&[("REFERLOOP_SERVER__LISTEN", bad)])).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn printed_configuration_reads_back_unchanged() {
    let s = Settings::load_from(None, env(&[("REFERLOOP_WHATSAPP__APP_SECRET", "topsecret-app")])).expect("load");
    let printed = s.to_redacted_toml();
    assert!(printed.lines().count() > 50, "one key per line:\n{printed}");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("printed.toml");
    std::fs::write(&file, &printed).expect("write");
    let again = Settings::load_from(Some(&file), env(&[])).expect("the printed file loads");
    let settings_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(settings_lines(&again.to_redacted_toml()), settings_lines(&printed));
    assert!(
        printed.contains("# app_secret = \"[redacted]\" (secret: set, not shown; give it in the environment)"),
        "{printed}"
    );
    assert!(!printed.contains("topsecret"));
}

#[test]
fn urls_lose_their_passwords() {
    assert_eq!(redact_url("sqlite://referloop.db"), "sqlite://referloop.db");
    assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(redact_url("postgres://u:p%40ss@h/db"), "postgres://u:[redacted]@h/db");
    assert_eq!(
        redact_url("postgres://u@h/db?sslmode=require&password=hunter2"),
        "postgres://u@h/db?sslmode=require&password=[redacted]"
    );
    assert_eq!(redact_url("not a url with secret"), "not a url with secret:[redacted]");
}

#[test]
fn printed_configuration_redacts_secrets() {
    let s = Settings::load_from(
        None,
        env(&[
            ("REFERLOOP_WHATSAPP__APP_SECRET", "topsecret-app"),
            ("REFERLOOP_STRIPE__WEBHOOK_SECRET", "whsec_topsecret"),
            ("DATABASE_URL", "postgres://referloop:dbpass@db.internal:5432/referloop"),
        ]),
    )
    .expect("load");
    let printed = s.to_redacted_toml();
    assert!(
        printed.contains("postgres://referloop:[redacted]@db.internal:5432/referloop"),
        "{printed}"
    );
    assert!(!format!("{s:?}").contains("dbpass"), "nor in Debug output");
    assert!(!printed.contains("topsecret"), "{printed}");
    assert!(
        !printed.contains("dbpass"),
        "the database password is redacted: {printed}"
    );
    assert!(printed.contains("[redacted]"));
    assert!(!format!("{s:?}").contains("topsecret"));
}

#[test]
fn a_count_or_rate_of_zero_is_refused_naming_its_key() {
    for key in [
        "worker.job_concurrency",
        "server.ingest_writers",
        "database.max_connections",
        "whatsapp.max_messages_per_second",
        "hubspot.searches_per_second",
    ] {
        let variable = format!("REFERLOOP_{}", key.to_ascii_uppercase().replace('.', "__"));
        let error = Settings::load_from(None, env(&[(&variable, "0")])).expect_err("zero refused");
        let text = error.to_string();
        assert!(text.contains(key) && text.contains("nonzero"), "{key}: {text}");
    }
}

#[test]
fn finished_work_is_kept_long_enough_to_recognise_redeliveries() {
    let defaults = Settings::load_from(None, env(&[])).expect("defaults");
    assert_eq!(defaults.worker.keep_done, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(defaults.worker.keep_done_statuses, Duration::from_secs(3600));
    for (variable, key) in [
        ("REFERLOOP_WORKER__KEEP_DONE_DAYS", "worker.keep_done_days"),
        (
            "REFERLOOP_WORKER__KEEP_DONE_STATUSES_SECONDS",
            "worker.keep_done_statuses_seconds",
        ),
    ] {
        let error = Settings::load_from(None, env(&[(variable, "0")])).expect_err("zero refused");
        assert!(error.to_string().contains(key), "{key}: {error}");
    }
}

#[test]
fn parsed_settings_are_refused_with_their_key() {
    for (variable, value, key, problem) in [
        (
            "REFERLOOP_SERVER__PUBLIC_BASE_URL",
            "referrals.example.com",
            "server.public_base_url",
            "is not an http(s) URL",
        ),
        (
            "REFERLOOP_HUBSPOT__API_BASE",
            "ftp://api.hubapi.com",
            "hubspot.api_base",
            "is not an http(s) URL",
        ),
        (
            "REFERLOOP_PROGRAMME__CODE_PATTERN",
            "{name:6}{random:1}",
            "programme.code_pattern",
            "random characters",
        ),
        (
            "REFERLOOP_API__TOKENS",
            "admin:abc",
            "api.tokens",
            "is not a token digest",
        ),
        (
            "REFERLOOP_PROGRAMME__REWARD_HOLD_DAYS",
            "-1",
            "programme.reward_hold_days",
            "",
        ),
        (
            "REFERLOOP_REWARDS__FRIEND__WEBHOOK_URL",
            "fulfil.example.com/rewards",
            "rewards.friend.webhook_url",
            "is not an http(s) URL",
        ),
        (
            "REFERLOOP_LOG__LEVEL",
            "referloop=loud",
            "log.level",
            "is not a log filter",
        ),
    ] {
        let err = Settings::load_from(None, env(&[(variable, value)])).expect_err(variable);
        let text = err.to_string();
        assert!(text.contains(key) && text.contains(problem), "{variable}: {text}");
    }
    let s = Settings::load_from(
        None,
        env(&[
            ("REFERLOOP_SERVER__PUBLIC_BASE_URL", "https://referrals.example.com/"),
            ("REFERLOOP_PROGRAMME__REWARD_HOLD_DAYS", "14"),
        ]),
    )
    .expect("loads");
    assert_eq!(
        s.server.public_base_url.join("/webhooks/stripe"),
        "https://referrals.example.com/webhooks/stripe"
    );
    assert_eq!(s.programme.reward_hold, Duration::from_secs(14 * 24 * 60 * 60));
}
