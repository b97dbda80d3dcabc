//! Build records in the embedded store: the queue (a request is a `Queued` row, written in the
//! same transaction that claims the webhook delivery, so an acknowledged push is never lost) and
//! a bounded history per Project. Logs are files beside the store (`sources::build`).

use rusqlite::{OptionalExtension, params};

use super::{StateDb, StoreError, Tx};
use crate::engine::build::BuildState;
use crate::engine::conditions::now;

/// Finished builds kept per Project; older ones (and their logs) go.
pub const HISTORY: usize = 20;

/// One build, as `tiny-forge builds` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildRecord {
    pub id: i64,
    pub namespace: String,
    pub project: String,
    pub sha: String,
    /// Branch (or what `tiny-forge build --ref` named).
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// `github`, `gitlab`, … (a webhook), `cli`, `restart`.
    pub trigger: String,
    #[serde(skip)]
    pub settings_hash: String,
    #[serde(serialize_with = "state_str")]
    pub state: BuildState,
    pub queued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_ms: Option<i64>,
    /// `repository:tag` built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The first error line, for a build that did not succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Builds shown in the Project's status.
pub const IN_STATUS: usize = 5;

impl BuildRecord {
    pub fn summary(&self) -> crate::api::BuildSummary {
        crate::api::BuildSummary {
            id: self.id,
            commit: self.sha.clone(),
            git_ref: self.git_ref.clone(),
            trigger: self.trigger.clone(),
            state: self.state.as_str().to_string(),
            queued_at: self.queued_at.clone(),
            finished_at: self.finished_at.clone(),
            fetch_ms: self.fetch_ms,
            build_ms: self.build_ms,
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            error: self.error.clone(),
        }
    }
}

fn state_str<S: serde::Serializer>(s: &BuildState, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.as_str())
}

/// What became of a build request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requested {
    /// Queued as build `id`; `superseded`: builds of the same ref it replaces, queued or running
    /// (the build loop stops a running one it finds cancelled).
    Queued { id: i64, superseded: Vec<i64> },
    /// That commit, with these settings, was built (or is queued or building) already.
    Known { id: i64, state: BuildState },
}

/// A build to queue.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub namespace: &'a str,
    pub project: &'a str,
    pub sha: &'a str,
    pub git_ref: &'a str,
    pub trigger: &'a str,
    pub settings_hash: &'a str,
    /// By hand (`tiny-forge build`): built even when the commit was built before.
    pub force: bool,
}

const COLUMNS: &str = "id, namespace, project, sha, git_ref, trigger, settings_hash, state, \
                       queued_at, started_at, finished_at, fetch_ms, build_ms, image, image_id, error";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BuildRecord> {
    let state: String = r.get(7)?;
    Ok(BuildRecord {
        id: r.get(0)?,
        namespace: r.get(1)?,
        project: r.get(2)?,
        sha: r.get(3)?,
        git_ref: r.get(4)?,
        trigger: r.get(5)?,
        settings_hash: r.get(6)?,
        // A state written by a later version reads as failed rather than failing the listing.
        state: BuildState::parse(&state).unwrap_or(BuildState::Failed),
        queued_at: r.get(8)?,
        started_at: r.get(9)?,
        finished_at: r.get(10)?,
        fetch_ms: r.get(11)?,
        build_ms: r.get(12)?,
        image: r.get(13)?,
        image_id: r.get(14)?,
        error: r.get(15)?,
    })
}

/// Where the default branch of a repository is remembered once the builder learnt it.
fn default_branch_key(url: &str) -> String {
    format!("build-default-branch:{url}")
}

/// A Git event for `project` (with `spec.build`) as the webhook recorder sees it: queued, or
/// why not. In the recorder's transaction, so the push is on disk before it is answered.
pub fn ask(
    tx: &Tx<'_>,
    project: &crate::ingest::ProjectRef,
    event: &crate::ingest::GitEvent,
    source: &str,
) -> Result<crate::ingest::recorder::BuildAsk, StoreError> {
    use crate::ingest::recorder::BuildAsk;
    let Some(build) = &project.spec.build else {
        return Ok(BuildAsk::Ignored("the Project has no build".into()));
    };
    let wrong = crate::engine::build::validate(build);
    if !wrong.is_empty() {
        return Ok(BuildAsk::Ignored(format!(
            "spec.build is invalid: {}",
            wrong.join("; ")
        )));
    }
    let default = tx.default_branch(&build.repository)?;
    let branch = match crate::engine::build::requested_branch(
        build,
        event.kind,
        event.branch.as_deref(),
        default.as_deref(),
    ) {
        Ok(branch) => branch,
        Err(why) => return Ok(BuildAsk::Ignored(why)),
    };
    if !crate::engine::build::is_full_sha(&event.sha) {
        return Ok(BuildAsk::Ignored(format!(
            "{:?} is not a full commit id",
            event.sha
        )));
    }
    let sha7 = &event.sha[..7];
    let name = format!("{}/{}", project.namespace, project.name);
    Ok(
        match tx.request_build(&Request {
            namespace: &project.namespace,
            project: &project.name,
            sha: &event.sha,
            git_ref: branch,
            trigger: source,
            settings_hash: &crate::engine::build::settings_hash(&project.spec),
            force: false,
        })? {
            Requested::Queued { id, .. } => BuildAsk::Queued(format!("{name}#{id} {sha7}")),
            Requested::Known { id, state } => BuildAsk::Ignored(format!(
                "commit {sha7} is build #{id} already ({}); it is built again only when the \
                 build settings or the commit change",
                state.as_str()
            )),
        },
    )
}

impl Tx<'_> {
    /// The default branch of `url`, once a build learnt it.
    pub fn default_branch(&self, url: &str) -> Result<Option<String>, StoreError> {
        self.raw()
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![format!("setting:{}", default_branch_key(url))],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    /// Queues a build unless that commit was built with these settings already (whatever the
    /// outcome: a commit that failed is not retried until the spec or the commit changes). A
    /// newer request for the same ref cancels the builds of it queued or running: only the
    /// newest commit of a branch is worth building.
    pub fn request_build(&self, req: &Request<'_>) -> Result<Requested, StoreError> {
        let tx = self.raw();
        if !req.force {
            let known = tx
                .query_row(
                    "SELECT id, state FROM builds WHERE namespace = ?1 AND project = ?2 \
                     AND sha = ?3 AND settings_hash = ?4 AND state != 'Cancelled' \
                     ORDER BY id DESC LIMIT 1",
                    params![req.namespace, req.project, req.sha, req.settings_hash],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                )
                .optional()
                .map_err(|e| self.error(e))?;
            if let Some((id, state)) = known {
                return Ok(Requested::Known {
                    id,
                    state: BuildState::parse(&state).unwrap_or(BuildState::Failed),
                });
            }
        }
        let superseded: Vec<i64> = {
            let mut q = tx
                .prepare(
                    "SELECT id FROM builds WHERE namespace = ?1 AND project = ?2 AND git_ref = ?3 \
                     AND state IN ('Queued', 'Fetching', 'Building')",
                )
                .map_err(|e| self.error(e))?;
            q.query_map(params![req.namespace, req.project, req.git_ref], |r| {
                r.get(0)
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| self.error(e))?
        };
        let sha7 = req.sha.get(..7).unwrap_or(req.sha);
        for id in &superseded {
            tx.execute(
                "UPDATE builds SET state = 'Cancelled', finished_at = ?2, error = ?3 WHERE id = ?1",
                params![id, now(), format!("superseded by a newer push ({sha7})")],
            )
            .map_err(|e| self.error(e))?;
        }
        tx.execute(
            "INSERT INTO builds (namespace, project, sha, git_ref, trigger, settings_hash, state, \
             queued_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'Queued', ?7)",
            params![
                req.namespace,
                req.project,
                req.sha,
                req.git_ref,
                req.trigger,
                req.settings_hash,
                now()
            ],
        )
        .map_err(|e| self.error(e))?;
        Ok(Requested::Queued {
            id: tx.last_insert_rowid(),
            superseded,
        })
    }
}

impl StateDb {
    /// Remembers the default branch of `url` (the webhook recorder then answers pushes to other
    /// branches at once).
    pub fn set_default_branch(&self, url: &str, branch: &str) -> Result<(), StoreError> {
        self.set_setting(&default_branch_key(url), branch)
    }

    /// See [`Tx::default_branch`].
    pub fn default_branch(&self, url: &str) -> Result<Option<String>, StoreError> {
        self.read(|tx| tx.default_branch(url))
    }

    /// See [`Tx::request_build`].
    pub fn request_build(&self, req: &Request<'_>) -> Result<Requested, StoreError> {
        self.batch(|tx| tx.request_build(req))
    }

    /// Builds of a Project (all Projects: None), newest first.
    pub fn builds(&self, project: Option<(&str, &str)>) -> Result<Vec<BuildRecord>, StoreError> {
        self.read(|tx| {
            let raw = tx.raw();
            let (sql, ns, name) = match project {
                Some((ns, name)) => (
                    format!(
                        "SELECT {COLUMNS} FROM builds WHERE namespace = ?1 AND project = ?2 \
                         ORDER BY id DESC"
                    ),
                    ns,
                    name,
                ),
                None => (
                    format!(
                        "SELECT {COLUMNS} FROM builds WHERE ?1 = ?1 AND ?2 = ?2 \
                         ORDER BY namespace, project, id DESC"
                    ),
                    "",
                    "",
                ),
            };
            let mut q = raw.prepare(&sql).map_err(|e| tx.error(e))?;
            q.query_map(params![ns, name], row)
                .and_then(|rows| rows.collect())
                .map_err(|e| tx.error(e))
        })
    }

    pub fn build(&self, id: i64) -> Result<Option<BuildRecord>, StoreError> {
        self.read(|tx| {
            tx.raw()
                .query_row(
                    &format!("SELECT {COLUMNS} FROM builds WHERE id = ?1"),
                    params![id],
                    row,
                )
                .optional()
                .map_err(|e| tx.error(e))
        })
    }

    /// Queued builds that may start now, oldest first: at most one per Project, none for a
    /// Project with a build running, and no more than `free` in all.
    pub fn startable_builds(&self, free: usize) -> Result<Vec<BuildRecord>, StoreError> {
        let queued = self.read(|tx| {
            let raw = tx.raw();
            let mut q = raw
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM builds b WHERE state = 'Queued' AND NOT EXISTS \
                     (SELECT 1 FROM builds r WHERE r.namespace = b.namespace AND \
                     r.project = b.project AND r.state IN ('Fetching', 'Building')) ORDER BY id"
                ))
                .map_err(|e| tx.error(e))?;
            q.query_map([], row)
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| tx.error(e))
        })?;
        let mut seen = std::collections::BTreeSet::new();
        Ok(queued
            .into_iter()
            .filter(|b| seen.insert((b.namespace.clone(), b.project.clone())))
            .take(free)
            .collect())
    }

    /// Builds waiting to start.
    pub fn queued_builds(&self) -> Result<usize, StoreError> {
        self.read(|tx| {
            tx.raw()
                .query_row(
                    "SELECT COUNT(*) FROM builds WHERE state = 'Queued'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as usize)
                .map_err(|e| tx.error(e))
        })
    }

    /// Moves build `id` from `from` to `to` (false: it was not in `from`, e.g. cancelled
    /// meanwhile), setting the given columns.
    pub fn advance_build(
        &self,
        id: i64,
        from: BuildState,
        to: BuildState,
        update: &BuildUpdate,
    ) -> Result<bool, StoreError> {
        self.batch(|tx| {
            let n = tx
                .raw()
                .execute(
                    "UPDATE builds SET state = ?3, \
                     started_at = COALESCE(?4, started_at), finished_at = COALESCE(?5, finished_at), \
                     fetch_ms = COALESCE(?6, fetch_ms), build_ms = COALESCE(?7, build_ms), \
                     image = COALESCE(?8, image), image_id = COALESCE(?9, image_id), \
                     error = COALESCE(?10, error) WHERE id = ?1 AND state = ?2",
                    params![
                        id,
                        from.as_str(),
                        to.as_str(),
                        (from == BuildState::Queued).then(now),
                        to.is_terminal().then(now),
                        update.fetch_ms,
                        update.build_ms,
                        update.image,
                        update.image_id,
                        update.error,
                    ],
                )
                .map_err(|e| tx.error(e))?;
            Ok(n == 1)
        })
    }

    /// Builds left running by a process that stopped (a crash, a kill): each is reported
    /// interrupted and queued once more, unless it was itself such a retry.
    pub fn recover_builds(&self) -> Result<Vec<i64>, StoreError> {
        self.batch(|tx| {
            let raw = tx.raw();
            let running: Vec<BuildRecord> = {
                let mut q = raw
                    .prepare(&format!(
                        "SELECT {COLUMNS} FROM builds WHERE state IN ('Fetching', 'Building')"
                    ))
                    .map_err(|e| tx.error(e))?;
                q.query_map([], row)
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| tx.error(e))?
            };
            let mut requeued = Vec::new();
            for b in running {
                raw.execute(
                    "UPDATE builds SET state = 'Cancelled', finished_at = ?2, \
                     error = 'interrupted: tiny-forge stopped during the build' WHERE id = ?1",
                    params![b.id, now()],
                )
                .map_err(|e| tx.error(e))?;
                if b.trigger != "restart"
                    && let Requested::Queued { id, .. } = tx.request_build(&Request {
                        namespace: &b.namespace,
                        project: &b.project,
                        sha: &b.sha,
                        git_ref: &b.git_ref,
                        trigger: "restart",
                        settings_hash: &b.settings_hash,
                        force: true,
                    })?
                {
                    requeued.push(id);
                }
            }
            Ok(requeued)
        })
    }

    /// Forgets all but the newest [`HISTORY`] finished builds of a Project; returns the ids
    /// forgotten (their logs go too).
    pub fn prune_builds(&self, namespace: &str, project: &str) -> Result<Vec<i64>, StoreError> {
        self.batch(|tx| {
            let raw = tx.raw();
            let old: Vec<i64> = {
                let mut q = raw
                    .prepare(
                        "SELECT id FROM builds WHERE namespace = ?1 AND project = ?2 AND state IN \
                         ('Succeeded', 'Failed', 'Cancelled', 'TimedOut') ORDER BY id DESC \
                         LIMIT -1 OFFSET ?3",
                    )
                    .map_err(|e| tx.error(e))?;
                q.query_map(params![namespace, project, HISTORY as i64], |r| r.get(0))
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| tx.error(e))?
            };
            for id in &old {
                raw.execute("DELETE FROM builds WHERE id = ?1", params![id])
                    .map_err(|e| tx.error(e))?;
            }
            Ok(old)
        })
    }
}

/// Columns set by [`StateDb::advance_build`]; None leaves a column as it is.
#[derive(Clone, Debug, Default)]
pub struct BuildUpdate {
    pub fetch_ms: Option<i64>,
    pub build_ms: Option<i64>,
    pub image: Option<String>,
    pub image_id: Option<String>,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(sha: &'a str, git_ref: &'a str) -> Request<'a> {
        Request {
            namespace: "default",
            project: "web",
            sha,
            git_ref,
            trigger: "github",
            settings_hash: "h1",
            force: false,
        }
    }

    #[test]
    fn a_commit_builds_once_and_newer_pushes_supersede_queued_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let Requested::Queued { id: a, .. } = db.request_build(&req("aaa", "main")).unwrap() else {
            panic!("queued")
        };
        assert_eq!(
            db.request_build(&req("aaa", "main")).unwrap(),
            Requested::Known {
                id: a,
                state: BuildState::Queued
            }
        );
        let Requested::Queued { id: b, superseded } =
            db.request_build(&req("bbb", "main")).unwrap()
        else {
            panic!("queued")
        };
        assert_eq!(superseded, vec![a]);
        assert_eq!(db.build(a).unwrap().unwrap().state, BuildState::Cancelled);
        // Another branch queues beside it; one build per Project starts at a time.
        db.request_build(&req("ccc", "dev")).unwrap();
        let start = db.startable_builds(4).unwrap();
        assert_eq!(start.iter().map(|b| b.id).collect::<Vec<_>>(), vec![b]);
        assert!(
            db.advance_build(
                b,
                BuildState::Queued,
                BuildState::Fetching,
                &Default::default()
            )
            .unwrap()
        );
        assert!(db.startable_builds(4).unwrap().is_empty());
        // A failed commit is not retried with the same settings; new settings or by hand it is.
        db.advance_build(
            b,
            BuildState::Fetching,
            BuildState::Failed,
            &BuildUpdate {
                error: Some("boom".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            db.request_build(&req("bbb", "main")).unwrap(),
            Requested::Known {
                state: BuildState::Failed,
                ..
            }
        ));
        let mut changed = req("bbb", "main");
        changed.settings_hash = "h2";
        assert!(matches!(
            db.request_build(&changed).unwrap(),
            Requested::Queued { .. }
        ));
        let mut forced = req("bbb", "main");
        forced.force = true;
        assert!(matches!(
            db.request_build(&forced).unwrap(),
            Requested::Queued { .. }
        ));
    }

    #[test]
    fn a_newer_push_cancels_a_running_build_whose_end_then_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let Requested::Queued { id: a, .. } = db.request_build(&req("aaa", "main")).unwrap() else {
            panic!("queued")
        };
        db.advance_build(
            a,
            BuildState::Queued,
            BuildState::Building,
            &Default::default(),
        )
        .unwrap();
        let Requested::Queued { id: b, superseded } =
            db.request_build(&req("bbb", "main")).unwrap()
        else {
            panic!("queued")
        };
        assert_eq!(superseded, vec![a]);
        assert!(
            !db.advance_build(
                a,
                BuildState::Building,
                BuildState::Succeeded,
                &Default::default()
            )
            .unwrap(),
            "a cancelled build cannot succeed afterwards"
        );
        assert_eq!(db.build(a).unwrap().unwrap().state, BuildState::Cancelled);
        assert_eq!(
            db.startable_builds(1)
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            vec![b]
        );
    }

    #[test]
    fn interrupted_builds_are_retried_once_and_history_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let Requested::Queued { id, .. } = db.request_build(&req("aaa", "main")).unwrap() else {
            panic!("queued")
        };
        db.advance_build(
            id,
            BuildState::Queued,
            BuildState::Building,
            &Default::default(),
        )
        .unwrap();
        let again = db.recover_builds().unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(db.build(id).unwrap().unwrap().state, BuildState::Cancelled);
        db.advance_build(
            again[0],
            BuildState::Queued,
            BuildState::Building,
            &Default::default(),
        )
        .unwrap();
        assert!(
            db.recover_builds().unwrap().is_empty(),
            "a retry is not retried"
        );

        for i in 0..HISTORY + 5 {
            let sha = format!("s{i}");
            if let Requested::Queued { id, .. } = db.request_build(&req(&sha, "main")).unwrap() {
                db.advance_build(
                    id,
                    BuildState::Queued,
                    BuildState::Failed,
                    &Default::default(),
                )
                .unwrap();
            }
        }
        let gone = db.prune_builds("default", "web").unwrap();
        assert_eq!(gone.len(), 7);
        assert_eq!(db.builds(Some(("default", "web"))).unwrap().len(), HISTORY);
    }
}
