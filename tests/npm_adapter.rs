//! The Nginx Proxy Manager adapter against the NPM test double (`tests/npm/`, built from NPM's
//! API contract) over real HTTP: ownership, compare-before-write, the auth quirks, non-atomic
//! writes, nginx errors, conflicts, outages.

mod npm;

use std::time::Duration;

use npm::{DoubleOptions, NpmDouble};
use tiny_forge::adapters::npm::{Npm, NpmConfig};
use tiny_forge::api::ProxySettings;
use tiny_forge::engine::proxy::{Owner, Proxy, ProxyError, Route};

fn adapter(double: &NpmDouble, password: &str) -> Npm {
    Npm::new(NpmConfig {
        url: double.url.clone(),
        email: "admin@example.com".into(),
        password: password.into(),
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

fn route(stage: &str, domains: &[&str], host: &str, port: u16) -> Route {
    Route {
        owner: Owner {
            instance: "test".into(),
            namespace: "default".into(),
            stage: stage.into(),
        },
        project: "demo".into(),
        generation: 1,
        domains: domains.iter().map(|d| d.to_string()).collect(),
        forward_scheme: "http".into(),
        forward_host: host.into(),
        forward_port: port,
        settings: ProxySettings::default(),
    }
}

#[tokio::test]
async fn one_host_per_stage_written_only_when_it_differs() {
    let double = NpmDouble::start(DoubleOptions::default()).await;
    let npm = adapter(&double, "changeme");
    let r = route("prod", &["app.example.com"], "172.17.0.5", 8080);

    let first = npm.ensure(&r).await.unwrap();
    assert!(first.changed);
    assert_eq!(double.hosts().len(), 1);
    let host = &double.hosts()[0];
    assert_eq!(host["meta"]["managed_by"], "tiny-forge");
    assert_eq!(host["meta"]["stage"], "default/prod");
    assert_eq!(host["forward_host"], "172.17.0.5");
    // What NPM's UI shows of it: the "Advanced" tab starts with a marker.
    let advanced = host["advanced_config"].as_str().unwrap();
    assert!(
        advanced.starts_with("# managed by tiny-forge (Stage default/prod"),
        "{advanced}"
    );

    let writes = double.writes();
    let again = npm.ensure(&r).await.unwrap();
    assert!(!again.changed);
    assert_eq!(double.writes(), writes, "nothing differs, nothing written");

    let moved = route("prod", &["app.example.com"], "172.17.0.9", 8080);
    assert!(npm.ensure(&moved).await.unwrap().changed);
    assert_eq!(double.writes(), writes + 1, "one partial PUT");
    assert_eq!(double.hosts().len(), 1, "still one host");
    assert_eq!(double.hosts()[0]["forward_host"], "172.17.0.9");
    assert!(
        double
            .calls()
            .iter()
            .any(|c| c.starts_with("PUT /api/nginx/proxy-hosts/")),
        "{:?}",
        double.calls()
    );

    assert_eq!(npm.owned("test").await.unwrap(), vec![r.owner.clone()]);
    assert!(npm.owned("another-instance").await.unwrap().is_empty());
    npm.remove(&r.owner).await.unwrap();
    assert!(double.hosts().is_empty());
    npm.remove(&r.owner).await.unwrap();
}

#[tokio::test]
async fn expired_tokens_lead_to_one_fresh_login() {
    let double = NpmDouble::start(DoubleOptions::default()).await;
    let npm = adapter(&double, "changeme");
    npm.ensure(&route("prod", &["a.example.com"], "10.0.0.1", 80))
        .await
        .unwrap();
    let logins = double.logins();
    double.expire_tokens();
    npm.ensure(&route("prod", &["a.example.com"], "10.0.0.2", 80))
        .await
        .unwrap();
    assert_eq!(double.logins(), logins + 1);
    assert_eq!(double.hosts()[0]["forward_host"], "10.0.0.2");
}

#[tokio::test]
async fn a_write_that_answered_500_after_committing_is_not_repeated() {
    let double = NpmDouble::start(DoubleOptions::default()).await;
    let npm = adapter(&double, "changeme");
    double.fail_next_write_after_commit();
    let r = route("prod", &["b.example.com"], "10.0.0.1", 80);
    let ensured = npm.ensure(&r).await.unwrap();
    assert_eq!(
        double.hosts().len(),
        1,
        "no duplicate host: {:?}",
        double.hosts()
    );
    assert_eq!(double.hosts()[0]["id"].as_i64(), Some(ensured.host_id));
}

#[tokio::test]
async fn a_switch_answered_500_is_confirmed_by_a_second_write_before_it_counts() {
    let double = NpmDouble::start(DoubleOptions::default()).await;
    let npm = adapter(&double, "changeme");
    npm.ensure(&route("prod", &["f.example.com"], "10.0.0.1", 80))
        .await
        .unwrap();
    let writes = double.writes();
    double.fail_next_write_after_commit();
    npm.ensure(&route("prod", &["f.example.com"], "10.0.0.2", 80))
        .await
        .unwrap();
    assert_eq!(double.hosts()[0]["forward_host"], "10.0.0.2");
    assert_eq!(
        double.writes(),
        writes + 1,
        "one confirming write after the 500: {:?}",
        double.calls()
    );
    let puts = double
        .calls()
        .iter()
        .filter(|c| c.starts_with("PUT "))
        .count();
    assert_eq!(puts, 2, "{:?}", double.calls());
}

#[tokio::test]
async fn a_domain_held_by_a_foreign_host_is_never_touched_unless_adopted() {
    let double = NpmDouble::start(DoubleOptions::default()).await;
    let npm = adapter(&double, "changeme");
    let foreign = double.insert_foreign_host(&["Shop.Example.com"], "192.0.2.1", 80);
    let mut r = route("shop", &["shop.example.com"], "10.0.0.1", 80);
    let writes = double.writes();
    match npm.ensure(&r).await {
        Err(ProxyError::DomainInUse { domain, host_id }) => {
            assert_eq!((domain.as_str(), host_id), ("shop.example.com", foreign));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(double.writes(), writes);
    assert_eq!(double.host(foreign).unwrap()["forward_host"], "192.0.2.1");

    r.settings.adopt = Some(true);
    let ensured = npm.ensure(&r).await.unwrap();
    assert_eq!(ensured.host_id, foreign, "adopted in place");
    assert_eq!(
        double.host(foreign).unwrap()["meta"]["managed_by"],
        "tiny-forge"
    );
}

#[tokio::test]
async fn nginx_rejecting_the_config_is_an_error_even_though_npm_answered_2xx() {
    let double = NpmDouble::start(DoubleOptions::default()).await;
    let npm = adapter(&double, "changeme");
    let mut r = route("prod", &["c.example.com"], "10.0.0.1", 80);
    r.settings.advanced_config = Some("invalid_directive on;".into());
    match npm.ensure(&r).await {
        Err(e @ ProxyError::NginxOffline(_)) => assert!(e.route_at_fault()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn old_npm_booleans_as_0_1_compare_equal() {
    let double = NpmDouble::start(DoubleOptions {
        bool_as_int: true,
        ..Default::default()
    })
    .await;
    let npm = adapter(&double, "changeme");
    let r = route("prod", &["d.example.com"], "10.0.0.1", 80);
    npm.ensure(&r).await.unwrap();
    let writes = double.writes();
    assert!(!npm.ensure(&r).await.unwrap().changed);
    assert_eq!(double.writes(), writes);
}

#[tokio::test]
async fn wrong_credentials_2fa_and_outages_are_clear_errors() {
    let double = NpmDouble::start(DoubleOptions::default()).await;
    let r = route("prod", &["e.example.com"], "10.0.0.1", 80);
    match adapter(&double, "wrong").ensure(&r).await {
        Err(e @ ProxyError::Auth(_)) => {
            assert!(e.to_string().contains("Invalid email or password"), "{e}");
            assert!(
                !e.to_string().contains("wrong"),
                "no password in errors: {e}"
            );
        }
        other => panic!("{other:?}"),
    }
    double.set_requires_2fa(true);
    match adapter(&double, "changeme").ensure(&r).await {
        Err(e @ ProxyError::Auth(_)) => assert!(e.to_string().contains("two-factor"), "{e}"),
        other => panic!("{other:?}"),
    }
    double.set_requires_2fa(false);
    let npm = adapter(&double, "changeme");
    double.set_down(true);
    match npm.ensure(&r).await {
        Err(e @ ProxyError::Unreachable(_)) => assert_eq!(e.reason().as_str(), "ProxyUnreachable"),
        other => panic!("{other:?}"),
    }
    double.set_down(false);
    assert!(npm.ensure(&r).await.unwrap().changed);
}

#[tokio::test]
async fn a_gateway_error_from_npms_nginx_is_unreachable_not_a_failed_switch() {
    let double = NpmDouble::start(DoubleOptions::default()).await;
    let npm = adapter(&double, "changeme");
    let r = route("prod", &["g.example.com"], "10.0.0.1", 80);
    npm.ensure(&r).await.unwrap();
    let moved = route("prod", &["g.example.com"], "10.0.0.2", 80);
    for status in [502, 503, 504] {
        // NPM's backend restarting: its nginx answers for it, before anything was written.
        double.set_gateway_error(Some(status));
        match npm.ensure(&moved).await {
            Err(e @ ProxyError::Unreachable(_)) => {
                assert!(!e.route_at_fault());
                assert!(e.to_string().contains(&status.to_string()), "{e}");
            }
            other => panic!("{status}: {other:?}"),
        }
        // Also when logging in is the first call.
        match adapter(&double, "changeme").ensure(&moved).await {
            Err(ProxyError::Unreachable(_)) => {}
            other => panic!("{status}, login: {other:?}"),
        }
        match npm.remove(&r.owner).await {
            Err(ProxyError::Unreachable(_)) => {}
            other => panic!("{status}, remove: {other:?}"),
        }
    }
    assert_eq!(double.hosts()[0]["forward_host"], "10.0.0.1");
    double.set_gateway_error(None);
    assert!(npm.ensure(&moved).await.unwrap().changed);
    assert_eq!(double.hosts()[0]["forward_host"], "10.0.0.2");
}

#[tokio::test]
async fn a_new_generation_with_the_same_route_writes_nothing() {
    let double = NpmDouble::start(DoubleOptions::default()).await;
    let npm = adapter(&double, "changeme");
    let mut r = route("prod", &["h.example.com"], "10.0.0.1", 80);
    npm.ensure(&r).await.unwrap();
    let writes = double.writes();
    r.generation = 2;
    assert!(!npm.ensure(&r).await.unwrap().changed);
    assert_eq!(double.writes(), writes, "{:?}", double.calls());
    // A real change writes, and brings the generation in meta up to date with it.
    r.generation = 3;
    r.forward_port = 81;
    assert!(npm.ensure(&r).await.unwrap().changed);
    assert_eq!(double.writes(), writes + 1);
    let host = &double.hosts()[0];
    assert_eq!(
        (
            host["forward_port"].as_i64(),
            host["meta"]["generation"].as_i64()
        ),
        (Some(81), Some(3))
    );
}
