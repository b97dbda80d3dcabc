//! Property-based fuzzing of everything that reads outside input: every provider parser (random
//! bytes, and the real fixtures with random mutations), the manifest loader (random text, and
//! the examples with random edits) and the tag-policy compiler. None may panic, and what they
//! accept must hold what the rest of the controller relies on.
//!
//! `cargo test --test fuzz` runs a bounded number of cases (`FUZZ_CASES`, default 64 per
//! property); `make fuzz` runs many more. A failing case is shrunk by proptest and written to
//! `proptest-regressions/fuzz.txt`: commit that file, it is replayed first on every run.

use std::path::Path;

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value;
use tiny_forge::api::{SeenTag, TagPolicy};
use tiny_forge::engine::tags::CompiledPolicy;
use tiny_forge::sources::webhook::{Parsed, Provider, providers};
use tiny_forge::store::Manifests;

fn config() -> Config {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    Config {
        cases,
        // Mutated fixtures are rejected (400) far more often than accepted: that is fine.
        max_global_rejects: cases * 16,
        ..Config::default()
    }
}

/// Headers that take each provider past its header checks to the body.
fn headers(provider: Provider, event: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let content_type = match provider {
        Provider::Registry => "application/vnd.docker.distribution.events.v1+json",
        _ => "application/json",
    };
    h.insert("content-type", HeaderValue::from_static(content_type));
    let name = match provider {
        Provider::Github => "x-github-event",
        Provider::Gitlab => "x-gitlab-event",
        Provider::Bitbucket => "x-event-key",
        _ => return h,
    };
    h.insert(name, HeaderValue::from_str(event).unwrap());
    h
}

/// The event header a fixture was sent with, from its file name.
fn event_of(provider: Provider, file: &str) -> &'static str {
    let table: &[(&str, &str)] = match provider {
        Provider::Github => &[
            ("registry_package", "registry_package"),
            ("package", "package"),
            ("workflow_run", "workflow_run"),
            ("ping", "ping"),
            ("push", "push"),
        ],
        Provider::Gitlab => &[
            ("system_hook", "System Hook"),
            ("pipeline", "Pipeline Hook"),
            ("tag_push", "Tag Push Hook"),
            ("push", "Push Hook"),
        ],
        Provider::Bitbucket => &[
            ("repo_refs_changed", "repo:refs_changed"),
            ("repo_push", "repo:push"),
        ],
        _ => &[],
    };
    table
        .iter()
        .find(|(prefix, _)| file.starts_with(prefix))
        .map_or("", |(_, e)| e)
}

/// Every JSON fixture of every sender, with the provider and event header it goes with.
fn fixtures() -> &'static [(Provider, &'static str, Value)] {
    static ALL: std::sync::OnceLock<Vec<(Provider, &'static str, Value)>> =
        std::sync::OnceLock::new();
    ALL.get_or_init(read_fixtures)
}

fn read_fixtures() -> Vec<(Provider, &'static str, Value)> {
    let dirs = [
        ("github", Provider::Github),
        ("gitlab", Provider::Gitlab),
        ("bitbucket", Provider::Bitbucket),
        ("dockerhub", Provider::Dockerhub),
        ("distribution", Provider::Registry),
        ("harbor", Provider::Harbor),
        ("quay", Provider::Quay),
    ];
    let mut out = Vec::new();
    for (dir, provider) in dirs {
        let path = Path::new("tests/fixtures/webhooks").join(dir);
        let mut files: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let value: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            out.push((provider, event_of(provider, &name), value));
        }
    }
    assert!(out.len() > 40, "fixtures found: {}", out.len());
    out
}

/// A JSON value to put somewhere: the shapes senders get wrong.
fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,40}".prop_map(Value::String),
        "[a-z0-9:/@._-]{0,80}".prop_map(Value::String),
        Just(Value::Array(Vec::new())),
        Just(Value::Object(Default::default())),
        Just(Value::String("sha256:".to_string() + &"a".repeat(64))),
    ]
}

/// Replaces, removes or renames the `pick`-th node (pre-order) of `v`.
fn mutate(v: &mut Value, pick: &mut usize, edit: &Edit) -> bool {
    if *pick == 0 {
        match edit {
            Edit::Replace(new) => *v = new.clone(),
            Edit::Remove => *v = Value::Null,
            Edit::Duplicate => {
                if let Value::Array(items) = v
                    && let Some(first) = items.first().cloned()
                {
                    items.push(first);
                }
            }
        }
        return true;
    }
    *pick -= 1;
    match v {
        Value::Array(items) => items.iter_mut().any(|i| mutate(i, pick, edit)),
        Value::Object(map) => {
            if let Edit::Remove = edit
                && *pick < map.len()
            {
                let key = map.keys().nth(*pick).cloned().unwrap();
                map.remove(&key);
                return true;
            }
            map.values_mut().any(|i| mutate(i, pick, edit))
        }
        _ => false,
    }
}

#[derive(Clone, Debug)]
enum Edit {
    Replace(Value),
    Remove,
    Duplicate,
}

fn edits() -> impl Strategy<Value = Vec<(usize, Edit)>> {
    proptest::collection::vec(
        (
            0usize..400,
            prop_oneof![
                3 => any_value().prop_map(Edit::Replace),
                1 => Just(Edit::Remove),
                1 => Just(Edit::Duplicate),
            ],
        ),
        1..6,
    )
}

/// What the rest of the controller relies on in an accepted delivery.
fn check_delivery(provider: Provider, body: &[u8], parsed: &Parsed) {
    if let Parsed::Images(images) = parsed {
        for i in images {
            assert!(
                !i.repository.is_empty()
                    && !i.repository.contains(char::is_whitespace)
                    && !i.repository.contains("://"),
                "{provider:?} accepted repository {:?} from {}",
                i.repository,
                String::from_utf8_lossy(body)
            );
            let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
            assert!(
                i.tag.len() <= 128
                    && i.tag.starts_with(word)
                    && i.tag.chars().all(|c| word(c) || c == '.' || c == '-'),
                "{provider:?} accepted tag {:?}",
                i.tag
            );
            if let Some(d) = &i.digest {
                assert!(d.contains(':'), "{provider:?} accepted digest {d:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn providers_never_panic_on_random_bytes(
        which in 0usize..8,
        event in prop_oneof![
            Just("push"), Just("package"), Just("workflow_run"), Just("Push Hook"),
            Just("Pipeline Hook"), Just("repo:push"), Just("repo:refs_changed"), Just("ping"),
        ],
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let provider = Provider::ALL[which];
        if let Ok(d) = providers::parse(provider, &headers(provider, event), &body) {
            check_delivery(provider, &body, &d.parsed);
        }
    }

    #[test]
    fn providers_never_panic_on_mutated_real_deliveries(
        fixture in 0usize..1000,
        edits in edits(),
    ) {
        let all = fixtures();
        let (provider, event, mut value) = all[fixture % all.len()].clone();
        for (pick, edit) in &edits {
            let mut pick = *pick;
            mutate(&mut value, &mut pick, edit);
        }
        let body = serde_json::to_vec(&value).unwrap();
        if let Ok(d) = providers::parse(provider, &headers(provider, event), &body) {
            check_delivery(provider, &body, &d.parsed);
        }
        // The generic endpoint gets every shape too.
        let _ = providers::parse(Provider::Generic, &headers(Provider::Generic, ""), &body);
    }

    #[test]
    fn the_manifest_loader_never_panics_and_keeps_only_valid_names(
        text in prop_oneof![
            "\\PC{0,300}",
            // YAML-ish: documents, flow maps, anchors, tags.
            "((apiVersion: tinyforge.dev/v1alpha1\n|kind: (Project|Stage)\n|metadata: \\{name: [a-zA-Z0-9_-]{0,10}\\}\n|spec: \\{[a-zA-Z]{0,10}: [a-z0-9\\[\\]{},:&*!]{0,12}\\}\n|---\n|  - x\n|&a [1]\n|\\*a\n)){0,12}",
        ],
    ) {
        load(&text);
    }

    #[test]
    fn the_manifest_loader_never_panics_on_edited_examples(
        example in 0usize..5,
        at in 0usize..4000,
        cut in 0usize..40,
        insert in "\\PC{0,20}|[:{}\\[\\]\n\t -]{1,6}",
    ) {
        let files = [
            "examples/standalone/project.yaml",
            "examples/standalone/stages.yaml",
            "examples/kubernetes/project.yaml",
            "examples/kubernetes/stages.yaml",
            "examples/kubernetes/secret-shared.yaml",
        ];
        let text = std::fs::read_to_string(files[example]).unwrap();
        let mut chars: Vec<char> = text.chars().collect();
        let at = at % (chars.len() + 1);
        let end = (at + cut).min(chars.len());
        chars.splice(at..end, insert.chars());
        load(&chars.into_iter().collect::<String>());
    }

    #[test]
    fn tag_policies_compile_or_explain_and_never_panic(
        exact in proptest::option::of("\\PC{0,12}"),
        glob in proptest::option::of("[a-z0-9*?\\[\\]{},!.-]{0,16}"),
        regex in proptest::option::of("[a-z0-9()?<>P+*.^$|\\\\d{},\\[\\]-]{0,24}"),
        extract in proptest::option::of("[a-z]{0,4}"),
        semver in proptest::option::of("[0-9<>=^~*., xX|v-]{0,16}"),
        allow_prerelease in proptest::option::of(any::<bool>()),
        exclude in proptest::option::of(proptest::collection::vec("[a-z0-9*?.-]{0,8}", 0..3)),
        tags in proptest::collection::vec("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}|\\PC{0,8}", 1..6),
    ) {
        let policy = TagPolicy { exact, glob, regex, extract, semver, allow_prerelease, exclude };
        if let Ok(compiled) = CompiledPolicy::compile(Some(&policy)) {
            let _ = compiled.describe();
            let seen: Vec<SeenTag> = tags
                .iter()
                .enumerate()
                .map(|(i, t)| SeenTag {
                    tag: t.clone(),
                    source: "fuzz".into(),
                    seen_at: format!("2026-01-01T00:00:{:02}Z", i % 60),
                    ..Default::default()
                })
                .collect();
            for s in &seen {
                let _ = compiled.accepts(&s.tag);
                for other in &seen {
                    let _ = compiled.is_better(s, Some(other));
                }
            }
            if let Some(best) = compiled.select(&seen) {
                prop_assert!(compiled.accepts(&best.tag));
            }
        }
    }
}

/// Loads `text` as one manifest file: no panic, and whatever is loaded has a valid name.
fn load(text: &str) {
    let mut m = Manifests::default();
    tiny_forge::store::manifests::parse_into(Path::new("fuzz.yaml"), text, &mut m);
    let dns = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    for p in &m.projects {
        assert!(dns(p.resource.metadata.name.as_deref().unwrap_or("")));
    }
    for s in &m.stages {
        assert!(dns(s.resource.metadata.name.as_deref().unwrap_or("")));
    }
}
