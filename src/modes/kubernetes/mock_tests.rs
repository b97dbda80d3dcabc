//! The kube layer against a mock API server (tower-test): every request the code makes is taken
//! off the mock, checked (method, path, query, content type, JSON body) and answered. Docker is
//! the engine's in-memory fake (`engine::fake`), which records the verbs called on it (listings
//! with their label filter) and can be made unreachable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use http::{Request, Response};
use kube::Client;
use kube::api::Api;
use kube::client::Body;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer;
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::containers::ContainerCache;
use super::controller::{self, Ctx, Error, FINALIZER, ProjectView};
use super::secrets::ClusterSecrets;
use super::status::{self, KubeSink};
use crate::api::{Phase, Project, SeenTag, Stage, StageStatus, labels};
use crate::engine::fake::FakeDocker;
use crate::engine::{RuntimeError, StageKey, StatusSink as _};

/// Longest wait for any one exchange: a test fails rather than hangs.
const WAIT: Duration = Duration::from_secs(5);
const NS: &str = "team-a";
const INSTANCE: &str = "mock";
const STAGES: &str = "/apis/tinyforge.dev/v1alpha1/namespaces/team-a/stages";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events";

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mock_api() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// One request as the API server received it.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    query: HashMap<String, String>,
    content_type: Option<String>,
    body: Value,
}

impl Seen {
    fn query(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }
}

/// Takes the next request off the mock (failing after [`WAIT`]) and answers it with `code` and
/// what `reply` makes of the request.
async fn serve(handle: &mut Handle, code: u16, reply: impl FnOnce(&Seen) -> Value) -> Seen {
    let (request, respond) = tokio::time::timeout(WAIT, handle.next_request())
        .await
        .expect("no request reached the API server in time")
        .expect("the client went away");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.expect("a readable request body");
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect(),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON request body")
        },
    };
    let answer = serde_json::to_vec(&reply(&seen)).expect("a JSON answer");
    respond.send_response(
        Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(answer))
            .expect("a response"),
    );
    seen
}

/// The code under test sent nothing more (whatever it sent was awaited, so it was seen).
fn assert_quiet(handle: &mut Handle) {
    if let Some(Some((request, _))) = handle.next_request().now_or_never() {
        panic!("unexpected request: {} {}", request.method(), request.uri());
    }
}

/// Awaits a spawned call, failing after [`WAIT`].
async fn finish<T>(task: JoinHandle<T>) -> T {
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the call did not finish in time")
        .expect("the call panicked")
}

fn status_error(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{reason} (mock)"), "reason": reason, "code": code,
    })
}

fn stage_json(name: &str, finalizers: &[&str], deleting: bool) -> Value {
    let mut v = json!({
        "apiVersion": "tinyforge.dev/v1alpha1",
        "kind": "Stage",
        "metadata": {
            "name": name, "namespace": NS, "uid": "uid-1", "generation": 2,
            "resourceVersion": "42", "finalizers": finalizers,
        },
        "spec": {"projectRef": "shop"},
    });
    if deleting {
        v["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
    }
    v
}

fn stage(name: &str, finalizers: &[&str], deleting: bool) -> Stage {
    serde_json::from_value(stage_json(name, finalizers, deleting)).expect("a valid Stage")
}

fn seen_tag(tag: &str) -> SeenTag {
    SeenTag {
        tag: tag.into(),
        digest: Some("sha256:abc".into()),
        source: "registry".into(),
        delivery_id: Some("d-1".into()),
        seen_at: "2024-01-01T00:00:00Z".into(),
        recent_deliveries: Vec::new(),
    }
}

/// What every reconcile shares, around the mock API server and a connected fake Docker; the
/// Project cache has listed `projects`.
async fn ctx(client: Client, docker: &FakeDocker, projects: Vec<Project>) -> Arc<Ctx<FakeDocker>> {
    let runtime = docker.clone();
    let (secrets, mut secret_writer) = reflector::store();
    secret_writer.apply_watcher_event(&watcher::Event::InitDone);
    let (project_store, mut writer) = reflector::store::<DeserializeGuard<Project>>();
    // InitDone swaps the init buffer in: objects go in as InitApply, not Apply.
    writer.apply_watcher_event(&watcher::Event::Init);
    for p in projects {
        writer.apply_watcher_event(&watcher::Event::InitApply(DeserializeGuard(Ok(p))));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    Arc::new(Ctx {
        client: client.clone(),
        engine: Arc::new(crate::modes::host::single_host(
            runtime,
            KubeSink::new(client.clone()),
            ClusterSecrets {
                store: secrets,
                namespace: "tiny-forge".into(),
            },
            None,
            None,
            INSTANCE,
        )),
        containers: ContainerCache::new(INSTANCE, Duration::from_secs(5)),
        projects: ProjectView::new(project_store, client.clone()),
        events: Recorder::new(
            client,
            Reporter {
                controller: "tiny-forge".into(),
                instance: Some("pod-0".into()),
            },
        ),
        resync: Duration::from_secs(30),
        failures: Mutex::default(),
        metrics: Default::default(),
    })
}

/// The label filter of a recorded `list …` step (the Docker adapter adds the managed-by label
/// to every listing itself).
fn label_filters(step: &str) -> Vec<String> {
    let filter = step.strip_prefix("list ").expect("a listing");
    filter.split(',').map(str::to_string).collect()
}

fn reconcile(
    obj: DeserializeGuard<Stage>,
    ctx: &Arc<Ctx<FakeDocker>>,
) -> JoinHandle<Result<Action, Error>> {
    tokio::spawn(controller::reconcile_stage(Arc::new(obj), ctx.clone()))
}

/// Asserts an events.k8s.io/v1 Event POST about Stage `web` and answers it.
async fn expect_event(handle: &mut Handle, type_: &str, reason: &str) -> Seen {
    let seen = serve(handle, 201, |s| s.body.clone()).await;
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, EVENTS);
    assert_eq!(seen.body["type"], type_, "{:#}", seen.body);
    assert_eq!(seen.body["reason"], reason, "{:#}", seen.body);
    assert_eq!(seen.body["regarding"]["kind"], "Stage");
    assert_eq!(seen.body["regarding"]["name"], "web");
    assert_eq!(seen.body["regarding"]["namespace"], NS);
    assert_eq!(seen.body["reportingController"], "tiny-forge");
    seen
}

/// Asserts the controller's server-side apply of Stage `web`'s status and answers it.
async fn expect_status_apply(handle: &mut Handle) -> Seen {
    let seen = serve(handle, 200, |_| stage_json("web", &[FINALIZER], false)).await;
    assert_eq!(seen.method, "PATCH");
    assert_eq!(seen.path, format!("{STAGES}/web/status"));
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(seen.query("fieldManager"), Some(status::FIELD_MANAGER));
    assert_eq!(seen.query("force"), Some("true"));
    assert_eq!(seen.body["apiVersion"], "tinyforge.dev/v1alpha1");
    assert_eq!(seen.body["kind"], "Stage");
    assert!(
        seen.body["status"].get("latest").is_none(),
        "the controller never applies status.latest: {:#}",
        seen.body
    );
    seen
}

fn ready_condition(status: &Value) -> &Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .unwrap_or_else(|| panic!("no Ready condition in {status:#}"))
}

#[tokio::test]
async fn status_apply_is_a_forced_server_side_apply_without_latest() {
    let (client, mut handle) = mock_api();
    let api: Api<Stage> = Api::namespaced(client, NS);
    let status = StageStatus {
        phase: Some(Phase::Healthy),
        message: Some("1.2 runs".into()),
        observed_generation: Some(3),
        latest: Some(seen_tag("1.3")),
        desired_tag: Some("1.2".into()),
        ..Default::default()
    };
    let call = tokio::spawn(async move { status::apply(&api, "Stage", "web", &status).await });
    let seen = expect_status_apply(&mut handle).await;
    assert_eq!(
        seen.body,
        json!({
            "apiVersion": "tinyforge.dev/v1alpha1",
            "kind": "Stage",
            "status": {
                "phase": "Healthy",
                "message": "1.2 runs",
                "observedGeneration": 3,
                "desiredTag": "1.2",
            },
        }),
        "the whole status but latest, nothing else (no metadata, no spec)"
    );
    finish(call).await.expect("the apply succeeds");
    assert_quiet(&mut handle);
}

#[tokio::test]
async fn status_apply_targets_the_kind_and_reports_api_errors() {
    let (client, mut handle) = mock_api();
    let api: Api<Project> = Api::namespaced(client, NS);
    let call = tokio::spawn(async move {
        status::apply(&api, "Project", "shop", &json!({"observedGeneration": 1})).await
    });
    let seen = serve(&mut handle, 422, |_| status_error(422, "Invalid")).await;
    assert_eq!(seen.method, "PATCH");
    assert_eq!(
        seen.path,
        "/apis/tinyforge.dev/v1alpha1/namespaces/team-a/projects/shop/status"
    );
    assert_eq!(seen.body["kind"], "Project");
    assert_eq!(seen.body["status"], json!({"observedGeneration": 1}));
    let err = finish(call).await.expect_err("a 422 is an error");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err:?}"
    );
}

#[tokio::test]
async fn kube_sink_saves_to_the_stage_namespace_and_names_the_stage_on_failure() {
    let (client, mut handle) = mock_api();
    let sink = KubeSink::new(client);
    let key = StageKey {
        namespace: NS.into(),
        project: "shop".into(),
        stage: "web".into(),
    };
    let status = StageStatus {
        phase: Some(Phase::Deploying),
        latest: Some(seen_tag("2.0")),
        ..Default::default()
    };
    let call = tokio::spawn(async move { sink.save(&key, &status).await });
    let seen = serve(&mut handle, 500, |_| status_error(500, "InternalError")).await;
    assert_eq!(seen.path, format!("{STAGES}/web/status"));
    assert_eq!(seen.query("fieldManager"), Some(status::FIELD_MANAGER));
    assert_eq!(seen.body["status"], json!({"phase": "Deploying"}));
    let err = finish(call).await.expect_err("a 500 fails the save");
    assert!(
        err.to_string()
            .starts_with("cannot write the status of team-a/web:"),
        "{err}"
    );
}

#[tokio::test]
async fn apply_latest_sends_only_latest_with_the_webhook_manager_and_a_precondition() {
    let (client, mut handle) = mock_api();
    let api: Api<Stage> = Api::namespaced(client, NS);
    let seen_1 = seen_tag("1.3");
    let call = {
        let (api, seen_1) = (api.clone(), seen_1.clone());
        tokio::spawn(async move { status::apply_latest(&api, "web", "17", &seen_1).await })
    };
    let seen = serve(&mut handle, 200, |_| {
        let mut s = stage_json("web", &[], false);
        s["status"] = json!({"latest": seen_1});
        s
    })
    .await;
    assert_eq!(seen.method, "PATCH");
    assert_eq!(seen.path, format!("{STAGES}/web/status"));
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(seen.query("fieldManager"), Some("tiny-forge-webhook"));
    assert_eq!(seen.query("force"), Some("true"));
    assert_eq!(
        seen.body,
        json!({
            "apiVersion": "tinyforge.dev/v1alpha1",
            "kind": "Stage",
            "metadata": {"resourceVersion": "17"},
            "status": {"latest": {
                "tag": "1.3", "digest": "sha256:abc", "source": "registry",
                "deliveryId": "d-1", "seenAt": "2024-01-01T00:00:00Z",
            }},
        })
    );
    let stage = finish(call).await.expect("the apply succeeds");
    assert_eq!(
        stage
            .status
            .and_then(|s| s.latest)
            .map(|l| l.tag)
            .as_deref(),
        Some("1.3")
    );

    // A moved resource version is the API server's 409, handed to the caller to compare again.
    let call = tokio::spawn(async move { status::apply_latest(&api, "web", "17", &seen_1).await });
    serve(&mut handle, 409, |_| status_error(409, "Conflict")).await;
    let err = finish(call).await.expect_err("a conflict is an error");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err:?}"
    );
    assert_quiet(&mut handle);
}

#[tokio::test]
async fn a_stage_without_our_finalizer_gets_it_before_anything_else() {
    let (client, mut handle) = mock_api();
    let docker = FakeDocker::default();
    let ctx = ctx(client, &docker, vec![]).await;
    let call = reconcile(DeserializeGuard(Ok(stage("web", &[], false))), &ctx);
    let seen = serve(&mut handle, 200, |_| stage_json("web", &[FINALIZER], false)).await;
    assert_eq!(seen.method, "PATCH");
    assert_eq!(seen.path, format!("{STAGES}/web"));
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert_eq!(
        seen.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    );
    let action = finish(call).await.expect("the reconcile succeeds");
    assert_eq!(
        action,
        Action::await_change(),
        "the patch triggers the next one"
    );
    assert_quiet(&mut handle);
    let calls = docker.steps();
    assert!(
        calls.is_empty(),
        "no Docker call before the finalizer is on: {calls:?}"
    );
}

#[tokio::test]
async fn our_finalizer_is_appended_to_someone_elses() {
    let (client, mut handle) = mock_api();
    let docker = FakeDocker::default();
    let ctx = ctx(client, &docker, vec![]).await;
    let call = reconcile(
        DeserializeGuard(Ok(stage("web", &["other.io/keep"], false))),
        &ctx,
    );
    let seen = serve(&mut handle, 200, |_| {
        stage_json("web", &["other.io/keep", FINALIZER], false)
    })
    .await;
    assert_eq!(
        seen.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": ["other.io/keep"]},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    );
    assert_eq!(finish(call).await.expect("ok"), Action::await_change());
    assert_quiet(&mut handle);
}

#[tokio::test]
async fn a_deleted_stage_keeps_its_finalizer_while_docker_is_unreachable() {
    let (client, mut handle) = mock_api();
    let docker = FakeDocker::default();
    let ctx = ctx(client, &docker, vec![]).await;
    docker.set_unreachable(true);
    let obj = DeserializeGuard(Ok(stage("web", &["other.io/keep", FINALIZER], true)));
    let call = reconcile(obj.clone(), &ctx);
    // Whatever the API server would be asked (a finalizer removal, an event) is a failure.
    let err = tokio::select! {
        result = finish(call) => result.expect_err("a failed cleanup fails the reconcile"),
        request = handle.next_request() => panic!(
            "unexpected request while Docker is away: {:?}",
            request.map(|(r, _)| format!("{} {}", r.method(), r.uri()))
        ),
    };
    match &err {
        Error::Finalizer(e) => assert!(
            matches!(
                e.as_ref(),
                finalizer::Error::CleanupFailed(Error::Runtime(RuntimeError::Unreachable { .. }))
            ),
            "{e:?}"
        ),
        other => panic!("not a finalizer error: {other:?}"),
    }
    // No finalizer removal, no event: the object stays until a cleanup succeeds.
    assert_quiet(&mut handle);
    // The error policy retries, backing off per object.
    let obj = Arc::new(obj);
    assert_eq!(
        controller::error_policy(obj.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(
        controller::error_policy(obj, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(2))
    );
}

#[tokio::test]
async fn a_deleted_stage_is_cleaned_up_then_its_finalizer_removed() {
    let (client, mut handle) = mock_api();
    let docker = FakeDocker::default();
    let c1 = docker.add_container(
        "team-a-web-1",
        &[
            (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
            (labels::INSTANCE, INSTANCE),
            (labels::NAMESPACE, NS),
            (labels::STAGE, "web"),
        ],
    );
    let ctx = ctx(client, &docker, vec![]).await;
    let call = reconcile(
        DeserializeGuard(Ok(stage("web", &["other.io/keep", FINALIZER], true))),
        &ctx,
    );
    let event = expect_event(&mut handle, "Normal", "Deleted").await;
    assert_eq!(event.body["note"], "containers and proxy host removed");
    // Docker was cleaned before anything was said or unblocked.
    let calls = docker.steps();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        label_filters(&calls[0]),
        [
            format!("{}={INSTANCE}", labels::INSTANCE),
            format!("{}={NS}", labels::NAMESPACE),
            format!("{}=web", labels::STAGE),
        ]
    );
    assert_eq!(calls[1], format!("remove {c1}"));
    let seen = serve(&mut handle, 200, |_| {
        stage_json("web", &["other.io/keep"], true)
    })
    .await;
    assert_eq!(seen.method, "PATCH");
    assert_eq!(seen.path, format!("{STAGES}/web"));
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert_eq!(
        seen.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/1"},
        ])
    );
    assert_eq!(finish(call).await.expect("ok"), Action::await_change());
    assert_quiet(&mut handle);
}

#[tokio::test]
async fn an_unreadable_stage_is_marked_invalid_and_a_warning_is_published() {
    let (client, mut handle) = mock_api();
    let docker = FakeDocker::default();
    let ctx = ctx(client, &docker, vec![]).await;
    let mut raw = stage_json("web", &[FINALIZER], false);
    raw["spec"]["projectRef"] = json!(5);
    let obj: DeserializeGuard<Stage> =
        serde_json::from_value(raw.clone()).expect("a guard always parses");
    assert!(obj.0.is_err(), "the spec must not parse");
    let call = reconcile(obj, &ctx);

    // The object is read again to say which field is wrong.
    let unreadable = raw.clone();
    let read = serve(&mut handle, 200, move |_| unreadable.clone()).await;
    assert_eq!(
        (read.method.as_str(), read.path.as_str()),
        ("GET", format!("{STAGES}/web").as_str())
    );
    let seen = expect_status_apply(&mut handle).await;
    let status = &seen.body["status"];
    assert_eq!(status["observedGeneration"], 2);
    let ready = ready_condition(status);
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "InvalidSpec");
    let message = status["message"].as_str().expect("a message");
    assert!(
        message.starts_with("cannot read this Stage: spec.projectRef: "),
        "{message}"
    );
    assert!(message.contains("integer `5`"), "{message}");

    let event = expect_event(&mut handle, "Warning", "InvalidSpec").await;
    assert_eq!(event.body["note"], message);
    assert_eq!(event.body["regarding"]["uid"], "uid-1");
    assert_eq!(
        event.body["regarding"]["apiVersion"],
        "tinyforge.dev/v1alpha1"
    );

    assert_eq!(
        finish(call).await.expect("ok"),
        Action::await_change(),
        "nothing to retry until the object is edited"
    );
    assert_quiet(&mut handle);
    let calls = docker.steps();
    assert!(calls.is_empty(), "{calls:?}");
}

#[tokio::test]
async fn an_unreadable_deleted_stage_is_cleaned_up_and_released_at_its_version() {
    let (client, mut handle) = mock_api();
    let docker = FakeDocker::default();
    let ctx = ctx(client, &docker, vec![]).await;
    let mut raw = stage_json("web", &[FINALIZER, "other.io/keep"], true);
    raw["spec"] = json!("not an object");
    let obj: DeserializeGuard<Stage> = serde_json::from_value(raw).expect("a guard always parses");
    assert!(obj.0.is_err());
    let call = reconcile(obj, &ctx);
    let seen = serve(&mut handle, 200, |_| {
        stage_json("web", &["other.io/keep"], true)
    })
    .await;
    let calls = docker.steps();
    assert_eq!(calls.len(), 1, "the cleanup listed first: {calls:?}");
    assert!(label_filters(&calls[0]).contains(&format!("{}=web", labels::STAGE)));
    assert_eq!(seen.method, "PATCH");
    assert_eq!(seen.path, format!("{STAGES}/web"));
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        seen.body,
        json!({"metadata": {"finalizers": ["other.io/keep"], "resourceVersion": "42"}})
    );
    assert_eq!(finish(call).await.expect("ok"), Action::await_change());
    assert_quiet(&mut handle);
}

#[tokio::test]
async fn a_stage_of_a_missing_project_reports_it_without_sending_latest() {
    let (client, mut handle) = mock_api();
    let docker = FakeDocker::default();
    let ctx = ctx(client, &docker, vec![]).await;
    let mut raw = stage_json("web", &[FINALIZER], false);
    raw["status"] = json!({"latest": seen_tag("1.3")});
    let call = reconcile(serde_json::from_value(raw).expect("a Stage"), &ctx);

    // The cache has listed and lacks the Project: the API server is asked.
    let seen = serve(&mut handle, 404, |_| status_error(404, "NotFound")).await;
    assert_eq!(seen.method, "GET");
    assert_eq!(
        seen.path,
        "/apis/tinyforge.dev/v1alpha1/namespaces/team-a/projects/shop"
    );

    let seen = expect_status_apply(&mut handle).await;
    let status = &seen.body["status"];
    assert_eq!(status["phase"], "Pending");
    assert_eq!(status["observedGeneration"], 2);
    let ready = ready_condition(status);
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "ProjectNotFound");
    let docker_calls = docker.steps();
    assert_eq!(docker_calls.len(), 1, "one listing: {docker_calls:?}");
    assert_eq!(
        label_filters(&docker_calls[0]),
        [format!("{}={INSTANCE}", labels::INSTANCE)]
    );

    let event = expect_event(&mut handle, "Warning", "ProjectNotFound").await;
    assert_eq!(event.body["note"], status["message"]);
    assert_eq!(
        finish(call).await.expect("ok"),
        Action::await_change(),
        "a missing Project waits for a change"
    );
    assert_quiet(&mut handle);
}

fn lease_json(holder: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "tiny-forge", "namespace": NS, "resourceVersion": "7"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    })
}

/// kube-lease-manager says nothing while it cannot reach the API server; the watchdog must take
/// leadership away before the Lease (15 s) can expire for the other replicas.
#[tokio::test(start_paused = true)]
async fn a_leader_cut_off_from_the_api_server_stops_within_ten_seconds() {
    let (client, mut handle) = mock_api();
    let (tx, mut confirmed) = tokio::sync::watch::channel(false);
    let dog = tokio::spawn(super::watchdog(
        Api::namespaced(client, NS),
        "tiny-forge".into(),
        "me".into(),
        tx,
    ));
    let seen = serve(&mut handle, 200, |_| lease_json("me")).await;
    assert_eq!(seen.method, "GET");
    assert_eq!(
        seen.path,
        format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/tiny-forge")
    );
    confirmed.wait_for(|c| *c).await.unwrap();

    // From now on every read fails.
    let cut = tokio::time::Instant::now();
    while *confirmed.borrow() {
        tokio::select! {
            _ = serve(&mut handle, 500, |_| status_error(500, "InternalError")) => {}
            _ = confirmed.changed() => {}
        }
    }
    let after = cut.elapsed();
    assert!(
        after >= Duration::from_secs(8) && after <= Duration::from_secs(12),
        "stepped down after {after:?}"
    );

    // Back, but someone else holds it now: still not leading.
    serve(&mut handle, 200, |_| lease_json("other")).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!*confirmed.borrow());
    dog.abort();
}
