//! Shared set-up of the tests that run against the real Docker engine (`make test` starts a
//! private one and exports DOCKER_HOST). Each test works in a namespace of its own and removes
//! its containers, so tests can run in parallel on one engine.
#![allow(dead_code, unused_imports)]

use std::sync::Mutex;

use tiny_forge::adapters::docker::DockerRuntime;
use tiny_forge::adapters::probe::NetProber;
use tiny_forge::api::{ProjectSpec, StageSpec, StageStatus, labels};
use tiny_forge::engine::{
    ContainerInfo, ContainerSpec, ContainerState, ImageInfo, Pull, Reconciled, Reconciler, Runtime,
    RuntimeError, StageInput, StageKey,
};
pub use tiny_forge::testing::{MemSink, NoSecrets, demo_project, pinned};

/// The real engine, or None (test skipped with a note) when the run did not ask for Docker
/// tests. Under `make test` (TINY_FORGE_TEST_DOCKER=1) an unreachable engine fails the test.
pub async fn docker() -> Option<DockerRuntime> {
    match DockerRuntime::connect(None).await {
        Ok(rt) => Some(rt),
        Err(e) if std::env::var_os("TINY_FORGE_TEST_DOCKER").is_some() => {
            panic!("TINY_FORGE_TEST_DOCKER is set but Docker is unreachable: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no Docker engine ({e}); run `make test`");
            None
        }
    }
}

/// Forwards to the real runtime and records the verbs, so tests can assert the order of steps
/// (a recorder around the real thing, not a double).
pub struct Recording<R> {
    pub inner: R,
    pub log: Mutex<Vec<String>>,
}

impl<R: Runtime> Recording<R> {
    pub fn new(inner: R) -> Self {
        Recording {
            inner,
            log: Mutex::new(Vec::new()),
        }
    }
    fn note(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.log.lock().unwrap())
    }
}

impl<R: Runtime> Runtime for Recording<R> {
    fn endpoint(&self) -> &str {
        self.inner.endpoint()
    }
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.inner.ping().await
    }
    async fn list_managed(
        &self,
        filter: &[(&str, &str)],
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.inner.list_managed(filter).await
    }
    async fn ensure_image(&self, reference: &str, pull: Pull) -> Result<ImageInfo, RuntimeError> {
        self.note(format!("image {reference}"));
        self.inner.ensure_image(reference, pull).await
    }
    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.note(format!("create {}", spec.labels[labels::TAG]));
        self.inner.create(spec).await
    }
    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.note(format!("start {}", short(id)));
        self.inner.start(id).await
    }
    async fn stop(&self, id: &str, timeout_s: u32) -> Result<(), RuntimeError> {
        self.note(format!("stop {}", short(id)));
        self.inner.stop(id, timeout_s).await
    }
    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.note(format!("remove {}", short(id)));
        self.inner.remove(id).await
    }
    async fn inspect(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        self.inner.inspect(id).await
    }
}

pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub type TestReconciler<R> = Reconciler<R, NetProber, MemSink, NoSecrets>;

pub fn reconciler<R: Runtime>(runtime: R) -> TestReconciler<R> {
    Reconciler {
        runtime,
        prober: NetProber::new(),
        sink: MemSink::default(),
        secrets: NoSecrets,
        proxy: tiny_forge::engine::proxy::NoProxy,
        host_name: "default".into(),
        instance: "test".into(),
        holder: None,
    }
}

/// One Stage under test: its namespace is unique to the test.
pub struct Fixture {
    pub key: StageKey,
    pub generation: i64,
    pub project: ProjectSpec,
    pub stage: StageSpec,
    pub status: StageStatus,
}

impl Fixture {
    pub fn new(namespace: &str, stage: StageSpec) -> Fixture {
        Fixture {
            key: StageKey {
                namespace: namespace.into(),
                project: "demo".into(),
                stage: "web".into(),
            },
            generation: 1,
            project: demo_project(),
            stage,
            status: StageStatus::default(),
        }
    }

    /// Sets a new spec, as an edit of the manifest would (the generation moves).
    pub fn edit(&mut self, f: impl FnOnce(&mut StageSpec)) {
        f(&mut self.stage);
        self.generation += 1;
    }

    pub async fn containers<R: Runtime>(&self, rt: &R) -> Vec<ContainerInfo> {
        rt.list_managed(&[
            (labels::NAMESPACE, &self.key.namespace),
            (labels::STAGE, &self.key.stage),
        ])
        .await
        .expect("list containers")
    }

    /// One reconcile pass, the way the controller runs it; the status is kept for the next.
    pub async fn reconcile<R: Runtime>(&mut self, r: &TestReconciler<R>) -> Reconciled {
        let observed = self.containers(&r.runtime).await;
        let input = StageInput {
            key: self.key.clone(),
            generation: self.generation,
            stage: &self.stage,
            project: Some(&self.project),
        };
        let out = r.reconcile(&input, &observed, self.status.clone()).await;
        self.status = out.status.clone();
        out
    }

    pub async fn cleanup<R: Runtime>(&self, rt: &R) {
        for c in rt
            .list_managed(&[(labels::NAMESPACE, &self.key.namespace)])
            .await
            .unwrap_or_default()
        {
            let _ = rt.remove(&c.id).await;
        }
    }
}

/// GET http://addr/ → body, or the error.
pub async fn get(url: &str) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .no_proxy()
        .build()
        .unwrap();
    match client.get(url).send().await {
        Ok(r) => r.text().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The IP of a container, for requests that bypass any published port.
pub async fn ip_of<R: Runtime>(rt: &R, id: &str) -> String {
    rt.inspect(id)
        .await
        .unwrap()
        .and_then(|s| s.ip)
        .map(|ip| ip.to_string())
        .expect("container has an IP")
}

/// The webhook URL of a controller whose listener is on 127.0.0.1:`port`, once it answers.
pub async fn url_when_up(state: &std::path::Path, port: u16) -> String {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let db = tiny_forge::store::StateDb::open(state).unwrap();
            let sealer =
                tiny_forge::crypto::SecretBox::load_or_create(&state.join("secret.key")).unwrap();
            let secret = tiny_forge::sources::webhook::url_secret(&db, &sealer)
                .unwrap()
                .unwrap();
            return format!("http://127.0.0.1:{port}/api/webhook/{secret}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("listener on {port} never came up");
}

/// Standalone options for a test controller: 1 s resync, its own instance, a webhook listener
/// on 127.0.0.1:`port`.
pub fn options_with_webhooks(
    manifests: std::path::PathBuf,
    state: std::path::PathBuf,
    instance: &str,
    port: u16,
) -> tiny_forge::modes::standalone::Options {
    let mut opts = tiny_forge::modes::standalone::Options::new(manifests, state);
    opts.resync = std::time::Duration::from_secs(1);
    opts.instance = instance.into();
    opts.webhook = Some(tiny_forge::sources::webhook::server::Config {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        ..Default::default()
    });
    opts
}
