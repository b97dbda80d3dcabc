//! tiny-forge's port holder: owns the host ports of Stages and forwards each to the container
//! that serves it, so a roll (start new → health gate → switch → drain old) never leaves the
//! port unbound and a container that failed its health check never receives a request.
//!
//! It runs as its own long-lived process (a `FROM scratch` container with a restart policy,
//! created and repaired by the controller) so that the controller can restart, crash or be
//! upgraded without a client noticing. See `docs/ARCHITECTURE.md` ("The port holder").

pub mod holder;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod route;
pub mod routes;
pub mod tcp;
pub mod upstream;

/// The image `scripts/holder-image.sh` builds from this crate, and the controller runs.
pub const IMAGE: &str = concat!("tiny-forge-holder:", env!("CARGO_PKG_VERSION"));

pub use holder::{ApplyError, Config, Holder, Running, start};
pub use limits::Limits;
pub use route::{Draining, RouteStatus};
pub use routes::{DEFAULT_DRAIN_MS, Mode, RouteSpec};

/// Resolves once a stop signal is set (or its sender is gone). A `watch::Ref` must not be held
/// across an await in a spawned task, hence the unit output.
pub(crate) async fn until(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
