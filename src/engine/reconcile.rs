//! Level-based reconcile of one Stage: re-observe, decide, converge. It never asks *why* it runs;
//! every step is safe to repeat, so a crash anywhere converges on the next pass with no duplicate
//! container (names are deterministic) and no orphan (everything carries ownership labels).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;

use tokio::time::Instant;

use super::conditions::{self, READY, now};
use super::health::{self, Check, Prober, Reach};
use super::runtime::{ContainerInfo, ContainerSpec, ImageInfo, Pull, Runtime, RuntimeError};
use super::spec::{Effective, EnvValueSource, StageKey, describe_errors};
use crate::api::{
    DeployRecord, Deployed, FailedDeploy, Outcome, Phase, ProjectSpec, ProxyRoute, SeenTag,
    StageSpec, StageStatus, Upstream,
};
use crate::proxy::{NoProxy, Owner, Proxy, ProxyError, Route};

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
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// Resolves secret environment values. Synchronous: standalone reads small files, Kubernetes mode
/// reads a reflector cache.
pub trait Secrets: Send + Sync {
    fn value(&self, namespace: &str, source: &EnvValueSource<'_>) -> Result<String, String>;
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
}

/// A failed step: its condition reason and whether retrying may help.
struct StepError {
    reason: &'static str,
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
        let invalid = |mut status: StageStatus, reason: &str, message: String| {
            tracing::warn!(reason, %message, "stage cannot be reconciled");
            if status.current.is_none() {
                status.phase = Some(Phase::Pending);
            }
            report(&mut status, false, reason, message, generation);
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
            return invalid(status, "ProjectNotFound", message);
        };
        let host = input.stage.docker_host.as_deref().unwrap_or("default");
        if host != self.host_name {
            let message = format!(
                "spec.dockerHost: unknown Docker host {host:?} (this instance drives {:?})",
                self.host_name
            );
            return invalid(status, "UnknownDockerHost", message);
        }
        let eff = match Effective::new(project, input.stage) {
            Ok(eff) => eff,
            Err(errors) => return invalid(status, "InvalidSpec", describe_errors(&errors)),
        };
        match self.converge(input, &eff, observed, &mut status).await {
            Ok(requeue) => Reconciled { status, requeue },
            Err(e) => {
                tracing::warn!(reason = e.reason, message = %e.message, "reconcile step failed");
                report(&mut status, false, e.reason, e.message, generation);
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
            report(status, false, "NoTag", message, generation);
            return Ok(Requeue::Resync);
        };

        // A held failure: converge on what serves (its container, its proxy route) and leave
        // the failed tag alone.
        let held = held_failure(status, &tag, &inputs_hash(input)).cloned();
        let tag = match (&held, &status.current) {
            (None, _) => tag,
            (Some(_), Some(current)) => current.tag.clone(),
            (Some(failure), None) => {
                self.keep_serving(status, observed).await?;
                status.message = Some(failure.message.clone());
                return Ok(Requeue::Resync);
            }
        };

        // A steady Stage never contacts the registry: the image is looked up locally unless a
        // newer digest of the same tag was announced.
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
            eff.pull(&tag)
        };
        let reference = eff.reference(&tag);
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
        let secrets = self.resolve_secrets(&input.key.namespace, eff)?;
        let spec = eff.container_spec(&input.key, &self.instance, &tag, &image, &secrets);
        let target = observed.iter().find(|c| c.name == spec.name);
        let others: Vec<&ContainerInfo> = observed.iter().filter(|c| c.name != spec.name).collect();

        if let Some(c) = target
            && c.running
            && status
                .current
                .as_ref()
                .is_some_and(|cur| is_deployed(cur, c))
        {
            // Steady state (also after a rollback back to what serves, or a Docker outage): the
            // proxy must point here before leftovers of an interrupted deploy are retired — one
            // of them may be what it still routes to.
            let proxied = self.sync_proxy(input, eff, status, &c.id, spec.port).await;
            if proxied.is_ok() {
                self.retire(&others, eff).await?;
            }
            if let Some(failure) = held {
                status.message = Some(failure.message);
                return Ok(Requeue::Resync);
            }
            status.phase = Some(Phase::Healthy);
            status.last_failure = None;
            let cur = status
                .current
                .as_ref()
                .map(|c| c.tag.clone())
                .unwrap_or_default();
            let message = format!("{cur} is serving");
            report(status, true, "Healthy", message, generation);
            // The container side converged; the proxy catches up with backoff.
            return Ok(if proxied.is_ok() {
                Requeue::Resync
            } else {
                Requeue::Retry
            });
        }
        self.deploy(input, eff, status, tag, image, spec, target, &others)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn deploy(
        &self,
        input: &StageInput<'_>,
        eff: &Effective,
        status: &mut StageStatus,
        tag: String,
        image: ImageInfo,
        spec: ContainerSpec,
        existing: Option<&ContainerInfo>,
        others: &[&ContainerInfo],
    ) -> Result<Requeue, StepError> {
        let generation = Some(input.generation);
        let started_at = now();
        let digest = image.digest().to_string();
        let current = status.current.clone();
        let is_current = |c: &ContainerInfo| current.as_ref().is_some_and(|d| is_deployed(d, c));
        // Restarting the serving container after drift is not a deploy: no history, no retiring.
        let drift_restart = existing.is_some_and(is_current);
        let message = if drift_restart {
            format!("restarting {tag}: its container was not running")
        } else {
            format!("deploying {tag} ({})", short(&digest))
        };
        tracing::info!(%tag, digest = %digest, container = %spec.name, "{message}");
        status.phase = Some(Phase::Deploying);
        report(status, false, "Deploying", message, generation);
        self.save(&input.key, status).await;

        // The rollback target: what status says serves, else the newest other container.
        let fallback = others
            .iter()
            .find(|c| is_current(c))
            .or_else(|| others.iter().max_by_key(|c| (c.running, c.created)))
            .copied();
        let handover = spec.host_port.is_some_and(|p| p != 0) && others.iter().any(|c| c.running);
        let handover_started = Instant::now();
        if handover {
            // A fixed host port can be bound by one container only: the old one hands it over.
            for c in others.iter().filter(|c| c.running) {
                self.runtime.stop(&c.id, stop_timeout(eff)).await?;
            }
        }

        let id = match existing {
            Some(c) => c.id.clone(),
            None => match self.runtime.create(&spec).await {
                Ok(id) => id,
                // A crash between create and the status write left it there: same name, same spec.
                Err(RuntimeError::Conflict(_)) => spec.name.clone(),
                Err(e) => {
                    self.restore(fallback, handover).await;
                    return Err(e.into());
                }
            },
        };
        // Err((what failed, why)): the CamelCase reason and the sentence that go into status.
        let verdict = match Check::choose(&eff.health, spec.port, image.has_healthcheck) {
            Err(e) => Err(("InvalidHealthCheck", "has no usable health check", e)),
            Ok(check) => match self.runtime.start(&id).await {
                Err(e) => Err(("StartFailed", "did not start", e.to_string())),
                Ok(()) => health::wait_healthy(
                    &self.runtime,
                    &self.prober,
                    &id,
                    &check,
                    &eff.health,
                    reach(&spec),
                )
                .await
                .map_err(|e| ("HealthCheckFailed", "failed its health check", e)),
            },
        };

        // Healthy: the proxy switches to the new container before anything old is retired.
        let mut proxy_pending = false;
        let verdict = match verdict {
            Ok(took) => match self.sync_proxy(input, eff, status, &id, spec.port).await {
                Ok(changed) => {
                    if changed && !drift_restart {
                        // Requests still in flight to the old container finish meanwhile.
                        tokio::time::sleep(eff.proxy.as_ref().map(|p| p.drain).unwrap_or_default())
                            .await;
                    }
                    Ok(took)
                }
                Err(e) if e.route_at_fault() && !drift_restart => Err((
                    "ProxySwitchFailed",
                    "could not take over the proxy route",
                    e.to_string(),
                )),
                // The proxy is away or the domain taken: the container side still converges.
                Err(_) => {
                    proxy_pending = true;
                    Ok(took)
                }
            },
            failed => failed,
        };

        match verdict {
            Ok(_) if proxy_pending && !drift_restart && status.proxy.is_some() => {
                // The proxy still routes to the old container and cannot be switched now:
                // keep both running and try the switch again (the new one is adopted by name).
                status.phase = Some(Phase::Deploying);
                let why = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == PROXY_READY)
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                let message =
                    format!("{tag} is healthy; waiting for the proxy to switch to it ({why})");
                report(status, false, "ProxyPending", message, generation);
                Ok(Requeue::Retry)
            }
            Ok(took) => {
                if !drift_restart {
                    self.retire(others, eff).await?;
                }
                let gap = handover.then(|| handover_started.elapsed());
                let note = match gap {
                    Some(gap) => format!(
                        "healthy in {:.1}s; host port {} handed over with a {:.1}s gap",
                        took.as_secs_f64(),
                        spec.host_port.unwrap_or_default(),
                        gap.as_secs_f64()
                    ),
                    None => format!("healthy in {:.1}s", took.as_secs_f64()),
                };
                tracing::info!(%tag, container = %spec.name, "{note}");
                if !drift_restart {
                    let new = Deployed {
                        tag: tag.clone(),
                        digest: digest.clone(),
                        container_id: Some(id.clone()),
                        container_name: Some(spec.name.clone()),
                        since: Some(now()),
                        resolved_at: None,
                    };
                    if let Some(old) = status.current.replace(new)
                        && (old.tag != tag || old.digest != digest)
                    {
                        status.previous = Some(old);
                    }
                    record(
                        status,
                        &tag,
                        Some(&digest),
                        started_at,
                        Outcome::Succeeded,
                        &note,
                    );
                }
                status.last_failure = None;
                status.phase = Some(Phase::Healthy);
                let message = format!("{tag} is serving ({note})");
                report(status, true, "Healthy", message, generation);
                Ok(if proxy_pending {
                    Requeue::Retry
                } else {
                    Requeue::Resync
                })
            }
            Err((_, _, reason)) if drift_restart => {
                // Nothing better to go back to: leave it to Docker's restart policy, say so.
                Err(StepError {
                    reason: "Unhealthy",
                    message: format!("{tag} was restarted but is not healthy: {reason}"),
                    transient: true,
                })
            }
            Err((failure, what, reason)) => {
                tracing::warn!(%tag, container = %spec.name, %reason, "deploy failed; rolling back");
                self.runtime.stop(&id, 0).await?;
                self.runtime.remove(&id).await?;
                let restored = self.restore(fallback, handover).await;
                if failure == "ProxySwitchFailed"
                    && let Some(old) = restored
                    && let Err(e) = self
                        .sync_proxy(input, eff, status, &old.id, port_of(old).or(spec.port))
                        .await
                {
                    tracing::error!(error = %e, "could not point the proxy back at the previous container");
                }
                let (phase, outcome, cond_reason, message) = match (&restored, &status.current) {
                    (Some(_), Some(cur)) => (
                        Phase::RolledBack,
                        Outcome::RolledBack,
                        "RolledBack",
                        format!("{tag} {what} ({reason}); {} keeps serving", cur.tag),
                    ),
                    _ => (
                        Phase::Failed,
                        Outcome::Failed,
                        "DeployFailed",
                        format!("{tag} {what} ({reason}); nothing to roll back to"),
                    ),
                };
                status.last_failure = Some(FailedDeploy {
                    tag: tag.clone(),
                    digest: Some(digest.clone()),
                    generation,
                    inputs: Some(inputs_hash(input)),
                    reason: failure.into(),
                    message: message.clone(),
                });
                record(status, &tag, Some(&digest), started_at, outcome, &message);
                status.phase = Some(phase);
                report(status, false, cond_reason, message, generation);
                Ok(Requeue::Resync)
            }
        }
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
            tracing::warn!(stage = %owner, reason = e.reason(), error = %e, "proxy not converged");
            conditions::set(
                &mut status.conditions,
                PROXY_READY,
                false,
                e.reason(),
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
            settings: plan.settings.clone(),
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
                });
                let message = format!("{} → {}", route.domains.join(", "), route.target());
                conditions::set(
                    &mut status.conditions,
                    PROXY_READY,
                    true,
                    "Routed",
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
                        reason: "SecretUnavailable",
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
    (f.tag == tag && f.inputs.as_deref() == Some(inputs) && same_digest).then_some(f)
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
    report(status, false, e.reason(), e.to_string(), Some(generation));
    *status != before
}

/// Sets the `Ready` condition and the one-line `message` together: they always say the same.
fn report(
    status: &mut StageStatus,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) {
    conditions::set(
        &mut status.conditions,
        READY,
        ok,
        reason,
        &message,
        generation,
    );
    status.message = Some(message);
}
