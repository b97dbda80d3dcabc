//! Replays every real delivery under `tests/fixtures/webhooks/` through [`parse`]: one row per
//! fixture file, and a test that fails when a fixture has no row.

use std::collections::BTreeSet;
use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::parse;
use crate::sources::webhook::{Auth, GitEvent, ImagePush, Parsed, Provider, WebhookError, verify};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/webhooks");

/// Not one delivery per file: covered by their own tests below.
const DEDICATED: [&str; 2] = [
    "distribution/registry-queries.txt",
    "distribution/raw-capture-retry/",
];

/// (repository, tag, digest, event id)
type Img = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);
/// (repository, branch, tag, sha, kind)
type Git = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
    &'static str,
);
type Headers = &'static [(&'static str, &'static str)];

enum Expect {
    Images(&'static [Img]),
    Git(&'static [Git]),
    Ignored(&'static str),
    Ping,
}

impl Expect {
    fn parsed(&self) -> Parsed {
        match self {
            Expect::Images(images) => Parsed::Images(
                images
                    .iter()
                    .map(|&(repository, tag, digest, event_id)| ImagePush {
                        repository: repository.into(),
                        tag: tag.into(),
                        digest: digest.map(Into::into),
                        event_id: event_id.map(Into::into),
                    })
                    .collect(),
            ),
            Expect::Git(events) => Parsed::Git(
                events
                    .iter()
                    .map(|&(repository, branch, tag, sha, kind)| GitEvent {
                        repository: repository.into(),
                        branch: branch.map(Into::into),
                        tag: tag.map(Into::into),
                        sha: sha.into(),
                        kind,
                    })
                    .collect(),
            ),
            Expect::Ignored(reason) => Parsed::Ignored((*reason).into()),
            Expect::Ping => Parsed::Ping,
        }
    }
}

struct Row {
    file: &'static str,
    provider: Provider,
    /// What the sender sends with this body, where no `.headers.txt` recorded it.
    headers: Headers,
    expect: Expect,
}

const fn row(file: &'static str, provider: Provider, headers: Headers, expect: Expect) -> Row {
    Row {
        file,
        provider,
        headers,
        expect,
    }
}

const JSON: (&str, &str) = ("Content-Type", "application/json");
const GH_ID: (&str, &str) = ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958");
const GH_PING: Headers = &[("X-GitHub-Event", "ping"), JSON, GH_ID];
const GH_PUSH: Headers = &[("X-GitHub-Event", "push"), JSON, GH_ID];
const GH_PACKAGE: Headers = &[("X-GitHub-Event", "package"), JSON, GH_ID];
const GH_REGISTRY_PACKAGE: Headers = &[("X-GitHub-Event", "registry_package"), JSON, GH_ID];
const GH_WORKFLOW_RUN: Headers = &[("X-GitHub-Event", "workflow_run"), JSON, GH_ID];
const GL_PUSH: Headers = &[("X-Gitlab-Event", "Push Hook"), JSON];
const GL_TAG_PUSH: Headers = &[("X-Gitlab-Event", "Tag Push Hook"), JSON];
const GL_PIPELINE: Headers = &[("X-Gitlab-Event", "Pipeline Hook"), JSON];
const GL_SYSTEM: Headers = &[("X-Gitlab-Event", "System Hook"), JSON];
const BB_CLOUD: Headers = &[("X-Event-Key", "repo:push"), JSON];
const BB_SERVER: Headers = &[("X-Event-Key", "repo:refs_changed"), JSON];
const HARBOR: Headers = &[JSON, ("Authorization", "Basic aGFyYm9y")];
// Harbor's CloudEvents formatter sends the structured-mode media type.
const HARBOR_CE: Headers = &[
    ("Content-Type", "application/cloudevents+json"),
    ("Authorization", "Basic aGFyYm9y"),
];
const PLAIN_JSON: Headers = &[JSON];
/// Recorded in the fixture's `.headers.txt`.
const RECORDED: Headers = &[];

const E9ECE6: &str = "sha256:e9ece6ea73f27cf42da62ce05c7251ab0d713e4042f231d31265bb550e617e33";
const FCD880: &str = "sha256:fcd880cdc697206602b80d90bb49f91238bd3f5dce993982d7b95377dba5c591";
const AF760D: &str = "sha256:af760d0683247f5d2564095549140073d56ba692badc242a0283346066c939db";
const HARBOR_DIGEST: &str =
    "sha256:8a9e9863dbb6e10edb5adfe917c00da84e1700fa76e7ed02476aa6e6fb8ee0d8";

use Provider::{Bitbucket, Dockerhub, Github, Gitlab, Harbor, Quay, Registry};

#[rustfmt::skip]
const ROWS: &[Row] = &[
    row("bitbucket/repo_push.cloud.go-playground.json", Bitbucket, BB_CLOUD, Expect::Git(&[
        ("team_name/repo_name", Some("name-of-branch"), None, "709d658dc5b6d6afcd46049c2f332ee3f515a67d", "push")])),
    row("bitbucket/repo_refs_changed.server.go-playground.json", Bitbucket, BB_SERVER,
        Expect::Ignored("no branch or tag updated (1 deleted)")),

    row("distribution/delete-manifest.json", Registry, RECORDED, Expect::Ignored("1 event: delete — no tagged manifest push")),
    row("distribution/delete-tag.json", Registry, RECORDED, Expect::Ignored("1 event: delete — no tagged manifest push")),
    row("distribution/mount-blob-cross-repo.json", Registry, RECORDED, Expect::Ignored("1 event: mount — no tagged manifest push")),
    row("distribution/pull-blob-head.json", Registry, RECORDED, Expect::Ignored("1 event: pull — no tagged manifest push")),
    row("distribution/pull-manifest.json", Registry, RECORDED, Expect::Ignored("1 event: pull — no tagged manifest push")),
    row("distribution/push-blob-config.json", Registry, RECORDED, Expect::Ignored("1 event: blob push — no tagged manifest push")),
    row("distribution/push-blob-layer.json", Registry, RECORDED, Expect::Ignored("1 event: blob push — no tagged manifest push")),
    row("distribution/push-index-oci-tagged.json", Registry, RECORDED, Expect::Images(&[
        ("127.0.0.1:5000/library/busybox", "multi", Some(AF760D), Some("f10ec0ae-0868-41c9-b021-13889d66edfb"))])),
    row("distribution/push-manifest-after-cross-repo-mount.json", Registry, RECORDED, Expect::Images(&[
        ("127.0.0.1:5000/other/web", "2.0", Some(E9ECE6), Some("e579edc9-5a8f-4441-a941-7d882a169b65"))])),
    row("distribution/push-manifest-basic-auth-actor.json", Registry, RECORDED, Expect::Images(&[
        ("127.0.0.1:5001/team/web", "1.0", Some(E9ECE6), Some("0e8045b5-d0b2-411f-94d2-3e2b18d881bc"))])),
    row("distribution/push-manifest-by-digest-untagged.json", Registry, RECORDED,
        Expect::Ignored("1 event: untagged manifest push — no tagged manifest push")),
    row("distribution/push-manifest-docker-v2s2-tagged.json", Registry, RECORDED, Expect::Images(&[
        ("127.0.0.1:5000/demo/web", "1.0", Some(E9ECE6), Some("d948c221-1e6d-49f8-8ca1-adaeaa1d7ead"))])),
    row("distribution/push-manifest-oci-tagged.json", Registry, RECORDED, Expect::Images(&[
        ("127.0.0.1:5000/library/busybox", "1.35", Some(FCD880), Some("abc425ca-d052-49c0-86b6-d8d1d816c6c3"))])),
    row("distribution/push-manifest-retag-existing-digest.json", Registry, RECORDED, Expect::Images(&[
        ("127.0.0.1:5000/demo/web", "1.1", Some(E9ECE6), Some("8b85aa8b-ff93-405c-8c57-58f2c6669946"))])),

    row("dockerhub/push.docs.json", Dockerhub, PLAIN_JSON, Expect::Images(&[
        ("docker.io/svendowideit/testhook", "latest", None, None)])),
    row("dockerhub/push.legacy-with-images.go-playground.json", Dockerhub, PLAIN_JSON, Expect::Images(&[
        ("docker.io/svendowideit/testhook", "latest", None, None)])),

    row("github/package.npm-example-0.json", Github, GH_PACKAGE,
        Expect::Ignored("package type npm is not a container image")),
    row("github/package.published.docker.json", Github, GH_PACKAGE, Expect::Ignored("untagged container version")),
    row("github/package.published.npm.json", Github, GH_PACKAGE,
        Expect::Ignored("package type npm is not a container image")),
    row("github/ping.json", Github, GH_PING, Expect::Ping),
    row("github/ping.npm-example-0.json", Github, GH_PING, Expect::Ping),
    row("github/ping.with-app_id.json", Github, GH_PING, Expect::Ping),
    row("github/ping.with-organization.json", Github, GH_PING, Expect::Ping),
    row("github/push.1.json", Github, GH_PUSH, Expect::Ignored("tag deleted")),
    row("github/push.json", Github, GH_PUSH, Expect::Ignored("tag deleted")),
    row("github/push.npm-example-0.json", Github, GH_PUSH, Expect::Git(&[
        ("Codertocat/Hello-World", None, Some("simple-tag"), "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "tag_push")])),
    row("github/push.with-installation.json", Github, GH_PUSH, Expect::Ignored("tag deleted")),
    row("github/push.with-new-branch.json", Github, GH_PUSH, Expect::Git(&[
        ("Codertocat/Hello-World", Some("master"), None, "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "push")])),
    row("github/push.with-no-username-committer.json", Github, GH_PUSH, Expect::Git(&[
        ("Codertocat/Hello-World", Some("master"), None, "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "push")])),
    row("github/push.with-organization.json", Github, GH_PUSH, Expect::Ignored("tag deleted")),
    row("github/registry_package.published.docker.json", Github, GH_REGISTRY_PACKAGE,
        Expect::Ignored("untagged container version")),
    row("github/workflow_run.completed.json", Github, GH_WORKFLOW_RUN, Expect::Git(&[
        ("octo-org/octo-repo", Some("master"), None, "3484a3fb816e0859fd6e1cea078d76385ff50625", "workflow_run")])),
    row("github/workflow_run.completed.with-pull-requests.json", Github, GH_WORKFLOW_RUN, Expect::Git(&[
        ("octo-org/octo-repo", Some("master"), None, "3484a3fb816e0859fd6e1cea078d76385ff50625", "workflow_run")])),
    row("github/workflow_run.npm-example-0.json", Github, GH_WORKFLOW_RUN,
        Expect::Ignored("workflow run completed without a conclusion")),
    row("github/workflow_run.requested.json", Github, GH_WORKFLOW_RUN, Expect::Ignored("workflow run requested")),
    row("github/workflow_run.requested.with-conclusion.json", Github, GH_WORKFLOW_RUN,
        Expect::Ignored("workflow run requested")),

    row("gitlab/pipeline.go-gitlab.json", Gitlab, GL_PIPELINE, Expect::Git(&[
        ("gitlab-org/gitlab-test", Some("master"), None, "bcbb5ec396a2c0f828686f14fac9b80b780504f2", "pipeline")])),
    row("gitlab/pipeline.go-playground.json", Gitlab, GL_PIPELINE, Expect::Git(&[
        ("gitlab-org/gitlab-test", Some("master"), None, "bcbb5ec396a2c0f828686f14fac9b80b780504f2", "pipeline")])),
    row("gitlab/push.gitlab-17.1-hook-event-log.json", Gitlab, RECORDED, Expect::Git(&[
        ("flightjs/Flight", Some("master"), None, "f15b32277d2c55c6c595845a87109b09c913c556", "push")])),
    row("gitlab/push.go-gitlab.json", Gitlab, GL_PUSH, Expect::Git(&[
        ("mike/diaspora", Some("master"), None, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "push")])),
    row("gitlab/push.go-playground.json", Gitlab, GL_PUSH, Expect::Git(&[
        ("mike/diaspora", Some("master"), None, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "push")])),
    row("gitlab/system_hook.push.go-playground.json", Gitlab, GL_SYSTEM, Expect::Git(&[
        ("mike/diaspora", Some("master"), None, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "push")])),
    // `checkout_sha` (the commit), not `after`, which differs here.
    row("gitlab/system_hook.tag_push.go-playground.json", Gitlab, GL_SYSTEM, Expect::Git(&[
        ("jsmith/example", None, Some("v1.0.0"), "5937ac0a7beb003549fc5fd26fc247adbce4a52e", "tag_push")])),
    row("gitlab/tag_push.go-gitlab.json", Gitlab, GL_TAG_PUSH, Expect::Git(&[
        ("jsmith/example", None, Some("v1.0.0"), "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7", "tag_push")])),
    row("gitlab/tag_push.go-playground.json", Gitlab, GL_TAG_PUSH, Expect::Git(&[
        ("jsmith/example", None, Some("v1.0.0"), "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7", "tag_push")])),

    row("harbor/PULL_ARTIFACT.default.source-comment.json", Harbor, HARBOR,
        Expect::Ignored("event PULL_ARTIFACT is not used")),
    row("harbor/PUSH_ARTIFACT.default.docs.compact.json", Harbor, HARBOR, Expect::Images(&[
        ("hub.harbor.com/test-webhook/debian", "latest", Some(HARBOR_DIGEST), None)])),
    row("harbor/PUSH_ARTIFACT.default.docs.json", Harbor, HARBOR, Expect::Images(&[
        ("hub.harbor.com/test-webhook/debian", "latest", Some(HARBOR_DIGEST), None)])),
    row("harbor/harbor.artifact.pulled.cloudevents.source-comment.json", Harbor, HARBOR_CE,
        Expect::Ignored("event harbor.artifact.pulled is not used")),
    row("harbor/harbor.artifact.pushed.cloudevents.CONSTRUCTED.json", Harbor, HARBOR_CE, Expect::Images(&[
        ("hub.harbor.com/test-webhook/debian", "latest", Some(HARBOR_DIGEST), None)])),

    // Old Quay: `updated_tags` maps tags to legacy image ids, not digests.
    row("quay/repo_push.legacy-2013-gist.json", Quay, PLAIN_JSON, Expect::Images(&[
        ("quay.io/devtable/ubuntu", "latest", None, None)])),
    row("quay/repo_push.redhat-docs.json", Quay, PLAIN_JSON, Expect::Images(&[
        ("quay.io/dgangaia/test", "latest", None, None)])),
    row("quay/repo_push.test-notification-sample.CONSTRUCTED.json", Quay, PLAIN_JSON, Expect::Images(&[
        ("quay.io/demo/web", "latest", None, None), ("quay.io/demo/web", "foo", None, None)])),
];

pub(super) fn read(file: &str) -> Vec<u8> {
    let path = Path::new(ROOT).join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_str(file: &str) -> String {
    String::from_utf8(read(file)).unwrap()
}

/// Every file under the fixture root, as a `/`-separated path relative to it.
fn fixture_files() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                let rel = path.strip_prefix(ROOT).unwrap();
                let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
                out.insert(parts.join("/"));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(Path::new(ROOT), &mut out);
    out
}

fn headers_file_of(file: &str) -> String {
    format!("{}.headers.txt", file.trim_end_matches(".json"))
}

pub(super) fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        insert(&mut map, name, value);
    }
    map
}

fn insert(map: &mut HeaderMap, name: &str, value: &str) {
    map.insert(
        HeaderName::from_bytes(name.as_bytes()).unwrap(),
        HeaderValue::from_str(value).unwrap(),
    );
}

/// A recorded request head: an optional request line (`POST /path HTTP/1.1`) first, then
/// `Name: value` lines; `#` lines are notes.
fn parse_headers_file(text: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    let lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    for (i, line) in lines.enumerate() {
        let request_line = line
            .split(' ')
            .nth(2)
            .is_some_and(|v| v.starts_with("HTTP/"));
        if i == 0 && request_line {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("not a header: {line}"));
        insert(&mut map, name.trim(), value.trim());
    }
    map
}

/// The recorded headers when a `.headers.txt` exists, then the row's.
fn headers_for(row: &Row, body: &[u8]) -> HeaderMap {
    let recorded = headers_file_of(row.file);
    let mut map = if Path::new(ROOT).join(&recorded).exists() {
        parse_headers_file(&read_str(&recorded))
    } else {
        assert!(
            !row.headers.is_empty(),
            "{}: no headers recorded nor given",
            row.file
        );
        HeaderMap::new()
    };
    if let Some(length) = map.get("content-length") {
        assert_eq!(
            length.to_str().unwrap(),
            body.len().to_string(),
            "{recorded}: not this body's head"
        );
    }
    for (name, value) in row.headers {
        insert(&mut map, name, value);
    }
    map
}

#[test]
fn every_fixture_replays() {
    let mut failures = Vec::new();
    for row in ROWS {
        let body = read(row.file);
        let headers = headers_for(row, &body);
        let expected = row.expect.parsed();
        match parse(row.provider, &headers, &body) {
            Ok(d) if d.parsed == expected && !d.event.is_empty() => {}
            other => failures.push(format!(
                "{}:\n  got      {other:?}\n  expected {expected:?}",
                row.file
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_fixture_file_has_a_row() {
    let mut covered = BTreeSet::new();
    for row in ROWS {
        assert!(
            covered.insert(row.file.to_owned()),
            "{} has two rows",
            row.file
        );
        covered.insert(headers_file_of(row.file));
    }
    let files = fixture_files();
    let missing: Vec<_> = files
        .iter()
        .filter(|f| *f != "README.md")
        .filter(|f| !covered.contains(*f) && !DEDICATED.iter().any(|d| f.starts_with(d)))
        .collect();
    assert!(
        missing.is_empty(),
        "fixtures without a row in ROWS: {missing:#?}"
    );
    let stale: Vec<_> = ROWS
        .iter()
        .filter(|r| !files.contains(r.file))
        .map(|r| r.file)
        .collect();
    assert!(stale.is_empty(), "rows without a fixture: {stale:?}");
}

/// Recorded heads: the registry's configured `Authorization` and GitLab's ids.
#[test]
fn recorded_heads_give_auth_and_delivery_ids() {
    let file = "distribution/push-manifest-oci-tagged.json";
    let body = read(file);
    let d = parse(
        Registry,
        &parse_headers_file(&read_str(&headers_file_of(file))),
        &body,
    )
    .unwrap();
    assert_eq!(d.auth, Auth::Token("Bearer example-registry-token".into()));
    assert!(verify(&d.auth, &body, b"example-registry-token"));
    assert!(!verify(&d.auth, &body, b"other-token"));
    assert_eq!(d.delivery_id, None);
    assert_eq!(d.event, "push");

    let file = "gitlab/push.gitlab-17.1-hook-event-log.json";
    let d = parse(
        Gitlab,
        &parse_headers_file(&read_str(&headers_file_of(file))),
        &read(file),
    )
    .unwrap();
    // GitLab's log redacts the token; the header is taken as sent.
    assert_eq!(d.auth, Auth::Token("[REDACTED]".into()));
    assert_eq!(
        d.delivery_id.as_deref(),
        Some("1f0a54f0-0529-408d-a5b8-a2a98ff5f94a")
    );
    assert_eq!(d.event, "Push Hook");
}

fn event_ids(body: &[u8]) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
    let events = value["events"].as_array().unwrap();
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The registry retried its first notification every second while the endpoint answered 503,
/// then sent the rest in order: a retry is the same bytes with the same event ids, so it is
/// recognised as the same delivery.
#[test]
fn registry_retries_repeat_the_same_events() {
    let dir = "distribution/raw-capture-retry/";
    let files: Vec<_> = fixture_files()
        .into_iter()
        .filter(|f| f.starts_with(dir))
        .collect();
    let names: Vec<_> = files.iter().map(|f| &f[dir.len()..]).collect();
    assert_eq!(
        names,
        [
            "200-phase-0001.body",
            "200-phase-0002.body",
            "200-phase-0003.body",
            "200-phase.index.jsonl",
            "503-phase-0001.body",
            "503-phase.index.jsonl",
        ],
        "a new capture file needs a look here"
    );
    let index = |name: &str| -> Vec<serde_json::Value> {
        read_str(&format!("{dir}{name}"))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let head = |request: &serde_json::Value| -> HeaderMap {
        let mut map = HeaderMap::new();
        for pair in request["headers"].as_array().unwrap() {
            insert(
                &mut map,
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap(),
            );
        }
        map
    };

    let refused = read(&format!("{dir}503-phase-0001.body"));
    let blob_push = Parsed::Ignored("1 event: blob push — no tagged manifest push".into());
    let retries = index("503-phase.index.jsonl");
    assert!(retries.len() > 1);
    for request in &retries {
        assert_eq!(request["body_len"], refused.len());
        let d = parse(Registry, &head(request), &refused).unwrap();
        assert_eq!(d.parsed, blob_push);
        assert_eq!(d.auth, Auth::Token("Bearer example-registry-token".into()));
    }

    let accepted = index("200-phase.index.jsonl");
    let bodies: Vec<_> = (1..=accepted.len())
        .map(|n| read(&format!("{dir}200-phase-{n:04}.body")))
        .collect();
    assert_eq!(
        bodies[0], refused,
        "the first accepted delivery is the refused one, byte for byte"
    );
    assert_eq!(event_ids(&bodies[0]), event_ids(&refused));
    let parsed: Vec<_> = accepted
        .iter()
        .zip(&bodies)
        .map(|(request, body)| {
            assert_eq!(request["body_len"], body.len());
            parse(Registry, &head(request), body).unwrap().parsed
        })
        .collect();
    let image = Expect::Images(&[(
        "127.0.0.1:5002/retry/busybox",
        "1.35",
        Some(FCD880),
        Some("e9f8274e-eab9-4b67-8850-a302a6d35149"),
    )]);
    assert_eq!(parsed, [blob_push.clone(), blob_push, image.parsed()]);
    let ids: BTreeSet<_> = bodies.iter().flat_map(|b| event_ids(b)).collect();
    assert_eq!(
        ids.len(),
        bodies.len(),
        "each later delivery is a new event"
    );
}

/// The digests the notifications carry are the ones the registry serves for those tags when
/// asked with the manifest `Accept` headers (not the schema1 conversion it serves without).
#[test]
fn notified_digests_are_the_served_digests() {
    let text = read_str("distribution/registry-queries.txt");
    let served: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("Docker-Content-Digest: ")
                .or(l.starts_with("sha256:").then_some(l))
        })
        .map(str::trim)
        .collect();
    let schema1 = "sha256:9bcb348bc65cb9859b767ab1bf456dde2086e0769c3c190b6f27dbb2cb1aafb6";
    assert!(served.contains(schema1));
    let mut notified = BTreeSet::new();
    for row in ROWS.iter().filter(|r| r.provider == Registry) {
        if let Expect::Images(images) = row.expect {
            notified.extend(images.iter().map(|i| i.2.unwrap()));
        }
    }
    assert_eq!(notified, BTreeSet::from([E9ECE6, FCD880, AF760D]));
    assert!(notified.is_subset(&served), "{notified:?} vs {served:?}");
    assert!(!notified.contains(schema1));
}

/// The headers each provider needs besides Content-Type, to reach the body.
fn minimal_headers(provider: Provider) -> HeaderMap {
    header_map(match provider {
        Github => &[("X-GitHub-Event", "push")],
        Gitlab => &[("X-Gitlab-Event", "Push Hook")],
        Bitbucket => &[("X-Event-Key", "repo:push")],
        _ => &[],
    })
}

#[test]
fn every_provider_refuses_other_media_types_and_malformed_json() {
    for provider in Provider::ALL {
        let mut headers = minimal_headers(provider);
        insert(&mut headers, "Content-Type", "text/plain; charset=utf-8");
        assert_eq!(
            parse(provider, &headers, b"{}"),
            Err(WebhookError::UnsupportedMediaType("text/plain".into())),
            "{provider:?}"
        );
        let mut headers = minimal_headers(provider);
        insert(
            &mut headers,
            "Content-Type",
            "Application/JSON; charset=utf-8",
        );
        for body in [&b"{\"a\": "[..], b"", b"{\"a\": 1,", b"nope"] {
            match parse(provider, &headers, body) {
                Err(WebhookError::BadRequest(m)) => {
                    assert!(m.starts_with("malformed JSON"), "{provider:?}: {m}")
                }
                other => panic!("{provider:?}: {other:?}"),
            }
        }
    }
}

#[test]
fn event_headers_are_required() {
    for (provider, name) in [
        (Github, "X-GitHub-Event"),
        (Gitlab, "X-Gitlab-Event"),
        (Bitbucket, "X-Event-Key"),
    ] {
        assert_eq!(
            parse(provider, &HeaderMap::new(), b"{}"),
            Err(WebhookError::BadRequest(format!(
                "{name} header is missing"
            )))
        );
    }
}

/// Bitbucket Server signs with `X-Hub-Signature: sha256=…`; a sha1 one is refused, not ignored.
#[test]
fn bitbucket_sha1_signature_is_refused() {
    let file = "bitbucket/repo_refs_changed.server.go-playground.json";
    let headers = header_map(&[
        ("X-Event-Key", "repo:refs_changed"),
        (
            "X-Hub-Signature",
            "sha1=da39a3ee5e6b4b0d3255bfef95601890afd80709",
        ),
    ]);
    assert_eq!(
        parse(Bitbucket, &headers, &read(file)),
        Err(WebhookError::Unauthorized(
            "only sha256 signatures are accepted".into()
        ))
    );
}
