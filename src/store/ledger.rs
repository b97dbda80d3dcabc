//! The embedded store as the ingestion ledger: where standalone mode records what sources
//! announce. Implements `ingest`'s [`Ledger`] and [`Book`] on a SQLite transaction, runs the
//! group-commit loop (deliveries that arrive together share one transaction and one sync, each
//! sender answered only after it), and writes auto-created Projects into the manifest directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Kind, StateDb, StoreError, Tx};
use crate::api::{API_VERSION, SeenTag, StageSpec};
use crate::engine::tags::CompiledPolicy;
use crate::ingest::recorder::{Answer, Book, BookError, Job, process};
use crate::ingest::{
    AutoCreatePolicy, Catalog, Ledger, ProjectRef, StageRef, auto_created_spec, base_name,
    free_name,
};

/// Deliveries committed together at most.
const MAX_BATCH: usize = 256;

/// Delivery ids are kept this long (senders redeliver within hours).
const DELIVERY_RETENTION_S: i64 = 7 * 24 * 3600;

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
                        .collect::<Vec<Result<Answer, BookError>>>())
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
                    let e = BookError::from(e);
                    for job in jobs {
                        let _ = job.respond.send(Err(e.clone()));
                    }
                }
            }
        }
    });
    tx
}

/// A store failure fails the delivery (503, retried), never the batch.
impl From<StoreError> for BookError {
    fn from(e: StoreError) -> BookError {
        BookError::Unavailable(e.to_string())
    }
}

/// The embedded store's transaction, and the manifest directory auto-created Projects go to
/// with what may be created there.
struct StoreBook<'a, 't> {
    tx: &'a Tx<'t>,
    auto_create: Option<&'a (PathBuf, AutoCreatePolicy)>,
}

impl Ledger for StoreBook<'_, '_> {
    type Error = BookError;

    fn latest(&self, namespace: &str, stage: &str) -> Result<Option<SeenTag>, BookError> {
        Ok(self.tx.latest(namespace, stage)?)
    }

    fn record_latest(&self, namespace: &str, stage: &str, seen: &SeenTag) -> Result<(), BookError> {
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
    ) -> Result<bool, BookError> {
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

    fn catalog(&self) -> Result<Catalog, BookError> {
        Ok(Catalog::load(self.tx)?)
    }

    fn refuses_auto_create(&self, repository: &str) -> Option<String> {
        let (dir, policy) = self.auto_create?;
        if let Err(why) = policy.admits(repository) {
            return Some(why);
        }
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
        (made >= policy.max).then(|| {
            format!(
                "{made} Projects were auto-created already, the limit (--auto-create-max {}); \
                 edit or delete files under {}, or raise the limit",
                policy.max,
                dir.join("auto-created").display()
            )
        })
    }

    fn auto_create(
        &self,
        catalog: &mut Catalog,
        repository: &str,
    ) -> Option<Result<ProjectRef, BookError>> {
        let (dir, _) = self.auto_create?;
        Some(
            auto_create(self.tx, dir, catalog, repository)
                .map_err(|e| BookError::Unavailable(e.to_string())),
        )
    }
}

impl Catalog {
    pub fn load(tx: &Tx<'_>) -> Result<Catalog, StoreError> {
        let stages = tx
            .list(Kind::Stage)?
            .into_iter()
            .filter_map(|s| {
                let spec = serde_json::from_value::<StageSpec>(s.spec).ok()?;
                Some(StageRef {
                    policy: CompiledPolicy::compile(spec.tag_policy.as_ref()).ok(),
                    project: spec.project_ref,
                    namespace: s.namespace,
                    name: s.name,
                })
            })
            .collect();
        Ok(Catalog {
            projects: projects(tx)?,
            stages,
        })
    }
}

/// The Projects in the store.
pub fn projects(tx: &Tx<'_>) -> Result<Vec<ProjectRef>, StoreError> {
    Ok(tx
        .list(Kind::Project)?
        .into_iter()
        .filter_map(|p| {
            Some(ProjectRef {
                spec: serde_json::from_value(p.spec).ok()?,
                namespace: p.namespace,
                name: p.name,
            })
        })
        .collect())
}

impl Ledger for Tx<'_> {
    type Error = StoreError;

    fn latest(&self, namespace: &str, stage: &str) -> Result<Option<SeenTag>, StoreError> {
        Tx::latest(self, namespace, stage)
    }

    fn record_latest(
        &self,
        namespace: &str,
        stage: &str,
        seen: &SeenTag,
    ) -> Result<(), StoreError> {
        Tx::record_latest(self, namespace, stage, seen).map(drop)
    }
}

/// Creates a Project with a `dev` Stage (autoDeploy, any tag) for an image nobody uses yet: in
/// the store, and as a manifest file under `<manifests>/auto-created/` so the directory stays the
/// truth and the user can edit or delete it. Returns the new Project.
pub fn auto_create(
    tx: &Tx<'_>,
    manifests: &Path,
    catalog: &mut Catalog,
    repository: &str,
) -> Result<ProjectRef, AutoCreateError> {
    let base = base_name(repository);
    // Each auto-created Project gets a namespace of its own (named after it), so its `dev`
    // Stage can never take the place of a Stage someone else wrote.
    let dir = manifests.join("auto-created");
    let taken = |n: &str| {
        catalog.projects.iter().any(|p| p.namespace == n)
            || catalog.stages.iter().any(|s| s.namespace == n)
            || dir.join(format!("{n}.yaml")).exists()
    };
    let name = free_name(&base, taken);
    let spec = auto_created_spec(repository);
    let stage = StageSpec {
        project_ref: name.clone(),
        auto_deploy: true,
        ..Default::default()
    };
    let file: PathBuf = dir.join(format!("{name}.yaml"));
    let yaml = format!(
        "# Created by tiny-forge for the first push of {repository}: edit or delete freely.\n{}---\n{}",
        serde_saphyr::to_string(&serde_json::json!({
            "apiVersion": API_VERSION, "kind": "Project",
            "metadata": {"name": name, "namespace": name},
            "spec": spec,
        }))?,
        serde_saphyr::to_string(&serde_json::json!({
            "apiVersion": API_VERSION, "kind": "Stage",
            "metadata": {"name": "dev", "namespace": name},
            "spec": stage,
        }))?,
    );
    std::fs::create_dir_all(&dir).map_err(|e| AutoCreateError::Write(file.clone(), e))?;
    // Whole or not at all: the manifest sync may read the directory at any moment, and a file
    // it found empty would make it forget the rows written next. A hidden name is not read.
    let partial = dir.join(format!(".{name}.yaml.partial"));
    std::fs::write(&partial, yaml)
        .and_then(|()| std::fs::rename(&partial, &file))
        .map_err(|e| AutoCreateError::Write(file.clone(), e))?;
    let source = file.display().to_string();
    tx.upsert(Kind::Project, &name, &name, &spec, Some(&source))?;
    tx.upsert(Kind::Stage, &name, "dev", &stage, Some(&source))?;
    let created = ProjectRef {
        namespace: name.clone(),
        name: name.clone(),
        spec,
    };
    catalog.projects.push(created.clone());
    catalog.stages.push(StageRef {
        namespace: name.clone(),
        name: "dev".into(),
        project: name,
        policy: CompiledPolicy::compile(None).ok(),
    });
    Ok(created)
}

#[derive(Debug, thiserror::Error)]
pub enum AutoCreateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("cannot render the manifest: {0}")]
    Render(#[from] serde_saphyr::SerializeError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{Push, Verdict, for_image, record};

    fn record_for(db: &StateDb, reference: &str) -> Vec<Verdict> {
        let push = Push::parse(reference, "cli").unwrap();
        db.batch(|tx| {
            let c = Catalog::load(tx)?;
            record(
                tx,
                &c.stages,
                &for_image(&c.projects, &push.repository),
                &push,
            )
        })
        .unwrap()
    }

    #[test]
    fn a_push_reaches_only_stages_whose_policy_prefers_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let project = serde_json::json!({"image": "docker.io/library/demo"});
        db.upsert(Kind::Project, "default", "demo", &project, None)
            .unwrap();
        db.upsert(
            Kind::Project,
            "default",
            "other",
            &serde_json::json!({"image": "other"}),
            None,
        )
        .unwrap();
        let semver = serde_json::json!({"projectRef": "demo", "tagPolicy": {"semver": ">=1.0.0"}});
        db.upsert(Kind::Stage, "default", "staging", &semver, None)
            .unwrap();
        let exact = serde_json::json!({"projectRef": "demo", "tagPolicy": {"exact": "main"}});
        db.upsert(Kind::Stage, "default", "dev", &exact, None)
            .unwrap();
        let unrelated = serde_json::json!({"projectRef": "other"});
        db.upsert(Kind::Stage, "default", "x", &unrelated, None)
            .unwrap();

        let verdicts = record_for(&db, "demo:1.1.0");
        assert_eq!(verdicts.len(), 2, "{verdicts:?}");
        let by = |name: &str| verdicts.iter().find(|v| v.stage == name).unwrap().clone();
        assert_eq!(by("staging").ignored, None);
        assert!(by("dev").ignored.unwrap().contains("not accepted"));
        assert_eq!(
            db.stage_status("default", "staging")
                .unwrap()
                .latest
                .unwrap()
                .tag,
            "1.1.0"
        );

        // An older version does not replace a newer one; a pre-release is not followed.
        assert!(
            record_for(&db, "demo:1.0.5")
                .iter()
                .all(|v| v.ignored.is_some())
        );
        record_for(&db, "demo:1.2.0-broken");
        assert_eq!(
            db.stage_status("default", "staging")
                .unwrap()
                .latest
                .unwrap()
                .tag,
            "1.1.0"
        );
        assert!(record_for(&db, "nothing:1").is_empty());
    }

    #[test]
    fn auto_create_writes_a_manifest_and_the_store_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state")).unwrap();
        let manifests = dir.path().join("m");
        // A user's own `default/dev` Stage must survive any number of auto-creations.
        db.upsert(
            Kind::Stage,
            "default",
            "dev",
            &serde_json::json!({"projectRef": "web"}),
            None,
        )
        .unwrap();
        let created = db
            .batch(|tx| {
                let mut c = Catalog::load(tx)?;
                let p = auto_create(tx, &manifests, &mut c, "127.0.0.1:5000/Team/My_App").map_err(
                    |e| match e {
                        AutoCreateError::Store(s) => s,
                        other => panic!("{other}"),
                    },
                )?;
                record(
                    tx,
                    &c.stages,
                    &[&p],
                    &Push::parse("127.0.0.1:5000/Team/My_App:1.0", "registry").unwrap(),
                )
                .map(|v| (p, v))
            })
            .unwrap();
        assert_eq!(created.0.name, "my-app");
        assert_eq!(created.1.len(), 1);
        assert_eq!(created.1[0].ignored, None);
        let m = crate::store::load_dir(&manifests).unwrap();
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        assert_eq!(
            m.projects[0].resource.spec.image,
            "127.0.0.1:5000/Team/My_App"
        );
        assert!(m.stages[0].resource.spec.auto_deploy);
        assert_eq!(
            m.stages[0].resource.metadata.namespace.as_deref(),
            Some("my-app")
        );
        let users_dev = db.list(Kind::Stage).unwrap();
        let users_dev = users_dev.iter().find(|s| s.namespace == "default").unwrap();
        assert_eq!(users_dev.spec["projectRef"], "web", "untouched");
        assert_eq!(users_dev.generation, 1);
        // A second unknown image gets its own namespace too.
        let second = db
            .batch(|tx| {
                let mut c = Catalog::load(tx)?;
                Ok(
                    auto_create(tx, &manifests, &mut c, "127.0.0.1:5000/team/my-app")
                        .map_err(|e| e.to_string()),
                )
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            (second.namespace.as_str(), second.name.as_str()),
            ("my-app-2", "my-app-2")
        );
        assert_eq!(
            db.stage_status("my-app", "dev")
                .unwrap()
                .latest
                .unwrap()
                .tag,
            "1.0"
        );
    }
}
