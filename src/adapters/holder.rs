//! The port holder on a Docker host: its container (created, repaired and upgraded like any
//! managed container) and the client of its control channel. The holder itself is the
//! `tiny-forge-holder` crate (`holder/`).
//!
//! The container shares the host's network, so it binds the Stages' host ports itself, reaches
//! containers at their bridge addresses, and listens for control on the host's loopback. Its
//! routes live in a named volume, so they survive the container. The control token is made
//! here and handed to the container in its environment; it is read back from the container, so
//! a controller with a fresh state directory (or another replica) finds it without a file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use tiny_forge_holder::{Mode, RouteSpec, RouteStatus};
use tokio::time::Instant;

use crate::api::{HolderMode, labels};
use crate::engine::holder::{
    BoxFuture, HeldRoute, HoldRequest, HolderError, PortHolder, of_instance,
};

/// Label of the holder container: the controller instance it serves. Deliberately not the
/// managed-by label: the holder is no Stage's container, and must never look like an orphan.
pub const HOLDER_LABEL: &str = "tinyforge.dev/port-holder";
/// The environment variable that carries the control token into the holder.
pub const TOKEN_ENV: &str = "TINY_FORGE_HOLDER_TOKEN";
/// The environment variable that tells the holder its container name (it reports it on
/// `/healthz`, so an upgrade knows when the new one answers).
pub const NAME_ENV: &str = "TINY_FORGE_HOLDER_NAME";
/// The image the controller runs unless told otherwise (`scripts/holder-image.sh` builds it).
pub const DEFAULT_IMAGE: &str = tiny_forge_holder::IMAGE;
/// The holder's control address on the Docker host's loopback.
pub const DEFAULT_CONTROL: &str = "127.0.0.1:7480";

/// How often the holder container is looked at while calls succeed.
const RECHECK: Duration = Duration::from_secs(10);
/// How long a new or restarted holder may take to answer.
const READY_WITHIN: Duration = Duration::from_secs(15);
/// How long after a failed start the holder is tried again. Stages publish their ports
/// directly meanwhile, and only a holder that then runs takes them back (one roll with a gap
/// each way), so not every reconcile.
const RETRY_START: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct HolderConfig {
    pub image: String,
    pub control: SocketAddr,
}

impl Default for HolderConfig {
    fn default() -> Self {
        HolderConfig {
            image: DEFAULT_IMAGE.into(),
            control: DEFAULT_CONTROL.parse().expect("a valid address"),
        }
    }
}

/// The holder of one controller instance on one Docker host.
pub struct DockerHolder {
    docker: Docker,
    instance: String,
    config: HolderConfig,
    http: reqwest::Client,
    /// For `/healthz`: a new connection each time. During an upgrade both holders listen on the
    /// control address, and a kept connection would ask the old one forever.
    health: reqwest::Client,
    /// The token of the holder that answered last, and when its container was last looked at.
    /// Held only to read or write it, never across a call to Docker or the holder.
    known: std::sync::Mutex<Option<(String, Instant)>>,
    /// One repair at a time: the others use the token they have, or wait for the repair when
    /// they have none.
    repairing: tokio::sync::Mutex<()>,
    /// Why the holder container could not be created or started last time, and when.
    cannot_start: std::sync::Mutex<Option<(String, Instant)>>,
}

impl DockerHolder {
    pub fn new(
        docker: Docker,
        instance: &str,
        config: HolderConfig,
    ) -> anyhow::Result<DockerHolder> {
        let http = control_client()?;
        let health = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()?;
        Ok(DockerHolder {
            docker,
            instance: instance.to_string(),
            config,
            http,
            health,
            known: Default::default(),
            repairing: Default::default(),
            cannot_start: Default::default(),
        })
    }

    /// The volume that keeps the routes of this instance's holder.
    pub fn volume(&self) -> String {
        format!("tiny-forge-holder-{}", self.instance)
    }

    /// The token of a running, answering holder whose image is the configured one: started or
    /// upgraded as needed, and created when `create` (only a switch creates one: reading or
    /// removing routes of a holder that does not exist has nothing to do). None: there is no
    /// holder and none was created. Cached for [`RECHECK`] while calls succeed.
    pub async fn ensure(&self, create: bool) -> Result<Option<String>, HolderError> {
        let known = self.known();
        if let Some((token, at)) = &known
            && at.elapsed() < RECHECK
        {
            return Ok(Some(token.clone()));
        }
        let stale = known.map(|(t, _)| t).filter(|t| !t.is_empty());
        let _repairing = match (self.repairing.try_lock(), stale) {
            (Ok(guard), _) => guard,
            // Another call is looking at the holder: the token it had is used meanwhile (a
            // call it fails is retried after that repair).
            (Err(_), Some(token)) => return Ok(Some(token)),
            (Err(_), None) => self.repairing.lock().await,
        };
        // Repaired by the call this one waited for.
        if let Some((token, at)) = self.known()
            && at.elapsed() < RECHECK
            && !token.is_empty()
        {
            return Ok(Some(token));
        }
        let Some(token) = self.repair(create).await? else {
            return Ok(None);
        };
        *self.cannot_start.lock().expect("poisoned") = None;
        self.remember(Some((token.clone(), Instant::now())));
        Ok(Some(token))
    }

    /// Why no holder can run, if so: its image is not on the host, or its container could not
    /// be created or started on the last try. A holder that answered lately is usable.
    pub async fn why_unusable(&self) -> Option<String> {
        if self
            .known()
            .is_some_and(|(token, at)| !token.is_empty() && at.elapsed() < RECHECK)
        {
            return None;
        }
        // Docker itself away is no verdict on the holder: the reconcile says so anyway.
        if let Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) = self.docker.inspect_image(&self.config.image).await
        {
            return Some(format!(
                "image {} is not on the Docker host (scripts/holder-image.sh builds it)",
                self.config.image
            ));
        }
        let failed = self.cannot_start.lock().expect("poisoned").clone();
        let (why, at) = failed?;
        if at.elapsed() < RETRY_START {
            return Some(why);
        }
        // Tried again now: a holder that starts (with no routes yet) takes the ports back.
        match self.ensure(true).await {
            Ok(_) => None,
            Err(e) => {
                self.could_not_start(&e);
                Some(e.to_string())
            }
        }
    }

    fn could_not_start(&self, e: &HolderError) {
        *self.cannot_start.lock().expect("poisoned") = Some((e.to_string(), Instant::now()));
    }

    /// Lets go of every port of this instance's holder and removes the holder (its routes are
    /// gone, and so is its reason to run): what `--port-holder=false` does at start, so the
    /// Stages' containers can publish the ports themselves. Returns how many routes there were.
    pub async fn release(&self) -> Result<usize, HolderError> {
        let Some((status, text)) = self.call(reqwest::Method::GET, "/v1/routes", None).await?
        else {
            return Ok(0);
        };
        if status != reqwest::StatusCode::OK {
            return Err(refused(status, &text));
        }
        let routes = parse::<Vec<RouteStatus>>(&text)?;
        for r in &routes {
            tracing::info!(route = %r.name, listen = %r.spec.listen, "port holder off: releasing the port");
            self.remove(&r.name).await?;
        }
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{HOLDER_LABEL}={}", self.instance)],
        )]);
        let holders = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| HolderError::Unavailable(e.to_string()))?;
        for c in holders {
            tracing::info!(container = ?c.names, "port holder off: removing the port holder");
            let remove = RemoveContainerOptionsBuilder::default().force(true).build();
            self.docker
                .remove_container(c.id.as_deref().unwrap_or_default(), Some(remove))
                .await
                .map_err(|e| HolderError::Unavailable(e.to_string()))?;
        }
        self.forget();
        Ok(routes.len())
    }

    fn known(&self) -> Option<(String, Instant)> {
        self.known.lock().expect("poisoned").clone()
    }

    fn remember(&self, known: Option<(String, Instant)>) {
        *self.known.lock().expect("poisoned") = known;
    }

    /// Keeps the holder up between reconciles: once one has answered, its `/healthz` is asked
    /// every `every`, and a holder that does not answer is repaired at once (started again after
    /// `docker kill` or `docker stop`, which Docker's restart policy does not undo, or created
    /// again after `docker rm`; its routes come back from its volume). A crash of the process
    /// itself Docker restarts by its restart policy, usually before this notices.
    pub async fn watch(&self, every: Duration) {
        let url = format!("http://{}/healthz", self.config.control);
        loop {
            tokio::time::sleep(every).await;
            if self.known().is_none() {
                continue;
            }
            let answered = self
                .health
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if answered {
                continue;
            }
            tracing::warn!(control = %self.config.control, "the port holder does not answer; repairing it");
            self.forget();
            match self.ensure(true).await {
                Ok(_) => tracing::info!("the port holder answers again"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot repair the port holder yet");
                    // Looked at again next time: keep the claim that one should exist.
                    self.remember(Some((
                        String::new(),
                        Instant::now()
                            .checked_sub(RECHECK)
                            .unwrap_or_else(Instant::now),
                    )));
                }
            }
        }
    }

    fn forget(&self) {
        self.remember(None);
    }

    async fn repair(&self, create: bool) -> Result<Option<String>, HolderError> {
        let unavailable = |e: BollardError| HolderError::Unavailable(e.to_string());
        let image = match self.docker.inspect_image(&self.config.image).await {
            Ok(image) => image.id.unwrap_or_default(),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Err(HolderError::Unavailable(format!(
                    "image {} is not on the Docker host (scripts/holder-image.sh builds it)",
                    self.config.image
                )));
            }
            Err(e) => return Err(unavailable(e)),
        };
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{HOLDER_LABEL}={}", self.instance)],
        )]);
        let holders = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(unavailable)?;
        let name = format!(
            "tiny-forge-holder-{}-{}",
            self.instance,
            image.trim_start_matches("sha256:").get(..12).unwrap_or("0")
        );
        let current = holders
            .iter()
            .find(|c| c.image_id.as_deref() == Some(image.as_str()));
        let token = match current {
            Some(c) => {
                let id = c.id.clone().unwrap_or_default();
                let token = self.token_of(&id).await?;
                let running = matches!(
                    c.state,
                    Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
                );
                if !running {
                    tracing::info!(container = %name, "starting the port holder");
                    if let Err(e) = self.start(&id).await {
                        self.could_not_start(&e);
                        return Err(e);
                    }
                }
                token
            }
            None if holders.is_empty() && !create => return Ok(None),
            None => {
                // A holder of another image (an upgrade) keeps serving until the new one listens
                // on every port beside it; its token carries over.
                let mut token = None;
                for c in &holders {
                    if let Ok(t) = self.token_of(c.id.as_deref().unwrap_or_default()).await {
                        token = Some(t);
                        break;
                    }
                }
                let token = token.unwrap_or_else(new_token);
                tracing::info!(container = %name, image = %self.config.image, "creating the port holder");
                let started = match self.create(&name, &token).await {
                    Ok(()) => self.start(&name).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = started {
                    self.could_not_start(&e);
                    return Err(e);
                }
                token
            }
        };
        let upgrade = holders
            .iter()
            .any(|c| c.image_id.as_deref() != Some(image.as_str()));
        self.wait_ready(&name, upgrade).await?;
        for old in holders
            .iter()
            .filter(|c| c.image_id.as_deref() != Some(image.as_str()))
        {
            let id = old.id.clone().unwrap_or_default();
            tracing::info!(container = ?old.names, "retiring the previous port holder");
            let stop = StopContainerOptionsBuilder::default().t(10).build();
            let _ = self.docker.stop_container(&id, Some(stop)).await;
            let remove = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = self.docker.remove_container(&id, Some(remove)).await;
        }
        Ok(Some(token))
    }

    async fn token_of(&self, id: &str) -> Result<String, HolderError> {
        let c = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| HolderError::Unavailable(e.to_string()))?;
        c.config
            .and_then(|c| c.env)
            .unwrap_or_default()
            .iter()
            .find_map(|e| e.strip_prefix(&format!("{TOKEN_ENV}=")).map(str::to_string))
            .ok_or_else(|| HolderError::Unavailable(format!("holder {id} has no token")))
    }

    async fn create(&self, name: &str, token: &str) -> Result<(), HolderError> {
        let body = ContainerCreateBody {
            image: Some(self.config.image.clone()),
            cmd: Some(vec![
                "--state-dir".into(),
                "/state".into(),
                "--control".into(),
                self.config.control.to_string(),
            ]),
            env: Some(vec![
                format!("{TOKEN_ENV}={token}"),
                format!("{NAME_ENV}={name}"),
            ]),
            labels: Some(HashMap::from([
                (HOLDER_LABEL.to_string(), self.instance.clone()),
                (labels::INSTANCE.to_string(), self.instance.clone()),
            ])),
            host_config: Some(HostConfig {
                network_mode: Some("host".into()),
                binds: Some(vec![format!("{}:/state", self.volume())]),
                // Docker brings it back after a crash or a reboot, without the controller.
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::ALWAYS),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => Ok(()),
            // Created by a crashed earlier attempt: same name, same image.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(HolderError::Unavailable(e.to_string())),
        }
    }

    async fn start(&self, id: &str) -> Result<(), HolderError> {
        match self.docker.start_container(id, None).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(HolderError::Unavailable(e.to_string())),
        }
    }

    /// Until the holder named `name` answers on the control address (during an upgrade both
    /// holders share the ports with SO_REUSEPORT, so the answer names who gave it). A route
    /// whose port the holder cannot bind (another process has it) is that Stage's problem,
    /// reported as `PortTaken` when its route is written, not a reason to call the holder
    /// unavailable for every Stage. Only before an upgrade retires the previous holder is every
    /// route waited for, so that no port it serves goes unbound; one that stays unbound for
    /// [`READY_WITHIN`] is no better served by the old holder, and the upgrade goes on.
    async fn wait_ready(&self, name: &str, upgrade: bool) -> Result<(), HolderError> {
        let deadline = Instant::now() + READY_WITHIN;
        let url = format!("http://{}/healthz", self.config.control);
        let mut last = String::new();
        let mut answered = false;
        while Instant::now() < deadline {
            match self.health.get(&url).send().await {
                Ok(r) => {
                    let text = r.text().await.unwrap_or_default();
                    let health = Health::parse(&text, name);
                    if health.answers && (!upgrade || health.all_bound) {
                        return Ok(());
                    }
                    answered |= health.answers;
                    last = text;
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if answered {
            tracing::warn!(holder = %name, health = %last.trim(), "the new port holder has not bound every port; retiring the previous one anyway");
            return Ok(());
        }
        Err(HolderError::Unavailable(format!(
            "the holder {name} did not become ready on {} ({})",
            self.config.control,
            last.trim()
        )))
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.config.control)
    }

    /// One authenticated call; once more after a repair when the holder was away or its token
    /// changed (it was recreated). None: there is no holder (and only a write creates one).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&RouteSpec>,
    ) -> Result<Option<(reqwest::StatusCode, String)>, HolderError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(token) = self.ensure(body.is_some()).await? else {
                return Ok(None);
            };
            let mut req = self
                .http
                .request(method.clone(), self.url(path))
                .bearer_auth(&token);
            if let Some(body) = body {
                req = req.json(body);
            }
            let result = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    if status == reqwest::StatusCode::UNAUTHORIZED {
                        Err(HolderError::Unavailable(
                            "the holder refused the token".into(),
                        ))
                    } else {
                        return Ok(Some((status, text)));
                    }
                }
                Err(e) => Err(HolderError::Unavailable(format!(
                    "{}: {e}",
                    self.config.control
                ))),
            };
            self.forget();
            if attempt >= 2 {
                return result.map(|_: ()| unreachable!());
            }
        }
    }
}

/// The client of the control channel. Never through a proxy from the environment: the bearer
/// token would go to whoever `HTTP_PROXY` names, and the holder is on this host's loopback.
fn control_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
}

/// `/healthz` of the holder: `ok name=<container> listening=<bound>/<routes>`.
#[derive(Debug, PartialEq, Eq)]
struct Health {
    /// The holder named so answered `ok`.
    answers: bool,
    /// It has bound the port of every route.
    all_bound: bool,
}

impl Health {
    fn parse(text: &str, name: &str) -> Health {
        let mut fields = text.split_whitespace();
        let ok = fields.next() == Some("ok");
        let mut named = false;
        let mut bound = false;
        for f in fields {
            if let Some(n) = f.strip_prefix("name=") {
                named = n == name;
            }
            if let Some(l) = f.strip_prefix("listening=")
                && let Some((a, b)) = l.split_once('/')
            {
                bound = a == b;
            }
        }
        Health {
            answers: ok && named,
            all_bound: ok && named && bound,
        }
    }
}

fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn held(status: RouteStatus) -> HeldRoute {
    HeldRoute {
        listen: status.spec.listen,
        target: status.spec.upstream,
        since_ms: status.since_ms,
        mode: match status.spec.mode {
            Mode::Http => HolderMode::Http,
            Mode::Tcp => HolderMode::Tcp,
        },
        drain: Duration::from_millis(status.spec.drain_ms),
        listening: status.listening,
        draining: status.draining.len(),
    }
}

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, HolderError> {
    serde_json::from_str(text).map_err(|e| HolderError::Rejected(format!("unreadable answer: {e}")))
}

fn refused(status: reqwest::StatusCode, text: &str) -> HolderError {
    let message = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string());
    HolderError::Rejected(format!("HTTP {status}: {message}"))
}

impl PortHolder for DockerHolder {
    fn unusable(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(self.why_unusable())
    }

    fn route<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<HeldRoute>, HolderError>> {
        Box::pin(async move {
            let Some((status, text)) = self
                .call(reqwest::Method::GET, &format!("/v1/routes/{name}"), None)
                .await?
            else {
                return Ok(None);
            };
            match status.as_u16() {
                200 => Ok(Some(held(parse(&text)?))),
                404 => Ok(None),
                _ => Err(refused(status, &text)),
            }
        })
    }

    fn switch<'a>(&'a self, req: &'a HoldRequest) -> BoxFuture<'a, Result<HeldRoute, HolderError>> {
        Box::pin(async move {
            let spec = RouteSpec {
                listen: req.listen,
                mode: match req.mode {
                    HolderMode::Http => Mode::Http,
                    HolderMode::Tcp => Mode::Tcp,
                },
                upstream: req.target,
                drain_ms: u64::try_from(req.drain.as_millis()).unwrap_or(u64::MAX),
                label: req.label.clone(),
            };
            let Some((status, text)) = self
                .call(
                    reqwest::Method::PUT,
                    &format!("/v1/routes/{}", req.name),
                    Some(&spec),
                )
                .await?
            else {
                return Err(HolderError::Unavailable("no holder was created".into()));
            };
            match status.as_u16() {
                200 => Ok(held(parse(&text)?)),
                409 => Err(HolderError::PortTaken(
                    req.listen,
                    refused(status, &text).to_string(),
                )),
                _ => Err(refused(status, &text)),
            }
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, HolderError>> {
        Box::pin(async move {
            let Some((status, text)) = self
                .call(reqwest::Method::DELETE, &format!("/v1/routes/{name}"), None)
                .await?
            else {
                return Ok(false);
            };
            match status.as_u16() {
                204 => Ok(true),
                404 => Ok(false),
                _ => Err(refused(status, &text)),
            }
        })
    }

    fn owned<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<String>, HolderError>> {
        Box::pin(async move {
            let Some((status, text)) = self.call(reqwest::Method::GET, "/v1/routes", None).await?
            else {
                return Ok(Vec::new());
            };
            if status != reqwest::StatusCode::OK {
                return Err(refused(status, &text));
            }
            let names: Vec<String> = parse::<Vec<RouteStatus>>(&text)?
                .into_iter()
                .map(|r| r.name)
                .collect();
            Ok(of_instance(instance, &names).cloned().collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn health_says_who_answers_and_whether_every_port_is_bound() {
        let h = |text: &str| Health::parse(text, "h-b");
        let (yes, no) = (true, false);
        let health = |answers, all_bound| Health { answers, all_bound };
        assert_eq!(h("ok name=h-b listening=2/2\n"), health(yes, yes));
        // A port another process holds: this holder answers all the same.
        assert_eq!(h("ok name=h-b listening=1/2\n"), health(yes, no));
        // The previous holder answering during an upgrade.
        assert_eq!(h("ok name=h-a listening=2/2\n"), health(no, no));
        assert_eq!(h("ok\n"), health(no, no));
        assert_eq!(h(""), health(no, no));
    }

    /// Serves one HTTP answer with `body` to every connection; counts connections.
    async fn answering(body: &'static str) -> (SocketAddr, std::sync::Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        (addr, seen)
    }

    const CHILD: &str = "TINY_FORGE_TEST_PROXY_CHILD";

    /// The environment cannot be changed in-process (no unsafe here), so this test runs itself
    /// again as a child with `HTTP_PROXY` pointing at a listener that must never be asked.
    #[tokio::test]
    async fn the_control_client_ignores_proxies_from_the_environment() {
        if let Ok(proxy) = std::env::var(CHILD) {
            let (holder, _) = answering("holder").await;
            let body = control_client()
                .unwrap()
                .get(format!("http://{holder}/healthz"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(body, "holder", "the call went through the proxy {proxy}");
            return;
        }
        let (proxy, asked) = answering("proxy").await;
        let out = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "adapters::holder::tests::the_control_client_ignores_proxies_from_the_environment",
                "--nocapture",
            ])
            .env(CHILD, proxy.to_string())
            .env("HTTP_PROXY", format!("http://{proxy}"))
            .env("http_proxy", format!("http://{proxy}"))
            .env("ALL_PROXY", format!("http://{proxy}"))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
        assert_eq!(asked.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn tokens_are_long_and_fresh() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
