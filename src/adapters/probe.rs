//! The network probes behind health checks: a plain HTTP GET and a TCP connect.

use std::net::SocketAddr;
use std::time::Duration;

use crate::engine::health::{ProbeError, Prober};

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
    async fn http(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<u16, ProbeError> {
        let url = format!("http://{addr}{path}");
        self.client
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| {
                if e.is_timeout() {
                    ProbeError::Timeout(timeout)
                } else if e.is_connect() {
                    ProbeError::Refused
                } else {
                    ProbeError::Failed(e.to_string())
                }
            })
    }

    async fn tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ProbeError::Failed(e.to_string())),
            Err(_) => Err(ProbeError::Timeout(timeout)),
        }
    }
}
