//! From a Project and a Stage to the one container they describe: merging, validation and the
//! deterministic container name. Pure: the only input from outside is resolved secret values.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::runtime::{ContainerSpec, ImageInfo, Pull};
use super::tags::CompiledPolicy;
use crate::api::{
    ContainerSettings, EnvVar, HealthCheck, HealthCheckType, ProjectSpec, ProxySettings,
    PullPolicy, RestartPolicy, SecretKeyRef, StageSpec, Upstream, labels,
};

/// A problem with a spec, located by field path (`spec.container.port`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Joins field errors into one human message.
pub fn describe_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A Project's status from its own part of the spec: `Ready` when its Stages can use it. Returns
/// the problem, when there is one, for the caller to report where it reports.
pub fn assess_project(
    name: &str,
    spec: &crate::api::ProjectSpec,
    generation: i64,
    status: &mut crate::api::ProjectStatus,
) -> Option<String> {
    let probe = StageSpec {
        project_ref: name.to_string(),
        ..Default::default()
    };
    let mut problem = Effective::new(spec, &probe)
        .err()
        .map(|e| describe_errors(&e));
    if spec.build.is_none() {
        status
            .conditions
            .retain(|c| c.type_ != super::build::BUILD_READY);
    }
    if let Some(build) = &spec.build {
        let wrong = super::build::validate(build);
        if !wrong.is_empty() {
            let wrong = wrong.join("; ");
            problem = Some(match problem {
                Some(p) => format!("{p}; {wrong}"),
                None => wrong,
            });
        }
    }
    let (ok, reason) = match problem {
        None => (true, "Valid"),
        Some(_) => (false, "InvalidSpec"),
    };
    status.observed_generation = Some(generation);
    super::conditions::set(
        &mut status.conditions,
        super::conditions::READY,
        ok,
        reason,
        problem.clone().unwrap_or_default(),
        Some(generation),
    );
    problem
}

/// Where a Stage lives: namespace, project and stage names. Also the key of its containers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StageKey {
    pub namespace: String,
    pub project: String,
    pub stage: String,
}

impl std::fmt::Display for StageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.stage)
    }
}

/// Health check with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    pub kind: HealthCheckType,
    pub path: String,
    pub expected_status: Option<u16>,
    pub port: Option<u16>,
    pub timeout: Duration,
    pub interval: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

/// What a Stage asks for, merged over its Project and validated.
#[derive(Clone, Debug)]
pub struct Effective {
    pub repository: String,
    pub settings: ContainerSettings,
    pub health: HealthSettings,
    pub policy: CompiledPolicy,
    /// A fixed host port; `Some(0)`: a port Docker picks (proxy `upstream: hostPort`).
    pub host_port: Option<u16>,
    pub host_ip: Option<String>,
    /// Routing through the proxy, when the Stage has domains and does not opt out.
    pub proxy: Option<ProxyPlan>,
    /// The port holder owns the fixed host port (see [`Effective::with_holder`]).
    pub hold: Option<HoldPlan>,
    /// Why the port holder cannot serve this Stage's held port, which is published directly
    /// instead (see [`Effective::without_usable_holder`]).
    pub holder_down: Option<String>,
    memory_bytes: Option<i64>,
    nano_cpus: Option<i64>,
}

impl Effective {
    /// Merges and validates; every problem is reported, not just the first.
    pub fn new(project: &ProjectSpec, stage: &StageSpec) -> Result<Effective, Vec<FieldError>> {
        let mut errors = Vec::new();
        let settings = merge(&project.container, stage.overrides.as_ref());
        let field = |name: &str| {
            if stage.overrides.is_some() {
                format!("spec.container.{name} (or the Stage's spec.overrides.{name})")
            } else {
                format!("spec.container.{name}")
            }
        };
        validate_repository(&project.image, &mut errors);
        validate_settings(&settings, &field, &mut errors);
        let (memory_bytes, nano_cpus) = limits(&settings, &field, &mut errors);
        let health = merge_health(project.health_check.as_ref(), stage.health_check.as_ref());
        validate_health(&health, &mut errors);
        validate_stage(stage, &mut errors);
        let proxy = proxy_plan(stage, &mut errors);
        let hold = hold_plan(stage, &mut errors);
        let policy = match CompiledPolicy::compile(stage.tag_policy.as_ref()) {
            Ok(p) => Some(p),
            Err(errs) => {
                errors.extend(
                    errs.into_iter()
                        .map(|e| FieldError::new(e.field.clone(), e.message.clone())),
                );
                None
            }
        };
        match policy {
            Some(policy) if errors.is_empty() => Ok(Effective {
                repository: project.image.clone(),
                settings,
                health,
                policy,
                host_port: match &proxy {
                    Some(p) if stage.host_port.is_none() && p.upstream == Upstream::HostPort => {
                        Some(0)
                    }
                    _ => stage.host_port,
                },
                proxy,
                hold,
                holder_down: None,
                host_ip: stage.host_ip.clone(),
                memory_bytes,
                nano_cpus,
            }),
            _ => Err(errors),
        }
    }

    /// Whether this controller runs a port holder decides how a held host port is served: by the
    /// holder, with the container itself unpublished (its own address is the holder's target),
    /// or — without a holder — published directly as before.
    pub fn with_holder(mut self, available: bool) -> Effective {
        if !available {
            self.hold = None;
        } else if self.hold.is_some() {
            self.host_port = None;
        }
        self
    }

    /// The controller runs a port holder, but none can run (`why`): a Stage that would be held
    /// publishes its port directly, as without a holder, and says so.
    pub fn without_usable_holder(mut self, why: String) -> Effective {
        if self.hold.is_some() {
            self.holder_down = Some(why);
        }
        self.with_holder(false)
    }

    /// `repo:tag` as given to the runtime.
    pub fn reference(&self, tag: &str) -> String {
        format!("{}:{tag}", self.repository)
    }

    /// Kubernetes' rule unless the spec says otherwise: `latest` is always pulled.
    pub fn pull(&self, tag: &str) -> Pull {
        match self.settings.image_pull_policy {
            Some(PullPolicy::Always) => Pull::Always,
            Some(PullPolicy::IfNotPresent) => Pull::IfNotPresent,
            Some(PullPolicy::Never) => Pull::Never,
            None if tag == "latest" => Pull::Always,
            None => Pull::IfNotPresent,
        }
    }

    /// Secret references whose values `container_spec` needs, in env order.
    pub fn secret_refs(&self) -> impl Iterator<Item = (&EnvVar, EnvValueSource<'_>)> {
        self.settings.env.iter().filter_map(|e| {
            let from = e.value_from.as_ref()?;
            match (&from.secret_key_ref, &from.file) {
                (Some(r), _) => Some((e, EnvValueSource::Secret(r))),
                (None, Some(f)) => Some((e, EnvValueSource::File(f))),
                _ => None,
            }
        })
    }

    /// The container port: the spec's, else the image's first `EXPOSE`.
    pub fn port(&self, image: &ImageInfo) -> Option<u16> {
        self.settings
            .port
            .or_else(|| image.exposed_ports.first().copied())
    }

    /// The container for `tag` from `image`, owned by controller `instance`. `secrets` holds the resolved `valueFrom` values,
    /// by variable name. The name is a hash of everything that shapes the container, so a crash
    /// and a retry find the same one, and any change of image or settings makes a new one.
    pub fn container_spec(
        &self,
        key: &StageKey,
        instance: &str,
        tag: &str,
        image: &ImageInfo,
        secrets: &BTreeMap<String, String>,
    ) -> ContainerSpec {
        let env: Vec<(String, String)> = self
            .settings
            .env
            .iter()
            .filter_map(|e| {
                let value = e.value.clone().or_else(|| secrets.get(&e.name).cloned())?;
                Some((e.name.clone(), value))
            })
            .collect();
        let mut spec = ContainerSpec {
            name: String::new(),
            image: image.id.clone(),
            env,
            labels: self.settings.labels.clone(),
            args: self.settings.args.clone(),
            port: self.port(image),
            host_port: self.host_port,
            host_ip: self.host_ip.clone(),
            binds: self
                .settings
                .volumes
                .iter()
                .map(|v| {
                    let ro = if v.read_only == Some(true) { ":ro" } else { "" };
                    format!("{}:{}{ro}", v.source, v.target)
                })
                .collect(),
            restart_policy: restart_policy_name(self.settings.restart_policy.unwrap_or_default())
                .to_string(),
            memory_bytes: self.memory_bytes,
            nano_cpus: self.nano_cpus,
            network: self.settings.network.clone(),
            stop_timeout: self.settings.stop_timeout_seconds.unwrap_or(10),
            previous_names: Vec::new(),
        };
        spec.labels
            .insert(labels::INSTANCE.into(), instance.to_string());
        let hash = spec_hash(key, &spec);
        spec.previous_names = vec![container_name(key, &v1::hash(key, &spec))];
        spec.name = container_name(key, &hash);
        spec.labels.extend([
            (labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into()),
            (labels::NAMESPACE.into(), key.namespace.clone()),
            (labels::PROJECT.into(), key.project.clone()),
            (labels::STAGE.into(), key.stage.clone()),
            (labels::TAG.into(), tag.to_string()),
            (
                labels::PORT.into(),
                spec.port.map(|p| p.to_string()).unwrap_or_default(),
            ),
            (labels::SPEC_HASH.into(), hash),
        ]);
        spec
    }
}

/// The memory limit in bytes and the CPU limit in nano-CPUs, each when set and valid.
fn limits(
    settings: &ContainerSettings,
    field: &impl Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> (Option<i64>, Option<i64>) {
    let resources = settings.resources.as_ref();
    let memory = resources.and_then(|r| r.memory.as_deref()).and_then(|m| {
        parse_memory(m)
            .map_err(|e| errors.push(FieldError::new(field("resources.memory"), e)))
            .ok()
    });
    let cpus = resources.and_then(|r| r.cpus.as_deref()).and_then(|c| {
        parse_cpus(c)
            .map_err(|e| errors.push(FieldError::new(field("resources.cpus"), e)))
            .ok()
    });
    (memory, cpus)
}

/// The Stage's own fields: the pinned tag and where the container is published.
fn validate_stage(stage: &StageSpec, errors: &mut Vec<FieldError>) {
    if let Some(tag) = &stage.pinned_tag
        && !crate::image::is_valid_tag(tag)
    {
        errors.push(FieldError::new(
            "spec.pinnedTag",
            format!("{tag:?} is not a valid image tag"),
        ));
    }
    if let Some(ip) = &stage.host_ip
        && ip.parse::<IpAddr>().is_err()
    {
        errors.push(FieldError::new(
            "spec.hostIp",
            format!("{ip:?} is not an IP address"),
        ));
    }
    if stage.host_port == Some(0) {
        errors.push(FieldError::new("spec.hostPort", "must be 1-65535"));
    }
}

/// How the proxy routes a Stage's domains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyPlan {
    /// Lowercase, sorted, unique.
    pub domains: Vec<String>,
    pub upstream: Upstream,
    pub upstream_host: String,
    pub scheme: String,
    pub drain: Duration,
    pub settings: ProxySettings,
}

fn proxy_plan(stage: &StageSpec, errors: &mut Vec<FieldError>) -> Option<ProxyPlan> {
    let settings = stage.proxy.clone().unwrap_or_default();
    for (i, d) in stage.domains.iter().enumerate() {
        if !crate::engine::proxy::valid_domain(d.trim()) {
            errors.push(FieldError::new(
                format!("spec.domains[{i}]"),
                format!("{d:?} is not a valid domain name"),
            ));
        }
    }
    if stage.domains.len() > 100 {
        errors.push(FieldError::new("spec.domains", "at most 100 domains"));
    }
    let scheme = settings
        .forward_scheme
        .clone()
        .unwrap_or_else(|| "http".into());
    if scheme != "http" && scheme != "https" {
        errors.push(FieldError::new(
            "spec.proxy.forwardScheme",
            "must be http or https",
        ));
    }
    if settings.enabled == Some(false) || stage.domains.is_empty() {
        return None;
    }
    Some(ProxyPlan {
        domains: crate::engine::proxy::normalise_domains(&stage.domains),
        upstream: settings.upstream.unwrap_or_default(),
        upstream_host: settings
            .upstream_host
            .clone()
            .unwrap_or_else(|| "127.0.0.1".into()),
        scheme,
        drain: Duration::from_secs(u64::from(settings.drain_seconds.unwrap_or(2))),
        settings,
    })
}

/// How the port holder serves a Stage's fixed host port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldPlan {
    pub listen: std::net::SocketAddr,
    pub mode: crate::api::HolderMode,
    pub drain: Duration,
}

/// Longest drain a Stage may ask for: the old container runs meanwhile.
const MAX_HOLD_DRAIN_SECONDS: u32 = 3600;

fn hold_plan(stage: &StageSpec, errors: &mut Vec<FieldError>) -> Option<HoldPlan> {
    let holder = stage.port_holder.clone().unwrap_or_default();
    let drain = holder.drain_seconds.unwrap_or(5);
    if drain > MAX_HOLD_DRAIN_SECONDS {
        errors.push(FieldError::new(
            "spec.portHolder.drainSeconds",
            format!("at most {MAX_HOLD_DRAIN_SECONDS}"),
        ));
    }
    let port = stage.host_port.filter(|p| *p != 0)?;
    if holder.enabled == Some(false) {
        return None;
    }
    let ip = match stage.host_ip.as_deref().map(str::parse::<IpAddr>) {
        Some(Ok(ip)) => ip,
        // Reported by the hostIp check.
        Some(Err(_)) => return None,
        None => IpAddr::from([0, 0, 0, 0]),
    };
    Some(HoldPlan {
        listen: std::net::SocketAddr::new(ip, port),
        mode: holder.mode.unwrap_or_default(),
        drain: Duration::from_secs(u64::from(drain)),
    })
}

/// Where a secret environment value comes from.
pub enum EnvValueSource<'a> {
    Secret(&'a SecretKeyRef),
    File(&'a str),
}

fn merge(base: &ContainerSettings, over: Option<&ContainerSettings>) -> ContainerSettings {
    let Some(over) = over else {
        return base.clone();
    };
    let mut env = base.env.clone();
    for var in &over.env {
        match env.iter_mut().find(|e| e.name == var.name) {
            Some(slot) => *slot = var.clone(),
            None => env.push(var.clone()),
        }
    }
    let mut labels = base.labels.clone();
    labels.extend(over.labels.clone());
    ContainerSettings {
        port: over.port.or(base.port),
        env,
        labels,
        volumes: if over.volumes.is_empty() {
            base.volumes.clone()
        } else {
            over.volumes.clone()
        },
        restart_policy: over.restart_policy.or(base.restart_policy),
        resources: match (&base.resources, &over.resources) {
            (Some(b), Some(o)) => Some(crate::api::Resources {
                memory: o.memory.clone().or_else(|| b.memory.clone()),
                cpus: o.cpus.clone().or_else(|| b.cpus.clone()),
            }),
            (b, o) => o.clone().or_else(|| b.clone()),
        },
        args: over.args.clone().or_else(|| base.args.clone()),
        network: over.network.clone().or_else(|| base.network.clone()),
        image_pull_policy: over.image_pull_policy.or(base.image_pull_policy),
        stop_timeout_seconds: over.stop_timeout_seconds.or(base.stop_timeout_seconds),
    }
}

fn merge_health(project: Option<&HealthCheck>, stage: Option<&HealthCheck>) -> HealthSettings {
    let pick = |f: fn(&HealthCheck) -> Option<u32>, default: u32| {
        stage
            .and_then(f)
            .or_else(|| project.and_then(f))
            .unwrap_or(default)
    };
    let secs = |s: u32| Duration::from_secs(u64::from(s));
    HealthSettings {
        kind: stage
            .and_then(|h| h.kind)
            .or_else(|| project.and_then(|h| h.kind))
            .unwrap_or_default(),
        path: stage
            .and_then(|h| h.path.clone())
            .or_else(|| project.and_then(|h| h.path.clone()))
            .unwrap_or_else(|| "/".to_string()),
        expected_status: stage
            .and_then(|h| h.expected_status)
            .or_else(|| project.and_then(|h| h.expected_status)),
        port: stage
            .and_then(|h| h.port)
            .or_else(|| project.and_then(|h| h.port)),
        timeout: secs(pick(|h| h.timeout_seconds, 2)),
        interval: secs(pick(|h| h.interval_seconds, 1)),
        retries: pick(|h| h.retries, 3),
        start_period: secs(pick(|h| h.start_period_seconds, 10)),
    }
}

fn validate_repository(image: &str, errors: &mut Vec<FieldError>) {
    let field = "spec.image";
    if image.is_empty() {
        errors.push(FieldError::new(field, "must name an image repository"));
        return;
    }
    if image.contains('@') {
        errors.push(FieldError::new(
            field,
            "must be a repository without digest (`registry/org/app`); tags come from Stages",
        ));
    }
    // A `:` after the last `/` is a tag; before it, a registry port.
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') {
        errors.push(FieldError::new(
            field,
            format!("{image:?} carries a tag; give the repository only, Stages choose tags"),
        ));
    }
    let valid_path = image.split('/').skip(1).all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    });
    let first = image.split('/').next().unwrap_or_default();
    let valid_first = !first.is_empty()
        && first
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c));
    if !valid_path || !valid_first || image.ends_with('/') {
        errors.push(FieldError::new(
            field,
            format!("{image:?} is not a valid repository (lowercase `registry/org/app`)"),
        ));
    }
}

fn validate_settings(
    s: &ContainerSettings,
    field: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) {
    if s.port == Some(0) {
        errors.push(FieldError::new(field("port"), "must be 1-65535"));
    }
    for (i, e) in s.env.iter().enumerate() {
        let at = |f: &str| field(&format!("env[{i}]{f}"));
        if e.name.is_empty() || e.name.contains('=') {
            errors.push(FieldError::new(
                at(".name"),
                "must be a non-empty name without `=`",
            ));
        }
        match (&e.value, &e.value_from) {
            (Some(_), Some(_)) => errors.push(FieldError::new(
                at(""),
                "set either `value` or `valueFrom`, not both",
            )),
            (None, None) => errors.push(FieldError::new(at(""), "set `value` or `valueFrom`")),
            (None, Some(from)) => {
                if from.secret_key_ref.is_some() == from.file.is_some() {
                    errors.push(FieldError::new(
                        at(".valueFrom"),
                        "set exactly one of `secretKeyRef` and `file`",
                    ));
                }
            }
            (Some(_), None) => {}
        }
    }
    for key in s.labels.keys() {
        if key.starts_with("tinyforge.dev/") || key == labels::MANAGED_BY {
            errors.push(FieldError::new(
                field(&format!("labels[{key}]")),
                "is reserved for tiny-forge's ownership labels",
            ));
        }
    }
    for (i, v) in s.volumes.iter().enumerate() {
        if !v.target.starts_with('/') {
            errors.push(FieldError::new(
                field(&format!("volumes[{i}].target")),
                "must be an absolute path",
            ));
        }
        if v.source.is_empty() || v.source.contains(':') {
            errors.push(FieldError::new(
                field(&format!("volumes[{i}].source")),
                "must be a host path or volume name without `:`",
            ));
        }
    }
    // Docker answers a stop only once the container is down: keep it inside the client's
    // request timeout (60 s).
    if s.stop_timeout_seconds.is_some_and(|t| t > 45) {
        errors.push(FieldError::new(
            field("stopTimeoutSeconds"),
            "must be at most 45",
        ))
    }
}

fn validate_health(h: &HealthSettings, errors: &mut Vec<FieldError>) {
    let field = |f: &str| format!("spec.healthCheck.{f}");
    if !h.path.starts_with('/') {
        errors.push(FieldError::new(field("path"), "must start with `/`"));
    }
    if let Some(s) = h.expected_status
        && !(100..=599).contains(&s)
    {
        errors.push(FieldError::new(
            field("expectedStatus"),
            "must be an HTTP status (100-599)",
        ));
    }
    if h.port == Some(0) {
        errors.push(FieldError::new(field("port"), "must be 1-65535"));
    }
    for (name, d) in [
        ("timeoutSeconds", h.timeout),
        ("intervalSeconds", h.interval),
    ] {
        if d.is_zero() {
            errors.push(FieldError::new(field(name), "must be at least 1"));
        }
    }
    if h.retries == 0 {
        errors.push(FieldError::new(field("retries"), "must be at least 1"));
    }
}

/// Kubernetes memory quantities (`256Mi`, `1G`, `1048576`) to bytes.
pub fn parse_memory(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let units: [(&str, i64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, factor) = units
        .iter()
        .find_map(|(suffix, f)| s.strip_suffix(suffix).map(|n| (n, *f)))
        .unwrap_or((s, 1));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a memory quantity like 256Mi or 1Gi"))?;
    let bytes = value * factor as f64;
    if !(bytes >= 6.0 * 1024.0 * 1024.0 && bytes < i64::MAX as f64) {
        return Err(format!("{s:?} is out of range (Docker needs at least 6Mi)"));
    }
    Ok(bytes as i64)
}

/// CPU cores (`0.5`, `2`) or millicores (`500m`) to Docker's nano-CPUs.
pub fn parse_cpus(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let cores = match s.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
        None => s.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a CPU amount like 0.5 or 500m"))?;
    if !(cores > 0.0 && cores <= 1024.0) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok((cores * 1e9) as i64)
}

fn restart_policy_name(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::No => "no",
        RestartPolicy::Always => "always",
        RestartPolicy::UnlessStopped => "unless-stopped",
        RestartPolicy::OnFailure => "on-failure",
    }
}

/// Version of the container-name hash. A container's name is its identity across restarts and
/// upgrades: a new hash means a redeploy of every container. So the hashed form is a versioned,
/// explicit serialisation (pinned by a golden test), in which a setting at its default is left
/// out — a new field added with a default renames nothing. Changing what is hashed needs a new
/// version, and [`ContainerSpec::previous_names`] keeps recognising the names of the old one.
const NAME_HASH_VERSION: u32 = 2;

/// What a container's name is a hash of: everything that shapes the container. The name and the
/// ownership labels are derived from the hash, so they are not part of it.
#[derive(serde::Serialize)]
struct NameInput<'a> {
    v: u32,
    namespace: &'a str,
    project: &'a str,
    stage: &'a str,
    image: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    env: &'a [(String, String)],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<&'a Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_ip: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    binds: &'a [String],
    restart_policy: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nano_cpus: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<&'a str>,
    stop_timeout: u32,
}

fn spec_hash(key: &StageKey, spec: &ContainerSpec) -> String {
    let input = NameInput {
        v: NAME_HASH_VERSION,
        namespace: &key.namespace,
        project: &key.project,
        stage: &key.stage,
        image: &spec.image,
        env: &spec.env,
        labels: &spec.labels,
        args: spec.args.as_ref(),
        port: spec.port,
        host_port: spec.host_port,
        host_ip: spec.host_ip.as_deref(),
        binds: &spec.binds,
        restart_policy: &spec.restart_policy,
        memory_bytes: spec.memory_bytes,
        nano_cpus: spec.nano_cpus,
        network: spec.network.as_deref(),
        stop_timeout: spec.stop_timeout,
    };
    let json = serde_json::to_vec(&input).expect("plain data serialises");
    short_hash(&json)
}

fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Names of release 0.1 (hash version 1): a hash of the `Debug` text of the key and of the spec
/// as it was then, reproduced field for field so containers created by 0.1 are recognised and an
/// upgrade redeploys nothing. Frozen: never add fields here.
mod v1 {
    use super::{BTreeMap, StageKey, short_hash};

    // The struct's name and fields are part of the hashed text; they are only ever read by
    // `Debug`.
    #[allow(dead_code)]
    #[derive(Debug)]
    struct ContainerSpec<'a> {
        name: &'a str,
        image: &'a str,
        env: &'a Vec<(String, String)>,
        labels: &'a BTreeMap<String, String>,
        args: &'a Option<Vec<String>>,
        port: Option<u16>,
        host_port: Option<u16>,
        host_ip: &'a Option<String>,
        binds: &'a Vec<String>,
        restart_policy: &'a str,
        memory_bytes: Option<i64>,
        nano_cpus: Option<i64>,
        network: &'a Option<String>,
        stop_timeout: u32,
    }

    pub(super) fn hash(key: &StageKey, spec: &crate::engine::ContainerSpec) -> String {
        let old = ContainerSpec {
            name: "",
            image: &spec.image,
            env: &spec.env,
            labels: &spec.labels,
            args: &spec.args,
            port: spec.port,
            host_port: spec.host_port,
            host_ip: &spec.host_ip,
            binds: &spec.binds,
            restart_policy: &spec.restart_policy,
            memory_bytes: spec.memory_bytes,
            nano_cpus: spec.nano_cpus,
            network: &spec.network,
            stop_timeout: spec.stop_timeout,
        };
        short_hash(format!("{key:?}\n{old:?}").as_bytes())
    }
}

/// `tf-<namespace>-<project>-<stage>-<hash>`: deterministic, so a retry after a crash finds the
/// container it already created instead of making a second one.
pub fn container_name(key: &StageKey, hash: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    format!(
        "tf-{}-{}-{}-{hash}",
        clean(&key.namespace),
        clean(&key.project),
        clean(&key.stage)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EnvSource, Resources};

    fn project() -> ProjectSpec {
        ProjectSpec {
            image: "registry.example:5000/team/app".into(),
            container: ContainerSettings {
                port: Some(8080),
                env: vec![EnvVar {
                    name: "MODE".into(),
                    value: Some("base".into()),
                    value_from: None,
                }],
                labels: [("team".to_string(), "a".to_string())].into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn stage() -> StageSpec {
        StageSpec {
            project_ref: "app".into(),
            ..Default::default()
        }
    }

    fn key() -> StageKey {
        StageKey {
            namespace: "default".into(),
            project: "app".into(),
            stage: "prod".into(),
        }
    }

    fn image(id: &str) -> ImageInfo {
        ImageInfo {
            id: id.into(),
            repo_digest: None,
            exposed_ports: vec![9000],
            has_healthcheck: false,
        }
    }

    #[test]
    fn overrides_merge_env_by_name_and_win_on_scalars() {
        let mut s = stage();
        s.overrides = Some(ContainerSettings {
            port: Some(9090),
            env: vec![
                EnvVar {
                    name: "MODE".into(),
                    value: Some("prod".into()),
                    value_from: None,
                },
                EnvVar {
                    name: "EXTRA".into(),
                    value: Some("1".into()),
                    value_from: None,
                },
            ],
            ..Default::default()
        });
        let eff = Effective::new(&project(), &s).unwrap();
        assert_eq!(eff.settings.port, Some(9090));
        let env: Vec<_> = eff
            .settings
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap()))
            .collect();
        assert_eq!(env, [("MODE", "prod"), ("EXTRA", "1")]);
        assert_eq!(eff.settings.labels["team"], "a");
    }

    #[test]
    fn container_name_is_deterministic_and_changes_with_image_or_settings() {
        let eff = Effective::new(&project(), &stage()).unwrap();
        let a = eff.container_spec(&key(), "test", "1.0", &image("sha256:aa"), &BTreeMap::new());
        let again =
            eff.container_spec(&key(), "test", "1.0", &image("sha256:aa"), &BTreeMap::new());
        let other_image =
            eff.container_spec(&key(), "test", "1.0", &image("sha256:bb"), &BTreeMap::new());
        assert_eq!(a.name, again.name);
        assert!(a.name.starts_with("tf-default-app-prod-"), "{}", a.name);
        assert_ne!(a.name, other_image.name);
        let mut s = stage();
        s.overrides = Some(ContainerSettings {
            port: Some(1234),
            ..Default::default()
        });
        let changed = Effective::new(&project(), &s).unwrap().container_spec(
            &key(),
            "test",
            "1.0",
            &image("sha256:aa"),
            &BTreeMap::new(),
        );
        assert_ne!(a.name, changed.name);
        assert_eq!(a.labels[labels::STAGE], "prod");
        assert_eq!(a.labels[labels::MANAGED_BY], "tiny-forge");
        assert_eq!(a.labels[labels::TAG], "1.0");
    }

    #[test]
    fn port_falls_back_to_the_image_expose() {
        let mut p = project();
        p.container.port = None;
        let eff = Effective::new(&p, &stage()).unwrap();
        assert_eq!(eff.port(&image("sha256:aa")), Some(9000));
    }

    #[test]
    fn invalid_specs_report_every_field() {
        let mut p = project();
        p.image = "Team/App:1.0".into();
        p.container.port = Some(0);
        p.container.env.push(EnvVar {
            name: "BOTH".into(),
            value: Some("x".into()),
            value_from: Some(EnvSource {
                file: Some("/x".into()),
                secret_key_ref: None,
            }),
        });
        p.container
            .labels
            .insert("tinyforge.dev/stage".into(), "x".into());
        p.container.resources = Some(Resources {
            memory: Some("lots".into()),
            cpus: Some("-1".into()),
        });
        p.health_check = Some(HealthCheck {
            path: Some("healthz".into()),
            retries: Some(0),
            ..Default::default()
        });
        let mut s = stage();
        s.pinned_tag = Some("bad tag".into());
        s.host_ip = Some("localhost".into());
        let errors = Effective::new(&p, &s).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for expected in [
            "spec.image",
            "spec.container.port",
            "spec.container.env[1]",
            "spec.container.labels[tinyforge.dev/stage]",
            "spec.container.resources.memory",
            "spec.container.resources.cpus",
            "spec.healthCheck.path",
            "spec.healthCheck.retries",
            "spec.pinnedTag",
            "spec.hostIp",
        ] {
            assert!(
                fields.contains(&expected),
                "{expected} missing in {fields:?}"
            );
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_memory("256Mi"), Ok(256 << 20));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("8388608"), Ok(8 << 20));
        assert!(parse_memory("1Mi").is_err());
        assert!(parse_memory("12 apples").is_err());
        assert_eq!(parse_cpus("500m"), Ok(500_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert!(parse_cpus("0").is_err());
    }

    #[test]
    fn pull_policy_defaults_like_kubernetes() {
        let eff = Effective::new(&project(), &stage()).unwrap();
        assert_eq!(eff.pull("latest"), Pull::Always);
        assert_eq!(eff.pull("1.0.0"), Pull::IfNotPresent);
    }

    #[test]
    fn repository_with_registry_port_is_valid_but_tags_are_not() {
        let mut p = project();
        p.image = "localhost:5000/app".into();
        assert!(Effective::new(&p, &stage()).is_ok());
        p.image = "localhost:5000/app:1.0".into();
        assert!(Effective::new(&p, &stage()).is_err());
        p.image = "tiny-forge-demo".into();
        assert!(Effective::new(&p, &stage()).is_ok());
    }
}

#[cfg(test)]
mod names {
    use super::*;

    fn demo(host_port: bool) -> ContainerSpec {
        let key = StageKey {
            namespace: "default".into(),
            project: "demo".into(),
            stage: "prod".into(),
        };
        let mut project = ProjectSpec {
            image: "tiny-forge-demo".into(),
            ..Default::default()
        };
        let mut stage = StageSpec {
            project_ref: "demo".into(),
            ..Default::default()
        };
        if host_port {
            project.container.port = Some(8080);
            project.container.env = vec![crate::api::EnvVar {
                name: "GREETING".into(),
                value: Some("hi".into()),
                value_from: None,
            }];
            stage.host_port = Some(8081);
            stage.host_ip = Some("127.0.0.1".into());
        }
        let image = ImageInfo {
            id: "sha256:260232b8e896".into(),
            repo_digest: None,
            exposed_ports: vec![],
            has_healthcheck: false,
        };
        Effective::new(&project, &stage).unwrap().container_spec(
            &key,
            "standalone",
            "1.0.0",
            &image,
            &Default::default(),
        )
    }

    /// The names are the containers' identity: a change here redeploys every container on
    /// upgrade. Bump NAME_HASH_VERSION and keep the old names in `previous_names` instead.
    #[test]
    fn names_are_pinned() {
        assert_eq!(demo(true).name, "tf-default-demo-prod-a965e9adec08");
        assert_eq!(demo(false).name, "tf-default-demo-prod-61efb030128c");
    }

    /// What release 0.1 named these very containers (computed by its code): still recognised.
    #[test]
    fn names_of_release_0_1_are_recognised() {
        assert_eq!(
            demo(true).previous_names,
            ["tf-default-demo-prod-aba140874068"]
        );
        assert_eq!(
            demo(false).previous_names,
            ["tf-default-demo-prod-c0c660a3eecd"]
        );
        assert!(demo(true).is_named("tf-default-demo-prod-aba140874068"));
        assert!(!demo(true).is_named("tf-default-demo-prod-c0c660a3eecd"));
    }
}
