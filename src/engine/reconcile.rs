//! Level-based reconcile of one Stage: re-observe, decide, converge. It never asks *why* it runs;
//! every step is safe to repeat, so a crash anywhere converges on the next pass with no duplicate
//! container (names are deterministic) and no orphan (everything carries ownership labels).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::conditions::{self, READY, now};
use super::health::{self, Check, Prober, Reach};
use super::holder::{
    HeldRoute, HoldRequest, HolderError, PortHolder, legacy_route_name, route_name,
};
use super::reasons::Reason;
use super::runtime::{ContainerInfo, ContainerSpec, ImageInfo, Pull, Runtime, RuntimeError};
use super::spec::{Effective, EnvValueSource, StageKey, describe_errors};
use crate::api::{
    DeployRecord, Deployed, FailedDeploy, Outcome, Phase, PortRoute, ProjectSpec, ProxyRoute,
    ProxySettings, SeenTag, StageSpec, StageStatus, Upstream,
};
use crate::engine::proxy::{NoProxy, Owner, Proxy, ProxyError, Route};

/// Condition type of the proxy route.
pub const PROXY_READY: &str = "ProxyReady";

/// Deploys kept in `status.history`.
pub const HISTORY_LIMIT: usize = 10;

/// Writes a Stage's status while a deploy is under way (the final status is returned instead).
pub trait StatusSink: Send + Sync {
    fn save(
        &self,
        key: &StageKey,
        status: &StageStatus,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Why an intermediate status was not written. The deploy goes on (its final status is
/// returned to the caller), so this is only logged.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The store or the API server did not take the write.
    #[error("{0}")]
    Unavailable(String),
}

/// Resolves secret environment values. Synchronous: standalone reads small files, Kubernetes mode
/// reads a reflector cache.
pub trait Secrets: Send + Sync {
    fn value(&self, namespace: &str, source: &EnvValueSource<'_>) -> Result<String, SecretError>;
}

/// Why a secret value could not be had. Every kind is reported as `SecretUnavailable` and
/// retried (the user may add or share the secret); messages name the reference, never a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No such secret, key or file.
    #[error("{0}")]
    Missing(String),
    /// It exists, but the referring namespace may not use it (not shared with it; a file
    /// reference in Kubernetes mode).
    #[error("{0}")]
    Refused(String),
    /// It exists but cannot be read: not decryptable, not UTF-8, the store away.
    #[error("{0}")]
    Unreadable(String),
}

/// One Stage as the engine needs it, wherever it was stored.
pub struct StageInput<'a> {
    pub key: StageKey,
    pub generation: i64,
    pub stage: &'a StageSpec,
    /// None when the referenced Project does not exist.
    pub project: Option<&'a ProjectSpec>,
}

/// What the caller should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Converged: look again at the next periodic resync (drift).
    Resync,
    /// Transient trouble: retry with backoff.
    Retry,
    /// The spec is unusable: nothing changes until it does.
    WaitForChange,
}

impl Requeue {
    /// The reconcile's outcome as a metrics label, the same in both modes.
    pub fn outcome(self) -> &'static str {
        match self {
            Requeue::Resync => "converged",
            Requeue::Retry => "retry",
            Requeue::WaitForChange => "waiting",
        }
    }
}

/// The outcome of one reconcile.
#[derive(Debug)]
pub struct Reconciled {
    pub status: StageStatus,
    pub requeue: Requeue,
}

/// Drives one Docker host. Cheap to share behind an `Arc`.
pub struct Reconciler<R, P, S, X, N = NoProxy> {
    pub runtime: R,
    pub prober: P,
    pub sink: S,
    pub secrets: X,
    /// The proxy in front of the containers (`NoProxy` when none is configured).
    pub proxy: N,
    /// Name Stages use in `spec.dockerHost` for this runtime.
    pub host_name: String,
    /// This controller's ownership label value (`tinyforge.dev/instance`).
    pub instance: String,
    /// The port holder that owns fixed host ports, when this controller runs one: Stages with
    /// `hostPort` are then rolled without a gap (see `Effective::with_holder`).
    pub holder: Option<Arc<dyn PortHolder>>,
}

/// Which proxy settings a route is written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    /// The Stage's `spec.proxy`.
    Desired,
    /// Those nginx last accepted for this host (`status.proxy.settings`), while nginx's
    /// rejection of the desired ones is held; the desired ones when none are recorded.
    LastAccepted,
}

/// Why a new container did not take over; each is held against its tag (see `held_failure`).
#[derive(Debug)]
enum Failure {
    NoHealthCheck(String),
    StartFailed(String),
    Unhealthy(String),
    /// nginx or NPM refused the route to it.
    ProxySwitch(String),
}

impl Failure {
    fn reason(&self) -> Reason {
        match self {
            Failure::NoHealthCheck(_) => Reason::InvalidHealthCheck,
            Failure::StartFailed(_) => Reason::StartFailed,
            Failure::Unhealthy(_) => Reason::HealthCheckFailed,
            Failure::ProxySwitch(_) => Reason::ProxySwitchFailed,
        }
    }

    /// "1.2.0 {what} ({detail})".
    fn what(&self) -> &'static str {
        match self {
            Failure::NoHealthCheck(_) => "has no usable health check",
            Failure::StartFailed(_) => "did not start",
            Failure::Unhealthy(_) => "failed its health check",
            Failure::ProxySwitch(_) => "could not take over the proxy route",
        }
    }

    fn detail(&self) -> &str {
        match self {
            Failure::NoHealthCheck(d)
            | Failure::StartFailed(d)
            | Failure::Unhealthy(d)
            | Failure::ProxySwitch(d) => d,
        }
    }
}

/// The container that serves, as a steady pass finds it.
struct Serving<'a> {
    container: &'a ContainerInfo,
    port: Option<u16>,
    /// The Stage's other containers: leftovers, retired once the route is right.
    others: &'a [&'a ContainerInfo],
}

/// One deploy under way: what it rolls out, what it can go back to, and how it started.
struct Rollout<'a> {
    input: &'a StageInput<'a>,
    eff: &'a Effective,
    tag: String,
    digest: String,
    image: ImageInfo,
    spec: ContainerSpec,
    /// The new container when it exists already (an interrupted deploy, or drift).
    existing: Option<&'a ContainerInfo>,
    /// The Stage's other containers: retired on success.
    others: &'a [&'a ContainerInfo],
    /// Which proxy settings the route is written with.
    config: Config,
    started_at: String,
    /// Restarting the serving container after drift is not a deploy: no history, no retiring.
    drift_restart: bool,
    /// The rollback target: what status says serves, else the newest other container.
    fallback: Option<&'a ContainerInfo>,
    /// With a fixed host port held by a running old container: when its handover began (set
    /// when it does).
    handover: Option<Instant>,
}

impl<'a> Rollout<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        input: &'a StageInput<'a>,
        eff: &'a Effective,
        status: &StageStatus,
        tag: String,
        image: ImageInfo,
        spec: ContainerSpec,
        existing: Option<&'a ContainerInfo>,
        others: &'a [&'a ContainerInfo],
        config: Config,
    ) -> Rollout<'a> {
        let is_current =
            |c: &ContainerInfo| status.current.as_ref().is_some_and(|d| is_deployed(d, c));
        let fallback = others
            .iter()
            .find(|c| is_current(c))
            .or_else(|| others.iter().max_by_key(|c| (c.running, c.created)))
            .copied();
        let handover = (spec.host_port.is_some_and(|p| p != 0) && others.iter().any(|c| c.running))
            .then(Instant::now);
        Rollout {
            input,
            eff,
            digest: image.digest().to_string(),
            drift_restart: existing.is_some_and(is_current),
            tag,
            image,
            spec,
            existing,
            others,
            config,
            started_at: now(),
            fallback,
            handover,
        }
    }

    fn generation(&self) -> Option<i64> {
        Some(self.input.generation)
    }
}

/// A failed step: its condition reason and whether retrying may help.
struct StepError {
    reason: Reason,
    message: String,
    transient: bool,
}

impl From<RuntimeError> for StepError {
    fn from(e: RuntimeError) -> Self {
        StepError {
            reason: e.reason(),
            message: e.to_string(),
            transient: true,
        }
    }
}

impl<R: Runtime, P: Prober, S: StatusSink, X: Secrets, N: Proxy> Reconciler<R, P, S, X, N> {
    /// Converges one Stage. `observed` are the containers labelled with this Stage.
    #[tracing::instrument(skip_all, fields(stage = %input.key))]
    pub async fn reconcile(
        &self,
        input: &StageInput<'_>,
        observed: &[ContainerInfo],
        mut status: StageStatus,
    ) -> Reconciled {
        let generation = Some(input.generation);
        status.observed_generation = generation;
        let invalid = |mut status: StageStatus, reason: Reason, message: String| {
            tracing::warn!(%reason, %message, "stage cannot be reconciled");
            if status.current.is_none() {
                status.phase = Some(Phase::Pending);
            }
            report_stuck(&mut status, reason, message, generation);
            Reconciled {
                status,
                requeue: Requeue::WaitForChange,
            }
        };
        let Some(project) = input.project else {
            let message = format!(
                "Project {:?} not found in namespace {:?}",
                input.stage.project_ref, input.key.namespace
            );
            return invalid(status, Reason::ProjectNotFound, message);
        };
        let host = input.stage.docker_host.as_deref().unwrap_or("default");
        if host != self.host_name {
            let message = format!(
                "spec.dockerHost: unknown Docker host {host:?} (this instance drives {:?})",
                self.host_name
            );
            return invalid(status, Reason::UnknownDockerHost, message);
        }
        let unusable = match &self.holder {
            Some(holder) => holder.unusable().await,
            None => None,
        };
        let eff = match (Effective::new(project, input.stage), unusable) {
            (Ok(eff), None) => eff.with_holder(self.holder.is_some()),
            (Ok(eff), Some(why)) => eff.without_usable_holder(why),
            (Err(errors), _) => {
                return invalid(status, Reason::InvalidSpec, describe_errors(&errors));
            }
        };
        let converged = self.converge(input, &eff, observed, &mut status).await;
        if let Some(why) = &eff.holder_down {
            note_holder_down(&mut status, why);
        }
        match converged {
            Ok(requeue) => Reconciled { status, requeue },
            Err(e) => {
                tracing::warn!(reason = %e.reason, message = %e.message, "reconcile step failed");
                report_stuck(&mut status, e.reason, e.message, generation);
                Reconciled {
                    status,
                    requeue: if e.transient {
                        Requeue::Retry
                    } else {
                        Requeue::WaitForChange
                    },
                }
            }
        }
    }

    async fn converge(
        &self,
        input: &StageInput<'_>,
        eff: &Effective,
        observed: &[ContainerInfo],
        status: &mut StageStatus,
    ) -> Result<Requeue, StepError> {
        let generation = Some(input.generation);
        let desired = desired_tag(input.stage, eff, status);
        status.desired_tag = desired.clone();
        let Some(tag) = desired else {
            let message = format!(
                "waiting for a pushed tag that passes the policy ({}); or set spec.pinnedTag",
                eff.policy.describe()
            );
            status.phase = Some(Phase::Pending);
            report(status, false, Reason::NoTag, message, generation);
            return Ok(Requeue::Resync);
        };

        // A held failure: converge on what serves (its container, its proxy route) and leave
        // the failed tag alone.
        let held = held_failure(status, &tag, &inputs_hash(input)).cloned();
        // nginx rejected the proxy settings: keep the host on those it last accepted.
        let config = if held
            .as_ref()
            .is_some_and(|f| Reason::parse(&f.reason).is_some_and(Reason::is_proxy_config))
        {
            Config::LastAccepted
        } else {
            Config::Desired
        };
        let tag = match (&held, &status.current) {
            (None, _) => tag,
            (Some(_), Some(current)) => current.tag.clone(),
            (Some(failure), None) => {
                self.keep_serving(status, observed).await?;
                status.message = Some(failure.message.clone());
                return Ok(Requeue::Resync);
            }
        };

        let image = self.image_for(eff, status, &tag).await?;
        let secrets = self.resolve_secrets(&input.key.namespace, eff)?;
        let spec = eff.container_spec(&input.key, &self.instance, &tag, &image, &secrets);
        if eff.hold.is_none() && status.port.is_some() && eff.holder_down.is_some() {
            // No holder can run, so none serves the port: nothing to take back from it.
            status.port = None;
        }
        if eff.hold.is_none()
            && status.port.is_some()
            && let Some(holder) = &self.holder
        {
            // Held no more (opt-out, or no hostPort): the holder lets go of the port first, so
            // the container that publishes it directly can bind it.
            remove_route(holder.as_ref(), &self.instance, &input.key)
                .await
                .map_err(hold_step_error)?;
            status.port = None;
        }
        let target = observed.iter().find(|c| spec.is_named(&c.name));
        let others: Vec<&ContainerInfo> = observed
            .iter()
            .filter(|c| !spec.is_named(&c.name))
            .collect();

        if let Some(c) = target
            && c.running
            && status
                .current
                .as_ref()
                .is_some_and(|cur| is_deployed(cur, c))
        {
            let serving = Serving {
                container: c,
                port: spec.port,
                others: &others,
            };
            return self
                .keep_steady(input, eff, status, &serving, held, config)
                .await;
        }
        let mut rollout = Rollout::new(
            input, eff, status, tag, image, spec, target, &others, config,
        );
        self.deploy(&mut rollout, status).await
    }

    /// The image for `tag`. A steady Stage never contacts the registry: the image is looked up
    /// locally unless a newer digest of the same tag was announced, or the tag was re-pushed.
    async fn image_for(
        &self,
        eff: &Effective,
        status: &mut StageStatus,
        tag: &str,
    ) -> Result<ImageInfo, StepError> {
        let announced = status
            .latest
            .as_ref()
            .and_then(|l| (l.tag == tag).then_some(l.digest.as_ref()).flatten());
        // The serving tag announced again without a digest (Quay, a script) after it began
        // serving or was last looked up: a re-push, whose content only the registry knows.
        let repushed = status.current.as_ref().is_some_and(|c| {
            c.tag == tag
                && status.latest.as_ref().is_some_and(|l| {
                    l.tag == tag
                        && l.digest.is_none()
                        && c.resolved_at.as_ref().or(c.since.as_ref()) < Some(&l.seen_at)
                })
        });
        let steady_tag = !repushed
            && status
                .current
                .as_ref()
                .is_some_and(|c| c.tag == tag && announced.is_none_or(|d| *d == c.digest));
        let pull = if steady_tag {
            Pull::IfNotPresent
        } else {
            eff.pull(tag)
        };
        let reference = eff.reference(tag);
        let mut image = self.runtime.ensure_image(&reference, pull).await?;
        // An announced digest the local image is not (a re-pushed `stable` left a stale local
        // copy that IfNotPresent takes), or a re-push without a digest that the local image
        // does not explain (same content as what serves), is fetched whatever the tag's pull
        // policy says; only `Never` keeps to the local image.
        let running = status.current.as_ref().map(|c| c.digest.clone());
        if !steady_tag
            && pull == Pull::IfNotPresent
            && (announced.is_some_and(|d| d != image.digest())
                || (repushed && running.as_deref() == Some(image.digest())))
        {
            image = self.runtime.ensure_image(&reference, Pull::Always).await?;
        }
        if repushed
            && running.as_deref() == Some(image.digest())
            && let Some(current) = status.current.as_mut()
        {
            // Looked up: the registry still has what serves. Not again until the next push.
            current.resolved_at = Some(now());
        }
        Ok(image)
    }

    /// Steady state (also after a rollback back to what serves, or a Docker outage): the proxy
    /// must point here before leftovers of an interrupted deploy are retired — one of them may
    /// be what it still routes to.
    async fn keep_steady(
        &self,
        input: &StageInput<'_>,
        eff: &Effective,
        status: &mut StageStatus,
        serving: &Serving<'_>,
        held: Option<FailedDeploy>,
        config: Config,
    ) -> Result<Requeue, StepError> {
        let generation = Some(input.generation);
        let (c, others) = (serving.container, serving.others);
        // The holder's route first: a restarted container may have a new address, and a
        // leftover of an interrupted deploy may be what the port still reaches.
        let tag = status
            .current
            .as_ref()
            .map(|c| c.tag.clone())
            .unwrap_or_default();
        if let Err(e) = self
            .sync_hold(input, eff, status, &c.id, &c.name, serving.port, &tag)
            .await
        {
            let message = format!("{tag} runs, but its host port does not reach it: {e}");
            status.phase = Some(Phase::Degraded);
            report(status, false, e.reason(), message, generation);
            return Ok(Requeue::Retry);
        }
        if !others.is_empty()
            && let (Some(holder), Some(plan)) = (&self.holder, &eff.hold)
        {
            // The switch to this container may be an earlier pass's (a roll resumed after a
            // restart): the previous one is retired below only once the holder has drained it.
            let name = route_name(&self.instance, &input.key);
            self.wait_drained(holder.as_ref(), &name, plan.drain).await;
        }
        let mut proxied = self
            .sync_proxy(input, eff, status, &c.id, serving.port, config)
            .await;
        if let Err(rejected) = &proxied
            && rejected.route_at_fault()
            && config == Config::Desired
            && let Some(accepted) = accepted_settings(status)
            && eff.proxy.as_ref().is_some_and(|p| p.settings != accepted)
        {
            let rejected = rejected.clone();
            proxied = self
                .sync_proxy(
                    input,
                    eff,
                    status,
                    &c.id,
                    serving.port,
                    Config::LastAccepted,
                )
                .await;
            if proxied.is_ok() {
                self.retire(others, eff).await?;
                hold_rejected_settings(input, status, &rejected);
                return Ok(Requeue::Resync);
            }
        }
        if proxied.is_ok() {
            self.retire(others, eff).await?;
        }
        if let Err(e) = &proxied
            && unserved(status, e)
        {
            // The container runs; traffic for its domains does not reach it.
            let tag = status
                .current
                .as_ref()
                .map(|c| c.tag.as_str())
                .unwrap_or("");
            let message = format!("{tag} runs, but its domains are not served: {e}");
            status.phase = Some(Phase::Degraded);
            report(status, false, e.reason(), message, generation);
            return Ok(Requeue::Retry);
        }
        if let Some(failure) = held {
            status.message = Some(failure.message);
            return Ok(Requeue::Resync);
        }
        status.phase = Some(Phase::Healthy);
        status.last_failure = None;
        let message = serving_message(status);
        report(status, true, Reason::Healthy, message, generation);
        // The container side converged; the proxy catches up with backoff.
        Ok(if proxied.is_ok() {
            Requeue::Resync
        } else {
            Requeue::Retry
        })
    }

    /// Rolls `rollout` out: port handover → create (or adopt) → start → health gate → proxy
    /// switch and drain → promote and retire; or roll back and say why.
    async fn deploy(
        &self,
        ro: &mut Rollout<'_>,
        status: &mut StageStatus,
    ) -> Result<Requeue, StepError> {
        self.begin(ro, status).await;
        self.hand_over_port(ro).await?;
        let ro = &*ro;
        let id = self.create_or_adopt(ro).await?;
        let checked = self.start_and_check(ro, &id).await;
        let checked = match checked {
            Ok(took) => match self.switch_hold(ro, status, &id).await {
                Ok(()) => Ok(took),
                Err(e) => return Ok(self.wait_for_holder(ro, status, &e)),
            },
            Err(failure) => Err(failure),
        };
        let (verdict, proxy_error) = match checked {
            Ok(took) => self.switch_proxy(ro, status, &id, took).await,
            Err(failure) => (Err(failure), None),
        };
        match verdict {
            Ok(_) if proxy_error.is_some() && !ro.drift_restart && status.proxy.is_some() => {
                Ok(self.wait_for_proxy(ro, status))
            }
            Ok(took) => self.promote(ro, status, &id, took, proxy_error).await,
            // Nothing better to go back to: leave it to Docker's restart policy, say so.
            Err(failure) if ro.drift_restart => Err(StepError {
                reason: Reason::Unhealthy,
                message: format!(
                    "{} was restarted but is not healthy: {}",
                    ro.tag,
                    failure.detail()
                ),
                transient: true,
            }),
            Err(failure) => self.roll_back(ro, status, &id, failure).await,
        }
    }

    /// Says what is about to happen and saves it: a restarted controller resumes from it.
    async fn begin(&self, ro: &Rollout<'_>, status: &mut StageStatus) {
        let message = if ro.drift_restart {
            format!("restarting {}: its container was not running", ro.tag)
        } else {
            format!("deploying {} ({})", ro.tag, short(&ro.digest))
        };
        tracing::info!(tag = %ro.tag, digest = %ro.digest, container = %ro.spec.name, "{message}");
        status.phase = Some(Phase::Deploying);
        report(status, false, Reason::Deploying, message, ro.generation());
        self.save(&ro.input.key, status).await;
    }

    /// A fixed host port can be bound by one container only: the old one hands it over.
    async fn hand_over_port(&self, ro: &mut Rollout<'_>) -> Result<(), StepError> {
        if let Some(started) = &mut ro.handover {
            *started = Instant::now();
            for c in ro.others.iter().filter(|c| c.running) {
                self.runtime.stop(&c.id, stop_timeout(ro.eff)).await?;
            }
        }
        Ok(())
    }

    async fn create_or_adopt(&self, ro: &Rollout<'_>) -> Result<String, StepError> {
        if let Some(c) = ro.existing {
            return Ok(c.id.clone());
        }
        match self.runtime.create(&ro.spec).await {
            Ok(id) => Ok(id),
            // A crash between create and the status write left it there: same name, same spec.
            Err(RuntimeError::Conflict(_)) => Ok(ro.spec.name.clone()),
            Err(e) => {
                self.restore(ro.fallback, ro.handover.is_some()).await;
                Err(e.into())
            }
        }
    }

    /// Starts the container and waits for the health gate: how long it took, or why not.
    async fn start_and_check(&self, ro: &Rollout<'_>, id: &str) -> Result<Duration, Failure> {
        let check = Check::choose(&ro.eff.health, ro.spec.port, ro.image.has_healthcheck)
            .map_err(Failure::NoHealthCheck)?;
        self.runtime
            .start(id)
            .await
            .map_err(|e| Failure::StartFailed(e.to_string()))?;
        health::wait_healthy(
            &self.runtime,
            &self.prober,
            id,
            &check,
            &ro.eff.health,
            reach(&ro.spec),
        )
        .await
        .map_err(Failure::Unhealthy)
    }

    /// Healthy: the proxy switches to the new container before anything old is retired, then
    /// requests in flight to the old one drain. A route nginx or NPM refuses fails the deploy;
    /// the proxy away or the domain taken does not (returned beside the verdict).
    async fn switch_proxy(
        &self,
        ro: &Rollout<'_>,
        status: &mut StageStatus,
        id: &str,
        took: Duration,
    ) -> (Result<Duration, Failure>, Option<ProxyError>) {
        let routed_before = status.proxy.as_ref().map(|p| p.target.clone());
        match self
            .sync_proxy(ro.input, ro.eff, status, id, ro.spec.port, ro.config)
            .await
        {
            Ok(changed) => {
                // Also when an earlier attempt's write got through although NPM did not say so:
                // the route moved, requests may be in flight to the old container.
                let moved = status.proxy.as_ref().map(|p| &p.target) != routed_before.as_ref();
                if (changed || moved) && !ro.drift_restart {
                    let drain = ro.eff.proxy.as_ref().map(|p| p.drain).unwrap_or_default();
                    tokio::time::sleep(drain).await;
                }
                (Ok(took), None)
            }
            Err(e) if e.route_at_fault() && !ro.drift_restart => {
                (Err(Failure::ProxySwitch(e.to_string())), None)
            }
            Err(e) => (Ok(took), Some(e)),
        }
    }

    /// Healthy: the port holder switches the Stage's host port to the new container, then the
    /// old one drains (the holder finishes what is in flight to it, up to the drain time). A
    /// container that publishes the port itself (from before the holder, or an opt-out just
    /// lifted) hands it over first: that one roll has the old gap, none after it.
    async fn switch_hold(
        &self,
        ro: &Rollout<'_>,
        status: &mut StageStatus,
        id: &str,
    ) -> Result<(), HolderError> {
        let (Some(holder), Some(plan)) = (&self.holder, &ro.eff.hold) else {
            return Ok(());
        };
        let name = route_name(&self.instance, &ro.input.key);
        let first = self
            .sync_hold(
                ro.input,
                ro.eff,
                status,
                id,
                &ro.spec.name,
                ro.spec.port,
                &ro.tag,
            )
            .await;
        match first {
            Err(HolderError::PortTaken(..)) if ro.others.iter().any(|c| c.running) => {
                let mut stopped = Vec::new();
                let mut handed = Ok(());
                for c in ro.others.iter().filter(|c| c.running) {
                    tracing::info!(container = %c.name, "handing the host port over to the port holder");
                    if let Err(e) = self.runtime.stop(&c.id, stop_timeout(ro.eff)).await {
                        handed = Err(HolderError::Unavailable(e.to_string()));
                        break;
                    }
                    stopped.push(*c);
                }
                let second = match handed {
                    Ok(()) => {
                        self.sync_hold(
                            ro.input,
                            ro.eff,
                            status,
                            id,
                            &ro.spec.name,
                            ro.spec.port,
                            &ro.tag,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = second {
                    // The port is neither the holder's nor theirs: what served it serves it
                    // again, publishing it itself, until the next attempt.
                    for c in stopped {
                        tracing::warn!(container = %c.name, error = %e, "the port holder did not take the port; starting the previous container again");
                        if let Err(se) = self.runtime.start(&c.id).await {
                            tracing::error!(container = %c.name, error = %se, "could not restart the previous container");
                        }
                    }
                    return Err(e);
                }
            }
            other => {
                other?;
            }
        }
        // Whether this call switched or an earlier one did (a controller that stopped mid-roll
        // resumes here): the previous target keeps its requests until the holder says it has
        // drained.
        if !ro.drift_restart {
            self.wait_drained(holder.as_ref(), &name, plan.drain).await;
        }
        Ok(())
    }

    /// Until nothing is in flight to the previous target (the holder closes what is left at the
    /// end of the drain time; a little more is allowed for that).
    async fn wait_drained(&self, holder: &dyn PortHolder, name: &str, drain: Duration) {
        let deadline = Instant::now() + drain + Duration::from_secs(5);
        while Instant::now() < deadline {
            match holder.route(name).await {
                Ok(Some(r)) if r.draining > 0 => {}
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot see the drain; waiting the drain time");
                    tokio::time::sleep_until(deadline.min(Instant::now() + drain)).await;
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Points the holder's route of the Stage at container `id` (its own address and port) when
    /// it points elsewhere, and records it in `status.port`. Returns whether it switched.
    #[allow(clippy::too_many_arguments)]
    async fn sync_hold(
        &self,
        input: &StageInput<'_>,
        eff: &Effective,
        status: &mut StageStatus,
        id: &str,
        container: &str,
        port: Option<u16>,
        tag: &str,
    ) -> Result<bool, HolderError> {
        let (Some(holder), Some(plan)) = (&self.holder, &eff.hold) else {
            return Ok(false);
        };
        let name = route_name(&self.instance, &input.key);
        let state = match self.runtime.inspect(id).await {
            Ok(Some(state)) => state,
            Ok(None) => return Err(HolderError::Rejected(format!("{container} is gone"))),
            Err(e) => return Err(HolderError::Unavailable(e.to_string())),
        };
        let (Some(ip), Some(port)) = (state.ip, port) else {
            return Err(HolderError::Rejected(format!(
                "{container} has no address and port on a Docker network to forward to"
            )));
        };
        let target = SocketAddr::new(ip, port);
        let req = HoldRequest {
            name: name.clone(),
            listen: plan.listen,
            mode: plan.mode,
            target,
            drain: plan.drain,
            label: format!("{tag} {container}"),
        };
        let mut current = holder.route(&name).await?;
        if current.is_none() {
            current = self.migrate_route(holder.as_ref(), input, &req).await?;
        }
        let (routed, switched) = match current {
            Some(r)
                if r.listening
                    && r.target == target
                    && r.listen == plan.listen
                    && r.mode == plan.mode
                    && r.drain == plan.drain =>
            {
                (r, false)
            }
            before => {
                let routed = holder.switch(&req).await?;
                let moved = before.is_none_or(|b| b.target != target);
                if moved {
                    tracing::info!(%name, %target, listen = %plan.listen, "port holder switched");
                }
                (routed, moved)
            }
        };
        status.port = Some(PortRoute {
            listen: routed.listen.to_string(),
            target: routed.target.to_string(),
            container: container.to_string(),
            tag: tag.to_string(),
            since: rfc3339(routed.since_ms),
        });
        Ok(switched)
    }

    /// A route of the Stage under its name from before names ended in a hash
    /// ([`legacy_route_name`]) moves to its current name: created there with the target it has
    /// (binding the port beside it, as the holder binds with SO_REUSEPORT), then the old name
    /// is removed. The port is served throughout, and whatever switch follows drains as usual.
    /// A legacy route on another address is another Stage's whose name collided: left alone.
    async fn migrate_route(
        &self,
        holder: &dyn PortHolder,
        input: &StageInput<'_>,
        req: &HoldRequest,
    ) -> Result<Option<HeldRoute>, HolderError> {
        let legacy = legacy_route_name(&self.instance, &input.key);
        let Some(old) = holder.route(&legacy).await? else {
            return Ok(None);
        };
        if old.listen != req.listen {
            return Ok(None);
        }
        let moved = holder
            .switch(&HoldRequest {
                target: old.target,
                mode: old.mode,
                drain: old.drain,
                ..req.clone()
            })
            .await?;
        holder.remove(&legacy).await?;
        tracing::info!(from = %legacy, to = %req.name, "port holder route renamed");
        Ok(Some(moved))
    }

    /// The new container is healthy but the holder cannot switch to it now: both keep running
    /// (the holder, if it runs, still reaches the old one) and the switch is tried again.
    fn wait_for_holder(
        &self,
        ro: &Rollout<'_>,
        status: &mut StageStatus,
        e: &HolderError,
    ) -> Requeue {
        status.phase = Some(Phase::Deploying);
        let message = format!(
            "{} is healthy; waiting for the port holder to switch host port {} to it ({e})",
            ro.tag,
            ro.eff
                .hold
                .as_ref()
                .map(|h| h.listen.port())
                .unwrap_or_default()
        );
        tracing::warn!(tag = %ro.tag, error = %e, "port holder not switched");
        report(status, false, e.reason(), message, ro.generation());
        Requeue::Retry
    }

    /// The proxy still routes to the old container and cannot be switched now: keep both
    /// running and try the switch again (the new one is adopted by name).
    fn wait_for_proxy(&self, ro: &Rollout<'_>, status: &mut StageStatus) -> Requeue {
        status.phase = Some(Phase::Deploying);
        let why = status
            .conditions
            .iter()
            .find(|c| c.type_ == PROXY_READY)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let message = format!(
            "{} is healthy; waiting for the proxy to switch to it ({why})",
            ro.tag
        );
        report(
            status,
            false,
            Reason::ProxyPending,
            message,
            ro.generation(),
        );
        Requeue::Retry
    }

    /// The new container serves: retire the old ones, record the deploy.
    async fn promote(
        &self,
        ro: &Rollout<'_>,
        status: &mut StageStatus,
        id: &str,
        took: Duration,
        proxy_error: Option<ProxyError>,
    ) -> Result<Requeue, StepError> {
        let tag = &ro.tag;
        if !ro.drift_restart {
            self.retire(ro.others, ro.eff).await?;
        }
        let note = match ro.handover {
            None if ro.eff.hold.is_some() && !ro.drift_restart => format!(
                "healthy in {:.1}s; the port holder switched host port {} to it",
                took.as_secs_f64(),
                ro.eff
                    .hold
                    .as_ref()
                    .map(|h| h.listen.port())
                    .unwrap_or_default(),
            ),
            Some(started) => format!(
                "healthy in {:.1}s; host port {} handed over with a {:.1}s gap",
                took.as_secs_f64(),
                ro.spec.host_port.unwrap_or_default(),
                started.elapsed().as_secs_f64()
            ),
            None => format!("healthy in {:.1}s", took.as_secs_f64()),
        };
        tracing::info!(%tag, container = %ro.spec.name, "{note}");
        if !ro.drift_restart {
            let new = Deployed {
                tag: tag.clone(),
                digest: ro.digest.clone(),
                container_id: Some(id.to_string()),
                container_name: Some(ro.spec.name.clone()),
                since: Some(now()),
                resolved_at: None,
            };
            if let Some(old) = status.current.replace(new)
                && (old.tag != *tag || old.digest != ro.digest)
            {
                status.previous = Some(old);
            }
            let started = ro.started_at.clone();
            record(
                status,
                tag,
                Some(&ro.digest),
                started,
                Outcome::Succeeded,
                &note,
            );
        }
        status.last_failure = None;
        status.phase = Some(Phase::Healthy);
        let pending = proxy_error.is_some();
        match proxy_error.filter(|e| unserved(status, e)) {
            Some(e) => {
                // Healthy container, domains not reaching it: never Healthy beside Ready=False.
                status.phase = Some(Phase::Degraded);
                let message = format!("{tag} runs ({note}), but its domains are not served: {e}");
                report(status, false, e.reason(), message, ro.generation());
            }
            None => {
                let message = serving_message(status);
                report(status, true, Reason::Healthy, message, ro.generation());
            }
        }
        Ok(if pending {
            Requeue::Retry
        } else {
            Requeue::Resync
        })
    }

    /// The new container failed: remove it, bring the previous one back (and the proxy route
    /// to it, with the settings nginx last accepted), hold the failure, say what happened.
    async fn roll_back(
        &self,
        ro: &Rollout<'_>,
        status: &mut StageStatus,
        id: &str,
        failure: Failure,
    ) -> Result<Requeue, StepError> {
        let (tag, what, detail) = (&ro.tag, failure.what(), failure.detail());
        tracing::warn!(%tag, container = %ro.spec.name, reason = %detail, "deploy failed; rolling back");
        self.runtime.stop(id, 0).await?;
        self.runtime.remove(id).await?;
        let restored = self.restore(ro.fallback, ro.handover.is_some()).await;
        // The new settings may be what nginx rejected (NPM then took the host offline).
        let mut pointed_back = Ok(());
        if matches!(failure, Failure::ProxySwitch(_))
            && let Some(old) = restored
            && let Err(e) = self
                .sync_proxy(
                    ro.input,
                    ro.eff,
                    status,
                    &old.id,
                    port_of(old).or(ro.spec.port),
                    Config::LastAccepted,
                )
                .await
        {
            tracing::error!(error = %e, "could not point the proxy back at the previous container");
            pointed_back = Err(e);
        }
        let (phase, outcome, reason, message) = match (&restored, &status.current) {
            // With a fixed host port the old container stopped before the new one started:
            // clients met the failed tag (or nothing) on the port meanwhile.
            (Some(_), Some(cur)) if ro.handover.is_some() => (
                Phase::RolledBack,
                Outcome::RolledBack,
                Reason::RolledBack,
                format!(
                    "{tag} {what} ({detail}); {} serves again on host port {}, which {tag} held \
                     for {:.1}s (a fixed host port is handed over before the health check)",
                    cur.tag,
                    ro.spec.host_port.unwrap_or_default(),
                    ro.handover
                        .map(|t| t.elapsed())
                        .unwrap_or_default()
                        .as_secs_f64()
                ),
            ),
            (Some(_), Some(cur)) => (
                Phase::RolledBack,
                Outcome::RolledBack,
                Reason::RolledBack,
                match &pointed_back {
                    Ok(()) => format!("{tag} {what} ({detail}); {} keeps serving", cur.tag),
                    Err(e) => format!(
                        "{tag} {what} ({detail}); {} runs, but its domains are not served: {e}",
                        cur.tag
                    ),
                },
            ),
            _ => (
                Phase::Failed,
                Outcome::Failed,
                Reason::DeployFailed,
                format!("{tag} {what} ({detail}); nothing to roll back to"),
            ),
        };
        status.last_failure = Some(FailedDeploy {
            tag: tag.clone(),
            digest: Some(ro.digest.clone()),
            generation: ro.generation(),
            inputs: Some(inputs_hash(ro.input)),
            reason: failure.reason().as_str().into(),
            message: message.clone(),
        });
        let started = ro.started_at.clone();
        record(status, tag, Some(&ro.digest), started, outcome, &message);
        status.phase = Some(phase);
        report(status, false, reason, message, ro.generation());
        Ok(Requeue::Resync)
    }

    /// After a failed deploy: the previous container serves again (it was only stopped for a
    /// host-port handover, or a crash stopped it). Returns it when it runs.
    async fn restore<'c>(
        &self,
        fallback: Option<&'c ContainerInfo>,
        handover: bool,
    ) -> Option<&'c ContainerInfo> {
        let c = fallback?;
        if (handover || !c.running)
            && let Err(e) = self.runtime.start(&c.id).await
        {
            tracing::error!(container = %c.name, error = %e, "could not restart the previous container");
            return None;
        }
        Some(c)
    }

    /// Points the Stage's proxy host at `container` — or removes the host when the Stage has no
    /// route any more — and records it in `status.proxy` and the `ProxyReady` condition. Returns
    /// whether anything was written.
    async fn sync_proxy(
        &self,
        input: &StageInput<'_>,
        eff: &Effective,
        status: &mut StageStatus,
        container: &str,
        port: Option<u16>,
        config: Config,
    ) -> Result<bool, ProxyError> {
        let generation = Some(input.generation);
        let owner = Owner {
            instance: self.instance.clone(),
            namespace: input.key.namespace.clone(),
            stage: input.key.stage.clone(),
        };
        let Some(plan) = &eff.proxy else {
            if status.proxy.is_some() {
                self.proxy.remove(&owner).await?;
                status.proxy = None;
            }
            status.conditions.retain(|c| c.type_ != PROXY_READY);
            return Ok(false);
        };
        let fail = |status: &mut StageStatus, e: ProxyError| {
            tracing::warn!(stage = %owner, reason = %e.reason(), error = %e, "proxy not converged");
            conditions::set(
                &mut status.conditions,
                PROXY_READY,
                false,
                e.reason().as_str(),
                e.to_string(),
                generation,
            );
            Err(e)
        };
        let state = match self.runtime.inspect(container).await {
            Ok(Some(state)) => state,
            Ok(None) => return fail(status, ProxyError::Other("the container is gone".into())),
            Err(e) => return fail(status, ProxyError::Other(e.to_string())),
        };
        let (host, port) = match plan.upstream {
            Upstream::ContainerIp => (state.ip.map(|ip| ip.to_string()), port),
            Upstream::HostPort => (Some(plan.upstream_host.clone()), state.published_port),
        };
        let (Some(forward_host), Some(forward_port)) = (host, port) else {
            let e = ProxyError::Rejected(format!(
                "the container has no {} to route to",
                match plan.upstream {
                    Upstream::ContainerIp => "address and port",
                    Upstream::HostPort => "published port",
                }
            ));
            return fail(status, e);
        };
        let route = Route {
            owner: owner.clone(),
            project: input.key.project.clone(),
            generation: input.generation,
            domains: plan.domains.clone(),
            forward_scheme: plan.scheme.clone(),
            forward_host,
            forward_port,
            settings: match config {
                Config::Desired => plan.settings.clone(),
                Config::LastAccepted => {
                    accepted_settings(status).unwrap_or_else(|| plan.settings.clone())
                }
            },
        };
        match self.proxy.ensure(&route).await {
            Ok(ensured) => {
                if ensured.changed {
                    tracing::info!(stage = %owner, target = %route.target(), domains = ?route.domains, "proxy routed");
                }
                status.proxy = Some(ProxyRoute {
                    host_id: ensured.host_id,
                    domains: route.domains.clone(),
                    target: route.target(),
                    settings: Some(route.settings.clone()),
                });
                let message = format!("{} → {}", route.domains.join(", "), route.target());
                conditions::set(
                    &mut status.conditions,
                    PROXY_READY,
                    true,
                    Reason::Routed.as_str(),
                    message,
                    generation,
                );
                Ok(ensured.changed)
            }
            Err(e) => fail(status, e),
        }
    }

    /// Held after a failure: keep what serves up, and nothing else.
    async fn keep_serving(
        &self,
        status: &StageStatus,
        observed: &[ContainerInfo],
    ) -> Result<(), StepError> {
        let current_id = status
            .current
            .as_ref()
            .and_then(|c| c.container_id.as_deref());
        for c in observed {
            if Some(c.id.as_str()) == current_id {
                if !c.running {
                    tracing::info!(container = %c.name, "restarting the serving container");
                    self.runtime.start(&c.id).await?;
                }
            } else {
                self.runtime.stop(&c.id, 0).await?;
                self.runtime.remove(&c.id).await?;
            }
        }
        Ok(())
    }

    async fn retire(&self, others: &[&ContainerInfo], eff: &Effective) -> Result<(), StepError> {
        for c in others {
            tracing::info!(container = %c.name, tag = c.label(crate::api::labels::TAG).unwrap_or("?"), "retiring");
            if c.running {
                self.runtime.stop(&c.id, stop_timeout(eff)).await?;
            }
            self.runtime.remove(&c.id).await?;
        }
        Ok(())
    }

    fn resolve_secrets(
        &self,
        namespace: &str,
        eff: &Effective,
    ) -> Result<BTreeMap<String, String>, StepError> {
        eff.secret_refs()
            .map(|(var, source)| {
                self.secrets
                    .value(namespace, &source)
                    .map(|v| (var.name.clone(), v))
                    .map_err(|e| StepError {
                        reason: Reason::SecretUnavailable,
                        message: format!("env {}: {e}", var.name),
                        transient: true,
                    })
            })
            .collect()
    }

    async fn save(&self, key: &StageKey, status: &StageStatus) {
        if let Err(e) = self.sink.save(key, status).await {
            tracing::warn!(error = %e, "could not save intermediate status");
        }
    }
}

/// Says in status, whatever else it says, that the Stage's port is published directly because
/// no port holder can run: the roll that follows has a gap.
fn note_holder_down(status: &mut StageStatus, why: &str) {
    let note = format!(
        "port holder unavailable: {why}; rolls of this Stage have a gap (its host port is published directly)"
    );
    let message = status.message.take().unwrap_or_default();
    status.message = Some(if message.contains(&note) {
        message
    } else if message.is_empty() {
        note
    } else {
        format!("{message}; {note}")
    });
}

/// Removes the Stage's route from the holder, under its current and its legacy name. Returns
/// whether there was one.
pub async fn remove_route(
    holder: &dyn PortHolder,
    instance: &str,
    key: &StageKey,
) -> Result<bool, HolderError> {
    let current = holder.remove(&route_name(instance, key)).await?;
    let legacy = holder.remove(&legacy_route_name(instance, key)).await?;
    Ok(current || legacy)
}

/// A holder failure that stops a step: transient (the holder comes back, the port is freed).
fn hold_step_error(e: HolderError) -> StepError {
    StepError {
        reason: e.reason(),
        message: e.to_string(),
        transient: true,
    }
}

/// Milliseconds since the epoch as RFC 3339, to the second (as the conditions' times).
fn rfc3339(ms: u64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or_default())
        .and_then(|t| t.round(k8s_openapi::jiff::Unit::Second))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The tag a Stage wants: its pin; else, with `autoDeploy`, the newest seen tag that passes the
/// policy; else whatever serves now (nothing changes by itself).
pub fn desired_tag(stage: &StageSpec, eff: &Effective, status: &StageStatus) -> Option<String> {
    if let Some(pin) = &stage.pinned_tag {
        return Some(pin.clone());
    }
    let latest = status
        .latest
        .as_ref()
        .filter(|l| stage.auto_deploy && eff.policy.accepts(&l.tag));
    latest
        .map(|l: &SeenTag| l.tag.clone())
        .or_else(|| status.current.as_ref().map(|c| c.tag.clone()))
}

/// nginx rejected the new proxy settings (NPM then takes the host offline) and the host is back
/// on those it accepted last: hold the new ones until the spec changes, and say so.
fn hold_rejected_settings(input: &StageInput<'_>, status: &mut StageStatus, rejected: &ProxyError) {
    let generation = Some(input.generation);
    let serving = status.current.clone().unwrap_or_default();
    let message = format!(
        "{} is serving with the last proxy settings nginx accepted; the new ones were rejected ({rejected})",
        serving.tag
    );
    status.last_failure = Some(FailedDeploy {
        tag: serving.tag,
        digest: Some(serving.digest),
        generation,
        inputs: Some(inputs_hash(input)),
        reason: rejected.reason().as_str().into(),
        message: message.clone(),
    });
    status.phase = Some(Phase::Degraded);
    report(status, false, rejected.reason(), message, generation);
}

/// The proxy settings nginx last accepted for the Stage's host.
fn accepted_settings(status: &StageStatus) -> Option<ProxySettings> {
    status.proxy.as_ref().and_then(|p| p.settings.clone())
}

/// Whether a proxy error means the Stage's domains do not reach its container: the domain is
/// another host's, nginx does not take the host's configuration, or no route exists at all.
/// (NPM away while a route exists: that route still stands.)
fn unserved(status: &StageStatus, e: &ProxyError) -> bool {
    match e {
        ProxyError::DomainInUse { .. } | ProxyError::NginxOffline(_) | ProxyError::Rejected(_) => {
            true
        }
        ProxyError::Unreachable(_) | ProxyError::Auth(_) | ProxyError::Other(_) => {
            status.proxy.is_none()
        }
    }
}

/// A failure is held (not retried) while the tag, the spec generation and the announced digest
/// are what failed: retrying the same thing would fail the same way and flap the service.
fn held_failure<'s>(status: &'s StageStatus, tag: &str, inputs: &str) -> Option<&'s FailedDeploy> {
    let f = status.last_failure.as_ref()?;
    let announced = status
        .latest
        .as_ref()
        .filter(|l| l.tag == tag)
        .and_then(|l| l.digest.as_ref());
    let same_digest = match (announced, &f.digest) {
        (Some(a), Some(d)) => a == d,
        _ => true,
    };
    // Recorded by versions that rolled back when NPM merely failed to answer (say a 502 while
    // its backend restarted): not a verdict on the tag, so not held — it is tried again.
    let proxy_away = Reason::parse(&f.reason) == Some(Reason::ProxySwitchFailed)
        && f.message
            .contains("could not take over the proxy route (the proxy answered: ");
    (f.tag == tag && f.inputs.as_deref() == Some(inputs) && same_digest && !proxy_away).then_some(f)
}

/// What a failure is held against: the Stage's spec and its Project's, so an edit of either
/// lifts the hold.
fn inputs_hash(input: &StageInput<'_>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(input.stage).unwrap_or_default());
    h.update(serde_json::to_vec(&input.project).unwrap_or_default());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `c` is the container `d` records (by id, or by its deterministic name when the id
/// was not known, e.g. after adopting it on a create conflict).
fn is_deployed(d: &Deployed, c: &ContainerInfo) -> bool {
    d.container_id.as_deref() == Some(c.id.as_str())
        || d.container_name.as_deref() == Some(c.name.as_str())
}

fn record(
    status: &mut StageStatus,
    tag: &str,
    digest: Option<&str>,
    started: String,
    outcome: Outcome,
    message: &str,
) {
    status.history.insert(
        0,
        DeployRecord {
            tag: tag.to_string(),
            digest: digest.map(str::to_string),
            started,
            finished: now(),
            outcome,
            message: message.to_string(),
        },
    );
    status.history.truncate(HISTORY_LIMIT);
}

/// The port an existing container listens on, from its label.
fn port_of(c: &ContainerInfo) -> Option<u16> {
    c.label(crate::api::labels::PORT)
        .and_then(|p| p.parse().ok())
}

fn reach(spec: &ContainerSpec) -> Reach {
    let host_ip = match spec.host_ip.as_deref().map(str::parse::<IpAddr>) {
        Some(Ok(ip)) if !ip.is_unspecified() => ip,
        _ => IpAddr::from([127, 0, 0, 1]),
    };
    Reach {
        host_port: spec.host_port.map(|p| (host_ip, p)),
    }
}

fn stop_timeout(eff: &Effective) -> u32 {
    eff.settings.stop_timeout_seconds.unwrap_or(10)
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

/// Ready=False with the runtime's reason (Docker unreachable while listing, before any step):
/// true when that changed something.
pub fn report_unreachable(status: &mut StageStatus, generation: i64, e: &RuntimeError) -> bool {
    let before = status.clone();
    report_stuck(status, e.reason(), e.to_string(), Some(generation));
    *status != before
}

/// "X is serving (how its deploy went)", from status alone: a resync or a restart writes the very
/// message the deploy wrote, so a converged status is never rewritten.
fn serving_message(status: &StageStatus) -> String {
    let Some(cur) = &status.current else {
        return String::new();
    };
    let deploy = status.history.iter().find(|r| {
        r.outcome == Outcome::Succeeded
            && r.tag == cur.tag
            && r.digest.as_deref() == Some(cur.digest.as_str())
    });
    match deploy {
        Some(r) => format!("{} is serving ({})", cur.tag, r.message),
        None => format!("{} is serving", cur.tag),
    }
}

/// `Ready=False` for a Stage that cannot converge now (a step failed, the spec became unusable,
/// Docker is away). Phase and conditions tell one story: with a deployed container the phase is
/// `Degraded` — never `Healthy` beside `Ready=False` — and the message names what is deployed.
fn report_stuck(
    status: &mut StageStatus,
    reason: Reason,
    message: String,
    generation: Option<i64>,
) {
    let message = match &status.current {
        Some(cur) => {
            status.phase = Some(Phase::Degraded);
            format!("{message}; {} is still the deployed version", cur.tag)
        }
        None => message,
    };
    report(status, false, reason, message, generation);
}

/// Sets the `Ready` condition and the one-line `message` together: they always say the same.
fn report(
    status: &mut StageStatus,
    ok: bool,
    reason: Reason,
    message: String,
    generation: Option<i64>,
) {
    conditions::set(
        &mut status.conditions,
        READY,
        ok,
        reason.as_str(),
        &message,
        generation,
    );
    status.message = Some(message);
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod machine_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_that_failed_because_npm_did_not_answer_is_not_held() {
        let failure = |reason: &str, message: &str| StageStatus {
            last_failure: Some(FailedDeploy {
                tag: "1.1.0".into(),
                digest: None,
                generation: Some(2),
                inputs: Some("abc".into()),
                reason: reason.into(),
                message: message.into(),
            }),
            ..Default::default()
        };
        // What earlier versions recorded for a 502 from NPM's nginx: retried.
        let away = failure(
            "ProxySwitchFailed",
            "1.1.0 could not take over the proxy route (the proxy answered: HTTP 502); 1.0.0 keeps serving",
        );
        assert!(held_failure(&away, "1.1.0", "abc").is_none());
        // nginx rejecting the route, or a broken image: held until something changes.
        let rejected = failure(
            "ProxySwitchFailed",
            "1.1.0 could not take over the proxy route (nginx did not accept the new configuration: x); 1.0.0 keeps serving",
        );
        assert!(held_failure(&rejected, "1.1.0", "abc").is_some());
        assert!(held_failure(&rejected, "1.1.0", "changed").is_none());
        let broken = failure("HealthCheckFailed", "1.1.0 failed its health check");
        assert!(held_failure(&broken, "1.1.0", "abc").is_some());
    }

    #[test]
    fn domains_are_not_served_when_taken_rejected_or_never_routed() {
        let routed = StageStatus {
            proxy: Some(ProxyRoute {
                host_id: 1,
                domains: vec!["a.example.com".into()],
                target: "http://172.17.0.2:8080".into(),
                settings: None,
            }),
            ..Default::default()
        };
        let unrouted = StageStatus::default();
        let taken = ProxyError::DomainInUse {
            domain: "a.example.com".into(),
            host_id: 3,
        };
        let offline = ProxyError::NginxOffline("nginx: [emerg] ...".into());
        let away = ProxyError::Unreachable("http://npm:81: HTTP 502".into());
        for e in [&taken, &offline] {
            assert!(unserved(&routed, e) && unserved(&unrouted, e), "{e}");
        }
        // NPM away: the route in place still stands; without one, nothing is served.
        assert!(!unserved(&routed, &away));
        assert!(unserved(&unrouted, &away));
    }
}
