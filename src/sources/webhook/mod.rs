//! Webhook ingestion: what CI systems and registries send, turned into "image X:tag was pushed".
//!
//! `providers` parses each sender's real payloads (pure, no I/O) into a [`Delivery`]; the server
//! authenticates it against the matching Project's secret, deduplicates it and records it durably
//! before answering.

pub mod providers;
pub mod server;

use http::HeaderMap;

pub use crate::ingest::events::{Auth, Delivery, GitEvent, ImagePush, Named, Parsed, Provider};

/// Why a delivery is refused. Messages name the problem and never echo secrets or signatures.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// 400: malformed JSON, missing fields.
    #[error("{0}")]
    BadRequest(String),
    /// 415: not a content type the sender uses.
    #[error("unsupported content type {0:?}")]
    UnsupportedMediaType(String),
    /// 401: signature or token missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
}

/// Header value as text, if present and valid.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Verifies `auth` against `secret` in constant time.
pub fn verify(auth: &Auth, body: &[u8], secret: &[u8]) -> bool {
    use hmac::{KeyInit, Mac};
    use subtle::ConstantTimeEq;
    match auth {
        Auth::HmacSha256(signature) => {
            let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
                return false;
            };
            mac.update(body);
            mac.verify_slice(signature).is_ok()
        }
        Auth::Token(token) => {
            let token = token.as_bytes();
            // A registry or Harbor sends `Authorization: <scheme> <secret>`: accept the bare
            // secret or the full header value.
            let bare = token
                .iter()
                .position(|b| *b == b' ')
                .map_or(token, |i| &token[i + 1..]);
            bool::from(token.ct_eq(secret)) || bool::from(bare.ct_eq(secret))
        }
        Auth::None => false,
    }
}

/// Store setting: the base URL senders reach the running controller's listener at, written by
/// `run` once it listens, so `webhook url` prints the URL of the listener actually started.
const PUBLIC_BASE: &str = "webhook-public-base";

/// The base URL for senders: `public` (`--public-url`) when given, else the address the
/// listener is bound to (an unspecified address is reached on loopback).
pub fn public_base(public: Option<&str>, bound: std::net::SocketAddr) -> String {
    if let Some(public) = public {
        return public.trim_end_matches('/').to_string();
    }
    let ip = match bound.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, bound.port()))
}

pub fn record_public_base(db: &crate::store::StateDb, base: &str) -> Result<(), String> {
    db.set_setting(PUBLIC_BASE, base).map_err(|e| e.to_string())
}

/// What the last `run` on this store recorded, if any.
pub fn recorded_public_base(db: &crate::store::StateDb) -> Result<Option<String>, String> {
    db.setting(PUBLIC_BASE).map_err(|e| e.to_string())
}

/// Where the URL secret is kept in the store (sealed like every stored secret).
const URL_SECRET: (&str, &str, &str) = ("", "tiny-forge", "webhook-url-secret");

/// The current URL secret, if one was made.
pub fn url_secret(
    db: &crate::store::StateDb,
    sealer: &crate::crypto::SecretBox,
) -> Result<Option<String>, String> {
    let (ns, name, key) = URL_SECRET;
    let Some(sealed) = db.secret(ns, name, key).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let plain = sealer
        .open(&sealed, &crate::store::secrets::context(ns, name, key))
        .map_err(|e| e.to_string())?;
    String::from_utf8(plain)
        .map(Some)
        .map_err(|_| "the stored webhook secret is damaged".to_string())
}

/// The URL secret, made (a random UUID) on first use.
pub fn ensure_url_secret(
    db: &crate::store::StateDb,
    sealer: &crate::crypto::SecretBox,
) -> Result<String, String> {
    match url_secret(db, sealer)? {
        Some(s) => Ok(s),
        None => rotate_url_secret(db, sealer),
    }
}

/// Replaces the URL secret: the old URL stops working at once (the listener re-reads the store
/// on every change).
pub fn rotate_url_secret(
    db: &crate::store::StateDb,
    sealer: &crate::crypto::SecretBox,
) -> Result<String, String> {
    let (ns, name, key) = URL_SECRET;
    let secret = uuid::Uuid::new_v4().to_string();
    let sealed = sealer.seal(
        secret.as_bytes(),
        &crate::store::secrets::context(ns, name, key),
    );
    db.set_secret(ns, name, key, &sealed)
        .map_err(|e| e.to_string())?;
    Ok(secret)
}
