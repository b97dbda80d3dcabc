//! One parser per sender: headers and raw body in, [`Delivery`] out. Pure (no I/O, no clock).
//!
//! Parsing extracts the sender's proof ([`Auth`]) but never checks it: the caller verifies it
//! with [`super::verify`] over the same raw body, against the Project's secret.

mod bitbucket;
mod dockerhub;
mod generic;
mod github;
mod gitlab;
mod harbor;
mod quay;
mod registry;
#[cfg(test)]
mod tests;

use http::HeaderMap;
use http::header::CONTENT_TYPE;
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};

use super::{Auth, Delivery, GitEvent, ImagePush, Named, Parsed, Provider, WebhookError, header};
use crate::image::{is_valid_digest, is_valid_tag};

/// Parses one delivery from `provider`: what it asks for, how it proves its secret, and its id.
///
/// Errors: [`WebhookError::UnsupportedMediaType`] for a Content-Type the sender does not use,
/// [`WebhookError::BadRequest`] for malformed JSON, missing fields or headers,
/// [`WebhookError::Unauthorized`] for a signature header that cannot be one. A valid event that
/// asks nothing is `Ok` with [`Parsed::Ignored`].
pub fn parse(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Delivery, WebhookError> {
    match provider {
        Provider::Generic => generic::parse(headers, body),
        Provider::Github => github::parse(headers, body),
        Provider::Gitlab => gitlab::parse(headers, body),
        Provider::Bitbucket => bitbucket::parse(headers, body),
        Provider::Dockerhub => dockerhub::parse(headers, body),
        Provider::Registry => registry::parse(headers, body),
        Provider::Harbor => harbor::parse(headers, body),
        Provider::Quay => quay::parse(headers, body),
    }
}

const JSON: &str = "application/json";

/// Checks the Content-Type essence (parameters such as `charset` ignored) against what the sender
/// uses, and returns the one matched. A missing header counts as JSON: hand-written `curl` calls
/// and some proxies drop it, and the body must still parse as JSON.
fn media_type(
    headers: &HeaderMap,
    accepted: &[&'static str],
) -> Result<&'static str, WebhookError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(JSON);
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    accepted
        .iter()
        .copied()
        .find(|a| *a == essence)
        .ok_or(WebhookError::UnsupportedMediaType(essence))
}

fn bad(message: impl Into<String>) -> WebhookError {
    WebhookError::BadRequest(message.into())
}

/// Decodes a JSON body; errors name the field path (``push_data: missing field `tag` ``).
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, WebhookError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        bad(match inner.classify() {
            serde_json::error::Category::Data if path == "." => inner.to_string(),
            serde_json::error::Category::Data => format!("{path}: {inner}"),
            _ => format!("malformed JSON: {inner}"),
        })
    })?;
    // Trailing garbage after the document is malformed too.
    de.end().map_err(|e| bad(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// Checks that a body we ignore by its event header is still JSON, so a broken sender shows up.
fn any_json(body: &[u8]) -> Result<(), WebhookError> {
    json::<serde::de::IgnoredAny>(body).map(drop)
}

/// For fields whose shape senders vary (an object here, `[]` or `null` there): any other shape
/// reads as absent instead of failing the whole delivery.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(T::deserialize(value).ok())
}

fn required_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, WebhookError> {
    header(headers, name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad(format!("{name} header is missing")))
}

/// The first of `names` present and non-empty (delivery ids have an old and a new header).
fn first_header(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| header(headers, n).map(str::trim))
        .find(|v| !v.is_empty())
        .map(str::to_owned)
}

/// A shared secret sent as is (`X-Gitlab-Token`, `Authorization`).
fn token(headers: &HeaderMap, name: &str) -> Auth {
    first_header(headers, &[name]).map_or(Auth::None, Auth::Token)
}

/// `sha256=<hex>` from `name`, or `Auth::None` when the header is absent. The value is never
/// echoed: it is an HMAC of the body under the Project's secret.
fn hmac_sha256(headers: &HeaderMap, name: &str) -> Result<Auth, WebhookError> {
    let Some(value) = headers.get(name) else {
        return Ok(Auth::None);
    };
    let malformed = || WebhookError::Unauthorized(format!("malformed {name}"));
    let value = value.to_str().map_err(|_| malformed())?.trim();
    if value.starts_with("sha1=") {
        return Err(WebhookError::Unauthorized(
            "only sha256 signatures are accepted".into(),
        ));
    }
    let hex = value.strip_prefix("sha256=").ok_or_else(malformed)?;
    match hex::decode(hex) {
        Ok(mac) if mac.len() == 32 => Ok(Auth::HmacSha256(mac)),
        _ => Err(malformed()),
    }
}

/// A pushed ref (`refs/heads/…`, `refs/tags/…`) as a [`GitEvent`], or why it names nothing.
fn pushed_ref(repository: String, full_ref: &str, sha: String, deleted: bool) -> Parsed {
    let (branch, tag, kind, what) = if let Some(b) = full_ref.strip_prefix("refs/heads/") {
        (Some(b), None, "push", "branch")
    } else if let Some(t) = full_ref.strip_prefix("refs/tags/") {
        (None, Some(t), "tag_push", "tag")
    } else {
        return Parsed::Ignored(format!("ref {full_ref} is neither a branch nor a tag"));
    };
    if deleted {
        return Parsed::Ignored(format!("{what} deleted"));
    }
    Parsed::Git(vec![GitEvent {
        repository,
        branch: branch.map(str::to_owned),
        tag: tag.map(str::to_owned),
        sha,
        kind,
    }])
}

/// The all-zero object id senders use for "no commit" (a deleted or created ref's other side).
fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// A sender's value in an error message, cut short: it is input, maybe huge.
fn shown(value: &str) -> String {
    let cut: String = value.chars().take(80).collect();
    if cut.len() < value.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// An [`ImagePush`], checked: whatever a sender says ends up in a `docker pull`.
fn image_push(
    repository: &str,
    tag: &str,
    digest: Option<&str>,
    event_id: Option<&str>,
) -> Result<ImagePush, WebhookError> {
    if repository.is_empty()
        || repository.contains("://")
        || repository
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad(format!("invalid repository {}", shown(repository))));
    }
    if !is_valid_tag(tag) {
        return Err(bad(format!(
            "invalid tag {} (expected [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})",
            shown(tag)
        )));
    }
    if let Some(d) = digest.filter(|d| !is_valid_digest(d)) {
        return Err(bad(format!(
            "invalid digest {} (expected algo:hex)",
            shown(d)
        )));
    }
    Ok(ImagePush {
        repository: repository.to_owned(),
        tag: tag.to_owned(),
        digest: digest.map(str::to_owned),
        event_id: event_id.map(str::to_owned),
    })
}

/// The repositories a delivery that asks nothing names, read leniently (any field may be
/// missing): Git repositories as the parsers spell them for [`GitEvent`]s, and for GitHub
/// package events the ghcr.io image. Only used to find Projects whose secret must be checked.
pub(super) fn named(provider: Provider, body: &[u8]) -> Vec<Named> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let text = |pointer: &str| {
        v.pointer(pointer)
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
    };
    let mut out = Vec::new();
    match provider {
        Provider::Github => {
            if let Some(r) = text("/repository/full_name") {
                out.push(Named::Git(r.to_owned()));
            }
            for key in ["package", "registry_package"] {
                if let (Some(owner), Some(name)) = (
                    text(&format!("/{key}/owner/login")),
                    text(&format!("/{key}/name")),
                ) {
                    out.push(Named::Image(
                        format!("ghcr.io/{owner}/{name}").to_lowercase(),
                    ));
                }
            }
        }
        Provider::Gitlab => {
            if let Some(r) = text("/project/path_with_namespace") {
                out.push(Named::Git(r.to_owned()));
            }
        }
        Provider::Bitbucket => {
            if let Some(r) = text("/repository/full_name") {
                out.push(Named::Git(r.to_owned()));
            }
            if let (Some(key), Some(slug)) =
                (text("/repository/project/key"), text("/repository/slug"))
            {
                out.push(Named::Git(format!("{key}/{slug}").to_lowercase()));
            }
        }
        _ => {}
    }
    out
}
