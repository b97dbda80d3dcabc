//! GitHub: `package`/`registry_package` (an image published to ghcr.io), `push`, `workflow_run`,
//! `ping`. Signed with `X-Hub-Signature-256`; JSON or form-encoded (`payload=<json>`).

use serde::Deserialize;

use super::{
    JSON, any_json, bad, first_header, hmac_sha256, image_push, is_zero_sha, json, lenient,
    media_type, pushed_ref, required_header,
};
use crate::image::{ImageRef, is_valid_digest};
use crate::sources::webhook::{Delivery, GitEvent, Parsed, WebhookError};

const FORM: &str = "application/x-www-form-urlencoded";

pub(super) fn parse(headers: &http::HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError> {
    let media = media_type(headers, &[JSON, FORM])?;
    let auth = hmac_sha256(headers, "X-Hub-Signature-256")?;
    let event = required_header(headers, "X-GitHub-Event")?.to_owned();
    // The signature covers the form bytes; only the parsing looks inside them.
    let form;
    let body = if media == FORM {
        form = form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| bad("form body has no `payload` field"))?;
        form.as_bytes()
    } else {
        body
    };
    let parsed = match event.as_str() {
        "ping" => any_json(body).map(|()| Parsed::Ping)?,
        "package" | "registry_package" => package(json(body)?)?,
        "push" => push(json(body)?),
        "workflow_run" => workflow_run(json(body)?),
        other => any_json(body).map(|()| Parsed::Ignored(format!("event {other} is not used")))?,
    };
    let named = if matches!(parsed, Parsed::Ignored(_) | Parsed::Ping) {
        super::named(crate::sources::webhook::Provider::Github, body)
    } else {
        Vec::new()
    };
    Ok(Delivery {
        parsed,
        auth,
        delivery_id: first_header(headers, &["X-GitHub-Delivery"]),
        event,
        named,
    })
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Deserialize)]
struct PackageEvent {
    action: String,
    // `registry_package` deliveries carry the same object under their own name.
    #[serde(alias = "registry_package")]
    package: Package,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    package_type: Option<String>,
    owner: Option<Owner>,
    package_version: Option<PackageVersion>,
    #[serde(default, deserialize_with = "lenient")]
    registry: Option<Registry>,
}

#[derive(Deserialize)]
struct Owner {
    login: String,
}

#[derive(Deserialize)]
struct Registry {
    #[serde(rename = "type")]
    kind: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize)]
struct PackageVersion {
    name: Option<String>,
    package_url: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    container_metadata: Option<ContainerMetadata>,
}

#[derive(Deserialize)]
struct ContainerMetadata {
    tag: Option<ContainerTag>,
    manifest: Option<Manifest>,
}

#[derive(Deserialize)]
struct ContainerTag {
    name: Option<String>,
    digest: Option<String>,
}

#[derive(Deserialize)]
struct Manifest {
    digest: Option<String>,
}

fn package(event: PackageEvent) -> Result<Parsed, WebhookError> {
    let PackageEvent { action, package } = event;
    if action != "published" {
        return Ok(Parsed::Ignored(format!("package {action}, not published")));
    }
    let version = package.package_version.as_ref();
    let metadata = version.and_then(|v| v.container_metadata.as_ref());
    // The documented signal is `package_type` (`container`, `docker`, in either case), but
    // GitHub's own published examples (our fixtures) say `"npm"` for a container that has
    // `registry.type: "CONTAINER"` and `container_metadata`, and `ecosystem: "docker"` even for
    // npm. So any container signal counts, and `ecosystem` none.
    let kinds = [
        package.package_type.as_deref(),
        package.registry.as_ref().and_then(|r| r.kind.as_deref()),
    ];
    let container = metadata.is_some()
        || kinds
            .into_iter()
            .flatten()
            .any(|k| k.eq_ignore_ascii_case("container") || k.eq_ignore_ascii_case("docker"));
    if !container {
        let kind = package.package_type.as_deref().unwrap_or("unknown");
        return Ok(Parsed::Ignored(format!(
            "package type {kind} is not a container image"
        )));
    }
    let tag = metadata
        .and_then(|m| m.tag.as_ref()?.name.as_deref())
        .filter(|t| !t.is_empty());
    let Some(tag) = tag else {
        return Ok(Parsed::Ignored("untagged container version".into()));
    };
    // Every place the manifest digest may sit; the examples carry 40-hex placeholders that are
    // not sha256 digests, so only a well-formed one counts.
    let digest = [
        metadata.and_then(|m| m.tag.as_ref()?.digest.as_deref()),
        metadata.and_then(|m| m.manifest.as_ref()?.digest.as_deref()),
        version.and_then(|v| v.name.as_deref()),
    ]
    .into_iter()
    .flatten()
    .find(|d| d.starts_with("sha256:") && is_valid_digest(d));
    let repository = container_repository(&package)
        .ok_or_else(|| bad("package: neither `package_url` nor `owner.login` names the image"))?;
    Ok(Parsed::Images(vec![image_push(
        &repository,
        tag,
        digest,
        None,
    )?]))
}

/// Where the image lives: `package_url` (`ghcr.io/Owner/name:tag`) when given, else a ghcr.io
/// `registry.url`, else `ghcr.io/<owner>/<name>`. Lowercased: ghcr.io names are, and the
/// payloads keep the owner's display case.
fn container_repository(package: &Package) -> Option<String> {
    let from_url = package
        .package_version
        .as_ref()
        .and_then(|v| v.package_url.as_deref())
        .map(|url| ImageRef::parse(url).repository)
        .filter(|repo| repo.contains('/'))
        .map(str::to_owned);
    // The examples' `registry.url` is `https://CONTAINER.pkg.github.com/Owner`, not a host one
    // can pull from: only ghcr.io counts.
    let from_registry = || {
        let url = package.registry.as_ref()?.url.as_deref()?;
        let namespace = url.strip_prefix("https://")?.trim_end_matches('/');
        namespace
            .starts_with("ghcr.io/")
            .then(|| format!("{namespace}/{}", package.name))
    };
    let from_owner = || {
        Some(format!(
            "ghcr.io/{}/{}",
            package.owner.as_ref()?.login,
            package.name
        ))
    };
    from_url
        .or_else(from_registry)
        .or_else(from_owner)
        .map(|r| r.to_lowercase())
}

#[derive(Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: Repository,
}

fn push(event: PushEvent) -> Parsed {
    let deleted = event.deleted || is_zero_sha(&event.after);
    pushed_ref(
        event.repository.full_name,
        &event.git_ref,
        event.after,
        deleted,
    )
}

#[derive(Deserialize)]
struct WorkflowRunEvent {
    action: String,
    workflow_run: WorkflowRun,
    repository: Repository,
}

#[derive(Deserialize)]
struct WorkflowRun {
    head_branch: Option<String>,
    head_sha: String,
    conclusion: Option<String>,
}

/// A finished, successful run: the image it built now exists (a push alone may race the build).
fn workflow_run(event: WorkflowRunEvent) -> Parsed {
    let run = event.workflow_run;
    if event.action != "completed" {
        return Parsed::Ignored(format!("workflow run {}", event.action));
    }
    match run.conclusion.as_deref() {
        Some("success") => Parsed::Git(vec![GitEvent {
            repository: event.repository.full_name,
            branch: run.head_branch,
            tag: None,
            sha: run.head_sha,
            kind: "workflow_run",
        }]),
        Some(other) => Parsed::Ignored(format!("workflow run completed with conclusion {other}")),
        None => Parsed::Ignored("workflow run completed without a conclusion".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::webhook::providers::tests::{header_map, read};
    use crate::sources::webhook::{Auth, ImagePush, verify};
    use hmac::{KeyInit, Mac};

    const SECRET: &[u8] = b"test-secret";

    fn fixture(name: &str) -> Vec<u8> {
        read(&format!("github/{name}"))
    }

    fn sign(body: &[u8]) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signature_round_trip() {
        let body = fixture("push.with-new-branch.json");
        let signature = sign(&body);
        let h = header_map(&[
            ("x-github-event", "push"),
            ("x-hub-signature-256", &signature),
            ("content-type", "application/json"),
        ]);
        let delivery = parse(&h, &body).unwrap();
        assert!(matches!(&delivery.auth, Auth::HmacSha256(mac) if mac.len() == 32));
        assert!(verify(&delivery.auth, &body, SECRET));
        assert!(!verify(&delivery.auth, &body, b"other-secret"));
        let mut tampered = body.clone();
        tampered[body.len() / 2] ^= 1;
        assert!(!verify(&delivery.auth, &tampered, SECRET));
    }

    #[test]
    fn malformed_signatures_are_unauthorized_without_echo() {
        let body = fixture("ping.json");
        for value in [
            "sha256=zz-not-hex-SECRETISH",
            "sha256=abcd",
            "md5=SECRETISH",
            "SECRETISH",
        ] {
            let h = header_map(&[("x-github-event", "ping"), ("x-hub-signature-256", value)]);
            match parse(&h, &body) {
                Err(WebhookError::Unauthorized(m)) => {
                    assert_eq!(m, "malformed X-Hub-Signature-256");
                }
                other => panic!("{value}: {other:?}"),
            }
        }
        let h = header_map(&[("x-github-event", "ping")]);
        assert_eq!(parse(&h, &body).unwrap().auth, Auth::None);
    }

    #[test]
    fn form_encoded_delivery() {
        let json = fixture("push.with-new-branch.json");
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", std::str::from_utf8(&json).unwrap())
            .finish();
        let signature = sign(form.as_bytes());
        let h = header_map(&[
            ("x-github-event", "push"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-hub-signature-256", &signature),
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ]);
        let delivery = parse(&h, form.as_bytes()).unwrap();
        let as_json = parse(&header_map(&[("x-github-event", "push")]), &json).unwrap();
        assert_eq!(delivery.parsed, as_json.parsed);
        assert!(verify(&delivery.auth, form.as_bytes(), SECRET));
        assert_eq!(
            delivery.delivery_id.as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );

        let h = header_map(&[
            ("x-github-event", "push"),
            ("content-type", "application/x-www-form-urlencoded"),
        ]);
        assert_eq!(
            parse(&h, b"other=1"),
            Err(WebhookError::BadRequest(
                "form body has no `payload` field".into()
            ))
        );
    }

    #[test]
    fn refusals() {
        let body = fixture("push.json");
        assert_eq!(
            parse(&header_map(&[("content-type", "application/json")]), &body),
            Err(WebhookError::BadRequest(
                "X-GitHub-Event header is missing".into()
            ))
        );
        let h = header_map(&[("x-github-event", "push"), ("content-type", "text/plain")]);
        assert_eq!(
            parse(&h, &body),
            Err(WebhookError::UnsupportedMediaType("text/plain".into()))
        );
        let h = header_map(&[
            ("x-github-event", "push"),
            ("content-type", "application/json; charset=utf-8"),
        ]);
        assert!(parse(&h, &body).is_ok());
        let h = header_map(&[("x-github-event", "push")]);
        match parse(&h, b"{\"ref\": ") {
            Err(WebhookError::BadRequest(m)) => assert!(m.starts_with("malformed JSON"), "{m}"),
            other => panic!("{other:?}"),
        }
        match parse(&h, br#"{"after": "0", "repository": {"full_name": "o/r"}}"#) {
            Err(WebhookError::BadRequest(m)) => assert!(m.contains("missing field `ref`"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Even ignored events must be JSON.
        let h = header_map(&[("x-github-event", "issues")]);
        assert!(matches!(
            parse(&h, b"nope"),
            Err(WebhookError::BadRequest(_))
        ));
        assert_eq!(
            parse(&h, b"{}").unwrap().parsed,
            Parsed::Ignored("event issues is not used".into())
        );
    }

    /// The published container example is untagged; with a tag it names its image through
    /// `package_url`, and the first well-formed sha256 digest.
    #[test]
    fn tagged_container_version() {
        for (event, file) in [
            ("package", "package.published.docker.json"),
            ("registry_package", "registry_package.published.docker.json"),
        ] {
            let mut value: serde_json::Value = serde_json::from_slice(&fixture(file)).unwrap();
            value[event]["package_version"]["container_metadata"]["tag"]["name"] = "v1.2".into();
            let body = serde_json::to_vec(&value).unwrap();
            let delivery = parse(&header_map(&[("x-github-event", event)]), &body).unwrap();
            assert_eq!(
                delivery.parsed,
                Parsed::Images(vec![ImagePush {
                    repository: "ghcr.io/codertocat/hello-world".into(),
                    tag: "v1.2".into(),
                    digest: Some(
                        "sha256:3da1996a8115d7616457760d9920b815241d0a03b34cf5f04e9a0e9d8de37498"
                            .into()
                    ),
                    event_id: None,
                }]),
                "{file}"
            );
            assert_eq!(delivery.event, event);

            // Without `package_url`: owner and package name.
            value[event]["package_version"]["package_url"] = serde_json::Value::Null;
            let body = serde_json::to_vec(&value).unwrap();
            let delivery = parse(&header_map(&[("x-github-event", event)]), &body).unwrap();
            assert!(
                matches!(&delivery.parsed, Parsed::Images(i) if i[0].repository == "ghcr.io/codertocat/hello-world-npm"),
                "{:?}",
                delivery.parsed
            );
        }
    }
}
