//! Bitbucket Cloud (`repo:push`) and Server/Data Center (`repo:refs_changed`). Both sign with the
//! header `X-Hub-Signature`, whose value is `sha256=…`: the prefix, not the name, says the hash.

use serde::Deserialize;

use super::{
    JSON, any_json, first_header, hmac_sha256, is_zero_sha, json, media_type, required_header,
};
use crate::sources::webhook::{Delivery, GitEvent, Parsed, WebhookError};

pub(super) fn parse(headers: &http::HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError> {
    media_type(headers, &[JSON])?;
    let auth = hmac_sha256(headers, "X-Hub-Signature")?;
    let event = required_header(headers, "X-Event-Key")?.to_owned();
    let parsed = match event.as_str() {
        "repo:push" => cloud_push(json(body)?),
        "repo:refs_changed" => server_refs_changed(json(body)?),
        // Server's "Test connection".
        "diagnostics:ping" => any_json(body).map(|()| Parsed::Ping)?,
        other => any_json(body).map(|()| Parsed::Ignored(format!("event {other} is not used")))?,
    };
    let named = if matches!(parsed, Parsed::Ignored(_) | Parsed::Ping) {
        super::named(crate::sources::webhook::Provider::Bitbucket, body)
    } else {
        Vec::new()
    };
    Ok(Delivery {
        parsed,
        auth,
        // Cloud sends `X-Request-UUID`, Server `X-Request-Id`.
        delivery_id: first_header(headers, &["X-Request-UUID", "X-Request-Id"]),
        event,
        named,
    })
}

/// What is left once deletions and unknown ref types are skipped.
fn outcome(events: Vec<GitEvent>, deleted: usize) -> Parsed {
    match (events.is_empty(), deleted) {
        (false, _) => Parsed::Git(events),
        (true, 0) => Parsed::Ignored("no branch or tag updated".into()),
        (true, n) => Parsed::Ignored(format!("no branch or tag updated ({n} deleted)")),
    }
}

#[derive(Deserialize)]
struct CloudPush {
    push: CloudChanges,
    repository: CloudRepository,
}

#[derive(Deserialize)]
struct CloudChanges {
    changes: Vec<CloudChange>,
}

#[derive(Deserialize)]
struct CloudChange {
    /// `null` when the ref was deleted.
    new: Option<CloudRef>,
}

#[derive(Deserialize)]
struct CloudRef {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    target: CloudTarget,
}

#[derive(Deserialize)]
struct CloudTarget {
    hash: String,
}

#[derive(Deserialize)]
struct CloudRepository {
    full_name: String,
}

fn cloud_push(event: CloudPush) -> Parsed {
    let deleted = event
        .push
        .changes
        .iter()
        .filter(|c| c.new.is_none())
        .count();
    let events = event
        .push
        .changes
        .into_iter()
        .filter_map(|c| c.new)
        .filter_map(|new| {
            let (branch, tag, kind) = match new.kind.as_str() {
                "branch" => (Some(new.name), None, "push"),
                "tag" | "annotated_tag" => (None, Some(new.name), "tag_push"),
                _ => return None,
            };
            Some(GitEvent {
                repository: event.repository.full_name.clone(),
                branch,
                tag,
                sha: new.target.hash,
                kind,
            })
        })
        .collect();
    outcome(events, deleted)
}

#[derive(Deserialize)]
struct ServerRefsChanged {
    changes: Vec<ServerChange>,
    repository: ServerRepository,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerChange {
    #[serde(rename = "ref")]
    git_ref: ServerRef,
    to_hash: String,
    /// `ADD`, `UPDATE` or `DELETE`.
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerRef {
    display_id: String,
    /// `BRANCH` or `TAG`.
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct ServerRepository {
    slug: String,
    project: ServerProject,
}

#[derive(Deserialize)]
struct ServerProject {
    key: String,
}

fn server_refs_changed(event: ServerRefsChanged) -> Parsed {
    // Project keys are upper case (`PROJ`) where clone URLs say `proj`: one spelling.
    let repository =
        format!("{}/{}", event.repository.project.key, event.repository.slug).to_lowercase();
    let is_deletion = |c: &ServerChange| c.kind == "DELETE" || is_zero_sha(&c.to_hash);
    let deleted = event.changes.iter().filter(|c| is_deletion(c)).count();
    let events = event
        .changes
        .into_iter()
        .filter(|c| !is_deletion(c))
        .filter_map(|c| {
            let name = c.git_ref.display_id;
            let (branch, tag, kind) = match c.git_ref.kind.to_ascii_uppercase().as_str() {
                "BRANCH" => (Some(name), None, "push"),
                "TAG" => (None, Some(name), "tag_push"),
                _ => return None,
            };
            Some(GitEvent {
                repository: repository.clone(),
                branch,
                tag,
                sha: c.to_hash,
                kind,
            })
        })
        .collect();
    outcome(events, deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::webhook::Auth;
    use crate::sources::webhook::providers::tests::header_map;
    use http::HeaderMap;

    const SERVER: &str = r#"{"repository": {"slug": "app", "project": {"key": "PROJ"}},
        "changes": [
          {"ref": {"displayId": "main", "type": "BRANCH"}, "toHash": "aaaa", "type": "UPDATE"},
          {"ref": {"displayId": "v2", "type": "TAG"}, "toHash": "bbbb", "type": "ADD"},
          {"ref": {"displayId": "old", "type": "BRANCH"}, "toHash": "0000", "type": "DELETE"}]}"#;

    #[test]
    fn one_event_per_updated_ref() {
        let h = header_map(&[
            ("x-event-key", "repo:refs_changed"),
            ("x-request-id", "r-1"),
        ]);
        let delivery = parse(&h, SERVER.as_bytes()).unwrap();
        let event = |branch: Option<&str>, tag: Option<&str>, sha: &str, kind| GitEvent {
            repository: "proj/app".into(),
            branch: branch.map(Into::into),
            tag: tag.map(Into::into),
            sha: sha.into(),
            kind,
        };
        assert_eq!(
            delivery.parsed,
            Parsed::Git(vec![
                event(Some("main"), None, "aaaa", "push"),
                event(None, Some("v2"), "bbbb", "tag_push"),
            ])
        );
        assert_eq!(delivery.delivery_id.as_deref(), Some("r-1"));
    }

    #[test]
    fn signatures_by_prefix() {
        let mac = "ab".repeat(32);
        let h = header_map(&[
            ("x-event-key", "repo:refs_changed"),
            ("x-hub-signature", &format!("sha256={mac}")),
        ]);
        assert_eq!(
            parse(&h, SERVER.as_bytes()).unwrap().auth,
            Auth::HmacSha256(vec![0xab; 32])
        );
        let h = header_map(&[
            ("x-event-key", "repo:refs_changed"),
            (
                "x-hub-signature",
                "sha1=0123456789abcdef0123456789abcdef01234567",
            ),
        ]);
        assert_eq!(
            parse(&h, SERVER.as_bytes()),
            Err(WebhookError::Unauthorized(
                "only sha256 signatures are accepted".into()
            ))
        );
        let h = header_map(&[
            ("x-event-key", "repo:push"),
            ("x-hub-signature", "sha256=xyz"),
        ]);
        assert_eq!(
            parse(&h, b"{}"),
            Err(WebhookError::Unauthorized(
                "malformed X-Hub-Signature".into()
            ))
        );
    }

    #[test]
    fn missing_event_key() {
        assert_eq!(
            parse(&HeaderMap::new(), SERVER.as_bytes()),
            Err(WebhookError::BadRequest(
                "X-Event-Key header is missing".into()
            ))
        );
    }
}
