//! A real CNCF distribution registry (Debian's `docker-registry`) notifies tiny-forge: an image
//! pushed to it with skopeo is deployed, pulled from that registry; a lower version pushed later
//! changes nothing; a delivery with a wrong token is refused; every notification the registry
//! sent was answered 2xx at once (a registry retries anything else and holds later events back).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tiny_forge::api::{Phase, StageStatus, labels};
use tiny_forge::engine::Runtime;
use tiny_forge::modes::standalone;
use tiny_forge::store::StateDb;

const NS: &str = "t-registry";
const TOKEN: &str = "registry-hook-token-5e1f";
/// What the registry answers a manifest HEAD with a stable digest for (see
/// tests/fixtures/webhooks/distribution/registry-queries.txt).
const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Runs the docker CLI (DOCKER_HOST from the environment) and returns its trimmed stdout.
fn docker_cli(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker CLI: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Which of the tools this test needs besides Docker are not installed.
fn missing_tools() -> Vec<&'static str> {
    ["docker-registry", "skopeo"]
        .into_iter()
        .filter(|tool| {
            !Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect()
}

/// A free loopback port and a listener holding it until it is handed to the registry.
fn reserve_port() -> (u16, std::net::TcpListener) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (listener.local_addr().unwrap().port(), listener)
}

fn repository(registry_port: u16) -> String {
    format!("127.0.0.1:{registry_port}/demo/web")
}

/// A `docker-registry serve` child on 127.0.0.1, killed (by its handle) when dropped.
struct Registry {
    child: Child,
    port: u16,
    debug_port: u16,
    log: PathBuf,
}

impl Registry {
    /// Starts a registry on `port` storing under `dir` that notifies `notify_url`, sending
    /// `token` as a bearer token, and waits until it answers.
    /// `port` is held by `reserved` until the registry is spawned: picked long before (image
    /// references carry it), it was once taken by another connection in between.
    async fn start(
        dir: &Path,
        (port, reserved): (u16, std::net::TcpListener),
        notify_url: &str,
        token: &str,
    ) -> Registry {
        let debug_port = free_port();
        let config = dir.join("config.yml");
        // Distribution 2.8 applies `ignore.actions` only when `ignore.mediatypes` is not empty:
        // schema1 manifests (which tiny-forge does not deploy) make the list non-empty, so pulls
        // (among them the deploy's own) are not sent. Blob pushes still are, answered 2xx.
        std::fs::write(
            &config,
            format!(
                "version: 0.1
log:
  level: info
  formatter: text
  accesslog: {{disabled: true}}
storage:
  filesystem: {{rootdirectory: {root}}}
http:
  addr: 127.0.0.1:{port}
  debug: {{addr: 127.0.0.1:{debug_port}}}
notifications:
  endpoints:
    - name: tiny-forge
      url: {notify_url}
      headers:
        Authorization: [Bearer {token}]
      timeout: 1s
      threshold: 5
      backoff: 1s
      ignore:
        mediatypes: [application/vnd.docker.distribution.manifest.v1+prettyjws]
        actions: [pull]
",
                root = dir.join("data").display(),
            ),
        )
        .unwrap();
        let log = dir.join("registry.log");
        let out = std::fs::File::create(&log).unwrap();
        drop(reserved);
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn docker-registry");
        let mut registry = Registry {
            child,
            port,
            debug_port,
            log,
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(exit)) = registry.child.try_wait() {
                panic!(
                    "docker-registry exited during start-up ({exit}):\n{}",
                    registry.log_tail()
                );
            }
            let v2 = http().get(format!("{}/v2/", registry.base())).send().await;
            if v2.is_ok_and(|r| r.status().is_success()) {
                return registry;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "docker-registry did not answer GET /v2/ within 15s:\n{}",
            registry.log_tail()
        );
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The repository as Docker and the Project name it: `127.0.0.1:<port>/demo/web`.
    fn repository(&self) -> String {
        repository(self.port)
    }

    /// The registry's own log lines (access log off), the last 40.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Copies `image` from the Docker engine into `demo/web:<tag>` with skopeo. skopeo's
    /// docker-daemon transport ignores DOCKER_HOST: it is passed as --src-daemon-host.
    async fn push(&self, image: &str, tag: &str) {
        let mut skopeo = tokio::process::Command::new("skopeo");
        skopeo.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ]);
        if let Ok(host) = std::env::var("DOCKER_HOST") {
            skopeo.args(["--src-daemon-host", &host]);
        }
        let out = skopeo
            .arg(format!("docker-daemon:{image}"))
            .arg(format!("docker://{}:{tag}", self.repository()))
            .output()
            .await
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {image} → {}:{tag} failed: {}\nregistry log:\n{}",
            self.repository(),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }

    /// The manifest digest the registry serves for `tag` (HEAD, with the Accept headers that
    /// keep it stable).
    async fn digest(&self, tag: &str) -> String {
        let r = http()
            .head(format!("{}/v2/demo/web/manifests/{tag}", self.base()))
            .header("accept", MANIFEST_ACCEPT)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "HEAD manifest {tag}: {}",
            r.status()
        );
        r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string()
    }

    /// The registry's delivery counters for our endpoint (expvar on the debug listener):
    /// `Pending`, `Events`, `Successes`, `Failures`, `Errors`, `Statuses`.
    async fn notifications(&self) -> serde_json::Value {
        let vars = async {
            http()
                .get(format!("http://127.0.0.1:{}/debug/vars", self.debug_port))
                .send()
                .await?
                .json::<serde_json::Value>()
                .await
        };
        match vars.await {
            Ok(vars) => vars["registry"]["notifications"]["endpoints"][0]["Metrics"].clone(),
            Err(e) => format!("debug/vars unreadable: {e}").into(),
        }
    }

    /// Waits until the registry has delivered more than `after` events and holds none back.
    async fn delivered(&self, after: u64) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let m = self.notifications().await;
            if m["Events"].as_u64() > Some(after) && m["Pending"] == 0 {
                return m;
            }
            if started.elapsed() > Duration::from_secs(20) {
                panic!(
                    "the registry still holds notifications back after 20s: {m}\nregistry log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes what the test left on the engine, also after a failed assertion: the instance's
/// containers and the registry's tags.
struct EngineCleanup {
    repository: String,
}

impl Drop for EngineCleanup {
    fn drop(&mut self) {
        remove_instance_containers();
        for tag in ["1.0.0", "1.1.0"] {
            let _ = docker_cli(&["rmi", &format!("{}:{tag}", self.repository)]);
        }
    }
}

fn remove_instance_containers() {
    let filter = format!("label={}={NS}", labels::INSTANCE);
    if let Ok(ids) = docker_cli(&["ps", "-aq", "--filter", &filter]) {
        for id in ids.split_whitespace() {
            let _ = docker_cli(&["rm", "-f", id]);
        }
    }
}

fn stage_status(state: &Path) -> StageStatus {
    StateDb::open(state)
        .unwrap()
        .stage_status(NS, "dev")
        .unwrap()
}

/// Polls the Stage's status until `done`, else panics with it and the registry's log.
async fn wait_for(
    state: &Path,
    registry: &Registry,
    what: &str,
    done: impl Fn(&StageStatus) -> bool,
) -> StageStatus {
    let started = Instant::now();
    let mut last = StageStatus::default();
    while started.elapsed() < Duration::from_secs(45) {
        if state.join("state.db").exists() {
            last = stage_status(state);
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{NS}/dev: {what} not reached within 45s; last status: {last:#?}\n\
         registry notifications: {}\nregistry log:\n{}",
        registry.notifications().await,
        registry.log_tail()
    );
}

#[tokio::test]
async fn a_push_to_a_real_registry_deploys_the_pushed_image_from_it() {
    let Some(rt) = docker().await else { return };
    let missing = missing_tools();
    if !missing.is_empty() {
        if std::env::var_os("TINY_FORGE_TEST_DOCKER").is_some() {
            panic!(
                "TINY_FORGE_TEST_DOCKER is set but {missing:?} is not installed (apt-get install docker-registry skopeo)"
            );
        }
        eprintln!("skipped: {missing:?} not installed (apt-get install docker-registry skopeo)");
        return;
    }
    remove_instance_containers(); // left by an interrupted earlier run

    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(secrets.join("registry")).unwrap();
    std::fs::write(secrets.join("registry/token"), TOKEN).unwrap();
    let registry_dir = dir.path().join("registry");
    std::fs::create_dir(&registry_dir).unwrap();

    let (registry_port, reserved) = reserve_port();
    let repository = repository(registry_port);
    let _cleanup = EngineCleanup {
        repository: repository.clone(),
    };
    std::fs::write(
        manifests.join("app.yaml"),
        format!(
            "apiVersion: tinyforge.dev/v1alpha1
kind: Project
metadata: {{name: web, namespace: {NS}}}
spec:
  image: {repository}
  container: {{port: 8080, stopTimeoutSeconds: 2}}
  healthCheck: {{type: http, path: /healthz, intervalSeconds: 1, startPeriodSeconds: 3}}
  webhook: {{secretRef: {{name: registry, key: token}}}}
---
apiVersion: tinyforge.dev/v1alpha1
kind: Stage
metadata: {{name: dev, namespace: {NS}}}
spec: {{projectRef: web, autoDeploy: true, tagPolicy: {{semver: '>=1.0.0'}}}}
"
        ),
    )
    .unwrap();

    // The controller first: the registry learns its webhook URL.
    let state = dir.path().join("state");
    let port = free_port();
    let mut opts = options_with_webhooks(manifests.clone(), state.clone(), NS, port);
    opts.secrets_dir = Some(secrets);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(standalone::run(opts, async {
        let _ = stopped.await;
    }));
    let url = url_when_up(&state, port).await;
    let registry = Registry::start(
        &registry_dir,
        (registry_port, reserved),
        &format!("{url}/registry"),
        TOKEN,
    )
    .await;
    wait_for(&state, &registry, "Pending (no tag yet)", |s| {
        s.phase == Some(Phase::Pending)
    })
    .await;

    // Nothing of the registry's on the engine: the deploy has to pull from it.
    for tag in ["1.0.0", "1.1.0"] {
        let _ = docker_cli(&["rmi", &format!("{repository}:{tag}")]);
        assert!(
            docker_cli(&["image", "inspect", &format!("{repository}:{tag}")]).is_err(),
            "{repository}:{tag} is still on the engine"
        );
    }

    // Push 1.1.0: the registry's notification deploys it.
    let pushed = Instant::now();
    registry.push("tiny-forge-demo:1.1.0", "1.1.0").await;
    let push_took = pushed.elapsed();
    let digest = registry.digest("1.1.0").await;
    assert!(digest.starts_with("sha256:"), "{digest}");
    let deployed = wait_for(&state, &registry, "Healthy on 1.1.0", |s| {
        s.phase == Some(Phase::Healthy) && s.current.as_ref().is_some_and(|c| c.tag == "1.1.0")
    })
    .await;
    eprintln!(
        "registry_e2e: skopeo push of 1.1.0 took {push_took:?}; Healthy {:?} after the push began; digest {digest}",
        pushed.elapsed()
    );
    let latest = deployed.latest.clone().expect("status.latest");
    assert_eq!(latest.tag, "1.1.0");
    assert_eq!(latest.source, "registry");
    assert_eq!(latest.digest.as_deref(), Some(digest.as_str()));
    assert!(
        latest.delivery_id.is_some(),
        "the registry's event id is kept: {latest:?}"
    );
    let current = deployed.current.clone().unwrap();
    assert_eq!(
        current.digest, digest,
        "the digest pulled from the registry"
    );

    // The container runs the image pulled from the registry.
    let containers = rt.list_managed(&[(labels::INSTANCE, NS)]).await.unwrap();
    assert_eq!(containers.len(), 1, "{containers:?}");
    let container = &containers[0];
    assert_eq!(container.label(labels::TAG), Some("1.1.0"));
    assert_eq!(current.container_id.as_deref(), Some(container.id.as_str()));
    let image_id = docker_cli(&["inspect", "-f", "{{.Image}}", &container.id]).unwrap();
    let repo_digests =
        docker_cli(&["image", "inspect", "-f", "{{json .RepoDigests}}", &image_id]).unwrap();
    assert!(
        repo_digests.contains(&format!("\"{repository}@{digest}\"")),
        "the container's image {image_id} was not pulled from the registry: {repo_digests}"
    );
    assert_eq!(
        docker_cli(&[
            "image",
            "inspect",
            "-f",
            "{{.Id}}",
            &format!("{repository}:1.1.0")
        ]),
        Ok(image_id.clone())
    );
    let ip = ip_of(&rt, &container.id).await;
    assert_eq!(
        get(&format!("http://{ip}:8080/")).await.unwrap().trim(),
        "tiny-forge-demo 1.1.0"
    );

    // A delivery with the wrong token (or none) is refused and changes nothing.
    let forged = serde_json::json!({"events": [{
        "id": "forged-0001",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "repository": "demo/web",
            "tag": "9.9.9",
            "digest": digest,
        },
        "request": {"host": format!("127.0.0.1:{}", registry.port)},
    }]});
    for auth in [Some("Bearer not-the-token"), None] {
        let mut request = http()
            .post(format!("{url}/registry"))
            .header(
                "content-type",
                "application/vnd.docker.distribution.events.v1+json",
            )
            .json(&forged);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let r = request.send().await.unwrap();
        assert_eq!(
            r.status().as_u16(),
            401,
            "{auth:?}: {}",
            r.text().await.unwrap()
        );
    }
    assert_eq!(stage_status(&state).latest, Some(latest.clone()));

    // Push 1.0.0 as well: a lower version under the semver policy, so 1.1.0 stays.
    let before = registry.notifications().await["Events"].as_u64().unwrap();
    registry.push("tiny-forge-demo:1.0.0", "1.0.0").await;
    let digest_1_0 = registry.digest("1.0.0").await;
    assert_ne!(digest_1_0, digest);
    registry.delivered(before).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // a few resyncs: no deploy may start
    let after = stage_status(&state);
    assert_eq!(
        after.latest,
        Some(latest),
        "1.0.0 must not replace 1.1.0 as latest"
    );
    assert_eq!(after.phase, Some(Phase::Healthy));
    assert_eq!(
        after.current.as_ref().map(|c| c.tag.as_str()),
        Some("1.1.0")
    );
    assert_eq!(
        after.history.len(),
        deployed.history.len(),
        "no second deploy"
    );
    assert_eq!(
        rt.list_managed(&[(labels::INSTANCE, NS)]).await.unwrap(),
        containers
    );

    // The same tag pushed again with other content (a re-pushed mutable tag): its new digest is
    // recorded, and — though the local `1.1.0` satisfies the tag's IfNotPresent — pulled and
    // deployed.
    let before = registry.notifications().await["Events"].as_u64().unwrap();
    registry.push("tiny-forge-demo:1.0.0", "1.1.0").await;
    let repushed = registry.digest("1.1.0").await;
    assert_ne!(repushed, digest);
    registry.delivered(before).await;
    let redeployed = wait_for(&state, &registry, "Healthy on the re-pushed 1.1.0", |s| {
        s.phase == Some(Phase::Healthy) && s.current.as_ref().is_some_and(|c| c.digest == repushed)
    })
    .await;
    assert_eq!(
        redeployed.latest.and_then(|l| l.digest).as_deref(),
        Some(repushed.as_str())
    );
    let containers = rt.list_managed(&[(labels::INSTANCE, NS)]).await.unwrap();
    let serving = containers
        .iter()
        .find(|c| redeployed.current.as_ref().unwrap().container_id.as_deref() == Some(&c.id))
        .expect("the serving container");
    let ip = ip_of(&rt, &serving.id).await;
    assert_eq!(
        get(&format!("http://{ip}:8080/")).await.unwrap().trim(),
        "tiny-forge-demo 1.0.0",
        "the re-pushed content serves"
    );

    // Every notification was answered 2xx the first time: nothing retried, nothing held back.
    let metrics = registry.notifications().await;
    eprintln!("registry_e2e: registry notification counters: {metrics}");
    assert_eq!(metrics["Pending"], 0, "{metrics}");
    assert_eq!(metrics["Failures"], 0, "{metrics}\n{}", registry.log_tail());
    assert_eq!(metrics["Errors"], 0, "{metrics}\n{}", registry.log_tail());
    assert_eq!(metrics["Successes"], metrics["Events"], "{metrics}");
    for status in metrics["Statuses"].as_object().unwrap().keys() {
        assert!(
            status.starts_with("200") || status.starts_with("202"),
            "{metrics}"
        );
    }

    stop.send(()).unwrap();
    controller.await.unwrap().unwrap();
    // `_cleanup` removes the containers and tags, `registry` is killed: both on drop.
}

/// A mutable tag pushed again and announced without a digest (as Quay or a script does): the
/// controller looks the tag up in the registry, whatever its pull policy, and deploys the new
/// content; an announcement whose content did not change costs one lookup, then nothing.
#[tokio::test]
async fn a_re_push_announced_without_a_digest_is_looked_up_in_the_registry() {
    const NS2: &str = "t-repush";
    let Some(rt) = docker().await else { return };
    if !missing_tools().is_empty() {
        eprintln!("skipped: docker-registry or skopeo not installed");
        return;
    }
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let filter = format!("label={}={NS2}", labels::INSTANCE);
            if let Ok(ids) = docker_cli(&["ps", "-aq", "--filter", &filter]) {
                for id in ids.split_whitespace() {
                    let _ = docker_cli(&["rm", "-f", id]);
                }
            }
            let _ = docker_cli(&["rmi", &format!("{}:stable", self.0)]);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    let registry_dir = dir.path().join("registry");
    std::fs::create_dir(&registry_dir).unwrap();
    let (registry_port, reserved) = reserve_port();
    let repository = repository(registry_port);
    let _cleanup = Cleanup(repository.clone());
    std::fs::write(
        manifests.join("app.yaml"),
        format!(
            "apiVersion: tinyforge.dev/v1alpha1
kind: Project
metadata: {{name: web, namespace: {NS2}}}
spec:
  image: {repository}
  container: {{port: 8080, stopTimeoutSeconds: 2}}
  healthCheck: {{type: http, path: /healthz, intervalSeconds: 1, startPeriodSeconds: 3}}
---
apiVersion: tinyforge.dev/v1alpha1
kind: Stage
metadata: {{name: dev, namespace: {NS2}}}
spec: {{projectRef: web, autoDeploy: true, tagPolicy: {{exact: stable}}}}
"
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let opts = options_with_webhooks(manifests, state.clone(), NS2, port);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(standalone::run(opts, async {
        let _ = stopped.await;
    }));
    let url = url_when_up(&state, port).await;
    // This registry's own notifications go nowhere: only the digest-less pushes below count.
    let registry = Registry::start(
        &registry_dir,
        (registry_port, reserved),
        "http://127.0.0.1:9/none",
        TOKEN,
    )
    .await;
    let status = || {
        StateDb::open(&state)
            .unwrap()
            .stage_status(NS2, "dev")
            .unwrap()
    };
    let serving = |digest: String| {
        let status = &status;
        async move {
            for _ in 0..450 {
                let s = status();
                if s.phase == Some(Phase::Healthy)
                    && s.current.as_ref().is_some_and(|c| c.digest == digest)
                {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{digest} never served; last status: {:#?}", status());
        }
    };
    let announce = |key: &'static str| {
        let url = url.clone();
        let body = format!(r#"{{"image":"{repository}:stable"}}"#);
        async move {
            let r = http()
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
        }
    };

    registry.push("tiny-forge-demo:1.0.0", "stable").await;
    announce("push-1").await;
    let first = serving(registry.digest("stable").await).await;
    // Pushed again with other content; the local `stable` is stale, and the tag's default pull
    // policy (IfNotPresent) would be content with it.
    registry.push("tiny-forge-demo:1.1.0", "stable").await;
    let second_digest = registry.digest("stable").await;
    assert_ne!(
        Some(&second_digest),
        first.current.as_ref().map(|c| &c.digest)
    );
    tokio::time::sleep(Duration::from_millis(1100)).await; // seenAt has second resolution
    announce("push-2").await;
    let second = serving(second_digest.clone()).await;
    let containers = rt.list_managed(&[(labels::INSTANCE, NS2)]).await.unwrap();
    let c = containers
        .iter()
        .find(|c| second.current.as_ref().unwrap().container_id.as_deref() == Some(&c.id))
        .unwrap();
    let ip = ip_of(&rt, &c.id).await;
    assert_eq!(
        get(&format!("http://{ip}:8080/")).await.unwrap().trim(),
        "tiny-forge-demo 1.1.0"
    );
    // Announced again without a change: looked up once (resolvedAt), no deploy.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    announce("push-3").await;
    let mut resolved = None;
    for _ in 0..300 {
        resolved = status().current.and_then(|c| c.resolved_at);
        if resolved.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resolved.is_some(), "{:#?}", status());
    let after = status();
    assert_eq!(
        after.current.as_ref().map(|c| &c.digest),
        Some(&second_digest)
    );
    assert_eq!(after.history.len(), second.history.len(), "no deploy");

    stop.send(()).unwrap();
    controller.await.unwrap().unwrap();
}
