use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ContainerSettings, HealthCheck, StageStatus};

/// How the proxy reaches the Stage's container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Upstream {
    /// The container's address on its Docker network (NPM on the same network or host).
    #[default]
    ContainerIp,
    /// A host port Docker picks for each container, reached at `upstreamHost`: every
    /// container has its own port, so the switch needs no port handover.
    HostPort,
}

/// Proxy host settings of a Stage (Nginx Proxy Manager). Unset booleans are false.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxySettings {
    /// Route `domains` through the proxy (default: true when the Stage has domains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How the proxy reaches the container (default `containerIp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    /// Address the proxy reaches the Docker host at, for `upstream: hostPort` (default
    /// `127.0.0.1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
    /// `http` (default) or `https` towards the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_scheme: Option<String>,
    /// NPM certificate id for TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_id: Option<i64>,
    /// Redirect HTTP to HTTPS (needs a certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_forced: Option<bool>,
    /// Send HSTS (needs `sslForced`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts_enabled: Option<bool>,
    /// HSTS for subdomains too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts_subdomains: Option<bool>,
    /// Serve HTTP/2 (needs a certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_support: Option<bool>,
    /// Pass WebSocket upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_websocket_upgrade: Option<bool>,
    /// NPM's common-exploit blocking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_exploits: Option<bool>,
    /// NPM's asset caching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caching_enabled: Option<bool>,
    /// NPM access list id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_list_id: Option<i64>,
    /// Extra nginx configuration for the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advanced_config: Option<String>,
    /// Seconds the old container keeps running after the proxy switched, for requests in
    /// flight (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_seconds: Option<u32>,
    /// Take over a proxy host for these domains that tiny-forge did not create (default: no,
    /// the Stage reports `DomainInUse` and touches nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<bool>,
}

/// How a Stage's `hostPort` is held.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortHolder {
    /// Hold the host port (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `http` (default): HTTP/1.1 with keep-alive and WebSocket upgrades, drained per request,
    /// `X-Forwarded-*` added. `tcp`: bytes both ways, drained per connection (any protocol).
    // A plain string schema: the generated one lists `null` among the enum values, and
    // Kubernetes 1.20 then refuses the whole CRD ("per-version schemas may not all be set to
    // identical values").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "holder_mode_schema")]
    pub mode: Option<HolderMode>,
    /// Seconds the previous container may finish its requests (and keep open tunnels and TCP
    /// connections) after the switch; it is retired as soon as nothing is in flight (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_seconds: Option<u32>,
}

fn holder_mode_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["http", "tcp"], "nullable": true})
}

/// What the port holder understands of a Stage's traffic.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HolderMode {
    #[default]
    Http,
    Tcp,
}

/// An environment of a Project (dev, staging, prod): which tags it follows and where it runs.
// kube's structured `printcolumn(..)` repeats `type_ = ..`, which clippy mistakes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tinyforge.dev",
    version = "v1alpha1",
    kind = "Stage",
    namespaced,
    status = "StageStatus",
    shortname = "tfs",
    category = "tinyforge",
    doc = "An environment of a Project: the tags it follows, where its container runs.",
    printcolumn(name = "Project", type_ = "string", json_path = ".spec.projectRef"),
    printcolumn(name = "Tag", type_ = "string", json_path = ".status.current.tag"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        priority = 1,
        json_path = ".status.message"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StageSpec {
    /// Name of the Project (same namespace) this Stage deploys.
    pub project_ref: String,
    /// Which pushed tags this Stage follows. Unset: every tag, the newest seen wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_policy: Option<TagPolicy>,
    /// Deploy a newly seen tag that passes the policy by itself. When false, new tags are only
    /// recorded in status and a deploy happens by setting `pinnedTag`.
    #[serde(default)]
    pub auto_deploy: bool,
    /// Run exactly this tag. A pin (a manual deploy or rollback) holds automation for this Stage
    /// until it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_tag: Option<String>,
    /// Domains the proxy routes to this Stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// Publish the container port on this fixed host port. The old container must then hand the
    /// port over (a short gap); without it the new container is healthy before the old stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// Host address the port is published on (default `0.0.0.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// The port holder in front of `hostPort`: tiny-forge's own small proxy owns the host port
    /// and forwards it to the container that serves, so a roll switches only to a healthy
    /// container and drops no request. On by default for a Stage with `hostPort` wherever the
    /// controller runs a holder (standalone mode); `enabled: false` publishes the container
    /// port directly, as before (a short gap on every roll).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_holder: Option<PortHolder>,
    /// Overrides of the Project's container settings for this Stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<ContainerSettings>,
    /// Overrides of the Project's health check for this Stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// How the proxy (Nginx Proxy Manager) routes `domains` to this Stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySettings>,
    /// Docker host this Stage runs on, by the name given to `--docker-host NAME=URL`
    /// (default `default`, the engine `DOCKER_HOST` points at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,
}

/// Which tags a Stage follows. Set exactly one of `exact`, `glob`, `regex`, `semver`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TagPolicy {
    /// Follow exactly this tag (e.g. `latest`, `main`); a re-push of it is a new deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Follow tags matching this glob (`main-*`); the most recently seen wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// Follow tags matching this regular expression (whole tag). With `extract`, the highest
    /// extracted value wins; without, the most recently seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Name of a capture group of `regex` whose value orders the tags: numerically when both
    /// values are numbers, else as semantic versions when both parse, else lexically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<String>,
    /// Follow tags that are semantic versions in this range (`>=1.2, <2`, `^1`, `*`); the highest
    /// wins. A leading `v` on tags is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// Let `semver` match pre-releases (`1.3.0-rc.1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_prerelease: Option<bool>,
    /// Globs of tags never followed. Default: cosign signatures, attestations and SBOMs
    /// (`sha256-*.sig`, `*.att`, `*.sbom`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<String>>,
}
