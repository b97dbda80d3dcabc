//! Status writes: server-side apply on the status subresource, one field manager for the
//! controller. `status.latest` belongs to the webhook side (a field manager of its own), so the
//! controller never sends it: a push recorded while a deploy runs cannot be overwritten by the
//! deploy's older view of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{API_VERSION, SeenTag, StageStatus};
use crate::engine::{SinkError, StageKey, StatusSink};

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

/// What the leader last wrote to each Stage's status, by (namespace, name). It is the only writer
/// of those fields, so this is never older than the watch cache, which may lag: a reconcile
/// that starts right after a deploy must not take the cache's `Deploying` for the truth and
/// deploy again.
#[derive(Clone, Default)]
pub struct Written(Arc<Mutex<HashMap<(String, String), StageStatus>>>);

impl Written {
    pub fn remember(&self, namespace: &str, name: &str, status: &StageStatus) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.to_string(), name.to_string()), status.clone());
    }

    /// The status to start from: what was last written, with the cache's `latest` (written by
    /// the webhook side), unless the cache describes a newer generation (the object was
    /// recreated, or another leader wrote since).
    pub fn recall(
        &self,
        namespace: &str,
        name: &str,
        cached: Option<&StageStatus>,
    ) -> Option<StageStatus> {
        let written = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_string(), name.to_string()))
            .cloned();
        match (written, cached) {
            (Some(mut w), Some(c)) if w.observed_generation >= c.observed_generation => {
                w.latest = c.latest.clone();
                Some(w)
            }
            (Some(w), None) => Some(w),
            (_, c) => c.cloned(),
        }
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// A new term of leadership: another leader may have written meanwhile.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Intermediate status during a deploy (`Deploying`, the new container's id), so a crash or a
/// leader change resumes from it.
#[derive(Clone)]
pub struct KubeSink {
    pub client: kube::Client,
    pub written: Written,
}

impl KubeSink {
    pub fn new(client: kube::Client) -> KubeSink {
        KubeSink {
            client,
            written: Written::default(),
        }
    }

    /// Applies a Stage's status and remembers it.
    pub async fn write(
        &self,
        namespace: &str,
        name: &str,
        status: &StageStatus,
    ) -> kube::Result<()> {
        let api: Api<crate::api::Stage> = Api::namespaced(self.client.clone(), namespace);
        apply(&api, "Stage", name, status).await?;
        self.written.remember(namespace, name, status);
        Ok(())
    }
}

impl StatusSink for KubeSink {
    async fn save(&self, key: &StageKey, status: &StageStatus) -> Result<(), SinkError> {
        self.write(&key.namespace, &key.stage, status)
            .await
            .map_err(|e| SinkError::Unavailable(format!("cannot write the status of {key}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Phase;

    fn status(phase: Phase, generation: i64, latest: Option<&str>) -> StageStatus {
        StageStatus {
            phase: Some(phase),
            observed_generation: Some(generation),
            latest: latest.map(|t| SeenTag {
                tag: t.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_last_write_wins_over_a_lagging_cache_but_not_over_a_newer_generation() {
        let written = Written::default();
        let cached = status(Phase::Deploying, 3, Some("1.2"));
        assert_eq!(
            written.recall("ns", "web", Some(&cached)),
            Some(cached.clone())
        );
        written.remember("ns", "web", &status(Phase::Healthy, 3, Some("1.1")));
        let recalled = written.recall("ns", "web", Some(&cached)).unwrap();
        assert_eq!(
            recalled.phase,
            Some(Phase::Healthy),
            "not the cache's Deploying"
        );
        assert_eq!(
            recalled.latest.unwrap().tag,
            "1.2",
            "latest is the webhook side's"
        );
        let newer = status(Phase::Pending, 4, None);
        assert_eq!(written.recall("ns", "web", Some(&newer)), Some(newer));
        written.forget("ns", "web");
        assert_eq!(written.recall("ns", "web", None), None);
    }
}
