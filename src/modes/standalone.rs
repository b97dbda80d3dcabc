//! Standalone mode: manifests from a directory, status in the embedded store, one Docker host.
//!
//! A small controller loop in the spirit of kube-runtime's: a Stage is reconciled when its inputs
//! change (its manifest, its Project, a newly seen tag), when its periodic resync is due (drift),
//! or after a backoff on transient errors; never twice at once. Containers are listed once per
//! pass for all Stages.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::Watcher as _;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use crate::adapters::docker::DockerRuntime;
use crate::adapters::npm::{Npm, NpmConfig};
use crate::adapters::probe::NetProber;
use crate::api::{Project, ProjectSpec, StageSpec, StageStatus, labels};
use crate::crypto::SecretBox;
use crate::engine::SinkError;
use crate::engine::policy::{Backoff, ByStage, Orphans, group_by_stage, orphan_grace};
use crate::engine::proxy::{Proxy as _, ROUTE_DRAIN};
use crate::engine::spec::assess_project;
use crate::engine::{
    Reconciled, Reconciler, Runtime, RuntimeError, StageInput, StageKey, StatusSink,
};
use crate::metrics::Metrics;
use crate::modes::host;
use crate::sources::webhook::{self, server};
use crate::store::ledger;
use crate::store::{Kind, Manifests, StateDb, StoreSecrets, Stored, load_dir};

/// Settings of `tiny-forge run` in standalone mode.
#[derive(Clone, Debug)]
pub struct Options {
    pub manifests: PathBuf,
    pub state_dir: PathBuf,
    pub secrets_dir: Option<PathBuf>,
    /// `DOCKER_HOST`-style endpoint; None reads `DOCKER_HOST`.
    pub docker_host: Option<String>,
    /// Periodic re-check of every Stage (drift repair).
    pub resync: Duration,
    /// Stages deployed at the same time.
    pub concurrency: usize,
    /// Ownership label value: containers of other instances on the same host are left alone.
    pub instance: String,
    /// The webhook listener; None: no listener.
    pub webhook: Option<crate::sources::webhook::server::Config>,
    /// Base URL senders reach the listener at (a TLS proxy in front, say) [default: the bound
    /// address]; `webhook url` prints it.
    pub public_url: Option<String>,
    /// Create a Project (and a `dev` Stage) for pushed images no Project uses.
    pub auto_create: bool,
    /// Which images may be auto-created, and how many.
    pub auto_create_policy: crate::ingest::AutoCreatePolicy,
    /// Key of the secrets sealed in the store [default: `<state-dir>/secret.key`].
    pub secret_key_file: Option<PathBuf>,
    /// Nginx Proxy Manager, when Stages' domains are to be routed. An empty password is read
    /// from the store: the sealed secret `tiny-forge/npm/password`.
    pub npm: Option<NpmConfig>,
    /// Builds from Git running at once, all Projects together.
    pub build_concurrency: usize,
    /// The port holder for Stages with a fixed `hostPort`; None publishes such ports directly.
    pub holder: Option<crate::adapters::holder::HolderConfig>,
    /// With no holder: the one an earlier run may have left, whose ports are released (and
    /// which is removed) at start so that containers can publish them.
    pub release_holder: Option<crate::adapters::holder::HolderConfig>,
}

impl Options {
    /// Defaults for `manifests` and `state_dir`, no webhook listener.
    pub fn new(manifests: PathBuf, state_dir: PathBuf) -> Options {
        Options {
            manifests,
            state_dir,
            secrets_dir: None,
            docker_host: None,
            resync: Duration::from_secs(30),
            concurrency: 4,
            instance: "standalone".into(),
            webhook: None,
            public_url: None,
            auto_create: true,
            auto_create_policy: Default::default(),
            secret_key_file: None,
            npm: None,
            build_concurrency: 1,
            holder: None,
            release_holder: None,
        }
    }

    pub fn key_file(&self) -> PathBuf {
        self.secret_key_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("secret.key"))
    }
}

type Engine = Reconciler<DockerRuntime, NetProber, DbSink, StoreSecrets, Option<Npm>>;

/// Saves intermediate status to the embedded store.
#[derive(Clone)]
pub struct DbSink(Arc<StateDb>);

impl StatusSink for DbSink {
    async fn save(&self, key: &StageKey, status: &StageStatus) -> Result<(), SinkError> {
        self.0
            .save_stage_status(&key.namespace, &key.stage, status)
            .map_err(|e| SinkError::Unavailable(e.to_string()))
    }
}

/// What wakes the controller loop: the manifest directory changed, or the webhook recorder
/// committed a push.
struct Wakes {
    files: mpsc::UnboundedReceiver<()>,
    pushed: mpsc::UnboundedReceiver<()>,
}

/// Per-Stage scheduling state.
#[derive(Default)]
struct Slot {
    running: bool,
    next_due: Option<Instant>,
    /// Inputs seen by the last finished reconcile; a change makes the Stage due at once.
    fingerprint: Option<String>,
    backoff: Backoff,
    finished: Option<Instant>,
}

/// Runs until `shutdown` resolves. Docker being unreachable is reported in every Stage's status
/// and retried; it does not end the loop (webhooks are still accepted meanwhile).
pub async fn run(
    opts: Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let db = Arc::new(StateDb::open(&opts.state_dir)?);
    anyhow::ensure!(
        opts.manifests.is_dir(),
        "--manifests {}: not a directory",
        opts.manifests.display()
    );
    tracing::info!(manifests = %opts.manifests.display(), state = %db.path().display(), "standalone mode");
    let sealer = SecretBox::load_or_create(&opts.key_file())?;
    // Readers get a connection of their own: they never wait for a writer's sync.
    let reader = Arc::new(StateDb::open(&opts.state_dir)?);
    let secrets = StoreSecrets {
        db: Some(reader.clone()),
        sealer: Some(sealer.clone()),
        dir: opts.secrets_dir.clone(),
    };

    let (wake_tx, wake_rx) = mpsc::unbounded_channel::<()>();
    let _watcher = watch(&opts.manifests, wake_tx)?;
    // Recorded pushes wake the controller on a channel of their own: no wait for an editor.
    let (pushed_tx, pushed_rx) = mpsc::unbounded_channel::<()>();
    // A recorded build wakes the controller like a recorded push.
    let built_tx = pushed_tx.clone();
    let mut wakes = Wakes {
        files: wake_rx,
        pushed: pushed_rx,
    };
    tokio::pin!(shutdown);
    // One shutdown signal for the controller and the listener.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Deliveries (the listener) and reconciles (the controller) on one `/metrics`.
    let metrics = Arc::new(Metrics::default());

    let listener = match &opts.webhook {
        None => None,
        Some(config) => {
            if config.webhooks {
                webhook::ensure_url_secret(&db, &sealer).map_err(anyhow::Error::msg)?;
                opts.auto_create_policy
                    .validate()
                    .map_err(anyhow::Error::msg)?;
            }
            let recorder = ledger::spawn_with(
                db.clone(),
                (config.webhooks && opts.auto_create)
                    .then(|| (opts.manifests.clone(), opts.auto_create_policy.clone())),
                pushed_tx,
            );
            let mut stop = stop_rx.clone();
            let server = server::start(
                config.clone(),
                server::StoreIndex::sealed(reader.clone(), sealer.clone()),
                Arc::new(secrets.clone()),
                metrics.clone(),
                recorder,
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )
            .await?;
            if config.webhooks {
                let base = webhook::public_base(opts.public_url.as_deref(), server.local_addr);
                webhook::record_public_base(&db, &base).map_err(anyhow::Error::msg)?;
                tracing::info!(
                    listen = %server.local_addr,
                    public = %base,
                    "webhook listener up (`tiny-forge webhook url` prints the URL to give senders)"
                );
            } else {
                tracing::info!(listen = %server.local_addr, "listener up: /healthz, /readyz and /metrics only (--no-webhooks)");
            }
            Some(server)
        }
    };
    let npm = match opts.npm.clone() {
        Some(mut config) => {
            if config.password.is_empty() {
                config.password = secrets
                    .get(
                        NPM_SECRET.0,
                        &crate::api::SecretKeyRef {
                            name: NPM_SECRET.1.into(),
                            key: NPM_SECRET.2.into(),
                        },
                    )
                    .map_err(|e| anyhow::anyhow!("Nginx Proxy Manager password: {e}"))?;
            }
            tracing::info!(url = %config.url, "routing domains through Nginx Proxy Manager");
            Some(Npm::new(config)?)
        }
        None => None,
    };
    let alongside = Alongside {
        metrics,
        built: built_tx,
        stop: stop_rx.clone(),
    };
    let result = control(opts, db, secrets, npm, alongside, &mut wakes, shutdown).await;
    let _ = stop_tx.send(true);
    if let Some(server) = listener {
        server.join().await;
    }
    result
}

/// What runs beside the controller and what it shares with it: the metrics, and for the build
/// loop the controller's wake-up and the shutdown signal.
struct Alongside {
    metrics: Arc<Metrics>,
    built: mpsc::UnboundedSender<()>,
    stop: tokio::sync::watch::Receiver<bool>,
}
/// How often the port holder's health is looked at between reconciles (a holder that stopped
/// answering is repaired at once).
const HOLDER_WATCH: Duration = Duration::from_secs(1);

/// Where `tiny-forge secret set npm password -n tiny-forge` puts the NPM password.
pub const NPM_SECRET: (&str, &str, &str) = ("tiny-forge", "npm", "password");

async fn control(
    opts: Options,
    db: Arc<StateDb>,
    secrets: StoreSecrets,
    proxy: Option<Npm>,
    Alongside {
        metrics,
        built,
        stop,
    }: Alongside,
    wake_rx: &mut Wakes,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<()> {
    // Until Docker answers, say so in status (and keep reading manifests so `get` is useful).
    let connected = host::connect_docker(opts.docker_host.as_deref(), shutdown.as_mut(), |e| {
        let manifests = sync_manifests(&opts.manifests, &db, &mut None)?;
        mark_all(&db, &manifests, e);
        Ok(())
    })
    .await?;
    let Some(runtime) = connected else {
        return Ok(());
    };
    // Builds use the engine the Stages run on: what they build is there to be deployed.
    let builder = crate::sources::build::Builder {
        opts: crate::sources::build::Options {
            root: opts.state_dir.join("builds"),
            concurrency: opts.build_concurrency,
        },
        db: db.clone(),
        docker: runtime.clone(),
        secrets: secrets.clone(),
        metrics: metrics.clone(),
        recorded: built,
    };
    let builds = tokio::spawn(builder.run(stop));
    let mut watcher = None;
    let holder = match &opts.holder {
        Some(config) => {
            let holder = crate::adapters::holder::DockerHolder::new(
                runtime.docker().clone(),
                &opts.instance,
                config.clone(),
            )?;
            tracing::info!(image = %config.image, control = %config.control, "fixed host ports are held by the port holder");
            let holder = Arc::new(holder);
            let watched = holder.clone();
            watcher = Some(tokio::spawn(async move {
                watched.watch(HOLDER_WATCH).await;
            }));
            Some(holder as Arc<dyn crate::engine::holder::PortHolder>)
        }
        None => {
            if let Some(config) = &opts.release_holder {
                let holder = crate::adapters::holder::DockerHolder::new(
                    runtime.docker().clone(),
                    &opts.instance,
                    config.clone(),
                )?;
                match holder.release().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(routes = n, "port holder off: its ports are released")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "port holder off, but the running one cannot be told to release its ports; Stages that publish them cannot start until it is removed")
                    }
                }
            }
            None
        }
    };
    let engine = Arc::new(host::single_host(
        runtime,
        DbSink(db.clone()),
        secrets,
        proxy,
        holder,
        &opts.instance,
    ));
    let result = Controller {
        missing: Orphans::new(orphan_grace(opts.resync), ROUTE_DRAIN),
        opts,
        db,
        engine,
        metrics,
        slots: HashMap::new(),
        tasks: JoinSet::new(),
        task_keys: HashMap::new(),
        last_errors: None,
        last_gc: None,
    }
    .run(wake_rx, shutdown)
    .await;
    builds.abort();
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    result
}

/// A finished reconcile: the Stage (namespace, name) and its outcome.
/// A finished reconcile: its Stage, its outcome and how long it took.
type Done = ((String, String), Reconciled, Duration);

struct Controller {
    opts: Options,
    db: Arc<StateDb>,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    slots: HashMap<(String, String), Slot>,
    tasks: JoinSet<Done>,
    task_keys: HashMap<tokio::task::Id, (String, String)>,
    last_errors: Option<Vec<String>>,
    last_gc: Option<Instant>,
    /// Stages gone, since when, and the routes removed.
    missing: Orphans<Key>,
}

type Key = (String, String);

/// A Stage to reconcile, with what its reconcile reads.
struct Due {
    key: Key,
    generation: i64,
    spec: StageSpec,
    project: Option<ProjectSpec>,
}

impl Controller {
    async fn run(
        mut self,
        wake: &mut Wakes,
        mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> anyhow::Result<()> {
        let mut manifests = self.reload()?;
        let mut last_reload = Instant::now();
        let mut last_version = self.db.data_version().unwrap_or_default();
        let mut last_catalog = self.catalog_version();
        // Whether anything a pass reads may have changed since the last one.
        let mut look = true;
        loop {
            if look {
                self.pass(&manifests).await;
            }
            let next = self
                .slots
                .values()
                .filter(|s| !s.running)
                .filter_map(|s| s.next_due)
                .min()
                .unwrap_or_else(|| Instant::now() + self.opts.resync)
                // Other processes (webhooks, the CLI) write the store: look at least every second.
                .min(Instant::now() + Duration::from_secs(1));
            look = true;
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = wake.files.recv() => {
                    // Editors write in several steps: let them finish, then read once.
                    sleep(Duration::from_millis(200)).await;
                    while wake.files.try_recv().is_ok() {}
                    manifests = self.reload_or_keep(manifests);
                    last_reload = Instant::now();
                    last_catalog = self.catalog_version();
                }
                Some(_) = wake.pushed.recv() => {
                    // A push was committed: act at once. The directory is read again only when
                    // the push created a Project for a new image (its file is written whole
                    // before its rows commit, which moves the catalog version), not for every
                    // push: with thousands of Projects a reload is what a push would wait for.
                    while wake.pushed.try_recv().is_ok() {}
                    let catalog = self.catalog_version();
                    if catalog != last_catalog {
                        manifests = self.reload_or_keep(manifests);
                        last_reload = Instant::now();
                        last_catalog = self.catalog_version();
                    }
                }
                Some(done) = self.tasks.join_next_with_id() => {
                    self.finish(done);
                    // Those finished meanwhile too: one pass for all of them, not one each (a
                    // pass lists and fingerprints every Stage).
                    while let Some(done) = self.tasks.try_join_next_with_id() {
                        self.finish(done);
                    }
                }
                _ = sleep_until(next) => {
                    // The watcher may miss events (network filesystems): re-read at each resync.
                    let version = self.db.data_version().unwrap_or_default();
                    if last_reload.elapsed() >= self.opts.resync || version != last_version {
                        manifests = self.reload_or_keep(manifests);
                        last_reload = Instant::now();
                        last_version = version;
                        last_catalog = self.catalog_version();
                    } else {
                        // Nothing read again: a pass only when a Stage's next look or the
                        // garbage collection is due (an idle controller of thousands of Stages
                        // would otherwise list and fingerprint them all every second).
                        let now = Instant::now();
                        look = self
                            .slots
                            .values()
                            .any(|s| !s.running && s.next_due.is_some_and(|d| d <= now))
                            || self.last_gc.is_none_or(|t| t.elapsed() >= self.opts.resync)
                            || self.missing.drained(now);
                    }
                }
            }
        }
        tracing::info!(
            in_flight = self.tasks.len(),
            "shutting down; waiting for deploys in flight"
        );
        // Every step is safe to interrupt; waiting merely avoids leaving work for the next start.
        let drain = async {
            while let Some(done) = self.tasks.join_next_with_id().await {
                self.finish(done)
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), drain)
            .await
            .is_err()
        {
            tracing::warn!("deploys still in flight after 30s; they resume on the next start");
        }
        Ok(())
    }

    /// The store's catalog version (moves when a spec or secret changes); 0 when unreadable.
    fn catalog_version(&self) -> i64 {
        self.db.read(|tx| tx.catalog_version()).unwrap_or_default()
    }

    fn reload(&mut self) -> anyhow::Result<Manifests> {
        sync_manifests(&self.opts.manifests, &self.db, &mut self.last_errors)
    }

    /// A directory briefly unreadable (a checkout replacing it, a network filesystem hiccup) or
    /// a busy store is no reason to stop: keep what was read last and try again later.
    fn reload_or_keep(&mut self, previous: Manifests) -> Manifests {
        match self.reload() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read the manifests; keeping the last ones");
                previous
            }
        }
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        let ((ns, name), reconciled, took) = match done {
            Ok((id, done)) => {
                self.task_keys.remove(&id);
                done
            }
            Err(e) => {
                // A panic in a reconcile must not disable its Stage: free the slot, back off.
                let key = self.task_keys.remove(&e.id());
                tracing::error!(error = %e, stage = ?key, "reconcile task failed");
                self.metrics.reconciled("Stage", "error", Duration::ZERO);
                if let Some(slot) = key.and_then(|k| self.slots.get_mut(&k)) {
                    slot.running = false;
                    slot.next_due = Some(Instant::now() + slot.backoff.panicked());
                }
                return;
            }
        };
        self.metrics
            .reconciled("Stage", reconciled.requeue.outcome(), took);
        if let Err(e) = self.db.save_stage_status(&ns, &name, &reconciled.status) {
            tracing::error!(stage = %format!("{ns}/{name}"), error = %e, "cannot save status");
        }
        let resync = self.opts.resync;
        let slot = self.slots.entry((ns, name)).or_default();
        slot.running = false;
        slot.finished = Some(Instant::now());
        // None: only a change of inputs (fingerprint) makes it due again.
        let delay = slot
            .backoff
            .after(reconciled.requeue, resync)
            .unwrap_or(Duration::from_secs(24 * 3600));
        slot.next_due = Some(Instant::now() + delay);
    }

    /// One pass: find due Stages, list containers once, collect orphans, dispatch.
    async fn pass(&mut self, manifests: &Manifests) {
        // Stages as the store knows them: a Stage in a broken file keeps its last good spec.
        let stored = match self.db.list(Kind::Stage) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the state store");
                return;
            }
        };
        let due = self.due(manifests, &stored);
        let known: BTreeSet<Key> = stored
            .iter()
            .map(|r| (r.namespace.clone(), r.name.clone()))
            .collect();
        self.slots.retain(|k, s| s.running || known.contains(k));
        // Every pass: a Stage's grace is counted from the pass that first finds it gone.
        self.missing.stages(&known, Instant::now());
        // Garbage collection runs with any pass that lists containers, and at least every
        // resync: also when no Stage is left to be due, and when a removed route's drain ends.
        let gc_due = self.last_gc.is_none_or(|t| t.elapsed() >= self.opts.resync)
            || self.missing.drained(Instant::now());
        if due.is_empty() && !gc_due {
            return;
        }
        self.last_gc = Some(Instant::now());

        let listed_at = Instant::now();
        let instance = [(labels::INSTANCE, self.opts.instance.as_str())];
        let containers = match self.engine.runtime.list_managed(&instance).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers");
                for d in &due {
                    self.report_unreachable(&d.key.0, &d.key.1, d.generation, &e);
                }
                return;
            }
        };
        let by_stage = group_by_stage(containers);
        // Orphans: ours, but no Stage. Not while any manifest is broken: the broken file might be
        // the one that defines their Stage, and deleting a serving container is not undoable.
        // Nor before the Stage has been gone for a grace period: a checkout or an editor may
        // remove a file and write it again a moment later. The route goes first, the containers
        // a drain later.
        if manifests.errors.is_empty() {
            self.collect_orphans(&by_stage, gc_due).await;
        }
        self.dispatch(due, by_stage, listed_at);
    }

    /// The Stages to reconcile now: their inputs changed (spec, Project, `latest`) or their
    /// next look (resync, backoff) is due; none that is running.
    fn due(&mut self, manifests: &Manifests, stored: &[Stored]) -> Vec<Due> {
        let now = Instant::now();
        let projects: BTreeMap<Key, &Project> = manifests
            .projects
            .iter()
            .map(|l| (key_of(&l.resource), &l.resource))
            .collect();
        let mut due = Vec::new();
        for row in stored {
            let Ok(spec) = serde_json::from_value::<StageSpec>(row.spec.clone()) else {
                continue;
            };
            let project = projects
                .get(&(row.namespace.clone(), spec.project_ref.clone()))
                .map(|p| &p.spec);
            let fingerprint = fingerprint(&row.spec, project, &row.status);
            let key = (row.namespace.clone(), row.name.clone());
            let slot = self.slots.entry(key.clone()).or_default();
            if slot.running {
                continue;
            }
            let changed = slot.fingerprint.as_deref() != Some(fingerprint.as_str());
            if changed || slot.next_due.is_none_or(|d| d <= now) {
                slot.fingerprint = Some(fingerprint);
                due.push(Due {
                    key,
                    generation: row.generation,
                    spec,
                    project: project.cloned(),
                });
            }
        }
        due
    }

    /// Starts the reconciles of `due` Stages on the containers listed at `listed_at`, as many
    /// as the concurrency allows; the rest (and those that finished after the listing began,
    /// which it may predate) wait for the next pass.
    fn dispatch(&mut self, due: Vec<Due>, mut by_stage: ByStage, listed_at: Instant) {
        let mut in_flight = self.slots.values().filter(|s| s.running).count();
        for Due {
            key,
            generation,
            spec,
            project,
        } in due
        {
            let slot = self.slots.entry(key.clone()).or_default();
            if slot.finished.is_some_and(|f| f > listed_at) || in_flight >= self.opts.concurrency {
                slot.fingerprint = None;
                continue;
            }
            slot.running = true;
            in_flight += 1;
            let observed = by_stage.remove(&key).unwrap_or_default();
            let engine = self.engine.clone();
            let db = self.db.clone();
            let task_key = key.clone();
            tracing::debug!(stage = %format!("{}/{}", key.0, key.1), "reconcile started");
            let handle = self.tasks.spawn(async move {
                let (ns, name) = &key;
                let status = db.stage_status(ns, name).unwrap_or_default();
                let input = StageInput {
                    key: StageKey {
                        namespace: ns.clone(),
                        project: spec.project_ref.clone(),
                        stage: name.clone(),
                    },
                    generation,
                    stage: &spec,
                    project: project.as_ref(),
                };
                let started = Instant::now();
                let reconciled = engine.reconcile(&input, &observed, status).await;
                (key, reconciled, started.elapsed())
            });
            self.task_keys.insert(handle.id(), task_key);
        }
    }

    /// Removes what gone Stages left behind, once their grace is over: the proxy host first, the
    /// containers once nginx stopped sending them requests (a drain later). While the proxy
    /// cannot be listed, containers that may still be routed to stay.
    async fn collect_orphans(&mut self, by_stage: &ByStage, gc_due: bool) {
        let now = Instant::now();
        let idle = |slots: &HashMap<Key, Slot>, k: &Key| !slots.get(k).is_some_and(|s| s.running);
        let mut candidates: Vec<&Key> = Vec::new();
        for k in by_stage.keys() {
            if self.missing.gone(k, now) && idle(&self.slots, k) {
                candidates.push(k);
            }
        }
        self.missing.retain_unrouted(|k| by_stage.contains_key(k));
        if candidates.is_empty() && !gc_due {
            return;
        }
        let routed: BTreeSet<Key> = match self.engine.proxy.owned(&self.opts.instance).await {
            Ok(owners) => {
                let mut routed = BTreeSet::new();
                for owner in owners {
                    let key = (owner.namespace.clone(), owner.stage.clone());
                    if !self.missing.gone(&key, now) || !idle(&self.slots, &key) {
                        continue;
                    }
                    tracing::info!(stage = %owner, "removing the proxy host of a removed Stage");
                    match self.engine.proxy.remove(&owner).await {
                        Ok(_) => self.missing.unrouted(&key, now),
                        Err(e) => {
                            tracing::warn!(stage = %owner, error = %e, "cannot remove proxy host");
                            routed.insert(key);
                        }
                    }
                }
                routed
            }
            Err(e) => {
                if !candidates.is_empty() {
                    tracing::warn!(error = %e, "cannot list proxy hosts; removed Stages' containers wait for it");
                }
                return;
            }
        };
        for key in candidates {
            if routed.contains(key) || !self.missing.route_drained(key, now) {
                continue;
            }
            // The port goes with the Stage: the holder lets go of it before its containers go.
            if let Some(holder) = &self.engine.holder {
                let stage = StageKey {
                    namespace: key.0.clone(),
                    project: String::new(),
                    stage: key.1.clone(),
                };
                let name = crate::engine::holder::route_name(&self.opts.instance, &stage);
                let removed = crate::engine::reconcile::remove_route(
                    holder.as_ref(),
                    &self.opts.instance,
                    &stage,
                )
                .await;
                if let Err(e) = removed {
                    tracing::warn!(route = %name, error = %e, "cannot remove the held port of a removed Stage");
                    continue;
                }
            }
            for c in &by_stage[key] {
                tracing::info!(container = %c.name, stage = %format!("{}/{}", key.0, key.1), "removing orphan container");
                if let Err(e) = self.engine.runtime.remove(&c.id).await {
                    tracing::warn!(container = %c.name, error = %e, "cannot remove orphan");
                }
            }
        }
    }

    fn report_unreachable(&mut self, ns: &str, name: &str, generation: i64, e: &RuntimeError) {
        let mut status = self.db.stage_status(ns, name).unwrap_or_default();
        if crate::engine::reconcile::report_unreachable(&mut status, generation, e)
            && let Err(err) = self.db.save_stage_status(ns, name, &status)
        {
            tracing::error!(error = %err, "cannot save status");
        }
        if let Some(slot) = self.slots.get_mut(&(ns.to_string(), name.to_string())) {
            slot.next_due = Some(Instant::now() + slot.backoff.failed());
            slot.fingerprint = None;
        }
    }
}

fn mark_all(db: &StateDb, manifests: &Manifests, e: &RuntimeError) {
    for l in &manifests.stages {
        let (ns, name) = key_of(&l.resource);
        let generation = l.resource.metadata.generation.unwrap_or(1);
        let mut status = db.stage_status(&ns, &name).unwrap_or_default();
        if crate::engine::reconcile::report_unreachable(&mut status, generation, e) {
            let _ = db.save_stage_status(&ns, &name, &status);
        }
    }
}

fn key_of<K: kube::Resource>(r: &K) -> (String, String) {
    (
        r.meta().namespace.clone().unwrap_or_default(),
        r.meta().name.clone().unwrap_or_default(),
    )
}

/// Reads the manifest directory into the store: new and changed specs get a generation, removed
/// resources are forgotten (their containers then become orphans and are removed), resources of
/// broken files keep their last good spec. Manifest problems are logged when they change.
pub fn sync_manifests(
    dir: &Path,
    db: &StateDb,
    last_errors: &mut Option<Vec<String>>,
) -> anyhow::Result<Manifests> {
    let started = Instant::now();
    // What the store held before the directory was read: only those rows can have been seen
    // removed. A row written meanwhile (the webhook listener creating a Project for a new image
    // writes its file, then its rows) is not this sync's to judge; the next sync reads its file.
    let mut before = Vec::new();
    for (kind, label) in [(Kind::Project, "Project"), (Kind::Stage, "Stage")] {
        for row in db.list(kind)? {
            before.push((kind, label, row.namespace, row.name, row.uid, row.source));
        }
    }
    let mut manifests = load_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let broken: BTreeSet<String> = manifests
        .broken_files()
        .map(|p| p.display().to_string())
        .collect();
    let mut errors: Vec<String> = manifests.errors.iter().map(ToString::to_string).collect();

    // One transaction for the whole directory: one sync to disk, not one per resource (a
    // directory of thousands of auto-created Projects reloads in a fraction of a second), and
    // readers never see half a reload.
    let (problems, removed) = db.batch(|tx| {
        let mut problems = Vec::new();
        let mut present = BTreeSet::new();
        for l in &mut manifests.projects {
            let (ns, name) = key_of(&l.resource);
            let source = l.file.display().to_string();
            let generation =
                tx.upsert(Kind::Project, &ns, &name, &l.resource.spec, Some(&source))?;
            l.resource.metadata.generation = Some(generation);
            present.insert(("Project", ns.clone(), name.clone()));
            // A Project is Ready when its own part of the spec is valid.
            let mut status = tx.project_status(&ns, &name)?;
            let before = status.clone();
            if let Some(problem) = assess_project(&name, &l.resource.spec, generation, &mut status)
            {
                problems.push(format!("{source} Project/{name}: {problem}"));
            }
            if status != before {
                tx.save_project_status(&ns, &name, &status)?;
            }
        }
        for l in &mut manifests.stages {
            let (ns, name) = key_of(&l.resource);
            let generation = tx.upsert(
                Kind::Stage,
                &ns,
                &name,
                &l.resource.spec,
                Some(&l.file.display().to_string()),
            )?;
            l.resource.metadata.generation = Some(generation);
            present.insert(("Stage", ns, name));
        }
        let mut removed = Vec::new();
        for (kind, label, namespace, name, uid, source) in before {
            let key = (label, namespace, name);
            // Kept: still defined, defined in a file that does not parse now, or defined twice
            // (a conflicting copy never costs the resource its state).
            let keep = present.contains(&key)
                || source.as_ref().is_some_and(|s| broken.contains(s))
                || manifests.conflicts.contains(&key);
            let (label, namespace, name) = key;
            // Only the row that was seen: one written again since (same name) stays.
            if !keep && tx.delete_seen(kind, &namespace, &name, &uid)? {
                removed.push(format!("{label} {namespace}/{name}"));
            }
        }
        Ok((problems, removed))
    })?;
    errors.extend(problems);
    for r in removed {
        tracing::info!(resource = %r, "removed from the manifests");
    }
    if last_errors.as_ref() != Some(&errors) {
        for e in &errors {
            tracing::error!("invalid manifest: {e}");
        }
        db.set_manifest_errors(&errors)?;
        *last_errors = Some(errors);
    }
    tracing::debug!(
        projects = manifests.projects.len(),
        stages = manifests.stages.len(),
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "manifests synced"
    );
    Ok(manifests)
}

fn watch(
    dir: &Path,
    wake: mpsc::UnboundedSender<()>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = wake.send(());
        }
    })
    .context("starting the manifest watcher")?;
    watcher
        .watch(dir, notify::RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok(watcher)
}

fn fingerprint(
    stage: &serde_json::Value,
    project: Option<&crate::api::ProjectSpec>,
    status: &serde_json::Value,
) -> String {
    let mut h = Sha256::new();
    h.update(stage.to_string());
    h.update(serde_json::to_string(&project).unwrap_or_default());
    h.update(
        status
            .get("latest")
            .map(|l| l.to_string())
            .unwrap_or_default(),
    );
    h.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}
