//! The command line as an operator meets it: plain errors about the database, listings
//! that neither migrate nor print PostgreSQL's notices, and a configuration that names
//! its mistakes.

use std::process::{Command, Output};

fn referloop(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_referloop"));
    command.args(args).env_clear().env("REFERLOOP_LOG__LEVEL", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run referloop")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_missing_postgres_database_is_said_plainly_without_its_password() {
    let admin = crate::helpers::admin_url();
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin);
    let with_password = base
        .replacen("://", "://postgres:hunter2secret@", 1)
        .replacen("postgres@", "", 1);
    let url = format!("{with_password}/referloop_no_such_database");
    let output = referloop(&["referrals"], &[("DATABASE_URL", &url)]);
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("referloop_no_such_database"),
        "names the database: {said}"
    );
    assert!(
        said.contains("createdb referloop_no_such_database"),
        "says what to try: {said}"
    );
    assert!(!said.contains("hunter2secret"), "never the password: {said}");
    assert_eq!(said.matches("cannot open the database").count(), 1, "said once: {said}");
}

#[test]
fn listings_do_not_migrate() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    let output = referloop(&["referrals"], &[("DATABASE_URL", &url)]);
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("referloop migrate"), "{said}");
    let output = referloop(&["migrate"], &[("DATABASE_URL", &url)]);
    assert!(output.status.success(), "{}", text(&output));
    let output = referloop(&["referrals"], &[("DATABASE_URL", &url)]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(!text(&output).to_lowercase().contains("notice"), "{}", text(&output));
}

#[test]
fn configuration_mistakes_are_named() {
    let output = referloop(&["config"], &[("REFERLOOP_WHATSAP__APP_SECRET", "x")]);
    let said = text(&output);
    assert!(!output.status.success());
    assert!(
        said.contains("REFERLOOP_WHATSAP__APP_SECRET") && said.contains("did you mean `whatsapp`?"),
        "{said}"
    );
    let output = referloop(&["config"], &[]);
    assert!(output.status.success(), "{}", text(&output));
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        toml::from_str::<toml::Value>(&printed).is_ok(),
        "valid TOML:\n{printed}"
    );
}

/// `referloop config` prints what reads back as the same configuration: sandbox is not
/// pinned (a saved file still goes live when the token is added), and a database password
/// is left out, never printed as a stand-in.
#[test]
fn the_printed_configuration_reads_back() {
    let dir = tempfile::tempdir().expect("dir");
    let tokens = format!("{},viewer:{}", "a".repeat(64), "b".repeat(64));
    let printed = referloop(&["config"], &[("REFERLOOP_API__TOKENS", &tokens)]);
    assert!(printed.status.success(), "{}", text(&printed));
    let first = String::from_utf8_lossy(&printed.stdout).to_string();
    assert!(
        !first.lines().any(|l| l.starts_with("sandbox")),
        "sandbox pinned:\n{first}"
    );
    let file = dir.path().join("saved.toml");
    std::fs::write(&file, &first).expect("saved");
    let config = file.display().to_string();
    let again = referloop(&["--config", &config, "config"], &[]);
    assert_eq!(String::from_utf8_lossy(&again.stdout), first, "{}", text(&again));
    // The saved file with a token added goes live: nothing in it forces sandbox.
    let live = [
        ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", "EAAG-token"),
        ("REFERLOOP_WHATSAPP__PHONE_NUMBER_ID", "100000000000202"),
        ("REFERLOOP_WHATSAPP__WABA_ID", "100000000000303"),
    ];
    let said = text(&referloop(&["--config", &config, "config"], &live));
    assert!(said.contains("sandbox mode is off"), "{said}");
    let with_password = referloop(
        &["config"],
        &[("DATABASE_URL", "postgres://referloop:hunter2secret@db/referloop")],
    );
    let said = text(&with_password);
    assert!(
        !said.contains("hunter2secret") && said.contains("DATABASE_URL"),
        "{said}"
    );
    assert!(
        !said.lines().any(|l| !l.starts_with('#') && l.contains("[redacted]")),
        "no stand-in literal:\n{said}"
    );
}

/// `referloop config | head -1` and the like: the reader closing the pipe ends the
/// command quietly, not with a panic.
#[test]
fn a_closed_pipe_ends_a_listing_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_referloop"))
        .arg("config")
        .env_clear()
        .env("REFERLOOP_LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run referloop");
    // Closed before the command has loaded its configuration, let alone printed it.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("referloop ends");
    let said = text(&output);
    assert!(output.status.success(), "{:?}: {said}", output.status);
    assert!(!said.contains("panicked") && !said.contains("Broken pipe"), "{said}");
}

fn settings_error(env: &[(&str, &str)]) -> String {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    match referloop::config::Settings::load_from(None, env) {
        Ok(_) => panic!("the configuration was accepted"),
        Err(e) => e.to_string(),
    }
}

/// Lists in the environment: `a,b` or a JSON array; anything else names the key and the
/// two forms.
#[test]
fn lists_in_the_environment_are_commas_or_json() {
    let payloads = |value: &str| {
        let env = [(
            "REFERLOOP_PROGRAMME__STOP_BUTTON_PAYLOADS".to_string(),
            value.to_string(),
        )];
        referloop::config::Settings::load_from(None, env)
            .expect("settings")
            .programme
            .stop_button_payloads
    };
    assert_eq!(payloads("stop, Unsubscribe"), ["stop", "Unsubscribe"]);
    assert_eq!(
        payloads(r#"["stop", "Unsubscribe, please"]"#),
        ["stop", "Unsubscribe, please"]
    );
    let env = [(
        "REFERLOOP_WORKER__RETRY_SCHEDULE_SECONDS".to_string(),
        "[5, 30]".to_string(),
    )];
    let schedule = referloop::config::Settings::load_from(None, env).expect("numbers in a JSON list");
    assert_eq!(
        schedule.worker.retry_schedule,
        [5, 30].map(std::time::Duration::from_secs)
    );
    let said = settings_error(&[("REFERLOOP_PROGRAMME__STOP_BUTTON_PAYLOADS", r#"["stop","#)]);
    assert!(
        said.contains("programme.stop_button_payloads") && said.contains("JSON array"),
        "{said}"
    );
}

/// A variable with one underscore between section and key is told about the double one.
#[test]
fn a_single_underscore_gets_a_hint() {
    let said = settings_error(&[("REFERLOOP_WHATSAPP_APP_SECRET", "x")]);
    assert!(said.contains("REFERLOOP_WHATSAPP__APP_SECRET"), "{said}");
    assert!(said.contains("double underscore"), "{said}");
}

/// A setting that moved out of the configuration says where it went.
#[test]
fn removed_keys_say_where_their_setting_went() {
    let dir = tempfile::tempdir().expect("dir");
    for (toml, gone) in [
        ("[replies]\nopt_out_ack = \"Bye\"\n", "replies"),
        ("[templates]\nflow_cta = \"Go\"\n", "templates.flow_cta"),
        ("[programme]\nstop_keywords = [\"STOP\"]\n", "programme.stop_keywords"),
    ] {
        let file = dir.path().join("referloop.toml");
        std::fs::write(&file, toml).expect("file");
        let output = referloop(&["--config", &file.display().to_string(), "config"], &[]);
        let said = text(&output);
        assert!(!output.status.success(), "{said}");
        assert!(
            said.contains(gone) && said.contains("message catalogue"),
            "{gone}: {said}"
        );
    }
    // A mistake in a file names the file and its line.
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "# settings\n[server]\nlistn = \"127.0.0.1:8080\"\n").expect("file");
    let said = text(&referloop(&["--config", &file.display().to_string(), "config"], &[]));
    assert!(said.contains(&format!("{}, line 3", file.display())), "{said}");
}

/// An endpoint Flow without its key is said by doctor, in sandbox too (serve logs the
/// same warning at start).
#[test]
fn an_endpoint_flow_without_a_key_is_said() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("doctor.db").display());
    assert!(referloop(&["migrate"], &[("DATABASE_URL", &url)]).status.success());
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("REFERLOOP_WHATSAPP__FLOW_KIND", "endpoint"),
    ];
    let said = text(&referloop(&["doctor"], &env));
    assert!(said.contains("no private key is configured"), "{said}");
    let said = text(&referloop(&["doctor"], &[("DATABASE_URL", url.as_str())]));
    assert!(!said.contains("no private key"), "a static Flow needs none: {said}");
}

/// The go-live list's `setup` and `doctor` commands, in the README's order.
fn go_live_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let start = readme.find("## Go live").expect("the go-live section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |end| end + 3)];
    // The numbered steps, in order.
    let section = &section[section.find("\n1. ").expect("a numbered list")..];
    let mut commands: Vec<String> = Vec::new();
    for piece in section.split('`').skip(1).step_by(2) {
        if let Some(args) = piece.strip_prefix("referloop ") {
            if (args.starts_with("setup ") || args == "doctor") && !commands.iter().any(|c| c == args) {
                commands.push(args.to_string());
            }
        }
    }
    assert_eq!(
        commands,
        ["setup hubspot", "setup whatsapp", "setup stripe", "doctor"],
        "the go-live list's commands"
    );
    commands
}

/// What `referloop serve` logs until it says it is serving (or 60 s pass); then it is
/// stopped.
fn serve_start_log(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("serve.log");
    let file = std::fs::File::create(&log).expect("log file");
    let url = format!("sqlite://{}", dir.path().join("serve.db").display());
    let mut command = Command::new(env!("CARGO_BIN_EXE_referloop"));
    command
        .arg("serve")
        .env_clear()
        .env("REFERLOOP_LOG__LEVEL", "info")
        .env("REFERLOOP_SERVER__LISTEN", "127.0.0.1:0")
        .env("DATABASE_URL", &url)
        .stdout(file.try_clone().expect("log file"))
        .stderr(file);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("run referloop serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut said = String::new();
    while std::time::Instant::now() < deadline {
        said = std::fs::read_to_string(&log).unwrap_or_default();
        if said.contains("referloop serving") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(said.contains("referloop serving"), "serve started:\n{said}");
    said
}

/// `serve` warns at start about an endpoint Flow without its key (and says nothing of a
/// key when the Flow is static).
#[test]
fn serve_warns_of_an_endpoint_flow_without_a_key() {
    let said = serve_start_log(&[("REFERLOOP_WHATSAPP__FLOW_KIND", "endpoint")]);
    assert!(said.contains(referloop::setup::doctor::NO_FLOW_KEY), "{said}");
    assert!(said.contains("WARN"), "as a warning: {said}");
    let said = serve_start_log(&[]);
    assert!(!said.contains("no private key"), "a static Flow needs none: {said}");
}

/// Go-live step 2 on a fresh install, in sandbox (no accounts configured yet): setup
/// migrates the new database itself, and says what it would create, never "created".
#[test]
fn setup_on_a_fresh_install_says_what_it_would_create() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    for args in [
        &["setup", "hubspot", "--dry-run"][..],
        &["setup", "hubspot"],
        &["setup", "whatsapp"],
    ] {
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("REFERLOOP_WHATSAPP__BUSINESS_NAME", "Acme"),
            ("REFERLOOP_WHATSAPP__WABA_ID", "100000000000303"),
        ];
        let output = referloop(args, &env);
        let said = text(&output);
        assert!(output.status.success(), "{args:?}: {said}");
        assert!(!said.contains("created "), "{args:?}: nothing was created: {said}");
    }
    let said = text(&referloop(&["setup", "hubspot"], &[("DATABASE_URL", &url)]));
    assert!(said.contains("would create  property group referloop"), "{said}");
}

/// On a terminal `users add` prompts for the password and does not echo it. The test
/// gives it a terminal with util-linux `script` and types once the prompt is shown.
#[test]
fn users_add_prompts_without_echo_on_a_terminal() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("users.db").display());
    assert!(referloop(&["migrate"], &[("DATABASE_URL", &url)]).status.success());
    let command = format!("{} users add alice --role viewer", env!("CARGO_BIN_EXE_referloop"));
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &url)
        .env("REFERLOOP_LOG__LEVEL", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux script");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 256];
            while let Ok(n) = stdout.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                seen.lock().expect("lock").extend_from_slice(&buffer[..n]);
            }
        })
    };
    let shown = |what: &str| String::from_utf8_lossy(&seen.lock().expect("lock")).contains(what);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !shown("Password for alice") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        shown("Password for alice"),
        "a prompt: {:?}",
        String::from_utf8_lossy(&seen.lock().expect("lock"))
    );
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"correct-horse-battery\n").expect("typed");
    let status = child.wait().expect("script ends");
    drop(stdin);
    reader.join().expect("reader");
    let said = String::from_utf8_lossy(&seen.lock().expect("lock")).to_string();
    assert!(status.success(), "{said}");
    assert!(said.contains("user alice (viewer) saved"), "{said}");
    assert!(
        !said.contains("correct-horse-battery"),
        "the password was echoed: {said}"
    );
}

/// The README's go-live list, its commands in order, from an empty directory with no
/// account credential yet (every call recorded): each step succeeds, none says it created
/// what it did not, and doctor says the accounts are not live yet.
#[test]
fn the_go_live_commands_run_in_order_from_an_empty_directory() {
    let commands = go_live_commands();
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("referloop.db").display());
    // What the list's steps set besides the credentials.
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("REFERLOOP_WHATSAPP__WABA_ID", "100000000000303"),
        ("REFERLOOP_WHATSAPP__BUSINESS_NAME", "Acme"),
        ("REFERLOOP_WHATSAPP__APP_SECRET", "app-secret"),
        ("REFERLOOP_WHATSAPP__VERIFY_TOKEN", "verify"),
        ("REFERLOOP_HUBSPOT__CLIENT_SECRET", "client-secret"),
    ];
    for args in commands {
        let argv: Vec<&str> = args.split(' ').collect();
        let output = referloop(&argv, &env);
        let said = text(&output);
        assert!(output.status.success(), "`referloop {args}` failed:\n{said}");
        assert!(
            !said.contains("created "),
            "`referloop {args}` created nothing:\n{said}"
        );
        assert!(
            said.contains("recorded (sandbox)"),
            "`referloop {args}` says the accounts are not live:\n{said}"
        );
    }
}

/// The README's go-live list, its commands in order, from an empty directory, against
/// stateful fakes of all three accounts (HubSpot's properties, Meta's templates, Flows
/// and subscriptions, Stripe's webhook endpoints), each account live. Between the steps
/// the test does what the list tells a person to do: sets `templates.flow_id` from
/// `setup whatsapp`, lets Meta approve the templates, stores the secret `setup stripe`
/// prints. Each step succeeds; doctor ends with "nothing blocks going live"; what setup
/// says it created is what the fakes hold; a second pass creates nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_go_live_commands_run_in_order_against_the_accounts() {
    use crate::fakes::{HUBSPOT_TOKEN, META_TOKEN, PHONE_NUMBER_ID};
    use crate::setup::{Endpoints, GraphAccount, Properties};
    use serde_json::json;
    use wiremock::matchers::{header, method, path, path_regex, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const WABA: &str = "100000000000101";
    let meta = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v24.0/debug_token"))
        .and(query_param("input_token", META_TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": {
            "type": "SYSTEM_USER", "is_valid": true,
            "scopes": ["whatsapp_business_management", "whatsapp_business_messaging"],
            "granular_scopes": [
                {"scope": "whatsapp_business_management", "target_ids": [WABA]},
                {"scope": "whatsapp_business_messaging", "target_ids": [WABA]}]}})))
        .mount(&meta)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v24.0/{PHONE_NUMBER_ID}")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"display_phone_number": "+1 555-000-1234",
            "verified_name": "Acme", "quality_rating": "GREEN", "messaging_limit_tier": "TIER_1K",
            "id": PHONE_NUMBER_ID, "health_status": {"can_send_message": "AVAILABLE", "entities": []}})),
        )
        .mount(&meta)
        .await;
    let graph = GraphAccount::default();
    Mock::given(path_regex(r"^/v24\.0/"))
        .and(header("authorization", format!("Bearer {META_TOKEN}").as_str()))
        .respond_with(graph.clone())
        .mount(&meta)
        .await;
    let hubspot = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/v2/private-apps/get/access-token-info"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"userId": 4_100_001, "hubId": 48_000_001,
            "appId": 3_300_001, "scopes": ["crm.objects.contacts.read", "crm.objects.contacts.write",
            "crm.objects.deals.read", "crm.schemas.contacts.read", "crm.schemas.contacts.write"]})),
        )
        .mount(&hubspot)
        .await;
    // A new portal has HubSpot's own NPS property and none of ours.
    let properties = Properties::default().with(
        "/hs_feedback_last_nps_rating",
        json!({"name": "hs_feedback_last_nps_rating", "type": "number", "fieldType": "number"}),
    );
    Mock::given(path_regex(r"^/crm/v3/properties/contacts"))
        .and(header("authorization", format!("Bearer {HUBSPOT_TOKEN}").as_str()))
        .respond_with(properties.clone())
        .mount(&hubspot)
        .await;
    let stripe = MockServer::start().await;
    let endpoints = Endpoints::default();
    Mock::given(path("/v1/webhook_endpoints"))
        .and(header("authorization", "Bearer sk_live_golive"))
        .respond_with(endpoints.clone())
        .mount(&stripe)
        .await;

    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("referloop.db").display());
    // Steps 1 and 4: the credentials and the account's settings.
    let mut env: Vec<(String, String)> = [
        ("DATABASE_URL", url.as_str()),
        ("REFERLOOP_SERVER__PUBLIC_BASE_URL", "https://referrals.example.com"),
        ("REFERLOOP_HUBSPOT__API_BASE", hubspot.uri().as_str()),
        ("REFERLOOP_HUBSPOT__ACCESS_TOKEN", HUBSPOT_TOKEN),
        ("REFERLOOP_HUBSPOT__CLIENT_SECRET", "client-secret"),
        ("REFERLOOP_WHATSAPP__API_BASE", meta.uri().as_str()),
        ("REFERLOOP_WHATSAPP__ACCESS_TOKEN", META_TOKEN),
        ("REFERLOOP_WHATSAPP__PHONE_NUMBER_ID", PHONE_NUMBER_ID),
        ("REFERLOOP_WHATSAPP__WABA_ID", WABA),
        ("REFERLOOP_WHATSAPP__BUSINESS_NAME", "Acme"),
        ("REFERLOOP_WHATSAPP__APP_SECRET", "app-secret"),
        ("REFERLOOP_WHATSAPP__VERIFY_TOKEN", "verify"),
        ("REFERLOOP_STRIPE__API_BASE", stripe.uri().as_str()),
        ("REFERLOOP_STRIPE__SECRET_KEY", "sk_live_golive"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let run = |args: String, env: Vec<(String, String)>| async move {
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let output = referloop(&args.split(' ').collect::<Vec<_>>(), &env);
            (output.status.success(), text(&output))
        })
        .await
        .expect("referloop ran")
    };
    for args in go_live_commands() {
        let (ok, said) = run(args.clone(), env.clone()).await;
        println!("$ referloop {args}\n{said}");
        assert!(ok, "`referloop {args}` failed:\n{said}");
        assert!(!said.contains("recorded (sandbox)"), "every account is live:\n{said}");
        match args.as_str() {
            "setup hubspot" => assert!(said.contains("created "), "{said}"),
            "setup whatsapp" => {
                // Step 5: set templates.flow_id to the id it prints, and wait for approval.
                let flow_id = said
                    .split("set templates.flow_id = \"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .expect("setup whatsapp names the Flow's id");
                env.push(("REFERLOOP_TEMPLATES__FLOW_ID".into(), flow_id.to_string()));
                let mut state = graph.state.lock().expect("Graph state");
                for template in state.templates.iter_mut() {
                    template["status"] = json!("APPROVED");
                }
            }
            "setup stripe" => {
                // Step 7: store the secret it prints as stripe.webhook_secret.
                let secret = said
                    .split("it is not shown again): ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .expect("setup stripe prints the endpoint's secret");
                env.push(("REFERLOOP_STRIPE__WEBHOOK_SECRET".into(), secret.to_string()));
            }
            _ => assert!(said.contains("nothing blocks going live"), "{said}"),
        }
    }
    {
        let created = properties.0.lock().map(|all| all.len()).unwrap_or(0);
        assert!(created > 8, "the group and our properties exist in HubSpot ({created})");
        let state = graph.state.lock().expect("Graph state");
        assert_eq!(state.templates.len(), 8, "the eight templates, in the one language");
        assert_eq!(state.flows.len(), 1);
        assert_eq!(state.flows[0]["status"], "PUBLISHED");
        assert!(state.subscribed);
        assert_eq!(
            endpoints.0.lock().map(|e| e.len()).unwrap_or(0),
            1,
            "one Stripe endpoint"
        );
    }
    // The list again, on the configured accounts: nothing new.
    for args in go_live_commands() {
        let (ok, said) = run(args.clone(), env.clone()).await;
        assert!(ok, "`referloop {args}` again failed:\n{said}");
        assert!(
            !said.contains("created "),
            "`referloop {args}` again created nothing:\n{said}"
        );
    }
    assert_eq!(
        endpoints.0.lock().map(|e| e.len()).unwrap_or(0),
        1,
        "still one Stripe endpoint"
    );
    crate::contract::assert_requests_on_contract(&meta, "the go-live commands").await;
}

/// `referloop users add` reads the password from standard input (never the command
/// line), refuses short ones and unknown roles, and stores only an argon2id hash.
#[tokio::test]
async fn dashboard_users_are_added_with_a_password_from_stdin() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("directory");
    let url = format!("sqlite://{}", dir.path().join("users.db").display());
    let add = |role: &str, password: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_referloop"))
            .args(["users", "add", "olga", "--role", role])
            .env_clear()
            .env("REFERLOOP_LOG__LEVEL", "warn")
            .env("DATABASE_URL", &url)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run referloop");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = writeln!(stdin, "{password}");
        }
        child.wait_with_output().expect("output")
    };
    let short = add("operator", "too short");
    assert!(!short.status.success());
    assert!(text(&short).contains("at least 12 characters"), "{}", text(&short));
    let bad_role = add("admin", "a long enough password");
    assert_eq!(bad_role.status.code(), Some(2), "{}", text(&bad_role));
    assert!(text(&bad_role).contains("viewer, operator"), "{}", text(&bad_role));
    let added = add("operator", "a long enough password");
    assert!(added.status.success(), "{}", text(&added));
    let listed = referloop(&["users", "list"], &[("DATABASE_URL", &url)]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "olga\toperator");
    let store = referloop::store::Store::connect(&url, 1).await.expect("store");
    let user = store.admin_user("olga").await.expect("read").expect("olga");
    assert!(user.password_hash.starts_with("$argon2id$"));
    assert!(!user.password_hash.contains("a long enough password"));
    let disabled = referloop(&["users", "disable", "olga"], &[("DATABASE_URL", &url)]);
    assert!(disabled.status.success(), "{}", text(&disabled));
    let listed = referloop(&["users", "list"], &[("DATABASE_URL", &url)]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("(disabled)"));
}

#[test]
fn flow_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("flow.pem");
    let key_arg = key.display().to_string();
    let output = referloop(&["flow", "keygen", "--out", &key_arg], &[]);
    assert!(output.status.success(), "{}", text(&output));
    let public = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
    let private = std::fs::read_to_string(&key).expect("written");
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(!public.contains("PRIVATE"), "the private key is never printed");
    let mode = std::fs::metadata(&key).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The configured key's public half is what keygen printed.
    let configured = [("REFERLOOP_WHATSAPP__FLOW_PRIVATE_KEY_FILE", key_arg.as_str())];
    let output = referloop(&["flow", "public-key"], &configured);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), public);
    // A second keygen does not replace the key in use.
    let again = referloop(&["flow", "keygen", "--out", &key_arg], &[]);
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&key).expect("kept"), private);
    // A key file others can read is refused, by name, without its contents.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let output = referloop(&["flow", "public-key"], &configured);
    let said = text(&output);
    assert!(!output.status.success());
    assert!(said.contains("chmod 600"), "{said}");
    assert!(!said.contains("BEGIN PRIVATE KEY"), "{said}");
    let dir_url = format!("sqlite://{}", dir.path().join("serve.db").display());
    let serve = referloop(
        &["serve"],
        &[
            configured[0],
            ("DATABASE_URL", dir_url.as_str()),
            ("REFERLOOP_SERVER__LISTEN", "127.0.0.1:0"),
        ],
    );
    assert!(!serve.status.success(), "serve refuses to start with a readable key");
    assert!(text(&serve).contains("Flow endpoint's key"), "{}", text(&serve));
}
