//! A scripted, in-memory Docker for unit tests of the deploy state machine: the engine's
//! `Runtime` and `Prober` contracts (runtime.rs, health.rs) kept the way the real engine keeps
//! them — names are unique (`Conflict`), starting a running container or stopping a stopped one
//! is no error, a host port is bound by one running container at a time ("port is already
//! allocated"), a container that crashes starts and then has exited. Images are scripted:
//! healthy, answering 500 on every probe, or crashing at start. Every verb is logged so tests
//! assert the order of steps. The real engine is tested on real Docker in `tests/`; this double
//! exists so the state machine's tests run everywhere, without Docker, on a paused clock.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::health::{ProbeError, Prober};
use super::holder::{BoxFuture, HeldRoute, HoldRequest, HolderError, PortHolder};
use super::runtime::{
    ContainerInfo, ContainerSpec, ContainerState, ImageInfo, Pull, Runtime, RuntimeError,
};

/// How a container of an image behaves once started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers 200 on every HTTP probe, accepts TCP.
    Healthy,
    /// Runs, but answers 500 on every HTTP probe (like the demo's `1.2.0-broken`).
    Unhealthy,
    /// Exits with code 1 right after it starts.
    Crashes,
}

struct Image {
    info: ImageInfo,
    behaviour: Behaviour,
}

struct Container {
    id: String,
    name: String,
    labels: BTreeMap<String, String>,
    image: String,
    host_port: Option<u16>,
    ip: IpAddr,
    running: bool,
    exit_code: Option<i64>,
    created: i64,
}

#[derive(Default)]
struct World {
    images: BTreeMap<String, Image>,
    containers: Vec<Container>,
    made: u8,
    steps: Vec<String>,
    unreachable: bool,
    /// The port holder's routes, when a [`FakeHolder`] is in use: it shares this world, so a
    /// held port and a container publishing it directly exclude each other, as on a host.
    routes: BTreeMap<String, FakeRoute>,
    /// Answers for the holder's next switches, in order (`None`: behave normally).
    switch_faults: std::collections::VecDeque<Option<HolderError>>,
}

struct FakeRoute {
    held: HeldRoute,
    /// Previous targets and until when (on the paused clock) they still have requests.
    draining: Vec<(SocketAddr, tokio::time::Instant)>,
}

impl FakeRoute {
    fn still_draining(&mut self) -> usize {
        let now = tokio::time::Instant::now();
        self.draining.retain(|(_, until)| *until > now);
        self.draining.len()
    }
}

impl World {
    fn find(&mut self, id_or_name: &str) -> Option<&mut Container> {
        self.containers
            .iter_mut()
            .find(|c| c.id == id_or_name || c.name == id_or_name)
    }

    fn behaviour(&self, image_id: &str) -> Behaviour {
        self.images
            .values()
            .find(|i| i.info.id == image_id)
            .map_or(Behaviour::Healthy, |i| i.behaviour)
    }

    /// The running container a probe to `addr` reaches: by its own address, or by the host
    /// port it publishes.
    fn reached(&self, addr: SocketAddr) -> Option<&Container> {
        self.containers
            .iter()
            .find(|c| c.running && (c.ip == addr.ip() || c.host_port == Some(addr.port())))
    }
}

/// The in-memory Docker. Clones share one world.
#[derive(Clone, Default)]
pub struct FakeDocker(Arc<Mutex<World>>);

impl FakeDocker {
    /// Makes `reference` (`repo:tag`) present locally, behaving as told.
    pub fn image(&self, reference: &str, behaviour: Behaviour) -> ImageInfo {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(reference.as_bytes());
        let info = ImageInfo {
            id: format!("sha256:{}", hex::encode(&hash[..16])),
            repo_digest: None,
            exposed_ports: vec![8080],
            has_healthcheck: false,
        };
        self.world().images.insert(
            reference.to_string(),
            Image {
                info: info.clone(),
                behaviour,
            },
        );
        info
    }

    /// The verbs called since the last call (`list LABEL=VALUE,…` with the filter sorted,
    /// `create NAME`, `start ID`, `stop ID`, `remove ID`).
    pub fn steps(&self) -> Vec<String> {
        std::mem::take(&mut self.world().steps)
    }

    /// Every container, as `list_managed` would list it.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        self.world().containers.iter().map(info).collect()
    }

    /// A running container made by someone else (an earlier controller, a test's set-up) with
    /// these labels; returns its id.
    pub fn add_container(&self, name: &str, labels: &[(&str, &str)]) -> String {
        let mut world = self.world();
        world.made += 1;
        let n = world.made;
        let id = format!("c{n:02}");
        world.containers.push(Container {
            id: id.clone(),
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            image: String::new(),
            host_port: None,
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 1, n)),
            running: true,
            exit_code: None,
            created: i64::from(n),
        });
        id
    }

    /// Docker away (every verb fails with `Unreachable`) or back.
    pub fn set_unreachable(&self, away: bool) {
        self.world().unreachable = away;
    }

    pub fn prober(&self) -> FakeProber {
        FakeProber(self.clone())
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().expect("fake Docker poisoned")
    }

    fn up(&self) -> Result<std::sync::MutexGuard<'_, World>, RuntimeError> {
        let world = self.world();
        if world.unreachable {
            return Err(RuntimeError::Unreachable {
                endpoint: "fake".into(),
                message: "connection refused".into(),
            });
        }
        Ok(world)
    }
}

fn info(c: &Container) -> ContainerInfo {
    ContainerInfo {
        id: c.id.clone(),
        name: c.name.clone(),
        labels: c.labels.clone(),
        running: c.running,
        created: c.created,
    }
}

impl Runtime for FakeDocker {
    fn endpoint(&self) -> &str {
        "fake"
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.up().map(drop)
    }

    async fn list_managed(
        &self,
        filter: &[(&str, &str)],
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut world = self.up()?;
        let mut asked: Vec<String> = filter.iter().map(|(k, v)| format!("{k}={v}")).collect();
        asked.sort();
        world.steps.push(format!("list {}", asked.join(",")));
        Ok(world
            .containers
            .iter()
            .filter(|c| {
                filter
                    .iter()
                    .all(|(k, v)| c.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(info)
            .collect())
    }

    async fn ensure_image(&self, reference: &str, pull: Pull) -> Result<ImageInfo, RuntimeError> {
        let world = self.up()?;
        world
            .images
            .get(reference)
            .map(|i| i.info.clone())
            .ok_or_else(|| RuntimeError::Image {
                image: reference.to_string(),
                message: match pull {
                    Pull::Never => "not present locally and imagePullPolicy is Never".into(),
                    _ => "pull failed: manifest unknown".into(),
                },
            })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let mut world = self.up()?;
        if world.containers.iter().any(|c| c.name == spec.name) {
            return Err(RuntimeError::Conflict(spec.name.clone()));
        }
        world.made += 1;
        let n = world.made;
        let id = format!("c{n:02}");
        world.containers.push(Container {
            id: id.clone(),
            name: spec.name.clone(),
            labels: spec.labels.clone(),
            image: spec.image.clone(),
            host_port: spec.host_port.filter(|p| *p != 0),
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)),
            running: false,
            exit_code: None,
            created: i64::from(n),
        });
        world.steps.push(format!("create {}", spec.name));
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut world = self.up()?;
        let Some(c) = world.find(id) else {
            return Err(RuntimeError::NotFound(id.to_string()));
        };
        if c.running {
            return Ok(());
        }
        let (port, image, cid) = (c.host_port, c.image.clone(), c.id.clone());
        if let Some(port) = port
            && (world
                .containers
                .iter()
                .any(|o| o.running && o.id != cid && o.host_port == Some(port))
                || world.routes.values().any(|r| r.held.listen.port() == port))
        {
            return Err(RuntimeError::Other(format!(
                "Bind for 127.0.0.1:{port} failed: port is already allocated"
            )));
        }
        let crashes = world.behaviour(&image) == Behaviour::Crashes;
        let c = world.find(&cid).expect("looked up above");
        c.running = !crashes;
        c.exit_code = crashes.then_some(1);
        world.steps.push(format!("start {cid}"));
        Ok(())
    }

    async fn stop(&self, id: &str, _timeout_s: u32) -> Result<(), RuntimeError> {
        let mut world = self.up()?;
        if let Some(c) = world.find(id) {
            c.running = false;
            let (cid, ip) = (c.id.clone(), c.ip);
            // Stopping a container the holder still drains to cuts its clients off.
            let cut = world
                .routes
                .values_mut()
                .any(|r| r.still_draining() > 0 && r.draining.iter().any(|(a, _)| a.ip() == ip));
            let note = if cut { " while draining" } else { "" };
            world.steps.push(format!("stop {cid}{note}"));
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut world = self.up()?;
        if let Some(pos) = world
            .containers
            .iter()
            .position(|c| c.id == id || c.name == id)
        {
            let c = world.containers.remove(pos);
            world.steps.push(format!("remove {}", c.id));
        }
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        let mut world = self.up()?;
        Ok(world.find(id).map(|c| ContainerState {
            running: c.running,
            exit_code: c.exit_code,
            health: None,
            ip: Some(c.ip),
            published_port: c.host_port,
            error: None,
        }))
    }
}

/// Probes answered by the fake Docker's containers, per their image's behaviour.
#[derive(Clone)]
pub struct FakeProber(FakeDocker);

impl Prober for FakeProber {
    async fn http(
        &self,
        addr: SocketAddr,
        _path: &str,
        _timeout: Duration,
    ) -> Result<u16, ProbeError> {
        let world = self.0.world();
        let c = world.reached(addr).ok_or(ProbeError::Refused)?;
        Ok(match world.behaviour(&c.image) {
            Behaviour::Unhealthy => 500,
            _ => 200,
        })
    }

    async fn tcp(&self, addr: SocketAddr, _timeout: Duration) -> Result<(), ProbeError> {
        let world = self.0.world();
        world.reached(addr).map(drop).ok_or(ProbeError::Refused)
    }
}

/// The port holder on the fake Docker: routes in the fake world, a switch drains the previous
/// target for the route's drain time on the (paused) clock, and a port some running container
/// publishes itself cannot be held (`PortTaken`). Its verbs are logged with Docker's
/// (`hold NAME TARGET`, `unhold NAME`).
#[derive(Clone)]
pub struct FakeHolder(FakeDocker);

impl FakeDocker {
    pub fn holder(&self) -> FakeHolder {
        FakeHolder(self.clone())
    }
}

impl FakeHolder {
    /// The answers of the next switches, in order; `None` behaves normally.
    pub fn fail_switches(&self, faults: impl IntoIterator<Item = Option<HolderError>>) {
        self.0.world().switch_faults.extend(faults);
    }

    /// Every route by name.
    pub fn routes(&self) -> BTreeMap<String, HeldRoute> {
        self.0
            .world()
            .routes
            .iter()
            .map(|(n, r)| (n.clone(), r.held.clone()))
            .collect()
    }

    /// A route as a holder from before would have it: `name` on `listen` to `target`.
    pub fn put(&self, name: &str, listen: SocketAddr, target: SocketAddr) {
        let held = HeldRoute {
            listen,
            target,
            since_ms: 1,
            mode: crate::api::HolderMode::default(),
            drain: Duration::from_secs(5),
            listening: true,
            draining: 0,
        };
        self.0.world().routes.insert(
            name.to_string(),
            FakeRoute {
                held,
                draining: Vec::new(),
            },
        );
    }

    /// Switches `name` to `target` as the holder does, leaving the previous target draining.
    pub fn switch_now(&self, name: &str, target: SocketAddr) {
        let mut world = self.0.world();
        let r = world.routes.get_mut(name).expect("a route to switch");
        let until = tokio::time::Instant::now() + r.held.drain;
        r.draining.push((r.held.target, until));
        r.held.target = target;
    }
}

impl PortHolder for FakeHolder {
    fn route<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<HeldRoute>, HolderError>> {
        Box::pin(async move {
            let mut world = self.0.world();
            Ok(world.routes.get_mut(name).map(|r| HeldRoute {
                draining: r.still_draining(),
                ..r.held.clone()
            }))
        })
    }

    fn switch<'a>(&'a self, req: &'a HoldRequest) -> BoxFuture<'a, Result<HeldRoute, HolderError>> {
        Box::pin(async move {
            let mut world = self.0.world();
            if let Some(Some(fault)) = world.switch_faults.pop_front() {
                world.steps.push(format!("hold {} failed", req.name));
                return Err(fault);
            }
            let published = world
                .containers
                .iter()
                .any(|c| c.running && c.host_port == Some(req.listen.port()));
            if published && !world.routes.contains_key(&req.name) {
                return Err(HolderError::PortTaken(
                    req.listen,
                    "address already in use".into(),
                ));
            }
            let now = tokio::time::Instant::now();
            let route = world
                .routes
                .entry(req.name.clone())
                .or_insert_with(|| FakeRoute {
                    held: HeldRoute {
                        listen: req.listen,
                        target: req.target,
                        since_ms: 1,
                        mode: req.mode,
                        drain: req.drain,
                        listening: true,
                        draining: 0,
                    },
                    draining: Vec::new(),
                });
            if route.held.target != req.target {
                route.draining.push((route.held.target, now + req.drain));
            }
            route.held = HeldRoute {
                listen: req.listen,
                target: req.target,
                mode: req.mode,
                drain: req.drain,
                draining: route.still_draining(),
                ..route.held.clone()
            };
            let held = route.held.clone();
            world
                .steps
                .push(format!("hold {} {}", req.name, req.target));
            Ok(held)
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, HolderError>> {
        Box::pin(async move {
            let mut world = self.0.world();
            let existed = world.routes.remove(name).is_some();
            if existed {
                world.steps.push(format!("unhold {name}"));
            }
            Ok(existed)
        })
    }

    fn owned<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<String>, HolderError>> {
        Box::pin(async move {
            let names: Vec<String> = self.0.world().routes.keys().cloned().collect();
            Ok(super::holder::of_instance(instance, &names)
                .cloned()
                .collect())
        })
    }
}
