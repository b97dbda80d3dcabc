//! What the benches share: the Docker connection, a Reconciler wired for benching, statistics,
//! the machine description, container cleanup by label and the marked blocks of
//! `docs/BENCHMARKS.md`. Included by each bench as `mod common;`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use tiny_forge::adapters::docker::DockerRuntime;
use tiny_forge::adapters::probe::NetProber;
use tiny_forge::api::labels;
use tiny_forge::engine::{Reconciler, Runtime};
pub use tiny_forge::testing::{NoSecrets, NoSink};

/// Every bench container carries this label, its value naming the bench (its "suite"), so a
/// crashed run's leftovers are found and nothing else is touched.
pub const BENCH_LABEL: &str = "bench.tiny-forge/suite";
/// Where the benches write their results, relative to the crate root.
pub const DOC: &str = "docs/BENCHMARKS.md";

pub type Engine = Reconciler<DockerRuntime, NetProber, NoSink, NoSecrets>;

/// The Reconciler the benches drive: the real runtime and prober, no proxy, status kept by the
/// caller.
pub fn engine(runtime: DockerRuntime) -> Engine {
    Reconciler {
        runtime,
        prober: NetProber::new(),
        sink: NoSink,
        secrets: NoSecrets,
        proxy: tiny_forge::engine::proxy::NoProxy,
        host_name: "default".into(),
        instance: "bench".into(),
        holder: None,
    }
}

/// `BENCH_RUNS` (default 9): the number of measured runs after the warm-up.
pub fn runs_from_env() -> usize {
    match std::env::var("BENCH_RUNS") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("BENCH_RUNS={v:?}: expected a positive integer")),
        Err(_) => 9,
    }
}

/// A bollard client for `DOCKER_HOST`, and the endpoint it talks to.
pub async fn connect() -> (Docker, String) {
    let endpoint =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string());
    let docker = Docker::connect_with_host(&endpoint)
        .expect("a Docker client for DOCKER_HOST")
        .with_timeout(Duration::from_secs(60))
        .negotiate_version()
        .await
        .unwrap_or_else(|e| panic!("Docker at {endpoint} does not answer ({e}); run: make bench"));
    (docker, endpoint)
}

/// Removes a container, running or not.
pub async fn remove(docker: &Docker, id: &str) {
    let options = RemoveContainerOptionsBuilder::default().force(true).build();
    docker
        .remove_container(id, Some(options))
        .await
        .unwrap_or_else(|e| panic!("remove {id}: {e}"));
}

/// Containers a crashed earlier run of the bench `suite` left behind.
pub async fn remove_leftovers(docker: &Docker, suite: &str) {
    let filters = HashMap::from([("label".to_string(), vec![format!("{BENCH_LABEL}={suite}")])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let leftovers = docker
        .list_containers(Some(options))
        .await
        .expect("list leftover bench containers");
    for c in leftovers.into_iter().filter_map(|c| c.id) {
        eprintln!(
            "removing leftover bench container {}",
            &c[..12.min(c.len())]
        );
        remove(docker, &c).await;
    }
}

/// Removes every container tiny-forge made for the Stage.
pub async fn cleanup_stage(engine: &Engine, stage_name: &str) {
    let created = engine
        .runtime
        .list_managed(&[(labels::STAGE, stage_name)])
        .await
        .expect("list the Stage's containers");
    for c in created {
        engine
            .runtime
            .remove(&c.id)
            .await
            .unwrap_or_else(|e| panic!("remove {}: {e}", c.name));
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// 90th percentile, nearest rank.
pub fn p90(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (0.9 * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Where the numbers were taken.
pub struct Machine {
    pub cpu: String,
    pub nproc: usize,
    pub memory: String,
    pub docker: String,
    pub storage: String,
}

impl Machine {
    pub async fn describe(docker: &Docker) -> Machine {
        let (cpu, memory) = (cpu_model(), memory_total());
        let info = docker.info().await.ok();
        Machine {
            cpu,
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory,
            docker: docker
                .version()
                .await
                .ok()
                .and_then(|v| v.version)
                .unwrap_or_else(|| "unknown".into()),
            storage: info
                .and_then(|i| i.driver)
                .unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// `docs/BENCHMARKS.md` of this crate.
pub fn doc_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC)
}

/// Replaces the block between the markers `start` and `end`, keeping the rest of the file; the
/// block is appended when the markers are missing, the file created when it is.
pub fn write_section(path: &Path, start: &str, end: &str, section: &str) {
    let block = format!("{start}\n{}\n{end}", section.trim_end());
    let text = match std::fs::read_to_string(path) {
        Ok(text) => match (text.find(start), text.find(end)) {
            (Some(a), Some(b)) if a < b => {
                format!("{}{block}{}", &text[..a], &text[b + end.len()..])
            }
            _ => format!("{}\n\n{block}\n", text.trim_end()),
        },
        Err(_) => format!(
            "# Benchmarks\n\n\
             Measurements of tiny-forge against a real Docker engine. Each section is written by \
             the bench named in it; rerun it to refresh the numbers.\n\n{block}\n"
        ),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create docs/");
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Nearest-rank percentile `q` (0 < q ≤ 1) of unsorted values; NaN for none.
#[allow(dead_code)] // not every bench uses it
pub fn percentile_nearest_rank(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The host without asking Docker: "CPU model (N CPUs, M GiB RAM)".
#[allow(dead_code)] // not every bench uses it
pub fn host_summary() -> String {
    let (cpu, memory) = (cpu_model(), memory_total());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu} ({nproc} CPUs, {memory} RAM)")
}

/// The filesystem holding `path` (longest mount point of `/proc/self/mounts` that contains it):
/// "ext4 on /dev/vda (mounted at /, rw,relatime)"; "unknown" when it cannot be told.
#[allow(dead_code)] // not every bench uses it
pub fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| (f[0], f[1].replace("\\040", " "), f[2], f[3]))
        })
        .filter(|(_, at, _, _)| path.starts_with(at))
        .max_by_key(|(_, at, _, _)| at.len())
        .map_or("unknown".to_string(), |(dev, at, fs, opts)| {
            format!("{fs} on {dev} (mounted at {at}, {opts})")
        })
}

/// The CPU model from /proc/cpuinfo (the architecture when unknown).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Total memory from /proc/meminfo, as "23.5 GiB".
fn memory_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or("unknown".to_string(), |kb| {
            format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0)
        })
}

/// The rows every side-by-side table ends with: the median per-pair difference, its range, how
/// often tiny-forge took longer (`longer`: how the row says it), and the ratio of medians.
/// `pad` is the empty cells that fill the row to the table's width (e.g. `" |"`).
pub fn comparison_rows(diff: &[f64], tf: f64, raw: f64, longer: &str, pad: &str) -> String {
    let (lo, hi) = min_max(diff);
    format!(
        "| **overhead**: median of per-pair (tiny-forge − raw) | **{:+.1} ms** |{pad}\n\
         | per-pair (tiny-forge − raw), min … max | {lo:+.1} … {hi:+.1} ms |{pad}\n\
         | {longer} | {} of {} |{pad}\n\
         | ratio of medians (tiny-forge / raw) | {:.2}× |{pad}\n",
        median(diff),
        diff.iter().filter(|&&d| d > 0.0).count(),
        diff.len(),
        tf / raw
    )
}
