//! GitLab: `Push Hook`, `Tag Push Hook`, `Pipeline Hook` and the same pushes as a `System Hook`.
//! The secret comes in clear as `X-Gitlab-Token`. Every valid event we do not use is answered as
//! ignored (2xx): GitLab disables a hook at once on a 4xx.

use serde::Deserialize;

use super::{
    JSON, any_json, first_header, is_zero_sha, json, media_type, pushed_ref, required_header, token,
};
use crate::sources::webhook::{Delivery, GitEvent, Parsed, WebhookError};

pub(super) fn parse(headers: &http::HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError> {
    media_type(headers, &[JSON])?;
    let auth = token(headers, "X-Gitlab-Token");
    let event = required_header(headers, "X-Gitlab-Event")?.to_owned();
    let parsed = match event.as_str() {
        "Push Hook" | "Tag Push Hook" => push(json(body)?),
        "Pipeline Hook" => pipeline(json(body)?),
        "System Hook" => {
            // System hooks carry `event_name`; newer GitLab also `object_kind`.
            let kind: Kind = json(body)?;
            match kind.object_kind.or(kind.event_name).as_deref() {
                Some("push" | "tag_push") => push(json(body)?),
                Some(other) => Parsed::Ignored(format!("system hook event {other} is not used")),
                None => Parsed::Ignored("system hook event without a name".into()),
            }
        }
        other => any_json(body).map(|()| Parsed::Ignored(format!("event {other} is not used")))?,
    };
    let named = if matches!(parsed, Parsed::Ignored(_) | Parsed::Ping) {
        super::named(crate::sources::webhook::Provider::Gitlab, body)
    } else {
        Vec::new()
    };
    Ok(Delivery {
        parsed,
        auth,
        // `Idempotency-Key` stays the same across retries; older GitLab sends only the UUID.
        delivery_id: first_header(headers, &["Idempotency-Key", "X-Gitlab-Event-UUID"]),
        event,
        named,
    })
}

#[derive(Deserialize)]
struct Kind {
    object_kind: Option<String>,
    event_name: Option<String>,
}

#[derive(Deserialize)]
struct Project {
    path_with_namespace: String,
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    checkout_sha: Option<String>,
    project: Project,
}

fn push(event: Push) -> Parsed {
    let deleted = is_zero_sha(&event.after);
    // `checkout_sha` is the commit; `after` is the tag object for an annotated tag.
    let sha = event
        .checkout_sha
        .filter(|s| !s.is_empty() && !is_zero_sha(s))
        .unwrap_or(event.after);
    pushed_ref(
        event.project.path_with_namespace,
        &event.git_ref,
        sha,
        deleted,
    )
}

#[derive(Deserialize)]
struct Pipeline {
    object_attributes: PipelineAttributes,
    project: Project,
}

#[derive(Deserialize)]
struct PipelineAttributes {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    tag: bool,
    sha: String,
    status: String,
}

/// Only a successful pipeline: it is what pushed the image.
fn pipeline(event: Pipeline) -> Parsed {
    let attrs = event.object_attributes;
    if attrs.status != "success" {
        return Parsed::Ignored(format!("pipeline {}", attrs.status));
    }
    let (branch, tag) = if attrs.tag {
        (None, Some(attrs.git_ref))
    } else {
        (Some(attrs.git_ref), None)
    };
    Parsed::Git(vec![GitEvent {
        repository: event.project.path_with_namespace,
        branch,
        tag,
        sha: attrs.sha,
        kind: "pipeline",
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::webhook::Auth;
    use crate::sources::webhook::providers::tests::header_map;
    use http::HeaderMap;

    const PUSH: &str = r#"{"ref": "refs/heads/main", "before": "1111111111111111111111111111111111111111",
        "after": "0000000000000000000000000000000000000000", "checkout_sha": null,
        "project": {"path_with_namespace": "group/sub/app"}}"#;

    #[test]
    fn branch_deletion_is_ignored() {
        let h = header_map(&[
            ("x-gitlab-event", "Push Hook"),
            ("x-gitlab-token", "s3cret"),
        ]);
        let delivery = parse(&h, PUSH.as_bytes()).unwrap();
        assert_eq!(delivery.parsed, Parsed::Ignored("branch deleted".into()));
        assert_eq!(delivery.auth, Auth::Token("s3cret".into()));
    }

    #[test]
    fn pipelines_by_status_and_tag() {
        let body = |status: &str, tag: bool| {
            format!(
                r#"{{"object_kind": "pipeline", "object_attributes": {{"ref": "v1.0", "tag": {tag},
                "sha": "bcbb5ec396a2c0f828686f14fac9b80b780504f2", "status": "{status}"}},
                "project": {{"path_with_namespace": "g/app"}}}}"#
            )
        };
        let h = header_map(&[("x-gitlab-event", "Pipeline Hook")]);
        assert_eq!(
            parse(&h, body("failed", false).as_bytes()).unwrap().parsed,
            Parsed::Ignored("pipeline failed".into())
        );
        assert_eq!(
            parse(&h, body("success", true).as_bytes()).unwrap().parsed,
            Parsed::Git(vec![GitEvent {
                repository: "g/app".into(),
                branch: None,
                tag: Some("v1.0".into()),
                sha: "bcbb5ec396a2c0f828686f14fac9b80b780504f2".into(),
                kind: "pipeline",
            }])
        );
    }

    #[test]
    fn other_events_are_ignored_not_refused() {
        let h = header_map(&[("x-gitlab-event", "Merge Request Hook")]);
        assert_eq!(
            parse(&h, b"{}").unwrap().parsed,
            Parsed::Ignored("event Merge Request Hook is not used".into())
        );
        let h = header_map(&[("x-gitlab-event", "System Hook")]);
        assert_eq!(
            parse(&h, br#"{"event_name": "project_create"}"#)
                .unwrap()
                .parsed,
            Parsed::Ignored("system hook event project_create is not used".into())
        );
        assert_eq!(
            parse(&HeaderMap::new(), b"{}"),
            Err(WebhookError::BadRequest(
                "X-Gitlab-Event header is missing".into()
            ))
        );
    }
}
