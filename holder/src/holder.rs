//! The holder: its routes (from the route file at start, then from the controller) and the
//! control channel — HTTP on a loopback address, every call but `/healthz` and `/metrics`
//! authenticated by a bearer token. The controller hands the token to the holder container in
//! its environment (`TINY_FORGE_HOLDER_TOKEN`, see `main.rs`), so whoever can `docker inspect`
//! the container can read it: on a Docker host that is whoever can use the Docker socket, who
//! could take over the holder (or the host) anyway. What the token keeps out is every other
//! local process, which can reach the loopback control address but not the Docker API.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::limits::{Guard, Limits};
use crate::route::{self, Route, RouteStatus};
use crate::routes::{self, FILE_VERSION, RouteFile, RouteSpec, Stored};

/// How the holder starts.
#[derive(Clone, Debug)]
pub struct Config {
    /// Holds `routes.json`.
    pub state_dir: PathBuf,
    /// The control listener (loopback; port 0 picks one).
    pub control: SocketAddr,
    /// The bearer token the controller must present.
    pub token: String,
    /// Who this holder is (its container name), reported on `/healthz`: during an upgrade two
    /// holders answer on the same addresses.
    pub name: String,
    /// What one client may cost.
    pub limits: Limits,
}

pub struct Holder {
    state_dir: PathBuf,
    token: String,
    name: String,
    routes: Mutex<BTreeMap<String, Arc<Route>>>,
    guard: Arc<Guard>,
    /// One writer of the route file at a time, in the order the calls arrive.
    writes: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
}

/// A started holder. Dropping it does not stop it; `stop` does.
pub struct Running {
    pub control: SocketAddr,
    holder: Arc<Holder>,
}

impl Running {
    pub fn holder(&self) -> &Arc<Holder> {
        &self.holder
    }

    /// Stops accepting on every port and on the control listener. Connections in flight finish.
    pub fn stop(&self) {
        self.holder.shutdown.send_replace(true);
    }
}

/// Why a change was refused.
#[derive(Debug)]
pub enum ApplyError {
    /// The address cannot be bound (another process holds it): nothing changed.
    Bind(SocketAddr, std::io::Error),
    /// The route file could not be written: nothing changed.
    Persist(std::io::Error),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ApplyError::Persist(e) => write!(f, "cannot write the route file: {e}"),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Loads the route file (one it cannot use is set aside), binds every held port (a port still held by someone else is retried
/// until it is free) and the control listener.
pub async fn start(config: Config) -> std::io::Result<Running> {
    std::fs::create_dir_all(&config.state_dir)?;
    let (file, set_aside) =
        routes::load_or_set_aside(&config.state_dir.join("routes.json"), now_ms());
    if let Some(why) = set_aside {
        eprintln!("holder: unusable route file: {why}");
    }
    let holder = Arc::new(Holder {
        state_dir: config.state_dir,
        token: config.token,
        name: config.name,
        routes: Mutex::default(),
        guard: Guard::new(config.limits),
        writes: tokio::sync::Mutex::new(()),
        shutdown: watch::channel(false).0,
    });
    for (name, stored) in file.routes {
        let route = Route::new(
            name.clone(),
            stored.spec.clone(),
            stored.since_ms,
            holder.guard.clone(),
        );
        holder
            .routes
            .lock()
            .expect("poisoned")
            .insert(name, route.clone());
        tokio::spawn(bind_when_free(
            route,
            stored.spec.listen,
            holder.shutdown.subscribe(),
        ));
    }
    let control = route::bind(config.control)?;
    let addr = control.local_addr()?;
    tokio::spawn(serve_control(holder.clone(), control));
    Ok(Running {
        control: addr,
        holder,
    })
}

/// A held port at start-up: at once if it is free, else every 100 ms (the previous holder's
/// process may still be exiting).
async fn bind_when_free(route: Arc<Route>, addr: SocketAddr, shutdown: watch::Receiver<bool>) {
    let mut warned = false;
    loop {
        if *shutdown.borrow() || route.listening_on().is_some() {
            return;
        }
        match route::bind(addr) {
            Ok(listener) => {
                route.listen(listener, shutdown);
                return;
            }
            Err(e) => {
                if !warned {
                    eprintln!(
                        "holder: route {}: cannot listen on {addr} yet: {e}",
                        route.name
                    );
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Holder {
    pub fn route(&self, name: &str) -> Option<RouteStatus> {
        self.routes
            .lock()
            .expect("poisoned")
            .get(name)
            .map(|r| r.status())
    }

    pub fn list(&self) -> Vec<RouteStatus> {
        self.routes
            .lock()
            .expect("poisoned")
            .values()
            .map(|r| r.status())
            .collect()
    }

    fn stored(&self) -> RouteFile {
        let routes = self.routes.lock().expect("poisoned");
        RouteFile {
            version: FILE_VERSION,
            routes: routes
                .iter()
                .map(|(name, r)| {
                    let stored = Stored {
                        spec: r.spec(),
                        since_ms: r.since_ms(),
                    };
                    (name.clone(), stored)
                })
                .collect(),
        }
    }

    /// Creates or changes a route. The order makes every step safe to fail or crash after:
    /// bind the port (refused → nothing changed), write the route file, then switch in memory.
    pub async fn apply(&self, name: &str, spec: RouteSpec) -> Result<RouteStatus, ApplyError> {
        let _writing = self.writes.lock().await;
        let existing = self.routes.lock().expect("poisoned").get(name).cloned();
        let bound = match &existing {
            Some(r)
                if r.listening_on()
                    .is_some_and(|a| same_listen(a, spec.listen)) =>
            {
                None
            }
            _ => Some(route::bind(spec.listen).map_err(|e| ApplyError::Bind(spec.listen, e))?),
        };
        let now = now_ms();
        let mut file = self.stored();
        let since_ms = match &existing {
            Some(r) if r.spec().upstream == spec.upstream => r.since_ms(),
            _ => now,
        };
        file.routes.insert(
            name.to_string(),
            Stored {
                spec: spec.clone(),
                since_ms,
            },
        );
        self.save(&file).map_err(ApplyError::Persist)?;
        let route = match existing {
            Some(route) => {
                route.update(spec, now);
                route
            }
            None => {
                let route = Route::new(name.to_string(), spec, now, self.guard.clone());
                self.routes
                    .lock()
                    .expect("poisoned")
                    .insert(name.to_string(), route.clone());
                route
            }
        };
        if let Some(listener) = bound {
            route.listen(listener, self.shutdown.subscribe());
        }
        Ok(route.status())
    }

    /// Removes a route: the port is released, its target drains. Returns whether it existed.
    pub async fn remove(&self, name: &str) -> Result<bool, ApplyError> {
        let _writing = self.writes.lock().await;
        let mut file = self.stored();
        if file.routes.remove(name).is_none() {
            return Ok(false);
        }
        self.save(&file).map_err(ApplyError::Persist)?;
        if let Some(route) = self.routes.lock().expect("poisoned").remove(name) {
            route.retire();
        }
        Ok(true)
    }

    fn save(&self, file: &RouteFile) -> std::io::Result<()> {
        routes::save(&self.state_dir.join("routes.json"), file)
    }

    /// Requests and tunnels in flight on every route.
    pub fn in_flight(&self) -> usize {
        let routes = self.routes.lock().expect("poisoned");
        routes.values().map(|r| r.in_flight()).sum()
    }

    /// `ok name=<name> listening=<bound>/<routes>`: the controller waits for every route to be
    /// bound by the holder it started before it stops an older one.
    pub fn health(&self) -> String {
        let routes = self.routes.lock().expect("poisoned");
        let bound = routes
            .values()
            .filter(|r| r.listening_on().is_some())
            .count();
        format!("ok name={} listening={bound}/{}\n", self.name, routes.len())
    }

    pub fn metrics(&self) -> String {
        let routes: Vec<Arc<Route>> = self
            .routes
            .lock()
            .expect("poisoned")
            .values()
            .cloned()
            .collect();
        crate::metrics::render(
            routes
                .iter()
                .map(|r| (r.name.as_str(), &r.metrics, r.in_flight())),
        )
    }
}

/// A listener bound to port 0 is listening on whatever port it got: only an explicit address
/// is compared.
fn same_listen(bound: SocketAddr, wanted: SocketAddr) -> bool {
    bound == wanted || (wanted.port() == 0 && bound.ip() == wanted.ip())
}

/// A control request head is a few hundred bytes from a process on this host.
const CONTROL_HEAD: Duration = Duration::from_secs(10);

async fn serve_control(holder: Arc<Holder>, listener: TcpListener) {
    let mut shutdown = holder.shutdown.subscribe();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::until(&mut shutdown) => return,
        };
        let holder = holder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let holder = holder.clone();
                async move { Ok::<_, Infallible>(control(&holder, req).await) }
            });
            // The control address is loopback, but any local process can reach it: one that
            // never finishes its request head must not hold a task and a descriptor forever.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(CONTROL_HEAD)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Constant time for equal lengths: the token's length is no secret, its bytes are.
fn same_token(given: &[u8], token: &[u8]) -> bool {
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

/// Largest control request body: a route spec is a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

async fn control(holder: &Holder, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => {
            return Response::new(Full::new(Bytes::from(holder.health())));
        }
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(holder.metrics())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return resp;
        }
        _ => {}
    }
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|t| same_token(t, holder.token.as_bytes()));
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    if path == "/v1/routes" && req.method() == Method::GET {
        return json(StatusCode::OK, &holder.list());
    }
    let Some(name) = path.strip_prefix("/v1/routes/") else {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    };
    if !routes::valid_name(name) {
        return error(
            StatusCode::BAD_REQUEST,
            "route names are [a-z0-9._-]{1,200}",
        );
    }
    let name = name.to_string();
    match *req.method() {
        Method::GET => match holder.route(&name) {
            Some(status) => json(StatusCode::OK, &status),
            None => error(StatusCode::NOT_FOUND, "no such route"),
        },
        Method::PUT => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            let spec: RouteSpec = match serde_json::from_slice(&body) {
                Ok(s) => s,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            match holder.apply(&name, spec).await {
                Ok(status) => json(StatusCode::OK, &status),
                Err(e @ ApplyError::Bind(..)) => error(StatusCode::CONFLICT, e),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        Method::DELETE => match holder.remove(&name).await {
            Ok(true) => Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Full::default())
                .expect("static response"),
            Ok(false) => error(StatusCode::NOT_FOUND, "no such route"),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "GET, PUT or DELETE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abd", b"abc"));
        assert!(!same_token(b"ab", b"abc"));
        assert!(!same_token(b"", b"abc"));
    }
}
