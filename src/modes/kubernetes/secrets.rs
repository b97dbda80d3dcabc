//! Secrets in Kubernetes mode. The controller may read Secrets in its own namespace only (the
//! chart's RBAC grants nothing else), so references resolve there, and only to Secrets that
//! their owner shared with the referring namespace through the annotation
//! `tinyforge.dev/share-with: "team-a,team-b"` (or `"*"`). Without it a Stage author could copy
//! any of the controller's Secrets (the NPM password, the webhook URL secret) into a container.
//! Values never reach logs, status or events: errors name the reference only.

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::SecretKeyRef;
use crate::engine::spec::EnvValueSource;
use crate::engine::{SecretError, Secrets};

/// Annotation listing the namespaces a Secret may be used from.
pub const SHARE_WITH: &str = "tinyforge.dev/share-with";

/// Secrets of the controller's namespace, as a watch cache sees them.
#[derive(Clone)]
pub struct ClusterSecrets {
    pub store: Store<Secret>,
    /// The controller's namespace.
    pub namespace: String,
}

impl ClusterSecrets {
    /// The value of `r` for a resource in `namespace`.
    pub fn get(&self, namespace: &str, r: &SecretKeyRef) -> Result<String, SecretError> {
        let shown = format!("secret {}/{} (key {:?})", self.namespace, r.name, r.key);
        let secret = self
            .store
            .get(&ObjectRef::new(&r.name).within(&self.namespace))
            .ok_or_else(|| SecretError::Missing(format!("{shown} not found")))?;
        let shared = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SHARE_WITH))
            .is_some_and(|list| {
                list.split(',')
                    .map(str::trim)
                    .any(|n| n == "*" || n == namespace)
            });
        if !shared {
            return Err(SecretError::Refused(format!(
                "{shown} is not shared with namespace {namespace:?} (annotation {SHARE_WITH})"
            )));
        }
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .map(|s| s.clone().into_bytes())
            })
            .ok_or_else(|| SecretError::Missing(format!("{shown} has no such key")))?;
        String::from_utf8(bytes)
            .map_err(|_| SecretError::Unreadable(format!("{shown} is not UTF-8")))
    }
}

impl Secrets for ClusterSecrets {
    fn value(&self, namespace: &str, source: &EnvValueSource<'_>) -> Result<String, SecretError> {
        match source {
            // A file on the controller's own filesystem (its service account token, say) is not
            // something a Stage author may read.
            EnvValueSource::File(path) => Err(SecretError::Refused(format!(
                "valueFrom.file ({path}) is for standalone mode; in Kubernetes use a shared Secret"
            ))),
            EnvValueSource::Secret(r) => self.get(namespace, r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use kube::runtime::{reflector, watcher};

    fn secret(name: &str, share: Option<&str>, value: &str) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("tiny-forge".into());
        if let Some(share) = share {
            s.metadata.annotations = Some([(SHARE_WITH.to_string(), share.to_string())].into());
        }
        s.data = Some([("token".to_string(), ByteString(value.as_bytes().to_vec()))].into());
        s
    }

    #[test]
    fn only_shared_secrets_resolve_and_errors_never_show_values() {
        let (reader, mut writer) = reflector::store::<Secret>();
        writer.apply_watcher_event(&watcher::Event::Apply(secret(
            "app",
            Some("team-a, team-b"),
            "s3cret",
        )));
        writer.apply_watcher_event(&watcher::Event::Apply(secret("npm", None, "hunter2")));
        writer.apply_watcher_event(&watcher::Event::Apply(secret("all", Some("*"), "open")));
        let s = ClusterSecrets {
            store: reader,
            namespace: "tiny-forge".into(),
        };
        let r = |name: &str| SecretKeyRef {
            name: name.into(),
            key: "token".into(),
        };
        assert_eq!(s.get("team-b", &r("app")).unwrap(), "s3cret");
        assert_eq!(s.get("anyone", &r("all")).unwrap(), "open");
        let e = s.get("team-c", &r("app")).unwrap_err().to_string();
        assert!(e.contains("not shared with namespace \"team-c\""), "{e}");
        let e = s.get("team-a", &r("npm")).unwrap_err().to_string();
        assert!(!e.contains("hunter2") && e.contains(SHARE_WITH), "{e}");
        assert!(
            s.get("team-a", &r("missing"))
                .unwrap_err()
                .to_string()
                .contains("not found")
        );
        let wrong_key = SecretKeyRef {
            name: "app".into(),
            key: "nope".into(),
        };
        assert!(
            s.get("team-a", &wrong_key)
                .unwrap_err()
                .to_string()
                .contains("no such key")
        );
        assert!(
            s.value("team-a", &EnvValueSource::File("/var/run/secrets/token"))
                .unwrap_err()
                .to_string()
                .contains("standalone")
        );
    }
}
