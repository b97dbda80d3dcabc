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
    splice(client, server, up.closed()).await;
    drop(active);
}

/// Copies both ways until both sides are done or `closed` resolves; then both are shut down
/// (FIN) before they are dropped.
pub async fn splice<A, B>(mut a: A, mut b: B, closed: impl Future<Output = ()>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
        _ = closed => {}
    }
    let _ = a.shutdown().await;
    let _ = b.shutdown().await;
}
