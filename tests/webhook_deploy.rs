//! Webhooks end to end on the real Docker engine: a signed GitHub `package` delivery deploys the
//! new tag and its redelivery changes nothing; a SIGKILL right after the 202 loses nothing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use hmac::{KeyInit, Mac};
use tiny_forge::api::{Phase, StageStatus, labels};
use tiny_forge::engine::Runtime;
use tiny_forge::modes::standalone;
use tiny_forge::store::StateDb;

const GITHUB_SECRET: &str = "gh-hook-secret-3c41";

fn docker_tag(from: &str, to: &str) {
    let ok = Command::new("docker")
        .args(["tag", from, to])
        .status()
        .expect("docker CLI")
        .success();
    assert!(ok, "docker tag {from} {to}");
}

fn sign(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(GITHUB_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn wait_for(
    state: &Path,
    ns: &str,
    stage: &str,
    done: impl Fn(&StageStatus) -> bool,
) -> StageStatus {
    let mut last = StageStatus::default();
    for _ in 0..200 {
        if state.join("state.db").exists() {
            last = StateDb::open(state)
                .unwrap()
                .stage_status(ns, stage)
                .unwrap();
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{ns}/{stage} never reached the expected state; last status: {last:#?}");
}

#[tokio::test]
async fn a_signed_github_package_delivery_deploys_and_its_redelivery_changes_nothing() {
    let Some(rt) = docker().await else { return };
    let ns = "t-github";
    docker_tag(
        "tiny-forge-demo:1.1.0",
        "ghcr.io/codertocat/hello-world:1.1.0",
    );
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(secrets.join("github")).unwrap();
    std::fs::write(secrets.join("github/hmac"), GITHUB_SECRET).unwrap();
    std::fs::write(
        manifests.join("app.yaml"),
        format!(
            "apiVersion: tinyforge.dev/v1alpha1
kind: Project
metadata: {{name: hello, namespace: {ns}}}
spec:
  image: ghcr.io/codertocat/hello-world
  container: {{port: 8080, stopTimeoutSeconds: 2}}
  healthCheck: {{type: http, path: /healthz, intervalSeconds: 1, startPeriodSeconds: 3}}
  webhook: {{secretRef: {{name: github, key: hmac}}}}
---
apiVersion: tinyforge.dev/v1alpha1
kind: Stage
metadata: {{name: dev, namespace: {ns}}}
spec: {{projectRef: hello, autoDeploy: true, tagPolicy: {{semver: '>=1.0.0'}}}}
"
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let mut opts = options_with_webhooks(manifests.clone(), state.clone(), ns, port);
    opts.secrets_dir = Some(secrets);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(standalone::run(opts, async {
        let _ = stopped.await;
    }));
    let url = url_when_up(&state, port).await;
    wait_for(&state, ns, "dev", |s| s.phase == Some(Phase::Pending)).await;

    // GitHub's published `package` example, as sent for a tagged container version.
    let mut payload: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/webhooks/github/package.published.docker.json")
            .unwrap(),
    )
    .unwrap();
    payload["package"]["package_version"]["container_metadata"]["tag"]["name"] = "1.1.0".into();
    let body = serde_json::to_vec(&payload).unwrap();
    let send = || {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{url}/github"))
            .header("content-type", "application/json")
            .header("x-github-event", "package")
            .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
            .header("x-hub-signature-256", sign(&body))
            .body(body.clone())
            .send()
    };
    let r = send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
    let deployed = wait_for(&state, ns, "dev", |s| {
        s.phase == Some(Phase::Healthy) && s.current.as_ref().is_some_and(|c| c.tag == "1.1.0")
    })
    .await;
    assert_eq!(deployed.latest.as_ref().unwrap().source, "github");
    let containers = rt.list_managed(&[(labels::INSTANCE, ns)]).await.unwrap();
    assert_eq!(containers.len(), 1);

    let again = send().await.unwrap();
    assert_eq!(again.status().as_u16(), 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&again.text().await.unwrap()).unwrap(),
        serde_json::json!({"duplicate": true})
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = StateDb::open(&state)
        .unwrap()
        .stage_status(ns, "dev")
        .unwrap();
    assert_eq!(
        after.history.len(),
        deployed.history.len(),
        "no second deploy"
    );
    assert_eq!(
        rt.list_managed(&[(labels::INSTANCE, ns)]).await.unwrap(),
        containers
    );

    stop.send(()).unwrap();
    controller.await.unwrap().unwrap();
    for c in rt.list_managed(&[(labels::INSTANCE, ns)]).await.unwrap() {
        rt.remove(&c.id).await.unwrap();
    }
}

#[tokio::test]
async fn sigkill_right_after_the_202_loses_nothing() {
    let Some(rt) = docker().await else { return };
    let ns = "t-durable";
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("app.yaml"),
        format!(
            "apiVersion: tinyforge.dev/v1alpha1
kind: Project
metadata: {{name: demo, namespace: {ns}}}
spec:
  image: tiny-forge-demo
  container: {{port: 8080, stopTimeoutSeconds: 2}}
  healthCheck: {{type: http, path: /healthz, intervalSeconds: 1, startPeriodSeconds: 3}}
---
apiVersion: tinyforge.dev/v1alpha1
kind: Stage
metadata: {{name: web, namespace: {ns}}}
spec: {{projectRef: demo, autoDeploy: true}}
"
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let start = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tiny-forge"))
            .args(["run", "--resync", "1s", "--instance", ns, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .arg("--manifests")
            .arg(&manifests)
            .arg("--state-dir")
            .arg(&state)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let mut child = start(&[]);
    let url = url_when_up(&state, port).await;
    // `webhook url` prints the URL of the listener this controller started (its --listen).
    assert_eq!(webhook_url(&state), url);
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"image":"tiny-forge-demo:1.1.0"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    child.kill().unwrap();
    child.wait().unwrap();
    let latest = StateDb::open(&state)
        .unwrap()
        .stage_status(ns, "web")
        .unwrap()
        .latest;
    assert_eq!(
        latest.map(|l| l.tag).as_deref(),
        Some("1.1.0"),
        "on disk before the 202"
    );

    let mut child = start(&["--public-url", "https://forge.example.com/"]);
    let status = wait_for(&state, ns, "web", |s| {
        s.phase == Some(Phase::Healthy) && s.current.as_ref().is_some_and(|c| c.tag == "1.1.0")
    })
    .await;
    assert_eq!(status.latest.unwrap().source, "generic");
    // Behind a TLS proxy: the URL senders are given is the public one.
    let path = url.split_once("/api/webhook/").unwrap().1;
    assert_eq!(
        webhook_url(&state),
        format!("https://forge.example.com/api/webhook/{path}")
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let containers = rt.list_managed(&[(labels::INSTANCE, ns)]).await.unwrap();
    assert_eq!(containers.len(), 1, "{containers:?}");
    for c in containers {
        rt.remove(&c.id).await.unwrap();
    }
}

/// What `tiny-forge webhook url` prints for this state directory.
fn webhook_url(state: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tiny-forge"))
        .args(["webhook", "url", "--state-dir"])
        .arg(state)
        .env_remove("TINY_FORGE_PUBLIC_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
