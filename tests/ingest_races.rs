//! What the listener acknowledges is never lost to the manifest sync: a flood of real deliveries
//! over HTTP (unknown and known images, duplicates, bad signatures) while the manifest directory
//! changes and the standalone sync runs beside it, then every acknowledged push is found in
//! status. And a conflicting manifest never costs a good resource its state. No Docker needed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tiny_forge::api::{Deployed, Phase, SeenTag, StageStatus};
use tiny_forge::crypto::SecretBox;
use tiny_forge::ingest::AutoCreatePolicy;
use tiny_forge::metrics::Metrics;
use tiny_forge::modes::standalone::sync_manifests;
use tiny_forge::sources::webhook::{self, server};
use tiny_forge::store::ledger;
use tiny_forge::store::{Kind, StateDb, StoreSecrets};
use tokio::sync::mpsc;

const PROJECT: &str = "apiVersion: tinyforge.dev/v1alpha1\nkind: Project\nmetadata: {name: demo}\nspec: {image: registry.example/team/demo}\n";

fn stage(name: &str, policy: &str) -> String {
    format!(
        "apiVersion: tinyforge.dev/v1alpha1\nkind: Stage\nmetadata: {{name: {name}}}\nspec: {{projectRef: demo, tagPolicy: {policy}}}\n"
    )
}

#[test]
fn a_duplicate_name_in_a_second_file_never_costs_the_stage_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir_all(&manifests).unwrap();
    let db = StateDb::open(&dir.path().join("state")).unwrap();
    std::fs::write(
        manifests.join("a.yaml"),
        format!("{PROJECT}---\n{}", stage("web", "{semver: '>=1.0.0'}")),
    )
    .unwrap();
    sync_manifests(&manifests, &db, &mut None).unwrap();
    let seen = SeenTag {
        tag: "1.2.0".into(),
        source: "cli".into(),
        seen_at: "2026-01-01T00:00:00Z".into(),
        ..Default::default()
    };
    assert!(db.record_latest("default", "web", &seen).unwrap());
    let serving = Deployed {
        tag: "1.2.0".into(),
        digest: "sha256:aa".into(),
        container_id: Some("c1".into()),
        ..Default::default()
    };
    db.save_stage_status(
        "default",
        "web",
        &StageStatus {
            phase: Some(Phase::Healthy),
            current: Some(serving.clone()),
            ..Default::default()
        },
    )
    .unwrap();

    // Someone adds a second definition of `web` in another file.
    std::fs::write(manifests.join("b.yaml"), stage("web", "{exact: main}")).unwrap();
    let m = sync_manifests(&manifests, &db, &mut None).unwrap();
    assert!(
        m.errors.iter().any(|e| e.message.contains("also defined")),
        "the duplicate is reported: {:?}",
        m.errors
    );
    let errors = db.manifest_errors().unwrap();
    assert!(errors.iter().any(|e| e.contains("Stage/web")), "{errors:?}");
    let check = |when: &str| {
        let stages = db.list(Kind::Stage).unwrap();
        let web = stages
            .iter()
            .find(|s| s.namespace == "default" && s.name == "web")
            .unwrap_or_else(|| panic!("{when}: the Stage was removed"));
        assert_eq!(web.generation, 1, "{when}: the last good spec stays");
        assert_eq!(web.spec["tagPolicy"]["semver"], ">=1.0.0", "{when}");
        let status = db.stage_status("default", "web").unwrap();
        assert_eq!(status.latest.as_ref(), Some(&seen), "{when}");
        assert_eq!(status.current.as_ref(), Some(&serving), "{when}");
        assert_eq!(status.phase, Some(Phase::Healthy), "{when}");
    };
    check("with the duplicate");

    // The duplicate goes: the Stage is as it was.
    std::fs::remove_file(manifests.join("b.yaml")).unwrap();
    let m = sync_manifests(&manifests, &db, &mut None).unwrap();
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    check("after the duplicate is gone");
}

/// Signs like GitHub does.
fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

struct Flood {
    url: String,
    db: Arc<StateDb>,
    manifests: PathBuf,
    state: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Flood {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

const SIGNED_SECRET: &str = "flood-project-secret-77";

/// A listener that auto-creates Projects into a manifest directory which also holds a user's
/// Projects (one signed).
async fn flood_listener(policy: AutoCreatePolicy) -> Flood {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("user.yaml"),
        format!(
            "{PROJECT}---\n{}---\napiVersion: tinyforge.dev/v1alpha1\nkind: Project\nmetadata: {{name: signed}}\nspec: {{image: ghcr.io/octo/signed, webhook: {{secretRef: {{name: hooks, key: signed}}}}}}\n---\napiVersion: tinyforge.dev/v1alpha1\nkind: Stage\nmetadata: {{name: signed-dev}}\nspec: {{projectRef: signed}}\n",
            stage("demo-dev", "{semver: '>=0.0.0'}")
        ),
    )
    .unwrap();
    let db = Arc::new(StateDb::open(&state).unwrap());
    sync_manifests(&manifests, &db, &mut None).unwrap();
    let reader = Arc::new(StateDb::open(&state).unwrap());
    let sealer = SecretBox::load_or_create(&dir.path().join("key")).unwrap();
    db.set_secret(
        "default",
        "hooks",
        "signed",
        &sealer.seal(
            SIGNED_SECRET.as_bytes(),
            &tiny_forge::store::secrets::context("default", "hooks", "signed"),
        ),
    )
    .unwrap();
    let secret = webhook::ensure_url_secret(&db, &sealer).unwrap();
    let config = server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        rate: None,
        ..Default::default()
    };
    let (wake, wake_rx) = mpsc::unbounded_channel();
    std::mem::forget(wake_rx);
    let recorder = ledger::spawn_with(db.clone(), Some((manifests.clone(), policy)), wake);
    let secrets = StoreSecrets {
        db: Some(reader.clone()),
        sealer: Some(sealer.clone()),
        dir: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let srv = server::start(
        config,
        server::StoreIndex::sealed(reader, sealer),
        Arc::new(secrets),
        Arc::new(Metrics::default()),
        recorder,
        async {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap();
    Flood {
        url: format!("http://{}/api/webhook/{secret}", srv.local_addr),
        db,
        manifests,
        state,
        stop: Some(stop),
        _dir: dir,
    }
}

/// One delivery of the flood and what an acknowledgement of it promises.
enum Shot {
    /// A push of a new image: its own Project's `dev` Stage must end with this tag.
    Unknown(String),
    /// A push of a known image (`demo-dev` follows semver): recorded or explained.
    Known(String),
    /// The same body again.
    Duplicate(String),
    /// A signed Project's image with a wrong signature: refused.
    Forged,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_while_manifests_change_loses_no_acknowledged_push() {
    let f = flood_listener(AutoCreatePolicy {
        max: 10_000,
        allow: Vec::new(),
    })
    .await;
    // The standalone sync, on a connection of its own, over and over, while a user edits files.
    let running = Arc::new(AtomicBool::new(true));
    let syncer = {
        let running = running.clone();
        let manifests = f.manifests.clone();
        let state = f.state.clone();
        std::thread::spawn(move || {
            let db = StateDb::open(&state).unwrap();
            let mut errors = None;
            let mut n = 0u32;
            while running.load(Ordering::Relaxed) {
                n += 1;
                let extra = manifests.join("extra.yaml");
                if n.is_multiple_of(2) {
                    std::fs::write(&extra, stage(&format!("extra-{n}"), "{exact: main}")).unwrap();
                } else {
                    let _ = std::fs::remove_file(&extra);
                }
                sync_manifests(&manifests, &db, &mut errors).unwrap();
            }
            n
        })
    };

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut shots = Vec::new();
    for i in 0..600u32 {
        shots.push(match i % 6 {
            0..=2 => Shot::Unknown(format!("127.0.0.1:5000/flood/app-{i}:1.0.{i}")),
            3 => Shot::Known(format!("registry.example/team/demo:0.{i}.0")),
            4 => Shot::Duplicate(format!("127.0.0.1:5000/flood/app-{}:1.0.{}", i - 4, i - 4)),
            _ => Shot::Forged,
        });
    }
    let results = futures::stream::iter(shots.into_iter().map(|shot| {
        let client = client.clone();
        let url = f.url.clone();
        async move {
            let (body, signature) = match &shot {
                Shot::Unknown(r) | Shot::Known(r) | Shot::Duplicate(r) => {
                    (format!(r#"{{"image":"{r}"}}"#), None)
                }
                Shot::Forged => (
                    r#"{"image":"ghcr.io/octo/signed:9.9.9"}"#.to_string(),
                    Some(sign("not-the-secret", b"x")),
                ),
            };
            let mut req = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body);
            if let Some(s) = signature {
                req = req.header("x-hub-signature-256", s);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (shot, status, r.text().await.unwrap())
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<_>>()
    .await;
    running.store(false, Ordering::Relaxed);
    let passes = syncer.join().unwrap();
    assert!(passes > 1, "the sync ran beside the flood");
    // Once more, quietly, as the controller would on its next wake-up.
    sync_manifests(&f.manifests, &f.db, &mut None).unwrap();

    let projects = f.db.list(Kind::Project).unwrap();
    let mut lost = Vec::new();
    let mut acknowledged = 0;
    let mut best_known: Option<semver::Version> = None;
    for (shot, status, text) in &results {
        match shot {
            Shot::Unknown(reference) | Shot::Duplicate(reference) => {
                assert!(matches!(status, 200 | 202), "{reference}: {text}");
                if *status != 202 {
                    assert!(text.contains("duplicate"), "{reference}: {text}");
                    continue;
                }
                acknowledged += 1;
                let (repo, tag) = reference.rsplit_once(':').unwrap();
                let Some(p) = projects.iter().find(|p| p.spec["image"] == repo) else {
                    lost.push(format!("{reference}: no Project"));
                    continue;
                };
                let latest = f.db.stage_status(&p.namespace, "dev").unwrap().latest;
                if latest.as_ref().map(|l| l.tag.as_str()) != Some(tag) {
                    lost.push(format!("{reference}: dev latest is {latest:?}"));
                }
            }
            Shot::Known(reference) => {
                assert!(matches!(status, 200 | 202), "{text}");
                if *status == 202 {
                    acknowledged += 1;
                    let v = semver::Version::parse(reference.rsplit_once(':').unwrap().1).unwrap();
                    best_known = best_known.max(Some(v));
                }
            }
            Shot::Forged => assert_eq!(*status, 401, "{text}"),
        }
    }
    let demo = f.db.stage_status("default", "demo-dev").unwrap().latest;
    assert_eq!(
        demo.map(|l| l.tag),
        best_known.map(|v| v.to_string()),
        "the best acknowledged known push is the known Stage's latest"
    );
    assert!(
        lost.is_empty(),
        "{} of {acknowledged} acknowledged pushes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(
        f.db.stage_status("default", "signed-dev").unwrap().latest,
        None,
        "no forged delivery recorded"
    );
    // Every auto-created Project is a file the user can see, and its file names it.
    for p in projects.iter().filter(|p| p.namespace != "default") {
        let file = Path::new(p.source.as_deref().unwrap());
        assert!(file.exists(), "{}", file.display());
    }
}

use futures::StreamExt as _;

async fn push(url: &str, reference: &str) -> (u16, String) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(url)
        .header("content-type", "application/json")
        .body(format!(r#"{{"image":"{reference}"}}"#))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn auto_creation_is_bounded_and_limited_to_allowed_repositories() {
    let f = flood_listener(AutoCreatePolicy {
        max: 3,
        allow: vec!["127.0.0.1:5000/team/*".into(), "ghcr.io/octo/**".into()],
    })
    .await;
    let auto_created = || {
        f.db.list(Kind::Project)
            .unwrap()
            .into_iter()
            .filter(|p| p.namespace != "default")
            .count()
    };
    // Outside the allow-list: nothing created, the reason in a 2xx (registries retry non-2xx).
    for reference in [
        "127.0.0.1:5000/other/app:1.0",
        "127.0.0.1:5000/team/sub/app:1.0",
    ] {
        let (status, text) = push(&f.url, reference).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("--auto-create-allow"), "{text}");
    }
    assert_eq!(auto_created(), 0);
    for (i, reference) in [
        "127.0.0.1:5000/team/a:1.0",
        "ghcr.io/octo/deep/b:1.0",
        "127.0.0.1:5000/team/c:1.0",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, text) = push(&f.url, reference).await;
        assert_eq!(status, 202, "{i}: {text}");
    }
    assert_eq!(auto_created(), 3);
    // Past the limit: a clear answer, nothing created; a known image still counts.
    let (status, text) = push(&f.url, "127.0.0.1:5000/team/d:1.0").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("--auto-create-max 3"), "{text}");
    assert_eq!(auto_created(), 3);
    let (status, text) = push(&f.url, "127.0.0.1:5000/team/a:1.1").await;
    assert_eq!(status, 202, "{text}");
    // Deleting an auto-created file frees its place.
    let a = f.manifests.join("auto-created/a.yaml");
    std::fs::remove_file(&a).unwrap();
    sync_manifests(&f.manifests, &f.db, &mut None).unwrap();
    let (status, text) = push(&f.url, "127.0.0.1:5000/team/d:1.1").await;
    assert_eq!(status, 202, "{text}");
}
