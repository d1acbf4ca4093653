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
