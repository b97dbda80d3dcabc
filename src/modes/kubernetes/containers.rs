//! One container listing shared by all Stage reconciles.
//!
//! kube-runtime reconciles one object at a time; listing Docker's containers in each would make
//! a resync of N Stages cost N list calls. Instead a listing is shared by every reconcile that
//! may use it: one taken after the Stage's own last change (nothing this controller did to the
//! Stage's containers is missing from it) and recently enough to show drift. Concurrent
//! reconciles wait for one listing in flight rather than starting their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::api::labels;
use crate::engine::policy::{ByStage, group_by_stage};
use crate::engine::{ContainerInfo, Runtime, RuntimeError};

struct Listing {
    taken: Instant,
    by_stage: Arc<ByStage>,
}

pub struct ContainerCache {
    instance: String,
    max_age: Duration,
    latest: Mutex<Option<Listing>>,
    /// When this controller last changed each Stage's containers (a reconcile or a cleanup
    /// finished).
    touched: Mutex<HashMap<(String, String), Instant>>,
    listing: tokio::sync::Mutex<()>,
}

impl ContainerCache {
    pub fn new(instance: &str, max_age: Duration) -> ContainerCache {
        ContainerCache {
            instance: instance.to_string(),
            max_age,
            latest: Mutex::new(None),
            touched: Mutex::new(HashMap::new()),
            listing: tokio::sync::Mutex::new(()),
        }
    }

    /// The containers of Stage `namespace/stage`, from a listing that is good enough for it.
    pub async fn for_stage<R: Runtime>(
        &self,
        runtime: &R,
        namespace: &str,
        stage: &str,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let key = (namespace.to_string(), stage.to_string());
        let since = self
            .touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        let pick = |by: &ByStage| by.get(&key).cloned().unwrap_or_default();
        if let Some(by_stage) = self.usable(since) {
            return Ok(pick(&by_stage));
        }
        let _one_at_a_time = self.listing.lock().await;
        // Someone else may have listed while this one waited.
        let by_stage = match self.usable(since) {
            Some(by_stage) => by_stage,
            None => self.list(runtime).await?,
        };
        Ok(pick(&by_stage))
    }

    /// Every container of this instance, grouped by Stage, from a fresh listing (also shared with
    /// the reconciles that follow).
    pub async fn all<R: Runtime>(&self, runtime: &R) -> Result<Arc<ByStage>, RuntimeError> {
        let _one_at_a_time = self.listing.lock().await;
        self.list(runtime).await
    }

    /// The latest listing, if it is recent and was taken after `since`.
    fn usable(&self, since: Option<Instant>) -> Option<Arc<ByStage>> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let l = latest.as_ref()?;
        (l.taken.elapsed() <= self.max_age && since.is_none_or(|t| l.taken > t))
            .then(|| l.by_stage.clone())
    }

    /// Lists and keeps the listing; the caller holds `listing`.
    async fn list<R: Runtime>(&self, runtime: &R) -> Result<Arc<ByStage>, RuntimeError> {
        let taken = Instant::now();
        let containers = runtime
            .list_managed(&[(labels::INSTANCE, self.instance.as_str())])
            .await?;
        let by_stage = Arc::new(group_by_stage(containers));
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(Listing {
            taken,
            by_stage: by_stage.clone(),
        });
        Ok(by_stage)
    }

    /// Marks the Stage's containers changed now: later reconciles of it need a newer listing.
    pub fn touched(&self, namespace: &str, stage: &str) {
        self.touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.to_string(), stage.to_string()), Instant::now());
    }

    /// Forgets a deleted Stage.
    pub fn forget(&self, namespace: &str, stage: &str) {
        self.touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_string(), stage.to_string()));
    }
}
