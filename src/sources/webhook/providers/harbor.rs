//! Harbor webhooks, in the default format (`type: "PUSH_ARTIFACT"`, `event_data`) or as
//! CloudEvents (`type: "harbor.artifact.pushed"`, `data`). Harbor sends the configured
//! `Authorization` header.

use serde::Deserialize;

use super::{JSON, bad, image_push, json, media_type, token};
use crate::image::{ImageRef, is_valid_tag};
use crate::sources::webhook::{Delivery, Parsed, WebhookError};

/// Harbor's CloudEvents formatter sends its structured mode media type.
const CLOUDEVENTS: &str = "application/cloudevents+json";

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    /// Default format.
    event_data: Option<Data>,
    /// CloudEvents format.
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(default)]
    resources: Vec<Resource>,
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct Resource {
    tag: Option<String>,
    digest: Option<String>,
    /// `host/project/repo:tag`, or `…@digest` for an artifact without a tag.
    resource_url: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    repo_full_name: Option<String>,
}

pub(super) fn parse(headers: &http::HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError> {
    media_type(headers, &[JSON, CLOUDEVENTS])?;
    let event: Event = json(body)?;
    let parsed = match event.kind.as_str() {
        "PUSH_ARTIFACT" | "harbor.artifact.pushed" => {
            let data = event
                .event_data
                .or(event.data)
                .ok_or_else(|| bad("missing field `event_data` (or CloudEvents `data`)"))?;
            pushed(data)?
        }
        other => Parsed::Ignored(format!("event {other} is not used")),
    };
    Ok(Delivery {
        parsed,
        auth: token(headers, "Authorization"),
        delivery_id: None,
        event: event.kind,
        named: Vec::new(),
    })
}

fn pushed(data: Data) -> Result<Parsed, WebhookError> {
    let full_name = data.repository.and_then(|r| r.repo_full_name);
    let mut images = Vec::new();
    for resource in data.resources {
        // An artifact pushed by digest has the digest (or nothing) where the tag goes.
        let Some(tag) = resource.tag.filter(|t| is_valid_tag(t)) else {
            continue;
        };
        let repository = match (resource.resource_url.as_deref(), full_name.as_deref()) {
            (Some(url), _) => ImageRef::parse(url).repository.to_owned(),
            (None, Some(name)) => name.to_owned(),
            (None, None) => {
                return Err(bad(
                    "resource without `resource_url` or `repository.repo_full_name`",
                ));
            }
        };
        images.push(image_push(
            &repository,
            &tag,
            resource.digest.as_deref(),
            None,
        )?);
    }
    Ok(if images.is_empty() {
        Parsed::Ignored("no tagged artifact pushed".into())
    } else {
        Parsed::Images(images)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::webhook::{Auth, ImagePush, verify};
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn untagged_push_and_authorization() {
        let body = br#"{"type": "PUSH_ARTIFACT", "event_data": {"resources": [
            {"digest": "sha256:8a9e9863dbb6e10edb5adfe917c00da84e1700fa76e7ed02476aa6e6fb8ee0d8",
             "tag": "", "resource_url": "hub.harbor.com/p/app@sha256:8a9e9863dbb6e10edb5adfe917c00da84e1700fa76e7ed02476aa6e6fb8ee0d8"}]}}"#;
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Basic czNjcmV0"));
        let delivery = parse(&h, body).unwrap();
        assert_eq!(
            delivery.parsed,
            Parsed::Ignored("no tagged artifact pushed".into())
        );
        assert_eq!(delivery.auth, Auth::Token("Basic czNjcmV0".into()));
        assert!(verify(&delivery.auth, body, b"czNjcmV0"));
    }

    #[test]
    fn repository_without_resource_url() {
        let body = br#"{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"tag": "v1"}],
            "repository": {"repo_full_name": "p/app"}}}"#;
        let delivery = parse(&HeaderMap::new(), body).unwrap();
        assert_eq!(
            delivery.parsed,
            Parsed::Images(vec![ImagePush {
                repository: "p/app".into(),
                tag: "v1".into(),
                digest: None,
                event_id: None,
            }])
        );
        assert_eq!(delivery.auth, Auth::None);
    }
}
