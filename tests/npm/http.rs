//! The double's HTTP/1.1 server (hyper), with a switch that takes it off the network the way a
//! stopped NPM container is: while down, the listening socket is closed (connections are
//! refused) and open keep-alive connections are dropped without an answer.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::{AbortHandle, JoinHandle};

use super::api::{Body, Inner};

/// A whole response body.
pub(crate) struct Full(Option<Bytes>);

impl HttpBody for Full {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

#[derive(Debug)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the NPM double is down")
    }
}

impl std::error::Error for Down {}

struct SwitchState {
    down: bool,
    /// The accept loop has dropped its listener (set under the same lock as `down`).
    closed: bool,
}

pub(crate) struct Server {
    pub port: u16,
    down: AtomicBool,
    state: Mutex<SwitchState>,
    wake: Notify,
    listeners: mpsc::UnboundedSender<std::net::TcpListener>,
    conns: Mutex<Vec<AbortHandle>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

fn bind(port: u16) -> std::io::Result<std::net::TcpListener> {
    // std sets SO_REUSEADDR on Unix: the port can be taken again at once.
    let l = std::net::TcpListener::bind(("127.0.0.1", port))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

impl Server {
    pub(crate) fn start(inner: Arc<Inner>) -> Arc<Server> {
        let first = bind(0).expect("bind 127.0.0.1:0");
        let port = first.local_addr().expect("local addr").port();
        let (tx, rx) = mpsc::unbounded_channel();
        let server = Arc::new(Server {
            port,
            down: AtomicBool::new(false),
            state: Mutex::new(SwitchState {
                down: false,
                closed: false,
            }),
            wake: Notify::new(),
            listeners: tx,
            conns: Mutex::new(Vec::new()),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(server.clone(), inner, first, rx));
        *server.task.lock().unwrap() = Some(task);
        server
    }

    pub(crate) fn set_down(&self, down: bool) {
        let mut st = self.state.lock().unwrap();
        if down {
            self.down.store(true, Ordering::SeqCst);
            st.down = true;
            drop(st);
            self.wake.notify_one();
            for c in self.conns.lock().unwrap().drain(..) {
                c.abort();
            }
        } else {
            st.down = false;
            self.down.store(false, Ordering::SeqCst);
            if st.closed {
                // Listening again before this returns: connections queue until accepted.
                let mut tries = 0;
                let l = loop {
                    match bind(self.port) {
                        Ok(l) => break l,
                        Err(e) if tries < 100 => {
                            tries += 1;
                            let _ = e;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => {
                            panic!("NPM double: cannot listen on port {} again: {e}", self.port)
                        }
                    }
                };
                let _ = self.listeners.send(l);
                st.closed = false;
            }
        }
    }

    pub(crate) fn shutdown(&self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

async fn accept_loop(
    server: Arc<Server>,
    inner: Arc<Inner>,
    first: std::net::TcpListener,
    mut rx: mpsc::UnboundedReceiver<std::net::TcpListener>,
) {
    let mut next = Some(first);
    loop {
        let std_listener = match next.take() {
            Some(l) => l,
            None => match rx.recv().await {
                Some(l) => l,
                None => return,
            },
        };
        let Ok(listener) = TcpListener::from_std(std_listener) else {
            return;
        };
        loop {
            enum Event {
                Conn(TcpStream),
                AcceptError,
                Wake,
            }
            let event = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => Event::Conn(s),
                    Err(_) => Event::AcceptError,
                },
                _ = server.wake.notified() => Event::Wake,
            };
            match event {
                Event::Conn(s) => {
                    if server.down.load(Ordering::SeqCst) {
                        drop(s);
                    } else {
                        serve(&server, &inner, s);
                    }
                }
                Event::AcceptError => tokio::time::sleep(Duration::from_millis(10)).await,
                Event::Wake => {
                    let mut st = server.state.lock().unwrap();
                    if st.down {
                        drop(listener);
                        st.closed = true;
                        break;
                    }
                }
            }
        }
    }
}

fn serve(server: &Arc<Server>, inner: &Arc<Inner>, stream: TcpStream) {
    let (server2, inner2) = (server.clone(), inner.clone());
    let svc = service_fn(move |req: Request<Incoming>| {
        let (server, inner) = (server2.clone(), inner2.clone());
        async move {
            if server.down.load(Ordering::SeqCst) {
                return Err(Down);
            }
            let reply = handle(&inner, req).await;
            if server.down.load(Ordering::SeqCst) {
                return Err(Down);
            }
            Ok::<_, Down>(reply)
        }
    });
    let task = tokio::spawn(async move {
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    });
    let mut conns = server.conns.lock().unwrap();
    conns.retain(|c| !c.is_finished());
    conns.push(task.abort_handle());
}

async fn read_body(body: Incoming) -> Vec<u8> {
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d);
                }
            }
            Err(_) => break,
        }
    }
    out
}

async fn handle(inner: &Inner, req: Request<Incoming>) -> Response<Full> {
    let (parts, body) = req.into_parts();
    let body = read_body(body).await;
    let gateway = inner.db.lock().unwrap().gateway_error;
    let reply = match gateway {
        // NPM's own nginx answers for a backend that is not there: nothing reaches the API.
        Some(status) if parts.uri.path().starts_with("/api") => super::api::gateway_page(status),
        _ => {
            inner
                .dispatch(
                    &parts.method,
                    parts.uri.path(),
                    parts.uri.query(),
                    &parts.headers,
                    &body,
                )
                .await
        }
    };
    inner.db.lock().unwrap().calls.push(format!(
        "{} {} {}",
        parts.method,
        parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        reply.status
    ));
    let (content_type, bytes) = match reply.body {
        Body::Json(v) => (
            Some("application/json; charset=utf-8"),
            Bytes::from(v.to_string()),
        ),
        Body::Html(t) => (Some("text/html; charset=utf-8"), Bytes::from(t)),
        Body::Empty => (None, Bytes::new()),
    };
    let mut b = Response::builder()
        .status(reply.status)
        .header("X-Content-Type-Options", "nosniff")
        .header(
            "Cache-Control",
            "no-cache, no-store, max-age=0, must-revalidate",
        );
    if let Some(ct) = content_type {
        b = b.header("Content-Type", ct);
    }
    b.body(Full(Some(bytes))).expect("response")
}
