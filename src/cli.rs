//! `tiny-forge get`: kubectl-like views of the embedded store.

use std::fmt::Write as _;
use std::path::Path;

use crate::api::API_VERSION;
use crate::store::{Kind, StateDb, Stored};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetKind {
    Projects,
    Stages,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Wide,
    Json,
    Yaml,
}

/// Prints Projects or Stages from the store in `state_dir`.
pub fn get(
    state_dir: &Path,
    kind: GetKind,
    name: Option<&str>,
    namespace: Option<&str>,
    output: Option<Output>,
) -> anyhow::Result<()> {
    let db = open(state_dir)?;
    let rows: Vec<Stored> = db
        .list(match kind {
            GetKind::Projects => Kind::Project,
            GetKind::Stages => Kind::Stage,
        })?
        .into_iter()
        .filter(|r| namespace.is_none_or(|n| r.namespace == n))
        .filter(|r| name.is_none_or(|n| r.name == n))
        .collect();
    if let Some(name) = name
        && rows.is_empty()
    {
        anyhow::bail!("{kind:?} {name:?} not found", kind = kind);
    }
    let objects: Vec<serde_json::Value> = rows.iter().map(to_object).collect();
    let single = name.is_some() && objects.len() == 1;
    let doc = if single {
        objects[0].clone()
    } else {
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects})
    };
    match output {
        Some(Output::Json) => println!("{}", serde_json::to_string_pretty(&doc)?),
        Some(Output::Yaml) => print!("{}", serde_saphyr::to_string(&doc)?),
        wide => print!(
            "{}",
            table(kind, &rows, wide == Some(Output::Wide), namespace.is_none())
        ),
    }
    let errors = db.manifest_errors()?;
    if !errors.is_empty() {
        eprintln!(
            "\nwarning: {} manifest problem(s), those resources keep their last good spec:",
            errors.len()
        );
        for e in errors {
            eprintln!("  {e}");
        }
    }
    Ok(())
}

/// `tiny-forge push`: records a pushed tag on the matching Stages and says what happened.
pub fn push(state_dir: &Path, image: &str, digest: Option<String>) -> anyhow::Result<()> {
    let mut push = crate::ingest::Push::parse(image, "cli").map_err(anyhow::Error::msg)?;
    if digest.is_some() {
        push.digest = digest;
    }
    let db = open(state_dir)?;
    let verdicts = db.batch(|tx| {
        let c = crate::ingest::Catalog::load(tx)?;
        crate::ingest::record(
            tx,
            &c.stages,
            &crate::ingest::for_image(&c.projects, &push.repository),
            &push,
        )
    })?;
    if verdicts.is_empty() {
        anyhow::bail!(
            "no Stage uses {}: no Project has image {:?}",
            image,
            push.repository
        );
    }
    for v in verdicts {
        match v.ignored {
            None => println!("stage {}/{}: recorded {}", v.namespace, v.stage, push.tag),
            Some(why) => println!("stage {}/{}: ignored, {why}", v.namespace, v.stage),
        }
    }
    Ok(())
}

fn open(state_dir: &Path) -> anyhow::Result<StateDb> {
    anyhow::ensure!(
        state_dir.join("state.db").exists(),
        "no state store in {} (has `tiny-forge run` been started with this --state-dir?)",
        state_dir.display()
    );
    Ok(StateDb::open(state_dir)?)
}

/// The stored resource as the Kubernetes object it stands for.
pub fn to_object(r: &Stored) -> serde_json::Value {
    let mut meta = serde_json::json!({
        "name": r.name,
        "namespace": r.namespace,
        "uid": r.uid,
        "generation": r.generation,
        "creationTimestamp": r.created,
    });
    if let Some(source) = &r.source {
        meta["annotations"] = serde_json::json!({"tinyforge.dev/source": source});
    }
    serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": r.kind,
        "metadata": meta,
        "spec": r.spec,
        "status": r.status,
    })
}

fn table(kind: GetKind, rows: &[Stored], wide: bool, show_namespace: bool) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let ready = |r: &Stored| {
        r.status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .map(|c| s(&c["status"]))
            .unwrap_or_else(|| "Unknown".into())
    };
    let (mut header, mut lines): (Vec<&str>, Vec<Vec<String>>) = match kind {
        GetKind::Projects => (
            vec!["NAME", "IMAGE", "READY", "AGE"],
            rows.iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        s(&r.spec["image"]),
                        ready(r),
                        age(&r.created),
                    ]
                })
                .collect(),
        ),
        GetKind::Stages => (
            vec!["NAME", "PROJECT", "TAG", "PHASE", "READY", "AGE", "MESSAGE"],
            rows.iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        s(&r.spec["projectRef"]),
                        s(&r.status["current"]["tag"]),
                        s(&r.status["phase"]),
                        ready(r),
                        age(&r.created),
                        s(&r.status["message"]),
                    ]
                })
                .collect(),
        ),
    };
    if wide && kind == GetKind::Stages {
        // PROXY: the ProxyReady reason (Routed, DomainInUse, ProxyUnreachable…), for Stages
        // with domains.
        let proxy = |r: &Stored| {
            r.status["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "ProxyReady"))
                .map(|c| s(&c["reason"]))
                .unwrap_or_default()
        };
        header.splice(6..6, ["DESIRED", "LATEST", "CONTAINER", "PROXY"]);
        for (line, r) in lines.iter_mut().zip(rows) {
            line.splice(
                6..6,
                [
                    s(&r.status["desiredTag"]),
                    s(&r.status["latest"]["tag"]),
                    s(&r.status["current"]["containerName"]),
                    proxy(r),
                ],
            );
        }
    }
    if show_namespace {
        header.insert(0, "NAMESPACE");
        for (line, r) in lines.iter_mut().zip(rows) {
            line.insert(0, r.namespace.clone());
        }
    }
    if lines.is_empty() {
        return "No resources found.\n".into();
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut emit = |cells: Vec<String>| {
        let last = cells.len() - 1;
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                let _ = writeln!(out, "{cell}");
            } else {
                let _ = write!(out, "{cell:<w$}   ");
            }
        }
    };
    emit(header.iter().map(|h| h.to_string()).collect());
    for line in lines {
        emit(line);
    }
    out
}

/// kubectl's short ages: 45s, 12m, 3h, 5d.
fn age(created: &str) -> String {
    let Ok(then) = created.parse::<k8s_openapi::jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (k8s_openapi::jiff::Timestamp::now().as_second() - then.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `tiny-forge build`: queues a build of Project `namespace/name` at `sha`, else at the head of
/// `git_ref` (default: the first of `build.branches`, else the repository's default branch).
/// Built even if that commit was built before: a person asked.
pub fn request_build(
    db: &StateDb,
    secrets: &crate::store::StoreSecrets,
    namespace: &str,
    name: &str,
    git_ref: Option<&str>,
    sha: Option<&str>,
) -> anyhow::Result<i64> {
    use crate::adapters::git::{self, Credentials};
    let row = db
        .list(Kind::Project)?
        .into_iter()
        .find(|r| r.namespace == namespace && r.name == name)
        .ok_or_else(|| anyhow::anyhow!("Project {namespace}/{name} not found"))?;
    let spec: crate::api::ProjectSpec = serde_json::from_value(row.spec)?;
    let build = spec
        .build
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("Project {namespace}/{name} has no spec.build"))?;
    if let Some(sha) = sha {
        anyhow::ensure!(
            crate::engine::build::is_full_sha(sha),
            "--sha {sha:?}: give the full 40-digit commit id"
        );
    }
    let creds = Credentials {
        token: match &build.credentials_ref {
            Some(r) => Some(secrets.get(namespace, r)?),
            None => None,
        },
    };
    let url = build.repository.as_str();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (git_ref, sha) = rt.block_on(async {
        let git_ref = match (git_ref, build.branches.first()) {
            (Some(r), _) => r.to_string(),
            (None, Some(b)) => b.clone(),
            (None, None) => git::default_branch(url, &creds).await?,
        };
        let sha = match sha {
            Some(s) => s.to_ascii_lowercase(),
            None => git::resolve(url, &git_ref, &creds).await?,
        };
        Ok::<_, anyhow::Error>((git_ref, sha))
    })?;
    let requested = db.request_build(&crate::store::builds::Request {
        namespace,
        project: name,
        sha: &sha,
        git_ref: &git_ref,
        trigger: "cli",
        settings_hash: &crate::engine::build::settings_hash(&spec),
        force: true,
    })?;
    match requested {
        crate::store::builds::Requested::Queued { id, .. } => {
            eprintln!(
                "queued build #{id} of {namespace}/{name} at {} ({git_ref}); a running controller \
                 picks it up (tiny-forge builds {name})",
                &sha[..7.min(sha.len())]
            );
            Ok(id)
        }
        crate::store::builds::Requested::Known { id, .. } => Ok(id),
    }
}

/// `tiny-forge builds`: the build history, newest first.
pub fn builds(
    state_dir: &Path,
    project: Option<&str>,
    namespace: &str,
    json: bool,
) -> anyhow::Result<()> {
    let db = open(state_dir)?;
    let records = db.builds(project.map(|p| (namespace, p)))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<24} {:<8} {:<16} {:<10} {:<10} {:>8} {:>8}  IMAGE / ERROR",
        "ID", "PROJECT", "COMMIT", "REF", "TRIGGER", "STATE", "FETCH", "BUILD"
    );
    let ms = |v: Option<i64>| {
        v.map(|v| format!("{:.1}s", v as f64 / 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    for b in &records {
        let _ = writeln!(
            out,
            "{:<6} {:<24} {:<8} {:<16} {:<10} {:<10} {:>8} {:>8}  {}",
            b.id,
            format!("{}/{}", b.namespace, b.project),
            b.sha.get(..7).unwrap_or(&b.sha),
            b.git_ref,
            b.trigger,
            b.state.as_str(),
            ms(b.fetch_ms),
            ms(b.build_ms),
            b.error.as_deref().or(b.image.as_deref()).unwrap_or("")
        );
    }
    print!("{out}");
    Ok(())
}

/// `tiny-forge logs build`: the log of build `id` (default: the newest) of a Project; with
/// `follow`, what the build still writes, until it ends.
pub fn build_log(
    state_dir: &Path,
    namespace: &str,
    project: &str,
    id: Option<i64>,
    follow: bool,
) -> anyhow::Result<()> {
    use std::io::{Read as _, Seek as _, Write as _};
    let db = open(state_dir)?;
    let record = match id {
        Some(id) => db
            .build(id)?
            .filter(|b| b.namespace == namespace && b.project == project),
        None => db.builds(Some((namespace, project)))?.into_iter().next(),
    }
    .ok_or_else(|| anyhow::anyhow!("no such build of {namespace}/{project}"))?;
    let path =
        crate::sources::build::log_path(&state_dir.join("builds"), namespace, project, record.id);
    let mut offset = 0u64;
    let mut out = std::io::stdout();
    loop {
        // Read the state before the file: a build that ended has written its last line.
        let ended = db.build(record.id)?.is_none_or(|b| b.state.is_terminal());
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                f.seek(std::io::SeekFrom::Start(offset))?;
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)?;
                offset += bytes.len() as u64;
                out.write_all(&bytes)?;
                out.flush()?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !follow || ended {
                    eprintln!(
                        "build #{} ({}) has no log",
                        record.id,
                        record.state.as_str()
                    );
                    return Ok(());
                }
            }
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
        if !follow || ended {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let ago = |s: i64| {
            k8s_openapi::jiff::Timestamp::from_second(
                k8s_openapi::jiff::Timestamp::now().as_second() - s,
            )
            .unwrap()
            .to_string()
        };
        assert_eq!(age(&ago(5)), "5s");
        assert_eq!(age(&ago(600)), "10m");
        assert_eq!(age(&ago(3 * 3600)), "3h");
        assert_eq!(age(&ago(3 * 86_400)), "3d");
        assert_eq!(age("garbage"), "<unknown>");
    }
}
