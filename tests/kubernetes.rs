//! Kubernetes mode against a REAL kube-apiserver (v1.20, etcd on loopback; `make test` starts it
//! with scripts/kube-up.sh and exports KUBECONFIG) and the real Docker engine. The controller is
//! the shipped binary, run as a child process. Each test works in a namespace and with an
//! instance label of its own, so tests run in parallel without touching each other's objects or
//! containers.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use tiny_forge::adapters::docker::DockerRuntime;
use tiny_forge::api::{Stage, labels};
use tiny_forge::engine::Runtime;

const CONTROLLER: &str = env!("CARGO_BIN_EXE_tiny-forge");

/// The test cluster's admin client, or None (skipped) when the run did not ask for it. Under
/// `make test` (TINY_FORGE_TEST_KUBE=1) an unreachable API server fails the test.
async fn cluster() -> Option<(Client, DockerRuntime)> {
    let required = std::env::var_os("TINY_FORGE_TEST_KUBE").is_some();
    let client = match std::env::var_os("KUBECONFIG") {
        Some(_) => Client::try_default().await.map_err(|e| e.to_string()),
        None => Err("KUBECONFIG is not set".to_string()),
    };
    let client = match client {
        Ok(c) if c.apiserver_version().await.is_ok() => c,
        Ok(_) | Err(_) if required => {
            panic!("TINY_FORGE_TEST_KUBE is set but the API server is unreachable")
        }
        _ => {
            eprintln!("skipped: no Kubernetes API server; run `make test`");
            return None;
        }
    };
    let docker = common::docker().await?;
    install_crds(&client).await;
    Some((client, docker))
}

/// Applies the generated CRDs (idempotent) and waits until they are served.
async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let yaml = tiny_forge::crds_yaml().unwrap();
    for doc in yaml
        .split("\n---\n")
        .filter(|d| d.contains("kind: CustomResourceDefinition"))
    {
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(doc.trim_start_matches("---\n")).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply("tiny-forge-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("the API server refused CRD {name}: {e}"));
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .expect("CRD established in 30s")
            .unwrap();
    }
}

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.into());
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("namespace {name}: {e}"),
    }
}

fn kubectl() -> String {
    // The kubectl matching the test server, extracted by scripts/kube-build.sh.
    let home = std::env::var_os("KUBE_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            dirs::home_dir()
                .unwrap_or_default()
                .join(".cache/kube-test")
        });
    let cached = home.join("bin/kubectl-1.20");
    if cached.exists() {
        cached.display().to_string()
    } else {
        "kubectl".into()
    }
}

/// `kubectl apply -f -` of `yaml` (what users run), with the given kubeconfig.
fn kubectl_apply(yaml: &str, kubeconfig: Option<&Path>) -> Result<String, String> {
    use std::io::Write as _;
    let mut cmd = Command::new(kubectl());
    cmd.args(["apply", "-f", "-"]);
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("kubectl: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// The controller binary, as a child process; stopped (SIGTERM, then SIGKILL) when dropped.
struct Controller {
    child: Child,
    pub log: PathBuf,
    pub port: u16,
}

impl Controller {
    fn start(
        namespace: &str,
        instance: &str,
        extra: &[&str],
        kubeconfig: Option<&Path>,
    ) -> Controller {
        let port = common::free_port();
        let dir = std::env::temp_dir().join(format!("tiny-forge-kube-{instance}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("controller-{port}.log"));
        let mut cmd = Command::new(CONTROLLER);
        cmd.args([
            "run",
            "--kubernetes",
            "--namespace",
            namespace,
            "--instance",
            instance,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--resync",
            "3s",
            "--webhook-rate",
            "0",
        ])
        .args(extra)
        .env("RUST_LOG", "info,kube=warn")
        .env("NO_COLOR", "1")
        .env_remove("POD_NAMESPACE")
        .env_remove("POD_NAME");
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdout(file.try_clone().unwrap()).stderr(file);
        if !extra.contains(&"--controller-namespace") {
            cmd.args(["--controller-namespace", namespace]);
        }
        if !extra.contains(&"--leader-election") {
            cmd.args(["--leader-election", "false"]);
        }
        if let Some(k) = kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        Controller {
            child: cmd.spawn().unwrap(),
            log,
            port,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM and wait (graceful stop).
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL: no chance to release anything.
    fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

async fn eventually<T, F, Fut>(what: &str, secs: u64, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tiny_forge::testing::eventually(what, Duration::from_secs(secs), || {
        let probe = probe();
        async move { probe.await.ok_or("not yet") }
    })
    .await
}

/// The URL secret the controllers made in `ns`.
async fn url_secret(client: &Client, ns: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets.get("tiny-forge-webhook").await.unwrap();
    String::from_utf8(secret.data.unwrap()["url-secret"].0.clone()).unwrap()
}

/// A generic push of `tiny-forge-demo:{tag}` with delivery id `id` to the listener on `port`;
/// its answer must be 2xx.
async fn push_generic(url_secret: &str, port: u16, tag: &str, id: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/webhook/{url_secret}"))
        .header("content-type", "application/json")
        .header("idempotency-key", id)
        .body(format!(r#"{{"image":"tiny-forge-demo:{tag}"}}"#))
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert!((200..300).contains(&code), "{code} {text}");
    text
}

/// Waits until the listener says it is ready (its watches listed, its URL secret made).
async fn ready_listener(port: u16) {
    eventually("/readyz", 30, || async {
        common::get(&format!("http://127.0.0.1:{port}/readyz"))
            .await
            .ok()
            .filter(|body| body == "ready\n")
    })
    .await;
}

fn project_yaml(namespace: &str) -> String {
    format!(
        r#"apiVersion: tinyforge.dev/v1alpha1
kind: Project
metadata: {{name: demo, namespace: {namespace}}}
spec:
  image: tiny-forge-demo
  container: {{port: 8080, stopTimeoutSeconds: 1, imagePullPolicy: Never}}
  healthCheck: {{type: http, path: /healthz, intervalSeconds: 1, timeoutSeconds: 1, retries: 3, startPeriodSeconds: 3}}
"#
    )
}

fn stage_yaml(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: tinyforge.dev/v1alpha1\nkind: Stage\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
}

fn ready(stage: &Stage) -> Option<String> {
    let status = stage.status.as_ref()?;
    tiny_forge::engine::conditions::ready(&status.conditions)
        .map(|c| format!("{}/{}", c.status, c.reason))
}

/// Ready, and what serves passed its health check.
fn healthy(stage: &Stage) -> bool {
    ready(stage).as_deref() == Some("True/Healthy")
}

async fn stage_when(
    api: &Api<Stage>,
    name: &str,
    secs: u64,
    want: impl Fn(&Stage) -> bool,
) -> Stage {
    eventually(&format!("Stage {name}"), secs, || async {
        api.get_opt(name).await.ok().flatten().filter(|s| want(s))
    })
    .await
}

async fn containers_of(
    docker: &DockerRuntime,
    instance: &str,
) -> Vec<tiny_forge::engine::ContainerInfo> {
    docker
        .list_managed(&[(labels::INSTANCE, instance)])
        .await
        .unwrap()
}

/// Waits until the object has an event with `reason` (events follow the status write).
async fn event_seen(client: &Client, namespace: &str, name: &str, reason: &str) -> String {
    eventually(&format!("a {reason} event on {name}"), 20, || async {
        events_of(client, namespace, name)
            .await
            .into_iter()
            .find(|(r, _)| r == reason)
            .map(|(_, note)| note)
    })
    .await
}

async fn events_of(client: &Client, namespace: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// The test cluster, a namespace made for this test and an instance name of its own (`base`
/// names both), or None when the run has no cluster (see [`cluster`]).
async fn scenario(base: &str) -> Option<(Client, DockerRuntime, String, String)> {
    let (client, docker) = cluster().await?;
    let (ns, instance) = (
        unique(&format!("tf-{base}")),
        unique(&format!("kube-{base}")),
    );
    namespace(&client, &ns).await;
    Some((client, docker, ns, instance))
}

/// The demo Project and its Stage `web`, pinned to 1.0.0.
fn apply_pinned_web(ns: &str) {
    kubectl_apply(&project_yaml(ns), None).unwrap();
    kubectl_apply(
        &stage_yaml(ns, "web", "{projectRef: demo, pinnedTag: \"1.0.0\"}"),
        None,
    )
    .unwrap();
}

/// A namespace name of its own for this run (a namespace being deleted cannot be reused).
fn unique(base: &str) -> String {
    format!("{base}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
}

/// Removes the test's containers, then its namespace; finalizers first, as no controller is
/// left to honour them.
async fn remove_everything(
    client: &Client,
    docker: &DockerRuntime,
    namespace: &str,
    instance: &str,
) {
    for c in containers_of(docker, instance).await {
        let _ = docker.remove(&c.id).await;
    }
    let unfinalize = serde_json::json!({"metadata": {"finalizers": null}});
    let stages: Api<Stage> = Api::namespaced(client.clone(), namespace);
    for s in stages
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let name = s.metadata.name.unwrap_or_default();
        let _ = stages
            .patch(&name, &PatchParams::default(), &Patch::Merge(&unfinalize))
            .await;
    }
    let projects: Api<tiny_forge::api::Project> = Api::namespaced(client.clone(), namespace);
    for p in projects
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let name = p.metadata.name.unwrap_or_default();
        let _ = projects
            .patch(&name, &PatchParams::default(), &Patch::Merge(&unfinalize))
            .await;
    }
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(namespace, &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_and_examples_are_accepted_by_the_api_server() {
    let Some((client, _docker)) = cluster().await else {
        return;
    };
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let stages = crds.get("stages.tinyforge.dev").await.unwrap();
    let version = &stages.spec.versions[0];
    assert!(
        version
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some())
    );
    let columns: Vec<String> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        columns,
        ["Project", "Tag", "Phase", "Ready", "Age", "Message"]
    );
    assert_eq!(
        stages.spec.names.short_names.as_deref(),
        Some(&["tfs".to_string()][..])
    );

    // The examples a user applies: accepted by the real schema (server-side dry run).
    for file in ["project.yaml", "stages.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/kubernetes")
            .join(file);
        let out = Command::new(kubectl())
            .args(["apply", "--dry-run=server", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And the schema rejects what it should.
    let bad = stage_yaml("default", "bad", "{projectRef: demo, hostPort: 70000}");
    let err = kubectl_apply(&bad, None).unwrap_err();
    assert!(err.contains("hostPort"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_becomes_ready_keeps_its_status_across_restarts_and_is_cleaned_up_on_delete() {
    let Some((client, docker, ns, instance)) = scenario("lifecycle").await else {
        return;
    };
    let (ns, instance) = (ns.as_str(), instance.as_str());
    apply_pinned_web(ns);
    let stages: Api<Stage> = Api::namespaced(client.clone(), ns);

    let mut controller = Controller::start(ns, instance, &[], None);
    let stage = stage_when(&stages, "web", 90, healthy).await;
    let status = stage.status.clone().unwrap();
    assert_eq!(status.current.as_ref().unwrap().tag, "1.0.0");
    assert!(
        stage
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "tinyforge.dev/cleanup")
    );
    let running = containers_of(&docker, instance).await;
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(
        Some(&running[0].id),
        status.current.as_ref().unwrap().container_id.as_ref()
    );
    let note = event_seen(&client, ns, "web", "Deployed").await;
    assert!(note.contains("1.0.0"), "{note}");
    // `kubectl wait` reads the same condition.
    let wait = Command::new(kubectl())
        .args([
            "wait",
            "--for=condition=Ready",
            "stage/web",
            "-n",
            ns,
            "--timeout=10s",
        ])
        .output()
        .unwrap();
    assert!(
        wait.status.success(),
        "{}",
        String::from_utf8_lossy(&wait.stderr)
    );

    // What an operator scrapes: reconciles by outcome, and who leads.
    let metrics = eventually("a converged reconcile counted", 20, || async {
        common::get(&format!("http://127.0.0.1:{}/metrics", controller.port))
            .await
            .ok()
            .filter(|m| {
                m.contains(r#"tiny_forge_reconciles_total{kind="Stage",outcome="converged"}"#)
            })
    })
    .await;
    assert!(metrics.contains("tiny_forge_leader 1"), "{metrics}");

    // Restart: the same container keeps serving, the status (transition time included) stays.
    controller.stop();
    let mut controller = Controller::start(ns, instance, &[], None);
    tokio::time::sleep(Duration::from_secs(8)).await; // two resync periods
    let after = stages.get("web").await.unwrap();
    assert_eq!(
        after.status.as_ref().unwrap().current,
        status.current,
        "{}",
        controller.log()
    );
    assert_eq!(after.status.as_ref().unwrap().conditions, status.conditions);
    // The deploy's own words survive resyncs and the restart (they once lost their
    // "(healthy in …)" part at the first resync).
    let message = after.status.as_ref().unwrap().message.clone().unwrap();
    assert_eq!(Some(&message), status.message.as_ref());
    assert!(
        message.starts_with("1.0.0 is serving (healthy in "),
        "{message}"
    );
    assert_eq!(containers_of(&docker, instance).await.len(), 1);

    // Drift: the container removed behind the controller's back comes back without an event.
    docker.remove(&running[0].id).await.unwrap();
    eventually("the container recreated", 30, || async {
        (containers_of(&docker, instance)
            .await
            .iter()
            .any(|c| c.running))
        .then_some(())
    })
    .await;

    // Delete: the finalizer removes the container, then the Stage goes.
    stages
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the Stage gone", 30, || async {
        stages.get_opt("web").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(containers_of(&docker, instance).await.is_empty());
    controller.stop();
    remove_everything(&client, &docker, ns, instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_stage_is_reported_and_does_not_stall_the_others() {
    let Some((client, docker, ns, instance)) = scenario("malformed").await else {
        return;
    };
    let (ns, instance) = (ns.as_str(), instance.as_str());
    kubectl_apply(&project_yaml(ns), None).unwrap();
    // Valid for the CRD schema (an integer, no maximum given) but not for the controller (u32).
    let bad = stage_yaml(
        ns,
        "broken",
        "{projectRef: demo, pinnedTag: \"1.0.0\", healthCheck: {intervalSeconds: 5000000000}}",
    );
    kubectl_apply(&bad, None).unwrap();
    kubectl_apply(
        &stage_yaml(ns, "fine", "{projectRef: demo, pinnedTag: \"1.0.0\"}"),
        None,
    )
    .unwrap();
    let stages: Api<Stage> = Api::namespaced(client.clone(), ns);
    let raw: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &kube::core::ApiResource::erase::<Stage>(&()),
    );
    let _controller = Controller::start(ns, instance, &[], None);
    stage_when(&stages, "fine", 90, healthy).await;
    let broken = eventually("the malformed Stage reported", 30, || async {
        let o = raw.get("broken").await.ok()?;
        let c = o.data["status"]["conditions"][0].clone();
        (c["reason"] == "InvalidSpec").then_some(c)
    })
    .await;
    assert_eq!(broken["status"], "False");
    assert!(
        broken["message"]
            .as_str()
            .unwrap()
            .contains("cannot read this Stage"),
        "{broken}"
    );
    let note = event_seen(&client, ns, "broken", "InvalidSpec").await;
    assert!(note.contains("intervalSeconds"), "{note}");
    // Fixing it makes it work.
    let fixed = stage_yaml(
        ns,
        "broken",
        "{projectRef: demo, pinnedTag: \"1.0.0\", healthCheck: {intervalSeconds: 1}}",
    );
    kubectl_apply(&fixed, None).unwrap();
    let deployed = stage_when(&stages, "broken", 90, healthy).await;

    // Broken again after it deployed: reported, and the rest of its status (what serves, what to
    // roll back to) stays.
    kubectl_apply(&bad, None).unwrap();
    let reported = eventually("the Stage reported again", 30, || async {
        let o = raw.get("broken").await.ok()?;
        (o.data["status"]["conditions"][0]["reason"] == "InvalidSpec").then_some(o)
    })
    .await;
    let current = &reported.data["status"]["current"];
    assert_eq!(
        current["containerId"].as_str(),
        deployed
            .status
            .unwrap()
            .current
            .unwrap()
            .container_id
            .as_deref(),
        "{current}"
    );

    // A Project the controller cannot read says so too (Projects have no `message`).
    let odd = project_yaml(ns)
        .replace("name: demo", "name: odd")
        .replace("stopTimeoutSeconds: 1", "stopTimeoutSeconds: 5000000000");
    kubectl_apply(&odd, None).unwrap();
    let projects: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &kube::core::ApiResource::erase::<tiny_forge::api::Project>(&()),
    );
    let condition = eventually("the unreadable Project reported", 30, || async {
        let o = projects.get("odd").await.ok()?;
        let c = o.data["status"]["conditions"][0].clone();
        (c["reason"] == "InvalidSpec").then_some(c)
    })
    .await;
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .contains("spec.container.stopTimeoutSeconds"),
        "{condition}"
    );
    remove_everything(&client, &docker, ns, instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_delivery_becomes_status_latest_and_deploys() {
    let Some((client, docker, ns, instance)) = scenario("webhook").await else {
        return;
    };
    let (ns, instance) = (ns.as_str(), instance.as_str());
    kubectl_apply(&project_yaml(ns), None).unwrap();
    kubectl_apply(
        &stage_yaml(
            ns,
            "staging",
            "{projectRef: demo, autoDeploy: true, tagPolicy: {semver: \">=1.0.0\"}}",
        ),
        None,
    )
    .unwrap();
    let controller = Controller::start(ns, instance, &[], None);
    let base = format!("http://127.0.0.1:{}", controller.port);
    ready_listener(controller.port).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets.get("tiny-forge-webhook").await.unwrap();
    let url_secret = String::from_utf8(secret.data.unwrap()["url-secret"].0.clone()).unwrap();
    let http = reqwest::Client::new();
    let post = |path: String, body: &'static str| {
        let http = http.clone();
        async move {
            let r = http
                .post(path)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let wrong = post(
        format!("{base}/api/webhook/not-the-secret"),
        r#"{"image":"tiny-forge-demo:1.1.0"}"#,
    )
    .await;
    assert_eq!(wrong.0, 404);
    let (code, body) = post(
        format!("{base}/api/webhook/{url_secret}"),
        r#"{"image":"tiny-forge-demo:1.1.0"}"#,
    )
    .await;
    assert!((200..300).contains(&code), "{code} {body}");
    assert!(!body.contains(&url_secret));
    let stages: Api<Stage> = Api::namespaced(client.clone(), ns);
    let stage = stage_when(&stages, "staging", 90, |s| {
        s.status
            .as_ref()
            .and_then(|st| st.current.as_ref())
            .is_some_and(|c| c.tag == "1.1.0")
    })
    .await;
    let latest = stage.status.unwrap().latest.unwrap();
    assert_eq!(
        (latest.tag.as_str(), latest.source.as_str()),
        ("1.1.0", "generic")
    );
    // An older tag is recorded nowhere: the policy prefers 1.1.0.
    let (code, body) = post(
        format!("{base}/api/webhook/{url_secret}"),
        r#"{"image":"tiny-forge-demo:1.0.0"}"#,
    )
    .await;
    assert!((200..300).contains(&code), "{code} {body}");
    assert!(body.contains("already the preferred tag"), "{body}");
    assert_eq!(
        stages
            .get("staging")
            .await
            .unwrap()
            .status
            .unwrap()
            .latest
            .unwrap()
            .tag,
        "1.1.0"
    );
    // Who wrote what: the controller never owns `latest`, the webhook side owns nothing else.
    let managed = stages
        .get("staging")
        .await
        .unwrap()
        .metadata
        .managed_fields
        .unwrap_or_default();
    let owner_of_latest: Vec<String> = managed
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0["f:status"].get("f:latest").is_some())
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(owner_of_latest, ["tiny-forge-webhook"]);

    // Rotation: delete the Secret; a new URL secret is made and the old URL stops working.
    secrets
        .delete("tiny-forge-webhook", &DeleteParams::default())
        .await
        .unwrap();
    let rotated = eventually("a new URL secret", 30, || async {
        let s = secrets.get_opt("tiny-forge-webhook").await.ok()??;
        let v = String::from_utf8(s.data?.get("url-secret")?.0.clone()).ok()?;
        (v != url_secret).then_some(v)
    })
    .await;
    ready_listener(controller.port).await;
    let old = post(
        format!("{base}/api/webhook/{url_secret}"),
        r#"{"image":"tiny-forge-demo:1.1.0"}"#,
    )
    .await;
    assert_eq!(old.0, 404, "{}", old.1);
    let new = post(
        format!("{base}/api/webhook/{rotated}"),
        r#"{"image":"tiny-forge-demo:1.1.0"}"#,
    )
    .await;
    assert!((200..300).contains(&new.0), "{} {}", new.0, new.1);
    remove_everything(&client, &docker, ns, instance).await;
}

/// With auto-creation on, a push of an image no Project uses creates a Project and a `-dev`
/// Stage in the watched namespace, which deploys it; deleting the Project then removes what its
/// Stages ran, and the Stage says its Project is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_image_creates_a_project_and_deleting_it_stops_its_stages() {
    let Some((client, docker, ns, instance)) = scenario("autocreate").await else {
        return;
    };
    let (ns, instance) = (ns.as_str(), instance.as_str());
    let controller = Controller::start(
        ns,
        instance,
        &["--auto-create", "true", "--auto-create-max", "1"],
        None,
    );
    ready_listener(controller.port).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets.get("tiny-forge-webhook").await.unwrap();
    let url_secret = String::from_utf8(secret.data.unwrap()["url-secret"].0.clone()).unwrap();
    let answer = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/api/webhook/{url_secret}",
            controller.port
        ))
        .header("content-type", "application/json")
        .body(r#"{"image":"tiny-forge-demo:1.0.0"}"#)
        .send()
        .await
        .unwrap();
    let (code, body) = (answer.status().as_u16(), answer.text().await.unwrap());
    assert!((200..300).contains(&code), "{code} {body}");
    assert!(body.contains("tiny-forge-demo"), "{body}");
    let projects: Api<tiny_forge::api::Project> = Api::namespaced(client.clone(), ns);
    let project = projects.get("tiny-forge-demo").await.unwrap();
    assert_eq!(project.spec.image, "tiny-forge-demo");
    let stages: Api<Stage> = Api::namespaced(client.clone(), ns);
    stage_when(&stages, "tiny-forge-demo-dev", 90, |s| {
        s.status
            .as_ref()
            .and_then(|st| st.current.as_ref())
            .is_some_and(|c| c.tag == "1.0.0")
    })
    .await;
    assert_eq!(containers_of(&docker, instance).await.len(), 1);
    // Past --auto-create-max: the reason in a 2xx, and no Project.
    let answer = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/api/webhook/{url_secret}",
            controller.port
        ))
        .header("content-type", "application/json")
        .body(r#"{"image":"registry.example/team/second:1.0.0"}"#)
        .send()
        .await
        .unwrap();
    let (code, body) = (answer.status().as_u16(), answer.text().await.unwrap());
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("--auto-create-max 1"), "{body}");
    assert!(projects.get_opt("second").await.unwrap().is_none());
    // What is auto-created runs with limits.
    let resources = project.spec.container.resources.clone().unwrap_or_default();
    assert_eq!(resources.memory.as_deref(), Some("256Mi"));

    projects
        .delete("tiny-forge-demo", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the Project gone and its container removed", 60, || async {
        (projects.get_opt("tiny-forge-demo").await.ok()?.is_none()
            && containers_of(&docker, instance).await.is_empty())
        .then_some(())
    })
    .await;
    stage_when(&stages, "tiny-forge-demo-dev", 30, |s| {
        ready(s).as_deref() == Some("False/ProjectNotFound")
    })
    .await;
    drop(controller);
    remove_everything(&client, &docker, ns, instance).await;
}

/// The chart's RBAC, rendered into manifests/ and applied with kubectl, is all the controller
/// needs: it runs with the chart's ServiceAccount token (not as admin), elects itself leader,
/// makes its webhook Secret, deploys, writes status and events, and cleans up on delete; and it
/// cannot read Secrets outside its namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_rbac_is_enough_and_no_more() {
    let Some((client, docker, ns, instance)) = scenario("rbac").await else {
        return;
    };
    let (ns, instance) = (ns.as_str(), instance.as_str());
    let manifests = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/tiny-forge.yaml"),
    )
    .unwrap();
    let out = kubectl_apply(&manifests, None)
        .unwrap_or_else(|e| panic!("kubectl apply -f manifests/: {e}"));
    assert!(out.contains("clusterrole"), "{out}");
    let sa_ns = "tiny-forge";
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), sa_ns);
    let sa = sas
        .get("tiny-forge")
        .await
        .expect("the chart's ServiceAccount");
    // Kubernetes 1.20 still makes a token Secret per ServiceAccount (kube-controller-manager).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), sa_ns);
    let token = eventually("the ServiceAccount token", 60, || async {
        let sa = sas.get(sa.metadata.name.as_deref().unwrap()).await.ok()?;
        let name = sa.secrets?.first()?.name.clone()?;
        let s = secrets.get(&name).await.ok()?;
        String::from_utf8(s.data?.get("token")?.0.clone()).ok()
    })
    .await;
    let admin = Config::infer().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let ca = std::fs::read_to_string(std::env::var("KUBECONFIG").unwrap()).unwrap();
    let ca_data = ca
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .unwrap()
        .to_string();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{}\", certificate-authority-data: {ca_data}}}\nusers:\n- name: sa\n  user: {{token: {token}}}\ncontexts:\n- name: sa\n  context: {{cluster: c, user: sa, namespace: {sa_ns}}}\ncurrent-context: sa\n",
            admin.cluster_url
        ),
    )
    .unwrap();
    // Not admin, and not more than needed.
    let as_sa = Client::try_from(
        Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let foreign: Api<Secret> = Api::namespaced(as_sa.clone(), "kube-system");
    match foreign.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403),
        other => panic!("the chart's ServiceAccount can read Secrets in kube-system: {other:?}"),
    }
    let namespaces: Api<Namespace> = Api::all(as_sa.clone());
    assert!(
        namespaces.list(&ListParams::default()).await.is_err(),
        "may list namespaces"
    );

    apply_pinned_web(ns);
    let controller = Controller::start(
        ns,
        instance,
        &[
            "--controller-namespace",
            sa_ns,
            "--leader-election",
            "true",
            "--lease-name",
            "tiny-forge-rbac-test",
            "--webhook-secret",
            "tiny-forge-rbac-test-webhook",
        ],
        Some(&kubeconfig),
    );
    let stages: Api<Stage> = Api::namespaced(client.clone(), ns);
    let stage = stage_when(&stages, "web", 120, healthy).await;
    assert!(stage.status.unwrap().current.is_some());
    event_seen(&client, ns, "web", "Deployed").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), sa_ns);
    let lease = leases.get("tiny-forge-rbac-test").await.unwrap();
    assert!(lease.spec.unwrap().holder_identity.is_some());
    eventually("the webhook Secret made by the controller", 20, || async {
        secrets
            .get_opt("tiny-forge-rbac-test-webhook")
            .await
            .ok()
            .flatten()
    })
    .await;
    stages
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the Stage gone", 30, || async {
        stages.get_opt("web").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(containers_of(&docker, instance).await.is_empty());
    let log = controller.log();
    // The API server's refusals read "… is forbidden: User … cannot …" (code 403, Forbidden).
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    assert!(!log.contains(&token), "the token reached the log");
    drop(controller);
    let _ = secrets
        .delete("tiny-forge-rbac-test-webhook", &DeleteParams::default())
        .await;
    remove_everything(&client, &docker, ns, instance).await;
}

/// Two replicas: one leads and deploys; when it dies without releasing the Lease, the other takes
/// over once the Lease expires and acts on the next change. Both answer webhooks meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_takes_over_when_the_leader_dies() {
    let Some((client, docker, ns, instance)) = scenario("leader").await else {
        return;
    };
    let (ns, instance) = (ns.as_str(), instance.as_str());
    apply_pinned_web(ns);
    let args = [
        "--leader-election",
        "true",
        "--lease-name",
        "tf-leader-test",
    ];
    let mut a = Controller::start(ns, instance, &args, None);
    let stages: Api<Stage> = Api::namespaced(client.clone(), ns);
    stage_when(&stages, "web", 90, healthy).await;
    let b = Controller::start(ns, instance, &args, None);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let holder = || async {
        leases
            .get("tf-leader-test")
            .await
            .ok()?
            .spec?
            .holder_identity
    };
    let first = holder().await.unwrap();
    // The follower answers webhooks too, and does not lead.
    ready_listener(b.port).await;
    eventually("the follower waiting", 30, || async {
        b.log().contains("waiting for leadership").then_some(())
    })
    .await;
    assert!(!b.log().contains("leading: starting"), "{}", b.log());
    a.crash();
    let second = eventually("a new leader", 40, || async {
        holder().await.filter(|h| *h != first)
    })
    .await;
    assert_ne!(first, second);
    kubectl_apply(
        &stage_yaml(ns, "web", "{projectRef: demo, pinnedTag: \"1.1.0\"}"),
        None,
    )
    .unwrap();
    stage_when(&stages, "web", 90, |s| {
        s.status
            .as_ref()
            .and_then(|st| st.current.as_ref())
            .is_some_and(|c| c.tag == "1.1.0")
    })
    .await;
    assert_eq!(
        containers_of(&docker, instance)
            .await
            .iter()
            .filter(|c| c.running)
            .count(),
        1
    );
    drop(b);
    remove_everything(&client, &docker, ns, instance).await;
}

/// A Stage that vanished without its finalizer running (deleted and force-finalized while no
/// controller ran): its container is collected by label once the orphan grace has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_stage_gone_without_its_finalizer_are_collected() {
    let Some((client, docker, ns, instance)) = scenario("orphan").await else {
        return;
    };
    let (ns, instance) = (ns.as_str(), instance.as_str());
    apply_pinned_web(ns);
    let stages: Api<Stage> = Api::namespaced(client.clone(), ns);
    let mut controller = Controller::start(ns, instance, &[], None);
    stage_when(&stages, "web", 90, healthy).await;
    controller.stop();
    // Force-finalize and delete behind the controller's back.
    let unfinalize = serde_json::json!({"metadata": {"finalizers": null}});
    stages
        .patch("web", &PatchParams::default(), &Patch::Merge(&unfinalize))
        .await
        .unwrap();
    stages
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(containers_of(&docker, instance).await.len(), 1);
    let controller = Controller::start(ns, instance, &[], None);
    eventually("the orphan removed", 60, || async {
        containers_of(&docker, instance)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(
        controller.log().contains("no longer exists"),
        "{}",
        controller.log()
    );
    drop(controller);
    remove_everything(&client, &docker, ns, instance).await;
}

/// Two replicas and a restart: a redelivery (the same sender id) that reaches the other replica,
/// or a replica after its restart, never moves `status.latest` back to an older push — with a
/// policy that prefers the latest-seen tag, where a fresh `seenAt` would otherwise win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_never_moves_latest_back_in_any_replica() {
    let Some((client, docker, ns, instance)) = scenario("redeliver").await else {
        return;
    };
    let (ns, instance) = (ns.as_str(), instance.as_str());
    kubectl_apply(&project_yaml(ns), None).unwrap();
    // Any tag, the latest seen wins; no autoDeploy: nothing is deployed.
    kubectl_apply(&stage_yaml(ns, "follow", "{projectRef: demo}"), None).unwrap();
    let args = [
        "--leader-election",
        "true",
        "--lease-name",
        "tf-redeliver-test",
    ];
    let a = Controller::start(ns, instance, &args, None);
    let mut b = Controller::start(ns, instance, &args, None);
    ready_listener(a.port).await;
    ready_listener(b.port).await;
    let url_secret = url_secret(&client, ns).await;
    let stages: Api<Stage> = Api::namespaced(client.clone(), ns);
    let latest = || async {
        stages
            .get("follow")
            .await
            .unwrap()
            .status
            .and_then(|s| s.latest)
            .map(|l| l.tag)
    };
    push_generic(&url_secret, a.port, "build-1", "delivery-1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // seenAt has second resolution
    push_generic(&url_secret, a.port, "build-2", "delivery-2").await;
    assert_eq!(latest().await.as_deref(), Some("build-2"));

    // The sender redelivers the first push; this time it reaches the other replica.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = push_generic(&url_secret, b.port, "build-1", "delivery-1").await;
    assert_eq!(
        latest().await.as_deref(),
        Some("build-2"),
        "a redelivery to another replica moved latest back: {answer}"
    );
    // And again after that replica restarted (its memory of deliveries is gone).
    b.stop();
    let b = Controller::start(ns, instance, &args, None);
    ready_listener(b.port).await;
    let answer = push_generic(&url_secret, b.port, "build-1", "delivery-1").await;
    assert_eq!(
        latest().await.as_deref(),
        Some("build-2"),
        "a redelivery after a restart moved latest back: {answer}"
    );
    // A new push still counts, on either replica.
    push_generic(&url_secret, b.port, "build-3", "delivery-3").await;
    assert_eq!(latest().await.as_deref(), Some("build-3"));
    drop((a, b));
    remove_everything(&client, &docker, ns, instance).await;
}

/// A delivery the Stage's policy passed over when it came (another replica had recorded a tag it
/// prefers, here one whose clock runs ahead) is remembered on the Stage too: its redelivery, to
/// the other replica and later than that tag's `seenAt`, must not move `status.latest` back to
/// the older push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_of_a_passed_over_push_never_moves_latest_back() {
    let Some((client, docker, ns, instance)) = scenario("passover").await else {
        return;
    };
    let (ns, instance) = (ns.as_str(), instance.as_str());
    kubectl_apply(&project_yaml(ns), None).unwrap();
    // Any tag, the latest seen wins; no autoDeploy: nothing is deployed.
    kubectl_apply(&stage_yaml(ns, "follow", "{projectRef: demo}"), None).unwrap();
    let args = [
        "--leader-election",
        "true",
        "--lease-name",
        "tf-passover-test",
    ];
    let a = Controller::start(ns, instance, &args, None);
    let b = Controller::start(ns, instance, &args, None);
    ready_listener(a.port).await;
    ready_listener(b.port).await;
    let url_secret = url_secret(&client, ns).await;
    let stages: Api<Stage> = Api::namespaced(client.clone(), ns);
    let latest = || async {
        stages
            .get("follow")
            .await
            .unwrap()
            .status
            .and_then(|s| s.latest)
    };
    // Another replica, its clock 3 s ahead, recorded build-2 (the sender's second push), the
    // way replicas write it: conditional on the version it compared against.
    let ahead = std::time::SystemTime::now() + Duration::from_secs(3);
    let seen_2 = tiny_forge::api::SeenTag {
        tag: "build-2".into(),
        digest: None,
        source: "generic".into(),
        delivery_id: Some("delivery-2".into()),
        seen_at: humantime::format_rfc3339_seconds(ahead).to_string(),
        recent_deliveries: Vec::new(),
    };
    let version = stages
        .get("follow")
        .await
        .unwrap()
        .metadata
        .resource_version;
    tiny_forge::modes::kubernetes::status::apply_latest(
        &stages,
        "follow",
        &version.unwrap(),
        &seen_2,
    )
    .await
    .unwrap();

    // The first push comes late (a sender's retry): acknowledged, passed over (the answer may
    // still say recorded when A's watch cache has not seen build-2 yet; the write compares
    // against the API server's Stage).
    push_generic(&url_secret, a.port, "build-1", "delivery-1").await;
    let now = latest().await.unwrap();
    assert_eq!(now.tag, "build-2");
    assert!(
        now.recent_deliveries.iter().any(|id| id == "delivery-1"),
        "the passed-over delivery is not remembered on the Stage: {:?}",
        now.recent_deliveries
    );

    // Redelivered once build-2's seenAt is past, to the replica that never saw it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let answer = push_generic(&url_secret, b.port, "build-1", "delivery-1").await;
    assert_eq!(
        latest().await.map(|l| l.tag).as_deref(),
        Some("build-2"),
        "a redelivery of a passed-over push moved latest back: {answer}"
    );
    // A new push still counts.
    push_generic(&url_secret, b.port, "build-3", "delivery-3").await;
    assert_eq!(latest().await.map(|l| l.tag).as_deref(), Some("build-3"));
    drop((a, b));
    remove_everything(&client, &docker, ns, instance).await;
}

/// `--public-url` (the chart's `webhook.publicUrl`): the webhook Secret the controller makes
/// carries it, so the whole URL can be read from the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_secret_carries_the_public_url() {
    let Some((client, docker, ns, instance)) = scenario("publicurl").await else {
        return;
    };
    let (ns, instance) = (ns.as_str(), instance.as_str());
    let args = ["--public-url", "https://forge.example.com/"];
    let controller = Controller::start(ns, instance, &args, None);
    ready_listener(controller.port).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets.get("tiny-forge-webhook").await.unwrap();
    let annotations = secret.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get("tinyforge.dev/public-url")
            .map(String::as_str),
        Some("https://forge.example.com"),
        "{annotations:?}"
    );
    drop(controller);
    remove_everything(&client, &docker, ns, instance).await;
}
