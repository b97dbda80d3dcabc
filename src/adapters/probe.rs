//! The network probes behind health checks: a plain HTTP GET and a TCP connect.

use std::net::SocketAddr;
use std::time::Duration;

use crate::engine::health::Prober;

/// Probes over the host's network, one shared HTTP client.
#[derive(Clone)]
pub struct NetProber {
    client: reqwest::Client,
}

impl NetProber {
    pub fn new() -> NetProber {
        NetProber {
            client: reqwest::Client::builder()
                // Health endpoints answer directly; a redirect is an answer in itself.
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(0)
                .no_proxy()
                .build()
                .expect("a plain HTTP client builds"),
        }
    }
}

impl Default for NetProber {
    fn default() -> Self {
        Self::new()
    }
}

impl Prober for NetProber {
    async fn http(&self, addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
        let url = format!("http://{addr}{path}");
        self.client
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| {
                if e.is_timeout() {
                    format!("no answer within {}s", timeout.as_secs_f32())
                } else if e.is_connect() {
                    "connection refused".to_string()
                } else {
                    e.to_string()
                }
            })
    }

    async fn tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {}s", timeout.as_secs_f32())),
        }
    }
}
