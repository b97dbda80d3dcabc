//! What both modes set up the same way around their one Docker host: the connection, retried
//! until Docker answers, and the engine that drives it. The modes differ only in where status,
//! secrets and the proxy come from.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::adapters::docker::DockerRuntime;
use crate::adapters::probe::NetProber;
use crate::engine::{Reconciler, Runtime, RuntimeError};

/// The wait between attempts to reach Docker at start-up.
pub const RECONNECT: Duration = Duration::from_secs(5);

/// The name Stages use in `spec.dockerHost` for the one Docker host of either mode.
pub const HOST_NAME: &str = "default";

/// Connects to Docker (`host`, else `DOCKER_HOST`, else the local socket), trying again every
/// [`RECONNECT`] until it answers: None when `shutdown` comes first. `unreachable` hears every
/// failed attempt (standalone mode reports it in each Stage's status); its error ends the wait.
pub async fn connect_docker<F: Future<Output = ()>>(
    host: Option<&str>,
    mut shutdown: Pin<&mut F>,
    mut unreachable: impl FnMut(&RuntimeError) -> anyhow::Result<()>,
) -> anyhow::Result<Option<DockerRuntime>> {
    loop {
        match DockerRuntime::connect(host).await {
            Ok(runtime) => {
                tracing::info!(endpoint = runtime.endpoint(), "connected to Docker");
                return Ok(Some(runtime));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reach Docker; retrying in {}s", RECONNECT.as_secs());
                unreachable(&e)?;
            }
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(None),
            _ = tokio::time::sleep(RECONNECT) => {}
        }
    }
}

/// The engine for one Docker host, named [`HOST_NAME`], probing over the network.
pub fn single_host<R: Runtime, S, X, N>(
    runtime: R,
    sink: S,
    secrets: X,
    proxy: N,
    holder: Option<std::sync::Arc<dyn crate::engine::holder::PortHolder>>,
    instance: &str,
) -> Reconciler<R, NetProber, S, X, N> {
    Reconciler {
        runtime,
        prober: NetProber::new(),
        sink,
        secrets,
        proxy,
        host_name: HOST_NAME.to_string(),
        instance: instance.to_string(),
        holder,
    }
}
