//! Durable recording of deliveries with group commit: deliveries that arrive together share one
//! transaction and one sync, and each sender is answered only after that commit. A delivery id
//! seen before changes nothing (redeliveries, registry retries).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Delivery, Parsed, Provider};
use crate::api::SeenTag;
use crate::ingest::{self, AutoCreatePolicy, Catalog, Ledger, ProjectRef, Push, Verdict};
use crate::store::{StateDb, StoreError, Tx};

/// Deliveries committed together at most.
const MAX_BATCH: usize = 256;
/// Delivery ids are kept this long (senders redeliver within hours).
const DELIVERY_RETENTION_S: i64 = 7 * 24 * 3600;
/// A delivery without a sender's id (Quay, Docker Hub, Harbor, the generic endpoint without
/// `Idempotency-Key`) is known by a hash of its body, and only for this long: enough to absorb
/// a sender's retries of the same request, short enough that the same tag pushed again later
/// (an identical body) is recorded again.
pub const RETRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// One authenticated delivery waiting to be recorded.
pub struct Job {
    pub provider: Provider,
    pub delivery: Delivery,
    /// The sender's delivery id, else a hash of the body.
    pub delivery_key: String,
    /// Projects (namespace, name) the delivery proved it may speak for.
    pub accepted: Vec<(String, String)>,
    pub respond: oneshot::Sender<Result<Answer, String>>,
}

/// What was recorded.
#[derive(Debug, Default)]
pub struct Answer {
    pub duplicate: bool,
    pub delivery_key: String,
    pub verdicts: Vec<Verdict>,
    /// Projects created for images nobody used yet.
    pub created: Vec<String>,
    /// Why (parts of) the delivery changed nothing.
    pub ignored: Option<String>,
}

/// Starts the recorder. `auto_create`: the manifest directory where Projects for unknown images
/// are written, or None to ignore unknown images.
/// `wake` is told after each commit that recorded something, so the controller acts at once.
pub fn spawn(
    db: Arc<StateDb>,
    auto_create: Option<PathBuf>,
    wake: mpsc::UnboundedSender<()>,
) -> mpsc::Sender<Job> {
    spawn_with(
        db,
        auto_create.map(|dir| (dir, AutoCreatePolicy::default())),
        wake,
    )
}

/// [`spawn`], with what may be auto-created (and how many) in that directory.
pub fn spawn_with(
    db: Arc<StateDb>,
    auto_create: Option<(PathBuf, AutoCreatePolicy)>,
    wake: mpsc::UnboundedSender<()>,
) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
    tokio::spawn(async move {
        let mut batches = 0u64;
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH
                && let Ok(job) = rx.try_recv()
            {
                jobs.push(job);
            }
            batches += 1;
            let prune = batches % 1000 == 1;
            let db = db.clone();
            let auto_create = auto_create.clone();
            // The commit syncs to disk: keep it off the async workers.
            let done = tokio::task::spawn_blocking(move || {
                let result = db.batch(|tx| {
                    if prune {
                        tx.prune_deliveries(DELIVERY_RETENTION_S)?;
                    }
                    // Each delivery in a savepoint of its own: a failing one is answered 503
                    // (its sender retries), the others still commit.
                    // Projects and Stages are read once per batch, not once per delivery.
                    let mut catalog = None;
                    Ok(jobs
                        .iter()
                        .map(|job| {
                            tx.attempt(|tx| {
                                let book = StoreBook {
                                    tx,
                                    auto_create: auto_create.as_ref(),
                                };
                                process(&book, job, &mut catalog)
                            })
                        })
                        .collect::<Vec<Result<Answer, String>>>())
                });
                (jobs, result)
            })
            .await;
            let (jobs, result) = match done {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(error = %e, "recorder task failed");
                    continue;
                }
            };
            match result {
                Ok(answers) => {
                    if answers
                        .iter()
                        .flatten()
                        .any(|a| !a.verdicts.is_empty() || !a.created.is_empty())
                    {
                        let _ = wake.send(());
                    }
                    for (job, answer) in jobs.into_iter().zip(answers) {
                        let _ = job.respond.send(answer);
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for job in jobs {
                        let _ = job.respond.send(Err(message.clone()));
                    }
                }
            }
        }
    });
    tx
}

impl From<StoreError> for String {
    fn from(e: StoreError) -> String {
        e.to_string()
    }
}

/// What recording needs of where it records: the embedded store here, the cluster in Kubernetes
/// mode (`crate::k8s::ingest`).
pub trait Book: Ledger<Error = String> {
    /// Marks a delivery key seen; false when it was seen before — within `window` when one is
    /// given (a body hash: [`RETRY_WINDOW`]), else within the retention of sender ids.
    fn claim(
        &self,
        key: &str,
        source: &str,
        window: Option<std::time::Duration>,
    ) -> Result<bool, String>;
    fn catalog(&self) -> Result<Catalog, String>;
    /// Whether a Project may be created for `repository` now (allow-list, cap), else why not.
    fn may_auto_create(&self, _repository: &str) -> Result<(), String> {
        Ok(())
    }
    /// Creates a Project (with a Stage) for an image nobody uses; None when that is off.
    fn auto_create(
        &self,
        catalog: &mut Catalog,
        repository: &str,
    ) -> Option<Result<ProjectRef, String>>;
}

/// The embedded store's transaction, and the manifest directory auto-created Projects go to
/// with what may be created there.
struct StoreBook<'a, 't> {
    tx: &'a Tx<'t>,
    auto_create: Option<&'a (PathBuf, AutoCreatePolicy)>,
}

impl Ledger for StoreBook<'_, '_> {
    type Error = String;

    fn latest(&self, namespace: &str, stage: &str) -> Result<Option<SeenTag>, String> {
        Ok(self.tx.latest(namespace, stage)?)
    }

    fn record_latest(&self, namespace: &str, stage: &str, seen: &SeenTag) -> Result<(), String> {
        self.tx
            .record_latest(namespace, stage, seen)
            .map(drop)
            .map_err(Into::into)
    }
}

impl Book for StoreBook<'_, '_> {
    fn claim(
        &self,
        key: &str,
        source: &str,
        window: Option<std::time::Duration>,
    ) -> Result<bool, String> {
        Ok(match window {
            None => self.tx.claim_delivery(key, source)?,
            Some(w) => self.tx.claim_retry(
                key,
                source,
                k8s_openapi::jiff::Timestamp::now().as_second(),
                w.as_secs() as i64,
            )?,
        })
    }

    fn catalog(&self) -> Result<Catalog, String> {
        Ok(Catalog::load(self.tx)?)
    }

    fn may_auto_create(&self, repository: &str) -> Result<(), String> {
        let Some((dir, policy)) = self.auto_create else {
            return Ok(());
        };
        policy.admits(repository)?;
        // The files are what the user sees and deletes: deleting one frees its place.
        let made = std::fs::read_dir(dir.join("auto-created"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        let name = e.file_name();
                        let name = name.to_string_lossy();
                        !name.starts_with('.') && name.ends_with(".yaml")
                    })
                    .count()
            })
            .unwrap_or(0);
        if made >= policy.max {
            return Err(format!(
                "{made} Projects were auto-created already, the limit (--auto-create-max {}); \
                 edit or delete files under {}, or raise the limit",
                policy.max,
                dir.join("auto-created").display()
            ));
        }
        Ok(())
    }

    fn auto_create(
        &self,
        catalog: &mut Catalog,
        repository: &str,
    ) -> Option<Result<ProjectRef, String>> {
        let (dir, _) = self.auto_create?;
        Some(ingest::auto_create(self.tx, dir, catalog, repository).map_err(|e| e.to_string()))
    }
}

/// Records one delivery in `book`: claims its id, matches its images or Git events to Projects,
/// offers the tags to their Stages.
pub fn process<B: Book>(
    book: &B,
    job: &Job,
    catalog: &mut Option<Catalog>,
) -> Result<Answer, String> {
    let source = job.provider.as_str();
    let mut answer = Answer {
        delivery_key: job.delivery_key.clone(),
        ..Default::default()
    };
    // The sender's id is remembered for days; a body hash only long enough for retries.
    let window = job.delivery.delivery_id.is_none().then_some(RETRY_WINDOW);
    let claim = |key: &str, window| book.claim(&format!("{source}:{key}"), source, window);
    let mut reasons: Vec<String> = Vec::new();
    match &job.delivery.parsed {
        Parsed::Ping => answer.ignored = Some("ping".into()),
        Parsed::Ignored(reason) => answer.ignored = Some(reason.clone()),
        Parsed::Images(images) => {
            // Registry notifications carry an id per event and are retried whole: each event
            // counts once. Other senders: one id per delivery.
            let fresh: Vec<_> = if images.iter().all(|i| i.event_id.is_some()) {
                let mut fresh = Vec::new();
                for i in images {
                    if claim(i.event_id.as_deref().unwrap_or_default(), None)? {
                        fresh.push(i);
                    }
                }
                fresh
            } else if claim(&job.delivery_key, window)? {
                images.iter().collect()
            } else {
                Vec::new()
            };
            if fresh.is_empty() {
                answer.duplicate = true;
                return Ok(answer);
            }
            let catalog = loaded(book, catalog)?;
            for image in fresh {
                let push = Push::from_image(image, source, job.delivery.delivery_id.as_deref());
                let users = ingest::for_image(&catalog.projects, &image.repository);
                let anyone = !users.is_empty();
                let mine: Vec<ProjectRef> = allowed(&users, &job.accepted)
                    .into_iter()
                    .cloned()
                    .collect();
                if !mine.is_empty() {
                    let mine: Vec<&ProjectRef> = mine.iter().collect();
                    answer
                        .verdicts
                        .extend(ingest::record(book, &catalog.stages, &mine, &push)?);
                } else if anyone {
                    reasons.push(format!(
                        "not authorised for the Projects using {}",
                        image.repository
                    ));
                } else if let Err(why) = book.may_auto_create(&image.repository) {
                    tracing::warn!(image = %image.repository, reason = %why, "no Project created for a new image");
                    reasons.push(format!("no Project uses {}: {why}", image.repository));
                } else if let Some(created) = book.auto_create(catalog, &image.repository) {
                    // A Project that cannot be created (a read-only manifests directory) is a
                    // reason, not a failure: the registry would retry a non-2xx forever and hold
                    // every later event behind it.
                    match created {
                        Ok(created) => {
                            tracing::info!(project = %created.name, image = %image.repository, "created a Project for a new image");
                            answer
                                .created
                                .push(format!("{}/{}", created.namespace, created.name));
                            answer.verdicts.extend(ingest::record(
                                book,
                                &catalog.stages,
                                &[&created],
                                &push,
                            )?);
                        }
                        Err(e) => {
                            tracing::error!(image = %image.repository, error = %e, "could not create a Project for a new image");
                            reasons.push(format!(
                                "no Project uses {} and creating one failed: {e}",
                                image.repository
                            ));
                        }
                    }
                } else {
                    reasons.push(format!("no Project uses {}", image.repository));
                }
            }
        }
        Parsed::Git(events) => {
            if !claim(&job.delivery_key, window)? {
                answer.duplicate = true;
                return Ok(answer);
            }
            let catalog = loaded(book, catalog)?;
            for event in events {
                let users = ingest::for_git(&catalog.projects, source, &event.repository);
                let mine = allowed(&users, &job.accepted);
                if mine.is_empty() {
                    reasons.push(format!("no Project has gitSource {}", event.repository));
                }
                for project in mine {
                    match ingest::git_tag(&project.spec, event) {
                        Ok(tag) => {
                            let push = Push {
                                repository: project.spec.image.clone(),
                                tag,
                                digest: None,
                                source: source.to_string(),
                                delivery_id: job.delivery.delivery_id.clone(),
                            };
                            answer.verdicts.extend(ingest::record(
                                book,
                                &catalog.stages,
                                &[project],
                                &push,
                            )?);
                        }
                        Err(reason) => reasons.push(format!("{}: {reason}", project.name)),
                    }
                }
            }
        }
    }
    reasons.extend(answer.verdicts.iter().filter_map(|v| {
        v.ignored
            .as_ref()
            .map(|r| format!("{}/{}: {r}", v.namespace, v.stage))
    }));
    if answer.ignored.is_none() && !reasons.is_empty() {
        answer.ignored = Some(reasons.join("; "));
    }
    Ok(answer)
}

/// The batch's catalog, read on first use.
fn loaded<'c, B: Book>(
    book: &B,
    catalog: &'c mut Option<Catalog>,
) -> Result<&'c mut Catalog, String> {
    if catalog.is_none() {
        *catalog = Some(book.catalog()?);
    }
    Ok(catalog.as_mut().expect("just loaded"))
}

/// The Projects of `users` this delivery may speak for: those it authenticated against, and any
/// without a webhook secret (the URL secret, already checked, is all they ask). The latter covers
/// Projects created after the listener looked — by an earlier tag of the same delivery, or by a
/// concurrent delivery for the same new image — so every tag counts.
fn allowed<'p>(users: &[&'p ProjectRef], accepted: &[(String, String)]) -> Vec<&'p ProjectRef> {
    users
        .iter()
        .copied()
        .filter(|p| {
            p.spec
                .webhook
                .as_ref()
                .is_none_or(|w| w.secret_ref.is_none())
                || accepted
                    .iter()
                    .any(|(ns, n)| *ns == p.namespace && *n == p.name)
        })
        .collect()
}
