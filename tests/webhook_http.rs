//! The webhook listener over real HTTP on loopback: authentication by URL secret and by Project
//! secret, bad input, limits, deduplication, durability, rotation, metrics — and no secret in any
//! log line or answer. No Docker needed: the listener never calls it.

use std::io::Write as _;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use tiny_forge::crypto::SecretBox;
use tiny_forge::metrics::Metrics;
use tiny_forge::sources::webhook::{self, server};
use tiny_forge::store::ledger;
use tiny_forge::store::{Kind, StateDb, StoreSecrets};
use tokio::sync::mpsc;

/// Every log line of this test binary, to check that no secret is ever written.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_writer(move || Writer(sink.clone()))
            .init();
        buf
    })
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const PROJECT_SECRET: &str = "project-hmac-secret-e1f2";

struct Listener {
    base: String,
    url: String,
    secret: String,
    db: Arc<StateDb>,
    sealer: SecretBox,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn listener(config: impl FnOnce(&mut server::Config)) -> Listener {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let db = Arc::new(StateDb::open(&state).unwrap());
    let reader = Arc::new(StateDb::open(&state).unwrap());
    let sealer = SecretBox::load_or_create(&dir.path().join("key")).unwrap();
    // A Project with a webhook secret (signed senders) and one without (URL secret only).
    db.upsert(
        Kind::Project,
        "default",
        "signed",
        &serde_json::json!({
            "image": "ghcr.io/octo/signed",
            "webhook": {"secretRef": {"name": "hooks", "key": "signed"}},
        }),
        None,
    )
    .unwrap();
    db.upsert(
        Kind::Stage,
        "default",
        "signed-dev",
        &serde_json::json!({"projectRef": "signed"}),
        None,
    )
    .unwrap();
    db.upsert(
        Kind::Project,
        "default",
        "open",
        &serde_json::json!({"image": "registry.example/team/open"}),
        None,
    )
    .unwrap();
    db.upsert(
        Kind::Stage,
        "default",
        "open-dev",
        &serde_json::json!({"projectRef": "open", "tagPolicy": {"semver": ">=1.0.0"}}),
        None,
    )
    .unwrap();
    db.set_secret(
        "default",
        "hooks",
        "signed",
        &sealer.seal(
            PROJECT_SECRET.as_bytes(),
            &tiny_forge::store::secrets::context("default", "hooks", "signed"),
        ),
    )
    .unwrap();
    let secret = webhook::ensure_url_secret(&db, &sealer).unwrap();
    let mut cfg = server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    config(&mut cfg);
    let (wake, _wake_rx) = mpsc::unbounded_channel();
    std::mem::forget(_wake_rx);
    let recorder = ledger::spawn(db.clone(), Some(dir.path().join("manifests")), wake);
    let secrets = StoreSecrets {
        db: Some(reader.clone()),
        sealer: Some(sealer.clone()),
        dir: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let srv = server::start(
        cfg,
        server::StoreIndex::sealed(reader, sealer.clone()),
        Arc::new(secrets),
        Arc::new(Metrics::default()),
        recorder,
        async {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", srv.local_addr);
    Listener {
        url: format!("{base}/api/webhook/{secret}"),
        base,
        secret,
        db,
        sealer,
        stop: Some(stop),
        _dir: dir,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post(
    url: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: impl Into<Vec<u8>>,
) -> (u16, String, reqwest::header::HeaderMap) {
    let mut req = client()
        .post(url)
        .header("content-type", content_type)
        .body(body.into());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.text().await.unwrap(), headers)
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn latest(db: &StateDb, stage: &str) -> Option<String> {
    db.stage_status("default", stage)
        .unwrap()
        .latest
        .map(|l| l.tag)
}

#[tokio::test]
async fn a_wrong_secret_is_indistinguishable_from_an_unknown_route() {
    let l = listener(|_| {}).await;
    let body = r#"{"image":"registry.example/team/open:1.0.0"}"#;
    let wrong = post(
        &format!("{}/api/webhook/not-the-secret", l.base),
        "application/json",
        &[],
        body,
    )
    .await;
    let nowhere = post(
        &format!("{}/no/such/route", l.base),
        "application/json",
        &[],
        body,
    )
    .await;
    let missing = post(
        &format!("{}/api/webhook/", l.base),
        "application/json",
        &[],
        body,
    )
    .await;
    let provider = post(
        &format!("{}/nosuchprovider", l.url),
        "application/json",
        &[],
        body,
    )
    .await;
    for r in [&wrong, &missing, &provider] {
        assert_eq!(r.0, 404);
        assert_eq!(r.1, nowhere.1, "same body as an unknown route");
        let names = |h: &reqwest::header::HeaderMap| {
            let mut n: Vec<String> = h
                .keys()
                .map(|k| k.to_string())
                .filter(|k| k != "date")
                .collect();
            n.sort();
            n
        };
        assert_eq!(
            names(&r.2),
            names(&nowhere.2),
            "same headers as an unknown route"
        );
    }
    assert_eq!(
        latest(&l.db, "open-dev"),
        None,
        "a refused delivery changes nothing"
    );
}

#[tokio::test]
async fn generic_deliveries_are_recorded_once_and_redeliveries_change_nothing() {
    let l = listener(|_| {}).await;
    let body = r#"{"image":"registry.example/team/open:1.2.0","digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}"#;
    let (status, text, _) = post(&l.url, "application/json", &[], body).await;
    assert_eq!(status, 202, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["recorded"], true);
    assert_eq!(v["stages"][0]["stage"], "open-dev");
    let seen =
        l.db.stage_status("default", "open-dev")
            .unwrap()
            .latest
            .unwrap();
    assert_eq!(seen.tag, "1.2.0");
    assert_eq!(seen.source, "generic");
    assert!(seen.digest.unwrap().starts_with("sha256:0123"));

    let (status, text, _) = post(&l.url, "application/json", &[], body).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        serde_json::json!({"duplicate": true})
    );

    // A lower version is valid but ignored by the policy: 2xx with the reason.
    let (status, text, _) = post(
        &l.url,
        "application/json",
        &[],
        r#"{"image":"registry.example/team/open:1.0.0"}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("already the preferred tag"), "{text}");
    assert_eq!(latest(&l.db, "open-dev").as_deref(), Some("1.2.0"));
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer_and_changes_nothing() {
    let l = listener(|c| c.body_limit = 1024).await;
    let cases: [(&str, Vec<u8>, u16, &str); 5] = [
        (
            "application/json",
            b"{\"image\": ".to_vec(),
            400,
            "malformed JSON",
        ),
        (
            "application/json",
            br#"{"digest":"sha256:00"}"#.to_vec(),
            400,
            "image",
        ),
        (
            "application/json",
            br#"{"image":"registry.example/team/open"}"#.to_vec(),
            400,
            "tag",
        ),
        (
            "text/plain",
            br#"{"image":"registry.example/team/open:1.0.0"}"#.to_vec(),
            415,
            "content type",
        ),
        ("application/json", vec![b' '; 4096], 413, "limit"),
    ];
    for (ct, body, want, needle) in cases {
        let (status, text, _) = post(&l.url, ct, &[], body).await;
        assert_eq!(status, want, "{text}");
        assert!(text.contains(needle), "{want}: {text} lacks {needle}");
    }
    assert_eq!(latest(&l.db, "open-dev"), None);
}

#[tokio::test]
async fn a_project_secret_requires_a_valid_signature() {
    let l = listener(|_| {}).await;
    let body = br#"{"image":"ghcr.io/octo/signed:2.0.0"}"#;
    let unsigned = post(&l.url, "application/json", &[], body.to_vec()).await;
    assert_eq!(unsigned.0, 401, "{}", unsigned.1);
    let forged = post(
        &l.url,
        "application/json",
        &[("x-hub-signature-256", &sign("guess", body))],
        body.to_vec(),
    )
    .await;
    assert_eq!(forged.0, 401, "{}", forged.1);
    // Same image, another tag than the one signed.
    let mut tampered = body.to_vec();
    let at = tampered.len() - 3;
    tampered[at] = b'9';
    let mismatch = post(
        &l.url,
        "application/json",
        &[("x-hub-signature-256", &sign(PROJECT_SECRET, body))],
        tampered,
    )
    .await;
    assert_eq!(mismatch.0, 401, "{}", mismatch.1);
    assert_eq!(
        latest(&l.db, "signed-dev"),
        None,
        "nothing recorded without a valid signature"
    );

    let good = post(
        &l.url,
        "application/json",
        &[("x-hub-signature-256", &sign(PROJECT_SECRET, body))],
        body.to_vec(),
    )
    .await;
    assert_eq!(good.0, 202, "{}", good.1);
    assert_eq!(latest(&l.db, "signed-dev").as_deref(), Some("2.0.0"));

    // Neither secret shows up in answers or logs.
    for answer in [&unsigned.1, &forged.1, &good.1] {
        assert!(!answer.contains(PROJECT_SECRET) && !answer.contains(&l.secret));
    }
    let logs = String::from_utf8_lossy(&logs().lock().unwrap()).to_string();
    assert!(!logs.is_empty(), "logs are captured");
    assert!(!logs.contains(PROJECT_SECRET), "project secret in logs");
    assert!(!logs.contains(&l.secret), "URL secret in logs");
    assert!(
        !logs.contains(&sign(PROJECT_SECRET, body)),
        "signature in logs"
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let l = listener(|c| c.rate = Some((NonZeroU32::new(1).unwrap(), NonZeroU32::new(3).unwrap())))
        .await;
    let mut codes = Vec::new();
    let mut retry_after = None;
    for i in 0..6 {
        let body = format!(r#"{{"image":"registry.example/team/open:1.0.{i}"}}"#);
        let (status, _, headers) = post(&l.url, "application/json", &[], body).await;
        codes.push(status);
        if status == 429 {
            retry_after = headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
        }
    }
    assert_eq!(&codes[..3], &[202, 202, 202], "{codes:?}");
    assert!(codes[3..].contains(&429), "{codes:?}");
    assert!(retry_after.unwrap().parse::<u64>().unwrap() >= 1);
}

#[tokio::test]
async fn rotation_retires_the_old_url_at_once() {
    let l = listener(|_| {}).await;
    let body = r#"{"image":"registry.example/team/open:1.0.0"}"#;
    assert_eq!(post(&l.url, "application/json", &[], body).await.0, 202);
    let new = webhook::rotate_url_secret(&l.db, &l.sealer).unwrap();
    assert_ne!(new, l.secret);
    let body = r#"{"image":"registry.example/team/open:1.1.0"}"#;
    assert_eq!(post(&l.url, "application/json", &[], body).await.0, 404);
    let new_url = format!("{}/api/webhook/{new}", l.base);
    assert_eq!(post(&new_url, "application/json", &[], body).await.0, 202);
}

#[tokio::test]
async fn unknown_images_create_a_project_with_a_dev_stage() {
    let l = listener(|_| {}).await;
    let (status, text, _) = post(
        &l.url,
        "application/json",
        &[],
        r#"{"image":"127.0.0.1:5000/team/fresh-app:0.1.0"}"#,
    )
    .await;
    assert_eq!(status, 202, "{text}");
    assert!(text.contains("fresh-app/fresh-app"), "{text}");
    let projects = l.db.list(Kind::Project).unwrap();
    let p = projects.iter().find(|p| p.name == "fresh-app").unwrap();
    assert_eq!(p.spec["image"], "127.0.0.1:5000/team/fresh-app");
    let dev = l.db.stage_status("fresh-app", "dev").unwrap();
    assert_eq!(dev.latest.map(|l| l.tag).as_deref(), Some("0.1.0"));
    let file = Path::new(p.source.as_deref().unwrap());
    assert!(file.exists(), "the manifest is written for the user to see");
    // Safe settings for what whoever holds the URL can start: limits, no volumes, no network.
    let container = &p.spec["container"];
    assert_eq!(container["resources"]["memory"], "256Mi", "{container}");
    assert_eq!(container["resources"]["cpus"], "0.5", "{container}");
    assert!(
        container
            .get("volumes")
            .is_none_or(|v| v.as_array().is_some_and(Vec::is_empty))
    );
    assert!(container.get("network").is_none());
}

#[tokio::test]
async fn an_image_the_controller_would_reject_is_refused_before_anything_is_created() {
    let l = listener(|_| {}).await;
    let (status, text, _) = post(
        &l.url,
        "application/json",
        &[],
        r#"{"image":"Registry.Example.com/ORG/App:1.0"}"#,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not a valid repository"), "{text}");
    assert!(
        l.db.list(Kind::Project)
            .unwrap()
            .iter()
            .all(|p| p.namespace == "default"),
        "no Project created"
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let l = listener(|_| {}).await;
    let get = |p: &str| {
        let url = format!("{}{p}", l.base);
        async move {
            let r = client().get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 200);
    post(
        &l.url,
        "application/json",
        &[],
        r#"{"image":"registry.example/team/open:1.0.0"}"#,
    )
    .await;
    post(&l.url, "application/json", &[], "{").await;
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains(
            r#"tiny_forge_webhook_requests_total{provider="generic",outcome="accepted"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"outcome="bad_request""#), "{text}");
    assert!(
        text.contains("tiny_forge_webhook_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn a_slow_body_times_out() {
    let l = listener(|c| c.body_timeout = Duration::from_millis(300)).await;
    let addr = l.base.trim_start_matches("http://").to_string();
    let path = l.url.trim_start_matches(&l.base).to_string();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{").unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn valid_deliveries_that_ask_nothing_get_a_2xx_with_the_reason() {
    let l = listener(|_| {}).await;
    let fixture = |p: &str| std::fs::read(format!("tests/fixtures/webhooks/{p}")).unwrap();
    let (status, text, _) = post(
        &format!("{}/registry", l.url),
        "application/vnd.docker.distribution.events.v1+json",
        &[("authorization", "Bearer example-registry-token")],
        fixture("distribution/pull-manifest.json"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("pull"), "{text}");
    let (status, text, _) = post(
        &format!("{}/github", l.url),
        "application/json",
        &[("x-github-event", "ping"), ("x-github-delivery", "d-1")],
        fixture("github/ping.json"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("ping"), "{text}");
    let (status, text, _) = post(
        &format!("{}/gitlab", l.url),
        "application/json",
        &[("x-gitlab-event", "Pipeline Hook"), ("x-gitlab-token", "t")],
        fixture("gitlab/pipeline.go-gitlab.json"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("no Project has gitSource gitlab-org/gitlab-test"),
        "{text}"
    );
}

#[tokio::test]
async fn a_port_in_use_is_an_error_not_a_panic() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(StateDb::open(dir.path()).unwrap());
    let (wake, _rx) = mpsc::unbounded_channel();
    let result = server::start(
        server::Config {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            ..Default::default()
        },
        Arc::new(server::StoreIndex::new(db.clone(), Arc::new(|| Ok(None)))),
        Arc::new(StoreSecrets::files(None)),
        Arc::new(Metrics::default()),
        ledger::spawn(db, None, wake),
        std::future::pending(),
    )
    .await;
    let err = result.err().expect("binding a used port fails").to_string();
    assert!(
        err.contains("cannot listen on 127.0.0.1") && err.contains(&port.to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn every_tag_of_one_delivery_for_a_new_image_is_considered() {
    let l = listener(|_| {}).await;
    // Quay's "repository push" for an image nobody uses: `updated_tags: ["latest", "foo"]`.
    let (status, text, _) = post(
        &format!("{}/quay", l.url),
        "application/json",
        &[],
        std::fs::read(
            "tests/fixtures/webhooks/quay/repo_push.test-notification-sample.CONSTRUCTED.json",
        )
        .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["created"], serde_json::json!(["web/web"]), "{text}");
    let tags: Vec<&str> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["latest", "foo"], "{text}");
    assert!(!text.contains("not authorised"), "{text}");
    assert_eq!(
        l.db.stage_status("web", "dev")
            .unwrap()
            .latest
            .map(|l| l.tag)
            .as_deref(),
        Some("foo"),
        "the last tag of the delivery is the newest seen"
    );
}

#[tokio::test]
async fn concurrent_deliveries_for_one_new_image_make_one_project_and_all_count() {
    let l = listener(|_| {}).await;
    let answers = futures::future::join_all((0..12).map(|i| {
        let url = l.url.clone();
        async move {
            let body = format!(r#"{{"image":"127.0.0.1:5000/team/burst:1.0.{i}"}}"#);
            post(&url, "application/json", &[], body).await
        }
    }))
    .await;
    for (status, text, _) in &answers {
        assert_eq!(*status, 202, "{text}");
        assert!(!text.contains("not authorised"), "{text}");
    }
    let projects = l.db.list(Kind::Project).unwrap();
    let burst: Vec<_> = projects
        .iter()
        .filter(|p| p.spec["image"] == "127.0.0.1:5000/team/burst")
        .collect();
    assert_eq!(burst.len(), 1, "one Project for one image");
    let latest =
        l.db.stage_status(&burst[0].namespace, "dev")
            .unwrap()
            .latest;
    assert!(latest.is_some_and(|l| l.tag.starts_with("1.0.")));
}

/// Moves every remembered delivery `secs` into the past, as if that much time had gone by.
fn age_deliveries(l: &Listener, secs: i64) {
    let conn = rusqlite::Connection::open(l._dir.path().join("state/state.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute("UPDATE deliveries SET received = received - ?1", [secs])
        .unwrap();
}

#[tokio::test]
async fn a_re_push_without_a_delivery_id_counts_once_its_retries_are_over() {
    let l = listener(|_| {}).await;
    l.db.upsert(
        Kind::Project,
        "default",
        "web",
        &serde_json::json!({"image": "quay.io/dgangaia/test"}),
        None,
    )
    .unwrap();
    l.db.upsert(
        Kind::Stage,
        "default",
        "web-latest",
        &serde_json::json!({"projectRef": "web", "tagPolicy": {"exact": "latest"}}),
        None,
    )
    .unwrap();
    let quay = std::fs::read("tests/fixtures/webhooks/quay/repo_push.redhat-docs.json").unwrap();
    let quay_url = format!("{}/quay", l.url);
    let seen_at = || {
        l.db.stage_status("default", "web-latest")
            .unwrap()
            .latest
            .map(|l| l.seen_at)
    };
    // Quay sends no delivery id: an identical body at once is a retry of the same request.
    let (status, text, _) = post(&quay_url, "application/json", &[], quay.clone()).await;
    assert_eq!(status, 202, "{text}");
    let first = seen_at();
    let (status, text, _) = post(&quay_url, "application/json", &[], quay.clone()).await;
    assert_eq!((status, text.as_str()), (200, r#"{"duplicate":true}"#));
    // The same tag pushed again later is a new push: recorded.
    age_deliveries(&l, 3600);
    tokio::time::sleep(Duration::from_millis(1100)).await; // seenAt has second resolution
    let (status, text, _) = post(&quay_url, "application/json", &[], quay.clone()).await;
    assert_eq!(status, 202, "a re-push an hour later: {text}");
    assert_ne!(seen_at(), first, "recorded anew");

    // A sender's delivery id is remembered for days: a redelivery a day later changes nothing.
    let body = br#"{"image":"registry.example/team/open:1.3.0"}"#.to_vec();
    let id = [("idempotency-key", "ci-run-42")];
    assert_eq!(
        post(&l.url, "application/json", &id, body.clone()).await.0,
        202
    );
    age_deliveries(&l, 24 * 3600);
    let (status, text, _) = post(&l.url, "application/json", &id, body).await;
    assert_eq!((status, text.as_str()), (200, r#"{"duplicate":true}"#));
}

#[tokio::test]
async fn a_delivery_that_asks_nothing_is_still_authenticated_first() {
    let l = listener(|_| {}).await;
    let secret_ref = serde_json::json!({"secretRef": {"name": "hooks", "key": "signed"}});
    // A Bitbucket Server repository and a GitHub container package, both with a webhook secret.
    l.db.upsert(
        Kind::Project,
        "default",
        "bb",
        &serde_json::json!({
            "image": "registry.example/team/bb",
            "gitSource": {"provider": "bitbucket", "repository": "~gopher/webhook-test"},
            "webhook": secret_ref,
        }),
        None,
    )
    .unwrap();
    l.db.upsert(
        Kind::Project,
        "default",
        "pkg",
        &serde_json::json!({"image": "ghcr.io/codertocat/hello-world-npm", "webhook": secret_ref}),
        None,
    )
    .unwrap();
    let fixture = |p: &str| std::fs::read(format!("tests/fixtures/webhooks/{p}")).unwrap();
    // A branch deletion (asks nothing) and an untagged package version (asks nothing).
    let cases = [
        (
            "bitbucket",
            fixture("bitbucket/repo_refs_changed.server.go-playground.json"),
            [("x-event-key", "repo:refs_changed")],
            "x-hub-signature",
        ),
        (
            "github",
            fixture("github/registry_package.published.docker.json"),
            [("x-github-event", "registry_package")],
            "x-hub-signature-256",
        ),
    ];
    for (provider, body, event, signature) in cases {
        let url = format!("{}/{provider}", l.url);
        let forged = sign("not-the-secret", &body);
        let good = sign(PROJECT_SECRET, &body);
        let unsigned = post(&url, "application/json", &event, body.clone()).await;
        assert_eq!(unsigned.0, 401, "{provider} unsigned: {}", unsigned.1);
        let headers = [event[0], (signature, forged.as_str())];
        let wrong = post(&url, "application/json", &headers, body.clone()).await;
        assert_eq!(wrong.0, 401, "{provider} forged: {}", wrong.1);
        let headers = [event[0], (signature, good.as_str())];
        let right = post(&url, "application/json", &headers, body.clone()).await;
        assert_eq!(right.0, 200, "{provider} signed: {}", right.1);
        assert!(right.1.contains("ignored"), "{}", right.1);
    }
}

#[tokio::test]
async fn wrong_secrets_do_not_spend_the_real_urls_rate_budget() {
    let l = listener(|c| c.rate = Some((NonZeroU32::new(1).unwrap(), NonZeroU32::new(3).unwrap())))
        .await;
    let body = r#"{"image":"registry.example/team/open:1.0.0"}"#;
    for i in 0..20 {
        let guess = format!("{}/api/webhook/guess-{i}", l.base);
        assert_eq!(post(&guess, "application/json", &[], body).await.0, 404);
    }
    let (status, text, _) = post(&l.url, "application/json", &[], body).await;
    assert_eq!(status, 202, "the real URL still has its budget: {text}");
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_budget() {
    let limited = |trusted: &str| {
        let trusted: Vec<server::Cidr> = trusted
            .split_whitespace()
            .map(|c| c.parse().unwrap())
            .collect();
        move |c: &mut server::Config| {
            c.rate = Some((NonZeroU32::new(1).unwrap(), NonZeroU32::new(2).unwrap()));
            c.trusted_proxies = trusted;
        }
    };
    let push = |l: &Listener, i: u32, header: (&'static str, String)| {
        let url = l.url.clone();
        async move {
            let body = format!(r#"{{"image":"registry.example/team/open:1.0.{i}"}}"#);
            post(
                &url,
                "application/json",
                &[(header.0, header.1.as_str())],
                body,
            )
            .await
            .0
        }
    };
    // The TLS proxy on loopback is trusted: the client it names is the one limited.
    let l = listener(limited("127.0.0.0/8 ::1/128")).await;
    let xff = |ip: &str| ("x-forwarded-for", format!("198.51.100.7, {ip}"));
    let a: Vec<u16> = [
        push(&l, 1, xff("203.0.113.1")).await,
        push(&l, 2, xff("203.0.113.1")).await,
        push(&l, 3, xff("203.0.113.1")).await,
    ]
    .into();
    assert_eq!(a[..2], [202, 202], "{a:?}");
    assert_eq!(a[2], 429, "{a:?}");
    assert_eq!(push(&l, 4, xff("203.0.113.2")).await, 202, "another client");
    let fwd = |ip: &str| {
        (
            "forwarded",
            format!("for=198.51.100.7, for=\"{ip}\";proto=https"),
        )
    };
    assert_eq!(push(&l, 5, fwd("203.0.113.3")).await, 202);
    assert_eq!(push(&l, 6, fwd("203.0.113.3")).await, 202);
    assert_eq!(push(&l, 7, fwd("203.0.113.3")).await, 429);
    assert_eq!(push(&l, 8, fwd("[2001:db8::1]:4711")).await, 202);

    // Without trusted proxies, the headers are anyone's to write: the connection's address counts.
    let l = listener(limited("")).await;
    assert_eq!(push(&l, 1, xff("203.0.113.1")).await, 202);
    assert_eq!(push(&l, 2, xff("203.0.113.2")).await, 202);
    assert_eq!(
        push(&l, 3, xff("203.0.113.3")).await,
        429,
        "all from 127.0.0.1"
    );
}
