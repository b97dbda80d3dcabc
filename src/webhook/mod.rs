//! Webhook ingestion: what CI systems and registries send, turned into "image X:tag was pushed".
//!
//! `providers` parses each sender's real payloads (pure, no I/O) into a [`Delivery`]; the server
//! authenticates it against the matching Project's secret, deduplicates it and records it durably
//! before answering.

pub mod metrics;
pub mod providers;
pub mod recorder;
pub mod server;

use http::HeaderMap;

/// The senders tiny-forge understands, by the last segment of their URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    /// `POST /api/webhook/{secret}` with `{"image": "repo:tag", "digest": "sha256:…"}`.
    Generic,
    Github,
    Gitlab,
    Bitbucket,
    Dockerhub,
    /// CNCF distribution (`docker-registry`) notifications.
    Registry,
    Harbor,
    Quay,
}

impl Provider {
    pub const ALL: [Provider; 8] = [
        Provider::Generic,
        Provider::Github,
        Provider::Gitlab,
        Provider::Bitbucket,
        Provider::Dockerhub,
        Provider::Registry,
        Provider::Harbor,
        Provider::Quay,
    ];

    /// URL segment and metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Generic => "generic",
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Bitbucket => "bitbucket",
            Provider::Dockerhub => "dockerhub",
            Provider::Registry => "registry",
            Provider::Harbor => "harbor",
            Provider::Quay => "quay",
        }
    }

    pub fn from_segment(s: &str) -> Option<Provider> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s && *p != Provider::Generic)
    }
}

/// An image tag pushed to a registry, as the sender names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePush {
    /// Repository including its registry host when the sender gives one
    /// (`ghcr.io/octo/app`, `127.0.0.1:5000/library/busybox`, `docker.io/org/app`).
    pub repository: String,
    pub tag: String,
    /// Manifest digest (`sha256:…`) when the sender gives it.
    pub digest: Option<String>,
    /// The sender's id of this one event (registry notifications carry several per request).
    pub event_id: Option<String>,
}

/// A Git event that stands for an image through the Project's tag template (`sha-{sha7}`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitEvent {
    /// Repository as `owner/name` (GitHub, Bitbucket) or `group/sub/name` (GitLab).
    pub repository: String,
    /// Branch, for branch pushes and CI runs on a branch.
    pub branch: Option<String>,
    /// Git tag, for tag pushes.
    pub tag: Option<String>,
    /// Full commit id.
    pub sha: String,
    /// `push`, `tag_push`, `workflow_run`, `pipeline`.
    pub kind: &'static str,
}

/// What a delivery says, once parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Image tags pushed (registries, GitHub packages, the generic endpoint).
    Images(Vec<ImagePush>),
    /// Git events (pushes, finished CI runs), mapped to tags by the Project.
    Git(Vec<GitEvent>),
    /// A valid delivery that asks nothing of us, and why (answered 2xx: GitLab disables hooks
    /// that get 4xx, the registry retries non-2xx forever).
    Ignored(String),
    /// A liveness check of the hook (GitHub `ping`).
    Ping,
}

/// How the sender proves it knows the Project's secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// HMAC-SHA256 over the raw body (GitHub `X-Hub-Signature-256`, Bitbucket `X-Hub-Signature`),
    /// decoded from hex.
    HmacSha256(Vec<u8>),
    /// A shared token sent as is (GitLab `X-Gitlab-Token`; Harbor and the registry send a
    /// configured `Authorization` header: its full value).
    Token(String),
    /// Nothing (Docker Hub, Quay, generic): the secret in the URL is the only check.
    None,
}

/// A parsed delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub parsed: Parsed,
    pub auth: Auth,
    /// The sender's delivery id (stable across redeliveries) when it sends one.
    pub delivery_id: Option<String>,
    /// The sender's event name (`package`, `Push Hook`, `push`, …), for logs and metrics.
    pub event: String,
    /// What a delivery that asks nothing ([`Parsed::Ignored`], [`Parsed::Ping`]) is about: a
    /// Project using one of these with a webhook secret still authenticates it (401, not an
    /// "ignored" that would tell a forger what counts).
    pub named: Vec<Named>,
}

/// A repository a delivery names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Named {
    /// An image repository (`ghcr.io/octo/app`).
    Image(String),
    /// A Git repository as `gitSource.repository` spells it (`octo/app`).
    Git(String),
}

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
