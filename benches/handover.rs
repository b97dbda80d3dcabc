//! The unavailability gap of a fixed-host-port handover as a client sees it: tiny-forge next to
//! the raw Docker floor, in the same run.
//!
//! A fixed host port can be bound by one container only, so rolling a Stage with `hostPort` stops
//! the old container before the new one starts. During each roll a client sends `GET /` to
//! `127.0.0.1:<port>` over a fresh TCP connection every 2 ms (100 ms timeout) and records every
//! attempt; the gap runs from the last answer before the first failed request to the first answer
//! of the new version.
//!
//! * raw: bollard directly, the least a handover costs: container A (old version) publishes the
//!   port; measured: `stop` A (the Stage's stop timeout), create and start B (new version) with
//!   the same binding, until the client gets B's answer; then A is removed and B is the next A.
//! * tiny-forge: a Stage on its own port, rolled by changing `pinnedTag` and calling
//!   `Reconciler::reconcile` with the Stage's observed containers and its previous status. The
//!   engine's own gap (stop → healthy, from `status.history[0].message`) is recorded too.
//!
//! Rolls alternate 1.0.0 → 1.1.0 → 1.0.0 …, one raw and one tiny-forge roll per pair, their order
//! alternating from pair to pair; one warm-up pair is discarded, then `BENCH_RUNS` pairs (default
//! 9) are measured. The table is printed and written between the `<!-- handover:start -->` /
//! `<!-- handover:end -->` markers of `docs/BENCHMARKS.md`.
//!
//! Needs a Docker engine at `DOCKER_HOST` with the demo images: `make bench`. With
//! `HANDOVER_TRACE=1` each roll's requests are printed too, as runs of equal answers by send time.

mod common;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{CreateContainerOptionsBuilder, StopContainerOptionsBuilder};
use tiny_forge::api::{
    ContainerSettings, HealthCheck, HealthCheckType, Phase, ProjectSpec, StageSpec, StageStatus,
    labels,
};
use tiny_forge::engine::{Pull, Runtime, StageInput, StageKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until, timeout};

use common::{
    BENCH_LABEL, Engine, Machine, cleanup_stage, median, min_max, ms, p90, remove, remove_leftovers,
};

const REPO: &str = "tiny-forge-demo";
/// The two versions the rolls alternate between; both start on `OLD`.
const OLD: &str = "1.0.0";
const NEW: &str = "1.1.0";
const PORT: u16 = 8080;
const HEALTH_PATH: &str = "/healthz";
/// The Stage's `stopTimeoutSeconds`; the raw `stop` uses the same.
const STOP_TIMEOUT: u32 = 2;
/// The client's cadence: a new request this long after the previous one started.
const CLIENT_EVERY: Duration = Duration::from_millis(2);
/// One request (connect, send, read the answer) gives up after this long.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(100);
/// The client goes on sending this long after the first answer of the new version.
const CLIENT_TAIL: Duration = Duration::from_millis(50);
/// Give up on a roll whose new version never answers.
const ROLL_DEADLINE: Duration = Duration::from_secs(60);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
/// Every container of this bench carries `BENCH_LABEL` with this value.
const BENCH_LABEL_VALUE: &str = "handover";
const NAMESPACE: &str = "bench";
const PROJECT: &str = "bench-handover";
const START: &str = "<!-- handover:start -->";
const END: &str = "<!-- handover:end -->";

#[tokio::main]
async fn main() {
    let runs = common::runs_from_env();
    let (docker, endpoint) = common::connect().await;
    let runtime = tiny_forge::adapters::docker::DockerRuntime::connect(None)
        .await
        .expect("tiny-forge connects to DOCKER_HOST");
    for tag in [OLD, NEW] {
        runtime
            .ensure_image(&format!("{REPO}:{tag}"), Pull::Never)
            .await
            .unwrap_or_else(|e| panic!("{e}; build the demo images: scripts/demo-images.sh"));
    }
    let machine = Machine::describe(&docker).await;
    // Other work on the machine shows in the spread: say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    remove_leftovers(&docker, BENCH_LABEL_VALUE).await;
    let engine = common::engine(runtime);
    let (raw_port, tf_port) = free_ports();
    let run_id = std::process::id();

    eprintln!(
        "handover bench: {REPO}:{OLD} ⇄ {REPO}:{NEW} on {endpoint} (Docker {}), raw on \
         127.0.0.1:{raw_port}, tiny-forge on 127.0.0.1:{tf_port}; 1 warm-up pair + {runs} pairs",
        machine.docker
    );

    // tiny-forge: the Stage's first deploy (no handover: nothing runs yet).
    let project = project();
    let mut tf = TfStage {
        key: StageKey {
            namespace: NAMESPACE.into(),
            project: PROJECT.into(),
            stage: format!("handover-{run_id}"),
        },
        spec: StageSpec {
            project_ref: PROJECT.into(),
            pinned_tag: Some(OLD.into()),
            host_port: Some(tf_port),
            host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
            ..Default::default()
        },
        generation: 1,
        status: StageStatus::default(),
        port: tf_port,
    };
    let observed = tf.observe(&engine).await;
    let first = engine
        .reconcile(&tf.input(&project), &observed, StageStatus::default())
        .await
        .status;
    if first.phase != Some(Phase::Healthy) {
        cleanup_stage(&engine, &tf.key.stage).await;
        panic!(
            "the first tiny-forge deploy ended {:?}: {}",
            first.phase,
            first.message.as_deref().unwrap_or("(no message)")
        );
    }
    tf.status = first;
    wait_for(tf_port, OLD).await;

    // raw: container A.
    let mut raw_id = raw_container(
        &docker,
        &format!("tf-bench-handover-{run_id}-a"),
        OLD,
        raw_port,
    )
    .await;
    docker
        .start_container(&raw_id, None)
        .await
        .unwrap_or_else(|e| panic!("raw start: {e}"));
    wait_for(raw_port, OLD).await;

    let mut raw = Vec::with_capacity(runs);
    let mut tiny = Vec::with_capacity(runs);
    for i in 0..=runs {
        let (from, to) = if i % 2 == 0 { (OLD, NEW) } else { (NEW, OLD) };
        let raw_name = format!("tf-bench-handover-{run_id}-{i}");
        // Neither kind always runs right after the other: raw first in even pairs (and the
        // warm-up), tiny-forge first in odd ones.
        let (r, t) = if i % 2 == 0 {
            let r = raw_roll(&docker, raw_port, &raw_id, &raw_name, from, to).await;
            (r, tf_roll(&engine, &project, &mut tf, from, to).await)
        } else {
            let t = tf_roll(&engine, &project, &mut tf, from, to).await;
            (
                raw_roll(&docker, raw_port, &raw_id, &raw_name, from, to).await,
                t,
            )
        };
        raw_id = r.id.clone();
        let label = if i == 0 {
            "warm-up".to_string()
        } else {
            format!("{i}/{runs}")
        };
        let order = if i % 2 == 0 { "raw" } else { "tf" };
        eprintln!(
            "  {label:>7} ({order:>3} first) {from} → {to}: raw gap {:6.1} ms (failed {:?}; \
             stop {:5.1}, create {:5.1}, start {:6.1}, answer {:+6.1})   tiny-forge gap {:6.1} ms \
             (failed {:?}; reported {:.1} s; reconcile {:6.1} ms)",
            ms(r.gap.gap),
            r.gap.failed.counts(),
            ms(r.stop),
            ms(r.create),
            ms(r.start),
            r.to_answer,
            ms(t.gap.gap),
            t.gap.failed.counts(),
            t.reported,
            ms(t.reconcile),
        );
        for (kind, gap) in [("raw", &r.gap), ("tiny-forge", &t.gap)] {
            if gap.stale > 0 {
                eprintln!(
                    "          {kind}: {} answers of {from} after the first of {to}",
                    gap.stale
                );
            }
        }
        if i > 0 {
            raw.push(r);
            tiny.push(t);
        }
    }

    remove(&docker, &raw_id).await;
    cleanup_stage(&engine, &tf.key.stage).await;

    let report = Report::new(&raw, &tiny);
    let table = report.table();
    println!("\n{table}");
    let section = report.section(runs, &machine, &load, &table);
    let path = common::doc_path();
    common::write_section(&path, START, END, &section);
    eprintln!("wrote {}", path.display());
}

/// The Project: the probe settings of `examples/standalone/project.yaml`, a 2 s stop timeout.
fn project() -> ProjectSpec {
    ProjectSpec {
        image: REPO.into(),
        container: ContainerSettings {
            port: Some(PORT),
            labels: [(BENCH_LABEL.to_string(), BENCH_LABEL_VALUE.to_string())].into(),
            stop_timeout_seconds: Some(STOP_TIMEOUT),
            ..Default::default()
        },
        health_check: Some(HealthCheck {
            kind: Some(HealthCheckType::Http),
            path: Some(HEALTH_PATH.into()),
            expected_status: Some(200),
            interval_seconds: Some(1),
            timeout_seconds: Some(1),
            retries: Some(3),
            start_period_seconds: Some(3),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Two distinct free ports on 127.0.0.1 (held together while both are picked).
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().expect("a bound address").port();
    (port(&a), port(&b))
}

// ---------------------------------------------------------------------------------------------
// The client

/// What one `GET /` got.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    /// 200 with the body `tiny-forge-demo <version>`.
    Version(String),
    /// Nothing listens on the port.
    Refused,
    /// Accepted, then closed or reset without an answer: a docker-proxy with no app behind it
    /// (yet, or any more), or an app that is exiting.
    Dropped,
    /// No answer within `CLIENT_TIMEOUT`.
    Timeout,
    /// Anything else (another status, another body, another error).
    Other,
}

struct Attempt {
    /// When the request was sent, and when its answer (or failure) came, since the origin.
    start: Duration,
    end: Duration,
    answer: Answer,
}

/// One `GET /` over a fresh connection.
async fn get_root(addr: SocketAddr) -> Answer {
    let attempt = async {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Answer::Refused,
            Err(_) => return Answer::Other,
        };
        let _ = stream.set_nodelay(true);
        if stream.write_all(REQUEST).await.is_err() {
            return Answer::Dropped;
        }
        // `Connection: close`: the server closes first, so no TIME_WAIT piles up on our side.
        let mut buf = Vec::with_capacity(256);
        match stream.read_to_end(&mut buf).await {
            _ if buf.is_empty() => Answer::Dropped,
            Err(_) => Answer::Other,
            Ok(_) => parse_answer(&buf),
        }
    };
    timeout(CLIENT_TIMEOUT, attempt)
        .await
        .unwrap_or(Answer::Timeout)
}

fn parse_answer(buf: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Answer::Other;
    };
    if head.split_ascii_whitespace().nth(1) != Some("200") {
        return Answer::Other;
    }
    match body.trim().strip_prefix("tiny-forge-demo ") {
        Some(version) => Answer::Version(version.to_string()),
        None => Answer::Other,
    }
}

/// Polls until `port` answers with `version` (set-up, not measured).
async fn wait_for(port: u16, version: &str) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let started = Instant::now();
    loop {
        match get_root(addr).await {
            Answer::Version(v) if v == version => return,
            answer => assert!(
                started.elapsed() < ROLL_DEADLINE,
                "127.0.0.1:{port} did not answer {version} within {ROLL_DEADLINE:?} (last: {answer:?})"
            ),
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// The client of one roll, on its own task: a new request every `CLIENT_EVERY` whether or not
/// the previous one has its answer yet, so a request that hangs until its timeout does not
/// delay the next ones.
struct Client {
    origin: Instant,
    ready: Option<oneshot::Receiver<()>>,
    first_new: Option<oneshot::Receiver<Instant>>,
    task: JoinHandle<Vec<Attempt>>,
}

impl Client {
    /// Starts sending `GET /` to `127.0.0.1:port`; the roll goes from version `from` to `to`.
    fn spawn(port: u16, from: &str, to: &str) -> Client {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (new_tx, new_rx) = oneshot::channel();
        let origin = Instant::now();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (from, to) = (from.to_string(), to.to_string());
        let task = tokio::spawn(async move {
            let (mut ready_tx, mut new_tx) = (Some(ready_tx), Some(new_tx));
            let mut in_flight = JoinSet::new();
            let mut attempts = Vec::with_capacity(1024);
            let mut next = origin;
            // Sending stops CLIENT_TAIL after the first answer of the new version (or at the
            // deadline); what is in flight then is still collected.
            let mut stop_at = origin + ROLL_DEADLINE;
            loop {
                tokio::select! {
                    biased;
                    Some(done) = in_flight.join_next() => {
                        let attempt: Attempt = done.expect("a client request task");
                        match &attempt.answer {
                            Answer::Version(v) if *v == from => {
                                if let Some(tx) = ready_tx.take() {
                                    let _ = tx.send(());
                                }
                            }
                            Answer::Version(v) if *v == to => {
                                if let Some(tx) = new_tx.take() {
                                    let end = origin + attempt.end;
                                    let _ = tx.send(end);
                                    stop_at = stop_at.min(end + CLIENT_TAIL);
                                }
                            }
                            _ => {}
                        }
                        attempts.push(attempt);
                    }
                    () = sleep_until(next), if next < stop_at => {
                        in_flight.spawn(async move {
                            let start = Instant::now();
                            let answer = get_root(addr).await;
                            Attempt {
                                start: start - origin,
                                end: Instant::now() - origin,
                                answer,
                            }
                        });
                        next = (next + CLIENT_EVERY).max(Instant::now());
                    }
                    else => break,
                }
            }
            attempts.sort_by_key(|a| a.start);
            attempts
        });
        Client {
            origin,
            ready: Some(ready_rx),
            first_new: Some(new_rx),
            task,
        }
    }

    /// Waits until the old version has answered once.
    async fn ready(&mut self, port: u16) {
        let rx = self.ready.take().expect("ready() once");
        timeout(ROLL_DEADLINE, rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("127.0.0.1:{port} never answered before the roll"));
    }

    /// When the client got the first answer of the new version.
    async fn first_new(&mut self, port: u16) -> Instant {
        let rx = self.first_new.take().expect("first_new() once");
        let deadline = (self.origin + ROLL_DEADLINE).saturating_duration_since(Instant::now());
        timeout(deadline + Duration::from_secs(1), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("127.0.0.1:{port}: the new version never answered"))
    }

    /// Every request, in the order they were sent, once the client has stopped.
    async fn finish(self) -> Vec<Attempt> {
        self.task.await.expect("the client task")
    }
}

/// The gap one roll caused, as the client saw it, and its failed requests by kind.
struct Gap {
    /// Last answer before the first failed request → first answer of the new version.
    gap: Duration,
    /// Failed requests, by kind and in the order they come in a handover.
    failed: Failures,
    /// Answers of the old version after the first answer of the new one (should be none).
    stale: usize,
}

/// Failed requests of one roll. The client sends one every `CLIENT_EVERY`, so a count times
/// `CLIENT_EVERY` is roughly how long that phase lasted.
#[derive(Clone, Copy, Default)]
struct Failures {
    /// Accepted and closed without an answer before the port was released: the old app has
    /// exited, its docker-proxy still listens.
    old_dropped: usize,
    /// Connection refused: no docker-proxy on the port.
    refused: usize,
    /// No answer within `CLIENT_TIMEOUT`: accepted by the new docker-proxy, which cannot reach
    /// the container yet.
    timeouts: usize,
    /// Accepted and closed without an answer after that: the new app does not listen yet.
    new_dropped: usize,
    other: usize,
}

impl Failures {
    const KINDS: [&str; 5] = [
        "closed without an answer, old app gone (its docker-proxy still listens)",
        "connection refused (no docker-proxy on the port)",
        "timed out (the new docker-proxy listens, the container is not reachable yet)",
        "closed without an answer, new app not listening yet",
        "other",
    ];

    fn counts(&self) -> [usize; 5] {
        [
            self.old_dropped,
            self.refused,
            self.timeouts,
            self.new_dropped,
            self.other,
        ]
    }

    fn total(&self) -> usize {
        self.counts().iter().sum()
    }
}

impl Gap {
    /// `attempts` in the order they were sent.
    fn of(attempts: &[Attempt], port: u16, to: &str) -> Gap {
        let is_new = |a: &&Attempt| matches!(&a.answer, Answer::Version(v) if v == to);
        let answered = |a: &&Attempt| matches!(a.answer, Answer::Version(_));
        let first_new = attempts
            .iter()
            .filter(is_new)
            .map(|a| a.end)
            .min()
            .unwrap_or_else(|| panic!("127.0.0.1:{port}: {to} never answered"));
        // The last answer among the requests sent before the first one that failed.
        let first_failure = attempts
            .iter()
            .find(|a| !answered(a))
            .map_or(Duration::MAX, |a| a.start);
        let last_answer = attempts
            .iter()
            .filter(|a| answered(a) && !is_new(a) && a.start < first_failure && a.end < first_new)
            .map(|a| a.end)
            .max()
            .unwrap_or_else(|| panic!("127.0.0.1:{port}: no answer before the handover"));
        if std::env::var_os("HANDOVER_TRACE").is_some() {
            // Runs of equal answers, by send time: `start ms:answer ×count`.
            let mut line = String::new();
            let mut runs: Vec<(Duration, &Answer, usize)> = Vec::new();
            for a in attempts {
                match runs.last_mut() {
                    Some((_, answer, n)) if **answer == a.answer => *n += 1,
                    _ => runs.push((a.start, &a.answer, 1)),
                }
            }
            for (start, answer, n) in runs {
                line.push_str(&format!(" {:.0}:{answer:?}×{n}", ms(start)));
            }
            eprintln!(
                "    trace (last answer {:.1}, first new {:.1}):{line}",
                ms(last_answer),
                ms(first_new)
            );
        }
        // Dropped before the port was released is the old side, after it the new side.
        let released = attempts
            .iter()
            .find(|a| matches!(a.answer, Answer::Refused | Answer::Timeout))
            .map_or(Duration::MAX, |a| a.start);
        let mut failed = Failures::default();
        for a in attempts {
            match a.answer {
                Answer::Version(_) => {}
                Answer::Dropped if a.start < released => failed.old_dropped += 1,
                Answer::Dropped => failed.new_dropped += 1,
                Answer::Refused => failed.refused += 1,
                Answer::Timeout => failed.timeouts += 1,
                Answer::Other => failed.other += 1,
            }
        }
        let stale = attempts
            .iter()
            .filter(|a| a.end > first_new && answered(a) && !is_new(a))
            .count();
        Gap {
            gap: first_new.saturating_sub(last_answer),
            failed,
            stale,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The raw floor

struct RawRoll {
    gap: Gap,
    /// The `stop` call, create, start.
    stop: Duration,
    create: Duration,
    start: Duration,
    /// The start call's return → the client's first answer of the new version, ms; negative
    /// when the app answered before the call returned.
    to_answer: f64,
    /// `stop` issued → the client's first answer of the new version.
    driver: Duration,
    /// The new container, the next roll's A.
    id: String,
}

/// A raw container of `tag` publishing `PORT` on `127.0.0.1:port`: what tiny-forge's gets, minus
/// its ownership labels.
async fn raw_container(docker: &Docker, name: &str, tag: &str, port: u16) -> String {
    let body = ContainerCreateBody {
        image: Some(format!("{REPO}:{tag}")),
        env: Some(Vec::new()),
        labels: Some(HashMap::from([(
            BENCH_LABEL.to_string(),
            BENCH_LABEL_VALUE.to_string(),
        )])),
        exposed_ports: Some(vec![format!("{PORT}/tcp")]),
        stop_timeout: Some(i64::from(STOP_TIMEOUT)),
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(
                format!("{PORT}/tcp"),
                Some(vec![PortBinding {
                    host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
                    host_port: Some(port.to_string()),
                }]),
            )])),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    docker
        .create_container(Some(options), body)
        .await
        .unwrap_or_else(|e| panic!("raw create {name}: {e}"))
        .id
}

/// Stop A, create and start B, until the client gets B's answer; then remove A.
async fn raw_roll(
    docker: &Docker,
    port: u16,
    old_id: &str,
    name: &str,
    from: &str,
    to: &str,
) -> RawRoll {
    let mut client = Client::spawn(port, from, to);
    client.ready(port).await;

    let issued = Instant::now();
    let options = StopContainerOptionsBuilder::default()
        .t(STOP_TIMEOUT as i32)
        .build();
    docker
        .stop_container(old_id, Some(options))
        .await
        .unwrap_or_else(|e| panic!("raw stop: {e}"));
    let stopped = Instant::now();
    let id = raw_container(docker, name, to, port).await;
    let created = Instant::now();
    docker
        .start_container(&id, None)
        .await
        .unwrap_or_else(|e| panic!("raw start {name}: {e}"));
    let started = Instant::now();
    let answered = client.first_new(port).await;

    let attempts = client.finish().await;
    remove(docker, old_id).await;
    RawRoll {
        gap: Gap::of(&attempts, port, to),
        stop: stopped - issued,
        create: created - stopped,
        start: started - created,
        to_answer: ms(answered.saturating_duration_since(started))
            - ms(started.saturating_duration_since(answered)),
        driver: answered - issued,
        id,
    }
}

// ---------------------------------------------------------------------------------------------
// tiny-forge

/// The bench Stage and what a controller keeps of it between passes.
struct TfStage {
    key: StageKey,
    spec: StageSpec,
    generation: i64,
    status: StageStatus,
    port: u16,
}

impl TfStage {
    fn input<'a>(&'a self, project: &'a ProjectSpec) -> StageInput<'a> {
        StageInput {
            key: self.key.clone(),
            generation: self.generation,
            stage: &self.spec,
            project: Some(project),
        }
    }

    /// What a controller pass observes before it reconciles.
    async fn observe(&self, engine: &Engine) -> Vec<tiny_forge::engine::ContainerInfo> {
        engine
            .runtime
            .list_managed(&[(labels::STAGE, self.key.stage.as_str())])
            .await
            .expect("list the Stage's containers")
    }
}

struct TfRoll {
    gap: Gap,
    /// tiny-forge's own gap (stop → healthy), seconds, from `status.history[0].message`.
    reported: f64,
    /// The `reconcile` call.
    reconcile: Duration,
}

/// A new pin, a new generation, one `reconcile`.
async fn tf_roll(
    engine: &Engine,
    project: &ProjectSpec,
    tf: &mut TfStage,
    from: &str,
    to: &str,
) -> TfRoll {
    tf.spec.pinned_tag = Some(to.into());
    tf.generation += 1;
    let observed = tf.observe(engine).await;
    let mut client = Client::spawn(tf.port, from, to);
    client.ready(tf.port).await;

    let started = Instant::now();
    let status = engine
        .reconcile(&tf.input(project), &observed, tf.status.clone())
        .await
        .status;
    let reconcile = started.elapsed();

    let serving = status.current.as_ref().map(|c| c.tag.as_str());
    if status.phase != Some(Phase::Healthy) || serving != Some(to) {
        cleanup_stage(engine, &tf.key.stage).await;
        panic!(
            "tiny-forge roll {from} → {to} ended {:?} serving {serving:?}: {}",
            status.phase,
            status.message.as_deref().unwrap_or("(no message)")
        );
    }
    let message = status
        .history
        .first()
        .map(|h| h.message.clone())
        .unwrap_or_default();
    let reported = reported_gap(&message)
        .unwrap_or_else(|| panic!("no handover gap in the deploy record: {message:?}"));
    let attempts = client.finish().await;
    tf.status = status;
    TfRoll {
        gap: Gap::of(&attempts, tf.port, to),
        reported,
        reconcile,
    }
}

/// `… host port N handed over with a 0.4s gap` → 0.4.
fn reported_gap(message: &str) -> Option<f64> {
    let (_, rest) = message.split_once("handed over with a ")?;
    let (seconds, _) = rest.split_once("s gap")?;
    seconds.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The report

struct Report {
    raw: Vec<f64>,
    tf: Vec<f64>,
    diff: Vec<f64>,
    /// tiny-forge's reported gap, ms.
    reported: Vec<f64>,
    /// raw: `stop` issued → first new answer, ms.
    raw_driver: Vec<f64>,
    raw_failed: Vec<Failures>,
    tf_failed: Vec<Failures>,
    raw_stop: Vec<f64>,
    raw_create: Vec<f64>,
    raw_start: Vec<f64>,
    raw_to_answer: Vec<f64>,
    reconcile: Vec<f64>,
    /// Old-version answers after the first new one, over all measured rolls (raw, tiny-forge).
    stale: (usize, usize),
}

/// Per-roll totals, as f64 for the statistics.
fn totals(failed: &[Failures]) -> Vec<f64> {
    failed.iter().map(|f| f.total() as f64).collect()
}

/// Per-roll counts of the failure kind `k` (an index into `Failures::KINDS`).
fn kind(failed: &[Failures], k: usize) -> Vec<f64> {
    failed.iter().map(|f| f.counts()[k] as f64).collect()
}

impl Report {
    fn new(raw: &[RawRoll], tf: &[TfRoll]) -> Report {
        let raw_ms: Vec<f64> = raw.iter().map(|r| ms(r.gap.gap)).collect();
        let tf_ms: Vec<f64> = tf.iter().map(|t| ms(t.gap.gap)).collect();
        Report {
            diff: tf_ms.iter().zip(&raw_ms).map(|(t, r)| t - r).collect(),
            raw: raw_ms,
            tf: tf_ms,
            reported: tf.iter().map(|t| t.reported * 1000.0).collect(),
            raw_driver: raw.iter().map(|r| ms(r.driver)).collect(),
            raw_failed: raw.iter().map(|r| r.gap.failed).collect(),
            tf_failed: tf.iter().map(|t| t.gap.failed).collect(),
            raw_stop: raw.iter().map(|r| ms(r.stop)).collect(),
            raw_create: raw.iter().map(|r| ms(r.create)).collect(),
            raw_start: raw.iter().map(|r| ms(r.start)).collect(),
            raw_to_answer: raw.iter().map(|r| r.to_answer).collect(),
            reconcile: tf.iter().map(|t| ms(t.reconcile)).collect(),
            stale: (
                raw.iter().map(|r| r.gap.stale).sum(),
                tf.iter().map(|t| t.gap.stale).sum(),
            ),
        }
    }

    fn table(&self) -> String {
        let (raw, tf) = (median(&self.raw), median(&self.tf));
        let max = |v: &[f64]| min_max(v).1;
        let row = |t: &mut String, what: &str, v: &[f64]| {
            t.push_str(&format!(
                "| {what} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
                median(v),
                p90(v),
                max(v)
            ));
        };
        let mut t = String::new();
        t.push_str(
            "| host-port handover gap, as the client sees it (last answer → first answer of the \
             new version) | median | p90 | max |\n",
        );
        t.push_str("|---|---:|---:|---:|\n");
        row(
            &mut t,
            "raw Docker floor (bollard: stop, create, start)",
            &self.raw,
        );
        row(
            &mut t,
            "tiny-forge (`Reconciler::reconcile` of a new pin)",
            &self.tf,
        );
        t.push_str(&common::comparison_rows(
            &self.diff,
            tf,
            raw,
            "pairs where tiny-forge's gap was longer",
            " | |",
        ));
        row(
            &mut t,
            "tiny-forge's own gap, its `stop` → healthy (`status.history[0]`, 0.1 s steps)",
            &self.reported,
        );
        row(
            &mut t,
            "raw: `stop` issued → first answer of the new version",
            &self.raw_driver,
        );
        for (who, failed) in [("raw", &self.raw_failed), ("tiny-forge", &self.tf_failed)] {
            let v = totals(failed);
            t.push_str(&format!(
                "| failed requests per roll, {who} | {} | {} | {} |\n",
                median(&v),
                p90(&v),
                max(&v)
            ));
        }
        t.push_str(&format!(
            "\n| failed requests per roll by kind, median (one request every {} ms: count × {} \
             ms ≈ how long it lasted) | raw | tiny-forge |\n|---|---:|---:|\n",
            CLIENT_EVERY.as_millis(),
            CLIENT_EVERY.as_millis()
        ));
        for (k, what) in Failures::KINDS.iter().enumerate() {
            t.push_str(&format!(
                "| {what} | {} | {} |\n",
                median(&kind(&self.raw_failed, k)),
                median(&kind(&self.tf_failed, k)),
            ));
        }
        t.push('\n');
        t.push_str(&format!(
            "Where the raw floor's time goes (medians): `stop` {:.1} ms, create {:.1} ms, start \
             {:.1} ms, start returned → first answer {:+.1} ms (negative: the app answered \
             before the start call returned). tiny-forge's `reconcile` call took a median of \
             {:.1} ms: it returns once its health check has passed and the old container is \
             removed.",
            median(&self.raw_stop),
            median(&self.raw_create),
            median(&self.raw_start),
            median(&self.raw_to_answer),
            median(&self.reconcile),
        ));
        t.push_str(&match self.stale {
            (0, 0) => " No old-version answer came after the first new one.\n".to_string(),
            (r, f) => format!(
                " Old-version answers after the first new one, all rolls: raw {r}, tiny-forge \
                 {f}.\n"
            ),
        });
        t
    }

    fn section(&self, runs: usize, machine: &Machine, load: &str, table: &str) -> String {
        let date = tiny_forge::engine::conditions::now();
        let (raw, tf) = (median(&self.raw), median(&self.tf));
        let diff = median(&self.diff);
        let (diff_min, diff_max) = min_max(&self.diff);
        let (stop, create, start, to_answer) = (
            median(&self.raw_stop),
            median(&self.raw_create),
            median(&self.raw_start),
            median(&self.raw_to_answer),
        );
        let reported = median(&self.reported);
        let driver = median(&self.raw_driver);
        let mut s = String::new();
        s.push_str("## Host-port handover gap over the raw Docker floor\n\n");
        s.push_str(&format!(
            "Measured {date} on {} ({} CPUs, {} RAM; 1-minute load average {load} at the \
             start), Docker Engine {} ({} storage driver); {runs} interleaved pairs of one raw \
             and one tiny-forge roll after 1 discarded warm-up pair.\n\n",
            machine.cpu, machine.nproc, machine.memory, machine.docker, machine.storage
        ));
        s.push_str(
            "Reproduce (reuses a reachable engine or starts a private one, builds the demo \
             images, runs `benches/deploy.rs`, then `benches/handover.rs`):\n\n",
        );
        s.push_str("```sh\nmake bench\n```\n\n");
        s.push_str(
            "This bench alone, with an engine already up: `export \"$(scripts/docker-up.sh)\"; \
             scripts/demo-images.sh && cargo bench --bench handover`. `BENCH_RUNS=N` sets the \
             number of measured pairs.\n\n",
        );
        s.push_str(&format!(
            "A Stage with `hostPort` publishes its container on a fixed host port, which one \
             container at a time can bind: a roll stops the old container before it starts the \
             new one, and clients see a gap. Each roll switches between `tiny-forge-demo:1.0.0` \
             and `:1.1.0` on `127.0.0.1:<free port>` while a client on another task sends `GET /` \
             over a fresh TCP connection every {} ms ({} ms timeout) and records every attempt; \
             the **gap** runs from the last answer before the first failed request to the first \
             answer of the new version. *Raw* is bollard alone, the least a handover can cost on \
             this engine: `stop` the old container (timeout {STOP_TIMEOUT} s), create and start \
             the new one with the same port binding, until the client gets its answer; the old \
             one is removed afterwards. *tiny-forge* is one `Reconciler::reconcile` of the Stage \
             with a new `pinnedTag` and generation, its observed containers and previous status \
             (health check as in `examples/standalone/project.yaml`: HTTP `/healthz`, 1 s \
             interval, 3 s start period; `stopTimeoutSeconds: {STOP_TIMEOUT}`). Both run \
             side by side on two ports; within a pair the order alternates. p90 is nearest-rank",
            CLIENT_EVERY.as_millis(),
            CLIENT_TIMEOUT.as_millis()
        ));
        s.push_str(if runs < 10 {
            ": with fewer than 10 runs it is the slowest run.\n\n"
        } else {
            ".\n\n"
        });
        s.push_str(table);
        s.push_str("\n### What the gap is\n\n");
        // How long each phase lasted, from the per-roll median counts of its failed requests.
        let phase = |k: usize| {
            let raw = median(&kind(&self.raw_failed, k)) * CLIENT_EVERY.as_secs_f64() * 1000.0;
            let tf = median(&kind(&self.tf_failed, k)) * CLIENT_EVERY.as_secs_f64() * 1000.0;
            format!("≈{raw:.0} ms raw, ≈{tf:.0} ms tiny-forge")
        };
        s.push_str(&format!(
            "The kinds of failed request mark the phases of a handover, in this order; a \
             request goes out every {} ms, so a count times {} ms is about how long its phase \
             lasted.\n\n",
            CLIENT_EVERY.as_millis(),
            CLIENT_EVERY.as_millis()
        ));
        s.push_str(&format!(
            "1. **SIGTERM stop of the old app.** Docker sends SIGTERM; the demo app handles it \
             and exits at once, far inside the {STOP_TIMEOUT} s stop timeout, yet the `stop` \
             call takes {stop:.0} ms (the daemon waits for the exit and tears the container's \
             network down). Meanwhile docker-proxy, Docker's userland proxy that serves host \
             connections to a published `127.0.0.1` port, still accepts connections and closes \
             them unanswered ({}). An app that drains its requests first, or ignores SIGTERM, \
             adds up to the stop timeout here, with tiny-forge and without.\n",
            phase(0)
        ));
        s.push_str(&format!(
            "2. **Port released; create and start of the new container.** Connections are \
             refused ({}): the end of the `stop`, the create ({create:.0} ms) and the start call \
             until the new container's docker-proxy binds the port.\n",
            phase(1)
        ));
        s.push_str(&format!(
            "3. **docker-proxy binds before the container is reachable.** Docker publishes the \
             port early in the start call ({start:.0} ms in all): the client's connect to the \
             new docker-proxy succeeds, but the request then hangs, as the proxy's own \
             connection to the container gets no answer until the container's network is up; \
             requests time out ({}). This is the longest phase.\n",
            phase(2)
        ));
        s.push_str(&format!(
            "4. **The app's start.** The container is reachable but the app does not listen \
             yet: docker-proxy closes connections unanswered ({}). The first answer of the new \
             version came {to_answer:+.1} ms from the start call's return (raw median; negative \
             is before it): the start call covers the app's start as well (the demo app is a \
             static binary in a `FROM scratch` image).\n",
            phase(3)
        ));
        s.push_str(&format!(
            "5. **tiny-forge's part.** Between its `stop` and its `start` tiny-forge makes only \
             the create call: the image inspect, the container name and spec hash and the \
             observation all come before the stop. The new container serves through \
             docker-proxy as soon as the app listens, whatever the health check does, so \
             tiny-forge's probe cadence (every 100 ms during the start period, `FAST_PROBE` in \
             `src/engine/health.rs`) does not lengthen the gap clients see. It shows in the gap \
             tiny-forge reports (median {reported:.0} ms, rounded to 0.1 s), which runs from \
             its `stop` call to a passing health check: when tiny-forge knows the handover \
             worked, not when the first client got through. As the start call returns about \
             when the app answers, the first probe after it can pass at once, and the reported \
             gap stays close to what clients see (raw: {driver:.0} ms from `stop` to the first \
             answer).\n"
        ));
        let (raw_min, raw_max) = min_max(&self.raw);
        let longer = self.diff.iter().filter(|&&d| d > 0.0).count();
        let pairs = self.diff.len();
        let verdict = if diff > 0.1 * raw {
            format!(
                "tiny-forge's gap is longer than the raw floor's: medians {tf:.0} ms and \
                 {raw:.0} ms, a median per-pair difference of {diff:+.1} ms (per-pair from \
                 {diff_min:+.1} to {diff_max:+.1} ms, longer in {longer} of {pairs} pairs)."
            )
        } else if diff >= 0.0 {
            format!(
                "the gap clients see is the raw floor's: medians {tf:.0} ms (tiny-forge) and \
                 {raw:.0} ms (raw), a median per-pair difference of {diff:+.1} ms, within the \
                 run-to-run noise (per-pair from {diff_min:+.1} to {diff_max:+.1} ms; the raw \
                 floor alone from {raw_min:.0} to {raw_max:.0} ms)."
            )
        } else {
            format!(
                "the gap clients see is the raw floor's. tiny-forge's came out shorter in this \
                 run (medians {tf:.0} ms and {raw:.0} ms, a median per-pair difference of \
                 {diff:+.1} ms, longer in only {longer} of {pairs} pairs), but it makes the same \
                 Docker calls inside the gap as the raw floor, so this is no saving of \
                 tiny-forge's: it is the noise of Docker's stop and start (per-pair from \
                 {diff_min:+.1} to {diff_max:+.1} ms; the raw floor alone from {raw_min:.0} to \
                 {raw_max:.0} ms), or a difference between the two set-ups that this bench does \
                 not isolate."
            )
        };
        s.push_str(&format!(
            "\nSo {verdict} The gap is Docker's and the app's: stopping the old container, \
             starting the new one, the app coming up; tiny-forge adds no Docker call to it and \
             cannot make it shorter. What avoids it is not publishing a fixed host port (a Stage \
             reached through the proxy by its domains gets a new container that is healthy \
             before the old one stops), or an app that stops and starts faster. Single machine, \
             shared engine: rerun (or raise `BENCH_RUNS`) before reading meaning into a few \
             milliseconds.\n"
        ));
        s
    }
}
