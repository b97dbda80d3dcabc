//! The standalone controller end to end, in process: manifests in a directory, status in the
//! embedded store, the real Docker engine.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use tiny_forge::api::{Phase, StageStatus, labels};
use tiny_forge::engine::{ContainerSpec, Runtime, conditions};
use tiny_forge::modes::standalone::{self, Options};
use tiny_forge::store::StateDb;
use tokio::sync::oneshot;

const PROJECT: &str = "apiVersion: tinyforge.dev/v1alpha1
kind: Project
metadata: {name: demo, namespace: NS}
spec:
  image: tiny-forge-demo
  container: {port: 8080, stopTimeoutSeconds: 2}
  healthCheck: {type: http, path: /healthz, intervalSeconds: 1, retries: 2, startPeriodSeconds: 2}
";

fn stage(ns: &str, name: &str, tag: &str) -> String {
    format!(
        "apiVersion: tinyforge.dev/v1alpha1\nkind: Stage\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{projectRef: demo, pinnedTag: \"{tag}\"}}\n"
    )
}

fn options(manifests: &Path, state: &Path, ns: &str) -> Options {
    let mut o = Options::new(manifests.to_path_buf(), state.to_path_buf());
    o.resync = Duration::from_secs(1);
    o.instance = ns.to_string();
    o
}

/// Polls the store until `done` holds for the Stage, or panics with the last status.
async fn wait_for(
    db: &StateDb,
    ns: &str,
    name: &str,
    done: impl Fn(&StageStatus) -> bool,
) -> StageStatus {
    let mut last = StageStatus::default();
    for _ in 0..150 {
        last = db.stage_status(ns, name).unwrap();
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{ns}/{name} never reached the expected state; last status: {last:#?}");
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    for _ in 0..150 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn manifests_deploy_bad_files_are_reported_and_orphans_go_only_when_it_is_safe() {
    let Some(rt) = docker().await else { return };
    let ns = "t-standalone";
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("project.yaml"), PROJECT.replace("NS", ns)).unwrap();
    std::fs::write(manifests.join("web.yml"), stage(ns, "web", "1.0.0")).unwrap();
    // One good Stage and one bad in the same file: the good one deploys anyway.
    std::fs::write(
        manifests.join("more.yaml"),
        format!(
            "{}---\napiVersion: tinyforge.dev/v1alpha1\nkind: Stage\nmetadata: {{name: bad, namespace: {ns}}}\nspec: {{projectRef: demo, hostPort: not-a-port}}\n",
            stage(ns, "api", "1.1.0")
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let (stop, stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(standalone::run(options(&manifests, &state, ns), async {
        let _ = stopped.await;
    }));
    wait_until("the state store", || {
        let p = state.join("state.db");
        async move { p.exists() }
    })
    .await;
    let db = StateDb::open(&state).unwrap();

    let web = wait_for(&db, ns, "web", |s| s.phase == Some(Phase::Healthy)).await;
    assert_eq!(web.current.unwrap().tag, "1.0.0");
    let api = wait_for(&db, ns, "api", |s| s.phase == Some(Phase::Healthy)).await;
    assert_eq!(api.current.unwrap().tag, "1.1.0");
    let errors = db.manifest_errors().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("more.yaml") && errors[0].contains("Stage/bad"),
        "{errors:?}"
    );
    assert!(errors[0].contains("spec.hostPort"), "{errors:?}");

    // An orphan: our labels, our instance, no Stage. While a manifest is broken it might be
    // the broken file's, so it stays.
    let orphan = rt
        .create(&ContainerSpec {
            name: format!("tf-{ns}-demo-ghost-000000000000"),
            image: "tiny-forge-demo:1.0.0".into(),
            labels: [
                (labels::MANAGED_BY, "tiny-forge"),
                (labels::INSTANCE, ns),
                (labels::NAMESPACE, ns),
                (labels::STAGE, "ghost"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            restart_policy: "no".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        rt.inspect(&orphan).await.unwrap().is_some(),
        "orphan removed while a manifest was broken"
    );

    // Fix the file: the orphan goes, the other Stages stay.
    std::fs::write(manifests.join("more.yaml"), stage(ns, "api", "1.1.0")).unwrap();
    wait_until("the orphan is removed", || {
        let rt = &rt;
        let orphan = orphan.clone();
        async move { rt.inspect(&orphan).await.unwrap().is_none() }
    })
    .await;
    assert!(db.manifest_errors().unwrap().is_empty());

    // A file removed and written back a moment later (a checkout, an editor) costs nothing.
    let before = rt
        .list_managed(&[(labels::NAMESPACE, ns), (labels::STAGE, "web")])
        .await
        .unwrap();
    let web_yml = std::fs::read(manifests.join("web.yml")).unwrap();
    std::fs::remove_file(manifests.join("web.yml")).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(manifests.join("web.yml"), web_yml).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = rt
        .list_managed(&[(labels::NAMESPACE, ns), (labels::STAGE, "web")])
        .await
        .unwrap();
    assert_eq!(
        before.iter().map(|c| &c.id).collect::<Vec<_>>(),
        after.iter().map(|c| &c.id).collect::<Vec<_>>(),
        "the serving container survived the brief removal"
    );

    // Editing a pin rolls; removing a Stage's manifest retires its container.
    std::fs::write(manifests.join("web.yml"), stage(ns, "web", "1.1.0")).unwrap();
    let web = wait_for(&db, ns, "web", |s| {
        s.phase == Some(Phase::Healthy) && s.current.as_ref().is_some_and(|c| c.tag == "1.1.0")
    })
    .await;
    assert_eq!(web.observed_generation, Some(2));
    assert_eq!(conditions::ready(&web.conditions).unwrap().status, "True");
    std::fs::remove_file(manifests.join("web.yml")).unwrap();
    wait_until("web's container is removed", || {
        let rt = &rt;
        async move {
            rt.list_managed(&[(labels::NAMESPACE, ns), (labels::STAGE, "web")])
                .await
                .unwrap()
                .is_empty()
        }
    })
    .await;
    assert_eq!(
        rt.list_managed(&[(labels::NAMESPACE, ns), (labels::STAGE, "api")])
            .await
            .unwrap()
            .len(),
        1
    );

    stop.send(()).unwrap();
    controller.await.unwrap().unwrap();
    for c in rt.list_managed(&[(labels::INSTANCE, ns)]).await.unwrap() {
        rt.remove(&c.id).await.unwrap();
    }
}

#[tokio::test]
async fn docker_unreachable_shows_in_status_and_the_controller_keeps_running() {
    let ns = "t-nodocker";
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("all.yaml"),
        format!(
            "{}---\n{}",
            PROJECT.replace("NS", ns),
            stage(ns, "web", "1.0.0")
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let mut opts = options(&manifests, &state, ns);
    opts.docker_host = Some("unix:///nonexistent/docker.sock".into());
    let (stop, stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(standalone::run(opts, async {
        let _ = stopped.await;
    }));
    wait_until("the state store", || {
        let p = state.join("state.db");
        async move { p.exists() }
    })
    .await;
    let db = StateDb::open(&state).unwrap();
    let status = wait_for(&db, ns, "web", |s| {
        conditions::ready(&s.conditions).is_some_and(|c| c.reason == "DockerUnreachable")
    })
    .await;
    let ready = conditions::ready(&status.conditions).unwrap();
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("/nonexistent/docker.sock"),
        "{}",
        ready.message
    );
    assert!(!controller.is_finished(), "the controller must not exit");
    stop.send(()).unwrap();
    controller.await.unwrap().unwrap();
}
