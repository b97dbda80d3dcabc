//! The Docker Engine adapter (bollard): the engine's `Runtime` verbs, each idempotent.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthStatusEnum, HostConfig, NetworkingConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::TryStreamExt;

use crate::api::labels;
use crate::engine::{
    ContainerInfo, ContainerSpec, ContainerState, ImageInfo, Pull, Runtime, RuntimeError,
};
use crate::image::{ImageRef, canonical_repository};

/// Docker calls made, by kind: the resync benchmark reads these.
#[derive(Debug, Default)]
pub struct CallCounts {
    pub list: std::sync::atomic::AtomicU64,
    pub read: std::sync::atomic::AtomicU64,
    pub write: std::sync::atomic::AtomicU64,
}

/// A Docker Engine, reached through `DOCKER_HOST` or an explicit endpoint.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    endpoint: String,
    calls: std::sync::Arc<CallCounts>,
}

/// Requests to Docker that take longer than this are answered as unreachable (pulls excepted).
const REQUEST_TIMEOUT: u64 = 60;
/// A whole pull, progress included.
const PULL_DEADLINE: Duration = Duration::from_secs(600);

impl DockerRuntime {
    /// Connects to `host` (`unix:///…`, `tcp://…`), else `DOCKER_HOST`, else the local socket,
    /// and negotiates the API version (older engines speak older versions).
    pub async fn connect(host: Option<&str>) -> Result<DockerRuntime, RuntimeError> {
        let endpoint = host
            .map(str::to_string)
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let unreachable = |e: BollardError| RuntimeError::Unreachable {
            endpoint: endpoint.clone(),
            message: e.to_string(),
        };
        let docker = Docker::connect_with_host(&endpoint).map_err(unreachable)?;
        let docker = docker
            .with_timeout(Duration::from_secs(REQUEST_TIMEOUT))
            .negotiate_version()
            .await
            .map_err(unreachable)?;
        Ok(DockerRuntime {
            docker,
            endpoint,
            calls: Default::default(),
        })
    }

    /// The client itself, for adapters that manage containers of their own (the port holder).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Counters of the calls made so far.
    pub fn calls(&self) -> &CallCounts {
        &self.calls
    }

    fn count(&self, kind: &std::sync::atomic::AtomicU64) {
        kind.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn classify(&self, e: BollardError) -> RuntimeError {
        match e {
            BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            } => RuntimeError::NotFound(message),
            BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            } => RuntimeError::Conflict(message),
            BollardError::DockerResponseServerError { message, .. } => RuntimeError::Other(message),
            e @ (BollardError::IOError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::RequestTimeoutError
            | BollardError::SocketNotFoundError(_)
            | BollardError::HttpClientError { .. }) => RuntimeError::Unreachable {
                endpoint: self.endpoint.clone(),
                message: e.to_string(),
            },
            e => RuntimeError::Other(e.to_string()),
        }
    }

    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        self.count(&self.calls.read);
        let image = match self.docker.inspect_image(reference).await {
            Ok(image) => image,
            Err(e) => {
                return match self.classify(e) {
                    RuntimeError::NotFound(_) => Ok(None),
                    e => Err(e),
                };
            }
        };
        let repository = canonical_repository(reference);
        let config = image.config.unwrap_or_default();
        let mut exposed_ports: Vec<u16> = config
            .exposed_ports
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.strip_suffix("/tcp").and_then(|n| n.parse().ok()))
            .collect();
        exposed_ports.sort_unstable();
        Ok(Some(ImageInfo {
            id: image.id.unwrap_or_default(),
            repo_digest: image
                .repo_digests
                .unwrap_or_default()
                .into_iter()
                .find_map(|d| {
                    let (repo, digest) = d.split_once('@')?;
                    (canonical_repository(repo) == repository).then(|| digest.to_string())
                }),
            exposed_ports,
            has_healthcheck: config
                .healthcheck
                .and_then(|h| h.test)
                .is_some_and(|t| t.first().is_some_and(|k| k != "NONE")),
        }))
    }

    async fn pull(&self, reference: &str) -> Result<(), RuntimeError> {
        self.count(&self.calls.write);
        let parts = ImageRef::parse(reference);
        let (repo, tag) = (parts.repository, parts.tag_or_latest());
        let options = CreateImageOptionsBuilder::default()
            .from_image(repo)
            .tag(tag)
            .build();
        // The client timeout ends with the first progress line; a stalled pull would hold its
        // Stage forever without an overall deadline.
        let pull = self
            .docker
            .create_image(Some(options), None, None)
            .try_for_each(|_| async { Ok(()) });
        tokio::time::timeout(PULL_DEADLINE, pull)
            .await
            .map_err(|_| RuntimeError::Image {
                image: reference.to_string(),
                message: format!("pull did not finish within {}s", PULL_DEADLINE.as_secs()),
            })?
            .map_err(|e| match self.classify(e) {
                e @ RuntimeError::Unreachable { .. } => e,
                e => RuntimeError::Image {
                    image: reference.to_string(),
                    message: format!("pull failed: {e}"),
                },
            })
    }
}

impl Runtime for DockerRuntime {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.count(&self.calls.read);
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| self.classify(e))
    }

    async fn list_managed(
        &self,
        filter: &[(&str, &str)],
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.count(&self.calls.list);
        let mut label_filters = vec![format!(
            "{}={}",
            labels::MANAGED_BY,
            labels::MANAGED_BY_VALUE
        )];
        label_filters.extend(filter.iter().map(|(k, v)| format!("{k}={v}")));
        let filters = HashMap::from([("label".to_string(), label_filters)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.classify(e))?;
        Ok(list
            .into_iter()
            .map(|c| ContainerInfo {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .unwrap_or_default()
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                running: matches!(
                    c.state,
                    Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
                ),
                created: c.created.unwrap_or_default(),
            })
            .collect())
    }

    async fn ensure_image(&self, reference: &str, pull: Pull) -> Result<ImageInfo, RuntimeError> {
        if pull != Pull::Always
            && let Some(image) = self.inspect_image(reference).await?
        {
            return Ok(image);
        }
        if pull == Pull::Never {
            return Err(RuntimeError::Image {
                image: reference.to_string(),
                message: "not on the Docker host and imagePullPolicy is Never".into(),
            });
        }
        if let Err(e) = self.pull(reference).await {
            // An `Always` pull that fails (registry down) may still run the local copy, as
            // Docker itself would: the tag is what was asked for.
            if matches!(e, RuntimeError::Image { .. })
                && let Some(image) = self.inspect_image(reference).await?
            {
                tracing::warn!(image = reference, error = %e, "pull failed; using the local image");
                return Ok(image);
            }
            return Err(e);
        }
        self.inspect_image(reference)
            .await?
            .ok_or_else(|| RuntimeError::Image {
                image: reference.to_string(),
                message: "pulled, yet not found on the Docker host".into(),
            })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.count(&self.calls.write);
        let port_key = spec.port.map(|p| format!("{p}/tcp"));
        let port_bindings = match (&port_key, spec.host_port) {
            (Some(key), Some(host_port)) => Some(HashMap::from([(
                key.clone(),
                Some(vec![PortBinding {
                    host_ip: spec.host_ip.clone(),
                    // 0: let Docker pick a free port (an empty HostPort).
                    host_port: Some(if host_port == 0 {
                        String::new()
                    } else {
                        host_port.to_string()
                    }),
                }]),
            )])),
            _ => None,
        };
        let restart = match spec.restart_policy.as_str() {
            "no" => RestartPolicyNameEnum::NO,
            "always" => RestartPolicyNameEnum::ALWAYS,
            "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
            _ => RestartPolicyNameEnum::UNLESS_STOPPED,
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            cmd: spec.args.clone(),
            labels: Some(spec.labels.clone().into_iter().collect()),
            exposed_ports: port_key.map(|k| vec![k]),
            stop_timeout: Some(i64::from(spec.stop_timeout)),
            host_config: Some(HostConfig {
                binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
                port_bindings,
                restart_policy: Some(RestartPolicy {
                    name: Some(restart),
                    maximum_retry_count: None,
                }),
                memory: spec.memory_bytes,
                nano_cpus: spec.nano_cpus,
                network_mode: spec.network.clone(),
                ..Default::default()
            }),
            networking_config: spec.network.as_ref().map(|n| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(n.clone(), EndpointSettings::default())])),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map(|r| r.id)
            .map_err(|e| self.classify(e))
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.count(&self.calls.write);
        match self.docker.start_container(id, None).await {
            Ok(()) => Ok(()),
            // 304: already started.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.classify(e)),
        }
    }

    async fn stop(&self, id: &str, timeout_s: u32) -> Result<(), RuntimeError> {
        self.count(&self.calls.write);
        let options = StopContainerOptionsBuilder::default()
            .t(timeout_s as i32)
            .build();
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => match self.classify_idempotent(e) {
                None => Ok(()),
                Some(e) => Err(e),
            },
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.count(&self.calls.write);
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(false)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => match self.classify_idempotent(e) {
                None => Ok(()),
                Some(e) => Err(e),
            },
        }
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        self.count(&self.calls.read);
        let c = match self.docker.inspect_container(id, None).await {
            Ok(c) => c,
            Err(e) => {
                return match self.classify(e) {
                    RuntimeError::NotFound(_) => Ok(None),
                    e => Err(e),
                };
            }
        };
        let state = c.state.unwrap_or_default();
        let network = c.network_settings.unwrap_or_default();
        let published_port = network
            .ports
            .unwrap_or_default()
            .into_values()
            .flatten()
            .flatten()
            .find_map(|b| b.host_port.and_then(|p| p.parse::<u16>().ok()));
        let ip = network.networks.and_then(|nets| {
            nets.into_values()
                .filter_map(|e| e.ip_address)
                .find_map(|ip| ip.parse::<IpAddr>().ok())
        });
        Ok(Some(ContainerState {
            running: state.running.unwrap_or(false),
            exit_code: state.exit_code,
            health: state.health.and_then(|h| h.status).and_then(|s| match s {
                HealthStatusEnum::HEALTHY => Some("healthy".to_string()),
                HealthStatusEnum::UNHEALTHY => Some("unhealthy".to_string()),
                HealthStatusEnum::STARTING => Some("starting".to_string()),
                _ => None,
            }),
            ip,
            published_port,
            error: state.error.filter(|e| !e.is_empty()),
        }))
    }
}

impl DockerRuntime {
    /// Stop and remove are idempotent: a missing or already stopped container is success.
    fn classify_idempotent(&self, e: BollardError) -> Option<RuntimeError> {
        match e {
            BollardError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            } => None,
            // "removal already in progress"
            BollardError::DockerResponseServerError {
                status_code: 409,
                ref message,
            } if message.contains("in progress") => None,
            e => Some(self.classify(e)),
        }
    }
}

/// What to build: a context (a tar), the Dockerfile in it, and how to name the result.
#[derive(Clone, Debug)]
pub struct ImageBuild {
    /// `repository:tag` the image gets.
    pub tag: String,
    /// Path of the Dockerfile inside the context.
    pub dockerfile: String,
    pub target: Option<String>,
    pub args: std::collections::BTreeMap<String, String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A built image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    pub id: String,
}

/// Why a build produced no image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile or a step in it failed: the first error line the builder gave.
    #[error("{0}")]
    Failed(String),
    /// The engine could not be reached or refused the request.
    #[error("{0}")]
    Engine(RuntimeError),
}

/// A whole build may stream for this long; the caller's `timeoutSeconds` usually stops it first.
const BUILD_DEADLINE: Duration = Duration::from_secs(24 * 3600);

impl DockerRuntime {
    /// Builds `context` (a tar) on this engine (the classic builder: it needs no BuildKit
    /// session and every engine has it), handing each line of the builder's output to `log`.
    /// Dropping the future closes the connection, which makes the engine stop the build.
    pub async fn build_image(
        &self,
        context: Vec<u8>,
        build: &ImageBuild,
        mut log: impl FnMut(&str),
    ) -> Result<BuiltImage, BuildError> {
        self.count(&self.calls.write);
        let options = bollard::query_parameters::BuildImageOptions {
            dockerfile: build.dockerfile.clone(),
            t: Some(build.tag.clone()),
            target: build.target.clone().unwrap_or_default(),
            buildargs: (!build.args.is_empty()).then(|| build.args.clone().into_iter().collect()),
            labels: Some(build.labels.clone().into_iter().collect()),
            rm: true,
            forcerm: true,
            ..Default::default()
        };
        // The client's request timeout is for short calls; a build streams for minutes.
        let docker = self.docker.clone().with_timeout(BUILD_DEADLINE);
        let mut stream = docker.build_image(
            options,
            None,
            Some(bollard::body_full(hyper::body::Bytes::from(context))),
        );
        let mut id = None;
        while let Some(item) = stream.try_next().await.transpose() {
            let info = match item {
                Ok(info) => info,
                Err(BollardError::DockerStreamError { error }) => {
                    log(&error);
                    return Err(BuildError::Failed(first_line(&error)));
                }
                Err(e) => {
                    return Err(match self.classify(e) {
                        RuntimeError::Other(m) => BuildError::Failed(first_line(&m)),
                        e => BuildError::Engine(e),
                    });
                }
            };
            if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                for line in text.lines() {
                    log(line);
                }
            }
            if let Some(detail) = info.error_detail {
                let message = detail.message.unwrap_or_default();
                log(&message);
                return Err(BuildError::Failed(first_line(&message)));
            }
            if let Some(i) = info.aux.and_then(|aux| aux.id) {
                id = Some(i);
            }
        }
        // Older engines report the id only in "Successfully built": ask for the tag instead.
        match id {
            Some(id) => Ok(BuiltImage { id }),
            None => match self.inspect_image(&build.tag).await {
                Ok(Some(image)) => Ok(BuiltImage { id: image.id }),
                Ok(None) => Err(BuildError::Failed(format!(
                    "the build ended without an image {}",
                    build.tag
                ))),
                Err(e) => Err(BuildError::Engine(e)),
            },
        }
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("the build failed")
        .to_string()
}
