//! Turning "image X:tag was pushed" (or "commit Y passed CI") into Stage status: match it to
//! Projects, offer the tag to each of their Stages, and record it as `status.latest` where the
//! Stage's tag policy prefers it. The reconcile loop acts on it; nothing here touches Docker.

use crate::api::{ProjectSpec, SeenTag, StageSpec};
use crate::engine::conditions::now;
use crate::engine::tags::CompiledPolicy;
use crate::image::{ImageRef, canonical_repository, is_valid_tag};

pub mod events;
pub mod recorder;

pub use events::{Auth, Delivery, GitEvent, ImagePush, Named, Parsed, Provider};

/// A push as recorded: repository, tag, digest, and who said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// Repository, any spelling (`nginx`, `docker.io/library/nginx`, `localhost:5000/a/b`).
    pub repository: String,
    pub tag: String,
    pub digest: Option<String>,
    /// `cli`, `github`, `registry`, …
    pub source: String,
    pub delivery_id: Option<String>,
}

impl Push {
    /// Parses `repo:tag` (a `@digest` suffix is kept as the digest).
    pub fn parse(reference: &str, source: &str) -> Result<Push, String> {
        let (name, digest) = match reference.split_once('@') {
            Some((n, d)) => (n, Some(d.to_string())),
            None => (reference, None),
        };
        let parts = ImageRef::parse(name);
        let (repository, tag) = (parts.repository, parts.tag_or_latest());
        if parts.tag.is_none() {
            return Err(format!(
                "{reference:?} names no tag (expected repository:tag)"
            ));
        }
        if !is_valid_tag(tag) {
            return Err(format!("{tag:?} is not a valid image tag"));
        }
        Ok(Push {
            repository: repository.to_string(),
            tag: tag.to_string(),
            digest,
            source: source.to_string(),
            delivery_id: None,
        })
    }

    pub fn from_image(p: &ImagePush, source: &str, delivery_id: Option<&str>) -> Push {
        Push {
            repository: p.repository.clone(),
            tag: p.tag.clone(),
            digest: p.digest.clone(),
            source: source.to_string(),
            delivery_id: p.event_id.clone().or(delivery_id.map(str::to_string)),
        }
    }
}

/// A Project as the matcher sees it.
#[derive(Clone, Debug)]
pub struct ProjectRef {
    pub namespace: String,
    pub name: String,
    pub spec: ProjectSpec,
}

/// A Stage as the matcher sees it: its Project and its compiled tag policy (None: invalid).
#[derive(Clone, Debug)]
pub struct StageRef {
    pub namespace: String,
    pub name: String,
    pub project: String,
    pub policy: Option<CompiledPolicy>,
}

/// Projects and Stages read once and reused for every push of a batch.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub projects: Vec<ProjectRef>,
    pub stages: Vec<StageRef>,
}

/// Projects whose image is `repository`.
pub fn for_image<'p>(projects: &'p [ProjectRef], repository: &str) -> Vec<&'p ProjectRef> {
    let wanted = canonical_repository(repository);
    projects
        .iter()
        .filter(|p| canonical_repository(&p.spec.image) == wanted)
        .collect()
}

/// Projects built from Git repository `event.repository` (their `gitSource`), with the provider.
pub fn for_git<'p>(
    projects: &'p [ProjectRef],
    provider: &str,
    repository: &str,
) -> Vec<&'p ProjectRef> {
    projects
        .iter()
        .filter(|p| {
            p.spec.git_source.as_ref().is_some_and(|g| {
                g.repository.eq_ignore_ascii_case(repository)
                    && (g.provider.is_empty() || g.provider.eq_ignore_ascii_case(provider))
            })
        })
        .collect()
}

/// The image tag a Git event stands for in `project`, or why it stands for none.
pub fn git_tag(project: &ProjectSpec, event: &GitEvent) -> Result<String, String> {
    let settings = project.webhook.clone().unwrap_or_default();
    let kinds: Vec<&str> = if settings.git_events.is_empty() {
        vec!["workflow_run", "pipeline"]
    } else {
        settings.git_events.iter().map(String::as_str).collect()
    };
    if !kinds.contains(&event.kind) {
        return Err(format!(
            "{} events are not used (webhook.gitEvents: {})",
            event.kind,
            kinds.join(", ")
        ));
    }
    if let Some(branch) = &event.branch
        && !settings.branches.is_empty()
        && !settings
            .branches
            .iter()
            .any(|g| globset::Glob::new(g).is_ok_and(|g| g.compile_matcher().is_match(branch)))
    {
        return Err(format!("branch {branch:?} is not in webhook.branches"));
    }
    let template = settings.tag_template.as_deref().unwrap_or("sha-{sha7}");
    let safe = |s: &str| s.replace(['/', '+', '@', ' '], "-");
    let mut tag = template
        .replace("{sha7}", event.sha.get(..7).unwrap_or(&event.sha))
        .replace("{sha}", &event.sha)
        .replace(
            "{branch}",
            &event.branch.as_deref().map(safe).unwrap_or_default(),
        )
        .replace("{tag}", &event.tag.as_deref().map(safe).unwrap_or_default());
    if template.contains("{branch}") && event.branch.is_none() {
        tag.clear();
    }
    if is_valid_tag(&tag) {
        Ok(tag)
    } else {
        Err(format!(
            "tag template {template:?} gives {tag:?} for this event, not a valid tag"
        ))
    }
}

/// What became of a push for one Stage.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub namespace: String,
    pub stage: String,
    pub tag: String,
    /// None: recorded. Some(reason): ignored, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

/// Where recorded tags are kept: a transaction of the embedded store (standalone), or a plan of
/// status writes carried out after the batch (Kubernetes mode).
pub trait Ledger {
    type Error;
    fn latest(&self, namespace: &str, stage: &str) -> Result<Option<SeenTag>, Self::Error>;
    fn record_latest(
        &self,
        namespace: &str,
        stage: &str,
        seen: &SeenTag,
    ) -> Result<(), Self::Error>;
}

/// Records `push` on every Stage of `projects` (in the same transaction as the caller's other
/// writes, e.g. the delivery id).
pub fn record<L: Ledger + ?Sized>(
    tx: &L,
    stages: &[StageRef],
    projects: &[&ProjectRef],
    push: &Push,
) -> Result<Vec<Verdict>, L::Error> {
    let seen = SeenTag {
        tag: push.tag.clone(),
        digest: push.digest.clone(),
        source: push.source.clone(),
        delivery_id: push.delivery_id.clone(),
        seen_at: now(),
        recent_deliveries: Vec::new(),
    };
    let mut verdicts = Vec::new();
    for stage in stages {
        if !projects
            .iter()
            .any(|p| p.namespace == stage.namespace && p.name == stage.project)
        {
            continue;
        }
        let ignored = match &stage.policy {
            None => Some("the Stage's tag policy is invalid".to_string()),
            Some(policy) if !policy.accepts(&push.tag) => Some(format!(
                "tag not accepted by the policy ({})",
                policy.describe()
            )),
            Some(policy) => {
                let current = tx.latest(&stage.namespace, &stage.name)?;
                if policy.is_better(&seen, current.as_ref()) {
                    tx.record_latest(&stage.namespace, &stage.name, &seen)?;
                    None
                } else {
                    Some(format!(
                        "{} is already the preferred tag ({})",
                        current.map(|c| c.tag).unwrap_or_default(),
                        policy.describe()
                    ))
                }
            }
        };
        verdicts.push(Verdict {
            namespace: stage.namespace.clone(),
            stage: stage.name.clone(),
            tag: push.tag.clone(),
            ignored,
        });
    }
    Ok(verdicts)
}

/// A resource name for the Project of `repository`: its last path segment, lowercased, other
/// characters as `-`, at most 50 characters; `app` when nothing is left.
pub fn base_name(repository: &str) -> String {
    let base: String = canonical_repository(repository)
        .rsplit('/')
        .next()
        .unwrap_or("app")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_matches('-')
        .chars()
        .take(50)
        .collect();
    if base.is_empty() {
        "app".to_string()
    } else {
        base
    }
}

/// `base`, else `base-2`, `base-3`, … : the first name not `taken`.
pub fn free_name(base: &str, taken: impl Fn(&str) -> bool) -> String {
    (1..)
        .map(|i| {
            if i == 1 {
                base.to_string()
            } else {
                format!("{base}-{i}")
            }
        })
        .find(|n| !taken(n))
        .expect("some suffix is free")
}

/// What may be auto-created: whoever holds the webhook URL (which registries log in clear) can
/// otherwise run any image on the engine.
#[derive(Clone, Debug)]
pub struct AutoCreatePolicy {
    /// Auto-created Projects at most (those under `<manifests>/auto-created/`); past it a push
    /// of an unknown image is answered with the reason and logged.
    pub max: usize,
    /// Repository globs (`registry.example.com/team/*`; `*` stays within one path segment, `**`
    /// crosses them) an unknown image must match; empty: any.
    pub allow: Vec<String>,
}

/// Auto-created Projects at most, unless configured.
pub const DEFAULT_AUTO_CREATE_MAX: usize = 20;

impl Default for AutoCreatePolicy {
    fn default() -> Self {
        AutoCreatePolicy {
            max: DEFAULT_AUTO_CREATE_MAX,
            allow: Vec::new(),
        }
    }
}

impl AutoCreatePolicy {
    /// Whether `repository` may get a Project, else why not.
    pub fn admits(&self, repository: &str) -> Result<(), String> {
        if self.allow.is_empty() {
            return Ok(());
        }
        let normalized = canonical_repository(repository);
        let allowed = self.allow.iter().any(|pattern| {
            globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .is_ok_and(|g| {
                    let m = g.compile_matcher();
                    m.is_match(repository) || m.is_match(&normalized)
                })
        });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "{repository} is not in --auto-create-allow ({})",
                self.allow.join(", ")
            ))
        }
    }

    /// Checks the patterns (at start-up: a typo must not silently refuse every image).
    pub fn validate(&self) -> Result<(), String> {
        for pattern in &self.allow {
            globset::Glob::new(pattern)
                .map_err(|e| format!("--auto-create-allow {pattern:?}: {e}"))?;
        }
        Ok(())
    }
}

/// The Project spec an auto-created Project gets: the image, and limits so that an image pushed
/// by whoever holds the URL cannot take the host's memory or CPU (no volumes, no host network:
/// those are never set here).
pub fn auto_created_spec(repository: &str) -> ProjectSpec {
    ProjectSpec {
        image: repository.to_string(),
        container: crate::api::ContainerSettings {
            resources: Some(crate::api::Resources {
                memory: Some("256Mi".into()),
                cpus: Some("0.5".into()),
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Whether `repository` is one the controller could ever deploy (the validator of
/// `Project.spec.image`), else the validator's words.
pub fn valid_repository(repository: &str) -> Result<(), String> {
    let stage = StageSpec {
        project_ref: "x".into(),
        ..Default::default()
    };
    crate::engine::spec::Effective::new(&auto_created_spec(repository), &stage)
        .map(drop)
        .map_err(|e| crate::engine::spec::describe_errors(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_references() {
        let p = Push::parse("localhost:5000/team/app:1.2.3", "cli").unwrap();
        assert_eq!(
            (p.repository.as_str(), p.tag.as_str()),
            ("localhost:5000/team/app", "1.2.3")
        );
        let p = Push::parse("app:1@sha256:abc", "cli").unwrap();
        assert_eq!(p.digest.as_deref(), Some("sha256:abc"));
        assert!(Push::parse("localhost:5000/app", "cli").is_err());
        assert!(Push::parse("app:-bad", "cli").is_err());
    }

    fn git(kind: &'static str, branch: Option<&str>, tag: Option<&str>) -> GitEvent {
        GitEvent {
            repository: "Octo/App".into(),
            branch: branch.map(str::to_string),
            tag: tag.map(str::to_string),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            kind,
        }
    }

    #[test]
    fn git_events_map_through_the_tag_template() {
        let mut p = ProjectSpec {
            image: "ghcr.io/octo/app".into(),
            ..Default::default()
        };
        assert_eq!(
            git_tag(&p, &git("workflow_run", Some("main"), None)).unwrap(),
            "sha-0123456"
        );
        assert!(
            git_tag(&p, &git("push", Some("main"), None))
                .unwrap_err()
                .contains("push events are not used")
        );
        p.webhook = Some(crate::api::WebhookSettings {
            tag_template: Some("{branch}-{sha7}".into()),
            branches: vec!["main".into(), "release/*".into()],
            git_events: vec!["push".into(), "tag_push".into()],
            ..Default::default()
        });
        assert_eq!(
            git_tag(&p, &git("push", Some("release/1.2"), None)).unwrap(),
            "release-1.2-0123456"
        );
        assert!(
            git_tag(&p, &git("push", Some("feature/x"), None))
                .unwrap_err()
                .contains("webhook.branches")
        );
        // A tag push has no branch: a {branch} template gives no tag.
        assert!(git_tag(&p, &git("tag_push", None, Some("v1"))).is_err());
        p.webhook.as_mut().unwrap().tag_template = Some("{tag}".into());
        assert_eq!(
            git_tag(&p, &git("tag_push", None, Some("v1.0.0"))).unwrap(),
            "v1.0.0"
        );

        let projects = vec![ProjectRef {
            namespace: "default".into(),
            name: "app".into(),
            spec: ProjectSpec {
                git_source: Some(crate::api::GitSource {
                    provider: "github".into(),
                    repository: "octo/app".into(),
                    ..Default::default()
                }),
                ..p
            },
        }];
        assert_eq!(
            for_git(&projects, "github", &git("push", None, None).repository).len(),
            1
        );
        assert!(for_git(&projects, "gitlab", &git("push", None, None).repository).is_empty());
    }
}
