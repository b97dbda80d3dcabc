//! Builds from Git, the pure part: which pushes a Project builds, the checks on `spec.build`,
//! the states a build goes through, and the hash that says whether a failed commit may be
//! retried. Fetching and building are adapters' (`adapters::git`, `adapters::docker`); the queue
//! is `sources::build`.

use sha2::{Digest, Sha256};

use crate::api::{BuildSettings, ProjectSpec};

/// The Project condition that says how its last build went.
pub const BUILD_READY: &str = "BuildReady";

/// A build (fetch included) is stopped after this long unless `timeoutSeconds` says otherwise.
pub const DEFAULT_TIMEOUT_S: u32 = 900;
/// `timeoutSeconds` at most: a day.
pub const MAX_TIMEOUT_S: u32 = 86_400;

/// Where a build is. Terminal states never change again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuildState {
    Queued,
    Fetching,
    Building,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl BuildState {
    pub const ALL: [BuildState; 7] = [
        BuildState::Queued,
        BuildState::Fetching,
        BuildState::Building,
        BuildState::Succeeded,
        BuildState::Failed,
        BuildState::Cancelled,
        BuildState::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "Queued",
            BuildState::Fetching => "Fetching",
            BuildState::Building => "Building",
            BuildState::Succeeded => "Succeeded",
            BuildState::Failed => "Failed",
            BuildState::Cancelled => "Cancelled",
            BuildState::TimedOut => "TimedOut",
        }
    }

    pub fn parse(s: &str) -> Option<BuildState> {
        BuildState::ALL.into_iter().find(|b| b.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BuildState::Succeeded
                | BuildState::Failed
                | BuildState::Cancelled
                | BuildState::TimedOut
        )
    }
}

/// Effective settings of a build, defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildPlan {
    pub repository: String,
    /// Directory inside the repository, `""` for its root.
    pub context: String,
    pub dockerfile: String,
    pub target: Option<String>,
    pub args: std::collections::BTreeMap<String, String>,
    pub timeout: std::time::Duration,
}

impl BuildPlan {
    pub fn new(b: &BuildSettings) -> BuildPlan {
        BuildPlan {
            repository: b.repository.clone(),
            context: b
                .context
                .as_deref()
                .unwrap_or("")
                .trim_matches('/')
                .trim_start_matches("./")
                .to_string(),
            dockerfile: b.dockerfile.clone().unwrap_or_else(|| "Dockerfile".into()),
            target: b.target.clone().filter(|t| !t.is_empty()),
            args: b.args.clone(),
            timeout: std::time::Duration::from_secs(u64::from(
                b.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_S),
            )),
        }
    }

    /// The Dockerfile's path from the repository root.
    pub fn dockerfile_path(&self) -> String {
        if self.context.is_empty() {
            self.dockerfile.clone()
        } else {
            format!("{}/{}", self.context, self.dockerfile)
        }
    }
}

/// What is wrong with `spec.build`, one line per problem (empty: nothing).
pub fn validate(b: &BuildSettings) -> Vec<String> {
    let mut problems = Vec::new();
    let url = b.repository.as_str();
    match url.split_once("://") {
        Some(("https" | "git" | "file", rest)) if !rest.is_empty() => {
            let authority = rest.split('/').next().unwrap_or_default();
            if authority.contains('@') {
                problems.push(
                    "build.repository: credentials in the URL are refused (they would be \
                     logged); use build.credentialsRef"
                        .to_string(),
                );
            }
        }
        _ => problems.push(format!(
            "build.repository: {url:?} is not an https://, git:// or file:// URL"
        )),
    }
    for (field, value) in [
        ("build.context", b.context.as_deref()),
        ("build.dockerfile", b.dockerfile.as_deref()),
    ] {
        if let Some(v) = value
            && (v.starts_with('/') || v.split('/').any(|s| s == ".."))
        {
            problems.push(format!(
                "{field}: {v:?} must be a relative path inside the repository"
            ));
        }
    }
    if b.dockerfile.as_deref() == Some("") {
        problems.push("build.dockerfile: empty".into());
    }
    for branch in &b.branches {
        if branch.is_empty() || branch.starts_with('-') || branch.contains("..") {
            problems.push(format!("build.branches: {branch:?} is not a branch name"));
        }
    }
    for key in b.args.keys() {
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            problems.push(format!(
                "build.args: {key:?} is not a build argument name (letters, digits, _)"
            ));
        }
    }
    if let Some(t) = b.timeout_seconds
        && !(1..=MAX_TIMEOUT_S).contains(&t)
    {
        problems.push(format!(
            "build.timeoutSeconds: {t} is outside 1..={MAX_TIMEOUT_S}"
        ));
    }
    problems
}

/// Whether a push to `branch` is built. `default_branch`: the repository's, when known; with no
/// `branches` listed only that one is followed.
pub fn follows(b: &BuildSettings, branch: &str, default_branch: Option<&str>) -> bool {
    if b.branches.is_empty() {
        default_branch == Some(branch)
    } else {
        b.branches.iter().any(|f| f == branch)
    }
}

/// The branch a Git event asks `b` to build, or why it asks nothing: only pushes to a followed
/// branch build. `default_branch`: the repository's when known; when it is not, a push to any
/// branch passes here and the builder checks it before fetching.
pub fn requested_branch<'e>(
    b: &BuildSettings,
    kind: &str,
    branch: Option<&'e str>,
    default_branch: Option<&str>,
) -> Result<&'e str, String> {
    if kind != "push" {
        return Err(format!(
            "{kind} events are not built (builds follow branch pushes)"
        ));
    }
    let Some(branch) = branch else {
        return Err("not a branch push: tags are not built".into());
    };
    if !b.branches.is_empty() && !follows(b, branch, None) {
        return Err(format!(
            "branch {branch:?} is not in build.branches ({})",
            b.branches.join(", ")
        ));
    }
    if let Some(default) = default_branch
        && b.branches.is_empty()
        && default != branch
    {
        return Err(format!(
            "branch {branch:?} is not the default branch ({default}) that is built"
        ));
    }
    Ok(branch)
}

/// A hash of everything that makes a build what it is, commit aside: a commit that failed is
/// not built again until this changes (or the commit does).
pub fn settings_hash(project: &ProjectSpec) -> String {
    let mut h = Sha256::new();
    h.update(project.image.as_bytes());
    h.update(serde_json::to_vec(&project.build).unwrap_or_default());
    h.update(
        project
            .webhook
            .as_ref()
            .and_then(|w| w.tag_template.as_deref())
            .unwrap_or_default(),
    );
    hex::encode(&h.finalize()[..8])
}

/// `url` without any user information, for labels and logs.
pub fn public_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Whether `sha` is a full commit id (40 hex digits, SHA-1 repositories).
pub fn is_full_sha(sha: &str) -> bool {
    sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> BuildSettings {
        BuildSettings {
            repository: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn validation_names_each_problem() {
        assert!(validate(&settings("https://example.com/o/r.git")).is_empty());
        assert!(validate(&settings("file:///srv/r")).is_empty());
        assert!(validate(&settings("git://127.0.0.1:9418/r")).is_empty());
        assert_eq!(validate(&settings("ssh://h/r")).len(), 1);
        assert_eq!(validate(&settings("/srv/r")).len(), 1);
        assert!(validate(&settings("https://tok@example.com/r"))[0].contains("credentialsRef"));
        let mut b = settings("file:///r");
        b.context = Some("../up".into());
        b.dockerfile = Some("/etc/passwd".into());
        b.timeout_seconds = Some(0);
        b.args.insert("BAD-NAME".into(), "x".into());
        assert_eq!(validate(&b).len(), 4, "{:?}", validate(&b));
    }

    #[test]
    fn branches_default_to_the_default_branch() {
        let mut b = settings("file:///r");
        assert!(follows(&b, "main", Some("main")));
        assert!(!follows(&b, "feature", Some("main")));
        assert!(!follows(&b, "main", None));
        b.branches = vec!["release".into()];
        assert!(follows(&b, "release", Some("main")));
        assert!(!follows(&b, "main", Some("main")));
    }

    #[test]
    fn only_pushes_to_followed_branches_build() {
        let mut b = settings("file:///r");
        assert_eq!(requested_branch(&b, "push", Some("main"), None), Ok("main"));
        assert_eq!(
            requested_branch(&b, "push", Some("main"), Some("main")),
            Ok("main")
        );
        assert!(requested_branch(&b, "push", Some("dev"), Some("main")).is_err());
        assert!(requested_branch(&b, "tag_push", None, None).is_err());
        assert!(requested_branch(&b, "workflow_run", Some("main"), None).is_err());
        b.branches = vec!["dev".into()];
        assert_eq!(
            requested_branch(&b, "push", Some("dev"), Some("main")),
            Ok("dev")
        );
        assert!(requested_branch(&b, "push", Some("main"), None).is_err());
    }

    #[test]
    fn plan_defaults_and_paths() {
        let mut b = settings("file:///r");
        let p = BuildPlan::new(&b);
        assert_eq!(p.dockerfile_path(), "Dockerfile");
        assert_eq!(p.timeout.as_secs(), 900);
        b.context = Some("./app/".into());
        b.dockerfile = Some("web.Dockerfile".into());
        assert_eq!(BuildPlan::new(&b).dockerfile_path(), "app/web.Dockerfile");
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            public_url("https://user:tok@example.com/o/r.git"),
            "https://example.com/o/r.git"
        );
        assert_eq!(public_url("file:///srv/r"), "file:///srv/r");
    }

    #[test]
    fn states_round_trip() {
        for s in BuildState::ALL {
            assert_eq!(BuildState::parse(s.as_str()), Some(s));
        }
        assert!(!BuildState::Building.is_terminal());
        assert!(BuildState::TimedOut.is_terminal());
    }
}
