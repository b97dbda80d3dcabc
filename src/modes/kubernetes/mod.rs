//! Kubernetes mode: Projects and Stages are custom resources, status lives in their status
//! subresource, and the same engine as standalone mode drives Docker.
//!
//! Every replica watches Projects, Stages and its own namespace's Secrets and answers webhooks;
//! the replica holding the Lease also runs the controllers (and so is the only one that deploys
//! and writes status other than `latest`).

pub mod containers;
pub mod controller;
pub mod ingest;
pub mod secrets;
pub mod status;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use kube::Client;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::adapters::npm::{Npm, NpmConfig};
use crate::api::{Project, Stage};
use crate::metrics::Metrics;
use crate::modes::host;
use crate::sources::webhook::server;
use controller::{Ctx, ProjectView};

/// Settings of `tiny-forge run --kubernetes`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch one namespace; None: all.
    pub namespace: Option<String>,
    /// Where the controller's Secrets and Lease live; None: the kubeconfig's (in a Pod: its own).
    pub controller_namespace: Option<String>,
    pub instance: String,
    pub docker_host: Option<String>,
    pub resync: Duration,
    pub concurrency: usize,
    pub webhook: Option<server::Config>,
    /// Name of the Secret holding the webhook URL secret (made when missing).
    pub webhook_secret: String,
    /// Base URL senders reach the listener at (`--public-url`): logged at start and written on
    /// the webhook Secret the controller makes (annotation `tinyforge.dev/public-url`).
    pub public_url: Option<String>,
    /// Create a Project and a `<name>-dev` Stage for pushed images nobody uses.
    pub auto_create: bool,
    /// Which images may be auto-created, and how many.
    pub auto_create_policy: crate::ingest::AutoCreatePolicy,
    pub npm: Option<NpmConfig>,
    pub leader_election: bool,
    pub lease_name: String,
    /// This replica's name in the Lease (the Pod name).
    pub identity: String,
}

impl Options {
    pub fn new(instance: &str) -> Options {
        Options {
            namespace: None,
            controller_namespace: None,
            instance: instance.to_string(),
            docker_host: None,
            resync: Duration::from_secs(30),
            concurrency: 4,
            webhook: None,
            webhook_secret: "tiny-forge-webhook".into(),
            public_url: None,
            auto_create: false,
            auto_create_policy: Default::default(),
            npm: None,
            leader_election: true,
            lease_name: "tiny-forge".into(),
            identity: default_identity(),
        }
    }
}

/// `$POD_NAME`, else the host name with a random suffix (two processes on one machine differ).
pub fn default_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "tiny-forge".into());
        format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
    })
}

/// Runs until `shutdown` resolves.
pub async fn run(
    opts: Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (in a Pod: its service account; else KUBECONFIG or ~/.kube/config)")?;
    let controller_namespace = opts
        .controller_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    tracing::info!(
        watch = opts.namespace.as_deref().unwrap_or("all namespaces"),
        namespace = %controller_namespace,
        instance = %opts.instance,
        "Kubernetes mode"
    );
    tokio::pin!(shutdown);
    let (stop_tx, stop_rx) = watch::channel(false);

    opts.auto_create_policy
        .validate()
        .map_err(anyhow::Error::msg)?;
    let index = ingest::ClusterIndex::start(
        client.clone(),
        opts.namespace.as_deref(),
        &controller_namespace,
        opts.webhook
            .as_ref()
            .filter(|c| c.webhooks)
            .map(|_| opts.webhook_secret.as_str()),
    );
    let metrics = Arc::new(Metrics::default());
    let listener = listen(
        &opts,
        &client,
        &index,
        &controller_namespace,
        &metrics,
        stop_rx.clone(),
    )
    .await?;

    let result = async {
        let connected =
            host::connect_docker(opts.docker_host.as_deref(), shutdown.as_mut(), |_| Ok(()))
                .await?;
        let Some(runtime) = connected else {
            return Ok(());
        };
        let ctx = context(&opts, &client, &index, runtime, metrics.clone())?;
        if !opts.leader_election {
            metrics.set_leader(true);
            let run = controllers(ctx.clone(), &opts, stop_rx.clone());
            tokio::pin!(run);
            tokio::select! {
                _ = &mut shutdown => {
                    let _ = stop_tx.send(true);
                    // In-flight reconciles finish (bounded); each step is safe to interrupt.
                    let _ = tokio::time::timeout(Duration::from_secs(30), &mut run).await;
                }
                _ = &mut run => {}
            }
            return Ok(());
        }
        lead(
            &client,
            &controller_namespace,
            &opts,
            ctx,
            &mut shutdown,
            stop_rx.clone(),
        )
        .await
    }
    .await;
    let _ = stop_tx.send(true);
    if let Some((server, keeper)) = listener {
        server.join().await;
        keeper.abort();
    }
    result
}

/// The webhook listener of every replica (when configured) and the task keeping its URL Secret,
/// until `stop` says true.
async fn listen(
    opts: &Options,
    client: &Client,
    index: &Arc<ingest::ClusterIndex>,
    controller_namespace: &str,
    metrics: &Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<(server::Server, tokio::task::JoinHandle<()>)>> {
    let Some(config) = &opts.webhook else {
        return Ok(None);
    };
    let public_url = opts
        .public_url
        .as_deref()
        .map(|u| u.trim_end_matches('/').to_string());
    let keeper = tokio::spawn(ingest::keep_url_secret(
        client.clone(),
        index.clone(),
        public_url.clone(),
    ));
    let recorder = ingest::spawn_recorder(
        client.clone(),
        index.clone(),
        opts.auto_create.then(|| ingest::AutoCreate {
            policy: opts.auto_create_policy.clone(),
            namespace: opts
                .namespace
                .clone()
                .unwrap_or_else(|| controller_namespace.to_string()),
        }),
    );
    let server = server::start(
        config.clone(),
        index.clone(),
        Arc::new(index.secrets.clone()),
        metrics.clone(),
        recorder,
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    )
    .await?;
    if config.webhooks {
        tracing::info!(listen = %server.local_addr, public_url = public_url.as_deref().unwrap_or("-"), secret = %format!("{controller_namespace}/{}", opts.webhook_secret), "webhook listener up");
    } else {
        tracing::info!(listen = %server.local_addr, "listener up: /healthz, /readyz and /metrics only (--no-webhooks)");
    }
    Ok(Some((server, keeper)))
}

/// What the controllers share: the engine on the connected Docker host, with the status sink,
/// Secrets and Projects of the cluster.
fn context(
    opts: &Options,
    client: &Client,
    index: &ingest::ClusterIndex,
    runtime: crate::adapters::docker::DockerRuntime,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<Ctx>> {
    let npm = match opts.npm.clone() {
        Some(config) => {
            anyhow::ensure!(
                !config.password.is_empty(),
                "Nginx Proxy Manager: no password (TINY_FORGE_NPM_PASSWORD, from the chart's npm.credentialsSecret)"
            );
            Some(Npm::new(config)?)
        }
        None => None,
    };
    Ok(Arc::new(Ctx {
        client: client.clone(),
        engine: Arc::new(host::single_host(
            runtime,
            status::KubeSink::new(client.clone()),
            index.secrets.clone(),
            npm,
            None,
            &opts.instance,
        )),
        containers: containers::ContainerCache::new(
            &opts.instance,
            (opts.resync / 2).clamp(Duration::from_secs(1), Duration::from_secs(10)),
        ),
        projects: ProjectView::new(index.projects.clone(), client.clone()),
        events: Recorder::new(
            client.clone(),
            Reporter {
                controller: "tiny-forge".into(),
                instance: Some(opts.identity.clone()),
            },
        ),
        resync: opts.resync,
        failures: Mutex::default(),
        metrics,
    }))
}

/// Runs the controllers while this replica holds the Lease.
async fn lead(
    client: &Client,
    namespace: &str,
    opts: &Options,
    ctx: Arc<Ctx>,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // The API server may be away at start: webhooks keep being answered meanwhile.
    let manager = loop {
        let built = LeaseManagerBuilder::new(client.clone(), &opts.lease_name)
            .with_namespace(namespace)
            .with_identity(&opts.identity)
            .with_duration(15)
            .with_grace(5)
            .with_field_manager("tiny-forge-lease")
            .build()
            .await;
        match built {
            Ok(m) => break m,
            Err(e) => tracing::warn!(error = %e, "cannot set up leader election; retrying in 5s"),
        }
        tokio::select! {
            _ = &mut *shutdown => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    };
    let (mut leader, lease_task) = manager.watch().await;
    let (confirmed_tx, mut confirmed) = watch::channel(false);
    let dog = tokio::spawn(watchdog(
        Api::namespaced(client.clone(), namespace),
        opts.lease_name.clone(),
        opts.identity.clone(),
        confirmed_tx,
    ));
    let leading = |l: &watch::Receiver<bool>, c: &watch::Receiver<bool>| *l.borrow() && *c.borrow();
    tracing::info!(lease = %format!("{namespace}/{}", opts.lease_name), identity = %opts.identity, "waiting for leadership");
    'terms: loop {
        while !leading(&leader, &confirmed) {
            tokio::select! {
                _ = &mut *shutdown => break 'terms,
                r = leader.changed() => if r.is_err() {
                    dog.abort();
                    anyhow::bail!("leader election ended")
                },
                _ = confirmed.changed() => {}
            }
        }
        tracing::info!("leading: starting the controllers");
        ctx.metrics.set_leader(true);
        ctx.engine.sink.written.clear();
        let (quit_tx, quit_rx) = watch::channel(false);
        let run = controllers(ctx.clone(), opts, quit_rx);
        tokio::pin!(run);
        loop {
            tokio::select! {
                _ = &mut *shutdown => {
                    let _ = quit_tx.send(true);
                    // In-flight reconciles finish (bounded); each step is safe to interrupt.
                    let _ = tokio::time::timeout(Duration::from_secs(30), &mut run).await;
                    ctx.metrics.set_leader(false);
                    break 'terms;
                }
                r = leader.changed() => if r.is_err() {
                    tracing::error!("leader election ended: stopping the controllers");
                    ctx.metrics.set_leader(false);
                    break 'terms;
                },
                _ = confirmed.changed() => {}
                _ = &mut run => break,
            }
            if !leading(&leader, &confirmed) {
                // Another replica may act any moment: stop at once rather than finish a deploy.
                tracing::warn!("lost leadership: stopping the controllers");
                break;
            }
        }
        ctx.metrics.set_leader(false);
        if *stop.borrow() {
            break;
        }
    }
    dog.abort();
    // Dropping the receiver makes the lease task release the Lease for the next replica.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the Lease"),
        Err(_) => tracing::warn!("releasing the Lease timed out"),
        _ => {}
    }
    Ok(())
}

/// Says whether this replica was seen holding the Lease within the last 10 s (of a 15 s Lease).
/// kube-lease-manager reports a lost Lease only once it has read that another replica holds it:
/// a leader cut off from the API server would go on deploying while another takes over. This
/// makes it stop before the Lease can expire for the others.
async fn watchdog(
    leases: Api<k8s_openapi::api::coordination::v1::Lease>,
    name: String,
    identity: String,
    confirmed: watch::Sender<bool>,
) {
    const FRESH: Duration = Duration::from_secs(10);
    let mut last_seen: Option<tokio::time::Instant> = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), leases.get_opt(&name)).await {
            Ok(Ok(lease)) => {
                let holder = lease.and_then(|l| l.spec?.holder_identity);
                last_seen =
                    (holder.as_deref() == Some(identity.as_str())).then(tokio::time::Instant::now);
            }
            // Unknown: only time decides.
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot read the Lease"),
            Err(_) => tracing::debug!("reading the Lease timed out"),
        }
        let fresh = last_seen.is_some_and(|t| t.elapsed() < FRESH);
        confirmed.send_if_modified(|c| std::mem::replace(c, fresh) != fresh);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The Stage and Project controllers, until `quit` says true.
async fn controllers(ctx: Arc<Ctx>, opts: &Options, quit: watch::Receiver<bool>) {
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let stages: Api<DeserializeGuard<Stage>> =
        ingest::scoped(&ctx.client, opts.namespace.as_deref());
    let projects: Api<DeserializeGuard<Project>> =
        ingest::scoped(&ctx.client, opts.namespace.as_deref());
    let config = kube::runtime::controller::Config::default()
        .concurrency(opts.concurrency.min(u16::MAX as usize) as u16);
    let stage_controller =
        Controller::new(stages, watcher::Config::default()).with_config(config.clone());
    let stage_store = stage_controller.store();
    let orphans = controller::collect_orphans(
        ctx.clone(),
        stage_store.clone(),
        opts.namespace.clone(),
        quit.clone(),
    );
    let mapper_ctx = ctx.clone();
    let stage_run = stage_controller
        .watches(
            projects.clone(),
            watcher::Config::default(),
            move |project| {
                // The Project's Stages, once the cache they read it from is told what to wait for;
                // none when the change does not concern them (e.g. the Project's status write).
                if !mapper_ctx.projects.saw(&project) {
                    return Vec::new();
                }
                let meta = kube::Resource::meta(&project);
                let (ns, name) = (
                    meta.namespace.clone(),
                    meta.name.clone().unwrap_or_default(),
                );
                stage_store
                    .state()
                    .into_iter()
                    .filter(|s| {
                        s.0.as_ref()
                            .is_ok_and(|s| s.spec.project_ref == name && s.metadata.namespace == ns)
                    })
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stopped(quit.clone()))
        .run(
            controller::reconcile_stage,
            controller::error_policy,
            ctx.clone(),
        )
        .for_each(|_| std::future::ready(()));
    let project_run = Controller::new(projects, watcher::Config::default())
        .with_config(config)
        .graceful_shutdown_on(stopped(quit))
        .run(
            controller::reconcile_project,
            controller::error_policy,
            ctx.clone(),
        )
        .for_each(|_| std::future::ready(()));
    futures::join!(stage_run, project_run, orphans);
}

#[cfg(test)]
mod mock_tests;
