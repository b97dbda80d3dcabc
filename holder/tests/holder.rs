//! The holder on real sockets: switches under load, drains, upgrades, TCP mode, restarts, and
//! its control channel's authentication.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn listen_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// What a client loop saw: every answer in order, and every failure.
#[derive(Default)]
struct Seen {
    answers: Vec<String>,
    failures: Vec<String>,
}

/// Sends requests until `stop`: a connection per request, or one keep-alive connection.
async fn client_loop(addr: SocketAddr, keep_alive: bool, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let mut conn = None;
    while !stop.load(Ordering::SeqCst) {
        let result = if keep_alive {
            if conn.is_none() {
                conn = KeepAlive::open(addr).await.ok();
            }
            match conn.as_mut() {
                Some(c) => c.get("/").await,
                None => Err(std::io::ErrorKind::ConnectionRefused.into()),
            }
        } else {
            get(addr, "/").await
        };
        match result {
            Ok((200, body)) => seen.answers.push(body),
            Ok((status, body)) => seen.failures.push(format!("{status} {body}")),
            Err(e) => {
                seen.failures.push(e.to_string());
                conn = None;
            }
        }
    }
    seen
}

/// `answers` is some of `first` then only `second`.
fn in_order(answers: &[String], first: &str, second: &str) -> bool {
    let switch = answers
        .iter()
        .position(|a| a != first)
        .unwrap_or(answers.len());
    switch > 0 && switch < answers.len() && answers[switch..].iter().all(|a| a == second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_under_load_drops_nothing_and_answers_old_then_new() {
    let (a, b) = (upstream("A").await, upstream("B").await);
    let dir = tempfile::tempdir().unwrap();
    let holder = start_holder(dir.path()).await;
    let listen = listen_addr();
    put_route(holder.control, "t.switch", listen, a.addr, "http", 5_000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let fresh = tokio::spawn(client_loop(listen, false, stop.clone()));
    let kept = tokio::spawn(client_loop(listen, true, stop.clone()));
    let m = holder.holder().clone();
    let served = |n: u64| {
        let m = m.clone();
        async move {
            let text = m.metrics();
            let line = "tiny_forge_holder_requests_total{route=\"t.switch\",code=\"2xx\"} ";
            text.lines()
                .find_map(|l| l.strip_prefix(line))
                .is_some_and(|v| v.parse::<u64>().unwrap() >= n)
        }
    };
    eventually(|| served(200)).await;
    let status = put_route(holder.control, "t.switch", listen, b.addr, "http", 5_000).await;
    assert_eq!(status["upstream"], b.addr.to_string());
    eventually(|| served(600)).await;
    stop.store(true, Ordering::SeqCst);
    for (kind, seen) in [
        ("fresh", fresh.await.unwrap()),
        ("keep-alive", kept.await.unwrap()),
    ] {
        assert!(seen.failures.is_empty(), "{kind}: {:?}", seen.failures);
        assert!(
            in_order(&seen.answers, "A", "B"),
            "{kind}: {:?}",
            seen.answers
        );
    }
    let text = holder.holder().metrics();
    assert!(
        text.contains("tiny_forge_holder_upstream_errors_total{route=\"t.switch\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("tiny_forge_holder_switches_total{route=\"t.switch\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_old_target_and_then_it_is_drained() {
    let (a, b) = (upstream("A").await, upstream("B").await);
    let dir = tempfile::tempdir().unwrap();
    let holder = start_holder(dir.path()).await;
    let listen = listen_addr();
    put_route(holder.control, "t.drain", listen, a.addr, "http", 60_000).await;

    let slow = tokio::spawn(get(listen, "/slow"));
    eventually(|| async { a.slow_started.load(Ordering::SeqCst) == 1 }).await;
    put_route(holder.control, "t.drain", listen, b.addr, "http", 60_000).await;
    let status = route_status(holder.control, "t.drain").await;
    assert_eq!(
        status["draining"],
        serde_json::json!([{ "upstream": a.addr.to_string(), "active": 1, "closing": false }])
    );
    // New requests go to the new target meanwhile.
    assert_eq!(get(listen, "/").await.unwrap(), (200, "B".into()));

    a.release.notify_waiters();
    assert_eq!(slow.await.unwrap().unwrap(), (200, "A slow".into()));
    // Nothing left in flight: the old target is let go long before its 60 s.
    eventually(|| async {
        route_status(holder.control, "t.drain").await["draining"] == serde_json::json!([])
    })
    .await;
}

#[tokio::test]
async fn the_control_channel_wants_the_token_and_health_and_metrics_do_not() {
    let a = upstream("A").await;
    let dir = tempfile::tempdir().unwrap();
    let holder = start_holder(dir.path()).await;
    let body = serde_json::json!({ "listen": listen_addr(), "upstream": a.addr }).to_string();
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        let (status, text) =
            control(holder.control, "PUT", "/v1/routes/t.auth", token, &body).await;
        assert_eq!(status, 401, "{token:?}: {text}");
        assert!(!text.contains(TOKEN));
    }
    let (status, _) = control(holder.control, "GET", "/v1/routes", None, "").await;
    assert_eq!(status, 401);
    assert!(holder.holder().list().is_empty());
    assert_eq!(
        control(holder.control, "GET", "/healthz", None, "").await.0,
        200
    );
    assert_eq!(
        control(holder.control, "GET", "/metrics", None, "").await.0,
        200
    );
    let (status, _) = control(
        holder.control,
        "PUT",
        "/v1/routes/t.auth",
        Some(TOKEN),
        &body,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = control(
        holder.control,
        "PUT",
        "/v1/routes/Bad%2Fname",
        Some(TOKEN),
        &body,
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn routes_are_kept_on_disk_and_served_again_after_a_restart() {
    let a = upstream("A").await;
    let dir = tempfile::tempdir().unwrap();
    let listen = listen_addr();
    let first = start_holder(dir.path()).await;
    let created = put_route(first.control, "t.restart", listen, a.addr, "http", 1_000).await;
    assert_eq!(get(listen, "/").await.unwrap(), (200, "A".into()));
    first.stop();

    let second = start_holder(dir.path()).await;
    let routes = second.holder().list();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].spec.upstream, a.addr);
    // The port is the old holder's until its accept loop has let go: retried, then served.
    assert_eq!(routes[0].since_ms, created["sinceMs"].as_u64().unwrap());
    eventually(|| async { get(listen, "/").await.is_ok_and(|r| r == (200, "A".into())) }).await;
}

/// Starts a holder on a state directory whose route file is `content`: it must start with no
/// routes, the file set aside as it was, and take routes again.
async fn starts_despite_route_file(content: &str) {
    let a = upstream("A").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.json"), content).unwrap();
    let holder = start_holder(dir.path()).await;
    assert!(holder.holder().list().is_empty());
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("routes.json.bad-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(&aside[0])).unwrap(),
        content
    );
    let listen = listen_addr();
    put_route(holder.control, "t.again", listen, a.addr, "http", 1_000).await;
    assert_eq!(get(listen, "/").await.unwrap(), (200, "A".into()));
    let file = std::fs::read_to_string(dir.path().join("routes.json")).unwrap();
    assert!(file.contains("t.again"), "{file}");
}

#[tokio::test]
async fn a_corrupt_route_file_is_set_aside_and_the_holder_starts() {
    starts_despite_route_file("{\"version\":1,\"routes\":{\"t.x\":{\"spec\":").await;
}

#[tokio::test]
async fn a_route_file_of_a_newer_holder_is_set_aside_and_the_holder_starts() {
    let listen = listen_addr();
    let newer = serde_json::json!({
        "version": 2,
        "routes": { "t.newer": { "spec": { "listen": listen, "upstream": "127.0.0.1:9" }, "sinceMs": 1 } }
    });
    starts_despite_route_file(&newer.to_string()).await;
}

#[tokio::test]
async fn a_port_someone_else_holds_is_refused_and_nothing_changes() {
    let a = upstream("A").await;
    let dir = tempfile::tempdir().unwrap();
    let holder = start_holder(dir.path()).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let body = serde_json::json!({ "listen": taken.local_addr().unwrap(), "upstream": a.addr })
        .to_string();
    let (status, text) = control(
        holder.control,
        "PUT",
        "/v1/routes/t.taken",
        Some(TOKEN),
        &body,
    )
    .await;
    assert_eq!(status, 409, "{text}");
    assert_eq!(
        control(holder.control, "GET", "/v1/routes/t.taken", Some(TOKEN), "")
            .await
            .0,
        404
    );
    let file = std::fs::read_to_string(dir.path().join("routes.json")).unwrap_or_default();
    assert!(!file.contains("t.taken"), "{file}");
}

#[tokio::test]
async fn x_forwarded_headers_are_added_and_hop_headers_are_not_passed_on() {
    let a = upstream("A").await;
    let dir = tempfile::tempdir().unwrap();
    let holder = start_holder(dir.path()).await;
    let listen = listen_addr();
    put_route(holder.control, "t.headers", listen, a.addr, "http", 1_000).await;
    let (status, body) = get(listen, "/headers").await.unwrap();
    assert_eq!(status, 200);
    // `Connection: close` was the client's hop; the upstream connection is the holder's own.
    assert_eq!(body, "for=127.0.0.1 proto=http host=app.test connection=");
}

#[tokio::test]
async fn x_forwarded_headers_a_client_sends_never_reach_the_upstream() {
    let a = upstream("A").await;
    let dir = tempfile::tempdir().unwrap();
    let holder = start_holder(dir.path()).await;
    let listen = listen_addr();
    put_route(holder.control, "t.spoof", listen, a.addr, "http", 1_000).await;
    let mut conn = BufReader::new(TcpStream::connect(listen).await.unwrap());
    conn.get_mut()
        .write_all(
            b"GET /headers HTTP/1.1\r\nHost: app.test\r\n\
              X-Forwarded-For: 10.9.9.9\r\nX-Forwarded-For: 10.8.8.8\r\n\
              X-Forwarded-Proto: https\r\nX-Forwarded-Host: bank.example\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let (status, body) = read_response(&mut conn).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "for=127.0.0.1 proto=http host=app.test connection=");
}

#[tokio::test]
async fn an_upstream_that_is_gone_is_a_502_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let holder = start_holder(dir.path()).await;
    let listen = listen_addr();
    let gone = listen_addr();
    put_route(holder.control, "t.gone", listen, gone, "http", 1_000).await;
    assert_eq!(get(listen, "/").await.unwrap().0, 502);
    let text = holder.holder().metrics();
    assert!(
        text.contains("tiny_forge_holder_upstream_errors_total{route=\"t.gone\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tiny_forge_holder_requests_total{route=\"t.gone\",code=\"5xx\"} 1"),
        "{text}"
    );
}

/// Opens an upgraded connection through the holder and returns it after the 101.
async fn upgraded(listen: SocketAddr) -> BufReader<TcpStream> {
    let mut conn = BufReader::new(TcpStream::connect(listen).await.unwrap());
    conn.get_mut()
        .write_all(b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    conn
}

async fn echo_over(conn: &mut BufReader<TcpStream>, msg: &str) -> String {
    conn.get_mut().write_all(msg.as_bytes()).await.unwrap();
    let mut buf = vec![0; 64];
    let n = conn.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn an_upgraded_connection_stays_on_the_old_target_until_the_drain_ends_then_closes() {
    let (a, b) = (upstream("A").await, upstream("B").await);
    let dir = tempfile::tempdir().unwrap();
    let holder = start_holder(dir.path()).await;
    let listen = listen_addr();
    put_route(holder.control, "t.ws", listen, a.addr, "http", 3_000).await;
    let mut ws = upgraded(listen).await;
    assert_eq!(echo_over(&mut ws, "one").await, "A:one");

    put_route(holder.control, "t.ws", listen, b.addr, "http", 3_000).await;
    // Still open, still the old target, and counted as what the old target drains.
    assert_eq!(echo_over(&mut ws, "two").await, "A:two");
    let status = route_status(holder.control, "t.ws").await;
    assert_eq!(status["draining"][0]["active"], 1, "{status}");
    let mut fresh = upgraded(listen).await;
    assert_eq!(echo_over(&mut fresh, "three").await, "B:three");

    // At the end of the drain the holder closes it: a WebSocket Close frame, 1001 "going
    // away", then an orderly end of stream, not an error.
    let mut rest = Vec::new();
    let read = ws.read_to_end(&mut rest).await;
    assert!(read.is_ok(), "{read:?}");
    assert_eq!(rest, [0x88, 0x02, 0x03, 0xE9]);
    eventually(|| async {
        route_status(holder.control, "t.ws").await["draining"] == serde_json::json!([])
    })
    .await;
    assert_eq!(echo_over(&mut fresh, "four").await, "B:four");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_mode_switches_without_a_refused_connection() {
    let (a, b) = (echo("A").await, echo("B").await);
    let dir = tempfile::tempdir().unwrap();
    let holder = start_holder(dir.path()).await;
    let listen = listen_addr();
    put_route(holder.control, "t.tcp", listen, a, "tcp", 2_000).await;

    // A connection open across the switch stays with its target.
    let mut long = BufReader::new(TcpStream::connect(listen).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let loop_stop = stop.clone();
    let client = tokio::spawn(async move {
        let mut seen = Seen::default();
        while !loop_stop.load(Ordering::SeqCst) {
            let attempt = async {
                let mut conn = BufReader::new(TcpStream::connect(listen).await?);
                conn.get_mut().write_all(b"hi\n").await?;
                let mut line = String::new();
                conn.read_line(&mut line).await?;
                Ok::<_, std::io::Error>(line)
            };
            match attempt.await {
                Ok(line) if line.ends_with(":hi\n") => seen.answers.push(line[..1].to_string()),
                Ok(line) => seen.failures.push(format!("{line:?}")),
                Err(e) => seen.failures.push(e.to_string()),
            }
        }
        seen
    });
    let connections = |n: u64| {
        let m = holder.holder().clone();
        async move {
            m.metrics()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("tiny_forge_holder_connections_total{route=\"t.tcp\"} ")
                })
                .is_some_and(|v| v.parse::<u64>().unwrap() >= n)
        }
    };
    eventually(|| connections(100)).await;
    put_route(holder.control, "t.tcp", listen, b, "tcp", 2_000).await;
    long.get_mut().write_all(b"still\n").await.unwrap();
    let mut line = String::new();
    long.read_line(&mut line).await.unwrap();
    assert_eq!(line, "A:still\n");
    eventually(|| connections(300)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = client.await.unwrap();
    assert!(seen.failures.is_empty(), "{:?}", seen.failures);
    assert!(in_order(&seen.answers, "A", "B"), "{:?}", seen.answers);
}
