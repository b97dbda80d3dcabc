use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, ContainerSettings, HealthCheck, SecretKeyRef};

/// An application: which image it is built into and how its containers run. Its Stages say which
/// tags run where.
// kube's structured `printcolumn(..)` repeats `type_ = ..`, which clippy mistakes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tinyforge.dev",
    version = "v1alpha1",
    kind = "Project",
    namespaced,
    status = "ProjectStatus",
    shortname = "tfp",
    category = "tinyforge",
    doc = "An application deployed by tiny-forge: its image repository and container defaults.",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProjectSpec {
    /// Image repository without tag, as `registry/org/app` (`nginx` and `docker.io/library/nginx`
    /// name the same repository).
    pub image: String,
    /// Credentials for pulling from a private registry: a secret key holding a Docker
    /// `config.json`-style auth entry or `user:password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_credentials: Option<SecretKeyRef>,
    /// Container settings every Stage starts from.
    #[serde(default)]
    pub container: ContainerSettings,
    /// Health check every Stage starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// How webhook deliveries are checked and, for Git events, turned into tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSettings>,
    /// Where deploy events are sent (signed POSTs). Reserved: not acted on by this release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationTarget>,
    /// Poll the registry for new tags. Reserved: not acted on by this release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling: Option<RegistryPolling>,
    /// Git repository the images are built from: its webhook events count for this Project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_source: Option<GitSource>,
    /// Build the image from Git: a push to a followed branch (a Git webhook event from
    /// `gitSource.repository`, or `tiny-forge build`) is fetched at that commit, built on the
    /// Stage's Docker engine and recorded as `status.latest` (source `build`), then deployed like
    /// any pushed tag. Builds run in standalone mode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildSettings>,
}

/// How a Project's image is built from its Git repository.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildSettings {
    /// Where the code is fetched from: `https://`, `git://` or `file://` URL. No credentials in
    /// the URL: use `credentialsRef`.
    #[schemars(regex(pattern = r"^(https|git|file)://[^@/\s]*(/\S*)?$"))]
    pub repository: String,
    /// Branches whose pushes are built (exact names); empty: the repository's default branch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<String>,
    /// Directory of the build context inside the repository (default: its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Dockerfile path relative to the context (default `Dockerfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// Build stage to stop at (`docker build --target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Build arguments (`ARG`). Their values end up in the image's history: never put secrets
    /// here.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub args: std::collections::BTreeMap<String, String>,
    /// A build (fetch included) taking longer is stopped and reported `TimedOut` (default 900).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: Option<u32>,
    /// HTTPS token for fetching a private repository (sent as the password, user
    /// `x-access-token`). Never logged or written to status, the image or its labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_ref: Option<SecretKeyRef>,
}

/// Webhook settings of a Project.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSettings {
    /// Secret the sender signs with (GitHub, Bitbucket: HMAC-SHA256 of the body) or sends
    /// (GitLab `X-Gitlab-Token`; Harbor and the registry: the `Authorization` header). When set,
    /// deliveries for this Project without a valid signature or token are refused (401); when
    /// unset, the secret in the webhook URL is the only check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// The image tag a Git event (push, finished workflow or pipeline on `gitSource.repository`)
    /// stands for: `{branch}`, `{tag}`, `{sha}`, `{sha7}` are replaced (default `sha-{sha7}`,
    /// the convention of docker/metadata-action). Branch names are made tag-safe (`/` → `-`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_template: Option<String>,
    /// Globs of branches whose Git events count (default: all). Tag pushes always count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<String>,
    /// Which Git events stand for a built image: `push`, `tag_push`, `workflow_run`,
    /// `pipeline` (default: `workflow_run` and `pipeline`, i.e. after CI succeeded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub git_events: Vec<String>,
}

/// A URL that receives signed notifications of deploy events.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationTarget {
    /// HTTPS URL that receives the POSTs.
    pub url: String,
    /// Secret used to sign the body (HMAC-SHA256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Events to send (`deployed`, `failed`, `rolledBack`); all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// Registry polling settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryPolling {
    /// Seconds between polls.
    pub interval_seconds: u32,
}

/// The Git repository of a Project: Git webhook events from it are mapped to image tags
/// (`webhook.tagTemplate`); automatic webhook management is reserved for a later release.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// `github`, `gitlab` or `bitbucket`.
    pub provider: String,
    /// Repository as `owner/name`.
    pub repository: String,
    /// Token allowed to manage the repository's webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ref: Option<SecretKeyRef>,
}

/// Observed state of a Project.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` says whether the spec is valid and usable by its Stages; `BuildReady` (with
    /// `spec.build`) how the last build went.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The latest builds from Git, newest first (at most 5; `tiny-forge builds` lists more).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds: Vec<BuildSummary>,
}

/// One build from Git, as the Project's status shows it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildSummary {
    /// Build number (`tiny-forge logs build PROJECT ID`).
    pub id: i64,
    /// Commit built.
    pub commit: String,
    /// Branch (or the ref `tiny-forge build --ref` named).
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Who asked: the webhook provider (`github`, …), `cli` or `restart`.
    pub trigger: String,
    /// `Queued`, `Fetching`, `Building`, `Succeeded`, `Failed`, `Cancelled` or `TimedOut`.
    pub state: String,
    /// When it was queued (RFC 3339).
    pub queued_at: String,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Milliseconds spent fetching the commit and preparing the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_ms: Option<i64>,
    /// Milliseconds the Docker build took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_ms: Option<i64>,
    /// `repository:tag` built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image id built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// First error line of a build that did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
