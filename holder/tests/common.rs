//! Real sockets on 127.0.0.1: upstreams that say who they are, a raw HTTP/1.1 client, and the
//! holder's control channel.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub const TOKEN: &str = "test-token-0123456789";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Upstream {
    pub addr: SocketAddr,
    /// `/slow` requests received so far.
    pub slow_started: Arc<AtomicUsize>,
    /// Lets every `/slow` request answer.
    pub release: Arc<Notify>,
}

/// An HTTP upstream answering `GET /` with its name; `/slow` waits for `release`; `/headers`
/// echoes the X-Forwarded-* it got; an upgrade request gets 101 and an echo that prefixes the
/// name to every read.
pub async fn upstream(name: &'static str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let slow_started = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let (started, rel) = (slow_started.clone(), release.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (started, rel) = (started.clone(), rel.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (started, rel) = (started.clone(), rel.clone());
                    async move { Ok::<_, Infallible>(answer(name, req, started, rel).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream {
        addr,
        slow_started,
        release,
    }
}

async fn answer(
    name: &'static str,
    mut req: Request<Incoming>,
    started: Arc<AtomicUsize>,
    release: Arc<Notify>,
) -> Response<Full<Bytes>> {
    let text = |s: String| Response::new(Full::new(Bytes::from(s)));
    if req.headers().contains_key("upgrade") {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(io) = upgrade.await else { return };
            let mut io = TokioIo::new(io);
            let mut buf = [0u8; 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let reply = [name.as_bytes(), b":", &buf[..n]].concat();
                        if io.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::default())
            .unwrap();
    }
    match req.uri().path() {
        "/slow" => {
            let wait = release.notified();
            started.fetch_add(1, Ordering::SeqCst);
            wait.await;
            text(format!("{name} slow"))
        }
        "/headers" => {
            let h = |k: &str| {
                req.headers()
                    .get(k)
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default()
            };
            text(format!(
                "for={} proto={} host={} connection={}",
                h("x-forwarded-for"),
                h("x-forwarded-proto"),
                h("x-forwarded-host"),
                h("connection")
            ))
        }
        _ => text(name.to_string()),
    }
}

/// A TCP upstream that answers every line with `name:line`.
pub async fn echo(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{name}:{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One response read off a connection: status and body (Content-Length framing only, which is
/// what the upstreams here and the holder send).
pub async fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<(u16, String)> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok((status, String::from_utf8(body).unwrap()))
}

/// One request on a connection of its own.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let stream = TcpStream::connect(addr).await?;
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    read_response(&mut reader).await
}

/// A keep-alive connection.
pub struct KeepAlive(BufReader<TcpStream>);

impl KeepAlive {
    pub async fn open(addr: SocketAddr) -> std::io::Result<KeepAlive> {
        Ok(KeepAlive(BufReader::new(TcpStream::connect(addr).await?)))
    }

    pub async fn get(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        self.0
            .get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
            .await?;
        read_response(&mut self.0).await
    }
}

/// A control call; `token` None sends none.
pub async fn control(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut reader = BufReader::new(stream);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: holder\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    reader
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .unwrap();
    read_response(&mut reader).await.unwrap()
}

/// Points route `name` at `upstream` on `listen` (HTTP mode unless `mode` says otherwise).
pub async fn put_route(
    control_addr: SocketAddr,
    name: &str,
    listen: SocketAddr,
    upstream: SocketAddr,
    mode: &str,
    drain_ms: u64,
) -> serde_json::Value {
    let body = serde_json::json!({
        "listen": listen, "upstream": upstream, "mode": mode, "drainMs": drain_ms,
    })
    .to_string();
    let (status, text) = control(
        control_addr,
        "PUT",
        &format!("/v1/routes/{name}"),
        Some(TOKEN),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

pub async fn route_status(control_addr: SocketAddr, name: &str) -> serde_json::Value {
    let (status, text) = control(
        control_addr,
        "GET",
        &format!("/v1/routes/{name}"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

pub async fn start_holder(dir: &std::path::Path) -> tiny_forge_holder::Running {
    start_holder_with(dir, tiny_forge_holder::Limits::default()).await
}

pub async fn start_holder_with(
    dir: &std::path::Path,
    limits: tiny_forge_holder::Limits,
) -> tiny_forge_holder::Running {
    tiny_forge_holder::start(tiny_forge_holder::Config {
        state_dir: dir.to_path_buf(),
        control: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        name: "test".into(),
        limits,
    })
    .await
    .unwrap()
}

/// Polls `cond` every 10 ms until it holds (the test's own timeout bounds it).
pub async fn eventually<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while !cond().await {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
