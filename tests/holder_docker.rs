//! The port holder on the real Docker engine: a Stage with a fixed `hostPort` rolls forward and
//! back while clients hammer the port (a new connection per request, and one keep-alive
//! connection), a broken tag never answers, and a controller killed mid-roll or at rest drops
//! nothing. Needs the images of `scripts/demo-images.sh` and `scripts/holder-image.sh`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use tiny_forge::adapters::docker::DockerRuntime;
use tiny_forge::adapters::holder::{DockerHolder, HOLDER_LABEL, HolderConfig};
use tiny_forge::api::{Outcome, Phase, StageStatus, labels};
use tiny_forge::engine::Runtime;
use tiny_forge::store::StateDb;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One response off a connection: status and body (Content-Length framing).
async fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<(u16, String)> {
    read_response_and_close(reader)
        .await
        .map(|(s, b, _)| (s, b))
}

/// Also whether the server said `Connection: close` (the connection is not to be reused).
async fn read_response_and_close(
    reader: &mut BufReader<TcpStream>,
) -> std::io::Result<(u16, String, bool)> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0;
    let mut close = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("connection")
            && v.trim().eq_ignore_ascii_case("close")
        {
            close = true;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok((
        status,
        String::from_utf8_lossy(&body).trim().to_string(),
        close,
    ))
}

/// What a client saw: every answer in order, every failure.
#[derive(Debug, Default)]
struct Seen {
    answers: Vec<String>,
    failures: Vec<String>,
}

impl Seen {
    /// The distinct answers in the order they first came, and whether they never went back.
    fn versions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in &self.answers {
            if out.last() != Some(a) {
                out.push(a.clone());
            }
        }
        out
    }
}

/// Requests `GET /` every 2 ms until `stop`: a new connection each, or one keep-alive
/// connection (reopened when the server says `Connection: close`, as HTTP/1.1 clients do, or
/// after a failure, which is counted).
fn client(
    addr: SocketAddr,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut conn: Option<BufReader<TcpStream>> = None;
        while !stop.load(Ordering::SeqCst) {
            let attempt = async {
                if conn.is_none() {
                    conn = Some(BufReader::new(TcpStream::connect(addr).await?));
                }
                let c = conn.as_mut().expect("just opened");
                let close = if keep_alive {
                    ""
                } else {
                    "Connection: close\r\n"
                };
                c.get_mut()
                    .write_all(format!("GET / HTTP/1.1\r\nHost: t\r\n{close}\r\n").as_bytes())
                    .await?;
                let answer = read_response_and_close(c).await;
                if !keep_alive || answer.as_ref().is_ok_and(|a| a.2) {
                    conn = None;
                }
                answer.map(|(s, b, _)| (s, b))
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok((200, body))) => seen.answers.push(body),
                Ok(Ok((status, body))) => seen.failures.push(format!("HTTP {status} {body}")),
                Ok(Err(e)) => {
                    seen.failures.push(e.to_string());
                    conn = None;
                }
                Err(_) => {
                    seen.failures.push("no answer within 5 s".into());
                    conn = None;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen
    })
}

struct Clients {
    stop: Arc<AtomicBool>,
    fresh: tokio::task::JoinHandle<Seen>,
    kept: tokio::task::JoinHandle<Seen>,
}

impl Clients {
    fn start(addr: SocketAddr) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        Clients {
            fresh: client(addr, false, stop.clone()),
            kept: client(addr, true, stop.clone()),
            stop,
        }
    }

    async fn finish(self) -> [(&'static str, Seen); 2] {
        self.stop.store(true, Ordering::SeqCst);
        let seen = [
            ("new connection per request", self.fresh.await.unwrap()),
            ("one keep-alive connection", self.kept.await.unwrap()),
        ];
        for (kind, s) in &seen {
            eprintln!(
                "{kind}: {} answers, {} failures",
                s.answers.len(),
                s.failures.len()
            );
            // The clients really ran across the roll (not a timing figure: a roll takes seconds).
            assert!(
                s.answers.len() >= 10,
                "{kind}: only {} answers",
                s.answers.len()
            );
        }
        seen
    }
}

fn v(tag: &str) -> String {
    format!("tiny-forge-demo {tag}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_port_rolls_forward_and_back_with_no_failed_request_and_no_answer_from_a_broken_tag()
{
    let Some(rt) = docker().await else { return };
    let instance = "t-holder-roll";
    tiny_forge::testing::remove_holder(&rt, instance).await;
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let holder = DockerHolder::new(
        rt.docker().clone(),
        instance,
        HolderConfig {
            control,
            ..Default::default()
        },
    )
    .unwrap();
    let mut r = reconciler(rt.clone());
    r.instance = instance.into();
    r.holder = Some(Arc::new(holder));
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut stage = pinned("1.0.0");
    stage.host_port = Some(port);
    stage.host_ip = Some("127.0.0.1".into());
    let mut f = Fixture::new("t-holder-roll", stage);
    f.cleanup(&rt).await;

    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );
    let route = f.status.port.clone().expect("status.port");
    assert_eq!(route.listen, listen.to_string());
    assert_eq!(route.tag, "1.0.0");
    let first = f.containers(&rt).await;
    assert_eq!(first.len(), 1);
    // The container itself publishes nothing: the holder owns the port, the route its address.
    assert_eq!(
        route.target,
        format!("{}:8080", ip_of(&rt, &first[0].id).await)
    );

    // Forward, with clients on the port throughout.
    let clients = Clients::start(listen);
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.edit(|s| s.pinned_tag = Some("1.1.0".into()));
    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );
    let message = out.status.history[0].message.clone();
    assert!(
        message.contains("the port holder switched host port"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (kind, seen) in clients.finish().await {
        assert!(
            seen.failures.is_empty(),
            "{kind}: {} failed: {:?}",
            seen.failures.len(),
            seen.failures
        );
        assert_eq!(seen.versions(), [v("1.0.0"), v("1.1.0")], "{kind}");
    }
    assert_eq!(f.status.port.as_ref().unwrap().tag, "1.1.0");
    assert_eq!(
        f.containers(&rt).await.len(),
        1,
        "the old container is retired"
    );

    // A broken tag: health-gated on its own address, it never reaches the switch.
    let clients = Clients::start(listen);
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.edit(|s| s.pinned_tag = Some("1.2.0-broken".into()));
    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::RolledBack),
        "{:?}",
        out.status.message
    );
    assert_eq!(out.status.history[0].outcome, Outcome::RolledBack);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (kind, seen) in clients.finish().await {
        assert!(seen.failures.is_empty(), "{kind}: {:?}", seen.failures);
        assert_eq!(
            seen.versions(),
            [v("1.1.0")],
            "{kind}: an answer from another version"
        );
    }

    // And back to 1.0.0 by pin, the way a person rolls back.
    let clients = Clients::start(listen);
    f.edit(|s| s.pinned_tag = Some("1.0.0".into()));
    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (kind, seen) in clients.finish().await {
        assert!(seen.failures.is_empty(), "{kind}: {:?}", seen.failures);
        assert_eq!(seen.versions(), [v("1.1.0"), v("1.0.0")], "{kind}");
    }

    f.cleanup(&rt).await;
    tiny_forge::testing::remove_holder(&rt, instance).await;
}

const NS: &str = "t-holder-crash";

fn write_manifests(dir: &Path, tag: &str, port: u16) {
    // The app takes 3 s to listen, so a kill lands inside the health wait.
    let text = format!(
        "apiVersion: tinyforge.dev/v1alpha1
kind: Project
metadata: {{name: demo, namespace: {NS}}}
spec:
  image: tiny-forge-demo
  container:
    port: 8080
    stopTimeoutSeconds: 2
    env: [{{name: DEMO_START_DELAY_MS, value: \"3000\"}}]
  healthCheck: {{type: http, path: /healthz, intervalSeconds: 1, retries: 3, startPeriodSeconds: 5}}
---
apiVersion: tinyforge.dev/v1alpha1
kind: Stage
metadata: {{name: web, namespace: {NS}}}
spec: {{projectRef: demo, pinnedTag: \"{tag}\", hostPort: {port}, hostIp: 127.0.0.1}}
"
    );
    let tmp = dir.join(".all.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join("all.yaml")).unwrap();
}

fn start(manifests: &Path, state: &Path, control: SocketAddr) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tiny-forge"))
        .args(["run", "--no-webhooks", "--resync", "1s", "--instance", NS])
        .arg("--holder-control")
        .arg(control.to_string())
        .arg("--manifests")
        .arg(manifests)
        .arg("--state-dir")
        .arg(state)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tiny-forge")
}

async fn wait_for(state: &Path, done: impl Fn(&StageStatus) -> bool) -> StageStatus {
    let mut last = StageStatus::default();
    for _ in 0..600 {
        if state.join("state.db").exists() {
            last = StateDb::open(state)
                .unwrap()
                .stage_status(NS, "web")
                .unwrap();
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never reached the expected state; last status: {last:#?}");
}

fn healthy_on(tag: &'static str) -> impl Fn(&StageStatus) -> bool {
    move |s| {
        s.phase == Some(Phase::Healthy)
            && s.current.as_ref().is_some_and(|c| c.tag == tag)
            && s.port.as_ref().is_some_and(|p| p.tag == tag)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_killed_mid_roll_and_at_rest_drops_no_request() {
    let Some(rt) = docker().await else { return };
    tiny_forge::testing::remove_holder(&rt, NS).await;
    for c in rt.list_managed(&[(labels::INSTANCE, NS)]).await.unwrap() {
        rt.remove(&c.id).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    let state = dir.path().join("state");
    std::fs::create_dir(&manifests).unwrap();
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    write_manifests(&manifests, "1.0.0", port);

    let mut child = start(&manifests, &state, control);
    wait_for(&state, healthy_on("1.0.0")).await;
    let clients = Clients::start(listen);

    // SIGKILL at rest: the holder keeps serving without the controller.
    child.kill().unwrap();
    child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    child = start(&manifests, &state, control);

    // SIGKILL mid-roll (in the new container's health wait), then start again.
    write_manifests(&manifests, "1.1.0", port);
    wait_for(&state, |s| s.phase == Some(Phase::Deploying)).await;
    // Killed as soon as the new container runs: its health wait has begun and the switch is
    // at least a health probe away (a fixed sleep could land after the roll on a fast host).
    loop {
        let running = rt.list_managed(&[(labels::INSTANCE, NS)]).await.unwrap();
        if running
            .iter()
            .any(|c| c.running && c.label(labels::TAG) == Some("1.1.0"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = StateDb::open(&state)
        .unwrap()
        .stage_status(NS, "web")
        .unwrap();
    assert_eq!(
        at_kill.phase,
        Some(Phase::Deploying),
        "the kill must land mid-roll"
    );
    child = start(&manifests, &state, control);
    wait_for(&state, healthy_on("1.1.0")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    for (kind, seen) in clients.finish().await {
        assert!(
            seen.failures.is_empty(),
            "{kind}: {} failed: {:?}",
            seen.failures.len(),
            seen.failures
        );
        assert_eq!(seen.versions(), [v("1.0.0"), v("1.1.0")], "{kind}");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    for c in rt.list_managed(&[(labels::INSTANCE, NS)]).await.unwrap() {
        rt.remove(&c.id).await.unwrap();
    }
    tiny_forge::testing::remove_holder(&rt, NS).await;
}

/// The running holder container of `instance`: (id, host pid).
async fn holder_container(rt: &DockerRuntime, instance: &str) -> Option<(String, i64)> {
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("{HOLDER_LABEL}={instance}")],
    )]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .filters(&filters)
        .build();
    let list = rt.docker().list_containers(Some(options)).await.ok()?;
    let id = list.first()?.id.clone()?;
    let pid = rt
        .docker()
        .inspect_container(&id, None)
        .await
        .ok()?
        .state?
        .pid?;
    Some((id, pid))
}

/// From now until `GET /` on `addr` answers 200 (a fresh connection every 5 ms).
async fn until_answers(addr: SocketAddr) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let attempt = async {
            let mut c = BufReader::new(TcpStream::connect(addr).await?);
            c.get_mut()
                .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await?;
            read_response(&mut c).await
        };
        if let Ok(Ok((200, _))) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the port never answered again"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_holder_comes_back_after_a_crash_a_docker_kill_and_a_removal() {
    let Some(rt) = docker().await else { return };
    let instance = "t-holder-repair";
    tiny_forge::testing::remove_holder(&rt, instance).await;
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let holder = Arc::new(
        DockerHolder::new(
            rt.docker().clone(),
            instance,
            HolderConfig {
                control,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let watched = holder.clone();
    let watcher = tokio::spawn(async move { watched.watch(Duration::from_secs(1)).await });
    let mut r = reconciler(rt.clone());
    r.instance = instance.into();
    r.holder = Some(holder);
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut stage = pinned("1.0.0");
    stage.host_port = Some(port);
    stage.host_ip = Some("127.0.0.1".into());
    let mut f = Fixture::new("t-holder-repair", stage);
    f.cleanup(&rt).await;
    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );

    // The process dies (what a crash or the OOM killer does): Docker's restart policy.
    let (id, pid) = holder_container(&rt, instance)
        .await
        .expect("a holder runs");
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let crash = until_answers(listen).await;
    assert_eq!(
        holder_container(&rt, instance).await.unwrap().0,
        id,
        "restarted, not replaced"
    );

    // `docker kill`: Docker leaves it stopped; the controller's watch starts it again.
    rt.docker()
        .kill_container(&id, None::<bollard::query_parameters::KillContainerOptions>)
        .await
        .unwrap();
    let killed = until_answers(listen).await;

    // `docker rm -f`: created again, its routes from its volume.
    let remove = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
        .force(true)
        .build();
    rt.docker()
        .remove_container(&id, Some(remove))
        .await
        .unwrap();
    let removed = until_answers(listen).await;
    // The port may answer before Docker lists the new container as running (it is listed
    // once its start call returns): wait for the listing with the suite's one deadline.
    let replaced = tiny_forge::testing::eventually(
        "a holder container listed again",
        tiny_forge::testing::PATIENCE,
        || async { holder_container(&rt, instance).await.ok_or("none listed") },
    )
    .await;
    assert_ne!(replaced.0, id);
    eprintln!(
        "port answering again after: process killed {:.0} ms, docker kill {:.0} ms, docker rm -f {:.0} ms",
        crash.as_secs_f64() * 1e3,
        killed.as_secs_f64() * 1e3,
        removed.as_secs_f64() * 1e3
    );
    // The steady pass agrees: same route, same container.
    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );

    watcher.abort();
    f.cleanup(&rt).await;
    tiny_forge::testing::remove_holder(&rt, instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_upgrade_overlaps_the_old_holder_and_drops_no_request() {
    let Some(rt) = docker().await else { return };
    let instance = "t-holder-upgrade";
    tiny_forge::testing::remove_holder(&rt, instance).await;
    // The "new release": the same binary under another image id.
    let upgraded = "tiny-forge-holder:t-upgrade";
    let built = Command::new("bash")
        .args([
            "-c",
            &format!(
                "printf 'FROM {}\\nLABEL tinyforge.dev/test-upgrade=1\\n' | DOCKER_BUILDKIT=0 docker build -q -t {upgraded} -",
                tiny_forge::adapters::holder::DEFAULT_IMAGE
            ),
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(built.success(), "docker build of the upgrade image");
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let engine = |image: &str| {
        let holder = DockerHolder::new(
            rt.docker().clone(),
            instance,
            HolderConfig {
                image: image.into(),
                control,
            },
        )
        .unwrap();
        let mut r = reconciler(rt.clone());
        r.instance = instance.into();
        r.holder = Some(Arc::new(holder));
        r
    };
    let before = engine(tiny_forge::adapters::holder::DEFAULT_IMAGE);
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut stage = pinned("1.0.0");
    stage.host_port = Some(port);
    stage.host_ip = Some("127.0.0.1".into());
    let mut f = Fixture::new("t-holder-upgrade", stage);
    f.cleanup(&rt).await;
    let out = f.reconcile(&before).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );
    let (old, _) = holder_container(&rt, instance).await.unwrap();

    let clients = Clients::start(listen);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A controller configured with the new image: its first look at the holder upgrades it.
    let after = engine(upgraded);
    let out = f.reconcile(&after).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (new, _) = holder_container(&rt, instance).await.unwrap();
    assert_ne!(new, old, "the holder was replaced");
    for (kind, seen) in clients.finish().await {
        assert!(
            seen.failures.is_empty(),
            "{kind}: {} failed: {:?}",
            seen.failures.len(),
            seen.failures
        );
        assert_eq!(seen.versions(), [v("1.0.0")], "{kind}");
    }

    f.cleanup(&rt).await;
    tiny_forge::testing::remove_holder(&rt, instance).await;
    let _ = Command::new("docker")
        .args(["rmi", upgraded])
        .stdout(Stdio::null())
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_port_the_holder_cannot_bind_fails_only_its_own_stage() {
    let Some(rt) = docker().await else { return };
    let instance = "t-holder-taken";
    tiny_forge::testing::remove_holder(&rt, instance).await;
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = HolderConfig {
        control,
        ..Default::default()
    };
    let controller = |config: HolderConfig| {
        let mut r = reconciler(rt.clone());
        r.instance = instance.into();
        r.holder = Some(Arc::new(
            DockerHolder::new(rt.docker().clone(), instance, config).unwrap(),
        ));
        r
    };
    let r = controller(config.clone());
    let held = |port: u16| {
        let mut stage = pinned("1.0.0");
        stage.host_port = Some(port);
        stage.host_ip = Some("127.0.0.1".into());
        stage
    };
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = Fixture::new("t-holder-taken-a", held(port_a));
    let mut b = Fixture::new("t-holder-taken-b", held(port_b));
    a.cleanup(&rt).await;
    b.cleanup(&rt).await;
    for f in [&mut a, &mut b] {
        let out = f.reconcile(&r).await;
        assert_eq!(
            out.status.phase,
            Some(Phase::Healthy),
            "{:?}",
            out.status.message
        );
    }

    // While the holder is stopped another process takes B's port; the holder comes back with
    // A's port bound and B's not.
    let (id, _) = holder_container(&rt, instance)
        .await
        .expect("a holder runs");
    rt.docker()
        .stop_container(&id, None::<bollard::query_parameters::StopContainerOptions>)
        .await
        .unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port_b)).unwrap();
    rt.docker()
        .start_container(
            &id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .unwrap();

    // A controller that starts now (nothing cached) serves A and says what is wrong with B.
    let r = controller(config);
    let out = a.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );
    let out = b.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Degraded),
        "{:?}",
        out.status.message
    );
    let ready = tiny_forge::engine::conditions::ready(&out.status.conditions).unwrap();
    assert_eq!(ready.reason, "PortTaken", "{:?}", out.status.message);
    let body = get(&format!("http://127.0.0.1:{port_a}/")).await;
    assert!(body.is_ok(), "{body:?}");

    drop(squatter);
    a.cleanup(&rt).await;
    b.cleanup(&rt).await;
    tiny_forge::testing::remove_holder(&rt, instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_holder_image_a_held_stage_publishes_its_port_directly_and_says_so() {
    let Some(rt) = docker().await else { return };
    let instance = "t-holder-absent";
    tiny_forge::testing::remove_holder(&rt, instance).await;
    let mut r = reconciler(rt.clone());
    r.instance = instance.into();
    r.holder = Some(Arc::new(
        DockerHolder::new(
            rt.docker().clone(),
            instance,
            HolderConfig {
                image: "tiny-forge-holder:no-such-tag".into(),
                control: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            },
        )
        .unwrap(),
    ));
    let port = free_port();
    let mut stage = pinned("1.0.0");
    stage.host_port = Some(port);
    stage.host_ip = Some("127.0.0.1".into());
    let mut f = Fixture::new("t-holder-absent", stage);
    f.cleanup(&rt).await;
    let out = f.reconcile(&r).await;
    let message = out.status.message.clone().unwrap_or_default();
    assert_eq!(out.status.phase, Some(Phase::Healthy), "{message}");
    assert!(
        message.contains("port holder unavailable: image tiny-forge-holder:no-such-tag")
            && message.contains("rolls of this Stage have a gap"),
        "{message}"
    );
    assert!(out.status.port.is_none());
    let body = get(&format!("http://127.0.0.1:{port}/")).await;
    assert!(body.is_ok(), "{body:?}");
    assert!(holder_container(&rt, instance).await.is_none());
    f.cleanup(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn turning_the_holder_off_releases_its_ports_for_direct_publishing() {
    let Some(rt) = docker().await else { return };
    let instance = "t-holder-off";
    tiny_forge::testing::remove_holder(&rt, instance).await;
    let config = HolderConfig {
        control: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        ..Default::default()
    };
    let holder =
        Arc::new(DockerHolder::new(rt.docker().clone(), instance, config.clone()).unwrap());
    let mut r = reconciler(rt.clone());
    r.instance = instance.into();
    r.holder = Some(holder);
    let port = free_port();
    let mut stage = pinned("1.0.0");
    stage.host_port = Some(port);
    stage.host_ip = Some("127.0.0.1".into());
    let mut f = Fixture::new("t-holder-off", stage);
    f.cleanup(&rt).await;
    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );
    assert!(out.status.port.is_some());

    // `--port-holder=false` at the next start: a fresh adapter releases what the old run held.
    let released = DockerHolder::new(rt.docker().clone(), instance, config)
        .unwrap()
        .release()
        .await
        .unwrap();
    assert_eq!(released, 1);
    assert!(holder_container(&rt, instance).await.is_none());
    let mut r = reconciler(rt.clone());
    r.instance = instance.into();
    f.edit(|s| s.pinned_tag = Some("1.1.0".into()));
    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );
    let body = get(&format!("http://127.0.0.1:{port}/")).await;
    assert!(body.is_ok(), "{body:?}");
    f.cleanup(&rt).await;
    tiny_forge::testing::remove_holder(&rt, instance).await;
}
