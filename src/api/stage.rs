use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ContainerSettings, HealthCheck, StageStatus};

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
    /// Overrides of the Project's container settings for this Stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<ContainerSettings>,
    /// Overrides of the Project's health check for this Stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
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
