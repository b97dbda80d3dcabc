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

    /// The verbs called since the last call (`create NAME`, `start ID`, `stop ID`,
    /// `remove ID`).
    pub fn steps(&self) -> Vec<String> {
        std::mem::take(&mut self.world().steps)
    }

    /// Every container, as `list_managed` would list it.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        self.world().containers.iter().map(info).collect()
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
        let world = self.up()?;
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
            && world
                .containers
                .iter()
                .any(|o| o.running && o.id != cid && o.host_port == Some(port))
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
            let cid = c.id.clone();
            world.steps.push(format!("stop {cid}"));
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
