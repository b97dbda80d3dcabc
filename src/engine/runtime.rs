//! The container runtime as the engine sees it: a handful of idempotent verbs. The real
//! implementation is `crate::adapters::docker::DockerRuntime`; the engine never sees bollard types.

use super::reasons::Reason;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;

/// What went wrong talking to the runtime. `Unreachable` is transient by nature; the others
/// describe the request.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("Docker is unreachable at {endpoint}: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    #[error("Docker said: {0}")]
    Other(String),
}

impl RuntimeError {
    /// Stable label for metrics and condition reasons.
    pub fn reason(&self) -> Reason {
        match self {
            RuntimeError::Unreachable { .. } => Reason::DockerUnreachable,
            RuntimeError::NotFound(_) => Reason::NotFound,
            RuntimeError::Conflict(_) => Reason::Conflict,
            RuntimeError::Image { .. } => Reason::ImageUnavailable,
            RuntimeError::Other(_) => Reason::DockerError,
        }
    }
}

/// A container carrying our ownership labels, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// Creation time (seconds since the epoch); the newest old container is the rollback target.
    pub created: i64,
}

impl ContainerInfo {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// Live state of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerState {
    pub running: bool,
    pub exit_code: Option<i64>,
    /// Docker's own HEALTHCHECK verdict: `starting`, `healthy`, `unhealthy`; None without one.
    pub health: Option<String>,
    pub ip: Option<IpAddr>,
    /// Host port the container port is published on, if it is.
    pub published_port: Option<u16>,
    pub error: Option<String>,
}

/// When to contact the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pull {
    Always,
    IfNotPresent,
    Never,
}

/// An image ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Content-addressed image id (`sha256:…`): containers are created from it, never from a tag.
    pub id: String,
    /// Registry manifest digest of the repository, when the image came from a registry.
    pub repo_digest: Option<String>,
    /// Exposed TCP ports, ascending.
    pub exposed_ports: Vec<u16>,
    /// Whether the image defines a Docker HEALTHCHECK.
    pub has_healthcheck: bool,
}

impl ImageInfo {
    /// The digest recorded in status: the registry's, else the image id.
    pub fn digest(&self) -> &str {
        self.repo_digest.as_deref().unwrap_or(&self.id)
    }
}

/// Everything needed to create a container. Built by `engine::spec`, purely.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    /// Image id to run.
    pub image: String,
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub args: Option<Vec<String>>,
    pub port: Option<u16>,
    pub host_port: Option<u16>,
    pub host_ip: Option<String>,
    pub binds: Vec<String>,
    pub restart_policy: String,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub network: Option<String>,
    pub stop_timeout: u32,
    /// Names an existing container of exactly this spec may have from an earlier release's
    /// naming: adopted as this spec's container, so an upgrade redeploys nothing.
    pub previous_names: Vec<String>,
}

impl ContainerSpec {
    /// Whether a container named `name` is this spec's container.
    pub fn is_named(&self, name: &str) -> bool {
        self.name == name || self.previous_names.iter().any(|n| n == name)
    }
}

/// The verbs the engine needs from a container runtime. Every verb is safe to repeat.
pub trait Runtime: Send + Sync {
    /// Human name of the endpoint, for messages.
    fn endpoint(&self) -> &str;
    fn ping(&self) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Every container (running or not) labelled `app.kubernetes.io/managed-by=tiny-forge`,
    /// narrowed by extra label equalities. One call, whatever the number of Stages.
    fn list_managed(
        &self,
        filter: &[(&str, &str)],
    ) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send;
    /// Make `reference` (`repo:tag`) present locally per `pull`, returning what it is.
    fn ensure_image(
        &self,
        reference: &str,
        pull: Pull,
    ) -> impl Future<Output = Result<ImageInfo, RuntimeError>> + Send;
    /// Create; `Conflict` when the name exists already.
    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// Start; starting a running container is not an error.
    fn start(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Stop; stopping a stopped or missing container is not an error.
    fn stop(
        &self,
        id: &str,
        timeout_s: u32,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Remove (forced); removing a missing container is not an error.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Live state; `None` when the container does not exist.
    fn inspect(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<ContainerState>, RuntimeError>> + Send;
}
