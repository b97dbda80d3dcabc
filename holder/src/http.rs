//! The L7 data path: HTTP/1.1 from clients, one upstream connection per client connection,
//! taken afresh whenever the route's target has changed since the last request. A switch thus
//! moves every keep-alive client on its next request while the request in flight finishes on the
//! old target; upgrades (WebSocket) become tunnels that the old target's drain closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1 as client;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::limits::Admitted;
use crate::route::Route;
use crate::upstream::{Active, Upstream};

/// A target that does not accept within this is an upstream error (502).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

type UpBody = Either<Incoming, Empty<Bytes>>;
pub(crate) type Sender = client::SendRequest<UpBody>;
/// The client connection's upstream connection, kept between its requests.
type Paired = Arc<Mutex<Option<(Arc<Upstream>, Sender)>>>;

/// Serves one client connection until it closes, or until `stop` (the route's listener went
/// away): then in-flight requests finish and the connection closes.
pub async fn serve(
    route: Arc<Route>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    admitted: Admitted,
) {
    let _ = stream.set_nodelay(true);
    let paired: Paired = Arc::default();
    let kept = paired.clone();
    let stopping = stop.clone();
    let request_head = route.guard.limits.request_head;
    let svc = service_fn(move |req| {
        let (route, paired, stopping) = (route.clone(), paired.clone(), stopping.clone());
        let admitted = admitted.clone();
        async move {
            let mut resp = handle(&route, &paired, peer, req, admitted).await;
            // The listener stopped (an upgrade, the route removed): the client is told to take
            // a new connection for its next request, instead of finding this one closed.
            if *stopping.borrow() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    });
    // Without a timer hyper ignores its header read timeout (slowloris, idle keep-alive).
    let conn = server::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(request_head)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {
            // The client is gone; its upstream connection serves the next client (as nginx's
            // upstream keepalive does), which saves a connect per new client connection.
            if let Some((up, sender)) = kept.lock().expect("poisoned").take() {
                up.keep_idle(sender);
            }
            return;
        }
        _ = crate::until(&mut stop) => {}
    }
    // A request already on its way (say on a connection just taken from the backlog), or the
    // next one of a busy keep-alive client, is read and answered (with `Connection: close`)
    // before the connection closes: hyper would close a connection that is between requests at
    // once, and a client that sent one meanwhile would find it closed.
    let linger = tokio::time::sleep(STOP_LINGER);
    tokio::pin!(linger);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = &mut linger => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// How long a connection of a listener that stopped keeps reading before it closes (after the
/// answer in progress, `Connection: close`).
pub const STOP_LINGER: Duration = Duration::from_millis(500);

async fn handle(
    route: &Route,
    paired: &Paired,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    admitted: Admitted,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let upgrade = wants_upgrade(req.headers());
    prepare(&mut req, peer, upgrade);
    let active = route.acquire();
    let within = route.guard.limits.response_head;
    let result = if upgrade {
        tunnel_upgrade(active, req, within, admitted).await
    } else {
        forward(paired, active, req, within).await
    };
    let response = match result {
        Ok(resp) => resp,
        Err(Error::ResponseHead(within)) => {
            route.metrics.upstream_error();
            eprintln!(
                "holder: route {}: no response head within {within:?}",
                route.name
            );
            Response::builder()
                .status(StatusCode::GATEWAY_TIMEOUT)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(ProxyBody::full("gateway timeout\n"))
                .expect("static response")
        }
        Err(e) => {
            route.metrics.upstream_error();
            eprintln!("holder: route {}: upstream error: {e}", route.name);
            Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(ProxyBody::full("bad gateway\n"))
                .expect("static response")
        }
    };
    route
        .metrics
        .response(response.status().as_u16(), started.elapsed());
    response
}

#[derive(Debug)]
enum Error {
    Connect(std::io::Error),
    Http(hyper::Error),
    ResponseHead(Duration),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "connect: {e}"),
            Error::Http(e) => write!(f, "{e}"),
            Error::ResponseHead(d) => write!(f, "no response head within {d:?}"),
        }
    }
}

impl From<hyper::Error> for Error {
    fn from(e: hyper::Error) -> Self {
        Error::Http(e)
    }
}

async fn forward(
    paired: &Paired,
    active: Active,
    req: Request<Incoming>,
    within: Duration,
) -> Result<Response<ProxyBody>, Error> {
    let up = active.upstream().clone();
    // A request without a body can be sent again if a kept connection turns out closed (the
    // upstream's idle timeout racing our reuse); anything else is sent once.
    let replayable = req.body().is_end_stream()
        && matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let (parts, body) = req.into_parts();
    let mut req = if replayable {
        Request::from_parts(parts.clone(), Either::Right(Empty::new()))
    } else {
        Request::from_parts(parts.clone(), Either::Left(body))
    };
    let reused = {
        let mut slot = paired.lock().expect("poisoned");
        match slot.take() {
            Some((u, s)) if Arc::ptr_eq(&u, &up) && !s.is_closed() => Some(s),
            _ => None,
        }
    }
    .or_else(|| up.take_idle());
    if let Some(mut sender) = reused
        && sender.ready().await.is_ok()
    {
        match head_within(within, sender.try_send_request(req)).await? {
            Ok(resp) => {
                *paired.lock().expect("poisoned") = Some((up, sender));
                return Ok(respond(resp, active));
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None if replayable => {
                    req = Request::from_parts(parts, Either::Right(Empty::new()));
                }
                None => return Err(e.into_error().into()),
            },
        }
    }
    let mut sender = connect(&up, false).await?;
    let resp = head_within(within, sender.send_request(req)).await??;
    *paired.lock().expect("poisoned") = Some((up, sender));
    Ok(respond(resp, active))
}

/// The upstream's answer to a request, if its head comes within `within`. Dropping the
/// request's future on timeout drops its upstream connection with it.
async fn head_within<T>(
    within: Duration,
    answer: impl std::future::Future<Output = T>,
) -> Result<T, Error> {
    tokio::time::timeout(within, answer)
        .await
        .map_err(|_| Error::ResponseHead(within))
}

/// A fresh upstream connection; its task ends when the upstream is closed by a drain.
async fn connect(up: &Arc<Upstream>, upgrades: bool) -> Result<Sender, Error> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(up.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Error::Connect(e)),
        Err(_) => {
            return Err(Error::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = client::handshake(TokioIo::new(stream)).await?;
    let closed = up.closed();
    if upgrades {
        // Ends by itself once the connection is handed over to the tunnel.
        tokio::spawn(conn.with_upgrades());
    } else {
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = closed => {}
            }
        });
    }
    Ok(sender)
}

/// An upgrade (WebSocket): its own upstream connection, and after `101` a byte tunnel that
/// counts as in flight until either side closes or the upstream's drain ends.
async fn tunnel_upgrade(
    active: Active,
    mut req: Request<Incoming>,
    within: Duration,
    admitted: Admitted,
) -> Result<Response<ProxyBody>, Error> {
    let client_side = hyper::upgrade::on(&mut req);
    let websocket = req
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"));
    let up = active.upstream().clone();
    let mut sender = connect(&up, true).await?;
    let mut resp = head_within(within, sender.send_request(req.map(Either::Left))).await??;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(respond(resp, active));
    }
    let upstream_side = hyper::upgrade::on(&mut resp);
    let closed = up.closed();
    tokio::spawn(async move {
        let (Ok(a), Ok(b)) = tokio::join!(client_side, upstream_side) else {
            return;
        };
        let farewell = if websocket {
            crate::tcp::Farewell::websocket()
        } else {
            crate::tcp::Farewell::default()
        };
        crate::tcp::splice(TokioIo::new(a), TokioIo::new(b), closed, farewell).await;
        drop(active);
        // The tunnel outlives the client connection's task: it counts against the limit.
        drop(admitted);
    });
    let (parts, _) = resp.into_parts();
    Ok(Response::from_parts(parts, ProxyBody::full("")))
}

fn respond(resp: Response<Incoming>, active: Active) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(
        parts,
        ProxyBody::Upstream {
            body,
            _active: active,
        },
    )
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Headers that describe one hop, not the message: never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        if keep_upgrade && *name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// The request as the upstream gets it: one hop's headers gone, `X-Forwarded-*` set to what
/// the holder saw. The holder binds the Stage's host port, so it is the edge: whatever a client
/// sent in these headers is its own claim (a spoofed client address, `https` over plain HTTP, a
/// host of its choosing) and is replaced, not passed on. A TLS proxy in front (NPM) talks to the
/// holder like any client, so its view is lost too; trusting it would need a setting that names
/// it, which the holder does not have.
fn prepare(req: &mut Request<Incoming>, peer: SocketAddr, upgrade: bool) {
    *req.version_mut() = Version::HTTP_11;
    let host = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // `insert` replaces every earlier value of the name, however many the client sent.
    if let Ok(ip) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), ip);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    let fhost = HeaderName::from_static("x-forwarded-host");
    match host.or_else(|| headers.get(header::HOST).cloned()) {
        Some(host) => {
            headers.insert(fhost, host);
        }
        None => {
            headers.remove(fhost);
        }
    }
}

/// A response body: the upstream's, counted as in flight until it is sent (or dropped), or a
/// short one of our own.
pub enum ProxyBody {
    Upstream { body: Incoming, _active: Active },
    Full(Option<Bytes>),
}

impl ProxyBody {
    fn full(text: &'static str) -> ProxyBody {
        ProxyBody::Full((!text.is_empty()).then(|| Bytes::from_static(text.as_bytes())))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        let mut kept = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().collect::<Vec<_>>(), [header::HOST]);
        strip_hop_by_hop(&mut kept, true);
        assert!(kept.contains_key(header::UPGRADE) && !kept.contains_key("x-secret-hop"));
    }

    #[test]
    fn only_connection_upgrade_with_an_upgrade_header_is_an_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!wants_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(wants_upgrade(&h));
    }
}
