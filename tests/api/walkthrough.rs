//! The README's sandbox walk-through, run as a reader pastes it: its shell blocks, in
//! order, as one script, from an empty directory, against the built binary. Every command
//! must succeed, and the programme must end where the README says (a converted referral,
//! both rewards issued).

use std::process::Command;

/// The shell blocks of the README section `heading`, in order.
fn shell_blocks(readme: &str, heading: &str) -> Vec<String> {
    let start = readme.find(heading).expect("the walk-through section");
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("\n```").next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_walk_through_works_as_pasted() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let blocks = shell_blocks(&readme, "## Walk through a referral in sandbox mode");
    assert!(blocks.len() >= 2, "the walk-through has its shell blocks");
    let dir = tempfile::tempdir().expect("dir");
    // The binary where the walk-through's `cargo build` would leave it.
    std::fs::create_dir_all(dir.path().join("target/debug")).expect("target/debug");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_referloop"),
        dir.path().join("target/debug/referloop"),
    )
    .expect("link the binary");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    // What differs from a reader's shell: the build is done already, the server takes a
    // free port (the `dev` commands find it through the same setting), and a failing
    // command stops the script.
    let script = format!(
        "set -e\nshopt -s expand_aliases\ncargo() {{ :; }}\nexport REFERLOOP_SERVER__LISTEN=127.0.0.1:{port}\n{}\n",
        blocks.join("\n")
    );
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        // A reader's shell: no test database, no settings of ours.
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("REFERLOOP_LOG__LEVEL", "warn")
        .output()
        .expect("bash");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the walk-through failed:\n{said}");
    assert!(said.contains("converted"), "the referral converted:\n{said}");
    assert_eq!(said.matches(" issued ").count(), 2, "both rewards issued:\n{said}");
    assert!(
        said.lines()
            .any(|l| l.contains("reminder") && l.contains("+44******3458") && l.contains("accepted")),
        "Ben was reminded:\n{said}"
    );
}
