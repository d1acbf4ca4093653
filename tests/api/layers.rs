//! The import rule of the README's architecture section: each top-level module of
//! `src/` sits in a layer, and names (in `use` lines or in paths) only modules of lower
//! layers, so every dependency points toward the pure `domain`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may name its own module and modules of lower layers.
const LAYERS: &[&[&str]] = &[
    // Pure: the rules, the clock, signatures, counters.
    &["domain", "clock", "signatures", "metrics"],
    // The message catalogue, then the typed settings it feeds.
    &["catalogue"],
    &["config"],
    // Logging; SQL; Meta's payloads.
    &["telemetry", "store", "whatsapp"],
    // Clients of Meta, HubSpot and Stripe.
    &["integrations"],
    // The use cases.
    &["app"],
    // The worker, the HTTP surface, setup and doctor: each drives the use cases.
    &["jobs", "http", "setup"],
    // Wiring: the sandbox helpers, start-up, the command line.
    &["dev", "startup"],
    &["cli", "main", "lib"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Every `crate::<module>` a file names, with the line it is on; a grouped import
/// (`use crate::{app::X, store::{Y, Z}};`, over one line or several) names each of its
/// top-level modules.
fn named_modules(text: &str) -> Vec<(String, usize)> {
    // Comments go first, so a path in one is not an import.
    let code: Vec<&str> = text.lines().map(|line| line.split("//").next().unwrap_or("")).collect();
    let code = code.join("\n");
    let line_at = |offset: usize| code[..offset].matches('\n').count() + 1;
    let identifier = |from: &str| -> String {
        from.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut named = Vec::new();
    let mut search = 0;
    while let Some(found) = code[search..].find("crate::") {
        let start = search + found + "crate::".len();
        search = start;
        let rest = &code[start..];
        if !rest.starts_with('{') {
            let module = identifier(rest);
            if !module.is_empty() {
                named.push((module, line_at(start)));
            }
            continue;
        }
        // The group's items at its top level: the first segment of each is a module.
        let (mut depth, mut item_start) = (0usize, start + 1);
        for (offset, c) in rest.char_indices() {
            let at = start + offset;
            match c {
                '{' => depth += 1,
                ',' if depth == 1 => {
                    let item = code[item_start..at].trim_start();
                    let module = identifier(item);
                    if !module.is_empty() {
                        named.push((module, line_at(at - item.len())));
                    }
                    item_start = at + 1;
                }
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        let item = code[item_start..at].trim_start();
                        let module = identifier(item);
                        if !module.is_empty() {
                            named.push((module, line_at(at - item.len())));
                        }
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    named
}

#[test]
fn every_import_points_to_a_lower_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut modules: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a component");
        let module = first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        let Some(own) = layer_of(&module) else {
            panic!(
                "src/{} is in no layer: add `{module}` to LAYERS and to the README",
                relative.display()
            );
        };
        *modules.entry(module.clone()).or_default() += 1;
        let text = std::fs::read_to_string(file).expect("read");
        for (named, line) in named_modules(&text) {
            if named == module {
                continue;
            }
            match layer_of(&named) {
                Some(layer) if layer < own => {}
                _ => wrong.push(format!(
                    "src/{}:{line}: `{module}` names `crate::{named}`",
                    relative.display()
                )),
            }
        }
    }
    assert!(modules.len() > 10, "the tree was read: {modules:?}");
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

/// The README names the layers as this test has them.
#[test]
fn the_readme_describes_the_layers() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let start = readme.find("Layers, lowest first").expect("the README's layer list");
    let section = &readme[start..];
    for layer in LAYERS {
        for module in *layer {
            if matches!(*module, "main" | "lib") {
                continue;
            }
            assert!(
                section.contains(&format!("`{module}`")),
                "the README's layers name `{module}`"
            );
        }
    }
}

#[test]
fn paths_are_read_from_code_not_comments() {
    let text = "use crate::app::Services; // crate::http\nlet x = crate::store::duration_ms(d);\n/// crate::cli";
    assert_eq!(named_modules(text), [("app".to_string(), 1), ("store".to_string(), 2)]);
    let grouped = "use crate::{\n    jobs::Worker,\n    store::{Queue, Store},\n};\nuse crate::{http::router};";
    let modules: Vec<(String, usize)> = ["jobs", "store", "http"]
        .iter()
        .zip([2, 3, 5])
        .map(|(m, line)| (m.to_string(), line))
        .collect();
    assert_eq!(named_modules(grouped), modules, "grouped imports name each module");
    assert!(
        layer_of("store") < layer_of("app"),
        "a store that named the app would be refused"
    );
}
