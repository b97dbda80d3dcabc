//! CNCF distribution (`docker-registry`) notifications: `{"events": [...]}`, several per request,
//! each with its own id. Only a manifest pushed under a tag names something to deploy; blob
//! pushes, mounts, pulls, deletes and pushes by digest are skipped, and answered 2xx: the
//! registry retries anything else forever and holds every later event behind it.

use serde::Deserialize;

use super::{JSON, image_push, json, media_type, token};
use crate::sources::webhook::{Delivery, Parsed, WebhookError};

const EVENTS_V1: &str = "application/vnd.docker.distribution.events.v1+json";
const EVENTS_V2: &str = "application/vnd.docker.distribution.events.v2+json";

/// What a manifest (as opposed to a blob) is sent as.
const MANIFESTS: [&str; 4] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

#[derive(Deserialize)]
struct Envelope {
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    id: Option<String>,
    action: String,
    target: Target,
    #[serde(default)]
    request: Request,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    media_type: Option<String>,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

#[derive(Deserialize, Default)]
struct Request {
    /// The host the client pushed to, as it will pull from it.
    host: Option<String>,
}

pub(super) fn parse(headers: &http::HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError> {
    media_type(headers, &[EVENTS_V1, EVENTS_V2, JSON])?;
    let Envelope { events } = json(body)?;
    let mut actions: Vec<&str> = Vec::new();
    let mut skipped: Vec<&str> = Vec::new();
    let mut images = Vec::new();
    for event in &events {
        if !actions.contains(&event.action.as_str()) {
            actions.push(&event.action);
        }
        let target = &event.target;
        let manifest = target
            .media_type
            .as_deref()
            .is_some_and(|m| MANIFESTS.contains(&m));
        let tag = target.tag.as_deref().filter(|t| !t.is_empty());
        let skip = match (event.action.as_str(), manifest, tag) {
            ("push", true, Some(tag)) => {
                let repository = match event.request.host.as_deref().filter(|h| !h.is_empty()) {
                    Some(host) => format!("{host}/{}", target.repository),
                    None => target.repository.clone(),
                };
                let digest = target.digest.as_deref();
                images.push(image_push(&repository, tag, digest, event.id.as_deref())?);
                continue;
            }
            ("push", true, None) => "untagged manifest push",
            ("push", false, _) => "blob push",
            (other, _, _) => other,
        };
        if !skipped.contains(&skip) {
            skipped.push(skip);
        }
    }
    let parsed = match (images.is_empty(), events.len()) {
        (false, _) => Parsed::Images(images),
        (true, 0) => Parsed::Ignored("no events".into()),
        (true, 1) => Parsed::Ignored(format!("1 event: {} — no tagged manifest push", skipped[0])),
        (true, n) => Parsed::Ignored(format!(
            "{n} events: {} — no tagged manifest push",
            skipped.join(", ")
        )),
    };
    Ok(Delivery {
        parsed,
        auth: token(headers, "Authorization"),
        // Each event has its own id (kept on its ImagePush); the request has none.
        delivery_id: None,
        event: if actions.is_empty() {
            "none".into()
        } else {
            actions.join(",")
        },
        named: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::webhook::ImagePush;
    use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};

    const DIGEST: &str = "sha256:e9ece6ea73f27cf42da62ce05c7251ab0d713e4042f231d31265bb550e617e33";

    fn event(id: &str, action: &str, media_type: &str, tag: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "id": id, "action": action,
            "target": {"mediaType": media_type, "repository": "demo/web", "tag": tag, "digest": DIGEST},
            "request": {"host": "127.0.0.1:5000"}
        })
    }

    #[test]
    fn mixed_batch_keeps_tagged_manifest_pushes() {
        let body = serde_json::json!({"events": [
            event("a", "push", "application/octet-stream", None),
            event("b", "push", MANIFESTS[2], Some("1.0")),
            event("c", "pull", MANIFESTS[0], Some("1.0")),
            event("d", "push", MANIFESTS[3], Some("multi")),
        ]});
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(EVENTS_V2));
        let delivery = parse(&h, &serde_json::to_vec(&body).unwrap()).unwrap();
        let push = |tag: &str, id: &str| ImagePush {
            repository: "127.0.0.1:5000/demo/web".into(),
            tag: tag.into(),
            digest: Some(DIGEST.into()),
            event_id: Some(id.into()),
        };
        assert_eq!(
            delivery.parsed,
            Parsed::Images(vec![push("1.0", "b"), push("multi", "d")])
        );
        assert_eq!(delivery.event, "push,pull");
    }

    #[test]
    fn nothing_to_deploy_says_why() {
        let body = serde_json::json!({"events": [
            event("a", "push", "application/octet-stream", None),
            event("b", "pull", MANIFESTS[0], Some("1.0")),
            event("c", "push", "application/octet-stream", None),
        ]});
        let delivery = parse(&HeaderMap::new(), &serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(
            delivery.parsed,
            Parsed::Ignored("3 events: blob push, pull — no tagged manifest push".into())
        );
        let delivery = parse(&HeaderMap::new(), br#"{"events": []}"#).unwrap();
        assert_eq!(delivery.parsed, Parsed::Ignored("no events".into()));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            parse(&HeaderMap::new(), b"{}"),
            Err(WebhookError::BadRequest(
                "missing field `events` at line 1 column 2".into()
            ))
        );
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        assert_eq!(
            parse(&h, br#"{"events": []}"#),
            Err(WebhookError::UnsupportedMediaType(
                "application/octet-stream".into()
            ))
        );
    }
}
