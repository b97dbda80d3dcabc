//! What a source announces, in its own words: image pushes and Git events, as parsed from a
//! delivery. Sources produce these; the recorder matches them to Projects.

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
