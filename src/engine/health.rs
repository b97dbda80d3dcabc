//! The health gate a new container passes before it takes over: probing cadence, start period,
//! retries and the container's own fate. The probes themselves are an adapter (`crate::adapters::probe`).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::runtime::Runtime;
use super::spec::HealthSettings;
use crate::api::HealthCheckType;

/// One probe of a running container.
pub trait Prober: Send + Sync {
    /// GET `http://addr{path}`; Ok(status) or Err(what failed).
    fn http(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<u16, ProbeError>> + Send;
    /// TCP connect.
    fn tcp(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), ProbeError>> + Send;
}

/// Why a probe got no answer. A failed probe is one failure of the health gate, whatever the
/// kind; the message goes into the Stage's status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {}s", .0.as_secs_f32())]
    Timeout(Duration),
    #[error("connection refused")]
    Refused,
    /// Anything else, as the network stack says it.
    #[error("{0}")]
    Failed(String),
}

/// The concrete check to run, once the image is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Http {
        port: u16,
        path: String,
        expected: Option<u16>,
    },
    Tcp {
        port: u16,
    },
    Docker,
    Running,
}

impl Check {
    /// Resolves `auto` and fills the port in. Errors when the chosen kind cannot work.
    pub fn choose(
        settings: &HealthSettings,
        port: Option<u16>,
        image_has_healthcheck: bool,
    ) -> Result<Check, String> {
        let port = settings.port.or(port);
        let need_port = |kind: &str| {
            port.ok_or_else(|| {
                format!("a {kind} health check needs a port: set spec.container.port or healthCheck.port")
            })
        };
        Ok(match settings.kind {
            HealthCheckType::Http => Check::Http {
                port: need_port("http")?,
                path: settings.path.clone(),
                expected: settings.expected_status,
            },
            HealthCheckType::Tcp => Check::Tcp {
                port: need_port("tcp")?,
            },
            HealthCheckType::Docker if !image_has_healthcheck => {
                return Err("healthCheck.type is docker but the image has no HEALTHCHECK".into());
            }
            HealthCheckType::Docker => Check::Docker,
            HealthCheckType::None => Check::Running,
            HealthCheckType::Auto if image_has_healthcheck => Check::Docker,
            HealthCheckType::Auto => match port {
                Some(port) => Check::Tcp { port },
                None => Check::Running,
            },
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Check::Http { port, path, .. } => format!("HTTP GET :{port}{path}"),
            Check::Tcp { port } => format!("TCP connect :{port}"),
            Check::Docker => "the image's HEALTHCHECK".into(),
            Check::Running => "the container staying up".into(),
        }
    }
}

/// Probe cadence during the start period.
const FAST_PROBE: Duration = Duration::from_millis(100);

/// How a probe target is reached: the container's own address, or a published host port.
#[derive(Clone, Copy, Debug)]
pub struct Reach {
    pub host_port: Option<(IpAddr, u16)>,
}

/// Waits until the container is healthy; Err carries the reason it is not, in a sentence.
pub async fn wait_healthy<R: Runtime, P: Prober>(
    runtime: &R,
    prober: &P,
    container: &str,
    check: &Check,
    settings: &HealthSettings,
    reach: Reach,
) -> Result<Duration, String> {
    let started = Instant::now();
    let grace_until = started + settings.start_period;
    // Docker runs its own HEALTHCHECK on its own cadence (30 s by default), so give it room.
    let docker_deadline = started + settings.start_period.max(Duration::from_secs(300));
    let mut failures = 0u32;
    loop {
        let state = runtime
            .inspect(container)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the container disappeared".to_string())?;
        if !state.running {
            return Err(match state.exit_code {
                Some(code) => format!("the container exited with code {code}"),
                None => "the container is not running".into(),
            } + &state.error.map(|e| format!(": {e}")).unwrap_or_default());
        }
        let probe = match check {
            Check::Running => {
                if started.elapsed() >= settings.interval.min(settings.start_period) {
                    return Ok(started.elapsed());
                }
                Err("still starting".to_string())
            }
            Check::Docker => match state.health.as_deref() {
                Some("healthy") => Ok(()),
                Some("unhealthy") => {
                    return Err("Docker's HEALTHCHECK reports unhealthy".into());
                }
                other => {
                    if Instant::now() > docker_deadline {
                        return Err(format!(
                            "Docker's HEALTHCHECK still says {} after {:?}",
                            other.unwrap_or("nothing"),
                            started.elapsed()
                        ));
                    }
                    Err("starting".into())
                }
            },
            Check::Http {
                port,
                path,
                expected,
            } => match target(state.ip, *port, reach) {
                None => Err("no address to probe".into()),
                Some(addr) => match prober.http(addr, path, settings.timeout).await {
                    Ok(status)
                        if expected.map_or((200..300).contains(&status), |e| e == status) =>
                    {
                        Ok(())
                    }
                    Ok(status) => Err(format!("GET {path} answered {status}")),
                    Err(e) => Err(format!("GET {path}: {e}")),
                },
            },
            Check::Tcp { port } => match target(state.ip, *port, reach) {
                None => Err("no address to probe".into()),
                Some(addr) => prober
                    .tcp(addr, settings.timeout)
                    .await
                    .map_err(|e| format!("TCP connect to port {port}: {e}")),
            },
        };
        match probe {
            Ok(()) => return Ok(started.elapsed()),
            Err(last_error) => {
                // Failures inside the start period do not count, like Docker's own semantics.
                if Instant::now() >= grace_until && *check != Check::Docker {
                    failures += 1;
                    if failures >= settings.retries {
                        return Err(format!(
                            "{} failed {failures} times after the {}s start period: {last_error}",
                            check.describe(),
                            settings.start_period.as_secs()
                        ));
                    }
                }
            }
        }
        sleep(match check {
            // Docker's status changes on its own schedule; poll it briskly.
            Check::Docker | Check::Running => Duration::from_millis(250),
            // Failures in the start period do not count, so probing fast there costs nothing and
            // shortens every deploy (and a host-port handover gap) to the app's real start time.
            _ if Instant::now() < grace_until => settings.interval.min(FAST_PROBE),
            _ => settings.interval,
        })
        .await;
    }
}

fn target(ip: Option<IpAddr>, port: u16, reach: Reach) -> Option<SocketAddr> {
    match (ip, reach.host_port) {
        (Some(ip), _) => Some(SocketAddr::new(ip, port)),
        (None, Some((host, host_port))) => Some(SocketAddr::new(host, host_port)),
        (None, None) => None,
    }
}
