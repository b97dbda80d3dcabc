//! Status writes: server-side apply on the status subresource, one field manager for the
//! controller. `status.latest` belongs to the webhook side (a field manager of its own), so the
//! controller never sends it: a push recorded while a deploy runs cannot be overwritten by the
//! deploy's older view of it.

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{API_VERSION, SeenTag, StageStatus};
use crate::engine::{StageKey, StatusSink};

/// The controller's field manager: status only, never spec (GitOps tools see no drift).
pub const FIELD_MANAGER: &str = "tiny-forge";
/// The webhook side's field manager: owns `status.latest` and nothing else.
pub const WEBHOOK_FIELD_MANAGER: &str = "tiny-forge-webhook";

/// Applies `status` (minus `latest`) as the controller's whole view of it: fields it leaves out
/// are removed, which is what a status describing the present should do.
pub async fn apply<K>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    status: &impl Serialize,
) -> kube::Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut status = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
    if let Some(map) = status.as_object_mut() {
        map.remove("latest");
    }
    let patch = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": kind,
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    bounded(api.patch_status(name, &params, &Patch::Apply(&patch))).await?;
    Ok(())
}

/// How long a status write may take: a stuck API server must not hold a reconcile (and its
/// Stage) forever; the write is retried with the reconcile.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

async fn bounded<T>(write: impl Future<Output = kube::Result<T>>) -> kube::Result<T> {
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(result) => result,
        Err(_) => Err(kube::Error::Service(
            format!("status write timed out after {}s", WRITE_TIMEOUT.as_secs()).into(),
        )),
    }
}

/// Whether applying `new` would change what the object shows (`latest` aside).
pub fn differs(old: Option<&StageStatus>, new: &StageStatus) -> bool {
    let strip = |s: &StageStatus| StageStatus {
        latest: None,
        ..s.clone()
    };
    old.map(strip) != Some(strip(new))
}

/// Records `seen` as the Stage's `status.latest`, on the condition that the Stage is still at
/// `resource_version` (the version the caller compared against): a concurrent push answered by
/// another replica makes this a 409 Conflict and the caller compares again.
pub async fn apply_latest(
    api: &Api<crate::api::Stage>,
    name: &str,
    resource_version: &str,
    seen: &SeenTag,
) -> kube::Result<crate::api::Stage> {
    let patch = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "Stage",
        "metadata": {"resourceVersion": resource_version},
        "status": {"latest": seen},
    });
    let params = PatchParams::apply(WEBHOOK_FIELD_MANAGER).force();
    bounded(api.patch_status(name, &params, &Patch::Apply(&patch))).await
}

/// Intermediate status during a deploy (`Deploying`, the new container's id), so a crash or a
/// leader change resumes from it.
#[derive(Clone)]
pub struct KubeSink {
    pub client: kube::Client,
}

impl StatusSink for KubeSink {
    async fn save(&self, key: &StageKey, status: &StageStatus) -> Result<(), String> {
        let api: Api<crate::api::Stage> = Api::namespaced(self.client.clone(), &key.namespace);
        apply(&api, "Stage", &key.stage, status)
            .await
            .map_err(|e| format!("cannot write the status of {key}: {e}"))
    }
}
