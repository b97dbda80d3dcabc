//! One held port at run time: its listener, its current target and the targets still draining.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::limits::Guard;
use crate::metrics::RouteMetrics;
use crate::routes::{Mode, RouteSpec};
use crate::upstream::{Active, Upstream};

pub struct Route {
    pub name: String,
    spec: Mutex<RouteSpec>,
    since_ms: Mutex<u64>,
    current: RwLock<Arc<Upstream>>,
    draining: Mutex<Vec<Arc<Upstream>>>,
    listener: Mutex<Option<Listening>>,
    pub metrics: RouteMetrics,
    pub guard: Arc<Guard>,
}

/// The accept loop of a bound address; dropping `stop`'s value to true ends it and closes the
/// connections it accepted (in-flight requests first).
struct Listening {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// What the control channel reports of a route.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub name: String,
    #[serde(flatten)]
    pub spec: RouteSpec,
    /// Since when `upstream` is the target (ms since the epoch).
    pub since_ms: u64,
    /// Whether the port is bound (false while another process still holds it).
    pub listening: bool,
    /// In flight to the current target.
    pub active: usize,
    /// Previous targets not yet drained.
    pub draining: Vec<Draining>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Draining {
    pub upstream: SocketAddr,
    pub active: usize,
    pub closing: bool,
}

/// Binds `addr` for a held port. SO_REUSEADDR: a restarted holder binds again at once although
/// connections of its predecessor linger in TIME_WAIT. SO_REUSEPORT: during an upgrade the new
/// holder listens beside the old one (the kernel shares new connections between them) before
/// the old one stops, so the port is never unbound. Only sockets that set it too can share a
/// port, and on Linux only under the same user: anything else that holds the port is refused.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Route {
    pub fn new(name: String, spec: RouteSpec, since_ms: u64, guard: Arc<Guard>) -> Arc<Route> {
        Arc::new(Route {
            name,
            current: RwLock::new(Upstream::new(spec.upstream)),
            spec: Mutex::new(spec),
            since_ms: Mutex::new(since_ms),
            draining: Mutex::default(),
            listener: Mutex::default(),
            metrics: RouteMetrics::default(),
            guard,
        })
    }

    pub fn spec(&self) -> RouteSpec {
        self.spec.lock().expect("poisoned").clone()
    }

    pub fn mode(&self) -> Mode {
        self.spec.lock().expect("poisoned").mode
    }

    pub fn since_ms(&self) -> u64 {
        *self.since_ms.lock().expect("poisoned")
    }

    /// The current target, counted as in flight. Under the read lock: once a switch has
    /// returned, every request that chose the old target is already counted there, so a drain
    /// that sees zero has really nothing left.
    pub fn acquire(&self) -> Active {
        self.current.read().expect("poisoned").enter()
    }

    /// Takes a new spec: a new target is switched to at once (new requests and connections go
    /// there), and the old one drains for `drain_ms`. Returns whether the target changed.
    pub fn update(self: &Arc<Self>, spec: RouteSpec, now_ms: u64) -> bool {
        let drain = Duration::from_millis(spec.drain_ms);
        let new_target = spec.upstream;
        *self.spec.lock().expect("poisoned") = spec;
        let old = {
            let mut current = self.current.write().expect("poisoned");
            if current.addr == new_target {
                return false;
            }
            std::mem::replace(&mut *current, Upstream::new(new_target))
        };
        *self.since_ms.lock().expect("poisoned") = now_ms;
        self.metrics.switch();
        self.drain(old, drain);
        true
    }

    fn drain(self: &Arc<Self>, old: Arc<Upstream>, drain: Duration) {
        self.draining.lock().expect("poisoned").push(old.clone());
        let route = self.clone();
        tokio::spawn(async move {
            old.clone().drain(drain).await;
            route
                .draining
                .lock()
                .expect("poisoned")
                .retain(|u| !Arc::ptr_eq(u, &old));
        });
    }

    /// The route is removed: stop listening, drain the current target.
    pub fn retire(self: &Arc<Self>) {
        self.listener.lock().expect("poisoned").take();
        let spec = self.spec();
        let current = self.current.read().expect("poisoned").clone();
        self.drain(current, Duration::from_millis(spec.drain_ms));
    }

    pub fn listening_on(&self) -> Option<SocketAddr> {
        self.listener
            .lock()
            .expect("poisoned")
            .as_ref()
            .map(|l| l.addr)
    }

    /// Serves `listener` from now on (an earlier listener stops accepting).
    pub fn listen(self: &Arc<Self>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        let addr = listener.local_addr().unwrap_or(self.spec().listen);
        let (stop, stopped) = watch::channel(false);
        let previous = self
            .listener
            .lock()
            .expect("poisoned")
            .replace(Listening { addr, stop });
        drop(previous);
        tokio::spawn(accept_loop(self.clone(), listener, stopped, shutdown));
    }

    pub fn status(&self) -> RouteStatus {
        let current = self.current.read().expect("poisoned").clone();
        RouteStatus {
            name: self.name.clone(),
            spec: self.spec(),
            since_ms: self.since_ms(),
            listening: self.listening_on().is_some(),
            active: current.active(),
            draining: self
                .draining
                .lock()
                .expect("poisoned")
                .iter()
                .map(|u| Draining {
                    upstream: u.addr,
                    active: u.active(),
                    closing: u.is_closing(),
                })
                .collect(),
        }
    }

    /// In flight to the current and the draining targets.
    pub fn in_flight(&self) -> usize {
        let current = self.current.read().expect("poisoned").active();
        current
            + self
                .draining
                .lock()
                .expect("poisoned")
                .iter()
                .map(|u| u.active())
                .sum::<usize>()
    }
}

async fn accept_loop(
    route: Arc<Route>,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Connections end with their listener (route removed) or with the holder.
    let (ended_tx, ended) = watch::channel(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => dispatch(&route, stream, peer, &ended),
                Err(e) => {
                    // Out of descriptors and the like: the listener itself is fine.
                    eprintln!("holder: route {}: accept: {e}", route.name);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = crate::until(&mut stopped) => break,
            _ = crate::until(&mut shutdown) => break,
        }
    }
    // Connections the kernel already queued for this socket would be reset when it closes
    // (SO_REUSEPORT gives each socket its own queue): take them first. They are served like the
    // others, and their connection closes after its first answer.
    while let Ok(Ok((stream, peer))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await
    {
        dispatch(&route, stream, peer, &ended);
    }
    drop(listener);
    ended_tx.send_replace(true);
}

/// Serves an accepted connection, or refuses it when the holder is at its connection limit.
fn dispatch(
    route: &Arc<Route>,
    stream: TcpStream,
    peer: SocketAddr,
    ended: &watch::Receiver<bool>,
) {
    route.metrics.connection();
    let Some(admitted) = route.guard.admit() else {
        tokio::spawn(refuse(route.clone(), stream));
        return;
    };
    match route.mode() {
        Mode::Http => {
            tokio::spawn(crate::http::serve(
                route.clone(),
                stream,
                peer,
                ended.clone(),
                admitted,
            ));
        }
        Mode::Tcp => {
            tokio::spawn(crate::tcp::serve(route.clone(), stream, admitted));
        }
    }
}

/// One connection too many: an HTTP client is told so (503, try again shortly) without its
/// request being read; a TCP one is closed. Bounded, so refusals cannot pile up either.
async fn refuse(route: Arc<Route>, mut stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
        content-length: 5\r\nretry-after: 1\r\nconnection: close\r\n\r\nbusy\n";
    if route.mode() == Mode::Http {
        route.metrics.response(503, Duration::ZERO);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(BUSY).await;
            let _ = stream.shutdown().await;
            // Closing with the client's request unread would reset the connection, and the
            // reset can overtake the answer: read until the client closes (or the bound).
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}
