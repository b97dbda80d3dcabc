//! What one client may cost the holder, on real sockets: a slow request head, an idle
//! keep-alive connection, an upstream that never answers, and one connection too many.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tiny_forge_holder::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn listen_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Far above every limit used here: only a guard against a test that would hang forever.
const HANG: Duration = Duration::from_secs(30);

fn short(limits: Limits) -> Limits {
    Limits {
        request_head: Duration::from_millis(300),
        ..limits
    }
}

/// Reads until the holder closes the connection (EOF or reset); what it said meanwhile.
async fn until_closed(conn: &mut TcpStream) -> String {
    let mut said = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&said).to_string(),
            Ok(n) => said.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_client_that_trickles_its_request_head_is_cut_off() {
    let a = upstream("A").await;
    let dir = tempfile::tempdir().unwrap();
    let holder = start_holder_with(dir.path(), short(Limits::default())).await;
    let listen = listen_addr();
    put_route(holder.control, "t.slowloris", listen, a.addr, "http", 1_000).await;

    let conn = TcpStream::connect(listen).await.unwrap();
    let (mut read, mut write) = conn.into_split();
    // One header line every 50 ms, for as long as the holder listens: the head never ends.
    let trickle = tokio::spawn(async move {
        let _ = write
            .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
            .await;
        for i in 0u64.. {
            if write
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        unreachable!()
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(HANG, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the trickling client was never cut off");
    trickle.abort();
    // Everybody else is served.
    assert_eq!(get(listen, "/").await.unwrap(), (200, "A".into()));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let a = upstream("A").await;
    let dir = tempfile::tempdir().unwrap();
    let holder = start_holder_with(dir.path(), short(Limits::default())).await;
    let listen = listen_addr();
    put_route(holder.control, "t.idle", listen, a.addr, "http", 1_000).await;
    let mut conn = TcpStream::connect(listen).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let said = tokio::time::timeout(HANG, until_closed(&mut conn))
        .await
        .expect("the idle connection was never closed");
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_a_504() {
    let a = upstream("A").await;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        response_head: Duration::from_millis(300),
        ..Limits::default()
    };
    let holder = start_holder_with(dir.path(), limits).await;
    let listen = listen_addr();
    put_route(holder.control, "t.silent", listen, a.addr, "http", 1_000).await;
    // `/slow` waits for a release that never comes.
    let answer = tokio::time::timeout(HANG, get(listen, "/slow"))
        .await
        .expect("no answer at all");
    assert_eq!(answer.unwrap().0, 504);
    assert!(
        holder
            .holder()
            .metrics()
            .contains("tiny_forge_holder_upstream_errors_total{route=\"t.silent\"} 1")
    );
}

#[tokio::test]
async fn one_connection_past_the_limit_is_told_to_come_back() {
    let a = upstream("A").await;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let holder = start_holder_with(dir.path(), limits).await;
    let listen = listen_addr();
    put_route(holder.control, "t.cap", listen, a.addr, "http", 1_000).await;
    // Two keep-alive clients, each answered once: both admitted and still open.
    let mut first = KeepAlive::open(listen).await.unwrap();
    let mut second = KeepAlive::open(listen).await.unwrap();
    assert_eq!(first.get("/").await.unwrap().0, 200);
    assert_eq!(second.get("/").await.unwrap().0, 200);

    let mut third = TcpStream::connect(listen).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let said = tokio::time::timeout(HANG, until_closed(&mut third))
        .await
        .expect("the connection past the limit was left open");
    assert!(said.starts_with("HTTP/1.1 503"), "{said}");
    assert!(
        said.to_ascii_lowercase().contains("connection: close"),
        "{said}"
    );

    // A client that leaves makes room.
    drop(first);
    eventually(|| async { get(listen, "/").await.is_ok_and(|r| r == (200, "A".into())) }).await;
    assert_eq!(second.get("/").await.unwrap().0, 200);
}
