//! SIGKILL in the middle of a deploy, then start again: the Stage converges with exactly one
//! container and no orphan. Runs the real binary against the real Docker engine.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tiny_forge::api::{Phase, StageStatus, labels};
use tiny_forge::engine::Runtime;
use tiny_forge::store::StateDb;

const NS: &str = "t-crash";

fn write_manifests(dir: &Path, tag: &str) {
    // The app takes 3 s to listen: the deploy spends that long waiting for health, so the
    // kill lands inside it (after create, after start, mid-health) depending on the delay.
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
spec: {{projectRef: demo, pinnedTag: \"{tag}\"}}
"
    );
    // Written whole then renamed, as editors and git do.
    let tmp = dir.join(".all.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join("all.yaml")).unwrap();
}

fn start(manifests: &Path, state: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tiny-forge"))
        .args([
            "run",
            "--no-webhooks",
            "--resync",
            "1s",
            "--instance",
            NS,
            "--manifests",
        ])
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
    tiny_forge::testing::stage_reaches(state, NS, "web", done).await
}

fn healthy_on(tag: &'static str) -> impl Fn(&StageStatus) -> bool {
    move |s| s.phase == Some(Phase::Healthy) && s.current.as_ref().is_some_and(|c| c.tag == tag)
}

#[tokio::test]
async fn sigkill_mid_deploy_converges_on_restart_with_no_duplicate_and_no_orphan() {
    let Some(rt) = docker().await else { return };
    for c in rt.list_managed(&[(labels::INSTANCE, NS)]).await.unwrap() {
        rt.remove(&c.id).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    let state = dir.path().join("state");
    std::fs::create_dir(&manifests).unwrap();
    write_manifests(&manifests, "1.0.0");

    let mut child = start(&manifests, &state);
    wait_for(&state, healthy_on("1.0.0")).await;

    // Kill at several points of the deploy: as soon as it starts, and later into the wait.
    let mut tag = "1.0.0";
    for delay_ms in [0u64, 500, 1500, 2500] {
        tag = if tag == "1.0.0" { "1.1.0" } else { "1.0.0" };
        write_manifests(&manifests, tag);
        wait_for(&state, |s| s.phase == Some(Phase::Deploying)).await;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let at_kill = StateDb::open(&state)
            .unwrap()
            .stage_status(NS, "web")
            .unwrap();
        assert_eq!(
            at_kill.phase,
            Some(Phase::Deploying),
            "the kill at +{delay_ms}ms must land mid-deploy"
        );
        let left = rt.list_managed(&[(labels::INSTANCE, NS)]).await.unwrap();
        assert!(
            left.len() <= 2,
            "at most the old and the new container: {left:?}"
        );

        child = start(&manifests, &state);
        let status = wait_for(&state, healthy_on(tag)).await;
        // Retiring the old container is the last step; give the pass a moment to finish it.
        let mut containers = Vec::new();
        for _ in 0..100 {
            containers = rt.list_managed(&[(labels::INSTANCE, NS)]).await.unwrap();
            if containers.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            containers.len(),
            1,
            "after kill at +{delay_ms}ms: {containers:?}"
        );
        let c = &containers[0];
        assert!(c.running);
        assert_eq!(c.label(labels::TAG), Some(tag));
        assert_eq!(
            status
                .current
                .as_ref()
                .and_then(|c| c.container_id.as_deref()),
            Some(c.id.as_str())
        );
        let ip = ip_of(&rt, &c.id).await;
        assert_eq!(
            get(&format!("http://{ip}:8080/")).await.unwrap().trim(),
            format!("tiny-forge-demo {tag}")
        );
    }

    // SIGTERM is a graceful stop.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");
    for c in rt.list_managed(&[(labels::INSTANCE, NS)]).await.unwrap() {
        rt.remove(&c.id).await.unwrap();
    }
}
