//! Traffic really flowing: a client loops requests through a real nginx (driven by the NPM test
//! double, as NPM drives its nginx) to the Stage's containers on the real Docker engine, while
//! the Stage rolls forward and rolls back. Nothing may be dropped. Also: a domain owned by
//! someone else, NPM down, and cleanup.

mod common;
mod npm;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use npm::{DoubleOptions, NginxPlane, NpmDouble};
use tiny_forge::api::{Phase, StageStatus, labels};
use tiny_forge::engine::{Runtime, conditions};
use tiny_forge::proxy::npm::NpmConfig;
use tiny_forge::standalone::{self, Options};
use tiny_forge::store::StateDb;

const NS: &str = "t-proxy";

fn manifests(dir: &Path, tag: &str, extra: &str) {
    let text = format!(
        "apiVersion: tinyforge.dev/v1alpha1
kind: Project
metadata: {{name: demo, namespace: {NS}}}
spec:
  image: tiny-forge-demo
  container: {{port: 8080, stopTimeoutSeconds: 2}}
  healthCheck: {{type: http, path: /healthz, intervalSeconds: 1, retries: 2, startPeriodSeconds: 2}}
---
apiVersion: tinyforge.dev/v1alpha1
kind: Stage
metadata: {{name: web, namespace: {NS}}}
spec:
  projectRef: demo
  pinnedTag: \"{tag}\"
  domains: [demo.test]
  proxy: {{drainSeconds: 1}}
{extra}"
    );
    let tmp = dir.join(".all.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join("all.yaml")).unwrap();
}

async fn wait_for(
    db: &StateDb,
    stage: &str,
    what: &str,
    done: impl Fn(&StageStatus) -> bool,
) -> StageStatus {
    let mut last = StageStatus::default();
    for _ in 0..300 {
        last = db.stage_status(NS, stage).unwrap();
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

#[tokio::test]
async fn rolls_and_rollbacks_behind_nginx_drop_no_request() {
    let Some(rt) = docker().await else { return };
    let plane = match NginxPlane::start().await {
        Ok(p) => p,
        Err(e) if std::env::var_os("TINY_FORGE_TEST_DOCKER").is_none() => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("nginx is needed for this test: {e}"),
    };
    let double = NpmDouble::start(DoubleOptions {
        nginx: Some(plane),
        ..Default::default()
    })
    .await;
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
    assert_eq!(
        other.phase,
        Some(Phase::Healthy),
        "the container side converges anyway"
    );
    assert_eq!(double.host(foreign).unwrap()["forward_host"], "192.0.2.1");
    assert!(conditions::ready(&other.conditions).unwrap().status == "True");

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

    // Every Stage removed from the manifests: their proxy hosts go, foreign ones stay.
    std::fs::remove_file(m.join("all.yaml")).unwrap();
    for _ in 0..300 {
        if double
            .hosts()
            .iter()
            .all(|h| h["meta"]["managed_by"] != "tiny-forge")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
