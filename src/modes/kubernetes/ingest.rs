//! Webhooks in Kubernetes mode. Every replica answers them (leader or not): watch caches of
//! Projects, Stages and the controller's Secrets are the listener's index, and a recorded push
//! becomes the Stage's `status.latest`, written with a field manager of its own. The leader's
//! Stage controller sees that status change and deploys.
//!
//! A write is conditional on the resource version the tag was compared against: two replicas
//! recording different tags for one Stage cannot overwrite a better tag with a worse one (the
//! loser gets 409 Conflict, reads again and compares again). Senders are answered after the API
//! server accepted the writes, so a 2xx means the push is recorded in etcd.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tokio::sync::mpsc;

use super::secrets::ClusterSecrets;
use super::status;
use crate::api::{Project, SeenTag, Stage, StageSpec};
use crate::engine::tags::CompiledPolicy;
use crate::ingest::recorder::{self, Answer, Book, BookError, Job};
use crate::ingest::{Catalog, Ledger, ProjectRef, StageRef};
use crate::sources::webhook::server::{Index, IndexError};

/// Annotation on auto-created Projects and Stages: the image they were made for.
const CREATED_FOR: &str = "tinyforge.dev/created-for";
/// Key of the URL secret inside its Secret.
pub const URL_SECRET_KEY: &str = "url-secret";
/// Delivery ids remembered per replica (redeliveries come within hours; a redelivery that
/// reaches another replica finds its tag already recorded and changes nothing).
const REMEMBERED: usize = 100_000;
const MAX_BATCH: usize = 256;

/// Watch caches of what the listener and the recorder read.
pub struct ClusterIndex {
    pub projects: Store<DeserializeGuard<Project>>,
    pub stages: Store<DeserializeGuard<Stage>>,
    pub secrets: ClusterSecrets,
    /// Moves on every Project or Secret event: the listener then re-reads its cache.
    version: Arc<AtomicI64>,
    url_secret: String,
}

impl ClusterIndex {
    /// The Projects in the watch cache (a cache read cannot fail).
    fn cached_projects(&self) -> Vec<ProjectRef> {
        self.projects
            .state()
            .iter()
            .filter_map(|p| project_ref(p))
            .collect()
    }

    /// Starts the watches (they retry with backoff, e.g. until the CRDs are installed) and
    /// returns at once; [`Index::ready`] says when they have listed.
    pub fn start(
        client: Client,
        watch_namespace: Option<&str>,
        controller_namespace: &str,
        url_secret: &str,
    ) -> Arc<ClusterIndex> {
        let version = Arc::new(AtomicI64::new(0));
        let projects = reflect::<DeserializeGuard<Project>>(
            scoped(&client, watch_namespace),
            Some(version.clone()),
        );
        let stages = reflect::<DeserializeGuard<Stage>>(scoped(&client, watch_namespace), None);
        let secrets = reflect::<Secret>(
            Api::namespaced(client.clone(), controller_namespace),
            Some(version.clone()),
        );
        Arc::new(ClusterIndex {
            projects,
            stages,
            secrets: ClusterSecrets {
                store: secrets,
                namespace: controller_namespace.to_string(),
            },
            version,
            url_secret: url_secret.to_string(),
        })
    }

    fn stage(&self, namespace: &str, name: &str) -> Option<Arc<DeserializeGuard<Stage>>> {
        self.stages.get(&ObjectRef::new(name).within(namespace))
    }
}

/// Whether a watch cache has completed its first listing.
pub fn listed<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures::FutureExt as _;
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

/// An Api over one namespace, or all.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn reflect<K>(api: Api<K>, version: Option<Arc<AtomicI64>>) -> Store<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    // Field ownership is the API server's business: not kept in memory for every object.
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut K| o.meta_mut().managed_fields = None);
    let stream = reflector::reflector(writer, events).touched_objects();
    tokio::spawn(async move {
        stream
            .for_each(|event| {
                match event {
                    Ok(_) => {
                        if let Some(v) = &version {
                            v.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => tracing::warn!(kind = %K::kind(&Default::default()), error = %e, "watch failed; retrying"),
                }
                std::future::ready(())
            })
            .await
    });
    reader
}

impl Index for ClusterIndex {
    fn version(&self) -> Result<i64, IndexError> {
        Ok(self.version.load(Ordering::Relaxed))
    }

    fn url_secret(&self) -> Result<Option<String>, IndexError> {
        let Some(secret) = self
            .secrets
            .store
            .get(&ObjectRef::new(&self.url_secret).within(&self.secrets.namespace))
        else {
            return Ok(None);
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(URL_SECRET_KEY))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string());
        Ok(value.filter(|v| !v.is_empty()))
    }

    fn projects(&self) -> Result<Vec<ProjectRef>, IndexError> {
        Ok(self.cached_projects())
    }

    fn ready(&self) -> Result<(), IndexError> {
        if !listed(&self.projects) || !listed(&self.stages) {
            return Err(IndexError::NotReady(
                "waiting for the Project and Stage watches (are the CRDs installed?)".into(),
            ));
        }
        if !listed(&self.secrets.store) {
            return Err(IndexError::NotReady(format!(
                "waiting for the Secrets of {}",
                self.secrets.namespace
            )));
        }
        match self.url_secret()? {
            Some(_) => Ok(()),
            None => Err(IndexError::NotReady(format!(
                "waiting for Secret {}/{}",
                self.secrets.namespace, self.url_secret
            ))),
        }
    }
}

fn project_ref(p: &DeserializeGuard<Project>) -> Option<ProjectRef> {
    let p = p.0.as_ref().ok()?;
    Some(ProjectRef {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        spec: p.spec.clone(),
    })
}

/// Makes the URL secret's Secret when it is missing: on first start, and again within seconds
/// after someone deletes it (that is how the URL is rotated). Runs until the process ends.
pub async fn keep_url_secret(client: Client, index: Arc<ClusterIndex>) {
    let api: Api<Secret> = Api::namespaced(client, &index.secrets.namespace);
    loop {
        if listed(&index.secrets.store) && matches!(index.url_secret(), Ok(None)) {
            let mut secret = Secret::default();
            secret.metadata.name = Some(index.url_secret.clone());
            secret.metadata.labels = Some(BTreeMap::from([(
                crate::api::labels::MANAGED_BY.to_string(),
                crate::api::labels::MANAGED_BY_VALUE.to_string(),
            )]));
            secret.string_data = Some(BTreeMap::from([(
                URL_SECRET_KEY.to_string(),
                uuid::Uuid::new_v4().to_string(),
            )]));
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    tracing::info!(secret = %index.url_secret, "created the webhook URL secret")
                }
                // Another replica was first, or it exists without the key: leave it be.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => tracing::warn!(error = %e, "cannot create the webhook URL secret"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// Where auto-created Projects go, when that is on.
#[derive(Clone, Debug)]
pub struct AutoCreate {
    pub namespace: String,
    /// Which images may be auto-created, and how many (counted by the annotation).
    pub policy: crate::ingest::AutoCreatePolicy,
}

/// Starts the recorder: deliveries arriving together are planned together against the caches,
/// then their status writes are made, then every sender is answered.
pub fn spawn_recorder(
    client: Client,
    index: Arc<ClusterIndex>,
    auto_create: Option<AutoCreate>,
) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
    let seen = Arc::new(Mutex::new(Remembered::default()));
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH
                && let Ok(job) = rx.try_recv()
            {
                jobs.push(job);
            }
            let book = Plan {
                index: &index,
                seen: &seen,
                auto_create: auto_create.as_ref(),
                claims: RefCell::default(),
                claimed: RefCell::default(),
                latest: RefCell::default(),
                created: RefCell::default(),
                touched: RefCell::default(),
            };
            let mut catalog = None;
            // What each delivery claimed and which Stages it wrote to: it succeeds or fails on
            // its own writes only.
            let mut planned: Vec<Planned> = Vec::new();
            for job in &jobs {
                let answer = recorder::process(&book, job, &mut catalog);
                let claims = std::mem::take(&mut *book.claims.borrow_mut());
                let touched = std::mem::take(&mut *book.touched.borrow_mut());
                book.claimed.borrow_mut().extend(claims.iter().cloned());
                planned.push((answer, claims, touched));
            }
            let writes = book.into_writes();
            let failed = commit(&client, &index, &writes).await;
            let mut remembered = Vec::new();
            for (job, (answer, claims, touched)) in jobs.into_iter().zip(planned) {
                let answer = match touched.iter().find_map(|k| failed.get(k)) {
                    // The sender retries; nothing of it is remembered, so the retry counts.
                    Some(e) => Err(BookError::Unavailable(e.clone())),
                    None => {
                        remembered.extend(claims);
                        answer
                    }
                };
                let _ = job.respond.send(answer);
            }
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            for key in remembered {
                seen.insert(key);
            }
        }
    });
    tx
}

/// A Stage, by (namespace, name).
type Key = (String, String);

/// One delivery planned: its answer if its writes succeed, the ids it claimed, the Stages it
/// writes to.
type Planned = (Result<Answer, BookError>, Vec<String>, Vec<Key>);

/// Delivery keys seen and when, oldest first out.
#[derive(Default)]
struct Remembered {
    set: HashMap<String, std::time::Instant>,
    order: VecDeque<String>,
}

impl Remembered {
    /// Seen — within `window` when one is given (a body hash absorbs retries only).
    fn contains(&self, key: &str, window: Option<std::time::Duration>) -> bool {
        self.set
            .get(key)
            .is_some_and(|at| window.is_none_or(|w| at.elapsed() < w))
    }

    fn insert(&mut self, key: String) {
        if self
            .set
            .insert(key.clone(), std::time::Instant::now())
            .is_none()
        {
            self.order.push_back(key);
            while self.order.len() > REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// One batch's view: the caches, with the batch's own writes laid over them.
struct Plan<'a> {
    index: &'a ClusterIndex,
    seen: &'a Mutex<Remembered>,
    auto_create: Option<&'a AutoCreate>,
    /// Claimed by the delivery being planned.
    claims: RefCell<Vec<String>>,
    /// Claimed by the deliveries planned before it in this batch.
    claimed: RefCell<Vec<String>>,
    latest: RefCell<HashMap<Key, SeenTag>>,
    created: RefCell<Vec<(Project, Stage)>>,
    /// Stages the delivery being planned records on (or creates).
    touched: RefCell<Vec<Key>>,
}

/// What a batch wants written.
struct Writes {
    latest: HashMap<(String, String), SeenTag>,
    created: Vec<(Project, Stage)>,
    policies: HashMap<(String, String), Option<CompiledPolicy>>,
}

impl Plan<'_> {
    fn into_writes(self) -> Writes {
        let latest = self.latest.into_inner();
        let policies = latest
            .keys()
            .map(|(ns, name)| {
                let policy = self
                    .index
                    .stage(ns, name)
                    .and_then(|s| s.0.as_ref().ok().map(|s| s.spec.tag_policy.clone()))
                    .or_else(|| {
                        self.created.borrow().iter().find_map(|(_, s)| {
                            (s.metadata.name.as_deref() == Some(name))
                                .then(|| s.spec.tag_policy.clone())
                        })
                    })
                    .and_then(|p| CompiledPolicy::compile(p.as_ref()).ok());
                ((ns.clone(), name.clone()), policy)
            })
            .collect();
        Writes {
            latest,
            created: self.created.into_inner(),
            policies,
        }
    }
}

impl Ledger for Plan<'_> {
    type Error = BookError;

    fn latest(&self, namespace: &str, stage: &str) -> Result<Option<SeenTag>, BookError> {
        let key = (namespace.to_string(), stage.to_string());
        if let Some(seen) = self.latest.borrow().get(&key) {
            return Ok(Some(seen.clone()));
        }
        Ok(self.index.stage(namespace, stage).and_then(|s| {
            s.0.as_ref()
                .ok()
                .and_then(|s| s.status.as_ref()?.latest.clone())
        }))
    }

    fn record_latest(&self, namespace: &str, stage: &str, seen: &SeenTag) -> Result<(), BookError> {
        let key = (namespace.to_string(), stage.to_string());
        self.touched.borrow_mut().push(key.clone());
        self.latest.borrow_mut().insert(key, seen.clone());
        Ok(())
    }
}

impl Book for Plan<'_> {
    fn claim(
        &self,
        key: &str,
        _source: &str,
        window: Option<std::time::Duration>,
    ) -> Result<bool, BookError> {
        let mut claims = self.claims.borrow_mut();
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(key, window)
            || claims.iter().any(|c| c == key)
            || self.claimed.borrow().iter().any(|c| c == key)
        {
            return Ok(false);
        }
        claims.push(key.to_string());
        Ok(true)
    }

    fn catalog(&self) -> Result<Catalog, BookError> {
        let stages = self
            .index
            .stages
            .state()
            .iter()
            .filter_map(|s| {
                let s = s.0.as_ref().ok()?;
                Some(StageRef {
                    namespace: s.metadata.namespace.clone().unwrap_or_default(),
                    name: s.metadata.name.clone().unwrap_or_default(),
                    project: s.spec.project_ref.clone(),
                    policy: CompiledPolicy::compile(s.spec.tag_policy.as_ref()).ok(),
                })
            })
            .collect();
        Ok(Catalog {
            projects: self.index.cached_projects(),
            stages,
        })
    }

    fn refuses_auto_create(&self, repository: &str) -> Option<String> {
        let auto = self.auto_create?;
        if let Err(why) = auto.policy.admits(repository) {
            return Some(why);
        }
        let made = self
            .index
            .projects
            .state()
            .iter()
            .filter(|p| {
                p.0.as_ref().is_ok_and(|p| {
                    p.metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key(CREATED_FOR))
                })
            })
            .count()
            + self.created.borrow().len();
        (made >= auto.policy.max).then(|| {
            format!(
                "{made} Projects were auto-created already, the limit (--auto-create-max {}); \
                 delete some or raise the limit",
                auto.policy.max
            )
        })
    }

    fn auto_create(
        &self,
        catalog: &mut Catalog,
        repository: &str,
    ) -> Option<Result<ProjectRef, BookError>> {
        let namespace = self.auto_create?.namespace.clone();
        let spec = crate::ingest::auto_created_spec(repository);
        let base = crate::ingest::base_name(repository);
        let taken = |n: &str| {
            catalog
                .projects
                .iter()
                .any(|p| p.namespace == namespace && p.name == n)
                || catalog
                    .stages
                    .iter()
                    .any(|s| s.namespace == namespace && s.name == format!("{n}-dev"))
        };
        let name = crate::ingest::free_name(&base, taken);
        let mut project = Project::new(&name, spec.clone());
        project.metadata.namespace = Some(namespace.clone());
        let stage_name = format!("{name}-dev");
        let mut stage = Stage::new(
            &stage_name,
            StageSpec {
                project_ref: name.clone(),
                auto_deploy: true,
                ..Default::default()
            },
        );
        stage.metadata.namespace = Some(namespace.clone());
        for meta in [&mut project.metadata, &mut stage.metadata] {
            meta.annotations = Some(BTreeMap::from([(
                CREATED_FOR.to_string(),
                repository.to_string(),
            )]));
        }
        self.touched
            .borrow_mut()
            .push((namespace.clone(), stage_name.clone()));
        self.created.borrow_mut().push((project, stage));
        let created = ProjectRef {
            namespace: namespace.clone(),
            name: name.clone(),
            spec,
        };
        catalog.projects.push(created.clone());
        catalog.stages.push(StageRef {
            namespace,
            name: stage_name,
            project: name,
            policy: CompiledPolicy::compile(None).ok(),
        });
        Some(Ok(created))
    }
}

/// Delivery ids kept in `status.latest.recentDeliveries`: redeliveries come within hours, and
/// a Stage sees a few pushes a day.
const RECENT_DELIVERIES: usize = 32;

/// `seen` as written: with the delivery ids recorded on the Stage so far (the one it replaces
/// included), its own last, the oldest dropped.
fn remembering(existing: Option<&SeenTag>, seen: &SeenTag) -> SeenTag {
    let mut ids: Vec<String> = existing
        .map(|e| {
            let mut ids = e.recent_deliveries.clone();
            ids.extend(e.delivery_id.clone());
            ids
        })
        .unwrap_or_default();
    ids.extend(seen.delivery_id.clone());
    let mut unique: Vec<String> = Vec::new();
    for id in ids.into_iter().rev() {
        if !unique.contains(&id) {
            unique.push(id);
        }
    }
    unique.truncate(RECENT_DELIVERIES);
    unique.reverse();
    SeenTag {
        recent_deliveries: unique,
        ..seen.clone()
    }
}

/// How long one API call of the recorder may take: a hung connection must not hold every
/// sender behind it.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn bounded<T>(call: impl Future<Output = kube::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {}s", CALL_TIMEOUT.as_secs())),
    }
}

/// Makes a batch's writes: created Projects and Stages first, then each Stage's `latest`,
/// compared again against the Stage as the API server has it whenever another writer came
/// between. Returns the Stages whose writes failed, and why.
async fn commit(client: &Client, index: &ClusterIndex, writes: &Writes) -> HashMap<Key, String> {
    let mut failed = HashMap::new();
    for (project, stage) in &writes.created {
        let ns = project.metadata.namespace.clone().unwrap_or_default();
        let stage_name = stage.metadata.name.clone().unwrap_or_default();
        if let Err(e) = create(client, project, stage).await {
            tracing::warn!(error = %e, "cannot create a Project for a new image");
            failed.insert((ns, stage_name), e);
        } else {
            tracing::info!(project = %format!("{ns}/{}", project.metadata.name.as_deref().unwrap_or_default()), "created a Project for a new image");
        }
    }
    let mut pending = Vec::new();
    for ((ns, name), seen) in &writes.latest {
        if failed.contains_key(&(ns.clone(), name.clone())) {
            continue;
        }
        let policy = writes
            .policies
            .get(&(ns.clone(), name.clone()))
            .cloned()
            .flatten();
        pending.push(async move {
            let result = write_latest(client, index, ns, name, seen, policy).await;
            ((ns.clone(), name.clone()), result)
        });
    }
    let results: Vec<(Key, Result<(), String>)> = futures::stream::iter(pending)
        .buffer_unordered(16)
        .collect()
        .await;
    for (key, result) in results {
        if let Err(e) = result {
            tracing::warn!(stage = %format!("{}/{}", key.0, key.1), error = %e, "cannot record a pushed tag");
            failed.insert(key, e);
        }
    }
    failed
}

/// Creates an auto-created Project and its Stage. Either may exist already (another replica, a
/// retry): fine when it was made for the same image, an error otherwise, so a push never lands
/// on someone else's Stage.
async fn create(client: &Client, project: &Project, stage: &Stage) -> Result<(), String> {
    let ns = project.metadata.namespace.as_deref().unwrap_or_default();
    let mine = |meta: &kube::core::ObjectMeta| {
        meta.annotations.as_ref().and_then(|a| a.get(CREATED_FOR))
            == project
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CREATED_FOR))
    };
    let projects: Api<Project> = Api::namespaced(client.clone(), ns);
    let stages: Api<Stage> = Api::namespaced(client.clone(), ns);
    let project_name = project.metadata.name.as_deref().unwrap_or_default();
    let stage_name = stage.metadata.name.as_deref().unwrap_or_default();
    match bounded(projects.create(&PostParams::default(), project)).await {
        Ok(_) => {}
        Err(e)
            if e.contains("409") || e.contains("AlreadyExists") || e.contains("already exists") =>
        {
            let existing = bounded(projects.get(project_name)).await?;
            if !mine(&existing.metadata) {
                return Err(format!(
                    "Project {ns}/{project_name} exists and was not made for this image"
                ));
            }
        }
        Err(e) => return Err(format!("cannot create Project {ns}/{project_name}: {e}")),
    }
    match bounded(stages.create(&PostParams::default(), stage)).await {
        Ok(_) => Ok(()),
        Err(e)
            if e.contains("409") || e.contains("AlreadyExists") || e.contains("already exists") =>
        {
            let existing = bounded(stages.get(stage_name)).await?;
            if mine(&existing.metadata) {
                Ok(())
            } else {
                Err(format!(
                    "Stage {ns}/{stage_name} exists and was not made for this image"
                ))
            }
        }
        Err(e) => Err(format!("cannot create Stage {ns}/{stage_name}: {e}")),
    }
}

async fn write_latest(
    client: &Client,
    index: &ClusterIndex,
    namespace: &str,
    name: &str,
    seen: &SeenTag,
    policy: Option<CompiledPolicy>,
) -> Result<(), String> {
    let api: Api<Stage> = Api::namespaced(client.clone(), namespace);
    let shown = format!("Stage {namespace}/{name}");
    // The cache's view first; the API server's after a conflict (or when the cache lacks it).
    let mut current: Option<Stage> = index
        .stage(namespace, name)
        .and_then(|s| s.0.as_ref().ok().cloned());
    for _ in 0..5 {
        let stage = match current.take() {
            Some(s) => s,
            None => match bounded(api.get_opt(name)).await {
                Ok(Some(s)) => s,
                // Deleted since: nothing to record on.
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("cannot read {shown}: {e}")),
            },
        };
        let existing = stage.status.as_ref().and_then(|s| s.latest.as_ref());
        // The same delivery again (a redelivery that reached another replica, or came after a
        // restart): already recorded — as the latest, or before it (its fresh `seenAt` must not
        // put an older push back in front of a newer one).
        if existing.is_some_and(|e| {
            e == seen
                || seen.delivery_id.as_ref().is_some_and(|id| {
                    (e.delivery_id.as_ref() == Some(id) && e.tag == seen.tag)
                        || e.recent_deliveries.contains(id)
                })
        }) {
            return Ok(());
        }
        if let Some(policy) = &policy
            && existing.is_some()
            && !policy.is_better(seen, existing)
        {
            // Another writer recorded a tag the policy prefers meanwhile.
            return Ok(());
        }
        let version = stage.metadata.resource_version.clone().unwrap_or_default();
        let seen = remembering(existing, seen);
        match status::apply_latest(&api, name, &version, &seen).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(format!("cannot record the tag on {shown}: {e}")),
        }
    }
    Err(format!(
        "{shown} kept changing while recording the tag; retry"
    ))
}
