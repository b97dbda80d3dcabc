use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a Stage's deploy stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Nothing to deploy yet (no tag seen, or waiting for a valid spec).
    #[default]
    Pending,
    /// A new container is being pulled, started or health-checked.
    Deploying,
    /// The desired tag runs and passed its health check.
    Healthy,
    /// The desired tag failed and there was nothing to roll back to.
    Failed,
    /// The desired tag failed; the previous container kept (or went back to) serving.
    RolledBack,
    /// A Stage with a deployed container cannot converge now (an image that cannot be pulled,
    /// Docker unreachable, a spec that became invalid): `Ready` says why, the deployed container
    /// is left as it was.
    Degraded,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Deploying => "Deploying",
            Phase::Healthy => "Healthy",
            Phase::Failed => "Failed",
            Phase::RolledBack => "RolledBack",
            Phase::Degraded => "Degraded",
        }
    }
}

/// A standard Kubernetes condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type; `Ready` is the one `kubectl wait` and GitOps tools read.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable CamelCase reason.
    pub reason: String,
    /// What a person should know.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(transform = no_default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// Generation of the spec the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A tag seen pushed for the Stage's image.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeenTag {
    /// The tag.
    pub tag: String,
    /// Manifest digest, when the sender said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Who said so (`github`, `registry`, `cli`, …).
    pub source: String,
    /// Delivery id of the sender, for tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
    /// When it was seen (RFC 3339).
    pub seen_at: String,
    /// Delivery ids that reached this Stage lately (Kubernetes mode, newest last, at most 32),
    /// recorded or passed over for a preferred tag: a redelivery that reaches another replica,
    /// or comes after a restart, changes nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_deliveries: Vec<String>,
}

/// An image a Stage ran or runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deployed {
    /// Image tag.
    pub tag: String,
    /// Content digest the container was created from (repository digest, else image id).
    pub digest: String,
    /// Docker container id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Docker container name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// When it became the serving container (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// When its tag was last looked up in the registry because it was announced again without
    /// a digest (a re-push of a mutable tag) and the registry still had this content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
}

/// How a deploy ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Outcome {
    /// The new container serves.
    Succeeded,
    /// The new container failed; the previous one serves again.
    RolledBack,
    /// The new container failed and there was nothing to go back to.
    Failed,
}

/// One deploy attempt.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployRecord {
    /// Tag deployed.
    pub tag: String,
    /// Digest deployed, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// When the deploy started (RFC 3339).
    pub started: String,
    /// When it ended (RFC 3339).
    pub finished: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, in a sentence.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(transform = no_default)]
    pub message: String,
}

/// A tag that failed and is not retried until the spec or the tag's digest changes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedDeploy {
    /// Tag that failed.
    pub tag: String,
    /// Digest that failed, when it got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Spec generation it failed under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Hash of the Stage's and the Project's spec it failed under: an edit of either lifts the
    /// hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<String>,
    /// CamelCase reason.
    pub reason: String,
    /// What went wrong.
    pub message: String,
}

/// Observed state of a Stage. Written by the controller only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// Where the deploy stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// One-line summary for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Newest tag seen pushed that passes the tag policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<SeenTag>,
    /// Tag the Stage wants now (pin, else `latest` when `autoDeploy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_tag: Option<String>,
    /// What is serving now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Deployed>,
    /// What served before `current`: the rollback target (its image is kept on the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Deployed>,
    /// The last tag that failed; not retried until the spec or its digest changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailedDeploy>,
    /// The proxy host routing `spec.domains` here, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyRoute>,
    /// The port holder's route of `spec.hostPort`: which container is behind it, since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortRoute>,
    /// Standard conditions, `Ready` first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The latest deploys, newest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<DeployRecord>,
}

/// Where the proxy routes a Stage's domains.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRoute {
    /// NPM proxy host id.
    pub host_id: i64,
    /// Domains routed.
    pub domains: Vec<String>,
    /// `scheme://host:port` the proxy forwards to.
    pub target: String,
    /// The proxy settings (`spec.proxy`) this route was last written with and nginx accepted:
    /// when nginx rejects new ones, the host is put back with these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<super::ProxySettings>,
}

/// What the port holder forwards a Stage's host port to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortRoute {
    /// `ip:port` the holder listens on (the Stage's `hostIp` and `hostPort`).
    pub listen: String,
    /// `ip:port` of the container behind it.
    pub target: String,
    /// That container's name.
    pub container: String,
    /// The tag it runs.
    pub tag: String,
    /// When the holder switched to it (RFC 3339).
    pub since: String,
}

/// Kubernetes 1.20 rejects a CRD whose schema gives a string the default `""`, and its
/// server-side apply turns an applied `""` into null (which the schema then refuses). So status
/// strings that may be empty carry no schema default and are left out when empty; serde's
/// `default` reads them back.
fn no_default(schema: &mut schemars::Schema) {
    schema.remove("default");
}
