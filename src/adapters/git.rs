//! Fetching commits with the `git` command line (Debian's `git`), into a bare repository kept
//! per Project so that later builds fetch only what is new.
//!
//! The CLI rather than a crate (gix, git2): it speaks every transport and auth scheme servers
//! use (smart HTTP, git://, file://, shallow and by-id fetches) exactly as users' own `git`
//! does, it is what the error messages users search for come from, and it adds no C or large
//! Rust dependency. A token is handed to git through a credential helper reading the
//! environment of that one child: never in its arguments (visible in `ps`), the URL, or a file.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// What went wrong, in words that say what to change.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The repository could not be read: unreachable, refused, unknown, bad credentials.
    #[error("cannot read {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The repository answered, but has no such branch or commit.
    #[error("{what} not found in {url}")]
    NotFound { url: String, what: String },
    /// git itself could not run, or the local cache is broken.
    #[error("git: {0}")]
    Local(String),
}

/// A token for HTTPS remotes (user `x-access-token`, the convention GitHub, Gitea and GitLab
/// accept).
#[derive(Clone, Default)]
pub struct Credentials {
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.token.is_some() {
            "Credentials(token)"
        } else {
            "Credentials(none)"
        })
    }
}

/// The helper reads the token from the child's environment only.
const HELPER: &str =
    "credential.helper=!f() { echo username=x-access-token; echo \"password=$TF_GIT_TOKEN\"; }; f";

/// A bare repository caching one Project's commits.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

/// What a git run printed, for the build log.
pub type Output = String;

impl Cache {
    /// Opens the cache at `dir`, creating an empty bare repository there the first time.
    pub async fn open(dir: &Path) -> Result<Cache, GitError> {
        if !dir.join("HEAD").exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| GitError::Local(format!("{}: {e}", dir.display())))?;
            run(
                None,
                &["init", "--bare", "--quiet", &dir.to_string_lossy()],
                &Credentials::default(),
            )
            .await
            .map_err(|(_, m)| GitError::Local(m))?;
        }
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    /// Makes `sha` present: nothing when it already is; else a shallow fetch of that very commit
    /// (servers that allow it: GitHub, GitLab, protocol v2 servers), else `branch` fetched and
    /// the commit looked for in it.
    pub async fn fetch(
        &self,
        url: &str,
        sha: &str,
        branch: Option<&str>,
        creds: &Credentials,
    ) -> Result<Output, GitError> {
        if self.has_commit(sha).await {
            return Ok(format!("commit {sha} already in the cache\n"));
        }
        let mut log = String::new();
        let dir = Some(self.dir.as_path());
        match run(dir, &["fetch", "--no-tags", "--depth=1", url, sha], creds).await {
            Ok(out) => log.push_str(&out),
            Err((out, message)) => {
                log.push_str(&out);
                let Some(branch) = branch else {
                    return Err(classify(url, sha, message));
                };
                let refspec = format!("+refs/heads/{branch}:refs/heads/{branch}");
                match run(dir, &["fetch", "--no-tags", url, &refspec], creds).await {
                    Ok(out) => log.push_str(&out),
                    Err((out, message)) => {
                        log.push_str(&out);
                        return Err(classify(url, &format!("branch {branch}"), message));
                    }
                }
            }
        }
        if self.has_commit(sha).await {
            Ok(log)
        } else {
            Err(GitError::NotFound {
                url: url.to_string(),
                what: format!("commit {sha}"),
            })
        }
    }

    async fn has_commit(&self, sha: &str) -> bool {
        let object = format!("{sha}^{{commit}}");
        run(
            Some(&self.dir),
            &["cat-file", "-e", &object],
            &Credentials::default(),
        )
        .await
        .is_ok()
    }

    /// Whether `path` is a file in commit `sha`.
    pub async fn has_file(&self, sha: &str, path: &str) -> bool {
        let object = format!("{sha}:{path}");
        run(
            Some(&self.dir),
            &["cat-file", "-e", &object],
            &Credentials::default(),
        )
        .await
        .is_ok()
    }

    /// A tar of directory `context` (`""`: the root) of commit `sha`: the build context, exactly
    /// as committed, no checkout needed.
    pub async fn archive(&self, sha: &str, context: &str) -> Result<Vec<u8>, GitError> {
        let tree = if context.is_empty() {
            sha.to_string()
        } else {
            format!("{sha}:{context}")
        };
        let out = Command::new("git")
            .current_dir(&self.dir)
            .args(["archive", "--format=tar", &tree])
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| GitError::Local(format!("cannot run git: {e}")))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(GitError::Local(format!(
                "archive of {tree}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

/// The commit `reference` (a branch, `HEAD`, a tag) names in `url` now.
pub async fn resolve(url: &str, reference: &str, creds: &Credentials) -> Result<String, GitError> {
    let out = run(None, &["ls-remote", url, reference], creds)
        .await
        .map_err(|(_, m)| classify(url, reference, m))?;
    let wanted = [
        reference.to_string(),
        format!("refs/heads/{reference}"),
        format!("refs/tags/{reference}"),
    ];
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(_, name)| wanted.iter().any(|w| w == name))
        .map(|(sha, _)| sha.to_string())
        .ok_or_else(|| GitError::NotFound {
            url: url.to_string(),
            what: reference.to_string(),
        })
}

/// The repository's default branch (where its `HEAD` points).
pub async fn default_branch(url: &str, creds: &Credentials) -> Result<String, GitError> {
    let out = run(None, &["ls-remote", "--symref", url, "HEAD"], creds)
        .await
        .map_err(|(_, m)| classify(url, "HEAD", m))?;
    out.lines()
        .find_map(|l| {
            l.strip_prefix("ref: refs/heads/")
                .and_then(|r| r.strip_suffix("\tHEAD"))
        })
        .map(str::to_string)
        .ok_or_else(|| GitError::NotFound {
            url: url.to_string(),
            what: "a default branch (HEAD)".into(),
        })
}

fn classify(url: &str, what: &str, message: String) -> GitError {
    let lower = message.to_lowercase();
    if lower.contains("not our ref")
        || lower.contains("couldn't find remote ref")
        || lower.contains("no such remote ref")
        || lower.contains("unadvertised object")
    {
        GitError::NotFound {
            url: url.to_string(),
            what: what.to_string(),
        }
    } else {
        GitError::Unreachable {
            url: url.to_string(),
            message,
        }
    }
}

/// Runs git; Ok(output) on success, else (output, last meaningful stderr line).
async fn run(
    dir: Option<&Path>,
    args: &[&str],
    creds: &Credentials,
) -> Result<Output, (Output, String)> {
    let mut cmd = Command::new("git");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    // No prompt may ever wait for a terminal; no system or user config changes what runs.
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env_remove("TF_GIT_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(token) = &creds.token {
        cmd.args(["-c", "credential.helper=", "-c", HELPER])
            .env("TF_GIT_TOKEN", token);
    }
    let out = cmd
        .args(args)
        .output()
        .await
        .map_err(|e| (String::new(), format!("cannot run git: {e}")))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = match &creds.token {
        // git does not print passwords; a server's message might echo one back.
        Some(token) if !token.is_empty() => text.replace(token.as_str(), "***"),
        _ => text,
    };
    if out.status.success() {
        Ok(text)
    } else {
        let line = String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .rfind(|l| l.starts_with("fatal") || l.starts_with("error"))
            .or_else(|| text.lines().map(str::trim).rfind(|l| !l.is_empty()))
            .unwrap_or("git failed")
            .to_string();
        let line = match &creds.token {
            Some(token) if !token.is_empty() => line.replace(token.as_str(), "***"),
            _ => line,
        };
        Err((text, line))
    }
}
