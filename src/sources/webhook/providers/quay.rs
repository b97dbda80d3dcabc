//! Quay "repository push" notifications: the tags updated by one push, no digest, no signature.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{JSON, image_push, json, media_type};
use crate::sources::webhook::{Auth, Delivery, Parsed, WebhookError};

#[derive(Deserialize)]
struct Push {
    /// `namespace/name`.
    repository: String,
    /// `quay.io/namespace/name`, or the host of a self-hosted Quay.
    docker_url: Option<String>,
    #[serde(default)]
    updated_tags: Tags,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Tags {
    List(Vec<String>),
    /// Old Quay: tag → legacy image id (not a manifest digest, so not kept).
    Map(BTreeMap<String, serde_json::Value>),
}

impl Default for Tags {
    fn default() -> Self {
        Tags::List(Vec::new())
    }
}

pub(super) fn parse(headers: &http::HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError> {
    media_type(headers, &[JSON])?;
    let push: Push = json(body)?;
    let repository = push
        .docker_url
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("quay.io/{}", push.repository));
    let tags = match push.updated_tags {
        Tags::List(tags) => tags,
        Tags::Map(tags) => tags.into_keys().collect(),
    };
    let parsed = if tags.is_empty() {
        Parsed::Ignored("no tags updated".into())
    } else {
        let images = tags
            .iter()
            .map(|tag| image_push(&repository, tag, None, None));
        Parsed::Images(images.collect::<Result<_, _>>()?)
    };
    Ok(Delivery {
        parsed,
        auth: Auth::None,
        delivery_id: None,
        event: "repo_push".into(),
        named: Vec::new(),
    })
}
