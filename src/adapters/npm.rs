//! Nginx Proxy Manager adapter (v2.12–v2.15), faithful to its API's quirks: auth failures that
//! come back as 404/500/400, writes that are not atomic (a 5xx after the database changed),
//! nginx errors reported in `meta.nginx_online` instead of the status code, partial PUTs that
//! reject unknown keys, booleans as 0/1 from older versions.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::engine::proxy::{Ensured, Owner, Proxy, ProxyError, Route};

/// How to reach NPM.
#[derive(Clone)]
pub struct NpmConfig {
    /// Base URL of NPM's admin port, e.g. `http://npm:81` (the API is under `/api`).
    pub url: String,
    pub email: String,
    pub password: String,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for NpmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpmConfig")
            .field("url", &self.url)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

struct Token {
    value: String,
    refresh_after: Instant,
}

/// The NPM client: one HTTP client, one cached token.
pub struct Npm {
    config: NpmConfig,
    client: reqwest::Client,
    token: Mutex<Option<Token>>,
}

const MANAGED_BY: &str = "tiny-forge";

impl Npm {
    pub fn new(config: NpmConfig) -> Result<Npm, ProxyError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .no_proxy()
            .build()
            .map_err(|e| ProxyError::Other(e.to_string()))?;
        Ok(Npm {
            config: NpmConfig {
                url: config.url.trim_end_matches('/').to_string(),
                ..config
            },
            client,
            token: Mutex::new(None),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api{path}", self.config.url)
    }

    fn unreachable(&self, e: reqwest::Error) -> ProxyError {
        let what = if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            "connection refused".to_string()
        } else {
            e.to_string()
        };
        ProxyError::Unreachable(format!("{}: {what}", self.config.url))
    }

    /// NPM's own nginx answering for its backend (502/503/504: the backend is restarting or
    /// stuck): the API was not reached, as good as unreachable.
    fn gateway(&self, status: StatusCode) -> ProxyError {
        ProxyError::Unreachable(self.gateway_message(status))
    }

    fn gateway_message(&self, status: StatusCode) -> String {
        format!(
            "{}: HTTP {} from NPM's nginx (its backend is not answering)",
            self.config.url,
            status.as_u16()
        )
    }

    /// A valid token: cached, refreshed before its one-day expiry, or a new login.
    async fn token(&self, fresh_login: bool) -> Result<String, ProxyError> {
        let mut slot = self.token.lock().await;
        if !fresh_login && let Some(t) = slot.as_ref() {
            if Instant::now() < t.refresh_after {
                return Ok(t.value.clone());
            }
            // Refresh while it is still valid; an expired one cannot be refreshed.
            if let Ok(r) = self
                .client
                .get(self.url("/tokens"))
                .header("Authorization", format!("Bearer {}", t.value))
                .send()
                .await
                && r.status() == StatusCode::OK
                && let Ok(body) = r.json::<Value>().await
                && let Some(token) = parse_token(&body)
            {
                let value = token.value.clone();
                *slot = Some(token);
                return Ok(value);
            }
        }
        let r = self
            .client
            .post(self.url("/tokens"))
            .json(&json!({"identity": self.config.email, "secret": self.config.password}))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = r.status();
        if is_gateway(status) {
            return Err(self.gateway(status));
        }
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status != StatusCode::OK {
            return Err(ProxyError::Auth(format!(
                "login as {} failed: {}",
                self.config.email,
                error_message(status, &body)
            )));
        }
        if body["requires_2fa"].as_bool() == Some(true) {
            return Err(ProxyError::Auth(format!(
                "{} has two-factor authentication, which tiny-forge does not support: use an account without it",
                self.config.email
            )));
        }
        let token = parse_token(&body)
            .ok_or_else(|| ProxyError::Other("login answered without a token".into()))?;
        let value = token.value.clone();
        *slot = Some(token);
        Ok(value)
    }

    /// One API call. NPM v2.13–v2.15 report a bad or expired token as 400 "Token has expired",
    /// 500, or 404 on the proxy-host paths (v2.12 and older: 401/403): log in again once and
    /// retry — reads only. A write that failed that way may still have happened (NPM writes its
    /// database before it reloads nginx), so writes are left to the caller, who re-lists.
    /// A read answered 502/503/504 by NPM's nginx is `Unreachable`; a write so answered is
    /// left to the caller too (a 504 may have reached the backend).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ProxyError> {
        let read = method == Method::GET;
        let mut fresh = false;
        loop {
            let token = self.token(fresh).await?;
            let mut req = self
                .client
                .request(method.clone(), self.url(path))
                .header("Authorization", format!("Bearer {token}"));
            if let Some(body) = body {
                req = req.json(body);
            }
            let r = req.send().await.map_err(|e| self.unreachable(e))?;
            let status = r.status();
            if read && is_gateway(status) {
                return Err(self.gateway(status));
            }
            let value: Value = r.json().await.unwrap_or(Value::Null);
            if auth_quirk(status, &value) && !fresh {
                tracing::debug!(%status, "NPM token refused; logging in again");
                fresh = true;
                if read {
                    continue;
                }
                // Renew the token for the next call, but let the caller re-list.
                self.token(true).await?;
            }
            return Ok((status, value));
        }
    }

    async fn hosts(&self) -> Result<Vec<Value>, ProxyError> {
        let (status, body) = self.call(Method::GET, "/nginx/proxy-hosts", None).await?;
        match (status, body) {
            (StatusCode::OK, Value::Array(hosts)) => Ok(hosts),
            (status, body) if auth_quirk(status, &body) => {
                Err(ProxyError::Auth(error_message(status, &body)))
            }
            (status, body) => Err(ProxyError::Other(error_message(status, &body))),
        }
    }

    async fn host(&self, id: i64) -> Result<Option<Value>, ProxyError> {
        let (status, body) = self
            .call(Method::GET, &format!("/nginx/proxy-hosts/{id}"), None)
            .await?;
        match status {
            StatusCode::OK => Ok(Some(body)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(ProxyError::Other(error_message(status, &body))),
        }
    }

    /// The host's nginx state, read back: a bad config is saved with `nginx_online: false`.
    async fn verify_online(&self, id: i64) -> Result<(), ProxyError> {
        let host = self.host(id).await?.ok_or_else(|| {
            ProxyError::Other(format!("proxy host {id} vanished after the write"))
        })?;
        if truthy(&host["meta"]["nginx_online"]) == Some(false) {
            return Err(ProxyError::NginxOffline(
                host["meta"]["nginx_err"]
                    .as_str()
                    .unwrap_or("nginx reports the host offline")
                    .to_string(),
            ));
        }
        Ok(())
    }

    async fn write(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<WriteOutcome, ProxyError> {
        let (status, value) = self.call(method, path, body).await?;
        Ok(match status.as_u16() {
            200 | 201 => WriteOutcome::Done(value),
            400 => {
                let message = error_message(status, &value);
                if auth_quirk(status, &value) {
                    WriteOutcome::Uncertain {
                        message,
                        gateway: false,
                    }
                } else {
                    WriteOutcome::Refused(message)
                }
            }
            // 5xx (or an auth quirk): the database may have changed anyway — re-list.
            _ if is_gateway(status) => WriteOutcome::Uncertain {
                message: self.gateway_message(status),
                gateway: true,
            },
            _ => WriteOutcome::Uncertain {
                message: error_message(status, &value),
                gateway: false,
            },
        })
    }
}

enum WriteOutcome {
    Done(Value),
    Refused(String),
    /// It may or may not have happened; `gateway`: NPM's nginx answered for its backend.
    Uncertain {
        message: String,
        gateway: bool,
    },
}

impl Proxy for Npm {
    async fn ensure(&self, route: &Route) -> Result<Ensured, ProxyError> {
        let desired = desired_body(route);
        let mut last_uncertain = String::new();
        let mut last_gateway = false;
        let mut uncertain = false;
        // A write that answered 5xx may have happened: re-list and compare, a few times.
        for _ in 0..3 {
            let hosts = self.hosts().await?;
            let mut mine = hosts
                .iter()
                .find(|h| owner_of(h).as_ref() == Some(&route.owner));
            if let Some((host, domain)) = conflict(&hosts, route) {
                let id = host["id"].as_i64().unwrap_or_default();
                if route.settings.adopt != Some(true) || mine.is_some() {
                    return Err(ProxyError::DomainInUse {
                        domain,
                        host_id: id,
                    });
                }
                tracing::info!(host_id = id, %domain, stage = %route.owner, "adopting a proxy host");
                mine = Some(host);
            }
            let (id, outcome) = match mine {
                None => {
                    let o = self
                        .write(Method::POST, "/nginx/proxy-hosts", Some(&desired))
                        .await?;
                    (None, o)
                }
                Some(host) => {
                    let id = host["id"].as_i64().unwrap_or_default();
                    let changes = diff(host, &desired);
                    let enabled = truthy(&host["enabled"]) != Some(false);
                    let mut changes = changes;
                    // Omitted means "no certificate": detach one the host still has.
                    if desired.get("certificate_id").is_none()
                        && host["certificate_id"].as_i64().unwrap_or(0) > 0
                    {
                        changes["certificate_id"] = json!(0);
                    }
                    if uncertain && changes.as_object().is_some_and(|c| c.is_empty()) {
                        // The last write reached the database but NPM answered 5xx: its nginx
                        // may not have been reloaded. Writing `meta` again regenerates the host's
                        // config and reloads, and must answer 2xx this time.
                        changes = json!({"meta": desired["meta"]});
                    }
                    if changes.as_object().is_some_and(|c| c.is_empty()) && enabled {
                        self.verify_online(id).await?;
                        return Ok(Ensured {
                            host_id: id,
                            changed: false,
                        });
                    }
                    let mut o = WriteOutcome::Done(Value::Null);
                    if changes.as_object().is_some_and(|c| !c.is_empty()) {
                        o = self
                            .write(
                                Method::PUT,
                                &format!("/nginx/proxy-hosts/{id}"),
                                Some(&changes),
                            )
                            .await?;
                    }
                    // `PUT enabled:false` does not stop routing, and `enabled:true` does not
                    // start it: only the dedicated calls do.
                    if !enabled && matches!(o, WriteOutcome::Done(_)) {
                        o = self
                            .write(
                                Method::POST,
                                &format!("/nginx/proxy-hosts/{id}/enable"),
                                None,
                            )
                            .await?;
                    }
                    (Some(id), o)
                }
            };
            match outcome {
                WriteOutcome::Done(body) => {
                    let id = id.or_else(|| body["id"].as_i64()).ok_or_else(|| {
                        ProxyError::Other("NPM created a host without an id".into())
                    })?;
                    self.verify_online(id).await?;
                    return Ok(Ensured {
                        host_id: id,
                        changed: true,
                    });
                }
                WriteOutcome::Refused(message) if message.contains("already in use") => {
                    let domain = message.split(' ').next().unwrap_or_default().to_string();
                    return Err(ProxyError::DomainInUse { domain, host_id: 0 });
                }
                WriteOutcome::Refused(message) => return Err(ProxyError::Rejected(message)),
                WriteOutcome::Uncertain { message, gateway } => {
                    tracing::warn!(stage = %route.owner, %message, "NPM write answered an error; re-listing");
                    last_gateway = gateway;
                    last_uncertain = message;
                    uncertain = true;
                }
            }
        }
        if last_gateway {
            // The backend went away during the switch and the re-lists did not get through
            // either: nothing can be known, and nothing more done, until it is back.
            return Err(ProxyError::Unreachable(last_uncertain));
        }
        Err(ProxyError::Other(last_uncertain))
    }

    async fn remove(&self, owner: &Owner) -> Result<bool, ProxyError> {
        let mut removed = false;
        for host in self.hosts().await? {
            if owner_of(&host).as_ref() == Some(owner) {
                let id = host["id"].as_i64().unwrap_or_default();
                match self
                    .write(Method::DELETE, &format!("/nginx/proxy-hosts/{id}"), None)
                    .await?
                {
                    WriteOutcome::Done(_) => {}
                    WriteOutcome::Refused(m) | WriteOutcome::Uncertain { message: m, .. } => {
                        // Deleted already (404) is fine; anything else: look again next time.
                        if self.host(id).await?.is_some() {
                            return Err(ProxyError::Other(m));
                        }
                    }
                }
                tracing::info!(host_id = id, stage = %owner, "removed proxy host");
                removed = true;
            }
        }
        Ok(removed)
    }

    async fn owned(&self, instance: &str) -> Result<Vec<Owner>, ProxyError> {
        Ok(self
            .hosts()
            .await?
            .iter()
            .filter_map(owner_of)
            .filter(|o| o.instance == instance)
            .collect())
    }
}

fn parse_token(body: &Value) -> Option<Token> {
    let value = body["token"].as_str()?.to_string();
    // Refresh an hour before expiry (tokens last a day).
    let refresh_after = body["expires"]
        .as_str()
        .and_then(|e| e.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| {
            let left = t.as_second() - k8s_openapi::jiff::Timestamp::now().as_second() - 3600;
            Instant::now() + Duration::from_secs(left.clamp(60, 23 * 3600) as u64)
        })
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
    Some(Token {
        value,
        refresh_after,
    })
}

/// What NPM's nginx answers when its backend does not (restarting, stuck).
fn is_gateway(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

/// NPM's ways of saying "your token is not good" across versions.
fn auth_quirk(status: StatusCode, body: &Value) -> bool {
    let message = body["error"]["message"].as_str().unwrap_or_default();
    match status.as_u16() {
        401 | 403 => true,
        400 => message.contains("Token has expired"),
        404 => message.starts_with("Not Found - /nginx/proxy-hosts"),
        500 => true,
        _ => false,
    }
}

fn error_message(status: StatusCode, body: &Value) -> String {
    match body["error"]["message"].as_str() {
        Some(m) => format!("{} {m}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// Booleans as NPM returns them: `true`/`false`, or 1/0 before v2.12.
fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|n| n != 0),
        _ => None,
    }
}

fn owner_of(host: &Value) -> Option<Owner> {
    let meta = &host["meta"];
    (meta["managed_by"].as_str() == Some(MANAGED_BY)).then_some(())?;
    let (namespace, stage) = meta["stage"].as_str()?.split_once('/')?;
    Some(Owner {
        instance: meta["instance"].as_str()?.to_string(),
        namespace: namespace.to_string(),
        stage: stage.to_string(),
    })
}

/// A host not owned by this Stage that serves one of its domains (NPM compares them
/// case-insensitively).
fn conflict<'h>(hosts: &'h [Value], route: &Route) -> Option<(&'h Value, String)> {
    hosts
        .iter()
        .filter(|h| owner_of(h).as_ref() != Some(&route.owner))
        .find_map(|h| {
            let domains = h["domain_names"].as_array()?;
            domains.iter().filter_map(Value::as_str).find_map(|d| {
                route
                    .domains
                    .iter()
                    .any(|ours| ours.eq_ignore_ascii_case(d))
                    .then(|| (h, d.to_ascii_lowercase()))
            })
        })
}

/// The host as the Stage wants it. Mirrors NPM's own normalisation (no certificate: no forced
/// SSL, HTTP/2 or HSTS) so that a comparison with what NPM stored finds no difference.
fn desired_body(route: &Route) -> Value {
    let s = &route.settings;
    let flag = |b: Option<bool>| b.unwrap_or(false);
    let tls = s.certificate_id.is_some_and(|c| c > 0);
    let ssl_forced = tls && flag(s.ssl_forced);
    let mut body = json!({
        "domain_names": route.domains,
        "forward_scheme": route.forward_scheme,
        "forward_host": route.forward_host,
        "forward_port": route.forward_port,
        "access_list_id": s.access_list_id.unwrap_or(0),
        "ssl_forced": ssl_forced,
        "hsts_enabled": ssl_forced && flag(s.hsts_enabled),
        "hsts_subdomains": ssl_forced && flag(s.hsts_enabled) && flag(s.hsts_subdomains),
        "http2_support": tls && flag(s.http2_support),
        "block_exploits": flag(s.block_exploits),
        "caching_enabled": flag(s.caching_enabled),
        "allow_websocket_upgrade": flag(s.allow_websocket_upgrade),
        "advanced_config": advanced_config(route),
        "meta": {
            "managed_by": MANAGED_BY,
            "instance": route.owner.instance,
            "stage": format!("{}/{}", route.owner.namespace, route.owner.stage),
            "project": route.project,
            "generation": route.generation,
        },
    });
    // Omitted rather than 0: an explicit `certificate_id: 0` skips NPM's SSL clean-up.
    if let Some(c) = s.certificate_id.filter(|c| *c > 0) {
        body["certificate_id"] = json!(c);
    }
    body
}

/// The host's advanced configuration: a comment NPM's UI shows (the host's "Advanced" tab) that
/// marks the host as tiny-forge's — NPM has no other free-text field — then the Stage's own.
fn advanced_config(route: &Route) -> String {
    let marker = format!(
        "# managed by tiny-forge (Stage {}, instance {}): edit the Stage, not this host; changes made here are reverted",
        route.owner, route.owner.instance
    );
    match route.settings.advanced_config.as_deref() {
        Some(own) if !own.trim().is_empty() => format!("{marker}\n{own}"),
        _ => marker,
    }
}

/// The fields of `desired` that `host` does not have (a partial PUT body).
fn diff(host: &Value, desired: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (key, want) in desired.as_object().into_iter().flatten() {
        let have = &host[key];
        let same = match (key.as_str(), want) {
            ("domain_names", Value::Array(w)) => {
                let norm = |v: &Value| {
                    let mut d: Vec<String> = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_ascii_lowercase)
                        .collect();
                    d.sort();
                    d
                };
                norm(have) == norm(&Value::Array(w.clone()))
            }
            // NPM adds nginx_online/nginx_err to meta: compare only our keys. The generation
            // alone is no reason to write (each write reloads nginx): it is brought up to date
            // with the next real change.
            ("meta", Value::Object(w)) => w
                .iter()
                .filter(|(k, _)| k.as_str() != "generation")
                .all(|(k, v)| &have[k] == v),
            (_, Value::Bool(b)) => truthy(have) == Some(*b),
            (_, Value::Number(n)) => have.as_i64() == n.as_i64(),
            ("advanced_config", Value::String(s)) => have.as_str().unwrap_or_default() == s,
            _ => have == want,
        };
        if !same {
            out.insert(key.clone(), want.clone());
        }
    }
    if !out.is_empty() && host["meta"]["generation"] != desired["meta"]["generation"] {
        out.insert("meta".into(), desired["meta"].clone());
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ProxySettings;

    fn route() -> Route {
        Route {
            owner: Owner {
                instance: "standalone".into(),
                namespace: "default".into(),
                stage: "prod".into(),
            },
            project: "demo".into(),
            generation: 3,
            domains: vec!["app.example.com".into()],
            forward_scheme: "http".into(),
            forward_host: "172.17.0.5".into(),
            forward_port: 8080,
            settings: ProxySettings {
                ssl_forced: Some(true),
                http2_support: Some(true),
                ..Default::default()
            },
        }
    }

    #[test]
    fn what_npm_stored_compares_equal_even_with_0_1_booleans_and_extra_meta() {
        let desired = desired_body(&route());
        assert_eq!(
            desired["ssl_forced"], false,
            "no certificate: NPM would force it off"
        );
        assert!(desired.get("certificate_id").is_none());
        let marker = desired["advanced_config"].as_str().unwrap();
        assert!(
            marker.starts_with("# managed by tiny-forge (Stage default/prod, instance standalone)")
                && !marker.contains('\n'),
            "{marker}"
        );
        let mut stored = desired.clone();
        stored["id"] = json!(7);
        stored["domain_names"] = json!(["APP.example.com"]);
        stored["block_exploits"] = json!(0);
        stored["meta"]["nginx_online"] = json!(true);
        stored["meta"]["nginx_err"] = Value::Null;
        stored["locations"] = Value::Null;
        assert_eq!(diff(&stored, &desired), json!({}));
        stored["meta"]["generation"] = json!(2);
        assert_eq!(diff(&stored, &desired), json!({}), "a new generation alone");
        stored["forward_host"] = json!("172.17.0.9");
        let d = diff(&stored, &desired);
        assert_eq!(d["forward_host"], "172.17.0.5");
        assert_eq!(d["meta"]["generation"], 3, "meta is sent whole");
        assert_eq!(d.as_object().unwrap().len(), 2);
    }

    #[test]
    fn ownership_and_conflicts() {
        let r = route();
        let ours = desired_body(&r);
        assert_eq!(owner_of(&ours), Some(r.owner.clone()));
        let foreign = json!({"id": 3, "domain_names": ["App.Example.com"], "meta": {}});
        let (h, d) = conflict(std::slice::from_ref(&foreign), &r).unwrap();
        assert_eq!((h["id"].as_i64(), d.as_str()), (Some(3), "app.example.com"));
        assert!(conflict(&[ours], &r).is_none());
    }

    #[test]
    fn auth_quirks_of_every_version() {
        let m = |s: &str| json!({"error": {"message": s}});
        assert!(auth_quirk(StatusCode::BAD_REQUEST, &m("Token has expired")));
        assert!(auth_quirk(
            StatusCode::NOT_FOUND,
            &m("Not Found - /nginx/proxy-hosts")
        ));
        assert!(auth_quirk(
            StatusCode::INTERNAL_SERVER_ERROR,
            &m("Internal Error")
        ));
        assert!(auth_quirk(StatusCode::UNAUTHORIZED, &Value::Null));
        assert!(!auth_quirk(StatusCode::NOT_FOUND, &m("Not Found - 12")));
        assert!(!auth_quirk(
            StatusCode::BAD_REQUEST,
            &m("app.example.com is already in use")
        ));
    }
}
