//! The Kubernetes controller at rest and over a resync: memory idle and with N Stages, the time a
//! full resync of N unchanged Stages takes, and the Docker calls each resync makes — all of the
//! shipped binary.
//!
//! Needs a Kubernetes API server (`KUBECONFIG`; default `~/.cache/kube-test/run/kubeconfig`,
//! see `scripts/kube-up.sh`) and a Docker engine (`DOCKER_HOST`, a `unix://` socket) with
//! `tiny-forge-demo:1.0.0`. `scripts/bench-k8s.sh` starts and stops what is missing.
//!
//! For each N (`BENCH_STAGES`, default `100,1000`), in a namespace of its own, **the shipped
//! binary** (`target/release/tiny-forge run --kubernetes`, leader election off, `--listen` on a
//! port of its own) talks to Docker through a counting proxy on a unix socket of its own (every
//! HTTP request line is recorded: `GET …/containers/json` = list, other `GET`/`HEAD` = read,
//! anything else = write).
//!
//! 1. Its RSS is read 10 s after start with 0 Stages (idle); then a Project and N Stages are
//!    created: `BENCH_RUNNING` (default 20) pin `tiny-forge-demo:1.0.0` and run a container, the
//!    rest have no tag to deploy (phase Pending, reason NoTag: they are requeued every resync
//!    like any converged Stage, and deploy nothing).
//! 2. Once every Stage has a status the binary is restarted, so that every Stage is due at once:
//!    the restart wave is a full resync of N unchanged Stages, and so is each resync period after
//!    it. Docker calls are counted per period; the RSS is read after two periods.
//! 3. Meanwhile the restarted binary's `/metrics` is polled (every 20 ms from its start through
//!    the restart wave and around each expected periodic wave, every 500 ms in between): the
//!    increase of `tiny_forge_reconciles_total{kind="Stage"}` (by outcome) gives the reconciles
//!    of each wave, the time of the first increase and of reaching the final count its first →
//!    last reconcile end (to a poll interval), and `tiny_forge_reconcile_duration_seconds`
//!    (`_sum` / `_count`, buckets) the duration of one reconcile; the increase between waves
//!    counts the reconciles outside them (a status write would trigger one). Then the namespace
//!    is deleted with the binary still running (its finalizers remove the containers).
//!
//! Prints a table and writes it between `<!-- k8s:start -->` / `<!-- k8s:end -->` in
//! `docs/BENCHMARKS.md` (`BENCH_WRITE_DOC=0`: leave the file alone).

#[allow(dead_code)] // the Reconciler helpers are for the Docker-only benches
mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::core::DeserializeGuard;
use kube::{Client, CustomResourceExt, ResourceExt};
use tiny_forge::api::{Project, Stage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const START: &str = "<!-- k8s:start -->";
const END: &str = "<!-- k8s:end -->";
const IMAGE: &str = "tiny-forge-demo";
const TAG: &str = "1.0.0";
/// A wave has ended when no reconcile finished for this long.
const QUIET: Duration = Duration::from_secs(3);

// ------------------------------------------------------------------------------------------
// The counting proxy in front of the Docker socket.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    List,
    Read,
    Write,
}

#[derive(Clone, Debug)]
struct Call {
    at: Instant,
    kind: Kind,
    /// Method and path without the API version and query, e.g. `GET /images/x/json`.
    what: String,
}

#[derive(Default)]
struct CallLog(Mutex<Vec<Call>>);

impl CallLog {
    fn record(&self, method: &str, target: &str) {
        let path = target.split('?').next().unwrap_or_default();
        // `/v1.41/containers/json` → `/containers/json`
        let path = match path.strip_prefix("/v") {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
                rest.find('/').map_or(path, |i| &rest[i..])
            }
            _ => path,
        };
        let kind = match method {
            "GET" if path == "/containers/json" => Kind::List,
            "GET" | "HEAD" => Kind::Read,
            _ => Kind::Write,
        };
        self.0.lock().unwrap().push(Call {
            at: Instant::now(),
            kind,
            what: format!("{method} {path}"),
        });
    }

    fn between(&self, from: Instant, to: Instant) -> Vec<Call> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.at >= from && c.at < to)
            .cloned()
            .collect()
    }

    fn first_list_after(&self, t: Instant) -> Option<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|c| c.at >= t && c.kind == Kind::List)
            .map(|c| c.at)
    }
}

#[derive(Clone, Copy, Default, Debug)]
struct Counts {
    list: usize,
    read: usize,
    write: usize,
}

impl Counts {
    fn of(calls: &[Call]) -> Counts {
        let n = |k| calls.iter().filter(|c| c.kind == k).count();
        Counts {
            list: n(Kind::List),
            read: n(Kind::Read),
            write: n(Kind::Write),
        }
    }
    fn cell(&self) -> String {
        format!("{} / {} / {}", self.list, self.read, self.write)
    }
}

/// What kinds of request the calls were, e.g. `GET /images/{…}/json ×20`.
fn breakdown(calls: &[Call]) -> String {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for c in calls {
        // Collapse ids and image references: `/images/<ref>/json`, `/containers/<id>/json`.
        let parts: Vec<&str> = c.what.splitn(2, ' ').collect();
        let segs: Vec<&str> = parts[1].split('/').collect();
        let norm = if segs.len() >= 4 && matches!(segs[1], "images" | "containers") {
            format!("{} /{}/{{…}}/{}", parts[0], segs[1], segs[segs.len() - 1])
        } else {
            c.what.clone()
        };
        *by.entry(norm).or_default() += 1;
    }
    if by.is_empty() {
        return "none".into();
    }
    by.iter()
        .map(|(k, n)| format!("`{k}` ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Request heads on one connection, from the client's bytes (keep-alive: many per connection).
#[derive(Default)]
struct Requests {
    pending: Vec<u8>,
    body_left: usize,
    chunked: bool,
}

impl Requests {
    fn feed(&mut self, data: &[u8], log: &CallLog) {
        self.pending.extend_from_slice(data);
        loop {
            if self.body_left > 0 {
                let k = self.body_left.min(self.pending.len());
                self.pending.drain(..k);
                self.body_left -= k;
                if self.body_left > 0 {
                    return;
                }
            }
            if self.chunked {
                let Some(eol) = find(&self.pending, b"\r\n") else {
                    return;
                };
                let line = String::from_utf8_lossy(&self.pending[..eol]).to_string();
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("0").trim(), 16)
                    .unwrap_or(0);
                self.pending.drain(..eol + 2);
                // The chunk and its CRLF; the last chunk is followed by a CRLF (no trailers).
                self.body_left = size + 2;
                self.chunked = size > 0;
                continue;
            }
            let Some(end) = find(&self.pending, b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.pending[..end]).to_string();
            self.pending.drain(..end + 4);
            let mut lines = head.lines();
            let mut first = lines.next().unwrap_or_default().split(' ');
            let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
            log.record(method, target);
            for l in lines {
                let Some((k, v)) = l.split_once(':') else {
                    continue;
                };
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    self.body_left = v.parse().unwrap_or(0);
                } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    self.chunked = true;
                }
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Listens on `listen`, forwards every connection to `upstream`, records every request.
fn start_proxy(listen: &Path, upstream: PathBuf, log: Arc<CallLog>) -> tokio::task::JoinHandle<()> {
    let _ = std::fs::remove_file(listen);
    let listener = UnixListener::bind(listen).expect("bind the counting proxy's socket");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, log) = (upstream.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(server) = UnixStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                });
                let mut requests = Requests::default();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    requests.feed(&buf[..n], &log);
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = sw.shutdown().await;
                let _ = down.await;
            });
        }
    })
}

// ------------------------------------------------------------------------------------------
// The controller binary.

struct Binary {
    child: tokio::process::Child,
    pid: u32,
    started: Instant,
    /// Its `/metrics`, polled from the start (the restarted binary only).
    scraper: Option<Scraper>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[derive(Clone)]
struct Setup {
    bin: PathBuf,
    kubeconfig: String,
    proxy_host: String,
    namespace: String,
    instance: String,
    resync: Duration,
    log_dir: PathBuf,
}

impl Binary {
    async fn start(s: &Setup, label: &str, scrape: bool) -> Binary {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(s.log_dir.join(format!("{label}.log"))).expect("log file");
        let started = Instant::now();
        let child = tokio::process::Command::new(&s.bin)
            .args(["run", "--kubernetes", "--leader-election", "false"])
            .args(["--namespace", &s.namespace])
            .args(["--controller-namespace", &s.namespace])
            .args(["--instance", &s.instance])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--resync", &format!("{}s", s.resync.as_secs())])
            .args(["--docker-host", &s.proxy_host])
            .env("KUBECONFIG", &s.kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start target/release/tiny-forge");
        let pid = child.id().expect("the controller's pid");
        let scraper =
            scrape.then(|| Scraper::start(format!("http://127.0.0.1:{port}/metrics"), started));
        // Up when /readyz answers 200 (its watches have listed).
        let url = format!("http://127.0.0.1:{port}/readyz");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the controller did not get ready within 60 s; see {}",
                s.log_dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Binary {
            child,
            pid,
            started,
            scraper,
        }
    }

    /// SIGTERM to this pid, then wait (SIGKILL after 40 s).
    async fn stop(mut self) {
        if let Some(sc) = self.scraper.take() {
            sc.task.abort();
        }
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "controller {} did not stop within 40 s; killing it",
                self.pid
            );
            let _ = self.child.kill().await;
        }
    }
}

// ------------------------------------------------------------------------------------------
// The binary's `/metrics`, scraped while it runs: the reconcile waves.

/// Scrape interval while a wave is expected, and between waves.
const FAST: Duration = Duration::from_millis(20);
const SLOW: Duration = Duration::from_millis(500);

/// The Stage reconciles `/metrics` showed at one moment (`kind="Stage"` only).
#[derive(Clone, Debug)]
struct Sample {
    /// When the answer arrived.
    at: Instant,
    /// `tiny_forge_reconciles_total` by outcome (converged, retry, waiting, error).
    outcomes: BTreeMap<String, u64>,
    /// `tiny_forge_reconcile_duration_seconds`: `_sum`, `_count`, cumulative `_bucket`s (`le`, count).
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl Sample {
    /// A fresh process: every counter at 0.
    fn zero(at: Instant) -> Sample {
        Sample {
            at,
            outcomes: BTreeMap::new(),
            sum: 0.0,
            count: 0,
            buckets: Vec::new(),
        }
    }

    /// From OpenMetrics text, e.g. `tiny_forge_reconciles_total{kind="Stage",outcome="converged"} 7`.
    fn parse(at: Instant, text: &str) -> Sample {
        let mut s = Sample::zero(at);
        for line in text.lines() {
            let Some((name, rest)) = line.split_once('{') else {
                continue;
            };
            let Some((labels, value)) = rest.split_once('}') else {
                continue;
            };
            let label = |key: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix("=\"")?.strip_suffix('"'))
            };
            if label("kind") != Some("Stage") {
                continue;
            }
            let value = value.split_whitespace().next().unwrap_or_default();
            let int = || {
                value
                    .parse::<u64>()
                    .or_else(|_| value.parse::<f64>().map(|v| v as u64))
                    .unwrap_or(0)
            };
            match name {
                "tiny_forge_reconciles_total" => {
                    if let Some(o) = label("outcome") {
                        s.outcomes.insert(o.to_string(), int());
                    }
                }
                "tiny_forge_reconcile_duration_seconds_sum" => s.sum = value.parse().unwrap_or(0.0),
                "tiny_forge_reconcile_duration_seconds_count" => s.count = int(),
                "tiny_forge_reconcile_duration_seconds_bucket" => {
                    let le = match label("le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(v) => v.parse().unwrap_or(f64::NAN),
                        None => continue,
                    };
                    s.buckets.push((le, int()));
                }
                _ => {}
            }
        }
        s
    }

    /// Stage reconciles finished so far, all outcomes.
    fn reconciles(&self) -> u64 {
        self.outcomes.values().sum()
    }

    fn bucket(&self, le: f64) -> u64 {
        self.buckets
            .iter()
            .find(|(b, _)| *b == le)
            .map_or(0, |(_, n)| *n)
    }
}

/// Polls `/metrics` from the process start on (before it listens the polls fail and are
/// skipped; its counters start at 0), every `FAST` or `SLOW`.
struct Scraper {
    samples: Arc<Mutex<Vec<Sample>>>,
    every_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Scraper {
    fn start(url: String, started: Instant) -> Scraper {
        let samples = Arc::new(Mutex::new(vec![Sample::zero(started)]));
        let every_ms = Arc::new(AtomicU64::new(FAST.as_millis() as u64));
        let (out, every) = (samples.clone(), every_ms.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("an HTTP client");
            loop {
                let t = Instant::now();
                if let Ok(r) = http.get(&url).send().await
                    && r.status().is_success()
                    && let Ok(text) = r.text().await
                {
                    out.lock()
                        .unwrap()
                        .push(Sample::parse(Instant::now(), &text));
                }
                let every = Duration::from_millis(every.load(Ordering::Relaxed));
                tokio::time::sleep_until((t + every).into()).await;
            }
        });
        Scraper {
            samples,
            every_ms,
            task,
        }
    }

    fn poll_every(&self, d: Duration) {
        self.every_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// The wave of Stage reconciles after `from`: polls fast from 1 s before `from`, waits until
    /// `want` reconciles finished after `from` and then `QUIET` without one (or `deadline`).
    async fn wave(&self, from: Instant, want: u64, deadline: Instant) -> Wave {
        let early = from.checked_sub(Duration::from_secs(1)).unwrap_or(from);
        tokio::time::sleep_until(early.into()).await;
        self.poll_every(FAST);
        let wave = loop {
            let w = Wave::of(&self.samples.lock().unwrap(), from);
            let quiet = w.last.is_some_and(|l| l.elapsed() >= QUIET);
            if (w.reconciles >= want && quiet) || Instant::now() > deadline {
                break w;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        self.poll_every(SLOW);
        wave
    }
}

/// One wave of Stage reconciles, from the samples.
#[derive(Clone, Debug, Default)]
struct Wave {
    /// Reconciles counted before the wave (the last sample at or before its start) and at its end.
    before: u64,
    after: u64,
    reconciles: u64,
    outcomes: BTreeMap<String, u64>,
    /// The first sample that showed a reconcile of the wave, the first that showed its final count.
    first: Option<Instant>,
    last: Option<Instant>,
    /// Bounds of the first → last reconcile end: the samples just before `first` and `last`.
    before_first: Option<Instant>,
    before_last: Option<Instant>,
    /// Histogram deltas: sum (s), count, cumulative buckets.
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl Wave {
    fn of(samples: &[Sample], from: Instant) -> Wave {
        let Some(b) = samples.iter().rposition(|s| s.at <= from) else {
            return Wave::default();
        };
        let base = &samples[b];
        let end = samples.last().unwrap_or(base);
        let (before, after) = (base.reconciles(), end.reconciles());
        let after_base = || samples.iter().enumerate().skip(b + 1);
        let first = after_base().find(|(_, s)| s.reconciles() > before);
        let last = after_base().find(|(_, s)| s.reconciles() == after && after > before);
        let at = |i: Option<(usize, &Sample)>| i.map(|(_, s)| s.at);
        let prev = |i: Option<(usize, &Sample)>| i.map(|(k, _)| samples[k - 1].at);
        Wave {
            before,
            after,
            reconciles: after - before,
            outcomes: end
                .outcomes
                .iter()
                .map(|(o, n)| (o.clone(), n - base.outcomes.get(o).copied().unwrap_or(0)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            first: at(first),
            last: at(last),
            before_first: prev(first),
            before_last: prev(last),
            sum: end.sum - base.sum,
            count: end.count - base.count,
            buckets: end
                .buckets
                .iter()
                .map(|&(le, n)| (le, n - base.bucket(le)))
                .collect(),
        }
    }

    /// First → last reconcile end as polled (ms), and its bounds from the neighbouring samples.
    fn span_ms(&self) -> Option<(f64, f64, f64)> {
        let (f, l, bf, bl) = (
            self.first?,
            self.last?,
            self.before_first?,
            self.before_last?,
        );
        let ms = |a: Instant, b: Instant| common::ms(b.saturating_duration_since(a));
        Some((ms(f, l), ms(f, bl), ms(bf, l)))
    }

    fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum * 1000.0 / self.count as f64)
    }

    /// The upper bound (ms) of the bucket holding quantile `q` of the wave's reconciles.
    fn quantile_le_ms(&self, q: f64) -> Option<f64> {
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        (self.count > 0).then_some(())?;
        self.buckets
            .iter()
            .find(|(_, n)| *n >= rank)
            .map(|(le, _)| le * 1000.0)
    }

    fn outcomes_cell(&self) -> String {
        let o: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        format!("{} ({})", self.reconciles, o.join(", "))
    }

    fn span_cell(&self) -> String {
        self.span_ms().map_or("-".into(), |(m, lo, hi)| {
            format!("{m:.0} ms ({lo:.0}–{hi:.0})")
        })
    }

    fn duration_cell(&self) -> String {
        let le = |q| {
            self.quantile_le_ms(q)
                .map_or("-".into(), |v| format!("≤ {v:.0}"))
        };
        match self.mean_ms() {
            Some(m) => format!("{m:.2} ms; {} / {} ms", le(0.5), le(0.99)),
            None => "-".into(),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Kubernetes objects.

fn running(i: usize) -> String {
    format!("run-{i:03}")
}

fn idle(i: usize) -> String {
    format!("idle-{i:04}")
}

async fn ensure_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [Project::crd(), Stage::crd()] {
        let name = crd.name_any();
        if api.get_opt(&name).await.expect("read CRDs").is_none() {
            api.create(&PostParams::default(), &crd)
                .await
                .expect("create CRD");
            eprintln!("created CRD {name}");
        }
    }
    // Established before use.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

async fn create_objects(client: &Client, ns: &str, n: usize, runners: usize) -> Duration {
    let t = Instant::now();
    let projects: Api<Project> = Api::namespaced(client.clone(), ns);
    let project: Project = serde_json::from_value(serde_json::json!({
        "apiVersion": "tinyforge.dev/v1alpha1", "kind": "Project",
        "metadata": {"name": "bench", "namespace": ns},
        "spec": {
            "image": IMAGE,
            "container": {"port": 8080, "imagePullPolicy": "Never", "stopTimeoutSeconds": 2},
            "healthCheck": {"type": "http", "path": "/healthz", "expectedStatus": 200,
                "intervalSeconds": 1, "timeoutSeconds": 1, "retries": 3, "startPeriodSeconds": 3}
        }
    }))
    .expect("a Project");
    projects
        .create(&PostParams::default(), &project)
        .await
        .expect("create the Project");
    let stages: Api<Stage> = Api::namespaced(client.clone(), ns);
    let objects: Vec<Stage> = (0..n)
        .map(|i| {
            let spec = if i < runners {
                serde_json::json!({"projectRef": "bench", "pinnedTag": TAG})
            } else {
                serde_json::json!({"projectRef": "bench"})
            };
            let name = if i < runners {
                running(i)
            } else {
                idle(i - runners)
            };
            serde_json::from_value(serde_json::json!({
                "apiVersion": "tinyforge.dev/v1alpha1", "kind": "Stage",
                "metadata": {"name": name, "namespace": ns}, "spec": spec
            }))
            .expect("a Stage")
        })
        .collect();
    futures::stream::iter(objects)
        .map(|s| {
            let stages = stages.clone();
            async move {
                stages
                    .create(&PostParams::default(), &s)
                    .await
                    .unwrap_or_else(|e| panic!("create Stage {}: {e}", s.name_any()))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    t.elapsed()
}

/// Phases by Stage, and resource versions.
async fn stage_view(
    client: &Client,
    ns: &str,
) -> (HashMap<String, String>, HashMap<String, String>) {
    let stages: Api<DeserializeGuard<Stage>> = Api::namespaced(client.clone(), ns);
    let list = stages
        .list(&ListParams::default())
        .await
        .expect("list Stages");
    let mut phases = HashMap::new();
    let mut versions = HashMap::new();
    for s in list.items {
        let Ok(s) = s.0 else { continue };
        let name = s.name_any();
        versions.insert(name.clone(), s.resource_version().unwrap_or_default());
        if let Some(p) = s.status.as_ref().and_then(|st| st.phase) {
            phases.insert(name, format!("{p:?}"));
        }
    }
    (phases, versions)
}

/// Waits until every Stage has a phase and the running ones are Healthy.
async fn wait_settled(client: &Client, ns: &str, n: usize, runners: usize) -> Duration {
    let t = Instant::now();
    let deadline = t + Duration::from_secs(900);
    loop {
        let (phases, _) = stage_view(client, ns).await;
        let healthy = (0..runners)
            .filter(|&i| phases.get(&running(i)).is_some_and(|p| p == "Healthy"))
            .count();
        if phases.len() == n && healthy == runners {
            return t.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "not settled after 900 s: {} of {n} Stages with a phase, {healthy} of {runners} Healthy",
            phases.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn delete_namespace(client: &Client, ns: &str, n: usize) -> Duration {
    let t = Instant::now();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    let stages: Api<DeserializeGuard<Stage>> = Api::namespaced(client.clone(), ns);
    let deadline = t + Duration::from_secs(300 + n as u64 / 2);
    loop {
        let left = stages
            .list(&ListParams::default())
            .await
            .map_or(0, |l| l.items.len());
        if left == 0 {
            return t.elapsed();
        }
        if Instant::now() > deadline {
            eprintln!("{left} Stages still there after the cleanup deadline");
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

// ------------------------------------------------------------------------------------------
// One N.

struct Period {
    calls: Counts,
    detail: String,
}

struct Run {
    n: usize,
    runners: usize,
    idle: Memory,
    idle_calls: Counts,
    create: Duration,
    settle: Duration,
    after_settle: Memory,
    /// The restarted binary: its restart wave (first list call + half a period) and two periods.
    restart_calls: Counts,
    restart_detail: String,
    periods: Vec<Period>,
    steady: Memory,
    status_writes_steady: usize,
    /// The restarted binary's Stage reconcile waves, from its `/metrics`: the restart wave,
    /// then the next two periodic ones; the first reconcile of the restart wave after the start;
    /// the reconciles between consecutive waves.
    waves: Vec<Wave>,
    restart_first: Option<Duration>,
    between: Vec<u64>,
    cleanup: Duration,
}

async fn run_one(
    client: &Client,
    base: &Setup,
    n: usize,
    runners: usize,
    log: &Arc<CallLog>,
) -> Run {
    let runners = runners.min(n);
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let s = Setup {
        namespace: format!("tf-bench-k8s-{n}-{suffix}"),
        instance: format!("bench-k8s-{n}-{suffix}"),
        ..base.clone()
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns_obj: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": s.namespace}
    }))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &ns_obj)
        .await
        .expect("create the namespace");
    eprintln!("== N={n} ({runners} running) in namespace {}", s.namespace);

    // 1. The binary, idle, then with N Stages.
    let bin = Binary::start(&s, &format!("{n}-first"), false).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_mem = memory(bin.pid);
    let idle_calls = Counts::of(&log.between(bin.started, Instant::now()));
    eprintln!("   idle: RSS {}", mib(idle_mem.rss_kib));
    let create = create_objects(client, &s.namespace, n, runners).await;
    eprintln!("   created {n} Stages in {:.1} s", create.as_secs_f64());
    let settle = wait_settled(client, &s.namespace, n, runners).await;
    eprintln!("   settled {:.1} s after creation", settle.as_secs_f64());
    // Let the re-reconciles the status writes trigger pass.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_settle = memory(bin.pid);
    bin.stop().await;

    // 2. Restarted: every Stage is due at once.
    let bin = Binary::start(&s, &format!("{n}-restart"), true).await;
    let scraper = bin
        .scraper
        .as_ref()
        .expect("the restarted binary is scraped");
    let (_, versions_before) = stage_view(client, &s.namespace).await;
    let period = s.resync;
    let wave_start = loop {
        if let Some(t) = log.first_list_after(bin.started) {
            break t;
        }
        assert!(
            bin.started.elapsed() < Duration::from_secs(60),
            "no list call after a restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Its Stage reconcile waves, from /metrics: the restart wave from the process start, then
    // the next two, each one period after the previous one's first reconcile.
    let want = n as u64;
    let mut waves = vec![
        scraper
            .wave(bin.started, want, bin.started + Duration::from_secs(120))
            .await,
    ];
    for _ in 0..2 {
        let prev = waves
            .last()
            .and_then(|w| w.first)
            .unwrap_or_else(Instant::now);
        let from = prev + period - Duration::from_secs(2);
        waves.push(
            scraper
                .wave(from, want, from + Duration::from_secs(60))
                .await,
        );
    }
    let restart_first = waves[0]
        .first
        .map(|t| t.saturating_duration_since(bin.started));
    let between: Vec<u64> = waves
        .windows(2)
        .map(|w| w[1].before.saturating_sub(w[0].after))
        .collect();
    eprintln!(
        "   waves (/metrics): {}; between: {between:?}",
        waves
            .iter()
            .map(|w| format!(
                "{} in {}, {}",
                w.reconciles,
                w.span_cell(),
                w.duration_cell()
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    // Bins of one period centred on each wave: the restart wave, then two periodic ones.
    let half = period / 2;
    tokio::time::sleep_until((wave_start + 2 * period + half + Duration::from_secs(1)).into())
        .await;
    let restart_calls_v = log.between(bin.started, wave_start + half);
    let periods: Vec<Period> = (1..=2u32)
        .map(|k| {
            let calls = log.between(
                wave_start + period * k - half,
                wave_start + period * k + half,
            );
            Period {
                calls: Counts::of(&calls),
                detail: breakdown(&calls),
            }
        })
        .collect();
    let steady = memory(bin.pid);
    let (_, versions_after) = stage_view(client, &s.namespace).await;
    let status_writes_steady = versions_after
        .iter()
        .filter(|(k, v)| versions_before.get(*k) != Some(v))
        .count();
    eprintln!(
        "   binary steady: RSS {}, calls per period {:?}",
        mib(steady.rss_kib),
        periods.iter().map(|p| p.calls).collect::<Vec<_>>()
    );
    // Clean up with the controller still running: its finalizers remove the containers.
    let cleanup = delete_namespace(client, &s.namespace, n).await;
    bin.stop().await;
    eprintln!("   cleaned up in {:.1} s", cleanup.as_secs_f64());
    Run {
        n,
        runners,
        idle: idle_mem,
        idle_calls,
        create,
        settle,
        after_settle,
        restart_calls: Counts::of(&restart_calls_v),
        restart_detail: breakdown(&restart_calls_v),
        periods,
        steady,
        status_writes_steady,
        waves,
        restart_first,
        between,
        cleanup,
    }
}

// ------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_STAGES")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .expect("BENCH_STAGES: numbers, e.g. 100,1000")
        })
        .collect();
    let runners: usize = std::env::var("BENCH_RUNNING")
        .ok()
        .map_or(20, |v| v.parse().expect("BENCH_RUNNING: a number"));
    let resync = Duration::from_secs(30);
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_else(|_| {
        let p = dirs::home_dir()
            .unwrap_or_default()
            .join(".cache/kube-test/run/kubeconfig");
        p.to_string_lossy().into_owned()
    });
    assert!(
        Path::new(&kubeconfig).exists(),
        "no kubeconfig at {kubeconfig}: start an API server (scripts/kube-up.sh) or run scripts/bench-k8s.sh"
    );
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).expect("read the kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("a kube config");
    let client = Client::try_from(config).expect("a kube client");
    let apiserver = client
        .apiserver_version()
        .await
        .unwrap_or_else(|e| panic!("the API server of {kubeconfig} does not answer: {e}"));
    ensure_crds(&client).await;

    let (docker, endpoint) = common::connect().await;
    let real = PathBuf::from(
        endpoint
            .strip_prefix("unix://")
            .unwrap_or_else(|| panic!("DOCKER_HOST={endpoint}: the bench needs a unix socket")),
    );
    docker
        .inspect_image(&format!("{IMAGE}:{TAG}"))
        .await
        .unwrap_or_else(|e| panic!("{IMAGE}:{TAG}: {e}; run scripts/demo-images.sh"));
    let machine = common::Machine::describe(&docker).await;

    let dir = tempfile::Builder::new()
        .prefix("tf-bench-k8s-")
        .tempdir_in("/tmp")
        .expect("a temporary directory");
    let sock = dir.path().join("docker.sock");
    let log = Arc::new(CallLog::default());
    let proxy = start_proxy(&sock, real, log.clone());
    let base = Setup {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_tiny-forge")),
        kubeconfig: kubeconfig.clone(),
        proxy_host: format!("unix://{}", sock.display()),
        namespace: String::new(),
        instance: String::new(),
        resync,
        log_dir: dir.path().to_path_buf(),
    };
    let measured_at = k8s_openapi::jiff::Timestamp::now();
    let mut runs = Vec::new();
    for &n in &sizes {
        runs.push(run_one(&client, &base, n, runners, &log).await);
    }
    proxy.abort();

    let doc = render(
        &runs,
        &machine,
        &apiserver.git_version,
        &measured_at.to_string(),
        resync,
    );
    println!("{doc}");
    if std::env::var("BENCH_WRITE_DOC").as_deref() != Ok("0") {
        common::write_section(&common::doc_path(), START, END, &doc);
        eprintln!("wrote {}", common::DOC);
    }
    if std::env::var("BENCH_KEEP_LOGS").is_ok() {
        eprintln!("logs kept in {}", dir.keep().display());
    }
}

fn render(
    runs: &[Run],
    m: &common::Machine,
    apiserver: &str,
    at: &str,
    resync: Duration,
) -> String {
    let cols = runs.len();
    let head = runs
        .iter()
        .map(|r| format!(" N = {} ({} running) |", r.n, r.runners))
        .collect::<String>();
    let ratio_head = if cols >= 2 {
        format!(" {} / {} |", runs[cols - 1].n, runs[0].n)
    } else {
        String::new()
    };
    let mut t = format!(
        "| |{head}{ratio_head}\n|---|{}{}\n",
        "---:|".repeat(cols),
        if cols >= 2 { "---:|" } else { "" }
    );
    let mut row = |label: &str, cells: Vec<String>, ratio: Option<f64>| {
        t.push_str(&format!("| {label} |"));
        for c in cells {
            t.push_str(&format!(" {c} |"));
        }
        if cols >= 2 {
            match ratio {
                Some(r) if r.is_finite() => t.push_str(&format!(" {r:.2}× |")),
                _ => t.push_str(" |"),
            }
        }
        t.push('\n');
    };
    let ratio = |f: &dyn Fn(&Run) -> f64| {
        let (a, b) = (f(&runs[0]), f(&runs[cols - 1]));
        (cols >= 2 && a > 0.0).then(|| b / a)
    };
    let each = |f: &dyn Fn(&Run) -> String| runs.iter().map(f).collect::<Vec<_>>();
    row(
        "**binary** RSS idle (0 Stages, 10 s after start)",
        each(&|r| mib(r.idle.rss_kib)),
        ratio(&|r| r.idle.rss_kib as f64),
    );
    row(
        "RSS after creating N Stages and their first reconciles (peak VmHWM)",
        each(&|r| {
            format!(
                "{} ({})",
                mib(r.after_settle.rss_kib),
                mib(r.after_settle.hwm_kib)
            )
        }),
        ratio(&|r| r.after_settle.rss_kib as f64),
    );
    row(
        "RSS with N unchanged Stages, restarted, after 2 resync periods (peak VmHWM)",
        each(&|r| format!("{} ({})", mib(r.steady.rss_kib), mib(r.steady.hwm_kib))),
        ratio(&|r| r.steady.rss_kib as f64),
    );
    row(
        "Docker calls while idle, list / read / write",
        each(&|r| r.idle_calls.cell()),
        None,
    );
    row(
        "create the Project + N Stages (32 requests in flight)",
        each(&|r| format!("{:.1} s", r.create.as_secs_f64())),
        ratio(&|r| r.create.as_secs_f64()),
    );
    row(
        "… until every Stage has a phase, running ones Healthy",
        each(&|r| format!("{:.1} s", r.settle.as_secs_f64())),
        ratio(&|r| r.settle.as_secs_f64()),
    );
    row(
        "**binary** restart wave (start + first resync), list / read / write",
        each(&|r| r.restart_calls.cell()),
        None,
    );
    for k in 0..2 {
        row(
            &format!(
                "**binary** steady resync period {} ({} s), list / read / write",
                k + 1,
                resync.as_secs()
            ),
            each(&|r| r.periods.get(k).map_or("-".into(), |p| p.calls.cell())),
            ratio(&|r| r.periods.get(k).map_or(0.0, |p| p.calls.list as f64)),
        );
    }
    row(
        "Stages whose status changed during those 2 periods",
        each(&|r| r.status_writes_steady.to_string()),
        None,
    );
    let names = [
        "restart wave (from the process start)",
        "periodic resync wave 1",
        "periodic resync wave 2",
    ];
    for (k, name) in names.iter().enumerate() {
        let wave = |r: &Run| r.waves.get(k).cloned().unwrap_or_default();
        row(
            &format!("**binary** {name}: Stage reconciles (by outcome)"),
            each(&|r| wave(r).outcomes_cell()),
            ratio(&|r| wave(r).reconciles as f64),
        );
        if k == 0 {
            row(
                "… first reconcile done, after the process start",
                each(&|r| {
                    r.restart_first
                        .map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()))
                }),
                ratio(&|r| r.restart_first.map_or(0.0, |d| d.as_secs_f64())),
            );
        }
        row(
            &format!(
                "… first → last reconcile end, ±{} ms polling (bounds)",
                FAST.as_millis()
            ),
            each(&|r| wave(r).span_cell()),
            ratio(&|r| wave(r).span_ms().map_or(0.0, |(m, _, _)| m)),
        );
        row(
            "… one reconcile: mean; median / p99 bucket (4 run concurrently)",
            each(&|r| wave(r).duration_cell()),
            ratio(&|r| wave(r).mean_ms().unwrap_or(0.0)),
        );
    }
    row(
        "Stage reconciles between the waves (restart–1 / 1–2; none expected)",
        each(&|r| {
            r.between
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" / ")
        }),
        None,
    );
    row(
        "cleanup: delete the namespace → every Stage gone (finalizers)",
        each(&|r| format!("{:.1} s", r.cleanup.as_secs_f64())),
        ratio(&|r| r.cleanup.as_secs_f64()),
    );

    let details = runs
        .iter()
        .map(|r| {
            let periods = r
                .periods
                .iter()
                .enumerate()
                .map(|(k, p)| format!("  period {}: {}", k + 1, p.detail))
                .collect::<Vec<_>>()
                .join("\n");
            format!(
                "* N = {}: restart wave: {}\n{}",
                r.n, r.restart_detail, periods
            )
        })
        .collect::<Vec<_>>()
        .join("\n");

    let steady_writes: usize = runs
        .iter()
        .flat_map(|r| r.periods.iter().map(|p| p.calls.write))
        .sum();
    let lists: Vec<String> = runs
        .iter()
        .map(|r| {
            let l: Vec<String> = r.periods.iter().map(|p| p.calls.list.to_string()).collect();
            format!("N = {}: {}", r.n, l.join(", "))
        })
        .collect();
    let flat = runs.iter().all(|r| {
        r.periods.iter().all(|p| {
            p.calls.list
                <= runs[0]
                    .periods
                    .iter()
                    .map(|p| p.calls.list)
                    .max()
                    .unwrap_or(0)
        })
    });
    format!(
        "## Kubernetes controller: memory, and a resync of N unchanged Stages\n\n\
Measured {at} on {cpu} ({nproc} CPUs, {mem} RAM), Docker Engine {docker} ({storage} storage \
driver), kube-apiserver {apiserver} (local etcd); resync period {resync} s, 4 concurrent \
reconciles (the defaults).\n\n\
Reproduce (reuses or starts the API server and a Docker engine, builds the demo images, runs \
`benches/k8s.rs`; stops only what it started):\n\n\
```sh\nscripts/bench-k8s.sh\n```\n\n\
With both already up: `KUBECONFIG=… DOCKER_HOST=unix://… cargo bench --bench k8s`. \
`BENCH_STAGES` (default `100,1000`) and `BENCH_RUNNING` (default 20) change the sizes.\n\n\
Per N, in a fresh namespace: one Project (`tiny-forge-demo`, `imagePullPolicy: Never`) and N \
Stages, of which {runners} pin `1.0.0` and run a container (no host port) and the others have \
no tag to deploy (phase Pending, reason NoTag: requeued every resync like a converged Stage, with \
nothing to deploy). **Binary**: `target/release/tiny-forge run --kubernetes \
--leader-election false --resync 30s`, its Docker endpoint a counting proxy on a unix socket \
that records each request line (`GET …/containers/json` = list, other GET/HEAD = read, anything \
else = write); memory is `VmRSS` / `VmHWM` of its `/proc/<pid>/status`. Once every Stage has a \
status the binary is restarted, so every Stage is due at once: the first reconciles after a \
restart are a full resync of N unchanged Stages, and each resync period after it repeats that \
wave (the periods below are windows of one period centred on each wave). The waves are timed \
from the same restarted binary's Prometheus metrics (`--listen 127.0.0.1:<port>`, `GET /metrics`), \
polled every {fast} ms from the process start through the restart wave and from 1 s before each \
expected periodic wave (one period after the previous wave's first reconcile) until {quiet} s \
without a new reconcile, every {slow} ms in between: the Stage reconciles of a wave are the \
increase of `tiny_forge_reconciles_total{{kind=\"Stage\"}}` (by `outcome`); first → last is \
from the first poll that showed a reconcile of the wave to the first that showed its final count \
(the counters move when a reconcile ends, so this is first end → last end, each end known to one \
poll interval: the bounds in brackets are the spans the neighbouring polls allow); the duration \
of one reconcile is the wave's increase of `tiny_forge_reconcile_duration_seconds` `_sum` / \
`_count` (mean) and, for median and p99, the upper bound of the bucket they fall in; the \
reconciles between waves are the increase from one wave's final count to the next wave's start \
(a status write would trigger one). The restart wave's first reconcile includes the process \
start and the watches' initial lists. Single noisy machine: \
compare the columns, not the absolute milliseconds.\n\n\
{t}\n\
Docker requests per window:\n\n{details}\n\n\
### Targets\n\n\
* No write calls in a steady resync: **{writes}** — {steady_writes} write call(s) in the \
steady periods.\n\
* List calls independent of the number of Stages: **{flat_s}** — list calls per period: {lists}.\n",
        cpu = m.cpu,
        nproc = m.nproc,
        mem = m.memory,
        docker = m.docker,
        storage = m.storage,
        resync = resync.as_secs(),
        runners = runs.first().map_or(0, |r| r.runners),
        writes = if steady_writes == 0 { "met" } else { "not met" },
        flat_s = match (runs.len() >= 2, flat) {
            (false, _) => "needs two sizes to tell",
            (true, true) => "met",
            (true, false) => "not met",
        },
        lists = lists.join("; "),
        fast = FAST.as_millis(),
        slow = SLOW.as_millis(),
        quiet = QUIET.as_secs(),
    )
}
