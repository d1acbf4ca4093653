//! The deployment files are used as written: every setting the compose file and the
//! example env file name is one referloop knows (an unknown key would stop start-up), and
//! the Dockerfile copies everything the build reads.

use referloop::config::Settings;

fn read(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// `KEY: value` and `KEY=value` lines naming a referloop setting.
fn settings_in(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(": ").or_else(|| line.split_once('=')))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .filter(|(k, _)| k.starts_with("REFERLOOP_") && k != "REFERLOOP_DOMAIN" || k == "DATABASE_URL")
        .collect()
}

#[test]
fn the_compose_file_and_env_example_name_known_settings() {
    let compose = read("deploy/compose.yaml");
    for service in ["postgres:", "referloop-a:", "referloop-b:", "proxy:"] {
        assert!(
            compose
                .lines()
                .any(|l| l.trim_start() == service || l.trim_start().starts_with(&format!("{service} "))),
            "{service}"
        );
    }
    let mut env = settings_in(&compose);
    env.extend(settings_in(&read("deploy/referloop.env.example")));
    assert!(env.len() >= 15, "{env:?}");
    // Values as an operator would fill them in.
    let env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| {
            let v = v.replace("${REFERLOOP_DOMAIN}", "referrals.example.com");
            let v = if v.is_empty() { "filled-in".to_string() } else { v };
            (k, v)
        })
        .collect();
    let settings = Settings::load_from(None, env).unwrap_or_else(|e| panic!("the deployment's settings load: {e}"));
    assert_eq!(settings.server.public_base_url, "https://referrals.example.com");
    assert!(!settings.sandbox(), "a live deployment");
}

#[test]
fn the_dockerfile_copies_what_the_build_reads() {
    let dockerfile = read("Dockerfile");
    // migrations (sqlx::migrate!), templates (include_str!), config (the defaults).
    for dir in ["src", "migrations", "templates", "config", "benches"] {
        assert!(dockerfile.contains(&format!("COPY {dir} {dir}")), "COPY {dir}");
    }
    let dependencies = dockerfile.find("cargo build").unwrap_or(usize::MAX);
    let sources = dockerfile.find("COPY src src").unwrap_or(0);
    assert!(
        dependencies < sources,
        "dependencies are built in a layer before the sources"
    );
}
