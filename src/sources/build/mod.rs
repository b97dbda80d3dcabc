//! Builds as a source of announcements: a queued build (from a Git push the webhook recorder
//! matched, or `tiny-forge build`) is fetched at its exact commit, built on the Stages' Docker
//! engine, and its tag recorded like any push (`ingest::record`, source `build`). From there the
//! usual health-gated deploy with rollback takes over: the engine's state machine does not know
//! that the image was built here.
//!
//! The queue is the store (`store::builds`): a request is durable before its push is answered,
//! survives restarts, and `tiny-forge build` (another process) adds to it. This loop looks at
//! it twice a second: builds take seconds to minutes, a look is one indexed query.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::adapters::docker::{BuildError, DockerRuntime, ImageBuild};
use crate::adapters::git::{self, Credentials, GitError};
use crate::api::ProjectSpec;
use crate::engine::Reason;
use crate::engine::build::{BUILD_READY, BuildPlan, BuildState, public_url};
use crate::engine::conditions;
use crate::ingest::{Catalog, GitEvent, Push};
use crate::metrics::Metrics;
use crate::store::builds::{BuildRecord, BuildUpdate, IN_STATUS};
use crate::store::{Kind, StateDb, StoreSecrets};

/// How often the queue is looked at.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// A build log is cut here: a runaway build cannot fill the disk.
pub const MAX_LOG_BYTES: u64 = 2 * 1024 * 1024;

/// Settings of the build loop.
#[derive(Clone, Debug)]
pub struct Options {
    /// `<state-dir>/builds`: per Project a Git cache and the logs.
    pub root: PathBuf,
    /// Builds running at once, all Projects together.
    pub concurrency: usize,
}

/// Where a Project's build files are: `<root>/<namespace>/<project>`.
pub fn project_dir(root: &Path, namespace: &str, project: &str) -> PathBuf {
    root.join(namespace).join(project)
}

/// The log of build `id`.
pub fn log_path(root: &Path, namespace: &str, project: &str, id: i64) -> PathBuf {
    project_dir(root, namespace, project)
        .join("logs")
        .join(format!("{id}.log"))
}

/// The build loop: runs queued builds until `stop` turns true. `recorded` is told whenever a
/// build's tag was recorded, so the controller deploys it at once.
pub struct Builder {
    pub opts: Options,
    pub db: Arc<StateDb>,
    pub docker: DockerRuntime,
    pub secrets: StoreSecrets,
    pub metrics: Arc<Metrics>,
    pub recorded: mpsc::UnboundedSender<()>,
}

impl Builder {
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        match self.db.recover_builds() {
            Ok(again) if !again.is_empty() => {
                tracing::warn!(builds = ?again, "builds interrupted by a stop are queued once more")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot read the build queue"),
        }
        let this = Arc::new(self);
        let mut running: JoinSet<()> = JoinSet::new();
        // Running builds by id: one cancelled in the store (a newer push to its branch) is
        // stopped here; dropping it kills git and closes the engine's build.
        let mut handles: HashMap<i64, (tokio::task::AbortHandle, Instant, PathBuf)> =
            HashMap::new();
        loop {
            handles.retain(|_, (h, _, _)| !h.is_finished());
            let ids: Vec<i64> = handles.keys().copied().collect();
            for id in ids {
                if let Ok(Some(b)) = this.db.build(id)
                    && b.state == BuildState::Cancelled
                    && let Some((handle, started, log)) = handles.remove(&id)
                {
                    handle.abort();
                    let why = b.error.unwrap_or_default();
                    Log::append(&log).line(&format!("build #{id}: Cancelled ({why})"));
                    tracing::info!(build = id, reason = %why, "running build stopped");
                    this.metrics.built("Cancelled", started.elapsed());
                    this.publish(&b.namespace, &b.project, None);
                }
            }
            let free = this.opts.concurrency.max(1).saturating_sub(running.len());
            if free > 0 {
                match this.db.startable_builds(free) {
                    Ok(next) => {
                        for record in next {
                            // Claimed here, before the task runs: the next look cannot start it
                            // twice.
                            match this.db.advance_build(
                                record.id,
                                BuildState::Queued,
                                BuildState::Fetching,
                                &BuildUpdate::default(),
                            ) {
                                Ok(true) => {
                                    let (id, log) = (
                                        record.id,
                                        log_path(
                                            &this.opts.root,
                                            &record.namespace,
                                            &record.project,
                                            record.id,
                                        ),
                                    );
                                    this.publish(&record.namespace, &record.project, None);
                                    let this = this.clone();
                                    let handle =
                                        running.spawn(async move { this.build(record).await });
                                    handles.insert(id, (handle, Instant::now(), log));
                                }
                                Ok(false) => {}
                                Err(e) => tracing::error!(error = %e, "cannot start a build"),
                            }
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot read the build queue"),
                }
            }
            if let Ok(n) = this.db.queued_builds() {
                this.metrics.set_build_queue(n);
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                Some(_) = running.join_next() => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
        // A build in flight is abandoned: the next start reports it interrupted and runs it once
        // more (`recover_builds`).
        running.abort_all();
    }

    /// Runs one build (already `Fetching`) to its end and records the outcome.
    async fn build(&self, record: BuildRecord) {
        let started = Instant::now();
        let (ns, name) = (record.namespace.clone(), record.project.clone());
        let path = log_path(&self.opts.root, &ns, &name, record.id);
        let log = Log::create(&path);
        let sha7 = record.sha.get(..7).unwrap_or(&record.sha).to_string();
        tracing::info!(project = %format!("{ns}/{name}"), build = record.id, commit = %sha7, "build started");
        let outcome = match self.project(&ns, &name) {
            Some(spec) => {
                let timeout = BuildPlan::new(spec.build.as_ref().expect("checked")).timeout;
                match tokio::time::timeout(timeout, self.steps(&record, &spec, &log)).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        log.line(&format!(
                            "stopped: the build took longer than {}s (timeoutSeconds)",
                            timeout.as_secs()
                        ));
                        Outcome::Failed(
                            Reason::BuildTimedOut,
                            format!("timed out after {}s", timeout.as_secs()),
                        )
                    }
                }
            }
            None => Outcome::Cancelled("the Project no longer has spec.build".into()),
        };
        let (state, update, condition) = match &outcome {
            Outcome::Built {
                image,
                image_id,
                fetch_ms,
                build_ms,
            } => (
                BuildState::Succeeded,
                BuildUpdate {
                    fetch_ms: Some(*fetch_ms),
                    build_ms: Some(*build_ms),
                    image: Some(image.clone()),
                    image_id: Some(image_id.clone()),
                    error: None,
                },
                Some((
                    true,
                    Reason::Built,
                    format!(
                        "build #{} of {sha7} ({}): {image}",
                        record.id, record.git_ref
                    ),
                )),
            ),
            Outcome::Failed(reason, error) => (
                if *reason == Reason::BuildTimedOut {
                    BuildState::TimedOut
                } else {
                    BuildState::Failed
                },
                BuildUpdate {
                    error: Some(error.clone()),
                    ..Default::default()
                },
                Some((
                    false,
                    *reason,
                    format!(
                        "build #{} of {sha7} ({}) failed: {error}; what serves is unchanged \
                         (tiny-forge logs build {name} {})",
                        record.id, record.git_ref, record.id
                    ),
                )),
            ),
            Outcome::Cancelled(why) => (
                BuildState::Cancelled,
                BuildUpdate {
                    error: Some(why.clone()),
                    ..Default::default()
                },
                None,
            ),
        };
        log.line(&format!("build #{}: {}", record.id, state.as_str()));
        let moved = [BuildState::Building, BuildState::Fetching]
            .into_iter()
            .find_map(|from| {
                self.db
                    .advance_build(record.id, from, state, &update)
                    .ok()
                    .filter(|moved| *moved)
            })
            .is_some();
        if !moved {
            self.publish(&ns, &name, None);
            // Cancelled meanwhile (superseded by a newer push): what it built stays unrecorded.
            tracing::info!(
                build = record.id,
                "build cancelled while it ran; nothing recorded"
            );
            return;
        }
        self.metrics.built(state.as_str(), started.elapsed());
        tracing::info!(project = %format!("{ns}/{name}"), build = record.id, commit = %sha7, outcome = state.as_str(), error = update.error.as_deref().unwrap_or(""), "build finished");
        self.publish(
            &ns,
            &name,
            condition.as_ref().map(|(ok, r, m)| (*ok, *r, m.as_str())),
        );
        if let Outcome::Built { image, .. } = &outcome {
            self.record(&record, image);
        }
        match self.db.prune_builds(&ns, &name) {
            Ok(gone) => {
                for id in gone {
                    let _ = std::fs::remove_file(log_path(&self.opts.root, &ns, &name, id));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot prune build history"),
        }
    }

    fn project(&self, ns: &str, name: &str) -> Option<ProjectSpec> {
        let rows = self.db.list(Kind::Project).ok()?;
        let row = rows
            .into_iter()
            .find(|r| r.namespace == ns && r.name == name)?;
        serde_json::from_value::<ProjectSpec>(row.spec)
            .ok()
            .filter(|p| p.build.is_some())
    }

    /// Fetch, check, build. Each step's failure is an outcome with its reason.
    async fn steps(&self, record: &BuildRecord, spec: &ProjectSpec, log: &Log) -> Outcome {
        let settings = spec.build.as_ref().expect("checked by the caller");
        let plan = BuildPlan::new(settings);
        let url = plan.repository.as_str();
        let fetch_started = Instant::now();
        let creds = match &settings.credentials_ref {
            None => Credentials::default(),
            Some(r) => match self.secrets.get(&record.namespace, r) {
                Ok(token) => Credentials { token: Some(token) },
                // The error names the reference, never a value.
                Err(e) => return Outcome::Failed(Reason::FetchFailed, format!("credentials: {e}")),
            },
        };
        log.line(&format!(
            "build #{}: {} {} ({}), trigger {}",
            record.id,
            public_url(url),
            record.sha,
            record.git_ref,
            record.trigger
        ));
        // Pushes to other branches are turned away by the recorder once the default branch is
        // known; until then (the first build) the check is here. A build asked for by hand, or
        // run again after a stop, was checked (or chosen) before.
        if settings.branches.is_empty() && !matches!(record.trigger.as_str(), "cli" | "restart") {
            match git::default_branch(url, &creds).await {
                Ok(default) => {
                    if let Err(e) = self.db.set_default_branch(url, &default) {
                        tracing::warn!(error = %e, "cannot remember the default branch");
                    }
                    if default != record.git_ref {
                        return Outcome::Cancelled(format!(
                            "branch {} is not the default branch ({default}) that is built",
                            record.git_ref
                        ));
                    }
                }
                Err(e) => return fetch_failed(log, e),
            }
        }
        let dir = project_dir(&self.opts.root, &record.namespace, &record.project).join("repo");
        let cache = match git::Cache::open(&dir).await {
            Ok(c) => c,
            Err(e) => return fetch_failed(log, e),
        };
        log.line(&format!("fetching {}", record.sha));
        match cache
            .fetch(url, &record.sha, Some(&record.git_ref), &creds)
            .await
        {
            Ok(out) => log.text(&out),
            Err(e) => return fetch_failed(log, e),
        }
        let dockerfile = plan.dockerfile_path();
        if !cache.has_file(&record.sha, &dockerfile).await {
            let message = format!("no {dockerfile} in commit {}", record.sha);
            log.line(&message);
            return Outcome::Failed(Reason::DockerfileMissing, message);
        }
        let context = match cache.archive(&record.sha, &plan.context).await {
            Ok(tar) => tar,
            Err(e) => return fetch_failed(log, e),
        };
        let fetch_ms = fetch_started.elapsed().as_millis() as i64;
        if !matches!(
            self.db.advance_build(
                record.id,
                BuildState::Fetching,
                BuildState::Building,
                &BuildUpdate {
                    fetch_ms: Some(fetch_ms),
                    ..Default::default()
                },
            ),
            Ok(true)
        ) {
            return Outcome::Cancelled("cancelled while fetching".into());
        }
        self.publish(&record.namespace, &record.project, None);
        let event = GitEvent {
            repository: String::new(),
            branch: Some(record.git_ref.clone()),
            tag: None,
            sha: record.sha.clone(),
            kind: "push",
        };
        let tag = match crate::ingest::template_tag(spec, &event) {
            Ok(tag) => tag,
            Err(e) => return Outcome::Failed(Reason::BuildFailed, e),
        };
        let image = format!("{}:{tag}", spec.image);
        let labels = [
            ("org.opencontainers.image.revision", record.sha.clone()),
            ("org.opencontainers.image.source", public_url(url)),
            ("org.opencontainers.image.created", conditions::now()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let build = ImageBuild {
            tag: image.clone(),
            dockerfile: plan.dockerfile.clone(),
            target: plan.target.clone(),
            args: plan.args.clone(),
            labels,
        };
        log.line(&format!(
            "building {image} ({} bytes of context)",
            context.len()
        ));
        let build_started = Instant::now();
        match self
            .docker
            .build_image(context, &build, |line| log.line(line))
            .await
        {
            Ok(built) => Outcome::Built {
                image,
                image_id: built.id,
                fetch_ms,
                build_ms: build_started.elapsed().as_millis() as i64,
            },
            Err(BuildError::Failed(line)) => Outcome::Failed(Reason::BuildFailed, line),
            Err(BuildError::Engine(e)) => {
                log.line(&e.to_string());
                Outcome::Failed(Reason::BuildFailed, e.to_string())
            }
        }
    }

    /// The built tag as a push: `status.latest` of the Project's Stages whose policy takes it.
    fn record(&self, record: &BuildRecord, image: &str) {
        let Ok(push) = Push::parse(image, "build") else {
            return;
        };
        let push = Push {
            delivery_id: Some(format!("build-{}", record.id)),
            ..push
        };
        let result = self.db.batch(|tx| {
            let catalog = Catalog::load(tx)?;
            let Some(project) = catalog
                .projects
                .iter()
                .find(|p| p.namespace == record.namespace && p.name == record.project)
            else {
                return Ok(Vec::new());
            };
            crate::ingest::record(tx, &catalog.stages, &[project], &push)
        });
        match result {
            Ok(verdicts) => {
                for v in &verdicts {
                    match &v.ignored {
                        None => {
                            tracing::info!(stage = %format!("{}/{}", v.namespace, v.stage), tag = %v.tag, "built tag recorded")
                        }
                        Some(why) => {
                            tracing::info!(stage = %format!("{}/{}", v.namespace, v.stage), tag = %v.tag, reason = %why, "built tag not taken")
                        }
                    }
                }
                let _ = self.recorded.send(());
            }
            Err(e) => tracing::error!(error = %e, build = record.id, "cannot record the built tag"),
        }
    }

    /// Writes the Project's latest builds into its status, with the `BuildReady` condition
    /// when a build ended.
    fn publish(&self, ns: &str, name: &str, condition: Option<(bool, Reason, &str)>) {
        let recent: Vec<crate::api::BuildSummary> = match self.db.builds(Some((ns, name))) {
            Ok(all) => all
                .iter()
                .take(IN_STATUS)
                .map(BuildRecord::summary)
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the build history");
                return;
            }
        };
        let result = self.db.batch(|tx| {
            let mut status = tx.project_status(ns, name)?;
            let generation = status.observed_generation;
            if let Some((ok, reason, message)) = condition {
                conditions::set(
                    &mut status.conditions,
                    BUILD_READY,
                    ok,
                    reason.as_str(),
                    message,
                    generation,
                );
            }
            status.builds = recent;
            tx.save_project_status(ns, name, &status)
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot save the Project's status");
        }
    }
}

enum Outcome {
    Built {
        image: String,
        image_id: String,
        fetch_ms: i64,
        build_ms: i64,
    },
    Failed(Reason, String),
    Cancelled(String),
}

fn fetch_failed(log: &Log, e: GitError) -> Outcome {
    let message = e.to_string();
    log.line(&message);
    Outcome::Failed(Reason::FetchFailed, message)
}

/// A build's log on disk, cut at [`MAX_LOG_BYTES`]. Writing never fails the build: a log that
/// cannot be written is a warning.
pub struct Log {
    file: std::sync::Mutex<Option<(std::fs::File, u64)>>,
}

impl Log {
    fn create(path: &Path) -> Log {
        let file = path
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::File::create(path));
        let file = match file {
            Ok(f) => Some((f, 0)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the build log");
                None
            }
        };
        Log {
            file: std::sync::Mutex::new(file),
        }
    }

    /// Appends to an existing log (a note after its build was stopped).
    fn append(path: &Path) -> Log {
        let file = std::fs::OpenOptions::new().append(true).open(path).ok();
        let written = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Log {
            file: std::sync::Mutex::new(file.map(|f| (f, written))),
        }
    }

    fn text(&self, text: &str) {
        for line in text.lines() {
            self.line(line);
        }
    }

    fn line(&self, line: &str) {
        use std::io::Write;
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let Some((file, written)) = guard.as_mut() else {
            return;
        };
        if *written >= MAX_LOG_BYTES {
            return;
        }
        let line = format!("{}\n", line.trim_end());
        let room = MAX_LOG_BYTES - *written;
        let ok = if line.len() as u64 > room {
            file.write_all(b"... log cut here (2 MiB)\n")
        } else {
            file.write_all(line.as_bytes())
        };
        *written = if ok.is_ok() && (line.len() as u64) <= room {
            *written + line.len() as u64
        } else {
            MAX_LOG_BYTES
        };
    }
}
