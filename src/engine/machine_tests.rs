//! The deploy state machine without Docker: the scripted fake of `engine::fake` on a paused
//! clock, so health waits and drains take no real time. Each test asserts the order of the
//! runtime's verbs and what status says; the same paths run on real Docker in
//! `tests/engine_docker.rs`.

use super::*;
use crate::api::{HealthCheck, HealthCheckType, ProjectSpec, StageSpec};
use crate::engine::fake::{Behaviour, FakeDocker, FakeProber};
use crate::testing::{NoSecrets, NoSink};

type Machine = Reconciler<FakeDocker, FakeProber, NoSink, NoSecrets>;

/// One Stage of the demo Project on a fake Docker with 1.0.0 and 1.1.0 healthy, 1.2.0-broken
/// answering 500 and 1.3.0-crash exiting at once.
struct World {
    docker: FakeDocker,
    machine: Machine,
    project: ProjectSpec,
    stage: StageSpec,
    generation: i64,
    status: StageStatus,
}

impl World {
    fn new(tag: &str, host_port: Option<u16>) -> World {
        let docker = FakeDocker::default();
        for (tag, b) in [
            ("1.0.0", Behaviour::Healthy),
            ("1.1.0", Behaviour::Healthy),
            ("1.2.0-broken", Behaviour::Unhealthy),
            ("1.3.0-crash", Behaviour::Crashes),
        ] {
            docker.image(&format!("demo:{tag}"), b);
        }
        let machine = Reconciler {
            runtime: docker.clone(),
            prober: docker.prober(),
            sink: NoSink,
            secrets: NoSecrets,
            proxy: NoProxy,
            host_name: "default".into(),
            instance: "unit".into(),
            holder: None,
        };
        let project = ProjectSpec {
            image: "demo".into(),
            health_check: Some(HealthCheck {
                kind: Some(HealthCheckType::Http),
                path: Some("/healthz".into()),
                interval_seconds: Some(1),
                retries: Some(2),
                start_period_seconds: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        let stage = StageSpec {
            project_ref: "demo".into(),
            pinned_tag: Some(tag.into()),
            host_port,
            host_ip: host_port.map(|_| "127.0.0.1".into()),
            ..Default::default()
        };
        World {
            docker,
            machine,
            project,
            stage,
            generation: 1,
            status: StageStatus::default(),
        }
    }

    fn pin(&mut self, tag: &str) {
        self.stage.pinned_tag = Some(tag.into());
        self.generation += 1;
    }

    async fn pass(&mut self) -> Requeue {
        let key = StageKey {
            namespace: "default".into(),
            project: "demo".into(),
            stage: "prod".into(),
        };
        let observed = self.docker.containers();
        let input = StageInput {
            key,
            generation: self.generation,
            stage: &self.stage,
            project: Some(&self.project),
        };
        let out = self
            .machine
            .reconcile(&input, &observed, self.status.clone())
            .await;
        self.status = out.status;
        out.requeue
    }

    fn ready(&self) -> (String, String) {
        let c = conditions::ready(&self.status.conditions).expect("a Ready condition");
        (c.status.clone(), c.reason.clone())
    }

    fn message(&self) -> String {
        self.status.message.clone().unwrap_or_default()
    }

    /// The one running container's tag.
    fn serving(&self) -> Vec<String> {
        self.docker
            .containers()
            .iter()
            .filter(|c| c.running)
            .map(|c| c.label(crate::api::labels::TAG).unwrap_or("?").to_string())
            .collect()
    }
}

fn position(steps: &[String], prefix: &str) -> usize {
    steps
        .iter()
        .position(|s| s.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {steps:?}"))
}

#[tokio::test(start_paused = true)]
async fn a_roll_forward_starts_the_new_container_before_the_old_one_stops() {
    let mut w = World::new("1.0.0", None);
    assert_eq!(w.pass().await, Requeue::Resync);
    assert_eq!(w.status.phase, Some(Phase::Healthy), "{}", w.message());
    assert_eq!(w.serving(), ["1.0.0"]);
    let old = w.docker.containers()[0].id.clone();
    w.docker.steps();

    w.pin("1.1.0");
    assert_eq!(w.pass().await, Requeue::Resync);
    let steps = w.docker.steps();
    assert!(
        position(&steps, "start") < position(&steps, &format!("stop {old}")),
        "{steps:?}"
    );
    assert_eq!(w.serving(), ["1.1.0"]);
    assert_eq!(
        w.docker.containers().len(),
        1,
        "the old container is removed"
    );
    assert_eq!(w.status.current.as_ref().unwrap().tag, "1.1.0");
    assert_eq!(w.status.previous.as_ref().unwrap().tag, "1.0.0");
    assert_eq!(w.status.history[0].outcome, Outcome::Succeeded);
    assert_eq!(w.ready(), ("True".into(), "Healthy".into()));
    assert!(
        w.message().starts_with("1.1.0 is serving (healthy in "),
        "{}",
        w.message()
    );
}

#[tokio::test(start_paused = true)]
async fn a_converged_stage_is_left_alone_and_its_status_is_not_rewritten() {
    let mut w = World::new("1.0.0", None);
    w.pass().await;
    let converged = w.status.clone();
    w.docker.steps();
    for _ in 0..3 {
        assert_eq!(w.pass().await, Requeue::Resync);
    }
    assert!(w.docker.steps().is_empty(), "a steady Stage writes nothing");
    assert_eq!(w.status, converged);
}

#[tokio::test(start_paused = true)]
async fn a_broken_tag_is_rolled_back_held_and_never_touches_what_serves() {
    let mut w = World::new("1.1.0", None);
    w.pass().await;
    let serving = w.docker.containers()[0].id.clone();
    w.docker.steps();

    w.pin("1.2.0-broken");
    assert_eq!(w.pass().await, Requeue::Resync);
    let steps = w.docker.steps();
    assert!(
        !steps.iter().any(|s| *s == format!("stop {serving}")),
        "{steps:?}"
    );
    assert_eq!(w.status.phase, Some(Phase::RolledBack));
    assert_eq!(w.ready(), ("False".into(), "RolledBack".into()));
    let message = w.message();
    assert!(
        message.contains("1.2.0-broken failed its health check"),
        "{message}"
    );
    assert!(message.contains("answered 500"), "{message}");
    assert!(message.contains("1.1.0 keeps serving"), "{message}");
    assert_eq!(w.serving(), ["1.1.0"]);
    assert_eq!(
        w.docker.containers().len(),
        1,
        "the broken container is removed"
    );
    let failure = w.status.last_failure.clone().unwrap();
    assert_eq!(failure.reason, "HealthCheckFailed");

    // Held: the next passes do not try it again.
    w.pass().await;
    w.pass().await;
    assert!(
        !w.docker.steps().iter().any(|s| s.starts_with("create")),
        "a held failure was retried"
    );
    assert_eq!(w.status.phase, Some(Phase::RolledBack));

    // An edit lifts the hold; pinning what serves ends the episode without a new container.
    w.pin("1.1.0");
    w.pass().await;
    assert_eq!(w.status.phase, Some(Phase::Healthy));
    assert!(w.status.last_failure.is_none());
    assert!(!w.docker.steps().iter().any(|s| s.starts_with("create")));
}

#[tokio::test(start_paused = true)]
async fn a_fixed_host_port_is_handed_over_first_and_given_back_on_failure() {
    let mut w = World::new("1.0.0", Some(8081));
    w.pass().await;
    let old = w.docker.containers()[0].id.clone();
    w.docker.steps();

    w.pin("1.3.0-crash");
    w.pass().await;
    let steps = w.docker.steps();
    assert!(
        position(&steps, &format!("stop {old}")) < position(&steps, "create"),
        "the old container hands the port over before the new one exists: {steps:?}"
    );
    assert_eq!(
        steps.last().map(String::as_str),
        Some(format!("start {old}").as_str()),
        "the old container is started again: {steps:?}"
    );
    assert_eq!(w.serving(), ["1.0.0"]);
    let message = w.message();
    assert!(message.contains("exited with code 1"), "{message}");
    assert!(
        message.contains("1.0.0 serves again on host port 8081, which 1.3.0-crash held for"),
        "{message}"
    );

    // A good tag takes the port over and says how long the gap was.
    w.pin("1.1.0");
    w.pass().await;
    assert_eq!(w.serving(), ["1.1.0"]);
    assert!(
        w.status.history[0]
            .message
            .contains("host port 8081 handed over")
    );
}

#[tokio::test(start_paused = true)]
async fn a_tag_that_cannot_be_had_leaves_the_stage_degraded_and_the_container_alone() {
    let mut w = World::new("1.0.0", None);
    w.pass().await;
    w.docker.steps();
    w.pin("9.9.9");
    assert_eq!(w.pass().await, Requeue::Retry);
    assert!(w.docker.steps().is_empty());
    assert_eq!(w.status.phase, Some(Phase::Degraded));
    assert_eq!(w.ready(), ("False".into(), "ImageUnavailable".into()));
    assert!(w.message().contains("demo:9.9.9"), "{}", w.message());
    assert!(w.message().contains("1.0.0 is still the deployed version"));
    assert_eq!(w.serving(), ["1.0.0"]);

    // Docker away: still Degraded, the reason says so; back: Healthy again, nothing redeployed.
    w.pin("1.0.0");
    w.docker.set_unreachable(true);
    assert_eq!(w.pass().await, Requeue::Retry);
    assert_eq!(w.status.phase, Some(Phase::Degraded));
    assert_eq!(w.ready(), ("False".into(), "DockerUnreachable".into()));
    w.docker.set_unreachable(false);
    assert_eq!(w.pass().await, Requeue::Resync);
    assert_eq!(w.status.phase, Some(Phase::Healthy));
    assert!(!w.docker.steps().iter().any(|s| s.starts_with("create")));
}

#[tokio::test(start_paused = true)]
async fn drift_is_repaired_without_a_deploy() {
    let mut w = World::new("1.0.0", None);
    w.pass().await;
    let c = w.docker.containers()[0].clone();
    let history = w.status.history.len();

    w.docker.stop(&c.id, 0).await.unwrap();
    w.pass().await;
    assert_eq!(w.serving(), ["1.0.0"]);
    assert_eq!(
        w.docker.containers()[0].id,
        c.id,
        "the same container is started again"
    );
    assert_eq!(w.status.history.len(), history, "a restart is not a deploy");

    w.docker.remove(&c.id).await.unwrap();
    w.pass().await;
    let now = w.docker.containers();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].id, c.id);
    assert_eq!(now[0].name, c.name, "the same deterministic name");
    assert_eq!(w.status.phase, Some(Phase::Healthy));
}

#[tokio::test(start_paused = true)]
async fn a_deploy_interrupted_after_create_is_resumed_without_a_second_container() {
    let mut w = World::new("1.0.0", None);
    w.pass().await;
    // A crash right after `create`: the new container exists, stopped; status says Deploying.
    w.pin("1.1.0");
    let eff = Effective::new(&w.project, &w.stage).unwrap();
    let image = w
        .docker
        .ensure_image("demo:1.1.0", Pull::Never)
        .await
        .unwrap();
    let key = StageKey {
        namespace: "default".into(),
        project: "demo".into(),
        stage: "prod".into(),
    };
    let spec = eff.container_spec(&key, "unit", "1.1.0", &image, &Default::default());
    w.docker.create(&spec).await.unwrap();
    w.status.phase = Some(Phase::Deploying);
    w.docker.steps();

    w.pass().await;
    assert!(!w.docker.steps().iter().any(|s| s.starts_with("create")));
    assert_eq!(w.serving(), ["1.1.0"]);
    assert_eq!(w.docker.containers().len(), 1);
    assert_eq!(w.status.phase, Some(Phase::Healthy));
}

#[tokio::test(start_paused = true)]
async fn a_first_deploy_that_fails_has_nothing_to_roll_back_to() {
    let mut w = World::new("1.2.0-broken", None);
    w.pass().await;
    assert_eq!(w.status.phase, Some(Phase::Failed));
    assert_eq!(w.ready(), ("False".into(), "DeployFailed".into()));
    assert!(
        w.message().contains("nothing to roll back to"),
        "{}",
        w.message()
    );
    assert!(w.docker.containers().is_empty());
    assert!(w.status.current.is_none());
}

#[tokio::test(start_paused = true)]
async fn domains_without_a_proxy_deploy_the_container_and_say_the_domains_are_not_served() {
    let mut w = World::new("1.0.0", None);
    w.stage.domains = vec!["app.example.com".into()];
    w.pass().await;
    w.pass().await;
    assert_eq!(w.serving(), ["1.0.0"], "{:#?}", w.status);
    let proxy = w
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == PROXY_READY)
        .expect("ProxyReady");
    assert_eq!(
        (proxy.status.as_str(), proxy.reason.as_str()),
        ("False", "ProxyUnreachable"),
        "{:#?}",
        w.status
    );
    assert!(
        proxy.message.contains("no proxy is configured"),
        "{proxy:?}"
    );
    assert_eq!(w.ready().0, "False", "{}", w.message());
}

fn prod() -> StageKey {
    StageKey {
        namespace: "default".into(),
        project: "demo".into(),
        stage: "prod".into(),
    }
}

impl World {
    /// The same World with a port holder on the fake Docker.
    fn held(tag: &str, host_port: u16) -> (World, crate::engine::fake::FakeHolder) {
        let mut w = World::new(tag, Some(host_port));
        let holder = w.docker.holder();
        w.machine.holder = Some(Arc::new(holder.clone()));
        (w, holder)
    }

    fn ip_of(&self, id: &str) -> IpAddr {
        let world = inspect_now(&self.docker, id);
        world.ip.expect("an address")
    }
}

fn inspect_now(docker: &FakeDocker, id: &str) -> crate::engine::runtime::ContainerState {
    // The fake answers at once; a blocking wait keeps the helpers synchronous.
    futures::executor::block_on(docker.inspect(id))
        .unwrap()
        .expect("the container exists")
}

#[tokio::test(start_paused = true)]
async fn a_roll_resumed_after_the_switch_waits_for_the_drain_before_retiring() {
    let (mut w, holder) = World::held("1.0.0", 8081);
    assert_eq!(w.pass().await, Requeue::Resync);
    assert_eq!(w.status.phase, Some(Phase::Healthy), "{}", w.message());
    let name = route_name("unit", &prod());
    let old = w.docker.containers()[0].id.clone();
    assert_eq!(holder.routes()[&name].target.ip(), w.ip_of(&old));

    // The controller stopped right after the holder switched to 1.1.0: the old container
    // still has requests in flight, status still says Deploying.
    w.pin("1.1.0");
    let eff = Effective::new(&w.project, &w.stage)
        .unwrap()
        .with_holder(true);
    let image = w
        .docker
        .ensure_image("demo:1.1.0", Pull::Never)
        .await
        .unwrap();
    let spec = eff.container_spec(&prod(), "unit", "1.1.0", &image, &Default::default());
    let new = w.docker.create(&spec).await.unwrap();
    w.docker.start(&new).await.unwrap();
    holder.switch_now(&name, SocketAddr::new(w.ip_of(&new), 8080));
    w.status.phase = Some(Phase::Deploying);
    w.docker.steps();

    w.pass().await;
    let steps = w.docker.steps();
    assert!(
        steps.contains(&format!("stop {old}")),
        "the old container is retired: {steps:?}"
    );
    assert!(
        !steps.iter().any(|s| s.ends_with("while draining")),
        "retired while the holder still drained it: {steps:?}"
    );
    assert_eq!(w.serving(), ["1.1.0"]);
}

#[tokio::test(start_paused = true)]
async fn a_port_handover_the_holder_does_not_take_starts_the_old_container_again() {
    // 1.0.0 publishes the port itself (deployed before this controller ran a holder).
    let mut w = World::new("1.0.0", Some(8081));
    w.pass().await;
    let old = w.docker.containers()[0].id.clone();
    let holder = w.docker.holder();
    w.machine.holder = Some(Arc::new(holder.clone()));
    // The first switch finds the port taken (by 1.0.0); once 1.0.0 has stopped, the holder
    // fails.
    holder.fail_switches([None, Some(HolderError::Unavailable("gone away".into()))]);
    w.docker.steps();

    w.pin("1.1.0");
    assert_eq!(w.pass().await, Requeue::Retry);
    let steps = w.docker.steps();
    assert!(
        position(&steps, &format!("stop {old}")) < position(&steps, &format!("start {old}")),
        "{steps:?}"
    );
    assert!(
        w.serving().contains(&"1.0.0".to_string()),
        "nothing serves the port: {steps:?}"
    );
    assert_eq!(w.status.phase, Some(Phase::Deploying), "{}", w.message());

    // The holder back: the port is handed over and the roll completes.
    w.pass().await;
    assert_eq!(w.serving(), ["1.1.0"]);
    assert!(holder.routes().contains_key(&route_name("unit", &prod())));
}

#[tokio::test(start_paused = true)]
async fn a_route_under_its_legacy_name_moves_to_the_current_one_without_a_gap() {
    let (mut w, holder) = World::held("1.0.0", 8081);
    w.pass().await;
    let name = route_name("unit", &prod());
    let legacy = crate::engine::holder::legacy_route_name("unit", &prod());
    // A holder from before route names ended in a hash.
    let route = holder.routes()[&name].clone();
    holder.put(&legacy, route.listen, route.target);
    holder.remove(&name).await.unwrap();
    w.docker.steps();

    w.pass().await;
    let steps = w.docker.steps();
    assert_eq!(
        steps,
        [
            format!("hold {name} {}", route.target),
            format!("unhold {legacy}")
        ],
        "bound under the new name before the old one lets go, no container touched"
    );
    let routes = holder.routes();
    assert_eq!(routes.keys().collect::<Vec<_>>(), [&name]);
    assert_eq!(routes[&name].target, route.target);
    assert_eq!(w.status.phase, Some(Phase::Healthy), "{}", w.message());
}

#[tokio::test(start_paused = true)]
async fn a_steady_stage_retires_a_leftover_only_once_the_holder_has_drained_it() {
    let (mut w, holder) = World::held("1.0.0", 8081);
    w.pass().await;
    let name = route_name("unit", &prod());
    let serving = w.docker.containers()[0].id.clone();
    // A leftover of an interrupted roll that the port pointed at until a moment ago (a roll
    // back switched the holder back to 1.0.0): it still has requests in flight.
    let eff = Effective::new(&w.project, &w.stage)
        .unwrap()
        .with_holder(true);
    let image = w
        .docker
        .ensure_image("demo:1.1.0", Pull::Never)
        .await
        .unwrap();
    let spec = eff.container_spec(&prod(), "unit", "1.1.0", &image, &Default::default());
    let leftover = w.docker.create(&spec).await.unwrap();
    w.docker.start(&leftover).await.unwrap();
    holder.switch_now(&name, SocketAddr::new(w.ip_of(&leftover), 8080));
    holder.switch_now(&name, SocketAddr::new(w.ip_of(&serving), 8080));
    w.docker.steps();

    w.pass().await;
    let steps = w.docker.steps();
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with(&format!("stop {leftover}"))),
        "the leftover is retired: {steps:?}"
    );
    assert!(
        !steps.iter().any(|s| s.ends_with("while draining")),
        "retired while the holder still drained it: {steps:?}"
    );
    assert_eq!(w.serving(), ["1.0.0"]);
}
