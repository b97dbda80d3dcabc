//! Test support shared by the crate's unit tests, `tests/` and `benches/` (feature `testing`,
//! which the crate's dev-dependency on itself turns on): doubles of the engine's ports, the
//! scripted fake Docker (`fake`), the demo Project, and waiting for a condition with one
//! deadline instead of sleeping a guessed time.

use std::fmt::Debug;
use std::future::Future;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

pub use crate::engine::fake;

use crate::adapters::docker::DockerRuntime;
use crate::api::{
    ContainerSettings, EnvVar, HealthCheck, HealthCheckType, ProjectSpec, StageSpec, StageStatus,
};
use crate::engine::spec::EnvValueSource;
use crate::engine::{SecretError, Secrets, SinkError, StageKey, StatusSink};
use crate::store::StateDb;

/// How long [`eventually`] waits by default: long enough for a deploy with health checks on a
/// busy 2-core machine; a test that succeeds returns as soon as its condition holds.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Intermediate status goes nowhere.
pub struct NoSink;

impl StatusSink for NoSink {
    async fn save(&self, _: &StageKey, _: &StageStatus) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Keeps every intermediate status, as the store would, for tests that assert the sequence.
#[derive(Default)]
pub struct MemSink(pub Mutex<Vec<StageStatus>>);

impl StatusSink for MemSink {
    async fn save(&self, _: &StageKey, status: &StageStatus) -> Result<(), SinkError> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(status.clone());
        Ok(())
    }
}

/// No secret exists: a Stage that references one fails with `SecretUnavailable`.
pub struct NoSecrets;

impl Secrets for NoSecrets {
    fn value(&self, _: &str, _: &EnvValueSource<'_>) -> Result<String, SecretError> {
        Err(SecretError::Missing("no secrets here".into()))
    }
}

/// The demo Project (`tiny-forge-demo`, built by `scripts/demo-images.sh`): HTTP health on
/// `/healthz`, a short start period so broken images fail fast.
pub fn demo_project() -> ProjectSpec {
    ProjectSpec {
        image: "tiny-forge-demo".into(),
        container: ContainerSettings {
            port: Some(8080),
            env: vec![EnvVar {
                name: "GREETING".into(),
                value: Some("test".into()),
                value_from: None,
            }],
            stop_timeout_seconds: Some(2),
            ..Default::default()
        },
        health_check: Some(HealthCheck {
            kind: Some(HealthCheckType::Http),
            path: Some("/healthz".into()),
            expected_status: Some(200),
            interval_seconds: Some(1),
            timeout_seconds: Some(1),
            retries: Some(2),
            start_period_seconds: Some(2),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Stage of the demo Project pinned to `tag`.
pub fn pinned(tag: &str) -> StageSpec {
    StageSpec {
        project_ref: "demo".into(),
        pinned_tag: Some(tag.into()),
        ..Default::default()
    }
}

/// Polls `probe` every 100 ms until it answers `Ok`, and returns that; after `limit` panics
/// with `what` and the last `Err` (what was seen instead, for the failure message).
pub async fn eventually<T, E, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not reached within {limit:?}; last seen: {last:#?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until the Stage's status in the store at `state` (a state directory, opened afresh
/// each time: another process may be writing it) satisfies `done`, and returns it.
pub async fn stage_reaches(
    state: &Path,
    namespace: &str,
    stage: &str,
    done: impl Fn(&StageStatus) -> bool,
) -> StageStatus {
    eventually(&format!("{namespace}/{stage}"), PATIENCE, || async {
        if !state.join("state.db").exists() {
            return Err(Seen::NoStore);
        }
        let status = StateDb::open(state)
            .and_then(|db| db.stage_status(namespace, stage))
            .map_err(|e| Seen::Error(e.to_string()))?;
        if done(&status) {
            Ok(status)
        } else {
            Err(Seen::Status(Box::new(status)))
        }
    })
    .await
}

/// What [`stage_reaches`] saw instead, for the failure message.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug
enum Seen {
    NoStore,
    Error(String),
    Status(Box<StageStatus>),
}

/// [`stage_reaches`] on an open store.
pub async fn stage_reaches_in(
    db: &StateDb,
    namespace: &str,
    stage: &str,
    done: impl Fn(&StageStatus) -> bool,
) -> StageStatus {
    eventually(&format!("{namespace}/{stage}"), PATIENCE, || async {
        let status = db
            .stage_status(namespace, stage)
            .map_err(|e| Seen::Error(e.to_string()))?;
        if done(&status) {
            Ok(status)
        } else {
            Err(Seen::Status(Box::new(status)))
        }
    })
    .await
}

/// Removes the port holder containers of `instance` and their route volume, whatever state
/// they are in (a test's or a bench's clean slate; `DockerHolder::release` needs a holder that
/// answers and keeps the volume).
pub async fn remove_holder(rt: &DockerRuntime, instance: &str) {
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!(
            "{}={instance}",
            crate::adapters::holder::HOLDER_LABEL
        )],
    )]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    for c in rt
        .docker()
        .list_containers(Some(options))
        .await
        .unwrap_or_default()
    {
        let remove = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
            .force(true)
            .build();
        let _ = rt
            .docker()
            .remove_container(c.id.as_deref().unwrap_or_default(), Some(remove))
            .await;
    }
    let _ = rt
        .docker()
        .remove_volume(
            &format!("tiny-forge-holder-{instance}"),
            None::<bollard::query_parameters::RemoveVolumeOptions>,
        )
        .await;
}
