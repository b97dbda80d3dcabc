//! The port holder, side by side in one run:
//!
//! 1. **Proxy cost.** wrk on loopback against the same origin (nginx answering `200 ok` from
//!    memory) directly, through the holder (`tiny-forge-holder`, the static release binary of
//!    `scripts/holder-image.sh`, as its own process) and through nginx as a reverse proxy (the
//!    anchor: upstream keep-alive, `X-Forwarded-For`), with keep-alive connections and with a
//!    new connection per request. Rounds rotate the order; the median round is reported.
//! 2. **Memory.** The holder's and the nginx proxy's resident memory (VmRSS, all processes) with
//!    one route, idle, before and after the load.
//! 3. **Failed requests per roll** on the real Docker engine: a Stage with a fixed `hostPort`
//!    rolled 1.0.0 ⇄ 1.1.0 by `Reconciler::reconcile`, with the holder and without it (the
//!    container publishes the port and hands it over), while a client sends `GET /` over a new
//!    connection every 2 ms (100 ms timeout); and rolls to `1.2.0-broken`, counting answers from
//!    the broken tag.
//!
//! Written between `<!-- holder:start -->` and `<!-- holder:end -->` of `docs/BENCHMARKS.md`.
//! `BENCH_ROUNDS` (default 3) wrk rounds of `BENCH_WRK_SECONDS` (default 5) each; `BENCH_ROLLS`
//! (default 4) rolls per mode. Needs wrk, nginx, the holder binary and a Docker engine with the
//! demo and holder images: `make bench`.

#[allow(dead_code)] // the helpers of other benches
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tiny_forge::adapters::docker::DockerRuntime;
use tiny_forge::adapters::holder::{DockerHolder, HolderConfig};
use tiny_forge::api::{
    ContainerSettings, HealthCheck, HealthCheckType, Outcome, Phase, ProjectSpec, StageSpec,
    StageStatus,
};
use tiny_forge::engine::{Runtime, StageInput, StageKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{Machine, doc_path, median, write_section};

const START: &str = "<!-- holder:start -->";
const END: &str = "<!-- holder:end -->";
const HOLDER_BIN: &str = "target/x86_64-unknown-linux-gnu/release/tiny-forge-holder";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An nginx of its own (prefix `dir`), stopped when dropped.
struct Nginx(Child);

impl Nginx {
    fn start(dir: &Path, http: &str) -> Nginx {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let conf = format!(
            "worker_processes auto;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp;\n{http}\n}}\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx (apt-get install nginx)");
        Nginx(child)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16) {
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listens on {port}");
}

/// VmRSS of `pid` and its children (nginx's workers), KiB.
fn rss_kib(pid: u32) -> u64 {
    let read = |p: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let children: u64 = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .map(read)
        .sum();
    read(pid) + children
}

#[derive(Clone, Copy, Debug, Default)]
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn parse_ms(v: &str) -> f64 {
    let v = v.trim();
    let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        _ => f64::NAN,
    }
}

fn wrk(port: u16, seconds: u64, close: bool) -> Wrk {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c32", &format!("-d{seconds}s"), "--latency"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = Wrk::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(f64::NAN);
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50_ms = parse_ms(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_ms = parse_ms(v);
        } else if t.starts_with("Non-2xx") || t.starts_with("Socket errors") {
            r.errors += t
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    r
}

fn put_route(control: u16, token: &str, listen: u16, upstream: u16) {
    let body = format!(
        r#"{{"listen":"127.0.0.1:{listen}","upstream":"127.0.0.1:{upstream}","mode":"http"}}"#
    );
    let out = Command::new("curl")
        .args(["-sf", "-X", "PUT", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args(["-H", "Content-Type: application/json", "-d", &body])
        .arg(format!("http://127.0.0.1:{control}/v1/routes/bench"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "route PUT failed: {:?}", out);
}

struct ProxyResults {
    rows: Vec<(String, Wrk, Wrk)>,
    holder_rss: (u64, u64),
    nginx_rss: (u64, u64),
}

fn proxy_cost() -> ProxyResults {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join(HOLDER_BIN);
    assert!(
        bin.exists(),
        "{} is missing: scripts/holder-image.sh builds it",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (origin, proxy, held, control) = (free_port(), free_port(), free_port(), free_port());
    let _origin = Nginx::start(
        &dir.path().join("origin"),
        &format!(
            "server {{ listen 127.0.0.1:{origin}; keepalive_requests 100000; location / {{ return 200 \"ok\\n\"; }} }}"
        ),
    );
    let nginx_proxy = Nginx::start(
        &dir.path().join("proxy"),
        &format!(
            "upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{proxy}; keepalive_requests 100000; location / {{ proxy_pass http://origin; \
             proxy_http_version 1.1; proxy_set_header Connection \"\"; \
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}"
        ),
    );
    let state = dir.path().join("holder");
    std::fs::create_dir_all(&state).unwrap();
    let token = "bench-token-0123456789abcdef";
    std::fs::write(state.join("token"), token).unwrap();
    let holder = Holder(
        Command::new(&bin)
            .arg("--state-dir")
            .arg(&state)
            .args(["--control", &format!("127.0.0.1:{control}")])
            .stderr(Stdio::null())
            .spawn()
            .expect("the holder binary"),
    );
    for p in [origin, proxy, control] {
        wait_listening(p);
    }
    put_route(control, token, held, origin);
    wait_listening(held);
    std::thread::sleep(Duration::from_secs(1));
    let idle = (rss_kib(holder.0.id()), rss_kib(nginx_proxy.0.id()));

    let seconds = env_num("BENCH_WRK_SECONDS", 5);
    let rounds = env_num("BENCH_ROUNDS", 3) as usize;
    let targets = [
        ("direct", origin),
        ("tiny-forge holder", held),
        ("nginx", proxy),
    ];
    let mut runs: Vec<Vec<(Wrk, Wrk)>> = vec![Vec::new(); targets.len()];
    // Warm-up, discarded.
    for (_, port) in targets {
        wrk(port, 1, false);
    }
    for round in 0..rounds {
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let kept = wrk(targets[i].1, seconds, false);
            let fresh = wrk(targets[i].1, seconds, true);
            eprintln!(
                "round {round} {}: keep-alive {:.0} req/s p50 {:.3} ms; new connections {:.0} req/s p50 {:.3} ms",
                targets[i].0, kept.rps, kept.p50_ms, fresh.rps, fresh.p50_ms
            );
            runs[i].push((kept, fresh));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = (rss_kib(holder.0.id()), rss_kib(nginx_proxy.0.id()));
    // The round whose keep-alive throughput is the median stands for the target.
    let pick = |v: &[(Wrk, Wrk)]| -> (Wrk, Wrk) {
        let m = median(&v.iter().map(|r| r.0.rps).collect::<Vec<_>>());
        let kept = *v
            .iter()
            .min_by(|a, b| (a.0.rps - m).abs().total_cmp(&(b.0.rps - m).abs()))
            .unwrap();
        let mf = median(&v.iter().map(|r| r.1.rps).collect::<Vec<_>>());
        let fresh = *v
            .iter()
            .min_by(|a, b| (a.1.rps - mf).abs().total_cmp(&(b.1.rps - mf).abs()))
            .unwrap();
        (kept.0, fresh.1)
    };
    ProxyResults {
        rows: targets
            .iter()
            .zip(&runs)
            .map(|((name, _), v)| {
                let (k, f) = pick(v);
                (name.to_string(), k, f)
            })
            .collect(),
        holder_rss: (idle.0, after.0),
        nginx_rss: (idle.1, after.1),
    }
}

// --- failed requests per roll, on Docker ---------------------------------------------------

fn project() -> ProjectSpec {
    ProjectSpec {
        image: "tiny-forge-demo".into(),
        container: ContainerSettings {
            port: Some(8080),
            stop_timeout_seconds: Some(2),
            ..Default::default()
        },
        health_check: Some(HealthCheck {
            kind: Some(HealthCheckType::Http),
            path: Some("/healthz".into()),
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

#[derive(Default, Debug)]
struct RollSeen {
    ok: u64,
    failed: u64,
    broken_answers: u64,
}

async fn client(addr: SocketAddr, stop: Arc<AtomicBool>) -> RollSeen {
    let mut seen = RollSeen::default();
    while !stop.load(Ordering::SeqCst) {
        let started = tokio::time::Instant::now();
        let attempt = async {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                .await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
        };
        match tokio::time::timeout(Duration::from_millis(100), attempt).await {
            Ok(Ok(text)) if text.starts_with("HTTP/1.1 200") => {
                seen.ok += 1;
                if text.contains("1.2.0") {
                    seen.broken_answers += 1;
                }
            }
            _ => seen.failed += 1,
        }
        tokio::time::sleep_until(started + Duration::from_millis(2)).await;
    }
    seen
}

struct Rolls {
    mode: &'static str,
    failed: Vec<u64>,
    requests: u64,
    broken_failed: u64,
    broken_answers: u64,
}

async fn rolls(rt: &DockerRuntime, held: bool, n: usize) -> Rolls {
    let instance = if held { "bench-held" } else { "bench-direct" };
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut engine = common::engine(rt.clone());
    engine.instance = instance.into();
    if held {
        engine.holder = Some(Arc::new(
            DockerHolder::new(
                rt.docker().clone(),
                instance,
                HolderConfig {
                    control,
                    ..Default::default()
                },
            )
            .unwrap(),
        ));
    }
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let key = StageKey {
        namespace: instance.into(),
        project: "demo".into(),
        stage: "web".into(),
    };
    let project = project();
    let mut stage = StageSpec {
        project_ref: "demo".into(),
        pinned_tag: Some("1.0.0".into()),
        host_port: Some(port),
        host_ip: Some("127.0.0.1".into()),
        ..Default::default()
    };
    let mut status = StageStatus::default();
    let mut generation = 1;
    let reconcile = async |stage: &StageSpec, status: &mut StageStatus, generation: i64| {
        let observed = rt
            .list_managed(&[
                (tiny_forge::api::labels::NAMESPACE, instance),
                (tiny_forge::api::labels::INSTANCE, instance),
            ])
            .await
            .unwrap();
        let input = StageInput {
            key: key.clone(),
            generation,
            stage,
            project: Some(&project),
        };
        let out = engine.reconcile(&input, &observed, status.clone()).await;
        *status = out.status;
    };
    reconcile(&stage, &mut status, generation).await;
    assert_eq!(status.phase, Some(Phase::Healthy), "{:?}", status.message);
    let mut failed = Vec::new();
    let mut requests = 0;
    for i in 0..n {
        let tag = if i % 2 == 0 { "1.1.0" } else { "1.0.0" };
        let stop = Arc::new(AtomicBool::new(false));
        let c = tokio::spawn(client(addr, stop.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stage.pinned_tag = Some(tag.into());
        generation += 1;
        reconcile(&stage, &mut status, generation).await;
        assert_eq!(status.phase, Some(Phase::Healthy), "{:?}", status.message);
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let seen = c.await.unwrap();
        failed.push(seen.failed);
        requests += seen.ok + seen.failed;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let c = tokio::spawn(client(addr, stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stage.pinned_tag = Some("1.2.0-broken".into());
    generation += 1;
    reconcile(&stage, &mut status, generation).await;
    assert_eq!(
        status.history[0].outcome,
        Outcome::RolledBack,
        "{:?}",
        status.message
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let broken = c.await.unwrap();
    for c in rt
        .list_managed(&[(tiny_forge::api::labels::INSTANCE, instance)])
        .await
        .unwrap()
    {
        let _ = rt.remove(&c.id).await;
    }
    tiny_forge::testing::remove_holder(rt, instance).await;
    Rolls {
        mode: if held {
            "with the holder"
        } else {
            "without (container publishes the port)"
        },
        failed,
        requests,
        broken_failed: broken.failed,
        broken_answers: broken.broken_answers,
    }
}

fn render(p: &ProxyResults, r: &[Rolls], machine: &str) -> String {
    let direct = &p.rows[0];
    let mut s = String::new();
    s.push_str(&format!(
        "Run by `cargo bench --bench holder` on {machine}. wrk `-t2 -c32`, {}s per run, {} rounds \
         (order rotated), the median round per target; the origin is nginx answering `200 ok` \
         from memory.\n\n",
        env_num("BENCH_WRK_SECONDS", 5),
        env_num("BENCH_ROUNDS", 3)
    ));
    s.push_str("| target | keep-alive req/s | vs direct | p50 | p99 | new connection per request: req/s | vs direct | p50 | p99 |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (name, k, f) in &p.rows {
        s.push_str(&format!(
            "| {name} | {:.0} | {:.0} % | {:.3} ms | {:.3} ms | {:.0} | {:.0} % | {:.3} ms | {:.3} ms |\n",
            k.rps,
            100.0 * k.rps / direct.1.rps,
            k.p50_ms,
            k.p99_ms,
            f.rps,
            100.0 * f.rps / direct.2.rps,
            f.p50_ms,
            f.p99_ms
        ));
    }
    let errors: u64 = p.rows.iter().map(|(_, k, f)| k.errors + f.errors).sum();
    s.push_str(&format!(
        "\nwrk errors (socket errors and non-2xx) over all reported runs: {errors}.\n\n"
    ));
    s.push_str(&format!(
        "Resident memory (VmRSS, with one route): holder {:.1} MiB idle, {:.1} MiB after the load; \
         nginx proxy (master and workers) {:.1} MiB idle, {:.1} MiB after.\n\n",
        p.holder_rss.0 as f64 / 1024.0,
        p.holder_rss.1 as f64 / 1024.0,
        p.nginx_rss.0 as f64 / 1024.0,
        p.nginx_rss.1 as f64 / 1024.0
    ));
    s.push_str("| fixed host port | failed requests per roll (1.0.0 ⇄ 1.1.0) | requests sent | roll to 1.2.0-broken: failed | answers from 1.2.0-broken |\n");
    s.push_str("| --- | --- | ---: | ---: | ---: |\n");
    for r in r {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.mode,
            r.failed
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            r.requests,
            r.broken_failed,
            r.broken_answers
        ));
    }
    s
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let proxy = proxy_cost();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (results, machine) = rt.block_on(async {
        let docker = DockerRuntime::connect(None)
            .await
            .expect("Docker at DOCKER_HOST (make bench)");
        let m = Machine::describe(docker.docker()).await;
        let n = env_num("BENCH_ROLLS", 4) as usize;
        let held = rolls(&docker, true, n).await;
        let direct = rolls(&docker, false, n).await;
        (
            vec![held, direct],
            format!(
                "{} ({} CPUs, {} RAM), Docker {} ({})",
                m.cpu, m.nproc, m.memory, m.docker, m.storage
            ),
        )
    });
    let section = render(&proxy, &results, &machine);
    println!("{section}");
    write_section(&doc_path(), START, END, &section);
}
