//! `POST /api/webhook/{secret}` with `{"image": "repo:tag", "digest": "sha256:…"}`, for CI
//! scripts: the secret in the URL is the only proof.

use serde::Deserialize;

use super::{JSON, bad, first_header, image_push, json, media_type};
use crate::image::ImageRef;
use crate::sources::webhook::{Auth, Delivery, Parsed, WebhookError};

#[derive(Deserialize)]
struct Body {
    image: String,
    digest: Option<String>,
}

pub(super) fn parse(headers: &http::HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError> {
    media_type(headers, &[JSON])?;
    let Body { image, digest } = json(body)?;
    let ImageRef {
        repository,
        tag,
        digest: pinned,
    } = ImageRef::parse(&image);
    // A digest alone names no tag to deploy under: the Project's tag rules could not match it.
    let tag = tag.ok_or_else(|| bad("`image` must name a tag (repo:tag)"))?;
    let digest = match (digest.as_deref(), pinned) {
        (Some(d), Some(p)) if d != p => {
            return Err(bad("`digest` differs from the digest in `image`"));
        }
        (d, p) => d.or(p),
    };
    Ok(Delivery {
        parsed: Parsed::Images(vec![image_push(repository, tag, digest, None)?]),
        auth: Auth::None,
        // A script may name its delivery (a CI run id): then a redelivery counts once, however
        // late. Without one, an identical body counts once only within the retry window.
        delivery_id: first_header(headers, &["Idempotency-Key"]),
        event: "image".into(),
        named: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::webhook::ImagePush;

    const D: &str = "sha256:e9ece6ea73f27cf42da62ce05c7251ab0d713e4042f231d31265bb550e617e33";

    fn image(body: &str) -> Result<ImagePush, WebhookError> {
        match parse(&http::HeaderMap::new(), body.as_bytes())?.parsed {
            Parsed::Images(mut images) if images.len() == 1 => Ok(images.remove(0)),
            other => panic!("{other:?}"),
        }
    }

    fn push(repository: &str, tag: &str, digest: Option<&str>) -> ImagePush {
        ImagePush {
            repository: repository.into(),
            tag: tag.into(),
            digest: digest.map(Into::into),
            event_id: None,
        }
    }

    #[test]
    fn references() {
        assert_eq!(
            image(r#"{"image": "127.0.0.1:5000/library/busybox:1.35"}"#),
            Ok(push("127.0.0.1:5000/library/busybox", "1.35", None))
        );
        assert_eq!(
            image(&format!(
                r#"{{"image": "ghcr.io/octo/app:v1", "digest": "{D}"}}"#
            )),
            Ok(push("ghcr.io/octo/app", "v1", Some(D)))
        );
        assert_eq!(
            image(&format!(r#"{{"image": "app:latest@{D}"}}"#)),
            Ok(push("app", "latest", Some(D)))
        );
        assert_eq!(
            image(&format!(
                r#"{{"image": "app:latest@{D}", "digest": "{D}"}}"#
            )),
            Ok(push("app", "latest", Some(D)))
        );
    }

    #[test]
    fn refusals() {
        let err = |body: &str| match image(body) {
            Err(WebhookError::BadRequest(m)) => m,
            other => panic!("{other:?}"),
        };
        // The port is not a tag.
        assert!(err(r#"{"image": "localhost:5000/app"}"#).contains("must name a tag"));
        assert!(err(&format!(r#"{{"image": "app@{D}"}}"#)).contains("must name a tag"));
        assert!(err(r#"{"image": "app:"}"#).contains("invalid tag"));
        assert!(err(r#"{"image": "app:.hidden"}"#).contains("invalid tag"));
        assert!(err(&format!(r#"{{"image": "app:{}"}}"#, "a".repeat(129))).contains("invalid tag"));
        assert!(err(r#"{"image": "app:1", "digest": "sha256:abc"}"#).contains("invalid digest"));
        assert!(err(r#"{"image": "app:1", "digest": "e9ece6"}"#).contains("invalid digest"));
        assert!(err(r#"{"image": "https://ghcr.io/app:1"}"#).contains("invalid repository"));
        assert!(err(r#"{"image": ":1"}"#).contains("invalid repository"));
        let other = D.replace("e9", "f0");
        assert!(
            err(&format!(r#"{{"image": "app:1@{D}", "digest": "{other}"}}"#)).contains("differs")
        );
        assert!(err(r#"{"digest": null}"#).contains("missing field `image`"));
        assert!(err(r#"{"image": 5}"#).contains("image: invalid type"));
        assert!(err(r#"{"image": "app:1"} {}"#).starts_with("malformed JSON: trailing"));
    }
}
