//! Contract tests of the NPM test double itself (tests/npm), over real HTTP: each checks one
//! behaviour NPM-API.md / NPM's OpenAPI document describes, so the adapter's tests can trust it.

mod npm;

use std::time::{Duration, Instant};

use npm::{DEFAULT_SITE_BODY, DoubleOptions, NginxPlane, NpmDouble};
use serde_json::{Value, json};

const EMAIL: &str = "ops@example.com";
const PASSWORD: &str = "s3cret-pass";

fn options() -> DoubleOptions {
    DoubleOptions {
        email: EMAIL.into(),
        password: PASSWORD.into(),
        ..DoubleOptions::default()
    }
}

async fn double() -> NpmDouble {
    NpmDouble::start(options()).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// One call: (status, JSON body or Null).
async fn call(
    npm: &NpmDouble,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client().request(method, format!("{}/api{path}", npm.url));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn login(npm: &NpmDouble) -> String {
    let (s, b) = call(
        npm,
        "POST",
        "/tokens",
        None,
        Some(json!({"identity": EMAIL, "secret": PASSWORD})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    format!("Bearer {}", b["token"].as_str().unwrap())
}

fn msg(b: &Value) -> &str {
    b["error"]["message"].as_str().unwrap_or("")
}

fn host_body(domains: &[&str], port: u16) -> Value {
    json!({"domain_names": domains, "forward_scheme": "http", "forward_host": "127.0.0.1",
           "forward_port": port, "meta": {"managed_by": "tiny-forge", "stage": "ns/web"}})
}

async fn create(npm: &NpmDouble, auth: &str, body: Value) -> Value {
    let (s, b) = call(npm, "POST", "/nginx/proxy-hosts", Some(auth), Some(body)).await;
    assert_eq!(s, 201, "{b}");
    b
}

#[tokio::test]
async fn health_needs_no_auth_and_reports_the_version() {
    let npm = double().await;
    let (s, b) = call(&npm, "GET", "/", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(b["status"], "OK");
    assert_eq!(
        b["version"],
        json!({"major": 2, "minor": 15, "revision": 1})
    );
    npm.stop().await;
}

#[tokio::test]
async fn login_refresh_and_expiry() {
    let npm = double().await;
    // Wrong password, unknown user: the same 400.
    for (id, secret) in [(EMAIL, "nope"), ("who@example.com", PASSWORD)] {
        let (s, b) = call(
            &npm,
            "POST",
            "/tokens",
            None,
            Some(json!({"identity": id, "secret": secret})),
        )
        .await;
        assert_eq!((s, msg(&b)), (400, "Invalid email or password"));
    }
    // `expiry` in the login body is rejected.
    let (s, b) = call(
        &npm,
        "POST",
        "/tokens",
        None,
        Some(json!({"identity": EMAIL, "secret": PASSWORD, "expiry": "7d"})),
    )
    .await;
    assert_eq!(
        (s, msg(&b)),
        (400, "data must NOT have additional properties")
    );
    // Email is matched case-insensitively (NPM lowercases it); the token lasts one day.
    let (s, b) = call(
        &npm,
        "POST",
        "/tokens",
        None,
        Some(json!({"identity": " OPS@example.com", "secret": PASSWORD})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let token = b["token"].as_str().unwrap().to_string();
    assert_eq!(token.split('.').count(), 3, "JWT-shaped");
    let expires: k8s_openapi::jiff::Timestamp = b["expires"].as_str().unwrap().parse().unwrap();
    let left = expires.as_second() - k8s_openapi::jiff::Timestamp::now().as_second();
    assert!((86_300..=86_400).contains(&left), "expires in {left}s");
    assert!(b["expires"].as_str().unwrap().ends_with('Z'));
    assert_eq!(npm.logins(), 1);

    // Refresh gives a fresh, working token; ?expiry= is honoured.
    let auth = format!("Bearer {token}");
    let (s, b) = call(&npm, "GET", "/tokens", Some(&auth), None).await;
    assert_eq!(s, 200, "{b}");
    let fresh = format!("Bearer {}", b["token"].as_str().unwrap());
    assert_ne!(fresh, auth);
    let (s, _) = call(&npm, "GET", "/nginx/proxy-hosts", Some(&fresh), None).await;
    assert_eq!(s, 200);
    let (s, b) = call(&npm, "GET", "/tokens?expiry=7d", Some(&fresh), None).await;
    assert_eq!(s, 200);
    let expires: k8s_openapi::jiff::Timestamp = b["expires"].as_str().unwrap().parse().unwrap();
    assert!(expires.as_second() - k8s_openapi::jiff::Timestamp::now().as_second() > 6 * 86_400);
    let (s, b) = call(&npm, "GET", "/tokens?expiry=soon", Some(&fresh), None).await;
    assert_eq!((s, msg(&b)), (400, "Invalid expiry time: soon"));

    // Expired: neither usable nor refreshable; logging in again works.
    npm.expire_tokens();
    for a in [&auth, &fresh] {
        let (s, b) = call(&npm, "GET", "/tokens", Some(a), None).await;
        assert_eq!((s, msg(&b)), (400, "Token has expired"));
        let (s, b) = call(&npm, "GET", "/nginx/proxy-hosts", Some(a), None).await;
        assert_eq!((s, msg(&b)), (400, "Token has expired"));
    }
    let again = login(&npm).await;
    let (s, _) = call(&npm, "GET", "/nginx/proxy-hosts", Some(&again), None).await;
    assert_eq!(s, 200);
    npm.stop().await;
}

#[tokio::test]
async fn two_factor_accounts_answer_a_challenge() {
    let npm = double().await;
    npm.set_requires_2fa(true);
    let (s, b) = call(
        &npm,
        "POST",
        "/tokens",
        None,
        Some(json!({"identity": EMAIL, "secret": PASSWORD})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(b["requires_2fa"], true);
    assert!(b["challenge_token"].is_string());
    assert!(b.get("token").is_none());
    npm.stop().await;
}

#[tokio::test]
async fn auth_failures_are_not_401_in_v2_13_to_v2_15() {
    let npm = double().await;
    let auth = login(&npm).await;
    let id = create(&npm, &auth, host_body(&["a.example.com"], 8080)).await["id"]
        .as_i64()
        .unwrap();
    let item = format!("/nginx/proxy-hosts/{id}");
    let enable = format!("{item}/enable");
    let disable = format!("{item}/disable");
    let token = auth.trim_start_matches("Bearer ");
    let lower = format!("bearer {token}");
    for header in [None, Some(lower.as_str()), Some(token), Some("Bearer ")] {
        for (method, path, body) in [
            ("GET", "/nginx/proxy-hosts", None),
            ("GET", item.as_str(), None),
            ("PUT", item.as_str(), Some(json!({"forward_port": 81}))),
            ("DELETE", item.as_str(), None),
            ("POST", enable.as_str(), None),
            ("POST", disable.as_str(), None),
        ] {
            let (s, b) = call(&npm, method, path, header, body).await;
            assert_eq!(
                (s, msg(&b).to_string()),
                (404, format!("Not Found - {path}")),
                "{method} {path} with {header:?}"
            );
        }
        let (s, b) = call(
            &npm,
            "POST",
            "/nginx/proxy-hosts",
            header,
            Some(host_body(&["b.example.com"], 1)),
        )
        .await;
        assert_eq!((s, msg(&b)), (500, "Internal Error"));
    }
    // A token this NPM never signed: 500.
    let garbage = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJ4IjoxfQ.c2ln";
    let (s, b) = call(&npm, "GET", "/nginx/proxy-hosts", Some(garbage), None).await;
    assert_eq!((s, msg(&b)), (500, "Internal Error"));
    assert_eq!(b["error"]["code"], 500);
    let (s, _) = call(&npm, "GET", "/tokens", Some(garbage), None).await;
    assert_eq!(s, 500);
    // Nothing changed.
    assert_eq!(npm.hosts().len(), 1);
    assert_eq!(npm.writes(), 1);
    npm.stop().await;
}

#[tokio::test]
async fn auth_failures_before_v2_13_are_401_and_403() {
    let npm = NpmDouble::start(DoubleOptions {
        version: (2, 12, 0),
        ..options()
    })
    .await;
    let (s, b) = call(&npm, "GET", "/", None, None).await;
    assert_eq!((s, b["version"]["minor"].as_u64()), (200, Some(12)));
    let (s, b) = call(&npm, "GET", "/nginx/proxy-hosts", None, None).await;
    assert_eq!((s, msg(&b)), (403, "Permission Denied"));
    let (s, b) = call(
        &npm,
        "POST",
        "/nginx/proxy-hosts",
        None,
        Some(host_body(&["a.example.com"], 1)),
    )
    .await;
    assert_eq!((s, msg(&b)), (403, "Permission Denied"));
    let (s, b) = call(
        &npm,
        "POST",
        "/tokens",
        None,
        Some(json!({"identity": EMAIL, "secret": "wrong"})),
    )
    .await;
    assert_eq!((s, msg(&b)), (401, "Invalid email or password"));
    let auth = login(&npm).await;
    npm.expire_tokens();
    let (s, b) = call(&npm, "GET", "/nginx/proxy-hosts", Some(&auth), None).await;
    assert_eq!((s, msg(&b)), (401, "Token has expired"));
    // trust_forwarded_proto is v2.14+: rejected, and not in responses.
    let auth = login(&npm).await;
    let mut body = host_body(&["a.example.com"], 1);
    body["trust_forwarded_proto"] = json!(true);
    let (s, b) = call(&npm, "POST", "/nginx/proxy-hosts", Some(&auth), Some(body)).await;
    assert_eq!(
        (s, msg(&b)),
        (400, "data must NOT have additional properties")
    );
    let b = create(&npm, &auth, host_body(&["a.example.com"], 1)).await;
    assert!(b.get("trust_forwarded_proto").is_none());
    npm.stop().await;
}

#[tokio::test]
async fn create_get_list_update_delete() {
    let npm = double().await;
    let auth = login(&npm).await;
    let created = create(
        &npm,
        &auth,
        host_body(&["Www.Example.com", "b.example.com"], 8080),
    )
    .await;
    let id = created["id"].as_i64().unwrap();
    // Stored sorted (JavaScript's sort: uppercase first), as sent otherwise.
    assert_eq!(
        created["domain_names"],
        json!(["Www.Example.com", "b.example.com"])
    );
    // Defaults.
    for (k, v) in [
        ("access_list_id", json!(0)),
        ("certificate_id", json!(0)),
        ("ssl_forced", json!(false)),
        ("enabled", json!(true)),
        ("advanced_config", json!("")),
        ("locations", Value::Null),
        ("trust_forwarded_proto", json!(false)),
        ("owner_user_id", json!(1)),
        ("certificate", Value::Null),
        ("access_list", Value::Null),
    ] {
        assert_eq!(created[k], v, "{k}");
    }
    assert_eq!(created["owner"]["email"], EMAIL);
    let created_on = created["created_on"].as_str().unwrap();
    assert_eq!(created_on.len(), 19, "YYYY-MM-DD HH:MM:SS: {created_on}");
    assert_eq!(&created_on[10..11], " ");
    // The POST answers the row read before nginx ran: meta as sent.
    assert_eq!(
        created["meta"],
        json!({"managed_by": "tiny-forge", "stage": "ns/web"})
    );

    // GET shows nginx's verdict; no expansions unless asked.
    let (s, got) = call(
        &npm,
        "GET",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(got["meta"]["nginx_online"], true);
    assert_eq!(got["meta"]["nginx_err"], Value::Null);
    assert_eq!(got["meta"]["managed_by"], "tiny-forge");
    assert!(got.get("owner").is_none());
    let (s, got) = call(
        &npm,
        "GET",
        &format!("/nginx/proxy-hosts/{id}?expand=owner"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!((s, got["owner"]["id"].as_i64()), (200, Some(1)));
    let (s, b) = call(&npm, "GET", "/nginx/proxy-hosts/abc", Some(&auth), None).await;
    assert_eq!((s, msg(&b)), (400, "Internal Error"));
    let (s, b) = call(&npm, "GET", "/nginx/proxy-hosts/999", Some(&auth), None).await;
    assert_eq!((s, msg(&b)), (404, "Not Found - 999"));

    // List: ordered by the domain_names JSON text; ?query= substring; ?expand= checked.
    create(&npm, &auth, host_body(&["a.example.org"], 8081)).await;
    let (s, list) = call(&npm, "GET", "/nginx/proxy-hosts", Some(&auth), None).await;
    assert_eq!(s, 200);
    let firsts: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["domain_names"][0].as_str().unwrap())
        .collect();
    assert_eq!(firsts, ["Www.Example.com", "a.example.org"]);
    assert_eq!(list, json!(npm.hosts()));
    let (_, found) = call(
        &npm,
        "GET",
        "/nginx/proxy-hosts?query=EXAMPLE.ORG",
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(found.as_array().unwrap().len(), 1);
    let (_, found) = call(
        &npm,
        "GET",
        "/nginx/proxy-hosts?expand=owner,certificate,access_list",
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(found[0]["owner"]["roles"], json!(["admin"]));
    let (s, b) = call(
        &npm,
        "GET",
        "/nginx/proxy-hosts?expand=owner,teapot",
        Some(&auth),
        None,
    )
    .await;
    assert_eq!((s, msg(&b)), (500, "Internal Error"));

    // PUT is partial; meta replaces the whole object; the answer carries nginx's meta.
    let (s, put) = call(
        &npm,
        "PUT",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        Some(json!({"forward_port": "9090", "meta": {"managed_by": "someone-else"}})),
    )
    .await;
    assert_eq!(s, 200, "{put}");
    assert_eq!(put["forward_port"], 9090);
    assert_eq!(put["forward_host"], "127.0.0.1");
    assert_eq!(
        put["meta"],
        json!({"managed_by": "someone-else", "nginx_online": true, "nginx_err": null})
    );
    assert!(put.get("owner").is_some());
    for (body, want) in [
        (json!({}), "data must NOT have fewer than 1 properties"),
        (
            json!({"id": id, "forward_port": 1}),
            "data must NOT have additional properties",
        ),
        (
            json!({"forward_port": 1, "bogus": true}),
            "data must NOT have additional properties",
        ),
        (json!({"locations": null}), "data/locations must be array"),
    ] {
        let (s, b) = call(
            &npm,
            "PUT",
            &format!("/nginx/proxy-hosts/{id}"),
            Some(&auth),
            Some(body.clone()),
        )
        .await;
        assert_eq!((s, msg(&b)), (400, want), "{body}");
    }
    let (s, b) = call(
        &npm,
        "PUT",
        "/nginx/proxy-hosts/999",
        Some(&auth),
        Some(json!({"forward_port": 1})),
    )
    .await;
    assert_eq!((s, msg(&b)), (404, "Not Found - 999"));

    // Soft delete: true; gone from GET and the list; the id is never reused.
    let writes = npm.writes();
    let (s, b) = call(
        &npm,
        "DELETE",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!((s, b), (200, json!(true)));
    assert_eq!(npm.writes(), writes + 1);
    let (s, b) = call(
        &npm,
        "GET",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!((s, msg(&b).to_string()), (404, format!("Not Found - {id}")));
    let (s, _) = call(
        &npm,
        "DELETE",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(npm.hosts().len(), 1);
    let again = create(&npm, &auth, host_body(&["www.example.com"], 8080)).await;
    assert!(
        again["id"].as_i64().unwrap() > id + 1,
        "ids are never reused"
    );
    npm.stop().await;
}

#[tokio::test]
async fn validation_follows_the_openapi_schema() {
    let npm = double().await;
    let auth = login(&npm).await;
    let cases = [
        (
            json!({"domain_names": ["a.example.com"], "forward_scheme": "http", "forward_host": "127.0.0.1"}),
            "data must have required property 'forward_port'",
        ),
        (
            json!({}),
            "data must have required property 'domain_names', data must have required property 'forward_scheme', data must have required property 'forward_host', data must have required property 'forward_port'",
        ),
        (
            json!({"domain_names": ["a.example.com"], "forward_scheme": "http", "forward_host": "127.0.0.1", "forward_port": 70000}),
            "data/forward_port must be <= 65535",
        ),
        (
            json!({"domain_names": ["a.example.com"], "forward_scheme": "ftp", "forward_host": "127.0.0.1", "forward_port": 1}),
            "data/forward_scheme must be equal to one of the allowed values",
        ),
        (
            json!({"domain_names": [], "forward_scheme": "http", "forward_host": "127.0.0.1", "forward_port": 1}),
            "data/domain_names must NOT have fewer than 1 items",
        ),
        (
            json!({"domain_names": ["a b.com"], "forward_scheme": "http", "forward_host": "127.0.0.1", "forward_port": 1}),
            r#"data/domain_names/0 must match pattern "^[^&| @!#%^();:/\\}{=+?<>,~`'"]+$""#,
        ),
        (
            json!({"domain_names": ["a.com", "a.com"], "forward_scheme": "http", "forward_host": "127.0.0.1", "forward_port": 1}),
            "data/domain_names must NOT have duplicate items (items ## 1 and 0 are identical)",
        ),
        (
            json!({"domain_names": ["a.com"], "forward_scheme": "http", "forward_host": "", "forward_port": "x"}),
            "data/forward_host must NOT have fewer than 1 characters, data/forward_port must be integer",
        ),
        (
            json!({"domain_names": ["a.com"], "forward_scheme": "http", "forward_host": "h", "forward_port": 1, "certificate_id": "old"}),
            "data/certificate_id must be integer, data/certificate_id must match pattern \"^new$\", data/certificate_id must match a schema in anyOf",
        ),
        (
            json!({"domain_names": ["a.com"], "forward_scheme": "http", "forward_host": "h", "forward_port": 1, "locations": [{"path": "/x"}]}),
            "data/locations/0 must have required property 'forward_scheme', data/locations/0 must have required property 'forward_host', data/locations/0 must have required property 'forward_port'",
        ),
        (
            json!({"domain_names": ["a.com"], "forward_scheme": "http", "forward_host": "h", "forward_port": 1, "meta": "tag"}),
            "data/meta must be object",
        ),
    ];
    for (body, want) in cases {
        let (s, b) = call(
            &npm,
            "POST",
            "/nginx/proxy-hosts",
            Some(&auth),
            Some(body.clone()),
        )
        .await;
        assert_eq!((s, msg(&b)), (400, want), "{body}");
    }
    // Without Content-Type: application/json the body is not read at all (Express).
    let r = client()
        .post(format!("{}/api/nginx/proxy-hosts", npm.url))
        .header("Authorization", &auth)
        .body(host_body(&["a.com"], 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let b: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(msg(&b).starts_with("data must have required property 'domain_names'"));
    // Malformed JSON: 400, non-public.
    let r = client()
        .post(format!("{}/api/nginx/proxy-hosts", npm.url))
        .header("Authorization", &auth)
        .header("Content-Type", "application/json")
        .body("{\"domain_names\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(npm.writes(), 0);

    // Coercion: "8080" → 8080, "true" → true, 1 → true, 5 → "5".
    let b = create(
        &npm,
        &auth,
        json!({"domain_names": ["coerce.example.com"], "forward_scheme": "http",
               "forward_host": 10, "forward_port": "8080", "block_exploits": "true",
               "allow_websocket_upgrade": 1, "caching_enabled": 0, "trust_forwarded_proto": true}),
    )
    .await;
    assert_eq!(b["forward_port"], 8080);
    assert_eq!(b["forward_host"], "10");
    assert_eq!(b["block_exploits"], true);
    assert_eq!(b["allow_websocket_upgrade"], true);
    assert_eq!(b["caching_enabled"], false);
    assert_eq!(b["trust_forwarded_proto"], true);
    npm.stop().await;
}

#[tokio::test]
async fn ssl_and_hsts_are_cleaned_up_without_a_certificate() {
    let npm = double().await;
    let auth = login(&npm).await;
    let mut body = host_body(&["ssl.example.com"], 1);
    for k in [
        "ssl_forced",
        "http2_support",
        "hsts_enabled",
        "hsts_subdomains",
    ] {
        body[k] = json!(true);
    }
    let b = create(&npm, &auth, body.clone()).await;
    for k in [
        "ssl_forced",
        "http2_support",
        "hsts_enabled",
        "hsts_subdomains",
    ] {
        assert_eq!(b[k], false, "{k}");
    }
    // certificate_id: 0 sent explicitly skips the clean-up (NPM-API.md).
    body["domain_names"] = json!(["ssl2.example.com"]);
    body["certificate_id"] = json!(0);
    let b = create(&npm, &auth, body).await;
    for k in [
        "ssl_forced",
        "http2_support",
        "hsts_enabled",
        "hsts_subdomains",
    ] {
        assert_eq!(b[k], true, "{k}");
    }
    // On PUT the clean-up looks at the stored row too.
    let id = b["id"].as_i64().unwrap();
    let (s, b) = call(
        &npm,
        "PUT",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        Some(json!({"forward_port": 2})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(b["ssl_forced"], false);
    assert_eq!(b["hsts_subdomains"], false);
    npm.stop().await;
}

#[tokio::test]
async fn domain_conflicts_are_case_insensitive_and_freed_by_delete() {
    let npm = double().await;
    let auth = login(&npm).await;
    let first = create(&npm, &auth, host_body(&["app.example.com"], 1)).await;
    let id = first["id"].as_i64().unwrap();
    let (s, b) = call(
        &npm,
        "POST",
        "/nginx/proxy-hosts",
        Some(&auth),
        Some(host_body(&["new.example.com", "APP.Example.COM"], 2)),
    )
    .await;
    assert_eq!((s, msg(&b)), (400, "APP.Example.COM is already in use"));
    // A substring is not a conflict.
    create(&npm, &auth, host_body(&["pp.example.com"], 3)).await;
    // The host being updated does not conflict with itself.
    let (s, _) = call(
        &npm,
        "PUT",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        Some(json!({"domain_names": ["APP.example.com", "api.example.com"]})),
    )
    .await;
    assert_eq!(s, 200);
    // Another host may not take it over.
    let other = create(&npm, &auth, host_body(&["other.example.com"], 4)).await;
    let (s, b) = call(
        &npm,
        "PUT",
        &format!("/nginx/proxy-hosts/{}", other["id"]),
        Some(&auth),
        Some(json!({"domain_names": ["api.EXAMPLE.com"]})),
    )
    .await;
    assert_eq!((s, msg(&b)), (400, "api.EXAMPLE.com is already in use"));
    // Deleting frees the domains.
    let (s, _) = call(
        &npm,
        "DELETE",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(s, 200);
    create(&npm, &auth, host_body(&["app.example.com"], 5)).await;
    // Hosts made outside the adapter count too.
    let foreign = npm.insert_foreign_host(&["legacy.example.com"], "10.0.0.9", 80);
    let listed = npm.hosts();
    let f = listed.iter().find(|h| h["id"] == foreign).unwrap();
    assert!(f["meta"].get("managed_by").is_none());
    let (s, b) = call(
        &npm,
        "POST",
        "/nginx/proxy-hosts",
        Some(&auth),
        Some(host_body(&["Legacy.example.com"], 6)),
    )
    .await;
    assert_eq!((s, msg(&b)), (400, "Legacy.example.com is already in use"));
    npm.stop().await;
}

#[tokio::test]
async fn enable_disable_and_the_put_enabled_false_trap() {
    let npm = double().await;
    let auth = login(&npm).await;
    let id = create(&npm, &auth, host_body(&["web.example.com"], 8080)).await["id"]
        .as_i64()
        .unwrap();
    let path = |a: &str| format!("/nginx/proxy-hosts/{id}/{a}");
    assert_eq!(
        npm.route_for("WEB.example.com").as_deref(),
        Some("http://127.0.0.1:8080")
    );
    let (s, b) = call(&npm, "POST", &path("enable"), Some(&auth), None).await;
    assert_eq!((s, msg(&b)), (400, "Host is already enabled"));
    let (s, b) = call(&npm, "POST", &path("disable"), Some(&auth), None).await;
    assert_eq!((s, b), (200, json!(true)));
    assert_eq!(npm.route_for("web.example.com"), None);
    assert_eq!(npm.host(id).unwrap()["enabled"], false);
    let (s, b) = call(&npm, "POST", &path("disable"), Some(&auth), None).await;
    assert_eq!((s, msg(&b)), (400, "Host is already disabled"));
    // A PUT to a disabled host does not configure nginx.
    let (s, _) = call(
        &npm,
        "PUT",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        Some(json!({"forward_port": 8081})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(npm.route_for("web.example.com"), None);
    let (s, _) = call(&npm, "POST", &path("enable"), Some(&auth), None).await;
    assert_eq!(s, 200);
    assert_eq!(
        npm.route_for("web.example.com").as_deref(),
        Some("http://127.0.0.1:8081")
    );

    // PUT {"enabled": false}: saved, but nginx keeps routing — and /disable then refuses.
    let (s, b) = call(
        &npm,
        "PUT",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        Some(json!({"enabled": false, "forward_port": 9999})),
    )
    .await;
    assert_eq!((s, &b["enabled"]), (200, &json!(false)));
    assert_eq!(
        npm.route_for("web.example.com").as_deref(),
        Some("http://127.0.0.1:8081"),
        "PUT enabled:false does not stop routing (nor apply the new port)"
    );
    let (s, b) = call(&npm, "POST", &path("disable"), Some(&auth), None).await;
    assert_eq!((s, msg(&b)), (400, "Host is already disabled"));
    // Non-numeric ids on the write paths go through parseInt.
    let (s, b) = call(
        &npm,
        "POST",
        "/nginx/proxy-hosts/abc/enable",
        Some(&auth),
        None,
    )
    .await;
    assert_eq!((s, msg(&b)), (404, "Not Found - NaN"));
    npm.stop().await;
}

#[tokio::test]
async fn a_bad_nginx_config_is_saved_with_nginx_online_false() {
    let npm = double().await;
    let auth = login(&npm).await;
    let mut body = host_body(&["bad.example.com"], 8080);
    body["advanced_config"] = json!("invalid_directive on;");
    let created = create(&npm, &auth, body).await;
    let id = created["id"].as_i64().unwrap();
    assert!(
        created["meta"].get("nginx_online").is_none(),
        "the POST answer does not show it"
    );
    let (s, got) = call(
        &npm,
        "GET",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(got["meta"]["nginx_online"], false);
    let err = got["meta"]["nginx_err"].as_str().unwrap();
    assert!(
        err.contains("unknown directive \"invalid_directive\""),
        "{err}"
    );
    assert_eq!(got["meta"]["managed_by"], "tiny-forge");
    assert_eq!(npm.route_for("bad.example.com"), None, "config removed");
    // Fixing it with a PUT brings it online; the PUT answer shows the new meta.
    let (s, put) = call(
        &npm,
        "PUT",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        Some(json!({"advanced_config": ""})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(put["meta"]["nginx_online"], true);
    assert!(npm.route_for("bad.example.com").is_some());
    // Breaking a live host takes it offline (its config is removed).
    let (_, put) = call(
        &npm,
        "PUT",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        Some(json!({"advanced_config": "# comment\ninvalid_directive 1;"})),
    )
    .await;
    assert_eq!(put["meta"]["nginx_online"], false);
    assert_eq!(npm.route_for("bad.example.com"), None);
    npm.stop().await;
}

#[tokio::test]
async fn writes_are_not_atomic() {
    let npm = double().await;
    let auth = login(&npm).await;
    npm.fail_next_write_after_commit();
    // A rejected call does not use up the failure.
    let (s, _) = call(
        &npm,
        "POST",
        "/nginx/proxy-hosts",
        Some(&auth),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, b) = call(
        &npm,
        "POST",
        "/nginx/proxy-hosts",
        Some(&auth),
        Some(host_body(&["half.example.com"], 8080)),
    )
    .await;
    assert_eq!((s, msg(&b)), (500, "Internal Error"));
    let hosts = npm.hosts();
    assert_eq!(hosts.len(), 1, "the database changed anyway");
    assert!(
        hosts[0]["meta"].get("nginx_online").is_none(),
        "nginx never ran"
    );
    assert_eq!(npm.route_for("half.example.com"), None);
    assert_eq!(npm.writes(), 0);
    assert_eq!(npm.write_attempts(), 2);
    // The next write goes through; a retried POST now conflicts with the half-made host.
    let (s, b) = call(
        &npm,
        "POST",
        "/nginx/proxy-hosts",
        Some(&auth),
        Some(host_body(&["half.example.com"], 8080)),
    )
    .await;
    assert_eq!((s, msg(&b)), (400, "half.example.com is already in use"));
    let id = hosts[0]["id"].as_i64().unwrap();
    let (s, _) = call(
        &npm,
        "PUT",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        Some(json!({"forward_port": 8080})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(npm.writes(), 1);
    assert!(npm.route_for("half.example.com").is_some());
    // A failing delete: the host is gone from the database, nginx still serves it.
    npm.fail_next_write_after_commit();
    let (s, _) = call(
        &npm,
        "DELETE",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(s, 500);
    assert!(npm.hosts().is_empty());
    assert!(npm.route_for("half.example.com").is_some(), "no reload yet");
    let calls = npm.calls();
    assert_eq!(
        calls.last().map(String::as_str),
        Some(format!("DELETE /api/nginx/proxy-hosts/{id} 500").as_str())
    );
    npm.stop().await;
}

#[tokio::test]
async fn v2_11_style_booleans_are_0_and_1() {
    let npm = NpmDouble::start(DoubleOptions {
        bool_as_int: true,
        ..options()
    })
    .await;
    let auth = login(&npm).await;
    let mut body = host_body(&["old.example.com"], 1);
    body["block_exploits"] = json!(true);
    let b = create(&npm, &auth, body).await;
    assert_eq!(b["enabled"], 1);
    assert_eq!(b["block_exploits"], 1);
    assert_eq!(b["ssl_forced"], 0);
    assert_eq!(b["owner"]["is_disabled"], 0);
    let (_, list) = call(&npm, "GET", "/nginx/proxy-hosts", Some(&auth), None).await;
    assert_eq!(list[0]["allow_websocket_upgrade"], 0);
    assert_eq!(list[0]["meta"]["nginx_online"], true, "meta stays JSON");
    npm.stop().await;
}

#[tokio::test]
async fn set_down_refuses_connections_until_it_is_back() {
    let npm = double().await;
    let auth = login(&npm).await;
    create(&npm, &auth, host_body(&["up.example.com"], 1)).await;
    let c = client();
    let url = format!("{}/api/", npm.url);
    assert!(c.get(&url).send().await.is_ok());
    npm.set_down(true);
    // Pooled connection or new one: a transport error, never an HTTP answer.
    for _ in 0..3 {
        let r = c.get(&url).send().await;
        assert!(r.is_err(), "{r:?}");
    }
    // Shortly after, the socket itself is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let e = client().get(&url).send().await.unwrap_err();
        if e.is_connect() {
            break;
        }
        assert!(Instant::now() < deadline, "still accepting: {e}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    npm.set_down(false);
    let (s, list) = call(&npm, "GET", "/nginx/proxy-hosts", Some(&auth), None).await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "state survives");
    assert!(c.get(&url).send().await.is_ok());
    // Twice in a row, quickly.
    npm.set_down(true);
    npm.set_down(false);
    npm.set_down(true);
    npm.set_down(false);
    let (s, _) = call(&npm, "GET", "/", None, None).await;
    assert_eq!(s, 200);
    npm.stop().await;
}

#[tokio::test]
async fn a_restarting_backend_answers_502_from_npms_nginx_and_changes_nothing() {
    let npm = double().await;
    let auth = login(&npm).await;
    let id = create(&npm, &auth, host_body(&["gw.example.com"], 8080)).await["id"]
        .as_i64()
        .unwrap();
    let (writes, attempts) = (npm.writes(), npm.write_attempts());
    for status in [502, 503, 504] {
        npm.set_gateway_error(Some(status));
        for (method, path, body) in [
            ("GET", "/".to_string(), None),
            (
                "POST",
                "/tokens".to_string(),
                Some(json!({"identity": EMAIL, "secret": PASSWORD})),
            ),
            ("GET", "/nginx/proxy-hosts".to_string(), None),
            (
                "PUT",
                format!("/nginx/proxy-hosts/{id}"),
                Some(json!({"forward_port": 9090})),
            ),
        ] {
            let r = client()
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}/api{path}", npm.url),
                )
                .header("Authorization", &auth)
                .json(&body.unwrap_or(Value::Null))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), status, "{method} {path}");
            assert!(
                r.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/html"),
                "an HTML page from nginx, not NPM's JSON error"
            );
            assert!(r.text().await.unwrap().contains("openresty"));
        }
    }
    npm.set_gateway_error(None);
    assert_eq!((npm.writes(), npm.write_attempts()), (writes, attempts));
    assert_eq!(
        npm.host(id).unwrap()["forward_port"],
        8080,
        "nothing reached the API"
    );
    let (s, _) = call(&npm, "GET", "/nginx/proxy-hosts", Some(&auth), None).await;
    assert_eq!(s, 200, "the same token works once the backend is back");
    npm.stop().await;
}

// --- the nginx data plane -------------------------------------------------------------------

/// A tiny HTTP server answering `body` to everything, until dropped.
async fn backend(body: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, task)
}

/// GET http://127.0.0.1:<nginx>/ with `Host: domain`: (status, body).
async fn through_nginx(port: u16, domain: &str) -> (u16, String) {
    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .header("Host", domain)
        .send()
        .await
        .expect("nginx answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Reload is asynchronous: wait (up to 5 s) until the domain answers `want`.
async fn eventually(port: u16, domain: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = through_nginx(port, domain).await;
        if body.contains(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{domain} never answered {want:?}; last: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn plane() -> Option<NginxPlane> {
    match NginxPlane::start().await {
        Ok(p) => Some(p),
        Err(e) if std::path::Path::new("/usr/sbin/nginx").exists() => {
            panic!("nginx is installed but the data plane did not start: {e}")
        }
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI must install Debian's nginx package (.ci/run): {e}")
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

#[tokio::test]
async fn nginx_plane_routes_by_host_and_only_disable_stops_it() {
    let Some(plane) = plane().await else {
        return;
    };
    let (a_port, a) = backend("backend-A").await;
    let (b_port, b) = backend("backend-B").await;
    let npm = NpmDouble::start(DoubleOptions {
        nginx: Some(plane),
        ..options()
    })
    .await;
    let port = npm.http_port();
    let auth = login(&npm).await;

    // Nothing configured: NPM's default site.
    let (s, body) = through_nginx(port, "app.example.com").await;
    assert_eq!(s, 200);
    assert!(body.contains(DEFAULT_SITE_BODY), "{body}");

    let id = create(&npm, &auth, host_body(&["app.example.com"], a_port)).await["id"]
        .as_i64()
        .unwrap();
    eventually(port, "APP.example.com", "backend-A").await;
    let (s, got) = call(
        &npm,
        "GET",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!((s, &got["meta"]["nginx_online"]), (200, &json!(true)));

    // Switch the target with a PUT. As with NPM, the call answers before nginx has reloaded
    // (about 0.1 s before): a client that retires the old target at once would drop requests.
    let reloads = npm.reloads();
    let (s, _) = call(
        &npm,
        "PUT",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        Some(json!({"forward_port": b_port})),
    )
    .await;
    assert_eq!(s, 200);
    eventually(port, "app.example.com", "backend-B").await;
    assert_eq!(npm.reloads(), reloads + 1);
    let calls = npm.calls();
    let put = calls
        .iter()
        .rposition(|c| c.starts_with(&format!("PUT /api/nginx/proxy-hosts/{id} 200")))
        .unwrap();
    assert_eq!(
        calls[put + 1..].first().map(String::as_str),
        Some("(nginx reloaded)"),
        "the PUT answered, then nginx reloaded: {calls:?}"
    );

    // PUT enabled:false does not stop routing.
    let (s, _) = call(
        &npm,
        "PUT",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, body) = through_nginx(port, "app.example.com").await;
    assert_eq!(body, "backend-B", "still routed after PUT enabled:false");

    // /enable (allowed: the flag says disabled), then /disable stops it.
    let (s, _) = call(
        &npm,
        "POST",
        &format!("/nginx/proxy-hosts/{id}/enable"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        &npm,
        "POST",
        &format!("/nginx/proxy-hosts/{id}/disable"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(s, 200);
    eventually(port, "app.example.com", DEFAULT_SITE_BODY).await;

    // Real `nginx -t` decides nginx_online; the broken host is not served.
    let mut bad = host_body(&["bad.example.com"], a_port);
    bad["advanced_config"] = json!("invalid_directive on;");
    let bad_id = create(&npm, &auth, bad).await["id"].as_i64().unwrap();
    let (_, got) = call(
        &npm,
        "GET",
        &format!("/nginx/proxy-hosts/{bad_id}"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(got["meta"]["nginx_online"], false);
    let err = got["meta"]["nginx_err"].as_str().unwrap();
    assert!(
        err.contains("unknown directive \"invalid_directive\""),
        "{err}"
    );
    let (_, body) = through_nginx(port, "bad.example.com").await;
    assert!(body.contains(DEFAULT_SITE_BODY), "{body}");
    // ... and does not break the others.
    let (s, _) = call(
        &npm,
        "POST",
        &format!("/nginx/proxy-hosts/{id}/enable"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(s, 200);
    eventually(port, "app.example.com", "backend-B").await;

    // Delete stops routing too; a foreign host is served.
    let (s, _) = call(
        &npm,
        "DELETE",
        &format!("/nginx/proxy-hosts/{id}"),
        Some(&auth),
        None,
    )
    .await;
    assert_eq!(s, 200);
    eventually(port, "app.example.com", DEFAULT_SITE_BODY).await;
    npm.insert_foreign_host(&["legacy.example.com"], "127.0.0.1", a_port);
    eventually(port, "legacy.example.com", "backend-A").await;

    npm.stop().await;
    a.abort();
    b.abort();
}
