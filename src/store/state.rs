//! The standalone mode's embedded store (SQLite, WAL, synchronous=FULL): the last accepted spec
//! of every resource with its generation, and its status. Several processes may open it at once
//! (`tiny-forge run` writes while `tiny-forge get` reads).
//!
//! `status.latest` lives in a column of its own: it belongs to whoever records pushes (webhooks,
//! the CLI), the rest of the status to the reconciler, so neither overwrites the other.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::api::{ProjectStatus, SeenTag, StageStatus};
use crate::engine::conditions::now;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state store {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// Kinds stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Project,
    Stage,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Project => "Project",
            Kind::Stage => "Stage",
        }
    }
}

/// A resource as stored: spec (JSON), bookkeeping metadata and status.
#[derive(Clone, Debug)]
pub struct Stored {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub created: String,
    pub source: Option<String>,
    pub spec: serde_json::Value,
    pub status: serde_json::Value,
}

/// The embedded store. Cheap calls (a few ms with fsync); callers may use it from async code.
pub struct StateDb {
    conn: Mutex<Connection>,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    created TEXT NOT NULL,
    source TEXT,
    spec TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    status TEXT,
    latest TEXT,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS manifest_errors (
    seq INTEGER PRIMARY KEY,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

impl StateDb {
    /// Opens (creating) `state.db` in `dir`.
    pub fn open(dir: &Path) -> Result<StateDb, StoreError> {
        let path = dir.join("state.db");
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            message: format!("cannot create the state directory: {e}"),
        })?;
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // A webhook is answered only once what it said is on disk: FULL syncs the WAL on commit.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(StateDb {
            conn: Mutex::new(conn),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn).map_err(|source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// Records the current spec of a resource; the generation moves only when the spec does.
    /// Returns the generation.
    pub fn upsert<S: Serialize>(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        spec: &S,
        source: Option<&str>,
    ) -> Result<i64, StoreError> {
        let spec = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let hash = hex(&Sha256::digest(spec.as_bytes()));
        self.with(|c| {
            let tx = c.transaction()?;
            let existing: Option<(i64, String)> = tx
                .query_row(
                    "SELECT generation, spec_hash FROM resources WHERE kind=?1 AND namespace=?2 AND name=?3",
                    params![kind.as_str(), namespace, name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let generation = match existing {
                Some((g, h)) if h == hash => {
                    tx.execute(
                        "UPDATE resources SET source=?4 WHERE kind=?1 AND namespace=?2 AND name=?3 AND source IS NOT ?4",
                        params![kind.as_str(), namespace, name, source],
                    )?;
                    g
                }
                Some((g, _)) => {
                    tx.execute(
                        "UPDATE resources SET generation=?4, spec=?5, spec_hash=?6, source=?7 WHERE kind=?1 AND namespace=?2 AND name=?3",
                        params![kind.as_str(), namespace, name, g + 1, spec, hash, source],
                    )?;
                    g + 1
                }
                None => {
                    let uid = uuid_like(&format!("{}/{namespace}/{name}/{}", kind.as_str(), now()));
                    tx.execute(
                        "INSERT INTO resources (kind, namespace, name, uid, generation, created, source, spec, spec_hash) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7, ?8)",
                        params![kind.as_str(), namespace, name, uid, now(), source, spec, hash],
                    )?;
                    1
                }
            };
            tx.commit()?;
            Ok(generation)
        })
    }

    /// Forgets a resource and its status.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM resources WHERE kind=?1 AND namespace=?2 AND name=?3",
                params![kind.as_str(), namespace, name],
            )
            .map(|_| ())
        })
    }

    /// Every stored resource of a kind, sorted by namespace and name, status merged.
    pub fn list(&self, kind: Kind) -> Result<Vec<Stored>, StoreError> {
        let rows = self.with(|c| {
            let mut q = c.prepare(
                "SELECT namespace, name, uid, generation, created, source, spec, status, latest FROM resources WHERE kind=?1 ORDER BY namespace, name",
            )?;
            let rows = q
                .query_map(params![kind.as_str()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, Option<String>>(7)?,
                        r.get::<_, Option<String>>(8)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        rows.into_iter()
            .map(
                |(namespace, name, uid, generation, created, source, spec, status, latest)| {
                    let mut status: serde_json::Value = match status {
                        Some(s) => self.parse(&s)?,
                        None => serde_json::json!({}),
                    };
                    if let (Some(latest), Some(obj)) = (latest, status.as_object_mut()) {
                        obj.insert("latest".into(), self.parse(&latest)?);
                    }
                    Ok(Stored {
                        kind: kind.as_str().to_string(),
                        namespace,
                        name,
                        uid,
                        generation,
                        created,
                        source,
                        spec: self.parse(&spec)?,
                        status,
                    })
                },
            )
            .collect()
    }

    /// A Stage's status, `latest` included; default when none was written.
    pub fn stage_status(&self, namespace: &str, name: &str) -> Result<StageStatus, StoreError> {
        let (status, latest): (Option<String>, Option<String>) = self
            .with(|c| {
                c.query_row(
                    "SELECT status, latest FROM resources WHERE kind='Stage' AND namespace=?1 AND name=?2",
                    params![namespace, name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
            })?
            .unwrap_or_default();
        let mut out: StageStatus = match status {
            Some(s) => self.parse(&s)?,
            None => StageStatus::default(),
        };
        out.latest = latest.map(|l| self.parse(&l)).transpose()?;
        Ok(out)
    }

    /// Writes the reconciler's part of a Stage's status (everything but `latest`).
    pub fn save_stage_status(
        &self,
        namespace: &str,
        name: &str,
        status: &StageStatus,
    ) -> Result<(), StoreError> {
        let mut own = status.clone();
        own.latest = None;
        self.set_status("Stage", namespace, name, &own)
    }

    pub fn save_project_status(
        &self,
        namespace: &str,
        name: &str,
        status: &ProjectStatus,
    ) -> Result<(), StoreError> {
        self.set_status("Project", namespace, name, status)
    }

    fn set_status<T: Serialize>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        status: &T,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(status).unwrap_or_default();
        self.with(|c| {
            c.execute(
                "UPDATE resources SET status=?4 WHERE kind=?1 AND namespace=?2 AND name=?3",
                params![kind, namespace, name, json],
            )
            .map(|_| ())
        })
    }

    /// Records a pushed tag as a Stage's `status.latest`. False when the Stage is unknown.
    pub fn record_latest(
        &self,
        namespace: &str,
        name: &str,
        seen: &SeenTag,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(seen).unwrap_or_default();
        self.with(|c| {
            c.execute(
                "UPDATE resources SET latest=?3 WHERE kind='Stage' AND namespace=?1 AND name=?2",
                params![namespace, name, json],
            )
            .map(|n| n > 0)
        })
    }

    /// The project status, default when none.
    pub fn project_status(&self, namespace: &str, name: &str) -> Result<ProjectStatus, StoreError> {
        let status: Option<String> = self
            .with(|c| {
                c.query_row(
                    "SELECT status FROM resources WHERE kind='Project' AND namespace=?1 AND name=?2",
                    params![namespace, name],
                    |r| r.get(0),
                )
                .optional()
            })?
            .flatten();
        status
            .map(|s| self.parse(&s))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Replaces the list of current manifest problems (shown by `tiny-forge get`).
    pub fn set_manifest_errors(&self, errors: &[String]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM manifest_errors", [])?;
            for e in errors {
                tx.execute("INSERT INTO manifest_errors (message) VALUES (?1)", [e])?;
            }
            tx.commit()
        })
    }

    pub fn manifest_errors(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut q = c.prepare("SELECT message FROM manifest_errors ORDER BY seq")?;
            q.query_map([], |r| r.get(0))?.collect()
        })
    }

    /// A small key/value space (the webhook secret lives here in later releases).
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.query_row("SELECT value FROM meta WHERE key=?1", [key], |r| r.get(0))
                .optional()
        })
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                [key, value],
            )
            .map(|_| ())
        })
    }

    /// SQLite's change counter as seen by this connection: moves when another process commits.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        self.with(|c| c.query_row("PRAGMA data_version", [], |r| r.get(0)))
    }

    fn parse<T: DeserializeOwned>(&self, text: &str) -> Result<T, StoreError> {
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            message: format!("unreadable record: {e}"),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A UUID-shaped id derived from a seed (stable for the row's life; not a security token).
fn uuid_like(seed: &str) -> String {
    let h = hex(&Sha256::digest(seed.as_bytes()));
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Phase;

    #[test]
    fn generation_moves_only_with_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let spec = serde_json::json!({"projectRef": "a"});
        assert_eq!(
            db.upsert(Kind::Stage, "default", "s", &spec, None).unwrap(),
            1
        );
        assert_eq!(
            db.upsert(Kind::Stage, "default", "s", &spec, Some("f"))
                .unwrap(),
            1
        );
        let changed = serde_json::json!({"projectRef": "b"});
        assert_eq!(
            db.upsert(Kind::Stage, "default", "s", &changed, None)
                .unwrap(),
            2
        );
    }

    #[test]
    fn latest_and_reconciler_status_do_not_overwrite_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        db.upsert(Kind::Stage, "default", "s", &serde_json::json!({}), None)
            .unwrap();
        let seen = SeenTag {
            tag: "1.1".into(),
            source: "cli".into(),
            seen_at: now(),
            ..Default::default()
        };
        assert!(db.record_latest("default", "s", &seen).unwrap());
        let status = StageStatus {
            phase: Some(Phase::Healthy),
            ..Default::default()
        };
        db.save_stage_status("default", "s", &status).unwrap();
        let back = db.stage_status("default", "s").unwrap();
        assert_eq!(back.phase, Some(Phase::Healthy));
        assert_eq!(back.latest.unwrap().tag, "1.1");
        assert!(!db.record_latest("default", "missing", &seen).unwrap());
        // A second process sees the committed state.
        let other = StateDb::open(dir.path()).unwrap();
        assert_eq!(
            other.list(Kind::Stage).unwrap()[0].status["phase"],
            "Healthy"
        );
    }
}
