//! Standalone secrets: `<secrets-dir>/<name>/<key>`, the layout of a mounted Kubernetes Secret,
//! so the same manifests work in both modes. Values never reach logs or status; errors name the
//! reference only.

use std::path::PathBuf;

use crate::engine::Secrets;
use crate::engine::spec::EnvValueSource;

#[derive(Clone, Debug, Default)]
pub struct FileSecrets {
    pub dir: Option<PathBuf>,
}

impl Secrets for FileSecrets {
    fn value(&self, namespace: &str, source: &EnvValueSource<'_>) -> Result<String, String> {
        let path = match source {
            EnvValueSource::File(path) => PathBuf::from(path),
            EnvValueSource::Secret(r) => {
                let dir = self.dir.as_ref().ok_or_else(|| {
                    format!(
                        "secret {:?} is referenced but no --secrets-dir is configured",
                        r.name
                    )
                })?;
                // Namespaced first, then shared: `<dir>/<namespace>/<name>/<key>`, `<dir>/<name>/<key>`.
                let namespaced = dir.join(namespace).join(&r.name).join(&r.key);
                if namespaced.is_file() {
                    namespaced
                } else {
                    dir.join(&r.name).join(&r.key)
                }
            }
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
        Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
    }
}
