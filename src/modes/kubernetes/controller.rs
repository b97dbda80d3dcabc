//! The Stage and Project controllers on kube-runtime, around the same engine as standalone mode.
//!
//! A Stage reconcile: finalizer first (cleanup works even if apply never ran), then the engine
//! converges the Stage's containers; the result goes to the status subresource (server-side
//! apply, only when it changed), transitions become events, and the next look is scheduled:
//! after the resync period when converged (Docker drift is found without events), with backoff
//! on transient trouble, never for a spec that cannot work until it changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};

use super::containers::ContainerCache;
use super::secrets::ClusterSecrets;
use super::status::{self, KubeSink};
use crate::adapters::docker::DockerRuntime;
use crate::adapters::npm::Npm;
use crate::adapters::probe::NetProber;
use crate::api::{Phase, Project, ProjectSpec, Stage, StageStatus, labels};
use crate::engine::Reason;
use crate::engine::conditions::{self, READY};
use crate::engine::policy::{Backoff, Orphans, orphan_grace};
use crate::engine::proxy::{Owner, Proxy, ProxyError};
use crate::engine::reconcile::report_unreachable;
use crate::engine::spec::assess_project;
use crate::engine::{Reconciler, Requeue, Runtime, RuntimeError, StageInput, StageKey};

/// Put on every Stage and Project: their containers and proxy hosts go before they do.
pub const FINALIZER: &str = "tinyforge.dev/cleanup";

pub type Engine = Reconciler<DockerRuntime, NetProber, KubeSink, ClusterSecrets, Option<Npm>>;

/// What every reconcile shares.
pub struct Ctx {
    pub client: Client,
    pub engine: Arc<Engine>,
    pub containers: ContainerCache,
    pub projects: ProjectView,
    pub recorder: Recorder,
    pub resync: Duration,
    /// The retry schedule of each object in a streak of transient failures, by
    /// `kind/namespace/name`.
    pub failures: Mutex<HashMap<String, Backoff>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Counts a finished reconcile by its outcome (a static label).
fn count(
    ctx: &Ctx,
    kind: &'static str,
    started: std::time::Instant,
    result: &Result<Action, Error>,
) {
    let outcome = match result {
        Err(_) => "error",
        Ok(a) if *a == Action::await_change() => "waiting",
        Ok(a) if *a == Action::requeue(ctx.resync) => "converged",
        Ok(_) => "retry",
    };
    ctx.metrics.reconciled(kind, outcome, started.elapsed());
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("proxy: {0}")]
    Proxy(#[from] ProxyError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// A static label (metrics, logs): never the formatted error, whose cardinality is unbounded.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Runtime(e) => e.reason().as_str(),
            Error::Proxy(e) => e.reason().as_str(),
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// Projects as a watch cache sees them, with what the Stage controller's own Project watch saw:
/// a Stage reconciled because its Project changed waits (briefly) until the cache has that
/// change, so it never deploys with the Project's previous spec.
pub struct ProjectView {
    pub store: Store<DeserializeGuard<Project>>,
    pub api_client: Client,
    /// The newest (uid, generation) the Stage controller's Project watch saw, by name.
    wanted: Mutex<HashMap<(String, String), Seen>>,
}

impl ProjectView {
    pub fn new(store: Store<DeserializeGuard<Project>>, client: Client) -> ProjectView {
        ProjectView {
            store,
            api_client: client,
            wanted: Mutex::new(HashMap::new()),
        }
    }

    /// Called by the Stage controller's Project watch before it triggers the Project's Stages:
    /// true when the Stages should look again (a new Project, a spec edit, a deletion begun);
    /// false for what does not concern them (the Project's own status write, a label).
    pub fn saw(&self, project: &DeserializeGuard<Project>) -> bool {
        let meta = project.meta();
        let key = (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        let seen = Seen {
            uid: meta.uid.clone(),
            generation: meta.generation.unwrap_or(0),
            deleting: meta.deletion_timestamp.is_some(),
        };
        let mut wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        match wanted.get_mut(&key) {
            // The same object: only a newer generation or a deletion matters.
            Some(w) if w.uid == seen.uid => {
                let changed = seen.generation > w.generation || seen.deleting != w.deleting;
                w.generation = w.generation.max(seen.generation);
                w.deleting = seen.deleting;
                changed
            }
            // New, or deleted and created again: generations start over.
            _ => {
                wanted.insert(key, seen);
                true
            }
        }
    }

    /// The Project `namespace/name`: None when it does not exist (or is being deleted), Err
    /// with the reason when it cannot be read.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<ProjectSpec>, String> {
        let key = (namespace.to_string(), name.to_string());
        let wanted = self
            .wanted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let oref = ObjectRef::new(name).within(namespace);
        for _ in 0..40 {
            match self.store.get(&oref) {
                Some(p)
                    if wanted.as_ref().is_none_or(|w| {
                        p.meta().uid == w.uid && p.meta().generation.unwrap_or(0) >= w.generation
                    }) =>
                {
                    return Ok(usable(&p));
                }
                // Deleted, or too new for the cache: the API server knows which.
                None if super::ingest::listed(&self.store) => {
                    return self.read(namespace, name).await;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        // The cache lags (or never had it): ask the API server itself.
        self.read(namespace, name).await
    }

    async fn read(&self, namespace: &str, name: &str) -> Result<Option<ProjectSpec>, String> {
        let api: Api<DeserializeGuard<Project>> =
            Api::namespaced(self.api_client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(p) => Ok(p.as_ref().and_then(usable)),
            Err(e) => Err(format!("cannot read Project {namespace}/{name}: {e}")),
        }
    }
}

/// A Project as the Stage controller's watch last saw it.
#[derive(Clone, Debug)]
struct Seen {
    uid: Option<String>,
    generation: i64,
    deleting: bool,
}

/// A Project Stages may use: present, readable, not being deleted.
fn usable(p: &DeserializeGuard<Project>) -> Option<ProjectSpec> {
    let p = p.0.as_ref().ok()?;
    p.metadata
        .deletion_timestamp
        .is_none()
        .then(|| p.spec.clone())
}

/// kube-runtime's entry point for Stages.
pub async fn reconcile_stage(
    obj: Arc<DeserializeGuard<Stage>>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = stage(obj, &ctx).await;
    count(&ctx, "Stage", started, &result);
    result
}

async fn stage(obj: Arc<DeserializeGuard<Stage>>, ctx: &Arc<Ctx>) -> Result<Action, Error> {
    let ctx = ctx.clone();
    let stage = match &obj.0 {
        Ok(stage) => stage,
        Err(invalid) => return invalid_object::<Stage>(invalid, &ctx).await,
    };
    let namespace = stage.namespace().unwrap_or_default();
    let key = key_of(stage);
    let api: Api<Stage> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, Arc::new(stage.clone()), |event| async {
        match event {
            Finalizer::Apply(stage) => {
                let requeue = apply_stage(&stage, &ctx).await?;
                Ok(schedule(&ctx, &key, requeue))
            }
            Finalizer::Cleanup(stage) => {
                cleanup(&ctx, &namespace, Scope::Stage(&stage.name_any())).await?;
                publish(
                    &ctx,
                    &stage.object_ref(&()),
                    EventType::Normal,
                    "Deleted",
                    "containers and proxy host removed".into(),
                )
                .await;
                Ok(schedule(&ctx, &key, Requeue::WaitForChange))
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Converges one Stage; says when to look again.
async fn apply_stage(stage: &Stage, ctx: &Ctx) -> Result<Requeue, Error> {
    let namespace = stage.namespace().unwrap_or_default();
    let name = stage.name_any();
    let generation = stage.metadata.generation.unwrap_or(1);
    let sink = &ctx.engine.sink;
    let before = sink
        .written
        .recall(&namespace, &name, stage.status.as_ref());
    let reference = stage.object_ref(&());

    let project = match ctx.projects.get(&namespace, &stage.spec.project_ref).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(stage = %format!("{namespace}/{name}"), error = %e, "cannot read the Project");
            return Ok(Requeue::Retry);
        }
    };
    let observed = match ctx
        .containers
        .for_stage(&ctx.engine.runtime, &namespace, &name)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let mut status = before.clone().unwrap_or_default();
            if report_unreachable(&mut status, generation, &e) {
                sink.write(&namespace, &name, &status).await?;
                publish(
                    ctx,
                    &reference,
                    EventType::Warning,
                    e.reason().as_str(),
                    e.to_string(),
                )
                .await;
            }
            return Ok(Requeue::Retry);
        }
    };
    let input = StageInput {
        key: StageKey {
            namespace: namespace.clone(),
            project: stage.spec.project_ref.clone(),
            stage: name.clone(),
        },
        generation,
        stage: &stage.spec,
        project: project.as_ref(),
    };
    let reconciled = ctx
        .engine
        .reconcile(&input, &observed, before.clone().unwrap_or_default())
        .await;
    ctx.containers.touched(&namespace, &name);
    if status::differs(before.as_ref(), &reconciled.status) {
        sink.write(&namespace, &name, &reconciled.status).await?;
        for (type_, reason, note) in transitions(before.as_ref(), &reconciled.status) {
            publish(ctx, &reference, type_, reason, note).await;
        }
    }
    Ok(reconciled.requeue)
}

/// What a person should hear about, from one status to the next.
pub fn transitions(
    before: Option<&StageStatus>,
    after: &StageStatus,
) -> Vec<(EventType, &'static str, String)> {
    let mut out = Vec::new();
    let was = |f: fn(&StageStatus) -> Option<String>| before.and_then(f);
    let ready = |s: &StageStatus| {
        conditions::ready(&s.conditions).map(|c| (c.status.clone(), c.reason.clone()))
    };
    let phase = after.phase.unwrap_or_default();
    let message = after.message.clone().unwrap_or_default();
    let phase_changed = before.and_then(|b| b.phase) != after.phase;
    let current_tag = |s: &StageStatus| {
        s.current
            .as_ref()
            .map(|c| format!("{}@{}", c.tag, c.digest))
    };
    match phase {
        Phase::Deploying if phase_changed => out.push((
            EventType::Normal,
            "Deploying",
            format!(
                "deploying {}",
                after.desired_tag.clone().unwrap_or_default()
            ),
        )),
        Phase::Healthy if was(current_tag) != current_tag(after) => {
            out.push((EventType::Normal, "Deployed", message.clone()))
        }
        Phase::RolledBack if phase_changed => {
            out.push((EventType::Warning, "RolledBack", message.clone()))
        }
        Phase::Failed if phase_changed => {
            out.push((EventType::Warning, "DeployFailed", message.clone()))
        }
        _ => {}
    }
    // A Ready=False for a new reason that the phase did not already tell.
    if let Some((status, reason)) = ready(after)
        && status == "False"
        && before.and_then(ready) != Some((status.clone(), reason.clone()))
        && out.is_empty()
        && !matches!(reason.as_str(), "Deploying" | "NoTag")
    {
        out.push((EventType::Warning, static_reason(&reason), message));
    }
    out
}

/// Event reasons are the engine's fixed words ([`Reason`]); anything else (a status written by
/// another version) is generic.
fn static_reason(reason: &str) -> &'static str {
    Reason::parse(reason).map_or("NotReady", Reason::as_str)
}

/// kube-runtime's entry point for Projects: their `Ready` says whether the Project's own part of
/// the spec is valid; deleting one removes what its Stages ran.
pub async fn reconcile_project(
    obj: Arc<DeserializeGuard<Project>>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = project(obj, &ctx).await;
    count(&ctx, "Project", started, &result);
    result
}

async fn project(obj: Arc<DeserializeGuard<Project>>, ctx: &Arc<Ctx>) -> Result<Action, Error> {
    let ctx = ctx.clone();
    let project = match &obj.0 {
        Ok(p) => p,
        Err(invalid) => return invalid_object::<Project>(invalid, &ctx).await,
    };
    let namespace = project.namespace().unwrap_or_default();
    let key = key_of(project);
    let api: Api<Project> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, Arc::new(project.clone()), |event| async {
        match event {
            Finalizer::Apply(p) => {
                let generation = p.metadata.generation.unwrap_or(1);
                let mut status = p.status.clone().unwrap_or_default();
                let problem = assess_project(&p.name_any(), &p.spec, generation, &mut status);
                if p.status.as_ref() != Some(&status) {
                    status::apply(&api, "Project", &p.name_any(), &status).await?;
                    if let Some(message) = problem {
                        publish(
                            &ctx,
                            &p.object_ref(&()),
                            EventType::Warning,
                            "InvalidSpec",
                            message,
                        )
                        .await;
                    }
                }
                Ok(schedule(&ctx, &key, Requeue::WaitForChange))
            }
            Finalizer::Cleanup(p) => {
                cleanup(&ctx, &namespace, Scope::Project(&p.name_any())).await?;
                Ok(schedule(&ctx, &key, Requeue::WaitForChange))
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// What a cleanup removes: one Stage's containers and proxy host, or those of every Stage of a
/// Project.
enum Scope<'a> {
    Stage(&'a str),
    Project(&'a str),
}

/// Removes containers (and proxy hosts) by their ownership labels: needs nothing from the spec,
/// so it works for objects that never deployed or no longer parse. Docker being away fails it,
/// and the finalizer keeps the object until a retry succeeds.
async fn cleanup(ctx: &Ctx, namespace: &str, scope: Scope<'_>) -> Result<(), Error> {
    let engine = &ctx.engine;
    let instance = engine.instance.as_str();
    let (label, value) = match scope {
        Scope::Stage(name) => (labels::STAGE, name),
        Scope::Project(name) => (labels::PROJECT, name),
    };
    let filter = [
        (labels::INSTANCE, instance),
        (labels::NAMESPACE, namespace),
        (label, value),
    ];
    let containers = engine.runtime.list_managed(&filter).await?;
    let mut stages: Vec<String> = containers
        .iter()
        .filter_map(|c| c.label(labels::STAGE).map(str::to_string))
        .collect();
    match scope {
        Scope::Stage(name) => stages.push(name.to_string()),
        // Stages without a container (never deployed, or removed) may still have a proxy host.
        Scope::Project(project) => {
            let api: Api<DeserializeGuard<Stage>> = Api::namespaced(ctx.client.clone(), namespace);
            let listed = api.list(&kube::api::ListParams::default()).await?;
            stages.extend(listed.items.iter().filter_map(|s| {
                let s = s.0.as_ref().ok()?;
                (s.spec.project_ref == project).then(|| s.name_any())
            }));
        }
    }
    stages.sort();
    stages.dedup();
    // The route goes first: a container removed while nginx still sends it requests answers 502.
    let mut unrouted = false;
    for stage in &stages {
        let owner = Owner {
            instance: instance.to_string(),
            namespace: namespace.to_string(),
            stage: stage.clone(),
        };
        unrouted |= engine.proxy.remove(&owner).await?;
    }
    if unrouted && !containers.is_empty() {
        // NPM answers before nginx has reloaded; requests in flight finish meanwhile.
        tokio::time::sleep(crate::engine::proxy::ROUTE_DRAIN).await;
    }
    for c in &containers {
        tracing::info!(container = %c.name, "removing the container of a deleted resource");
        engine.runtime.remove(&c.id).await?;
    }
    for stage in &stages {
        match scope {
            // Gone for good: nothing to remember about it.
            Scope::Stage(_) => {
                ctx.containers.forget(namespace, stage);
                engine.sink.written.forget(namespace, stage);
            }
            Scope::Project(_) => ctx.containers.touched(namespace, stage),
        }
    }
    Ok(())
}

/// Containers (and proxy hosts) of this instance whose Stage is gone although its finalizer never
/// ran (a namespace force-deleted, a finalizer removed by hand, a Stage deleted while no
/// controller ran and then force-finalized): removed once the Stage has been gone for the orphan
/// grace ([`orphan_grace`]: one resync period, at least 5 s, as in standalone mode) and the API
/// server confirms it does not exist. Looks once per resync; only namespaces this controller
/// watches are judged.
pub async fn collect_orphans(
    ctx: Arc<Ctx>,
    stages: Store<DeserializeGuard<Stage>>,
    namespace: Option<String>,
    mut quit: tokio::sync::watch::Receiver<bool>,
) {
    // The same grace and clock as standalone mode's; the drain is cleanup's own (inline).
    let mut orphans = Orphans::new(orphan_grace(ctx.resync), crate::engine::proxy::ROUTE_DRAIN);
    loop {
        tokio::select! {
            _ = quit.wait_for(|q| *q) => return,
            _ = tokio::time::sleep(ctx.resync) => {}
        }
        if !super::ingest::listed(&stages) {
            continue;
        }
        let now = tokio::time::Instant::now();
        let known: std::collections::BTreeSet<(String, String)> = stages
            .state()
            .iter()
            .map(|s| {
                let meta = s.meta();
                (
                    meta.namespace.clone().unwrap_or_default(),
                    meta.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        orphans.stages(&known, now);
        let instance = ctx.engine.instance.clone();
        let mut suspects: Vec<(String, String)> =
            match ctx.containers.all(&ctx.engine.runtime).await {
                Ok(by_stage) => by_stage.keys().cloned().collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "orphan collection: cannot list containers");
                    continue;
                }
            };
        match ctx.engine.proxy.owned(&instance).await {
            Ok(owners) => suspects.extend(owners.into_iter().map(|o| (o.namespace, o.stage))),
            Err(e) => tracing::debug!(error = %e, "orphan collection: cannot list proxy hosts"),
        }
        suspects.sort();
        suspects.dedup();
        suspects.retain(|(ns, name)| {
            namespace.as_ref().is_none_or(|n| n == ns)
                && stages.get(&ObjectRef::new(name).within(ns)).is_none()
        });
        for (ns, name) in suspects {
            let key = (ns.clone(), name.clone());
            if !orphans.gone(&key, now) {
                continue;
            }
            let api: Api<DeserializeGuard<Stage>> = Api::namespaced(ctx.client.clone(), &ns);
            if !matches!(api.get_opt(&name).await, Ok(None)) {
                continue;
            }
            tracing::info!(stage = %format!("{ns}/{name}"), "removing the containers and proxy host of a Stage that no longer exists");
            match cleanup(&ctx, &ns, Scope::Stage(&name)).await {
                Ok(()) => {
                    orphans.forget(&key);
                    ctx.containers.forget(&ns, &name);
                }
                Err(e) => {
                    tracing::warn!(stage = %format!("{ns}/{name}"), error = %e, "cannot remove orphans")
                }
            }
        }
    }
}

/// An object the API server accepted but this version cannot read (the CRD's schema is looser
/// than the controller, or the object predates a CRD change): say so on the object and wait for
/// an edit. Deleting it still cleans up, by labels.
async fn invalid_object<K>(invalid: &InvalidObject, ctx: &Ctx) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let meta = &invalid.metadata;
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let kind = K::kind(&()).to_string();
    // Guarded: the answers of these calls are the same unreadable object.
    let api: Api<DeserializeGuard<K>> = Api::namespaced(ctx.client.clone(), &namespace);
    let has_finalizer = meta.finalizers.iter().flatten().any(|f| f == FINALIZER);
    if meta.deletion_timestamp.is_some() {
        if has_finalizer {
            let scope = if kind == "Stage" {
                Scope::Stage(&name)
            } else {
                Scope::Project(&name)
            };
            cleanup(ctx, &namespace, scope).await?;
            remove_finalizer(&api, meta).await?;
        }
        return Ok(Action::await_change());
    }
    let (located, existing) = locate::<K>(&ctx.client, &namespace, &name).await;
    let message = format!(
        "cannot read this {kind}: {}",
        located.unwrap_or_else(|| invalid.error.clone())
    );
    tracing::warn!(object = %format!("{namespace}/{name}"), error = %invalid.error, "invalid object");
    // The rest of the status stays: it still describes what runs (and what to roll back to).
    let mut status = match existing {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    status.remove("latest");
    let before = status.clone();
    let mut conds: Vec<crate::api::Condition> = status
        .get("conditions")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    conditions::set(
        &mut conds,
        READY,
        false,
        "InvalidSpec",
        &message,
        meta.generation,
    );
    status.insert("conditions".into(), serde_json::json!(conds));
    status.insert(
        "observedGeneration".into(),
        serde_json::json!(meta.generation),
    );
    if kind == "Stage" {
        status.insert("message".into(), serde_json::json!(message));
    }
    if status == before {
        return Ok(Action::await_change());
    }
    status::apply(&api, &kind, &name, &status).await?;
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(K::api_version(&()).to_string()),
        kind: Some(kind),
        name: Some(name),
        namespace: Some(namespace),
        uid: meta.uid.clone(),
        ..Default::default()
    };
    publish(ctx, &reference, EventType::Warning, "InvalidSpec", message).await;
    Ok(Action::await_change())
}

/// The unreadable field, as a path (`spec.healthCheck.intervalSeconds: …`), and the object's
/// current status, read again from the API server: the watch's own error does not say where.
async fn locate<K>(
    client: &Client,
    namespace: &str,
    name: &str,
) -> (Option<String>, serde_json::Value)
where
    K: Resource<DynamicType = ()> + serde::de::DeserializeOwned,
{
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &kube::core::ApiResource::erase::<K>(&()),
    );
    let Ok(object) = api.get(name).await else {
        return (None, serde_json::Value::Null);
    };
    let status = object.data.get("status").cloned().unwrap_or_default();
    let Ok(value) = serde_json::to_value(object) else {
        return (None, status);
    };
    match serde_path_to_error::deserialize::<_, K>(value) {
        Ok(_) => (None, status),
        Err(e) => (Some(format!("{}: {}", e.path(), e.inner())), status),
    }
}

/// Removes our finalizer from an object we cannot parse (kube's finalizer helper needs a typed
/// object), guarded by the resource version it was read at.
async fn remove_finalizer<K>(
    api: &Api<K>,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let kept: Vec<&String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != FINALIZER)
        .collect();
    let patch = serde_json::json!({
        "metadata": {"finalizers": kept, "resourceVersion": meta.resource_version},
    });
    api.patch(
        meta.name.as_deref().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Publishes an event; a failure to do so is logged, never fails the reconcile.
async fn publish(
    ctx: &Ctx,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let mut note = note;
    if note.len() > 1000 {
        let cut = (0..=1000)
            .rev()
            .find(|i| note.is_char_boundary(*i))
            .unwrap_or(0);
        note.truncate(cut);
    }
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, reason, "cannot publish an event");
    }
}

/// `kind/namespace/name`: a Stage and a Project of the same name keep apart schedules.
fn key_of<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// The next look at `key` after an outcome, by the engine's backoff policy (the same as
/// standalone mode's): the resync period when converged, 1 s doubling to 60 s on transient
/// trouble, only a change when the spec cannot work.
fn schedule(ctx: &Ctx, key: &str, requeue: Requeue) -> Action {
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    let backoff = failures.entry(key.to_string()).or_default();
    let next = backoff.after(requeue, ctx.resync);
    if backoff.is_idle() {
        failures.remove(key);
    }
    next.map_or_else(Action::await_change, Action::requeue)
}

/// kube-runtime's error policy: errors are API trouble (a conflict, the server away) or a
/// cleanup that could not finish (Docker away): retry with backoff.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Ctx>,
) -> Action {
    let key = key_of(obj.as_ref());
    tracing::warn!(object = %key, category = error.category(), error = %error, "reconcile failed; retrying");
    schedule(&ctx, &key, Requeue::Retry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Deployed;

    fn status(phase: Phase, tag: &str, ready: (bool, &str)) -> StageStatus {
        let mut s = StageStatus {
            phase: Some(phase),
            desired_tag: Some(tag.into()),
            message: Some(format!("{tag} says hi")),
            current: Some(Deployed {
                tag: tag.into(),
                digest: "sha256:1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        conditions::set(&mut s.conditions, READY, ready.0, ready.1, "m", Some(1));
        s
    }

    #[test]
    fn transitions_say_what_happened_once() {
        let healthy = status(Phase::Healthy, "1.0", (true, "Healthy"));
        let deploying = status(Phase::Deploying, "1.1", (false, "Deploying"));
        let reasons = |b: Option<&StageStatus>, a: &StageStatus| {
            transitions(b, a)
                .into_iter()
                .map(|(_, r, _)| r)
                .collect::<Vec<_>>()
        };
        assert_eq!(reasons(Some(&healthy), &deploying), ["Deploying"]);
        assert_eq!(reasons(None, &healthy), ["Deployed"]);
        assert!(
            reasons(Some(&healthy), &healthy).is_empty(),
            "steady: no event"
        );
        let rolled = status(Phase::RolledBack, "1.0", (false, "Unhealthy"));
        assert_eq!(reasons(Some(&deploying), &rolled), ["RolledBack"]);
        let unreachable = status(Phase::Healthy, "1.0", (false, "DockerUnreachable"));
        assert_eq!(reasons(Some(&healthy), &unreachable), ["DockerUnreachable"]);
        assert!(reasons(Some(&unreachable), &unreachable).is_empty());
        let odd = status(Phase::Healthy, "1.0", (false, "SomethingNew"));
        assert_eq!(reasons(Some(&healthy), &odd), ["NotReady"]);
    }
}
