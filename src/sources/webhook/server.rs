//! The HTTP side: warp routes on a hyper server we bind ourselves (a bind error is an error, not a
//! panic; header and body read timeouts; graceful drain), authentication, limits and metrics. What
//! a delivery says is written by the recorder (group commit) before the sender gets its 2xx.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use warp::{Buf, Filter, Reply};

use super::{Auth, Provider, WebhookError, providers, verify};
use crate::ingest::recorder::{Answer, Job};
use crate::ingest::{self, ProjectRef};
use crate::metrics::Metrics;
use crate::store::StateDb;

/// Settings of the webhook listener.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Largest accepted body (413 above it).
    pub body_limit: usize,
    /// Requests per second per source address, with a burst; None: unlimited.
    pub rate: Option<(NonZeroU32, NonZeroU32)>,
    /// Time allowed for the request head.
    pub header_timeout: Duration,
    /// Time allowed for the body.
    pub body_timeout: Duration,
    /// Reverse proxies (the TLS terminator) whose `Forwarded` / `X-Forwarded-For` name the
    /// client that rate limits count; anyone else's such headers are ignored.
    pub trusted_proxies: Vec<Cidr>,
}

/// An address range (`10.0.0.0/8`, `::1/128`) or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(ipnet::IpNet);

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map(|n| Cidr(n.trunc()))
            .map_err(|_| format!("{s:?} is not an address or CIDR range (10.0.0.0/8, ::1/128)"))
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            body_limit: 1 << 20,
            rate: Some((NonZeroU32::new(20).unwrap(), NonZeroU32::new(200).unwrap())),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Resolves the secret a Project names in `webhook.secretRef`.
pub trait SecretLookup: Send + Sync + 'static {
    fn webhook_secret(
        &self,
        project: &ProjectRef,
    ) -> Option<Result<Vec<u8>, crate::engine::SecretError>>;
}

/// Wherever the engine reads its secrets (the sealed store, a Secret of the cluster), the
/// listener reads the Projects' webhook secrets too, by the same rules.
impl<S: crate::engine::Secrets + 'static> SecretLookup for S {
    fn webhook_secret(
        &self,
        project: &ProjectRef,
    ) -> Option<Result<Vec<u8>, crate::engine::SecretError>> {
        let r = project.spec.webhook.as_ref()?.secret_ref.as_ref()?;
        let source = crate::engine::spec::EnvValueSource::Secret(r);
        Some(
            self.value(&project.namespace, &source)
                .map(String::into_bytes),
        )
    }
}

/// What the listener authenticates against: the URL secret and the Projects (with the secrets
/// they name). The embedded store in standalone mode, watch caches in Kubernetes mode.
pub trait Index: Send + Sync + 'static {
    /// Moves whenever the URL secret, a Project or a stored secret may have changed; cheap, as
    /// it is asked on every request.
    fn version(&self) -> Result<i64, IndexError>;
    fn url_secret(&self) -> Result<Option<String>, IndexError>;
    fn projects(&self) -> Result<Vec<ProjectRef>, IndexError>;
    /// Whether deliveries can be recorded now (`/readyz`).
    fn ready(&self) -> Result<(), IndexError>;
}

/// Why the index cannot answer: deliveries get 503 (senders retry) and `/readyz` says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// Still starting: the watch caches have not listed everything yet.
    #[error("{0}")]
    NotReady(String),
    /// The store failed, or what it holds cannot be read.
    #[error("{0}")]
    Unavailable(String),
}

/// The embedded store as the listener's index. Most commits only record deliveries: the catalog
/// version is re-read only when another connection committed (`PRAGMA data_version` moved).
pub struct StoreIndex {
    reader: Arc<StateDb>,
    url_secret: UrlSecretReader,
    seen: Mutex<(i64, i64)>,
}

impl StoreIndex {
    /// `reader` is a connection of its own (reads never wait for the recorder's syncs).
    pub fn new(reader: Arc<StateDb>, url_secret: UrlSecretReader) -> StoreIndex {
        StoreIndex {
            reader,
            url_secret,
            seen: Mutex::new((i64::MIN, i64::MIN)),
        }
    }

    /// The URL secret as `tiny-forge run` keeps it: sealed in the store.
    pub fn sealed(reader: Arc<StateDb>, sealer: crate::crypto::SecretBox) -> Arc<StoreIndex> {
        let url_secret: UrlSecretReader = {
            let reader = reader.clone();
            Arc::new(move || super::url_secret(&reader, &sealer))
        };
        Arc::new(StoreIndex::new(reader, url_secret))
    }
}

impl Index for StoreIndex {
    fn version(&self) -> Result<i64, IndexError> {
        let unavailable = |e: crate::store::StoreError| IndexError::Unavailable(e.to_string());
        let data = self.reader.data_version().map_err(unavailable)?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.0 != data {
            seen.1 = self
                .reader
                .read(|tx| tx.catalog_version())
                .map_err(unavailable)?;
            seen.0 = data;
        }
        Ok(seen.1)
    }

    fn url_secret(&self) -> Result<Option<String>, IndexError> {
        (self.url_secret)().map_err(IndexError::Unavailable)
    }

    fn projects(&self) -> Result<Vec<ProjectRef>, IndexError> {
        self.reader
            .read(crate::store::ledger::projects)
            .map_err(|e| IndexError::Unavailable(e.to_string()))
    }

    fn ready(&self) -> Result<(), IndexError> {
        self.reader
            .data_version()
            .map(drop)
            .map_err(|e| IndexError::Unavailable(format!("the state store does not answer: {e}")))
    }
}

/// The URL secret and the Projects, reloaded when the index's version moves (another connection,
/// `tiny-forge webhook rotate`, the manifest sync, a watch event): rotation takes effect at once.
struct Cache {
    /// The index version these were read at.
    catalog: i64,
    url_secret: Option<String>,
    projects: Arc<Vec<ProjectRef>>,
    /// Project webhook secrets resolved so far, by (namespace, name).
    secrets: std::collections::HashMap<(String, String), SecretAnswer>,
}

/// What [`SecretLookup::webhook_secret`] answers: no secret configured, the secret, or why not.
type SecretAnswer = Option<Result<Vec<u8>, crate::engine::SecretError>>;

/// Where the URL secret lives in the store: sealed, see [`crate::sources::webhook::url_secret`].
pub type UrlSecretReader = Arc<dyn Fn() -> Result<Option<String>, String> + Send + Sync>;

pub struct Shared {
    config: Config,
    index: Arc<dyn Index>,
    secrets: Arc<dyn SecretLookup>,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    metrics: Arc<Metrics>,
    recorder: mpsc::Sender<Job>,
    cache: Mutex<Cache>,
}

#[derive(Clone, Copy, Debug)]
struct ClientAddr(SocketAddr);

/// A running listener.
pub struct Server {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Waits until the listener has drained after the shutdown signal.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Binds `config.listen` and serves until `shutdown` resolves, then drains in-flight requests
/// (at most 10 s). `reader` is a connection of its own to the store (reads never wait for the
/// recorder's syncs).
pub async fn start(
    config: Config,
    index: Arc<dyn Index>,
    secrets: Arc<dyn SecretLookup>,
    metrics: Arc<Metrics>,
    recorder: mpsc::Sender<Job>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Server> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let local_addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        limiter: config
            .rate
            .map(|(rate, burst)| RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))),
        config,
        index,
        secrets,
        metrics,
        recorder,
        cache: Mutex::new(Cache {
            catalog: i64::MIN,
            url_secret: None,
            projects: Arc::default(),
            secrets: Default::default(),
        }),
    });
    // Forget idle sources now and then: the limiter's memory stays bounded by recent senders.
    let sweeper = Arc::downgrade(&shared);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let Some(shared) = sweeper.upgrade() else {
                break;
            };
            if let Some(limiter) = &shared.limiter {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }
    });
    let routes = routes(shared.clone());
    let service = warp::service(routes);
    let header_timeout = shared.config.header_timeout;
    let task = tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let service = service.clone();
            let svc =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ClientAddr(peer));
                    let mut service = service.clone();
                    async move { tower_call(&mut service, req).await }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("webhook connections still open after 10s; closing them");
        }
    });
    Ok(Server { local_addr, task })
}

async fn tower_call<S, B>(service: &mut S, req: http::Request<B>) -> Result<S::Response, Infallible>
where
    S: tower_service::Service<http::Request<B>, Error = Infallible>,
{
    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
    service.call(req).await
}

fn routes(
    shared: Arc<Shared>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let with = {
        let shared = shared.clone();
        warp::any().map(move || shared.clone())
    };
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::with_status("ok\n", StatusCode::OK).into_response());
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with.clone())
        .map(|s: Arc<Shared>| match s.index.ready() {
            Ok(()) => warp::reply::with_status("ready\n", StatusCode::OK).into_response(),
            Err(e) => {
                tracing::warn!(error = %e, "not ready");
                warp::reply::with_status(
                    format!("not ready: {e}\n"),
                    StatusCode::SERVICE_UNAVAILABLE,
                )
                .into_response()
            }
        });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with.clone())
        .map(|s: Arc<Shared>| {
            warp::reply::with_header(
                s.metrics.render(),
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .into_response()
        });
    let hook = warp::post()
        .and(warp::path("api"))
        .and(warp::path("webhook"))
        .and(warp::path::param::<String>())
        .and(warp::path::tail())
        .and(warp::header::headers_cloned())
        .and(warp::ext::get::<ClientAddr>())
        .and(warp::body::stream())
        .and(with)
        .then(
            |secret: String,
             tail: warp::path::Tail,
             headers: HeaderMap,
             client: ClientAddr,
             body,
             shared: Arc<Shared>| async move {
                let started = Instant::now();
                let (provider, response) = handle(
                    &shared,
                    &secret,
                    tail.as_str(),
                    &headers,
                    client.0.ip(),
                    body,
                )
                .await;
                shared.metrics.observe(
                    provider.map_or("none", Provider::as_str),
                    response.outcome,
                    started.elapsed(),
                );
                response.into_response()
            },
        );
    healthz
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(hook)
        .unify()
        .recover(|_| async { Ok::<_, Infallible>(not_found()) })
        .unify()
}

/// One rate-limit bucket per IPv4 address and per IPv6 /64 (one host's usual share), so a
/// single machine cannot mint itself fresh buckets.
fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// The client a request comes from: the connection's peer, unless that is a trusted proxy —
/// then the nearest address its `Forwarded` (else `X-Forwarded-For`) header names that is not
/// itself a trusted proxy. Headers from anyone else are ignored: they are the client's to write.
fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let joined = |name: &str| {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    // Hops in the order the proxies appended them: the nearest last.
    let hops: Vec<Option<IpAddr>> = if let Some(forwarded) = joined("forwarded") {
        forwarded
            .split(',')
            .map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| forwarded_node(v.trim().trim_matches('"')))?
                })
            })
            .collect()
    } else if let Some(xff) = joined("x-forwarded-for") {
        xff.split(',').map(|h| forwarded_node(h.trim())).collect()
    } else {
        Vec::new()
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        // `unknown`, an obfuscated name: the nearest trusted hop is all that is known.
        let Some(hop) = hop else { break };
        client = hop;
        if !is_trusted(hop) {
            break;
        }
    }
    client
}

/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`, `2001:db8::1`.
fn forwarded_node(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.parse::<IpAddr>()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// Adds the Projects of `found` that `to` does not hold yet (by namespace and name).
fn add_new<'p>(to: &mut Vec<&'p ProjectRef>, found: impl IntoIterator<Item = &'p ProjectRef>) {
    for p in found {
        if !to
            .iter()
            .any(|x| x.namespace == p.namespace && x.name == p.name)
        {
            to.push(p);
        }
    }
}

/// The answer to an unknown route — and, byte for byte, to a wrong URL secret.
fn not_found() -> warp::reply::Response {
    warp::reply::with_status(warp::reply(), StatusCode::NOT_FOUND).into_response()
}

/// A response with the outcome label it counts under.
struct Response {
    status: StatusCode,
    outcome: &'static str,
    body: Option<serde_json::Value>,
    retry_after: Option<u64>,
}

impl Response {
    fn json(status: StatusCode, outcome: &'static str, body: serde_json::Value) -> Response {
        Response {
            status,
            outcome,
            body: Some(body),
            retry_after: None,
        }
    }
    fn error(status: StatusCode, outcome: &'static str, message: impl Into<String>) -> Response {
        Response::json(
            status,
            outcome,
            serde_json::json!({ "error": message.into() }),
        )
    }
    fn into_response(self) -> warp::reply::Response {
        let Some(body) = self.body else {
            return not_found();
        };
        let mut r = warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from(secs.max(1)));
        }
        r
    }
}

async fn handle(
    shared: &Shared,
    secret: &str,
    tail: &str,
    headers: &HeaderMap,
    client: IpAddr,
    body: impl futures::Stream<Item = Result<impl Buf, warp::Error>>,
) -> (Option<Provider>, Response) {
    let not_found = || Response {
        status: StatusCode::NOT_FOUND,
        outcome: "not_found",
        body: None,
        retry_after: None,
    };
    let (url_secret, projects) = match shared.snapshot() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the state store");
            return (
                None,
                Response::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "error",
                    "the state store is unavailable",
                ),
            );
        }
    };
    let known = url_secret.as_deref().is_some_and(|s| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            s.as_bytes(),
            secret.as_bytes(),
        ))
    });
    let provider = match tail {
        "" => Some(Provider::Generic),
        other => Provider::from_segment(other),
    };
    // A wrong secret costs a constant-time compare and reads no body: it is answered before
    // the rate limit, so guesses never spend the budget of the real URL's senders.
    let (true, Some(provider)) = (known, provider) else {
        return (None, not_found());
    };
    let client = client_address(client, headers, &shared.config.trusted_proxies);
    if let Some(limiter) = &shared.limiter
        && let Err(not_until) = limiter.check_key(&rate_key(client))
    {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let mut r = Response::error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many deliveries from this address; retry later",
        );
        r.retry_after = Some(wait.as_secs_f64().ceil() as u64);
        return (Some(provider), r);
    }
    let body = match read_body(
        headers,
        body,
        shared.config.body_limit,
        shared.config.body_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(r) => return (Some(provider), r),
    };
    let mut delivery = match providers::parse(provider, headers, &body) {
        Ok(d) => d,
        Err(e) => return (Some(provider), refused(provider, &e)),
    };
    if provider == Provider::Generic && delivery.auth == Auth::None {
        // Scripts may sign the generic endpoint like GitHub does.
        if let Some(sig) = super::header(headers, "x-hub-signature-256")
            .and_then(|v| v.strip_prefix("sha256="))
            .and_then(|h| hex::decode(h).ok())
        {
            delivery.auth = Auth::HmacSha256(sig);
        }
    }
    let delivery_key = delivery.delivery_id.clone().unwrap_or_else(|| {
        format!(
            "sha256:{}",
            hex::encode(sha2::Digest::finalize(
                <sha2::Sha256 as sha2::Digest>::new_with_prefix(&body)
            ))
        )
    });

    // Authenticate against the Projects the delivery is about.
    let mut candidates: Vec<&ProjectRef> = Vec::new();
    match &delivery.parsed {
        super::Parsed::Images(images) => {
            for i in images {
                let users = ingest::for_image(&projects, &i.repository);
                // An image no Project uses may become one (auto-creation): it must be one the
                // controller could ever deploy, by the controller's own validator.
                if users.is_empty()
                    && let Err(why) = ingest::valid_repository(&i.repository)
                {
                    return (
                        Some(provider),
                        refused(
                            provider,
                            &WebhookError::BadRequest(format!("image {}: {why}", i.repository)),
                        ),
                    );
                }
                add_new(&mut candidates, users);
            }
        }
        super::Parsed::Git(events) => {
            for e in events {
                add_new(
                    &mut candidates,
                    ingest::for_git(&projects, provider.as_str(), &e.repository),
                );
            }
        }
        // Asks nothing, but names repositories: their Projects' secrets are checked all the
        // same, so a forger learns nothing and a wrong signature is a 401 everywhere.
        super::Parsed::Ignored(_) | super::Parsed::Ping => {
            for named in &delivery.named {
                let found = match named {
                    super::Named::Image(repository) => ingest::for_image(&projects, repository),
                    super::Named::Git(repository) => {
                        ingest::for_git(&projects, provider.as_str(), repository)
                    }
                };
                let signed = found.into_iter().filter(|p| {
                    p.spec
                        .webhook
                        .as_ref()
                        .is_some_and(|w| w.secret_ref.is_some())
                });
                add_new(&mut candidates, signed);
            }
        }
    }
    let mut accepted = Vec::new();
    let mut refused_any = false;
    for p in candidates {
        match shared.project_secret(p) {
            None => accepted.push((p.namespace.clone(), p.name.clone())),
            Some(Ok(key)) if verify(&delivery.auth, &body, &key) => {
                accepted.push((p.namespace.clone(), p.name.clone()))
            }
            Some(Ok(_)) => refused_any = true,
            Some(Err(e)) => {
                tracing::error!(project = %format!("{}/{}", p.namespace, p.name), error = %e, "webhook secret unavailable");
                refused_any = true;
            }
        }
    }
    if refused_any && accepted.is_empty() {
        let what = match delivery.auth {
            Auth::None => {
                "this Project requires a signed delivery (webhook.secretRef) and none was sent"
            }
            _ => "signature or token does not match the Project's webhook secret",
        };
        tracing::warn!(provider = provider.as_str(), delivery = %delivery_key, "{what}");
        return (
            Some(provider),
            Response::error(StatusCode::UNAUTHORIZED, "unauthorized", what),
        );
    }

    let (respond, answer) = oneshot::channel();
    let job = Job {
        provider,
        delivery,
        delivery_key,
        accepted,
        respond,
    };
    if shared.recorder.send(job).await.is_err() {
        return (
            Some(provider),
            Response::error(StatusCode::SERVICE_UNAVAILABLE, "error", "shutting down"),
        );
    }
    let response = match answer.await {
        Ok(Ok(answer)) => answered(provider, answer),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not record a delivery");
            Response::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "error",
                "the delivery could not be stored; retry",
            )
        }
        Err(_) => Response::error(StatusCode::SERVICE_UNAVAILABLE, "error", "shutting down"),
    };
    (Some(provider), response)
}

fn answered(provider: Provider, answer: Answer) -> Response {
    if answer.duplicate {
        tracing::info!(provider = provider.as_str(), delivery = %answer.delivery_key, "duplicate delivery");
        return Response::json(
            StatusCode::OK,
            "duplicate",
            serde_json::json!({"duplicate": true}),
        );
    }
    let recorded = answer.verdicts.iter().any(|v| v.ignored.is_none());
    tracing::info!(
        provider = provider.as_str(),
        delivery = %answer.delivery_key,
        recorded,
        reason = answer.ignored.as_deref().unwrap_or(""),
        "delivery"
    );
    let body = serde_json::json!({
        "recorded": recorded,
        "stages": answer.verdicts,
        "created": answer.created,
        "ignored": answer.ignored,
    });
    if recorded {
        Response::json(StatusCode::ACCEPTED, "accepted", body)
    } else {
        Response::json(StatusCode::OK, "ignored", body)
    }
}

fn refused(provider: Provider, e: &WebhookError) -> Response {
    tracing::warn!(provider = provider.as_str(), error = %e, "delivery refused");
    match e {
        WebhookError::BadRequest(m) => {
            Response::error(StatusCode::BAD_REQUEST, "bad_request", m.clone())
        }
        WebhookError::UnsupportedMediaType(_) => Response::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.to_string(),
        ),
        WebhookError::Unauthorized(m) => {
            Response::error(StatusCode::UNAUTHORIZED, "unauthorized", m.clone())
        }
    }
}

async fn read_body(
    headers: &HeaderMap,
    body: impl futures::Stream<Item = Result<impl Buf, warp::Error>>,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, Response> {
    let too_large = || {
        Response::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body larger than the {limit}-byte limit"),
        )
    };
    let declared = super::header(headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let read = async {
        let mut out = Vec::with_capacity(declared.unwrap_or(4096).min(limit));
        futures::pin_mut!(body);
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk.map_err(|e| {
                Response::error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("reading the body: {e}"),
                )
            })?;
            while chunk.has_remaining() {
                let part = chunk.chunk();
                if out.len() + part.len() > limit {
                    return Err(too_large());
                }
                out.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        Ok(out)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(Response::error(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the body did not arrive within {}s", timeout.as_secs()),
        )),
    }
}

impl Shared {
    fn snapshot(&self) -> Result<(Option<String>, Arc<Vec<ProjectRef>>), IndexError> {
        let version = self.index.version()?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.catalog != version {
            cache.url_secret = self.index.url_secret()?;
            cache.projects = Arc::new(self.index.projects()?);
            cache.secrets.clear();
            cache.catalog = version;
        }
        Ok((cache.url_secret.clone(), cache.projects.clone()))
    }

    /// A Project's webhook secret, resolved (and decrypted) once per catalog change.
    fn project_secret(&self, p: &ProjectRef) -> SecretAnswer {
        let key = (p.namespace.clone(), p.name.clone());
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .secrets
            .get(&key)
        {
            return hit.clone();
        }
        let resolved = self.secrets.webhook_secret(p);
        // Kept until a spec or a stored secret changes; a failure is looked up again next time.
        // (A file under --secrets-dir that changes is read after the next such change.)
        if !matches!(resolved, Some(Err(_))) {
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .secrets
                .insert(key, resolved.clone());
        }
        resolved
    }
}
