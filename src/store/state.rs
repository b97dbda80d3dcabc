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

/// Settings share the `meta` table with the store's own counters, under a prefix of their own.
fn setting_key(key: &str) -> String {
    format!("setting:{key}")
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
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    received INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_received ON deliveries (received);
CREATE TABLE IF NOT EXISTS secrets (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (namespace, name, key)
);
CREATE TABLE IF NOT EXISTS builds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    project TEXT NOT NULL,
    sha TEXT NOT NULL,
    git_ref TEXT NOT NULL,
    trigger TEXT NOT NULL,
    settings_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    queued_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    fetch_ms INTEGER,
    build_ms INTEGER,
    image TEXT,
    image_id TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS builds_project ON builds (namespace, project, id);
CREATE INDEX IF NOT EXISTS builds_state ON builds (state, id);
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
        // Statements are prepared once per connection and kept (`prepare_cached`): a delivery
        // runs the same five, and parsing them again cost more than running them.
        conn.set_prepared_statement_cache_capacity(64);
        Ok(StateDb {
            conn: Mutex::new(conn),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one transaction, committed (and synced) when `f` succeeds. Several writes —
    /// a whole batch of webhook deliveries — cost one sync.
    pub fn batch<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transact(rusqlite::TransactionBehavior::Immediate, true, f)
    }

    /// Runs `f` in a read transaction: a consistent snapshot that never waits for writers.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transact(rusqlite::TransactionBehavior::Deferred, false, f)
    }

    fn transact<T>(
        &self,
        behavior: rusqlite::TransactionBehavior,
        commit: bool,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let sqlite = |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let tx = Tx {
            tx: conn.transaction_with_behavior(behavior).map_err(sqlite)?,
            path: &self.path,
        };
        let out = f(&tx)?;
        if commit {
            tx.tx.commit().map_err(sqlite)?;
        }
        Ok(out)
    }

    /// Records the current spec of a resource; the generation moves only when the spec does.
    pub fn upsert<S: Serialize>(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        spec: &S,
        source: Option<&str>,
    ) -> Result<i64, StoreError> {
        self.batch(|tx| tx.upsert(kind, namespace, name, spec, source))
    }

    /// Forgets a resource and its status.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), StoreError> {
        self.batch(|tx| tx.delete(kind, namespace, name))
    }

    /// Forgets a resource if it is still the one with `uid` (not re-created since). True when
    /// it was removed.
    pub fn delete_seen(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<bool, StoreError> {
        self.batch(|tx| tx.delete_seen(kind, namespace, name, uid))
    }

    /// Every stored resource of a kind, sorted by namespace and name, status merged.
    pub fn list(&self, kind: Kind) -> Result<Vec<Stored>, StoreError> {
        self.read(|tx| tx.list(kind))
    }

    /// A Stage's status, `latest` included; default when none was written.
    pub fn stage_status(&self, namespace: &str, name: &str) -> Result<StageStatus, StoreError> {
        self.read(|tx| tx.stage_status(namespace, name))
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
        self.batch(|tx| tx.set_status(Kind::Stage, namespace, name, &own))
    }

    pub fn save_project_status(
        &self,
        namespace: &str,
        name: &str,
        status: &ProjectStatus,
    ) -> Result<(), StoreError> {
        self.batch(|tx| tx.set_status(Kind::Project, namespace, name, status))
    }

    /// Records a pushed tag as a Stage's `status.latest`. False when the Stage is unknown.
    pub fn record_latest(
        &self,
        namespace: &str,
        name: &str,
        seen: &SeenTag,
    ) -> Result<bool, StoreError> {
        self.batch(|tx| tx.record_latest(namespace, name, seen))
    }

    /// The project status, default when none.
    pub fn project_status(&self, namespace: &str, name: &str) -> Result<ProjectStatus, StoreError> {
        self.read(|tx| tx.json_column(Kind::Project, namespace, name, "status"))
            .map(Option::unwrap_or_default)
    }

    /// Replaces the list of current manifest problems (shown by `tiny-forge get`).
    pub fn set_manifest_errors(&self, errors: &[String]) -> Result<(), StoreError> {
        self.batch(|tx| {
            tx.exec("DELETE FROM manifest_errors", [])?;
            for e in errors {
                tx.exec("INSERT INTO manifest_errors (message) VALUES (?1)", [e])?;
            }
            Ok(())
        })
    }

    pub fn manifest_errors(&self) -> Result<Vec<String>, StoreError> {
        self.read(|tx| {
            let mut q = tx
                .tx
                .prepare("SELECT message FROM manifest_errors ORDER BY seq")
                .map_err(|e| tx.sqlite(e))?;
            q.query_map([], |r| r.get(0))
                .and_then(Iterator::collect)
                .map_err(|e| tx.sqlite(e))
        })
    }

    /// A sealed secret, if stored.
    pub fn secret(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|tx| tx.secret(namespace, name, key))
    }

    /// Stores a sealed secret (replacing any).
    pub fn set_secret(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        self.batch(|tx| {
            tx.exec(
                "INSERT INTO secrets (namespace, name, key, sealed) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(namespace, name, key) DO UPDATE SET sealed=excluded.sealed",
                params![namespace, name, key, sealed],
            )?;
            tx.bump_catalog()
        })
    }

    /// A value the controller keeps for the other commands (e.g. where its listener is reached).
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|tx| {
            tx.tx
                .query_row(
                    "SELECT value FROM meta WHERE key = ?1",
                    params![setting_key(key)],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| tx.sqlite(e))
        })
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.batch(|tx| {
            tx.exec(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                params![setting_key(key), value],
            )
        })
    }

    /// SQLite's change counter as seen by this connection: moves when another process commits.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.prepare_cached("PRAGMA data_version")
            .and_then(|mut q| q.query_row([], |r| r.get(0)))
            .map_err(|source| StoreError::Sqlite {
                path: self.path.clone(),
                source,
            })
    }
}

/// One transaction on the store.
pub struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
    path: &'a Path,
}

impl Tx<'_> {
    /// The transaction itself, for the store's other tables (`builds.rs`).
    pub(super) fn raw(&self) -> &rusqlite::Transaction<'_> {
        &self.tx
    }

    pub(super) fn error(&self, source: rusqlite::Error) -> StoreError {
        self.sqlite(source)
    }

    fn sqlite(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> Result<(), StoreError> {
        self.run(sql, params).map(drop)
    }

    /// Runs a statement prepared once per connection; the number of rows it changed.
    fn run(&self, sql: &str, params: impl rusqlite::Params) -> Result<usize, StoreError> {
        self.tx
            .prepare_cached(sql)
            .and_then(|mut q| q.execute(params))
            .map_err(|e| self.sqlite(e))
    }

    /// [`rusqlite::Connection::query_row`] with a statement prepared once per connection.
    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        self.tx
            .prepare_cached(sql)
            .and_then(|mut q| q.query_row(params, f).optional())
            .map_err(|e| self.sqlite(e))
    }

    fn parse<T: DeserializeOwned>(&self, text: &str) -> Result<T, StoreError> {
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
            path: self.path.to_path_buf(),
            message: format!("unreadable record: {e}"),
        })
    }

    /// Runs `f` inside a savepoint: its writes are undone when it fails, the rest of the
    /// transaction stands (one bad delivery never takes a batch down with it).
    pub fn attempt<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, E>,
    ) -> Result<T, E> {
        self.exec("SAVEPOINT attempt", [])?;
        match f(self) {
            Ok(v) => {
                self.exec("RELEASE attempt", [])?;
                Ok(v)
            }
            Err(e) => {
                self.tx
                    .execute_batch("ROLLBACK TO attempt; RELEASE attempt")
                    .map_err(|e| self.sqlite(e))?;
                Err(e)
            }
        }
    }

    /// See [`StateDb::upsert`]. Returns the generation.
    pub fn upsert<S: Serialize>(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        spec: &S,
        source: Option<&str>,
    ) -> Result<i64, StoreError> {
        let spec = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
            path: self.path.to_path_buf(),
            message: e.to_string(),
        })?;
        let hash = hex(&Sha256::digest(spec.as_bytes()));
        let existing: Option<(i64, String)> = self
            .tx
            .query_row(
                "SELECT generation, spec_hash FROM resources WHERE kind=?1 AND namespace=?2 AND name=?3",
                params![kind.as_str(), namespace, name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.sqlite(e))?;
        match existing {
            Some((g, h)) if h == hash => {
                self.exec(
                    "UPDATE resources SET source=?4 WHERE kind=?1 AND namespace=?2 AND name=?3 AND source IS NOT ?4",
                    params![kind.as_str(), namespace, name, source],
                )?;
                Ok(g)
            }
            Some((g, _)) => {
                self.exec(
                    "UPDATE resources SET generation=?4, spec=?5, spec_hash=?6, source=?7 WHERE kind=?1 AND namespace=?2 AND name=?3",
                    params![kind.as_str(), namespace, name, g + 1, spec, hash, source],
                )?;
                self.bump_catalog()?;
                Ok(g + 1)
            }
            None => {
                let uid = uuid_like(&format!("{}/{namespace}/{name}/{}", kind.as_str(), now()));
                self.exec(
                    "INSERT INTO resources (kind, namespace, name, uid, generation, created, source, spec, spec_hash) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7, ?8)",
                    params![kind.as_str(), namespace, name, uid, now(), source, spec, hash],
                )?;
                self.bump_catalog()?;
                Ok(1)
            }
        }
    }

    /// See [`StateDb::delete_seen`].
    pub fn delete_seen(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute(
                "DELETE FROM resources WHERE kind=?1 AND namespace=?2 AND name=?3 AND uid=?4",
                params![kind.as_str(), namespace, name, uid],
            )
            .map_err(|e| self.sqlite(e))?;
        if n > 0 {
            self.bump_catalog()?;
        }
        Ok(n > 0)
    }

    /// A Project's status, default when none.
    pub fn project_status(&self, namespace: &str, name: &str) -> Result<ProjectStatus, StoreError> {
        self.json_column(Kind::Project, namespace, name, "status")
            .map(Option::unwrap_or_default)
    }

    pub fn save_project_status(
        &self,
        namespace: &str,
        name: &str,
        status: &ProjectStatus,
    ) -> Result<(), StoreError> {
        self.set_status(Kind::Project, namespace, name, status)
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM resources WHERE kind=?1 AND namespace=?2 AND name=?3",
            params![kind.as_str(), namespace, name],
        )?;
        self.bump_catalog()
    }

    /// Counts changes of specs and secrets, so readers that cache them (the webhook listener)
    /// reload on such a change only — not on every delivery recorded.
    fn bump_catalog(&self) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO meta (key, value) VALUES ('catalog', '1') ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            [],
        )
    }

    /// See [`Tx::bump_catalog`].
    pub fn catalog_version(&self) -> Result<i64, StoreError> {
        self.row(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'catalog'",
            [],
            |r| r.get(0),
        )
        .map(Option::unwrap_or_default)
    }

    pub fn list(&self, kind: Kind) -> Result<Vec<Stored>, StoreError> {
        let mut q = self
            .tx
            .prepare_cached(
                "SELECT namespace, name, uid, generation, created, source, spec, status, latest FROM resources WHERE kind=?1 ORDER BY namespace, name",
            )
            .map_err(|e| self.sqlite(e))?;
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            String,
            String,
            String,
            i64,
            String,
            Option<String>,
            String,
            Option<String>,
            Option<String>,
        )> = q
            .query_map(params![kind.as_str()], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .and_then(Iterator::collect)
            .map_err(|e| self.sqlite(e))?;
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

    pub fn stage_status(&self, namespace: &str, name: &str) -> Result<StageStatus, StoreError> {
        let (status, latest): (Option<String>, Option<String>) = self
            .tx
            .query_row(
                "SELECT status, latest FROM resources WHERE kind='Stage' AND namespace=?1 AND name=?2",
                params![namespace, name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.sqlite(e))?
            .unwrap_or_default();
        let mut out: StageStatus = match status {
            Some(s) => self.parse(&s)?,
            None => StageStatus::default(),
        };
        out.latest = latest.map(|l| self.parse(&l)).transpose()?;
        Ok(out)
    }

    fn set_status<T: Serialize>(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status: &T,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(status).unwrap_or_default();
        self.exec(
            "UPDATE resources SET status=?4 WHERE kind=?1 AND namespace=?2 AND name=?3",
            params![kind.as_str(), namespace, name, json],
        )
    }

    /// A Stage's `status.latest` alone.
    pub fn latest(&self, namespace: &str, name: &str) -> Result<Option<SeenTag>, StoreError> {
        self.json_column(Kind::Stage, namespace, name, "latest")
    }

    /// One JSON column (`status` or `latest`) of a resource, parsed; None when unset.
    fn json_column<T: DeserializeOwned>(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        column: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let sql = match column {
            "latest" => "SELECT latest FROM resources WHERE kind=?1 AND namespace=?2 AND name=?3",
            "status" => "SELECT status FROM resources WHERE kind=?1 AND namespace=?2 AND name=?3",
            other => unreachable!("no JSON column {other}"),
        };
        let text: Option<String> = self
            .row(sql, params![kind.as_str(), namespace, name], |r| r.get(0))?
            .flatten();
        text.map(|t| self.parse(&t)).transpose()
    }

    /// See [`StateDb::record_latest`].
    pub fn record_latest(
        &self,
        namespace: &str,
        name: &str,
        seen: &SeenTag,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(seen).unwrap_or_default();
        self.run(
            "UPDATE resources SET latest=?3 WHERE kind='Stage' AND namespace=?1 AND name=?2",
            params![namespace, name, json],
        )
        .map(|n| n > 0)
    }

    /// Marks a delivery id as seen. False when it was seen before (a redelivery).
    pub fn claim_delivery(&self, id: &str, provider: &str) -> Result<bool, StoreError> {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        self.run(
            "INSERT OR IGNORE INTO deliveries (id, provider, received) VALUES (?1, ?2, ?3)",
            params![id, provider, now],
        )
        .map(|n| n == 1)
    }

    /// Marks a delivery that carries no id of its sender, by a hash of its body, as seen at
    /// `now` (seconds). False when the same body was claimed less than `window` seconds before:
    /// a retry of the same request. Later, the same body is a new push (the same tag pushed
    /// again) and counts.
    pub fn claim_retry(
        &self,
        key: &str,
        provider: &str,
        now: i64,
        window: i64,
    ) -> Result<bool, StoreError> {
        self.run(
            "INSERT INTO deliveries (id, provider, received) VALUES (?1, ?2, ?3) \
             ON CONFLICT(id) DO UPDATE SET received = excluded.received \
             WHERE deliveries.received <= excluded.received - ?4",
            params![key, provider, now, window],
        )
        .map(|n| n == 1)
    }

    /// Forgets delivery ids older than `max_age_s` (senders redeliver within hours, not weeks).
    pub fn prune_deliveries(&self, max_age_s: i64) -> Result<(), StoreError> {
        let cutoff = k8s_openapi::jiff::Timestamp::now().as_second() - max_age_s;
        self.exec("DELETE FROM deliveries WHERE received < ?1", [cutoff])
    }

    pub fn secret(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.tx
            .query_row(
                "SELECT sealed FROM secrets WHERE namespace=?1 AND name=?2 AND key=?3",
                params![namespace, name, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sqlite(e))
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
