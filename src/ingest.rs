//! Turning "image X:tag was pushed" into Stage status: match the image to Projects by repository,
//! offer the tag to each of their Stages, and record it as `status.latest` where the Stage's tag
//! policy prefers it. The reconcile loop acts on it; nothing here touches Docker.

use crate::api::{ProjectSpec, SeenTag, StageSpec};
use crate::docker::repository_of;
use crate::engine::conditions::now;
use crate::engine::tags::{CompiledPolicy, is_valid_tag};
use crate::store::{Kind, StateDb, StoreError};

/// A push, as any sender reports it.
#[derive(Clone, Debug)]
pub struct Push {
    /// Repository, any spelling (`nginx`, `docker.io/library/nginx`, `localhost:5000/a/b`).
    pub repository: String,
    pub tag: String,
    pub digest: Option<String>,
    /// Who said so (`cli`, `github`, `registry`, …).
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
        let (repository, tag) = crate::docker::split_reference(name);
        let explicit_tag = name.len() > repository.len();
        if !explicit_tag {
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
}

/// What became of a push for one Stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub namespace: String,
    pub stage: String,
    /// None: recorded. Some(reason): ignored, and why.
    pub ignored: Option<String>,
}

/// Records `push` on every matching Stage. An empty result means no Project uses the image.
pub fn record(db: &StateDb, push: &Push) -> Result<Vec<Verdict>, StoreError> {
    let wanted = repository_of(&push.repository);
    let projects: Vec<(String, String)> = db
        .list(Kind::Project)?
        .into_iter()
        .filter(|p| {
            serde_json::from_value::<ProjectSpec>(p.spec.clone())
                .is_ok_and(|spec| repository_of(&spec.image) == wanted)
        })
        .map(|p| (p.namespace, p.name))
        .collect();
    let seen = SeenTag {
        tag: push.tag.clone(),
        digest: push.digest.clone(),
        source: push.source.clone(),
        delivery_id: push.delivery_id.clone(),
        seen_at: now(),
    };
    let mut verdicts = Vec::new();
    for stage in db.list(Kind::Stage)? {
        let Ok(spec) = serde_json::from_value::<StageSpec>(stage.spec.clone()) else {
            continue;
        };
        if !projects.contains(&(stage.namespace.clone(), spec.project_ref.clone())) {
            continue;
        }
        let ignored = match CompiledPolicy::compile(spec.tag_policy.as_ref()) {
            Err(_) => Some("the Stage's tag policy is invalid".to_string()),
            Ok(policy) if !policy.accepts(&push.tag) => Some(format!(
                "tag not accepted by the policy ({})",
                policy.describe()
            )),
            Ok(policy) => {
                let current = db.stage_status(&stage.namespace, &stage.name)?.latest;
                if policy.is_better(&seen, current.as_ref()) {
                    db.record_latest(&stage.namespace, &stage.name, &seen)?;
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
            namespace: stage.namespace,
            stage: stage.name,
            ignored,
        });
    }
    Ok(verdicts)
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

        let verdicts = record(&db, &Push::parse("demo:1.1.0", "cli").unwrap()).unwrap();
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
        let older = record(&db, &Push::parse("demo:1.0.5", "cli").unwrap()).unwrap();
        assert!(older.iter().all(|v| v.ignored.is_some()));
        record(&db, &Push::parse("demo:1.2.0-broken", "cli").unwrap()).unwrap();
        assert_eq!(
            db.stage_status("default", "staging")
                .unwrap()
                .latest
                .unwrap()
                .tag,
            "1.1.0"
        );
        assert!(
            record(&db, &Push::parse("nothing:1", "cli").unwrap())
                .unwrap()
                .is_empty()
        );
    }
}
