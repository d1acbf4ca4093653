//! The deployment files are used as written: the compose file parses as YAML with the
//! services a production-like setup needs, every setting it and the
//! example env file name is one referloop knows (an unknown key would stop start-up), and
//! the Dockerfile copies everything the build reads.

use referloop::config::Settings;
use serde_yaml_ng::Value;

fn read(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Whether a variable names a referloop setting (REFERLOOP_DOMAIN is the compose file's
/// own, for the proxy).
fn is_setting(key: &str) -> bool {
    key.starts_with("REFERLOOP_") && key != "REFERLOOP_DOMAIN" || key == "DATABASE_URL"
}

/// `KEY=value` lines of an env file naming a referloop setting.
fn settings_in_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| is_setting(k))
        .collect()
}

fn yaml_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

#[test]
fn the_compose_file_and_env_example_name_known_settings() {
    let compose: Value = serde_yaml_ng::from_str(&read("deploy/compose.yaml")).expect("compose.yaml is YAML");
    let services = &compose["services"];
    for service in ["postgres", "referloop-a", "referloop-b", "proxy"] {
        assert!(services.get(service).is_some(), "service {service}");
    }
    // The replicas are one definition (the YAML alias), built from this repository,
    // reading the secrets file and waiting for a healthy database.
    assert_eq!(services["referloop-a"], services["referloop-b"]);
    let replica = &services["referloop-a"];
    assert_eq!(yaml_str(&replica["build"]), "..");
    assert_eq!(yaml_str(&replica["env_file"]), "referloop.env");
    assert_eq!(
        yaml_str(&replica["depends_on"]["postgres"]["condition"]),
        "service_healthy"
    );
    let ports: Vec<String> = services["proxy"]["ports"]
        .as_sequence()
        .map(|p| p.iter().map(yaml_str).collect())
        .unwrap_or_default();
    assert_eq!(ports, ["80:80", "443:443"], "only the proxy is published");
    assert!(
        replica.get("ports").is_none(),
        "the replicas are reached through the proxy"
    );
    for volume in ["postgres-data", "caddy-data"] {
        assert!(compose["volumes"].get(volume).is_some(), "volume {volume}");
    }

    let mut env: Vec<(String, String)> = replica["environment"]
        .as_mapping()
        .map(|m| m.iter().map(|(k, v)| (yaml_str(k), yaml_str(v))).collect())
        .unwrap_or_default();
    assert!(env.iter().all(|(k, _)| is_setting(k)), "{env:?}");
    env.extend(settings_in_env_file(&read("deploy/referloop.env.example")));
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
    assert_eq!(
        settings.server.public_base_url.as_str(),
        "https://referrals.example.com"
    );
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
    // Cargo refuses a manifest whose targets are missing, so the dependency layer's stubs
    // must name every bench.
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let benches = manifest["bench"].as_array().expect("[[bench]] targets");
    for bench in benches {
        let name = bench["name"].as_str().expect("bench name");
        let stubbed = dockerfile[..dependencies].contains(name);
        assert!(stubbed, "the dependency layer stubs benches/{name}.rs");
    }
}
