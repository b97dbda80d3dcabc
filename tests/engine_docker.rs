//! The deploy state machine on the real Docker engine: roll forward, roll back, host-port
//! handover, drift repair, resuming an interrupted deploy, and clear errors.

mod common;

use common::*;
use tiny_forge::api::{Outcome, Phase, PullPolicy, labels};
use tiny_forge::engine::conditions;
use tiny_forge::engine::{Effective, Requeue, Runtime};

fn ready(status: &tiny_forge::api::StageStatus) -> (String, String) {
    let c = conditions::ready(&status.conditions).expect("a Ready condition");
    (c.status.clone(), c.reason.clone())
}

#[tokio::test]
async fn rolls_forward_then_rolls_back_a_broken_tag_without_touching_the_serving_container() {
    let Some(rt) = docker().await else { return };
    let r = reconciler(Recording::new(rt));
    let mut f = Fixture::new("t-roll", pinned("1.0.0"));
    f.cleanup(&r.runtime).await;

    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );
    assert_eq!(out.requeue, Requeue::Resync);
    assert_eq!(ready(&f.status), ("True".into(), "Healthy".into()));
    let message = f.status.message.clone().unwrap();
    assert!(
        message.starts_with("1.0.0 is serving (healthy in "),
        "{message}"
    );
    // A converged status is never rewritten: the next pass (a resync, or the first pass after a
    // restart, which starts from the stored status) finds nothing to say that differs.
    let converged = f.status.clone();
    let out = f.reconcile(&r).await;
    assert_eq!(out.requeue, Requeue::Resync);
    assert_eq!(f.status, converged, "a resync rewrote a converged status");
    let first = f.containers(&r.runtime).await;
    assert_eq!(first.len(), 1);
    let v1 = first[0].clone();
    assert!(v1.running);
    assert_eq!(v1.label(labels::MANAGED_BY), Some("tiny-forge"));
    assert_eq!(v1.label(labels::PROJECT), Some("demo"));
    assert_eq!(v1.label(labels::TAG), Some("1.0.0"));
    let ip = ip_of(&r.runtime, &v1.id).await;
    assert_eq!(
        get(&format!("http://{ip}:8080/")).await.unwrap().trim(),
        "tiny-forge-demo 1.0.0"
    );

    // Without a host port the new container must be healthy before the old one stops.
    f.edit(|s| s.pinned_tag = Some("1.1.0".into()));
    r.runtime.take();
    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );
    let steps = r.runtime.take();
    let start_new = steps.iter().position(|s| s.starts_with("start")).unwrap();
    let stop_old = steps
        .iter()
        .position(|s| *s == format!("stop {}", short(&v1.id)))
        .expect("the old container is retired");
    assert!(
        start_new < stop_old,
        "new started before old stopped: {steps:?}"
    );
    let now = f.containers(&r.runtime).await;
    assert_eq!(now.len(), 1, "the old container is gone");
    let v2 = now[0].clone();
    assert_eq!(v2.label(labels::TAG), Some("1.1.0"));
    assert_eq!(f.status.previous.as_ref().unwrap().tag, "1.0.0");
    assert_eq!(
        f.status.current.as_ref().unwrap().container_id.as_deref(),
        Some(v2.id.as_str())
    );
    assert_eq!(f.status.history[0].outcome, Outcome::Succeeded);

    // A broken tag: the new container fails its health check, is removed, 1.1.0 keeps serving.
    f.edit(|s| s.pinned_tag = Some("1.2.0-broken".into()));
    let out = f.reconcile(&r).await;
    assert_eq!(out.status.phase, Some(Phase::RolledBack));
    assert_eq!(ready(&f.status), ("False".into(), "RolledBack".into()));
    let message = f.status.message.clone().unwrap();
    assert!(
        message.contains("1.2.0-broken failed its health check"),
        "{message}"
    );
    assert!(message.contains("answered 500"), "{message}");
    assert!(message.contains("1.1.0 keeps serving"), "{message}");
    assert_eq!(f.status.history[0].outcome, Outcome::RolledBack);
    let after = f.containers(&r.runtime).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, v2.id, "the serving container is the same one");
    assert!(after[0].running);
    let ip = ip_of(&r.runtime, &v2.id).await;
    assert_eq!(
        get(&format!("http://{ip}:8080/")).await.unwrap().trim(),
        "tiny-forge-demo 1.1.0"
    );

    // The failure is held: the next pass does not try the same broken tag again.
    r.runtime.take();
    let out = f.reconcile(&r).await;
    assert_eq!(out.status.phase, Some(Phase::RolledBack));
    let steps = r.runtime.take();
    assert!(
        !steps.iter().any(|s| s.starts_with("create")),
        "held failure retried: {steps:?}"
    );

    // While the failure is held, drift of what serves is still repaired: deleted → recreated.
    r.runtime.remove(&v2.id).await.unwrap();
    f.reconcile(&r).await;
    let now = f.containers(&r.runtime).await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].label(labels::TAG), Some("1.1.0"));
    assert!(now[0].running);
    r.runtime.take();

    // Pinning what serves ends the episode at once: no new container.
    f.edit(|s| s.pinned_tag = Some("1.1.0".into()));
    let out = f.reconcile(&r).await;
    assert_eq!(out.status.phase, Some(Phase::Healthy));
    assert_eq!(f.status.last_failure, None);
    let steps = r.runtime.take();
    assert!(
        !steps
            .iter()
            .any(|s| s.starts_with("create") || s.starts_with("stop")),
        "{steps:?}"
    );

    // Rolling back by pin needs no pull: the previous image is still on the host.
    f.edit(|s| s.pinned_tag = Some("1.0.0".into()));
    let out = f.reconcile(&r).await;
    assert_eq!(out.status.phase, Some(Phase::Healthy));
    assert_eq!(f.status.last_failure, None);
    f.cleanup(&r.runtime).await;
}

#[tokio::test]
async fn a_fixed_host_port_is_handed_over_and_given_back_when_the_new_container_fails() {
    let Some(rt) = docker().await else { return };
    let r = reconciler(Recording::new(rt));
    let port = free_port();
    let mut stage = pinned("1.0.0");
    stage.host_port = Some(port);
    stage.host_ip = Some("127.0.0.1".into());
    let mut f = Fixture::new("t-hostport", stage);
    f.cleanup(&r.runtime).await;
    let url = format!("http://127.0.0.1:{port}/");

    assert_eq!(f.reconcile(&r).await.status.phase, Some(Phase::Healthy));
    assert_eq!(get(&url).await.unwrap().trim(), "tiny-forge-demo 1.0.0");
    let old = f.containers(&r.runtime).await[0].clone();

    f.edit(|s| s.pinned_tag = Some("1.2.0-broken".into()));
    r.runtime.take();
    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::RolledBack),
        "{:?}",
        out.status.message
    );
    let steps = r.runtime.take();
    let stop_old = steps
        .iter()
        .position(|s| *s == format!("stop {}", short(&old.id)))
        .expect("the old container hands the port over");
    let create_new = steps.iter().position(|s| s.starts_with("create")).unwrap();
    assert!(stop_old < create_new, "port handed over first: {steps:?}");
    // Status says what clients met: the broken tag held the port for a while.
    let message = f.status.message.clone().unwrap();
    assert!(
        message.contains(&format!(
            "1.0.0 serves again on host port {port}, which 1.2.0-broken held for"
        )),
        "{message}"
    );
    assert_eq!(
        steps.last().map(String::as_str),
        Some(format!("start {}", short(&old.id)).as_str()),
        "the old container is started again: {steps:?}"
    );
    assert_eq!(get(&url).await.unwrap().trim(), "tiny-forge-demo 1.0.0");

    f.edit(|s| s.pinned_tag = Some("1.1.0".into()));
    let out = f.reconcile(&r).await;
    assert_eq!(out.status.phase, Some(Phase::Healthy));
    let note = &f.status.history[0].message;
    assert!(note.contains("handed over with a"), "{note}");
    assert_eq!(get(&url).await.unwrap().trim(), "tiny-forge-demo 1.1.0");
    let converged = f.status.clone();
    f.reconcile(&r).await;
    assert_eq!(f.status, converged, "a resync rewrote a converged status");
    assert_eq!(f.containers(&r.runtime).await.len(), 1);
    f.cleanup(&r.runtime).await;
}

#[tokio::test]
async fn drift_is_repaired_stopped_is_restarted_and_deleted_is_recreated() {
    let Some(rt) = docker().await else { return };
    let r = reconciler(rt);
    let mut f = Fixture::new("t-drift", pinned("1.0.0"));
    f.cleanup(&r.runtime).await;
    assert_eq!(f.reconcile(&r).await.status.phase, Some(Phase::Healthy));
    let c = f.containers(&r.runtime).await[0].clone();
    let history = f.status.history.len();

    r.runtime.stop(&c.id, 1).await.unwrap();
    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );
    let now = f.containers(&r.runtime).await;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].id, c.id, "the same container is started again");
    assert!(now[0].running);
    assert_eq!(f.status.history.len(), history, "a restart is not a deploy");

    r.runtime.remove(&c.id).await.unwrap();
    let out = f.reconcile(&r).await;
    assert_eq!(out.status.phase, Some(Phase::Healthy));
    let now = f.containers(&r.runtime).await;
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].id, c.id, "a new container replaces the deleted one");
    assert_eq!(now[0].name, c.name, "with the same deterministic name");
    f.cleanup(&r.runtime).await;
}

#[tokio::test]
async fn an_interrupted_deploy_resumes_without_a_duplicate_container() {
    let Some(rt) = docker().await else { return };
    let r = reconciler(Recording::new(rt));
    let mut f = Fixture::new("t-resume", pinned("1.0.0"));
    f.cleanup(&r.runtime).await;
    assert_eq!(f.reconcile(&r).await.status.phase, Some(Phase::Healthy));
    let old = f.containers(&r.runtime).await[0].clone();

    // A crash after create: the 1.1.0 container exists (not started), status still says
    // Deploying. The next pass must adopt it, not create a second one.
    f.edit(|s| s.pinned_tag = Some("1.1.0".into()));
    let eff = Effective::new(&f.project, &f.stage).unwrap();
    let image = r
        .runtime
        .ensure_image("tiny-forge-demo:1.1.0", tiny_forge::engine::Pull::Never)
        .await
        .unwrap();
    let spec = eff.container_spec(&f.key, "test", "1.1.0", &image, &Default::default());
    r.runtime.create(&spec).await.unwrap();
    f.status.phase = Some(Phase::Deploying);
    r.runtime.take();

    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );
    let steps = r.runtime.take();
    assert!(!steps.iter().any(|s| s.starts_with("create")), "{steps:?}");
    let now = f.containers(&r.runtime).await;
    assert_eq!(now.len(), 1, "exactly one container: {now:?}");
    assert_eq!(now[0].name, spec.name);
    assert!(!now.iter().any(|c| c.id == old.id));
    f.cleanup(&r.runtime).await;
}

/// Release 0.1 named containers by another hash: a container it created and recorded as serving
/// is adopted as it is — an upgrade redeploys nothing.
#[tokio::test]
async fn a_container_named_by_the_previous_release_is_adopted_not_redeployed() {
    let Some(rt) = docker().await else { return };
    let r = reconciler(Recording::new(rt));
    let mut f = Fixture::new("t-upgrade", pinned("1.0.0"));
    f.cleanup(&r.runtime).await;
    let eff = Effective::new(&f.project, &f.stage).unwrap();
    let image = r
        .runtime
        .ensure_image("tiny-forge-demo:1.0.0", tiny_forge::engine::Pull::Never)
        .await
        .unwrap();
    let mut old = eff.container_spec(&f.key, "test", "1.0.0", &image, &Default::default());
    assert_ne!(old.previous_names[0], old.name);
    old.name = old.previous_names[0].clone();
    let id = r.runtime.create(&old).await.unwrap();
    r.runtime.start(&id).await.unwrap();
    f.status.current = Some(tiny_forge::api::Deployed {
        tag: "1.0.0".into(),
        digest: image.digest().to_string(),
        container_id: Some(id.clone()),
        container_name: Some(old.name.clone()),
        ..Default::default()
    });
    r.runtime.take();

    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );
    let steps = r.runtime.take();
    assert!(
        !steps
            .iter()
            .any(|s| s.starts_with("create") || s.starts_with("stop")),
        "{steps:?}"
    );
    let now = f.containers(&r.runtime).await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].id, id, "the same container keeps serving");
    f.cleanup(&r.runtime).await;
}

#[tokio::test]
async fn a_missing_image_is_a_clear_retryable_error_and_the_serving_container_stays() {
    let Some(rt) = docker().await else { return };
    let r = reconciler(rt);
    let mut f = Fixture::new("t-noimage", pinned("1.0.0"));
    f.cleanup(&r.runtime).await;
    f.project.container.image_pull_policy = Some(PullPolicy::Never);
    assert_eq!(f.reconcile(&r).await.status.phase, Some(Phase::Healthy));

    f.edit(|s| s.pinned_tag = Some("9.9.9".into()));
    let out = f.reconcile(&r).await;
    assert_eq!(out.requeue, Requeue::Retry);
    assert_eq!(
        ready(&f.status),
        ("False".into(), "ImageUnavailable".into())
    );
    // Phase and Ready tell one story: not Healthy beside Ready=False.
    assert_eq!(f.status.phase, Some(Phase::Degraded));
    let message = f.status.message.clone().unwrap();
    assert!(message.contains("tiny-forge-demo:9.9.9"), "{message}");
    assert!(message.contains("imagePullPolicy is Never"), "{message}");
    assert!(
        message.contains("1.0.0 is still the deployed version"),
        "{message}"
    );
    // Once the pin is usable again the Stage is Healthy, with its deploy's message.
    f.edit(|s| s.pinned_tag = Some("1.0.0".into()));
    let out = f.reconcile(&r).await;
    assert_eq!(out.status.phase, Some(Phase::Healthy));
    assert_eq!(ready(&f.status), ("True".into(), "Healthy".into()));
    let message = f.status.message.clone().unwrap();
    assert!(
        message.starts_with("1.0.0 is serving (healthy in"),
        "{message}"
    );
    let now = f.containers(&r.runtime).await;
    assert_eq!(now.len(), 1);
    assert!(now[0].running);
    assert_eq!(now[0].label(labels::TAG), Some("1.0.0"));
    f.cleanup(&r.runtime).await;
}

#[tokio::test]
async fn invalid_specs_wait_for_a_change_and_touch_nothing() {
    let Some(rt) = docker().await else { return };
    let r = reconciler(Recording::new(rt));
    let mut f = Fixture::new("t-invalid", pinned("1.0.0"));
    f.stage.tag_policy = Some(tiny_forge::api::TagPolicy {
        regex: Some("(unclosed".into()),
        ..Default::default()
    });
    f.stage.docker_host = None;
    let out = f.reconcile(&r).await;
    assert_eq!(out.requeue, Requeue::WaitForChange);
    assert_eq!(ready(&f.status), ("False".into(), "InvalidSpec".into()));
    assert!(
        f.status
            .message
            .clone()
            .unwrap()
            .contains("spec.tagPolicy.regex")
    );
    assert!(
        r.runtime.take().is_empty(),
        "no Docker call for an invalid spec"
    );

    f.stage.tag_policy = None;
    f.stage.docker_host = Some("elsewhere".into());
    let out = f.reconcile(&r).await;
    assert_eq!(ready(&out.status).1, "UnknownDockerHost");

    let input = tiny_forge::engine::StageInput {
        key: f.key.clone(),
        generation: 1,
        stage: &f.stage,
        project: None,
    };
    let out = r.reconcile(&input, &[], Default::default()).await;
    assert_eq!(ready(&out.status).1, "ProjectNotFound");
    assert_eq!(out.status.phase, Some(Phase::Pending));
}

#[tokio::test]
async fn auto_deploy_follows_the_newest_accepted_tag_in_status() {
    let Some(rt) = docker().await else { return };
    let r = reconciler(rt);
    let mut stage = pinned("1.0.0");
    stage.pinned_tag = None;
    stage.auto_deploy = true;
    stage.tag_policy = Some(tiny_forge::api::TagPolicy {
        semver: Some(">=1.0.0".into()),
        ..Default::default()
    });
    let mut f = Fixture::new("t-auto", stage);
    f.cleanup(&r.runtime).await;

    let out = f.reconcile(&r).await;
    assert_eq!(out.status.phase, Some(Phase::Pending));
    assert_eq!(ready(&f.status).1, "NoTag");

    f.status.latest = Some(tiny_forge::api::SeenTag {
        tag: "1.1.0".into(),
        source: "test".into(),
        seen_at: conditions::now(),
        ..Default::default()
    });
    let out = f.reconcile(&r).await;
    assert_eq!(
        out.status.phase,
        Some(Phase::Healthy),
        "{:?}",
        out.status.message
    );
    assert_eq!(f.status.current.as_ref().unwrap().tag, "1.1.0");

    // A pin holds automation until it is removed.
    f.edit(|s| s.pinned_tag = Some("1.0.0".into()));
    f.reconcile(&r).await;
    assert_eq!(f.status.current.as_ref().unwrap().tag, "1.0.0");
    f.edit(|s| s.pinned_tag = None);
    f.reconcile(&r).await;
    assert_eq!(f.status.current.as_ref().unwrap().tag, "1.1.0");
    f.cleanup(&r.runtime).await;
}

#[tokio::test]
async fn docker_unreachable_is_an_error_value_not_a_panic() {
    let err = match tiny_forge::adapters::docker::DockerRuntime::connect(Some(
        "unix:///nonexistent/docker.sock",
    ))
    .await
    {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e,
    };
    assert_eq!(err.reason().as_str(), "DockerUnreachable");
    assert!(
        err.to_string().contains("/nonexistent/docker.sock"),
        "{err}"
    );
}
