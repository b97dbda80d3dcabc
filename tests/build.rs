//! Build on push, end to end on the real parts: a Git repository made here and served over
//! `git daemon` (git://) and file://, the real Docker engine, the standalone controller with its
//! webhook listener, signed GitHub `push` deliveries in GitHub's own payload shape. Dockerfiles
//! build `FROM tiny-forge-demo:1.0.0` (nothing can be pulled) and set `DEMO_VERSION`, which the
//! demo app answers on `/`: the build's output is visible over HTTP.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use hmac::{KeyInit, Mac};
use tiny_forge::api::{Phase, ProjectStatus, StageStatus, labels};
use tiny_forge::engine::Runtime;
use tiny_forge::engine::build::{BUILD_READY, BuildState};
use tiny_forge::modes::standalone;
use tiny_forge::store::StateDb;
use tiny_forge::store::builds::BuildRecord;
use tiny_forge::testing::{PATIENCE, eventually};

const HOOK_SECRET: &str = "gh-build-hook-77a1";
const TOKEN: &str = "tok-NEVER-SHOWN-5e1f0c";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git CLI");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A repository made here: `commit` writes files (None: removes) and returns the commit id.
struct Repo {
    dir: PathBuf,
}

impl Repo {
    fn new(dir: PathBuf) -> Repo {
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        Repo { dir }
    }

    fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        for (name, content) in files {
            let path = self.dir.join(name);
            match content {
                Some(c) => std::fs::write(&path, c).unwrap(),
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "--allow-empty", "-m", message]);
        git(&self.dir, &["rev-parse", "HEAD"])
    }
}

/// `git daemon` on 127.0.0.1, stopped by its pid when dropped.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(base: &Path) -> Daemon {
        let port = free_port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                &base.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon");
        let daemon = Daemon { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return daemon;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("git daemon never listened on {port}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sign(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// GitHub's `push` example, rewritten for this repository, branch and commit.
fn push_payload(repository: &str, branch: &str, sha: &str) -> Vec<u8> {
    let mut p: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/webhooks/github/push.json").unwrap(),
    )
    .unwrap();
    p["ref"] = format!("refs/heads/{branch}").into();
    p["after"] = sha.into();
    p["deleted"] = false.into();
    p["created"] = false.into();
    p["repository"]["full_name"] = repository.into();
    p["repository"]["name"] = repository.rsplit('/').next().unwrap().into();
    serde_json::to_vec(&p).unwrap()
}

async fn deliver(url: &str, delivery: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{url}/github"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sign(body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn builds(state: &Path, ns: &str, project: &str) -> Vec<BuildRecord> {
    StateDb::open(state)
        .unwrap()
        .builds(Some((ns, project)))
        .unwrap()
}

async fn build_ends(state: &Path, ns: &str, project: &str, sha: &str) -> BuildRecord {
    let sha = sha.to_string();
    eventually(&format!("build of {sha} ended"), PATIENCE, || {
        let all = builds(state, ns, project);
        let found = all
            .iter()
            .find(|b| b.sha == sha && b.state.is_terminal())
            .cloned();
        async move { found.ok_or(all) }
    })
    .await
}

fn project_status(state: &Path, ns: &str, name: &str) -> ProjectStatus {
    StateDb::open(state)
        .unwrap()
        .project_status(ns, name)
        .unwrap()
}

fn build_ready(state: &Path, ns: &str, name: &str) -> Option<(String, String, String)> {
    project_status(state, ns, name)
        .conditions
        .into_iter()
        .find(|c| c.type_ == BUILD_READY)
        .map(|c| (c.status, c.reason, c.message))
}

async fn wait_stage(state: &Path, ns: &str, done: impl Fn(&StageStatus) -> bool) -> StageStatus {
    tiny_forge::testing::stage_reaches(state, ns, "dev", done).await
}

/// What the Stage's container answers on `/`.
async fn serving<R: Runtime>(rt: &R, ns: &str) -> String {
    let containers = rt.list_managed(&[(labels::INSTANCE, ns)]).await.unwrap();
    assert_eq!(containers.len(), 1, "{containers:?}");
    let ip = ip_of(rt, &containers[0].id).await;
    get(&format!("http://{ip}:8080/")).await.unwrap()
}

fn manifests(dir: &Path, ns: &str, image: &str, build: &str) -> PathBuf {
    let m = dir.join("m");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("app.yaml"),
        format!(
            "apiVersion: tinyforge.dev/v1alpha1
kind: Project
metadata: {{name: web, namespace: {ns}}}
spec:
  image: {image}
  container: {{port: 8080, stopTimeoutSeconds: 1}}
  healthCheck: {{type: http, path: /healthz, intervalSeconds: 1, startPeriodSeconds: 3}}
  gitSource: {{provider: github, repository: octo/web}}
  webhook: {{secretRef: {{name: github, key: hmac}}}}
  build: {build}
---
apiVersion: tinyforge.dev/v1alpha1
kind: Stage
metadata: {{name: dev, namespace: {ns}}}
spec: {{projectRef: web, autoDeploy: true, tagPolicy: {{glob: 'sha-*'}}}}
"
        ),
    )
    .unwrap();
    m
}

fn secrets_dir(dir: &Path) -> PathBuf {
    let s = dir.join("secrets");
    std::fs::create_dir_all(s.join("github")).unwrap();
    std::fs::write(s.join("github/hmac"), HOOK_SECRET).unwrap();
    std::fs::create_dir_all(s.join("git")).unwrap();
    std::fs::write(s.join("git/token"), TOKEN).unwrap();
    s
}

const V1: &str = "FROM tiny-forge-demo:1.0.0\nENV DEMO_VERSION=built-one\n";
const V2: &str = "FROM tiny-forge-demo:1.0.0\nENV DEMO_VERSION=built-two\n";
const V3: &str = "FROM tiny-forge-demo:1.0.0\nENV DEMO_VERSION=built-three\n";
/// Exits 1: nothing listens on port 9.
const FAILS: &str =
    "FROM tiny-forge-demo:1.0.0\nRUN [\"/tiny-forge-demo\", \"check\", \"http://127.0.0.1:9/\"]\n";
/// The demo server never exits: the build runs until stopped.
const HANGS: &str = "FROM tiny-forge-demo:1.0.0\nRUN [\"/tiny-forge-demo\"]\n";

async fn cleanup<R: Runtime>(rt: &R, ns: &str) {
    for c in rt.list_managed(&[(labels::INSTANCE, ns)]).await.unwrap() {
        rt.remove(&c.id).await.unwrap();
    }
}

#[tokio::test]
async fn a_signed_github_push_is_built_and_deployed_and_failures_leave_what_serves() {
    let Some(rt) = docker().await else { return };
    let ns = "t-build-push";
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    let repo = Repo::new(served.join("web.git"));
    let one = repo.commit(&[("Dockerfile", Some(V1))], "one");
    let daemon = Daemon::start(&served);
    let image = format!("tf-build/{ns}");
    let m = manifests(
        dir.path(),
        ns,
        &image,
        &format!(
            "{{repository: 'git://127.0.0.1:{}/web.git', credentialsRef: {{name: git, key: token}}}}",
            daemon.port
        ),
    );
    let state = dir.path().join("state");
    let port = free_port();
    let mut opts = options_with_webhooks(m, state.clone(), ns, port);
    opts.secrets_dir = Some(secrets_dir(dir.path()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(standalone::run(opts, async {
        let _ = stopped.await;
    }));
    let url = url_when_up(&state, port).await;
    wait_stage(&state, ns, |s| s.phase == Some(Phase::Pending)).await;

    // A push to main: built at that commit, recorded with source `build`, deployed.
    let body = push_payload("octo/web", "main", &one);
    let (code, answer) = deliver(&url, "d-1", &body).await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["builds"].as_array().unwrap().len(), 1, "{answer}");
    let tag1 = format!("sha-{}", &one[..7]);
    let deployed = wait_stage(&state, ns, |s| {
        s.phase == Some(Phase::Healthy) && s.current.as_ref().is_some_and(|c| c.tag == tag1)
    })
    .await;
    assert_eq!(deployed.latest.as_ref().unwrap().source, "build");
    assert_eq!(serving(&rt, ns).await, "tiny-forge-demo built-one\n");
    let first = build_ends(&state, ns, "web", &one).await;
    assert_eq!(first.state, BuildState::Succeeded);
    assert_eq!(
        first.image.as_deref(),
        Some(format!("{image}:{tag1}").as_str())
    );
    assert!(first.fetch_ms.is_some() && first.build_ms.is_some());
    let labels = Command::new("docker")
        .args(["image", "inspect", "--format", "{{json .Config.Labels}}"])
        .arg(format!("{image}:{tag1}"))
        .output()
        .unwrap();
    let labels: serde_json::Value = serde_json::from_slice(&labels.stdout).unwrap();
    assert_eq!(labels["org.opencontainers.image.revision"], one.as_str());
    assert_eq!(
        labels["org.opencontainers.image.source"],
        format!("git://127.0.0.1:{}/web.git", daemon.port)
    );
    assert!(labels["org.opencontainers.image.created"].is_string());
    assert_eq!(
        build_ready(&state, ns, "web").map(|c| (c.0, c.1)),
        Some(("True".into(), "Built".into()))
    );
    let shown = project_status(&state, ns, "web").builds;
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(
        (
            shown[0].id,
            shown[0].state.as_str(),
            shown[0].commit.as_str()
        ),
        (first.id, "Succeeded", one.as_str())
    );
    assert_eq!(shown[0].trigger, "github");

    // The redelivery, the same commit under a new delivery id, and a push to another branch
    // build nothing.
    let (code, answer) = deliver(&url, "d-1", &body).await;
    assert_eq!(
        (code, &answer),
        (200, &serde_json::json!({"duplicate": true}))
    );
    let (code, answer) = deliver(&url, "d-1-again", &body).await;
    assert_eq!(code, 200, "{answer}");
    assert!(
        answer["ignored"].as_str().unwrap().contains("already"),
        "{answer}"
    );
    git(&repo.dir, &["checkout", "-q", "-b", "feature"]);
    let feature = repo.commit(&[("Dockerfile", Some(V2))], "feature");
    git(&repo.dir, &["checkout", "-q", "main"]);
    let (code, answer) = deliver(
        &url,
        "d-feature",
        &push_payload("octo/web", "feature", &feature),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("default branch"),
        "{answer}"
    );
    assert_eq!(builds(&state, ns, "web").len(), 1);

    // A second commit on main: fetched into the same cache, built, deployed.
    let two = repo.commit(&[("Dockerfile", Some(V2))], "two");
    let (code, answer) = deliver(&url, "d-2", &push_payload("octo/web", "main", &two)).await;
    assert_eq!(code, 202, "{answer}");
    let tag2 = format!("sha-{}", &two[..7]);
    wait_stage(&state, ns, |s| {
        s.phase == Some(Phase::Healthy) && s.current.as_ref().is_some_and(|c| c.tag == tag2)
    })
    .await;
    assert_eq!(serving(&rt, ns).await, "tiny-forge-demo built-two\n");

    // While builds fail below, a client keeps asking the serving container: no request fails.
    let containers = rt.list_managed(&[(labels::INSTANCE, ns)]).await.unwrap();
    let target = format!("http://{}:8080/", ip_of(&rt, &containers[0].id).await);
    let (quit, mut quitting) = tokio::sync::oneshot::channel::<()>();
    let client = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, Vec::new());
        loop {
            match get(&target).await {
                Ok(body) if body == "tiny-forge-demo built-two\n" => ok += 1,
                other => failed.push(other),
            }
            if quitting.try_recv().is_ok() {
                return (ok, failed);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });

    // A failing step: nothing that serves changes, the Project says why, no retry.
    let broken = repo.commit(&[("Dockerfile", Some(FAILS))], "broken");
    let before = StateDb::open(&state)
        .unwrap()
        .stage_status(ns, "dev")
        .unwrap();
    let (code, _) = deliver(&url, "d-3", &push_payload("octo/web", "main", &broken)).await;
    assert_eq!(code, 202);
    let failed = build_ends(&state, ns, "web", &broken).await;
    assert_eq!(failed.state, BuildState::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or("")
            .contains("non-zero code"),
        "{failed:?}"
    );
    let (status, reason, message) = build_ready(&state, ns, "web").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "BuildFailed"));
    assert!(message.contains(&broken[..7]), "{message}");
    assert_eq!(serving(&rt, ns).await, "tiny-forge-demo built-two\n");
    let after = StateDb::open(&state)
        .unwrap()
        .stage_status(ns, "dev")
        .unwrap();
    assert_eq!(
        after.latest, before.latest,
        "a failed build records nothing"
    );
    assert_eq!(after.current, before.current);
    let (code, answer) = deliver(
        &url,
        "d-3-again",
        &push_payload("octo/web", "main", &broken),
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        answer["ignored"].as_str().unwrap().contains("Failed"),
        "{answer}"
    );

    // No Dockerfile in the commit: its own reason.
    let missing = repo.commit(
        &[("Dockerfile", None), ("README", Some("x\n"))],
        "no dockerfile",
    );
    deliver(&url, "d-4", &push_payload("octo/web", "main", &missing)).await;
    let gone = build_ends(&state, ns, "web", &missing).await;
    assert_eq!(gone.state, BuildState::Failed);
    assert_eq!(
        build_ready(&state, ns, "web").unwrap().1,
        "DockerfileMissing"
    );
    assert_eq!(serving(&rt, ns).await, "tiny-forge-demo built-two\n");

    // A commit the repository does not have: the fetch fails, with its own reason.
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    deliver(
        &url,
        "d-unknown",
        &push_payload("octo/web", "main", unknown),
    )
    .await;
    let lost = build_ends(&state, ns, "web", unknown).await;
    assert_eq!(lost.state, BuildState::Failed);
    assert_eq!(build_ready(&state, ns, "web").unwrap().1, "FetchFailed");
    quit.send(()).unwrap();
    let (ok, failed) = client.await.unwrap();
    assert!(
        ok > 0 && failed.is_empty(),
        "{ok} answered, failed: {failed:?}"
    );

    // Two pushes in quick succession: the running build is stopped, only the second deploys.
    let slow = repo.commit(&[("Dockerfile", Some(HANGS))], "slow");
    let (code, _) = deliver(&url, "d-5", &push_payload("octo/web", "main", &slow)).await;
    assert_eq!(code, 202);
    eventually("the slow build runs", PATIENCE, || {
        let all = builds(&state, ns, "web");
        let running = all
            .iter()
            .any(|b| b.sha == slow && b.state == BuildState::Building);
        async move { if running { Ok(()) } else { Err(all) } }
    })
    .await;
    let three = repo.commit(&[("Dockerfile", Some(V3))], "three");
    let (code, _) = deliver(&url, "d-6", &push_payload("octo/web", "main", &three)).await;
    assert_eq!(code, 202);
    let tag3 = format!("sha-{}", &three[..7]);
    wait_stage(&state, ns, |s| {
        s.phase == Some(Phase::Healthy) && s.current.as_ref().is_some_and(|c| c.tag == tag3)
    })
    .await;
    assert_eq!(serving(&rt, ns).await, "tiny-forge-demo built-three\n");
    let stopped = build_ends(&state, ns, "web", &slow).await;
    assert_eq!(stopped.state, BuildState::Cancelled);
    assert!(
        stopped.error.as_deref().unwrap().contains("superseded"),
        "{stopped:?}"
    );
    let shown = project_status(&state, ns, "web").builds;
    assert_eq!(shown.len(), 5, "at most 5 in status: {shown:?}");
    assert_eq!(shown[0].state, "Succeeded", "{shown:?}");
    assert_eq!(shown[1].state, "Cancelled", "{shown:?}");
    let history = StateDb::open(&state)
        .unwrap()
        .stage_status(ns, "dev")
        .unwrap()
        .history;
    assert!(
        !history.iter().any(|h| h.tag.contains(&slow[..7])),
        "the stopped build was never deployed: {history:?}"
    );

    // What people look at: `builds`, `logs build`, the metrics; the token is nowhere.
    let bin = env!("CARGO_BIN_EXE_tiny-forge");
    let table = Command::new(bin)
        .args(["builds", "web", "-n", ns, "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert_eq!(table.lines().count(), 8, "{table}");
    assert!(
        table.contains("Succeeded") && table.contains("Failed"),
        "{table}"
    );
    let log = Command::new(bin)
        .args(["logs", "build", "web", "-f", "-n", ns, "--state-dir"])
        .arg(&state)
        .arg(first.id.to_string())
        .output()
        .unwrap();
    let log = String::from_utf8(log.stdout).unwrap();
    assert!(
        log.contains("DEMO_VERSION=built-one") && log.contains("Succeeded"),
        "{log}"
    );
    let metrics = get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"tiny_forge_builds_total{outcome="Succeeded"} 3"#)
            && metrics.contains(r#"tiny_forge_builds_total{outcome="Cancelled"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tiny_forge_builds_total{outcome="Failed"} 3"#),
        "{metrics}"
    );
    let mut everything = table;
    for b in builds(&state, ns, "web") {
        everything.push_str(
            &std::fs::read_to_string(state.join(format!("builds/{ns}/web/logs/{}.log", b.id)))
                .unwrap_or_default(),
        );
    }
    everything.push_str(&serde_json::to_string(&project_status(&state, ns, "web")).unwrap());
    everything.push_str(
        &serde_json::to_string(
            &StateDb::open(&state)
                .unwrap()
                .stage_status(ns, "dev")
                .unwrap(),
        )
        .unwrap(),
    );
    assert!(!everything.contains(TOKEN));

    stop.send(()).unwrap();
    controller.await.unwrap().unwrap();
    cleanup(&rt, ns).await;
    drop(daemon);
}

/// The controller as a process of its own, its log in a file, stopped by its pid.
struct Controller {
    child: Child,
}

impl Controller {
    fn start(
        m: &Path,
        state: &Path,
        secrets: &Path,
        ns: &str,
        port: u16,
        log: &Path,
    ) -> Controller {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tiny-forge"))
            .args(["run", "--resync", "1s", "--instance", ns, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--manifests")
            .arg(m)
            .arg("--state-dir")
            .arg(state)
            .arg("--secrets-dir")
            .arg(secrets)
            .env("RUST_LOG", "debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Controller { child }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_build_past_its_timeout_is_timed_out_and_one_killed_mid_build_runs_once_more() {
    let Some(rt) = docker().await else { return };
    let ns = "t-build-timeout";
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new(dir.path().join("repo"));
    std::fs::create_dir_all(repo.dir.join("app")).unwrap();
    let hangs = repo.commit(&[("app/Dockerfile", Some(HANGS))], "hangs");
    let image = format!("tf-build/{ns}");
    let m = manifests(
        dir.path(),
        ns,
        &image,
        &format!(
            "{{repository: 'file://{}', branches: [main], context: app, timeoutSeconds: 5, \
             credentialsRef: {{name: git, key: token}}}}",
            repo.dir.display()
        ),
    );
    let state = dir.path().join("state");
    let secrets = secrets_dir(dir.path());
    let log = dir.path().join("controller.log");
    let port = free_port();
    let first = Controller::start(&m, &state, &secrets, ns, port, &log);
    url_when_up(&state, port).await;
    wait_stage(&state, ns, |s| s.phase == Some(Phase::Pending)).await;

    // By hand, at the branch head; SIGKILL the controller while it builds.
    let out = Command::new(env!("CARGO_BIN_EXE_tiny-forge"))
        .args(["build", "web", "-n", ns, "--state-dir"])
        .arg(&state)
        .arg("--secrets-dir")
        .arg(&secrets)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    eventually("the build is running", PATIENCE, || {
        let all = builds(&state, ns, "web");
        async move {
            if all.iter().any(|b| b.state == BuildState::Building) {
                Ok(())
            } else {
                Err(all)
            }
        }
    })
    .await;
    drop(first);

    // After a restart: reported interrupted, run once more, stopped at its timeout.
    let port = free_port();
    let _second = Controller::start(&m, &state, &secrets, ns, port, &log);
    let retry = eventually("the build runs again", PATIENCE, || {
        let all = builds(&state, ns, "web");
        let running = all
            .iter()
            .find(|b| b.trigger == "restart" && b.state == BuildState::Building)
            .cloned();
        async move { running.ok_or(all) }
    })
    .await;
    // Followed while it runs: the command ends with the build.
    let followed = Command::new(env!("CARGO_BIN_EXE_tiny-forge"))
        .args(["logs", "build", "web", "-f", "-n", ns, "--state-dir"])
        .arg(&state)
        .arg(retry.id.to_string())
        .output()
        .unwrap();
    let followed = String::from_utf8(followed.stdout).unwrap();
    assert!(
        followed.contains("longer than 5s") && followed.contains("TimedOut"),
        "{followed}"
    );
    let again = eventually("the retried build ended", PATIENCE, || {
        let all = builds(&state, ns, "web");
        async move {
            match all
                .iter()
                .find(|b| b.trigger == "restart" && b.state.is_terminal())
            {
                Some(b) => Ok(b.clone()),
                None => Err(all),
            }
        }
    })
    .await;
    assert_eq!(again.state, BuildState::TimedOut, "{again:?}");
    assert_eq!(again.sha, hangs);
    let all = builds(&state, ns, "web");
    assert_eq!(all.len(), 2, "{all:?}");
    let killed = &all[1];
    assert_eq!(
        (killed.trigger.as_str(), killed.state),
        ("cli", BuildState::Cancelled)
    );
    assert!(
        killed.error.as_deref().unwrap().contains("interrupted"),
        "{killed:?}"
    );
    assert_eq!(build_ready(&state, ns, "web").unwrap().1, "BuildTimedOut");
    let status = StateDb::open(&state)
        .unwrap()
        .stage_status(ns, "dev")
        .unwrap();
    assert!(status.latest.is_none(), "nothing recorded: {status:?}");
    assert!(
        rt.list_managed(&[(labels::INSTANCE, ns)])
            .await
            .unwrap()
            .is_empty()
    );

    // The token went to git, and nowhere a person or a log collector reads.
    let mut everything = std::fs::read_to_string(&log).unwrap();
    assert!(everything.contains("build finished"), "{everything}");
    for b in &all {
        everything.push_str(
            &std::fs::read_to_string(state.join(format!("builds/{ns}/web/logs/{}.log", b.id)))
                .unwrap_or_default(),
        );
    }
    everything.push_str(&serde_json::to_string(&project_status(&state, ns, "web")).unwrap());
    assert!(!everything.contains(TOKEN));
    cleanup(&rt, ns).await;
}
