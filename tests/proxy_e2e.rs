//! Traffic really flowing: a client loops requests through a real nginx (driven by the NPM test
//! double, as NPM drives its nginx) to the Stage's containers on the real Docker engine, while
//! the Stage rolls forward and rolls back. Nothing may be dropped. Also: a domain owned by
//! someone else, NPM down, NPM's backend restarting mid-deploy (502 from its nginx), a proxy
//! setting nginx rejects, a Stage file removed and restored within its grace, and cleanup.

mod common;
mod npm;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use npm::{DoubleOptions, NginxPlane, NpmDouble};
use tiny_forge::adapters::npm::NpmConfig;
use tiny_forge::api::{Phase, StageStatus, labels};
use tiny_forge::engine::{Runtime, conditions};
use tiny_forge::modes::standalone::{self, Options};
use tiny_forge::store::StateDb;

const NS: &str = "t-proxy";

fn project(ns: &str) -> String {
    format!(
        "apiVersion: tinyforge.dev/v1alpha1
kind: Project
metadata: {{name: demo, namespace: {ns}}}
spec:
  image: tiny-forge-demo
  container: {{port: 8080, stopTimeoutSeconds: 2}}
  healthCheck: {{type: http, path: /healthz, intervalSeconds: 1, retries: 2, startPeriodSeconds: 2}}
"
    )
}

fn stage(ns: &str, tag: &str, proxy: &str) -> String {
    format!(
        "apiVersion: tinyforge.dev/v1alpha1
kind: Stage
metadata: {{name: web, namespace: {ns}}}
spec:
  projectRef: demo
  pinnedTag: \"{tag}\"
  domains: [demo.test]
  proxy: {{drainSeconds: 1{proxy}}}
"
    )
}

/// Writes a file the way an editor or a checkout does: whole, by rename.
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

fn manifests_with(dir: &Path, tag: &str, proxy: &str, extra: &str) {
    let text = format!("{}---\n{}{extra}", project(NS), stage(NS, tag, proxy));
    write(dir, "all.yaml", &text);
}

fn manifests(dir: &Path, tag: &str, extra: &str) {
    manifests_with(dir, tag, "", extra)
}

async fn wait_for(
    db: &StateDb,
    stage: &str,
    what: &str,
    done: impl Fn(&StageStatus) -> bool,
) -> StageStatus {
    wait_in(db, NS, stage, what, done).await
}

async fn wait_in(
    db: &StateDb,
    ns: &str,
    stage: &str,
    what: &str,
    done: impl Fn(&StageStatus) -> bool,
) -> StageStatus {
    let mut last = StageStatus::default();
    for _ in 0..300 {
        last = db.stage_status(ns, stage).unwrap();
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{stage}: never {what}; last status: {last:#?}");
}

fn proxy_ready(s: &StageStatus) -> Option<(String, String)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == "ProxyReady")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn serving(tag: &'static str) -> impl Fn(&StageStatus) -> bool {
    move |s| {
        s.phase != Some(Phase::Deploying)
            && s.current.as_ref().is_some_and(|c| c.tag == tag)
            && proxy_ready(s) == Some(("True".into(), "Routed".into()))
    }
}

/// Requests `Host: demo.test` through nginx in a loop, a new connection each time, until
/// stopped. Returns (answers by body, failures with what went wrong).
fn client_loop(
    port: u16,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, Vec<String>)> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let (mut answers, mut failures) = (Vec::new(), Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match client
                .get(format!("http://127.0.0.1:{port}/"))
                .header("host", "demo.test")
                .send()
                .await
            {
                Ok(r) if r.status() == 200 => {
                    let body = r.text().await.unwrap_or_default();
                    if body.starts_with("tiny-forge-demo ") {
                        answers.push(body.trim().to_string());
                    } else {
                        failures.push(format!("unexpected body {body:.60}"));
                    }
                }
                Ok(r) => failures.push(format!("status {}", r.status())),
                Err(e) => failures.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (answers, failures)
    })
}

/// Waits (up to 10 s) until the double has triggered no nginx reload for 0.5 s, then 0.2 s more
/// for the last reload's workers to take over.
async fn quiet_reloads(double: &NpmDouble) {
    let mut last = double.reloads();
    let mut quiet = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = double.reloads();
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
        if quiet >= 5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
    }
    panic!("nginx kept reloading for 10 s");
}

/// Waits (up to 5 s) until `demo.test` answers `version` through nginx.
async fn served_by(port: u16, version: &str) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut last = String::new();
    for _ in 0..100 {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/"))
            .header("host", "demo.test")
            .send()
            .await
        {
            last = r.text().await.unwrap_or_default();
            if last.trim() == format!("tiny-forge-demo {version}") {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("demo.test never answered {version}; last: {last:.80}");
}

/// The NPM double in front of a real nginx, or None (test skipped with a note) when nginx is
/// missing and the run did not ask for the real-parts tests.
async fn double_with_nginx() -> Option<NpmDouble> {
    let plane = match NginxPlane::start().await {
        Ok(p) => p,
        Err(e) if std::env::var_os("TINY_FORGE_TEST_DOCKER").is_none() => {
            eprintln!("skipped: {e}");
            return None;
        }
        Err(e) => panic!("nginx is needed for this test: {e}"),
    };
    let double = NpmDouble::start(DoubleOptions {
        nginx: Some(plane),
        ..Default::default()
    })
    .await;
    Some(double)
}

#[tokio::test]
async fn rolls_and_rollbacks_behind_nginx_drop_no_request() {
    let Some(rt) = docker().await else { return };
    let Some(double) = double_with_nginx().await else {
        return;
    };
    let port = double.http_port();
    for c in rt.list_managed(&[(labels::INSTANCE, NS)]).await.unwrap() {
        rt.remove(&c.id).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir(&m).unwrap();
    manifests(&m, "1.0.0", "");
    let state = dir.path().join("state");
    let mut opts = Options::new(m.clone(), state.clone());
    opts.resync = Duration::from_secs(1);
    opts.instance = NS.into();
    opts.npm = Some(NpmConfig {
        url: double.url.clone(),
        email: "admin@example.com".into(),
        password: "changeme".into(),
        timeout: Duration::from_secs(5),
    });
    let (stop_ctl, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(standalone::run(opts, async {
        let _ = stopped.await;
    }));
    while !state.join("state.db").exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let db = StateDb::open(&state).unwrap();
    let first = wait_for(
        &db,
        "web",
        "served 1.0.0 through the proxy",
        serving("1.0.0"),
    )
    .await;
    assert_eq!(
        double.route_for("demo.test").as_deref(),
        first.proxy.as_ref().map(|p| p.target.as_str())
    );

    // Steady state writes nothing to NPM.
    let writes = double.writes();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(double.writes(), writes, "resyncs compare before writing");

    // Roll forward under load.
    let stop = Arc::new(AtomicBool::new(false));
    let load = client_loop(port, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    manifests(&m, "1.1.0", "");
    wait_for(
        &db,
        "web",
        "served 1.1.0 through the proxy",
        serving("1.1.0"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (answers, failures) = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} dropped of {}: {:?}",
        failures.len(),
        failures.len() + answers.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        answers.iter().any(|a| a.ends_with("1.0.0"))
            && answers.iter().any(|a| a.ends_with("1.1.0")),
        "saw both versions"
    );
    // nginx's old workers finish what they accepted during a reload, so 1.0.0 may still answer
    // briefly after the first 1.1.0 — that is what the drain period is for; then only 1.1.0.
    let tail = &answers[answers.len().saturating_sub(20)..];
    assert!(tail.iter().all(|a| a.ends_with("1.1.0")), "{tail:?}");
    eprintln!("roll forward: {} requests, 0 dropped", answers.len());
    assert_eq!(
        rt.list_managed(&[(labels::INSTANCE, NS)])
            .await
            .unwrap()
            .len(),
        1
    );

    // A broken tag under load: it never gets traffic, 1.1.0 keeps serving.
    let stop = Arc::new(AtomicBool::new(false));
    let load = client_loop(port, stop.clone());
    manifests(&m, "1.2.0-broken", "");
    let rolled = wait_for(&db, "web", "rolled back", |s| {
        s.phase == Some(Phase::RolledBack)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (answers, failures) = load.await.unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        answers.iter().all(|a| a.ends_with("1.1.0")),
        "only 1.1.0 answered"
    );
    assert_eq!(rolled.current.unwrap().tag, "1.1.0");
    eprintln!("rollback: {} requests, 0 dropped", answers.len());

    // A domain someone else owns: reported, untouched.
    let foreign = double.insert_foreign_host(&["taken.test"], "192.0.2.1", 80);
    manifests(
        &m,
        "1.1.0",
        &format!(
            "---
apiVersion: tinyforge.dev/v1alpha1
kind: Stage
metadata: {{name: other, namespace: {NS}}}
spec: {{projectRef: demo, pinnedTag: \"1.0.0\", domains: [taken.test]}}
"
        ),
    );
    let other = wait_for(&db, "other", "reported DomainInUse", |s| {
        proxy_ready(s).is_some_and(|(_, r)| r == "DomainInUse")
    })
    .await;
    assert!(
        rt.list_managed(&[(labels::INSTANCE, NS), (labels::STAGE, "other")])
            .await
            .unwrap()
            .iter()
            .any(|c| c.running),
        "the container side converges anyway"
    );
    assert_eq!(
        other.phase,
        Some(Phase::Degraded),
        "not Healthy beside Ready=False"
    );
    assert_eq!(double.host(foreign).unwrap()["forward_host"], "192.0.2.1");
    // ... but the Stage does not serve its domain, and says so (`get stages` shows Ready and
    // the message).
    let ready = conditions::ready(&other.conditions).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "DomainInUse"),
        "{ready:?}"
    );
    let message = other.message.clone().unwrap_or_default();
    assert!(
        message.contains("not served") && message.contains("taken.test"),
        "{message}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiny-forge"))
        .args([
            "get",
            "stages",
            "other",
            "-n",
            NS,
            "-o",
            "wide",
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with("other ")
            && row.contains(" False ")
            && row.contains(" DomainInUse ")
            && row.contains("not served"),
        "{table}"
    );

    // NPM down during a deploy: the new container waits, healthy, beside the old one, which
    // nginx still routes to and which keeps serving; the switch happens once NPM is back.
    double.set_down(true);
    manifests(&m, "1.0.0", "");
    let down = wait_for(&db, "web", "waited for the proxy", |s| {
        conditions::ready(&s.conditions).is_some_and(|c| c.reason == "ProxyPending")
            && proxy_ready(s).is_some_and(|(_, r)| r == "ProxyUnreachable")
    })
    .await;
    assert_eq!(down.phase, Some(Phase::Deploying));
    assert_eq!(
        down.current.as_ref().unwrap().tag,
        "1.1.0",
        "still what serves"
    );
    let both = rt
        .list_managed(&[(labels::INSTANCE, NS), (labels::STAGE, "web")])
        .await
        .unwrap();
    assert_eq!(both.len(), 2, "old and new both kept: {both:?}");
    let through_nginx = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", "demo.test")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        through_nginx.trim(),
        "tiny-forge-demo 1.1.0",
        "the old container still serves"
    );
    double.set_down(false);
    let back = wait_for(&db, "web", "re-routed once NPM was back", serving("1.0.0")).await;
    assert_eq!(
        double.route_for("demo.test").as_deref(),
        back.proxy.as_ref().map(|p| p.target.as_str())
    );

    // NPM's backend restarting during a deploy: its nginx answers the API with 502. That is NPM
    // away, not a failed switch: 1.0.0 keeps serving, 1.1.0 waits healthy beside it, nothing is
    // held against 1.1.0, and the switch happens once the backend answers again. No request is
    // dropped.
    let stop = Arc::new(AtomicBool::new(false));
    let load = client_loop(port, stop.clone());
    double.set_gateway_error(Some(502));
    manifests(&m, "1.1.0", "");
    let pending = wait_for(&db, "web", "waited for NPM's backend", |s| {
        conditions::ready(&s.conditions).is_some_and(|c| c.reason == "ProxyPending")
            && proxy_ready(s).is_some_and(|(_, r)| r == "ProxyUnreachable")
    })
    .await;
    assert_eq!(pending.current.as_ref().unwrap().tag, "1.0.0");
    assert_eq!(pending.last_failure, None);
    let both = rt
        .list_managed(&[(labels::INSTANCE, NS), (labels::STAGE, "web")])
        .await
        .unwrap();
    assert_eq!(both.len(), 2, "old and new both kept: {both:?}");
    double.set_gateway_error(None);
    wait_for(
        &db,
        "web",
        "switched once NPM's backend was back",
        serving("1.1.0"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (answers, failures) = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} dropped of {}: {:?}",
        failures.len(),
        failures.len() + answers.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        answers.iter().any(|a| a.ends_with("1.0.0")) && answers.last().unwrap().ends_with("1.1.0")
    );
    eprintln!(
        "backend restart mid-deploy: {} requests, 0 dropped",
        answers.len()
    );

    // A new tag with a proxy setting nginx rejects: NPM saves the host and takes it offline
    // (its default site answers) until tiny-forge puts it back on 1.1.0 with the settings nginx
    // accepted last. Then it is served again, stays so over resyncs (nothing rewritten), and
    // the status says what happened.
    let stop = Arc::new(AtomicBool::new(false));
    let load = client_loop(port, stop.clone());
    let bad = ", advancedConfig: \"invalid_directive on;\"";
    manifests_with(&m, "1.0.0", bad, "");
    let rolled = wait_for(
        &db,
        "web",
        "rolled back from settings nginx rejected",
        |s| s.phase == Some(Phase::RolledBack),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (answers, failures) = load.await.unwrap();
    assert_eq!(rolled.current.as_ref().unwrap().tag, "1.1.0");
    assert_eq!(
        rolled.last_failure.as_ref().unwrap().reason,
        "ProxySwitchFailed"
    );
    let message = rolled.message.clone().unwrap_or_default();
    assert!(
        message.contains("invalid_directive") && message.contains("1.1.0 keeps serving"),
        "{message}"
    );
    let settled = |what: &'static str, writes: usize| {
        let (stop, double, db) = (Arc::new(AtomicBool::new(false)), &double, &db);
        async move {
            // NPM answered the last write before nginx reloaded, and nginx switches workers
            // asynchronously after each reload (the rejected write's, then the put-back's): a
            // first 1.1.0 may still come from the workers of before the rejection. Settled =
            // no reload for 0.5 s, then served by 1.1.0.
            quiet_reloads(double).await;
            served_by(port, "1.1.0").await;
            let load = client_loop(port, stop.clone());
            tokio::time::sleep(Duration::from_secs(3)).await;
            stop.store(true, Ordering::Relaxed);
            let (answers, failures) = load.await.unwrap();
            assert!(failures.is_empty(), "{what}: {failures:?}");
            assert!(answers.iter().all(|a| a.ends_with("1.1.0")), "{what}");
            assert_eq!(double.writes(), writes, "{what}: resyncs rewrite nothing");
            eprintln!("{what}: {} requests, 0 dropped", answers.len());
            db.stage_status(NS, "web").unwrap()
        }
    };
    let after = settled("after the rollback", double.writes()).await;
    // Kept in status: the settings nginx accepted last (read as JSON, as `get -o json` shows).
    let proxy = serde_json::to_value(&rolled.proxy).unwrap();
    assert!(proxy["settings"].is_object(), "{proxy}");
    assert_eq!(proxy["settings"].get("advancedConfig"), None, "{proxy}");
    assert!(
        failures.iter().all(|f| f.contains("Congratulations")),
        "only NPM's default site while the host was offline: {failures:?}"
    );
    assert!(answers.iter().all(|a| a.ends_with("1.1.0")));
    assert_eq!(after.phase, Some(Phase::RolledBack));

    // The same setting on the tag that serves: put back at once, and the Stage does not claim
    // to be serving as asked.
    let stop = Arc::new(AtomicBool::new(false));
    let load = client_loop(port, stop.clone());
    manifests_with(&m, "1.1.0", bad, "");
    let refused = wait_for(&db, "web", "reported the rejected settings", |s| {
        conditions::ready(&s.conditions).is_some_and(|c| c.reason == "NginxConfigError")
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (_, failures) = load.await.unwrap();
    assert!(
        failures.iter().all(|f| f.contains("Congratulations")),
        "{failures:?}"
    );
    let ready = conditions::ready(&refused.conditions).unwrap();
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("last proxy settings nginx accepted"),
        "{}",
        ready.message
    );
    settled("after the settings were put back", double.writes()).await;

    // Every Stage removed from the manifests: their proxy hosts go, foreign ones stay. The route
    // goes before the container: clients get NPM's default site, never a dead upstream (502).
    let stop = Arc::new(AtomicBool::new(false));
    let load = client_loop(port, stop.clone());
    std::fs::remove_file(m.join("all.yaml")).unwrap();
    for _ in 0..300 {
        if double
            .hosts()
            .iter()
            .all(|h| h["meta"]["managed_by"] != "tiny-forge")
            && rt
                .list_managed(&[(labels::INSTANCE, NS)])
                .await
                .unwrap()
                .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (_, failures) = load.await.unwrap();
    assert!(
        failures.iter().all(|f| f.contains("Congratulations")),
        "removed route first: {failures:?}"
    );
    assert!(
        rt.list_managed(&[(labels::INSTANCE, NS)])
            .await
            .unwrap()
            .is_empty(),
        "the containers of removed Stages go too"
    );
    let ours: Vec<_> = double
        .hosts()
        .into_iter()
        .filter(|h| h["meta"]["managed_by"] == "tiny-forge")
        .collect();
    assert!(
        ours.is_empty(),
        "proxy hosts of removed Stages are deleted: {ours:?}"
    );
    assert!(
        double.host(foreign).is_some(),
        "the foreign host is left alone"
    );

    stop_ctl.send(()).unwrap();
    controller.await.unwrap().unwrap();
    for c in rt.list_managed(&[(labels::INSTANCE, NS)]).await.unwrap() {
        rt.remove(&c.id).await.unwrap();
    }
    double.stop().await;
}

/// A Stage file removed and written back within its grace period (a checkout, an editor): its
/// container and proxy host stay, no request is dropped. The grace counts from the removal,
/// whatever cleanup ran just before it — with the resync as long as the grace, cleanup passes
/// come once per grace period. Removed for good: route first, then the container.
#[tokio::test]
async fn a_stage_file_removed_and_restored_within_its_grace_keeps_serving() {
    const NS2: &str = "t-proxy-grace";
    let Some(rt) = docker().await else { return };
    let Some(double) = double_with_nginx().await else {
        return;
    };
    let port = double.http_port();
    for c in rt.list_managed(&[(labels::INSTANCE, NS2)]).await.unwrap() {
        rt.remove(&c.id).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir(&m).unwrap();
    write(&m, "project.yaml", &project(NS2));
    write(&m, "stage.yaml", &stage(NS2, "1.0.0", ""));
    let state = dir.path().join("state");
    let mut opts = Options::new(m.clone(), state.clone());
    // The grace is the longer of 5 s and the resync.
    opts.resync = Duration::from_secs(5);
    opts.instance = NS2.into();
    opts.npm = Some(NpmConfig {
        url: double.url.clone(),
        email: "admin@example.com".into(),
        password: "changeme".into(),
        timeout: Duration::from_secs(5),
    });
    let (stop_ctl, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(standalone::run(opts, async {
        let _ = stopped.await;
    }));
    while !state.join("state.db").exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let db = StateDb::open(&state).unwrap();
    let first = wait_in(&db, NS2, "web", "served 1.0.0", serving("1.0.0")).await;
    let container = first.current.as_ref().unwrap().container_id.clone();
    let host = first.proxy.as_ref().unwrap().host_id;
    // Let a cleanup pass or two run while the Stage exists.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = client_loop(port, stop.clone());
    let text = std::fs::read_to_string(m.join("stage.yaml")).unwrap();
    std::fs::remove_file(m.join("stage.yaml")).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    write(&m, "stage.yaml", &text);
    // Past the end of the grace had it not been restored.
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let (answers, failures) = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} dropped of {}: {:?}",
        failures.len(),
        failures.len() + answers.len(),
        &failures[..failures.len().min(5)]
    );
    let back = wait_in(&db, NS2, "web", "served 1.0.0 again", serving("1.0.0")).await;
    assert_eq!(
        back.current.unwrap().container_id,
        container,
        "same container"
    );
    assert_eq!(back.proxy.unwrap().host_id, host, "same proxy host");
    assert!(double.host(host).is_some());
    eprintln!(
        "removed and restored: {} requests, 0 dropped",
        answers.len()
    );

    // Removed for good: the route goes first (NPM's default site answers), then the container;
    // never a request to a container that is gone (502).
    let stop = Arc::new(AtomicBool::new(false));
    let load = client_loop(port, stop.clone());
    std::fs::remove_file(m.join("stage.yaml")).unwrap();
    for _ in 0..300 {
        if double.host(host).is_none()
            && rt
                .list_managed(&[(labels::INSTANCE, NS2)])
                .await
                .unwrap()
                .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (answers, failures) = load.await.unwrap();
    assert!(double.host(host).is_none(), "the proxy host is removed");
    assert!(
        rt.list_managed(&[(labels::INSTANCE, NS2)])
            .await
            .unwrap()
            .is_empty(),
        "the container is removed"
    );
    assert!(
        failures.iter().all(|f| f.contains("Congratulations")),
        "route first, then the container: {failures:?}"
    );
    assert!(!answers.is_empty());

    stop_ctl.send(()).unwrap();
    controller.await.unwrap().unwrap();
    double.stop().await;
}
