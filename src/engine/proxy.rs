//! The proxy in front of the containers, as the engine sees it: one route per Stage, owned and
//! found by a tag, never by guessing. The real implementation is Nginx Proxy Manager
//! (`crate::adapters::npm`).

use crate::engine::reasons::Reason;
use std::future::Future;
use std::time::Duration;

use crate::api::ProxySettings;

/// How long the containers of a removed route are kept: NPM answers before nginx has reloaded,
/// and requests in flight to them finish meanwhile.
pub const ROUTE_DRAIN: Duration = Duration::from_secs(2);

/// Who owns a proxy host: written into the host's `meta`, read back to find it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub instance: String,
    pub namespace: String,
    pub stage: String,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.stage)
    }
}

/// Where a Stage's domains should go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub owner: Owner,
    pub project: String,
    pub generation: i64,
    /// Lowercase, sorted, unique.
    pub domains: Vec<String>,
    pub forward_scheme: String,
    pub forward_host: String,
    pub forward_port: u16,
    pub settings: ProxySettings,
}

impl Route {
    pub fn target(&self) -> String {
        format!(
            "{}://{}:{}",
            self.forward_scheme, self.forward_host, self.forward_port
        )
    }
}

/// What went wrong with the proxy. `reason()` goes into the `ProxyReady` condition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("the proxy is unreachable: {0}")]
    Unreachable(String),
    #[error("the proxy refused our credentials: {0}")]
    Auth(String),
    #[error(
        "domain {domain} belongs to proxy host {host_id}, which tiny-forge did not create (set proxy.adopt to take it over)"
    )]
    DomainInUse { domain: String, host_id: i64 },
    #[error("the proxy rejected the host: {0}")]
    Rejected(String),
    #[error("nginx did not accept the new configuration: {0}")]
    NginxOffline(String),
    #[error("the proxy answered: {0}")]
    Other(String),
}

impl ProxyError {
    pub fn reason(&self) -> Reason {
        match self {
            ProxyError::Unreachable(_) => Reason::ProxyUnreachable,
            ProxyError::Auth(_) => Reason::ProxyAuthFailed,
            ProxyError::DomainInUse { .. } => Reason::DomainInUse,
            ProxyError::Rejected(_) => Reason::ProxyRejected,
            ProxyError::NginxOffline(_) => Reason::NginxConfigError,
            ProxyError::Other(_) => Reason::ProxyError,
        }
    }

    /// Whether a switch to this route must be undone: nginx or NPM refused the route itself
    /// (retrying it would fail the same way). Anything else — the proxy away (also its nginx
    /// answering 502/503/504 for a restarting backend), credentials refused, the domain taken,
    /// writes that kept failing — is no verdict on the new container: it waits beside the old
    /// one, which may be what the proxy still routes to, and the switch is tried again.
    pub fn route_at_fault(&self) -> bool {
        matches!(self, ProxyError::NginxOffline(_) | ProxyError::Rejected(_))
    }
}

/// What `ensure` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ensured {
    pub host_id: i64,
    /// False when the host already was as asked: nothing was written.
    pub changed: bool,
}

/// The verbs the engine needs from a proxy. Each is safe to repeat.
pub trait Proxy: Send + Sync {
    /// Makes the one host of `route.owner` route `route.domains` to the target, and returns once
    /// the proxy reports it online. Writes only what differs.
    fn ensure(&self, route: &Route) -> impl Future<Output = Result<Ensured, ProxyError>> + Send;
    /// Removes the host of `owner`; none is fine. Returns whether there was one.
    fn remove(&self, owner: &Owner) -> impl Future<Output = Result<bool, ProxyError>> + Send;
    /// Owners of the hosts this instance created, for garbage collection.
    fn owned(&self, instance: &str) -> impl Future<Output = Result<Vec<Owner>, ProxyError>> + Send;
}

/// No proxy configured: Stages with domains report `ProxyReady=False` with reason
/// `ProxyNotConfigured`, and nothing else changes.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProxy;

impl Proxy for NoProxy {
    async fn ensure(&self, _route: &Route) -> Result<Ensured, ProxyError> {
        Err(ProxyError::Unreachable(
            "no proxy is configured (--npm-url)".into(),
        ))
    }
    async fn remove(&self, _owner: &Owner) -> Result<bool, ProxyError> {
        Ok(false)
    }
    async fn owned(&self, _instance: &str) -> Result<Vec<Owner>, ProxyError> {
        Ok(Vec::new())
    }
}

/// An optional proxy: `None` behaves as [`NoProxy`].
impl<P: Proxy> Proxy for Option<P> {
    async fn ensure(&self, route: &Route) -> Result<Ensured, ProxyError> {
        match self {
            Some(p) => p.ensure(route).await,
            None => NoProxy.ensure(route).await,
        }
    }
    async fn remove(&self, owner: &Owner) -> Result<bool, ProxyError> {
        match self {
            Some(p) => p.remove(owner).await,
            None => Ok(false),
        }
    }
    async fn owned(&self, instance: &str) -> Result<Vec<Owner>, ProxyError> {
        match self {
            Some(p) => p.owned(instance).await,
            None => Ok(Vec::new()),
        }
    }
}

/// Normalises domains as NPM stores them: lowercase, sorted, unique.
pub fn normalise_domains(domains: &[String]) -> Vec<String> {
    let mut d: Vec<String> = domains
        .iter()
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    d.sort();
    d.dedup();
    d
}

/// Whether a domain is one NPM accepts (letters, digits, `-`, `.`, a leading `*.`).
pub fn valid_domain(d: &str) -> bool {
    let body = d.strip_prefix("*.").unwrap_or(d);
    !body.is_empty()
        && body.len() <= 253
        && body.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
