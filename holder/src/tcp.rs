//! The L4 data path: each client connection is spliced to the target current when it arrived,
//! and stays with it until either side closes or that target's drain ends.

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::CONNECT_TIMEOUT;
use crate::limits::Admitted;
use crate::route::Route;

pub async fn serve(route: Arc<Route>, mut client: TcpStream, _admitted: Admitted) {
    let _ = client.set_nodelay(true);
    let active = route.acquire();
    let up = active.upstream().clone();
    let server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(up.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            route.metrics.upstream_error();
            eprintln!("holder: route {}: connect {}: {e}", route.name, up.addr);
            let _ = client.shutdown().await;
            return;
        }
        Err(_) => {
            route.metrics.upstream_error();
            eprintln!(
                "holder: route {}: connect {}: timed out",
                route.name, up.addr
            );
            let _ = client.shutdown().await;
            return;
        }
    };
    let _ = server.set_nodelay(true);
    splice(client, server, up.closed(), Farewell::default()).await;
    drop(active);
}

/// What each side is told when a drain ends a connection, before its FIN: nothing for raw TCP;
/// for WebSocket a Close frame with 1001 "going away" (RFC 6455 §7.4.1), so that both ends
/// see a closing handshake, not a dropped connection. Written between the bytes being relayed,
/// which may be mid-frame: it is the last thing either side gets, and a peer that finds a
/// broken frame there closes just the same.
#[derive(Default)]
pub struct Farewell {
    pub to_a: &'static [u8],
    pub to_b: &'static [u8],
}

impl Farewell {
    /// `a` the client, `b` the upstream: frames from a server are unmasked, frames from a
    /// client must be masked (with the zero key the payload stays as it is).
    pub fn websocket() -> Farewell {
        Farewell {
            to_a: &[0x88, 0x02, 0x03, 0xE9],
            to_b: &[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE9],
        }
    }
}

/// Copies both ways until both sides are done or `closed` resolves (then each side gets its
/// `farewell`); then both are shut down (FIN) before they are dropped.
pub async fn splice<A, B>(mut a: A, mut b: B, closed: impl Future<Output = ()>, farewell: Farewell)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let drained = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => false,
        _ = closed => true,
    };
    if drained {
        // Bounded: a peer that reads nothing must not keep the drain's end waiting.
        let _ = tokio::time::timeout(FAREWELL_WITHIN, async {
            let _ = a.write_all(farewell.to_a).await;
            let _ = b.write_all(farewell.to_b).await;
        })
        .await;
    }
    let _ = a.shutdown().await;
    let _ = b.shutdown().await;
}

const FAREWELL_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);
