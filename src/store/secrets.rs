//! Standalone secrets. A reference `{name, key}` is looked up in the embedded store first
//! (`tiny-forge secret set`: sealed with AES-256-GCM, the key in a file of its own), then as the
//! file `<secrets-dir>/<namespace>/<name>/<key>` or `<secrets-dir>/<name>/<key>` (the layout of a
//! mounted Kubernetes Secret), so the same manifests work in both modes. Values never reach logs
//! or status; errors name the reference only.

use std::path::PathBuf;
use std::sync::Arc;

use super::StateDb;
use crate::api::SecretKeyRef;
use crate::crypto::SecretBox;
use crate::engine::spec::EnvValueSource;
use crate::engine::{SecretError, Secrets};

#[derive(Clone)]
pub struct StoreSecrets {
    pub db: Option<Arc<StateDb>>,
    pub sealer: Option<SecretBox>,
    pub dir: Option<PathBuf>,
}

/// The associated data a sealed secret is bound to.
pub fn context(namespace: &str, name: &str, key: &str) -> String {
    format!("{namespace}/{name}/{key}")
}

impl StoreSecrets {
    /// Files only (no store).
    pub fn files(dir: Option<PathBuf>) -> StoreSecrets {
        StoreSecrets {
            db: None,
            sealer: None,
            dir,
        }
    }

    pub fn get(&self, namespace: &str, r: &SecretKeyRef) -> Result<String, SecretError> {
        if let (Some(db), Some(sealer)) = (&self.db, &self.sealer)
            && let Some(sealed) = db
                .secret(namespace, &r.name, &r.key)
                .map_err(|e| SecretError::Unreadable(e.to_string()))?
        {
            let plain = sealer
                .open(&sealed, &context(namespace, &r.name, &r.key))
                .map_err(|e| {
                    SecretError::Unreadable(format!("secret {}/{}: {e}", r.name, r.key))
                })?;
            return String::from_utf8(plain).map_err(|_| {
                SecretError::Unreadable(format!("secret {}/{} is not UTF-8", r.name, r.key))
            });
        }
        let dir = self.dir.as_ref().ok_or_else(|| {
            SecretError::Missing(format!(
                "secret {}/{} is not in the store (tiny-forge secret set) and no --secrets-dir is configured",
                r.name, r.key
            ))
        })?;
        let namespaced = dir.join(namespace).join(&r.name).join(&r.key);
        let path = if namespaced.is_file() {
            namespaced
        } else {
            dir.join(&r.name).join(&r.key)
        };
        read_trimmed(&path)
    }
}

fn read_trimmed(path: &std::path::Path) -> Result<String, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let message = format!("cannot read {}: {}", path.display(), e.kind());
        if e.kind() == std::io::ErrorKind::NotFound {
            SecretError::Missing(message)
        } else {
            SecretError::Unreadable(message)
        }
    })?;
    Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
}

impl Secrets for StoreSecrets {
    fn value(&self, namespace: &str, source: &EnvValueSource<'_>) -> Result<String, SecretError> {
        match source {
            EnvValueSource::File(path) => read_trimmed(std::path::Path::new(path)),
            EnvValueSource::Secret(r) => self.get(namespace, r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_wins_over_files_and_errors_name_only_the_reference() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(StateDb::open(&dir.path().join("state")).unwrap());
        let sealer = SecretBox::load_or_create(&dir.path().join("key")).unwrap();
        let files = dir.path().join("secrets");
        std::fs::create_dir_all(files.join("app")).unwrap();
        std::fs::write(files.join("app/token"), "from-file\n").unwrap();
        let s = StoreSecrets {
            db: Some(db.clone()),
            sealer: Some(sealer.clone()),
            dir: Some(files),
        };
        let r = SecretKeyRef {
            name: "app".into(),
            key: "token".into(),
        };
        assert_eq!(s.get("default", &r).unwrap(), "from-file");
        db.set_secret(
            "default",
            "app",
            "token",
            &sealer.seal(b"from-store", &context("default", "app", "token")),
        )
        .unwrap();
        assert_eq!(s.get("default", &r).unwrap(), "from-store");
        let missing = SecretKeyRef {
            name: "nope".into(),
            key: "k".into(),
        };
        let e = s.get("default", &missing).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("nope/k") && !e.contains("from-"), "{e}");
    }
}
