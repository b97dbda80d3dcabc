//! Every reason the engine gives in a condition, in one place: the engine writes them, the
//! Kubernetes mode turns them into event reasons, dashboards and alerts match on them, and
//! `docs/KUBERNETES.md` lists them (a test keeps the list and this enum together). They are
//! fixed CamelCase words — a label, never a formatted error.

/// A condition reason (`Ready`, `ProxyReady`, or a Project's `BuildReady`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    // Ready=True
    /// The desired tag runs and passed its health check.
    Healthy,
    // Ready=False while work goes on
    /// A new container is being pulled, started or health-checked.
    Deploying,
    /// No tag to deploy yet.
    NoTag,
    /// The new container is healthy; the proxy cannot be switched to it yet.
    ProxyPending,
    // Ready=False: the spec must change
    InvalidSpec,
    ProjectNotFound,
    UnknownDockerHost,
    // Ready=False: a deploy failed
    /// The new container failed; the previous one serves again.
    RolledBack,
    /// It failed and there was nothing to roll back to.
    DeployFailed,
    InvalidHealthCheck,
    StartFailed,
    HealthCheckFailed,
    /// The serving container, restarted after drift, is not healthy.
    Unhealthy,
    ProxySwitchFailed,
    SecretUnavailable,
    // Ready=False: the runtime (RuntimeError)
    DockerUnreachable,
    DockerError,
    ImageUnavailable,
    Conflict,
    NotFound,
    // ProxyReady (ProxyError), also Ready=False when the domains are not served
    /// ProxyReady=True: the domains route to the current container.
    Routed,
    ProxyUnreachable,
    ProxyAuthFailed,
    DomainInUse,
    ProxyRejected,
    NginxConfigError,
    ProxyError,
    // BuildReady on a Project with `spec.build`
    /// BuildReady=True: the last build succeeded and its tag was recorded.
    Built,
    /// The commit could not be fetched (bad URL, auth, unknown branch or commit).
    FetchFailed,
    /// No Dockerfile at the configured path in that commit.
    DockerfileMissing,
    /// The Docker build failed.
    BuildFailed,
    /// The build ran past `timeoutSeconds` and was stopped.
    BuildTimedOut,
    /// Builds run in standalone mode only: `spec.build` is accepted and not acted on here.
    BuildUnsupported,
    // Ready=False: the port holder of a fixed host port (HolderError)
    /// The holder is not running or not reachable (or its image is missing).
    PortHolderUnavailable,
    /// Another process holds the Stage's host port.
    PortTaken,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: &[Reason] = &[
        Reason::Healthy,
        Reason::Deploying,
        Reason::NoTag,
        Reason::ProxyPending,
        Reason::InvalidSpec,
        Reason::ProjectNotFound,
        Reason::UnknownDockerHost,
        Reason::RolledBack,
        Reason::DeployFailed,
        Reason::InvalidHealthCheck,
        Reason::StartFailed,
        Reason::HealthCheckFailed,
        Reason::Unhealthy,
        Reason::ProxySwitchFailed,
        Reason::SecretUnavailable,
        Reason::DockerUnreachable,
        Reason::DockerError,
        Reason::ImageUnavailable,
        Reason::Conflict,
        Reason::NotFound,
        Reason::Routed,
        Reason::ProxyUnreachable,
        Reason::ProxyAuthFailed,
        Reason::DomainInUse,
        Reason::ProxyRejected,
        Reason::NginxConfigError,
        Reason::ProxyError,
        Reason::Built,
        Reason::FetchFailed,
        Reason::DockerfileMissing,
        Reason::BuildFailed,
        Reason::BuildTimedOut,
        Reason::BuildUnsupported,
        Reason::PortHolderUnavailable,
        Reason::PortTaken,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Healthy => "Healthy",
            Reason::Deploying => "Deploying",
            Reason::NoTag => "NoTag",
            Reason::ProxyPending => "ProxyPending",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::ProjectNotFound => "ProjectNotFound",
            Reason::UnknownDockerHost => "UnknownDockerHost",
            Reason::RolledBack => "RolledBack",
            Reason::DeployFailed => "DeployFailed",
            Reason::InvalidHealthCheck => "InvalidHealthCheck",
            Reason::StartFailed => "StartFailed",
            Reason::HealthCheckFailed => "HealthCheckFailed",
            Reason::Unhealthy => "Unhealthy",
            Reason::ProxySwitchFailed => "ProxySwitchFailed",
            Reason::SecretUnavailable => "SecretUnavailable",
            Reason::DockerUnreachable => "DockerUnreachable",
            Reason::DockerError => "DockerError",
            Reason::ImageUnavailable => "ImageUnavailable",
            Reason::Conflict => "Conflict",
            Reason::NotFound => "NotFound",
            Reason::Routed => "Routed",
            Reason::ProxyUnreachable => "ProxyUnreachable",
            Reason::ProxyAuthFailed => "ProxyAuthFailed",
            Reason::DomainInUse => "DomainInUse",
            Reason::ProxyRejected => "ProxyRejected",
            Reason::NginxConfigError => "NginxConfigError",
            Reason::ProxyError => "ProxyError",
            Reason::Built => "Built",
            Reason::FetchFailed => "FetchFailed",
            Reason::DockerfileMissing => "DockerfileMissing",
            Reason::BuildFailed => "BuildFailed",
            Reason::BuildTimedOut => "BuildTimedOut",
            Reason::BuildUnsupported => "BuildUnsupported",
            Reason::PortHolderUnavailable => "PortHolderUnavailable",
            Reason::PortTaken => "PortTaken",
        }
    }

    /// The reason a stored condition carries, if it is one of ours (a status written by another
    /// version may carry others).
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == s)
    }

    /// A proxy route nginx or NPM refused: the settings are at fault, not the image.
    pub fn is_proxy_config(self) -> bool {
        matches!(
            self,
            Reason::ProxySwitchFailed | Reason::NginxConfigError | Reason::ProxyRejected
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_complete_and_round_trips() {
        let mut seen = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
            assert!(seen.insert(r.as_str()), "{r} twice");
            assert!(r.as_str().chars().all(|c| c.is_ascii_alphabetic()));
        }
        assert_eq!(Reason::parse("SomethingNew"), None);
    }

    /// The reference lists every reason a person can meet, so none is added without saying
    /// what it means.
    #[test]
    fn every_reason_is_documented() {
        let docs = include_str!("../../docs/KUBERNETES.md");
        let missing: Vec<&str> = Reason::ALL
            .iter()
            .map(|r| r.as_str())
            .filter(|r| !docs.contains(&format!("`{r}`")))
            .collect();
        assert!(missing.is_empty(), "docs/KUBERNETES.md lacks {missing:?}");
    }
}
