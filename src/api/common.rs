use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A key of a secret. In Kubernetes mode a `Secret` in tiny-forge's own namespace that is shared
/// with the resource's namespace (annotation `tinyforge.dev/share-with`); in standalone mode a
/// secret sealed in the store, else the file `<secrets-dir>/<name>/<key>` (the layout of a
/// mounted Secret volume).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the secret.
    pub name: String,
    /// Key inside the secret.
    pub key: String,
}

/// One environment variable of the container.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Literal value. Exactly one of `value` and `valueFrom` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Where the value comes from when it must not be written in the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvSource>,
}

/// Source of a secret environment value.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvSource {
    /// Take the value from a secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// Take the value from a file on the machine running tiny-forge (trailing newline removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// A bind mount or named Docker volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// Host path (absolute) or Docker volume name.
    pub source: String,
    /// Path inside the container.
    pub target: String,
    /// Mount read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// Docker restart policy of the container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    No,
    /// Always restart.
    Always,
    /// Restart unless stopped by hand (the default).
    #[default]
    UnlessStopped,
    /// Restart when the process exits non-zero.
    OnFailure,
}

/// When the image is pulled from its registry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Pull before every deploy.
    Always,
    /// Pull only when the tag is not on the Docker host.
    IfNotPresent,
    /// Never pull: the image must be on the Docker host.
    Never,
}

/// Memory and CPU limits, Docker style.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Memory limit, as Kubernetes quantities (`256Mi`, `1Gi`) or bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// CPU limit in cores (`0.5`, `2`) or millicores (`500m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
}

/// Container settings. On a Project they are the defaults; on a Stage, overrides: a scalar set
/// there wins, `env` and `labels` are merged by name, `volumes` replace the project's list.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSettings {
    /// Port the application listens on inside the container. Defaults to the image's first
    /// `EXPOSE`d port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Extra container labels (keys under `tinyforge.dev/` are reserved).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Volumes and bind mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// Docker restart policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Memory and CPU limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Override the image's command (its `CMD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Docker network to attach the container to (default: Docker's `bridge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// When to pull the image: `Always`, `IfNotPresent`, `Never`. Default as in Kubernetes:
    /// `Always` for the tag `latest`, else `IfNotPresent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Seconds Docker waits after SIGTERM before SIGKILL when the container is retired
    /// (default 10, at most 45).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout_seconds: Option<u32>,
}

/// How a new container proves it is ready before it takes over.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HealthCheckType {
    /// The image's own `HEALTHCHECK` if it has one, else a TCP connect to the container port,
    /// else the container merely staying up for the start period.
    #[default]
    Auto,
    /// An HTTP GET of `path` that must answer `expectedStatus` (any 2xx when unset).
    Http,
    /// A TCP connect to the port.
    Tcp,
    /// The image's own Docker `HEALTHCHECK` status.
    Docker,
    /// No check: running is enough.
    None,
}

/// Health check settings. Unset fields take the project's value, then the defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Kind of check (default `auto`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<HealthCheckType>,
    /// HTTP path (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Expected HTTP status (default: any 2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_status: Option<u16>,
    /// Port to probe (default: the container port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Timeout of one probe in seconds (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// Seconds between probes (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u32>,
    /// Consecutive failures, after the start period, that fail the deploy (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Seconds after start during which failures do not count (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period_seconds: Option<u32>,
}
