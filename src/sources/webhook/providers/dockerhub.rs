//! Docker Hub repository webhooks: one tag pushed, no digest, no signature (the secret can only
//! live in the URL).

use serde::Deserialize;

use super::{JSON, image_push, json, media_type};
use crate::sources::webhook::{Auth, Delivery, Parsed, WebhookError};

#[derive(Deserialize)]
struct Push {
    push_data: PushData,
    repository: Repository,
}

#[derive(Deserialize)]
struct PushData {
    tag: String,
}

#[derive(Deserialize)]
struct Repository {
    /// `namespace/name`.
    repo_name: String,
}

pub(super) fn parse(headers: &http::HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError> {
    media_type(headers, &[JSON])?;
    let push: Push = json(body)?;
    let repository = format!("docker.io/{}", push.repository.repo_name);
    Ok(Delivery {
        parsed: Parsed::Images(vec![image_push(
            &repository,
            &push.push_data.tag,
            None,
            None,
        )?]),
        auth: Auth::None,
        delivery_id: None,
        event: "push".into(),
        named: Vec::new(),
    })
}
