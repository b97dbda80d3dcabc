//! NPM's API behaviour: routes, auth quirks, proxy-host business rules, the nginx steps of every
//! write. Source of truth: `NPM-API.md` and NPM's OpenAPI document; where those are silent, NPM's
//! backend code (`internal/proxy-host.js`, `internal/host.js`, `internal/nginx.js`) as read.

use std::collections::BTreeMap;
use std::sync::Mutex;

use http::{HeaderMap, Method};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::nginx::{NginxPlane, render, simulated_test};
use super::schema;
use super::token::{self, Claims, TokenError};

/// The boolean columns (v2.11 and older return them as 0/1).
pub(crate) const BOOL_FIELDS: [&str; 9] = [
    "ssl_forced",
    "caching_enabled",
    "block_exploits",
    "allow_websocket_upgrade",
    "http2_support",
    "enabled",
    "hsts_enabled",
    "hsts_subdomains",
    "trust_forwarded_proto",
];

const EXPANSIONS: [&str; 3] = ["owner", "certificate", "access_list"];

pub(crate) struct Host {
    pub id: i64,
    pub created_on: String,
    pub modified_on: String,
    pub owner_user_id: i64,
    pub is_deleted: bool,
    /// The body columns, stored with their JSON types (booleans as booleans).
    pub f: Map<String, Value>,
}

impl Host {
    fn domains(&self) -> Vec<String> {
        self.f
            .get("domain_names")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `domain_names` column as SQLite holds it (JSON text): what NPM orders by and
    /// matches `LIKE` against.
    fn domains_text(&self) -> String {
        self.f
            .get("domain_names")
            .map(Value::to_string)
            .unwrap_or_default()
    }

    fn enabled(&self) -> bool {
        truthy(self.f.get("enabled"))
    }
}

#[derive(Default)]
pub(crate) struct Db {
    /// Every host ever created, deleted ones included (soft delete), in id order.
    pub hosts: Vec<Host>,
    pub next_id: i64,
    pub writes: usize,
    pub write_attempts: usize,
    pub logins: usize,
    pub fail_next: bool,
    pub token_serial: u64,
    /// Tokens with a smaller serial are expired (`expire_tokens`).
    pub valid_from_serial: u64,
    pub requires_2fa: bool,
    /// Every API call: "METHOD /api/path?query STATUS".
    pub calls: Vec<String>,
    /// Config files on disk: host id → the host as rendered (enabled hosts with a config nginx
    /// accepted).
    pub files: BTreeMap<i64, Map<String, Value>>,
    /// What nginx serves: `files` as of the last reload.
    pub live: BTreeMap<i64, Map<String, Value>>,
    /// NPM's backend is away (restarting): its nginx answers every `/api` call with this
    /// status (502, 503 or 504) and an HTML page; nothing reaches the API.
    pub gateway_error: Option<u16>,
    /// Reloads of the data plane done so far (each after the API call that caused it answered).
    pub reloads: usize,
}

impl Db {
    fn host_mut(&mut self, id: Option<i64>) -> Option<&mut Host> {
        let id = id?;
        self.hosts.iter_mut().find(|h| h.id == id && !h.is_deleted)
    }

    fn host(&self, id: Option<i64>) -> Option<&Host> {
        let id = id?;
        self.hosts.iter().find(|h| h.id == id && !h.is_deleted)
    }
}

pub(crate) struct Inner {
    pub email: String,
    pub password: String,
    pub version: (u32, u32, u32),
    pub bool_as_int: bool,
    pub key: Vec<u8>,
    pub started_on: String,
    pub db: Mutex<Db>,
    /// Writes run one at a time (each holds this across its nginx steps).
    pub write_lock: tokio::sync::Mutex<()>,
    pub plane: Option<NginxPlane>,
    /// This double, for the reloads that run after a call answered.
    pub me: std::sync::Weak<Inner>,
}

/// How long after the API answers a write nginx reloads: NPM runs `nginx -s reload` without
/// waiting for the new workers, and traffic switches about 0.1 s after the answer.
pub(crate) const RELOAD_LAG: std::time::Duration = std::time::Duration::from_millis(100);

/// What NPM's own nginx (openresty) answers on the admin port while the backend is down.
pub(crate) fn gateway_page(status: u16) -> Reply {
    let title = match status {
        502 => "502 Bad Gateway",
        503 => "503 Service Temporarily Unavailable",
        504 => "504 Gateway Time-out",
        _ => "500 Internal Server Error",
    };
    Reply {
        status,
        body: Body::Html(format!(
            "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>openresty</center>\r\n</body>\r\n</html>\r\n"
        )),
    }
}

pub(crate) enum Body {
    Json(Value),
    Html(String),
    Empty,
}

pub(crate) struct Reply {
    pub status: u16,
    pub body: Body,
}

impl Reply {
    fn json(status: u16, v: Value) -> Reply {
        Reply {
            status,
            body: Body::Json(v),
        }
    }
}

/// NPM's error body: `{"error":{"code":N,"message":"..."}}`, status = code.
fn fail(status: u16, message: impl Into<String>) -> Reply {
    Reply::json(
        status,
        json!({"error": {"code": status, "message": message.into()}}),
    )
}

fn internal(status: u16) -> Reply {
    fail(status, "Internal Error")
}

pub(crate) fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Null) | None => false,
        Some(_) => true,
    }
}

pub(crate) fn now_sql() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn unix_now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

fn iso_ms_after(secs: i64) -> String {
    let ms = k8s_openapi::jiff::Timestamp::now().as_millisecond() + secs * 1000;
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// SQLite's `LIKE`: `%` any run, `_` one character, ASCII letters case-insensitive.
pub(crate) fn like(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().map(|c| c.to_ascii_lowercase()).collect();
    let p: Vec<char> = pattern.chars().map(|c| c.to_ascii_lowercase()).collect();
    let (mut ti, mut pi) = (0, 0);
    let mut star: Option<usize> = None;
    let mut mark = 0;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '%' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && (p[pi] == '_' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '%' {
        pi += 1;
    }
    pi == p.len()
}

/// DB defaults of the proxy_host table (and what NPM's create adds).
fn defaults() -> Map<String, Value> {
    let v = json!({
        "access_list_id": 0,
        "certificate_id": 0,
        "ssl_forced": false,
        "caching_enabled": false,
        "block_exploits": false,
        "advanced_config": "",
        "meta": {},
        "allow_websocket_upgrade": false,
        "http2_support": false,
        "forward_scheme": "http",
        "enabled": true,
        "locations": null,
        "hsts_enabled": false,
        "hsts_subdomains": false,
        "trust_forwarded_proto": false,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// NPM's `cleanSslHstsData` on the combined row: no certificate → no forced SSL, no HTTP/2;
/// no forced SSL → no HSTS; no HSTS → no HSTS subdomains. NPM-API.md: a body that sends
/// `certificate_id: 0` explicitly skips the clean-up.
fn clean_ssl_hsts(combined: &mut Map<String, Value>, body: &Map<String, Value>) {
    if body
        .get("certificate_id")
        .and_then(Value::as_f64)
        .is_some_and(|n| n == 0.0)
    {
        return;
    }
    if !truthy(combined.get("certificate_id")) {
        combined.insert("ssl_forced".into(), Value::Bool(false));
        combined.insert("http2_support".into(), Value::Bool(false));
    }
    if !truthy(combined.get("ssl_forced")) {
        combined.insert("hsts_enabled".into(), Value::Bool(false));
    }
    if !truthy(combined.get("hsts_enabled")) {
        combined.insert("hsts_subdomains".into(), Value::Bool(false));
    }
}

fn sort_domains(f: &mut Map<String, Value>) {
    if let Some(Value::Array(a)) = f.get_mut("domain_names") {
        // JavaScript's default sort compares strings; for the characters a domain can hold
        // this is Rust's order too.
        a.sort_by(|x, y| x.as_str().unwrap_or("").cmp(y.as_str().unwrap_or("")));
    }
}

/// `Authorization: Bearer <token>` exactly as NPM's jwt middleware reads it.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let parts: Vec<&str> = h.split(' ').collect();
    if parts.first() == Some(&"Bearer") && parts.get(1).is_some_and(|t| !t.is_empty()) {
        Some(parts[1].to_string())
    } else {
        None
    }
}

/// Query parameters as Express hands them: a key given twice is an array, not a string.
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    let q = query?;
    let vals: Vec<String> = form_urlencoded::parse(q.as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect();
    if vals.len() == 1 {
        vals.into_iter().next()
    } else {
        None
    }
}

enum Who {
    User(Claims),
    Anonymous,
}

/// Which mutating call a request is, for the write counters.
fn is_write(method: &Method, rest: &str) -> bool {
    rest.starts_with("/nginx/proxy-hosts")
        && (*method == Method::POST || *method == Method::PUT || *method == Method::DELETE)
}

impl Inner {
    fn v213(&self) -> bool {
        self.version >= (2, 13, 0)
    }

    fn v214(&self) -> bool {
        self.version >= (2, 14, 0)
    }

    /// NPM's AuthError status: 400 from v2.13, 401 before.
    fn auth_status(&self) -> u16 {
        if self.v213() { 400 } else { 401 }
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<Who, Reply> {
        let Some(t) = bearer(headers) else {
            return Ok(Who::Anonymous);
        };
        match token::verify(&self.key, &t, unix_now()) {
            Err(TokenError::Garbage) => Err(internal(500)),
            Err(TokenError::Expired) => Err(fail(self.auth_status(), "Token has expired")),
            Ok(c) if c.serial < self.db.lock().unwrap().valid_from_serial => {
                Err(fail(self.auth_status(), "Token has expired"))
            }
            Ok(c) => Ok(Who::User(c)),
        }
    }

    /// No (or no `Bearer `) token: v2.13–v2.15 answer 404 `Not Found - <path>`, or 500 on the
    /// collection POST; older versions 403 `Permission Denied`.
    fn anonymous(&self, rest: &str, collection_post: bool) -> Reply {
        if !self.v213() {
            fail(403, "Permission Denied")
        } else if collection_post {
            internal(500)
        } else {
            fail(404, format!("Not Found - {rest}"))
        }
    }

    fn issue(&self, user_id: i64, scope: Vec<String>, secs: i64) -> Value {
        let serial = {
            let mut db = self.db.lock().unwrap();
            db.token_serial += 1;
            db.token_serial
        };
        let now = unix_now();
        let t = token::sign(
            &self.key,
            &Claims {
                user_id,
                scope,
                serial,
                iat: now,
                exp: now + secs,
            },
        );
        json!({"token": t, "expires": iso_ms_after(secs)})
    }

    pub(crate) fn user_json(&self) -> Value {
        let hash = hex::encode(Sha256::digest(self.email.trim().to_lowercase().as_bytes()));
        json!({
            "id": 1,
            "created_on": self.started_on,
            "modified_on": self.started_on,
            "is_disabled": if self.bool_as_int { json!(0) } else { json!(false) },
            "email": self.email.to_lowercase(),
            "name": "Administrator",
            "nickname": "Admin",
            "avatar": format!("//www.gravatar.com/avatar/{hash}?default=mm"),
            "roles": ["admin"],
        })
    }

    pub(crate) fn render_host(&self, h: &Host, expand: &[&str]) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(h.id));
        m.insert("created_on".into(), json!(h.created_on));
        m.insert("modified_on".into(), json!(h.modified_on));
        m.insert("owner_user_id".into(), json!(h.owner_user_id));
        for (k, v) in &h.f {
            if k == "trust_forwarded_proto" && !self.v214() {
                continue;
            }
            let v = if self.bool_as_int && BOOL_FIELDS.contains(&k.as_str()) {
                json!(i32::from(truthy(Some(v))))
            } else {
                v.clone()
            };
            m.insert(k.clone(), v);
        }
        for e in expand {
            match *e {
                "owner" => {
                    m.insert("owner".into(), self.user_json());
                }
                // The double has no certificates and no access lists.
                "certificate" | "access_list" => {
                    m.insert((*e).to_string(), Value::Null);
                }
                _ => {}
            }
        }
        Value::Object(m)
    }

    /// Non-deleted hosts as `GET /nginx/proxy-hosts` orders them: by the `domain_names` JSON
    /// text; `query` is NPM's `LIKE '%query%'` on that text.
    pub(crate) fn listed<'a>(&self, db: &'a Db, query: Option<&str>) -> Vec<&'a Host> {
        let mut v: Vec<(String, &Host)> = db
            .hosts
            .iter()
            .filter(|h| !h.is_deleted)
            .map(|h| (h.domains_text(), h))
            .collect();
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            let pattern = format!("%{q}%");
            v.retain(|(text, _)| like(text, &pattern));
        }
        v.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
        v.into_iter().map(|(_, h)| h).collect()
    }

    /// NPM's `isHostnameTaken` for proxy hosts: a `LIKE` pre-filter on the JSON text, then a
    /// case-insensitive exact match; deleted hosts and the host being updated do not count.
    pub(crate) fn taken(db: &Db, hostname: &str, ignore_id: Option<i64>) -> bool {
        let pattern = format!("%{hostname}%");
        let wanted = hostname.to_lowercase();
        db.hosts.iter().filter(|h| !h.is_deleted).any(|h| {
            like(&h.domains_text(), &pattern)
                && h.domains().iter().any(|d| d.to_lowercase() == wanted)
                && ignore_id.is_none_or(|i| i == 0 || i != h.id)
        })
    }

    // --- dispatch -----------------------------------------------------------------------------

    pub(crate) async fn dispatch(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Reply {
        let Some(rest) = path.strip_prefix("/api") else {
            return Reply {
                status: 404,
                body: Body::Html("Not Found (the NPM test double serves only /api)\n".into()),
            };
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            return Reply {
                status: 404,
                body: Body::Html("Not Found\n".into()),
            };
        }
        let rest = if rest.is_empty() { "/" } else { rest };
        if *method == Method::OPTIONS {
            return Reply {
                status: 204,
                body: Body::Empty,
            };
        }
        if is_write(method, rest) {
            self.db.lock().unwrap().write_attempts += 1;
        }
        match rest {
            "/" if *method == Method::GET => self.health(),
            "/tokens" | "/tokens/" => self.tokens(method, rest, query, headers, body).await,
            "/nginx/proxy-hosts" | "/nginx/proxy-hosts/" => {
                self.collection(method, rest, query, headers, body).await
            }
            _ => {
                if let Some(r) = rest.strip_prefix("/nginx/proxy-hosts/") {
                    let parts: Vec<&str> = r.split('/').collect();
                    match parts.as_slice() {
                        [id] if !id.is_empty() => {
                            return self.item(method, rest, id, query, headers, body).await;
                        }
                        [id, action @ ("enable" | "disable")] if !id.is_empty() => {
                            return self.toggle(method, rest, id, action, headers).await;
                        }
                        _ => {}
                    }
                }
                fail(404, format!("Not Found - {rest}"))
            }
        }
    }

    fn health(&self) -> Reply {
        let (major, minor, revision) = self.version;
        Reply::json(
            200,
            json!({"status": "OK", "setup": true,
                   "version": {"major": major, "minor": minor, "revision": revision}}),
        )
    }

    async fn tokens(
        &self,
        method: &Method,
        rest: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Reply {
        if *method == Method::POST {
            return self.login(headers, body);
        }
        if *method != Method::GET {
            return fail(404, format!("Not Found - {rest}"));
        }
        let claims = match self.authenticate(headers) {
            Err(r) => return r,
            // By analogy with the proxy-host GETs (not verified against NPM).
            Ok(Who::Anonymous) => return self.anonymous("/tokens", false),
            Ok(Who::User(c)) => c,
        };
        let expiry = query_param(query, "expiry").unwrap_or_else(|| "1d".into());
        let Some(secs) = token::parse_period(&expiry) else {
            return fail(self.auth_status(), format!("Invalid expiry time: {expiry}"));
        };
        Reply::json(200, self.issue(claims.user_id, claims.scope, secs))
    }

    fn login(&self, headers: &HeaderMap, body: &[u8]) -> Reply {
        let mut data = match parse_body(headers, body) {
            Ok(v) => v,
            Err(r) => return r,
        };
        if let Err(msg) = schema::validate(&schema::token_request(), &mut data) {
            return fail(400, msg);
        }
        let identity = data["identity"]
            .as_str()
            .unwrap_or("")
            .trim()
            .to_lowercase();
        let secret = data["secret"].as_str().unwrap_or("");
        if identity != self.email.trim().to_lowercase() || secret != self.password {
            return fail(self.auth_status(), "Invalid email or password");
        }
        if self.db.lock().unwrap().requires_2fa {
            let challenge = self.issue(1, vec!["2fa-challenge".into()], 300);
            return Reply::json(
                200,
                json!({"requires_2fa": true, "challenge_token": challenge["token"]}),
            );
        }
        self.db.lock().unwrap().logins += 1;
        Reply::json(200, self.issue(1, vec!["user".into()], 86_400))
    }

    fn expand(&self, query: Option<&str>) -> Result<Vec<&'static str>, Reply> {
        let Some(raw) = query_param(query, "expand") else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in raw.split(',').filter(|i| !i.is_empty()) {
            // Objection rejects a relation outside allowGraph: a plain Error, so 500.
            match EXPANSIONS.iter().find(|e| **e == item) {
                Some(e) => out.push(*e),
                None => return Err(internal(500)),
            }
        }
        Ok(out)
    }

    async fn collection(
        &self,
        method: &Method,
        rest: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Reply {
        let who = match self.authenticate(headers) {
            Err(r) => return r,
            Ok(w) => w,
        };
        let is_post = *method == Method::POST;
        if matches!(who, Who::Anonymous) {
            return self.anonymous(rest, is_post);
        }
        if *method == Method::GET {
            let expand = match self.expand(query) {
                Ok(e) => e,
                Err(r) => return r,
            };
            let q = query_param(query, "query");
            let db = self.db.lock().unwrap();
            let rows: Vec<Value> = self
                .listed(&db, q.as_deref())
                .into_iter()
                .map(|h| self.render_host(h, &expand))
                .collect();
            return Reply::json(200, Value::Array(rows));
        }
        if is_post {
            return self.create(headers, body).await;
        }
        fail(404, format!("Not Found - {rest}"))
    }

    async fn item(
        &self,
        method: &Method,
        rest: &str,
        raw_id: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Reply {
        let who = match self.authenticate(headers) {
            Err(r) => return r,
            Ok(w) => w,
        };
        if matches!(who, Who::Anonymous) {
            return self.anonymous(rest, false);
        }
        match *method {
            Method::GET => {
                // The route validator: a non-numeric id is an InternalValidationError.
                let Some(id) = schema::path_id(raw_id) else {
                    return internal(400);
                };
                let expand = match self.expand(query) {
                    Ok(e) => e,
                    Err(r) => return r,
                };
                let db = self.db.lock().unwrap();
                match db.host(Some(id)) {
                    Some(h) => Reply::json(200, self.render_host(h, &expand)),
                    None => fail(404, format!("Not Found - {id}")),
                }
            }
            Method::PUT => self.update(raw_id, headers, body).await,
            Method::DELETE => self.delete(raw_id).await,
            _ => fail(404, format!("Not Found - {rest}")),
        }
    }

    async fn toggle(
        &self,
        method: &Method,
        rest: &str,
        raw_id: &str,
        action: &str,
        headers: &HeaderMap,
    ) -> Reply {
        let who = match self.authenticate(headers) {
            Err(r) => return r,
            Ok(w) => w,
        };
        if matches!(who, Who::Anonymous) {
            return self.anonymous(rest, false);
        }
        if *method != Method::POST {
            return fail(404, format!("Not Found - {rest}"));
        }
        if action == "enable" {
            self.enable(raw_id).await
        } else {
            self.disable(raw_id).await
        }
    }

    // --- writes -------------------------------------------------------------------------------

    fn take_fail(&self) -> bool {
        std::mem::take(&mut self.db.lock().unwrap().fail_next)
    }

    fn succeeded(&self, r: Reply) -> Reply {
        self.db.lock().unwrap().writes += 1;
        r
    }

    async fn create(&self, headers: &HeaderMap, body: &[u8]) -> Reply {
        let mut data = match parse_body(headers, body) {
            Ok(v) => v,
            Err(r) => return r,
        };
        if let Err(msg) = schema::validate(&schema::create_host(self.v214()), &mut data) {
            return fail(400, msg);
        }
        let Value::Object(mut data) = data else {
            return internal(400);
        };
        let _w = self.write_lock.lock().await;
        let new_certificate = data.get("certificate_id") == Some(&json!("new"));
        if new_certificate {
            data.remove("certificate_id");
        }
        let (id, row) = {
            let mut db = self.db.lock().unwrap();
            for d in data["domain_names"].as_array().cloned().unwrap_or_default() {
                let d = d.as_str().unwrap_or("");
                if Self::taken(&db, d, None) {
                    return fail(400, format!("{d} is already in use"));
                }
            }
            let mut f = defaults();
            let mut combined = data.clone();
            clean_ssl_hsts(&mut combined, &data);
            f.extend(combined);
            sort_domains(&mut f);
            db.next_id += 1;
            let id = db.next_id;
            let now = now_sql();
            db.hosts.push(Host {
                id,
                created_on: now.clone(),
                modified_on: now,
                owner_user_id: 1,
                is_deleted: false,
                f,
            });
            let h = db.host(Some(id)).expect("just inserted");
            (
                id,
                self.render_host(h, &["certificate", "owner", "access_list"]),
            )
        };
        if new_certificate {
            // Certbot runs inside the request and cannot succeed here: the host stays
            // (certificate_id 0, never configured in nginx), the call answers 500.
            return internal(500);
        }
        match self.configure(id).await {
            // The POST answers the row fetched before nginx ran: its meta has no nginx_online.
            Ok(_) => self.succeeded(Reply::json(201, row)),
            Err(()) => internal(500),
        }
    }

    async fn update(&self, raw_id: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
        let mut data = match parse_body(headers, body) {
            Ok(v) => v,
            Err(r) => return r,
        };
        if let Err(msg) = schema::validate(&schema::update_host(self.v214()), &mut data) {
            return fail(400, msg);
        }
        let Value::Object(mut data) = data else {
            return internal(400);
        };
        let id = schema::js_parse_int(raw_id);
        let _w = self.write_lock.lock().await;
        let new_certificate = data.get("certificate_id") == Some(&json!("new"));
        if new_certificate {
            data.remove("certificate_id");
        }
        let row = {
            let mut db = self.db.lock().unwrap();
            if let Some(domains) = data.get("domain_names").and_then(Value::as_array) {
                for d in domains {
                    let d = d.as_str().unwrap_or("");
                    if Self::taken(&db, d, id) {
                        return fail(400, format!("{d} is already in use"));
                    }
                }
            }
            let Some(h) = db.host_mut(id) else {
                return fail(404, format!("Not Found - {}", show_id(id)));
            };
            if new_certificate {
                return internal(500);
            }
            let mut combined = h.f.clone();
            combined.extend(data.clone());
            clean_ssl_hsts(&mut combined, &data);
            sort_domains(&mut combined);
            h.f = combined;
            h.modified_on = now_sql();
            let h = db.host(id).expect("exists");
            (
                h.enabled(),
                self.render_host(h, &["owner", "certificate", "access_list"]),
            )
        };
        let (enabled, mut row) = row;
        if !enabled {
            // "No need to add nginx config if host is disabled": whatever config nginx had
            // for this host stays live. (NPM cannot fail after commit here; the double's
            // fail-after-commit switch still applies, so "the next write" means the next one.)
            if self.take_fail() {
                return internal(500);
            }
            return self.succeeded(Reply::json(200, row));
        }
        match self.configure(id.expect("found")).await {
            Ok(meta) => {
                // The PUT answers with the meta nginx's test produced.
                row["meta"] = Value::Object(meta);
                self.succeeded(Reply::json(200, row))
            }
            Err(()) => internal(500),
        }
    }

    async fn delete(&self, raw_id: &str) -> Reply {
        let id = schema::js_parse_int(raw_id);
        let _w = self.write_lock.lock().await;
        {
            let mut db = self.db.lock().unwrap();
            let Some(h) = db.host_mut(id) else {
                return fail(404, format!("Not Found - {}", show_id(id)));
            };
            h.is_deleted = true;
            h.modified_on = now_sql();
        }
        let id = id.expect("found");
        match self.remove_config_and_reload(id).await {
            Ok(()) => self.succeeded(Reply::json(200, json!(true))),
            Err(()) => internal(500),
        }
    }

    async fn enable(&self, raw_id: &str) -> Reply {
        let id = schema::js_parse_int(raw_id);
        let _w = self.write_lock.lock().await;
        {
            let mut db = self.db.lock().unwrap();
            let Some(h) = db.host_mut(id) else {
                return fail(404, format!("Not Found - {}", show_id(id)));
            };
            if h.enabled() {
                return fail(400, "Host is already enabled");
            }
            h.f.insert("enabled".into(), Value::Bool(true));
            h.modified_on = now_sql();
        }
        match self.configure(id.expect("found")).await {
            Ok(_) => self.succeeded(Reply::json(200, json!(true))),
            Err(()) => internal(500),
        }
    }

    async fn disable(&self, raw_id: &str) -> Reply {
        let id = schema::js_parse_int(raw_id);
        let _w = self.write_lock.lock().await;
        {
            let mut db = self.db.lock().unwrap();
            let Some(h) = db.host_mut(id) else {
                return fail(404, format!("Not Found - {}", show_id(id)));
            };
            if !h.enabled() {
                return fail(400, "Host is already disabled");
            }
            h.f.insert("enabled".into(), Value::Bool(false));
            h.modified_on = now_sql();
        }
        match self.remove_config_and_reload(id.expect("found")).await {
            Ok(()) => self.succeeded(Reply::json(200, json!(true))),
            Err(()) => internal(500),
        }
    }

    // --- the nginx steps ------------------------------------------------------------------------

    /// NPM's `internalNginx.configure`: global `nginx -t` (a failure → 500, after the database
    /// change), write the host's config, `nginx -t` again (a failure → saved with
    /// `nginx_online=false`, config renamed `.err`), then reload. Returns the new meta.
    async fn configure(&self, id: i64) -> Result<Map<String, Value>, ()> {
        if self.take_fail() {
            return Err(());
        }
        if let Some(p) = &self.plane {
            p.test().await.map_err(|_| ())?;
        }
        let f = {
            let db = self.db.lock().unwrap();
            db.host(Some(id)).map(|h| h.f.clone()).ok_or(())?
        };
        let enabled = truthy(f.get("enabled"));
        if let Some(p) = &self.plane {
            let listen = format!("127.0.0.1:{}", p.http_port());
            let file = p.host_file(id);
            let _ = std::fs::remove_file(file.with_extension("conf.err"));
            std::fs::write(&file, render(&f, &listen)).map_err(|_| ())?;
        }
        {
            let mut db = self.db.lock().unwrap();
            if enabled {
                db.files.insert(id, f.clone());
            } else {
                db.files.remove(&id);
            }
        }
        let tested = match &self.plane {
            Some(p) => p.test().await,
            None => simulated_test(id, &f),
        };
        let mut meta = f
            .get("meta")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        match tested {
            Ok(()) => {
                meta.insert("nginx_online".into(), Value::Bool(true));
                meta.insert("nginx_err".into(), Value::Null);
            }
            Err(text) => {
                meta.insert("nginx_online".into(), Value::Bool(false));
                meta.insert("nginx_err".into(), Value::String(text));
                self.db.lock().unwrap().files.remove(&id);
                if let Some(p) = &self.plane {
                    let file = p.host_file(id);
                    let _ = std::fs::rename(&file, file.with_extension("conf.err"));
                }
            }
        }
        {
            let mut db = self.db.lock().unwrap();
            if let Some(h) = db.hosts.iter_mut().find(|h| h.id == id) {
                h.f.insert("meta".into(), Value::Object(meta.clone()));
                h.modified_on = now_sql();
            }
        }
        self.reload().await?;
        Ok(meta)
    }

    /// Delete and disable: remove the config, then reload (a failing reload → 500, with the
    /// database already changed and the file already gone: nginx keeps serving the old config
    /// until the next successful reload).
    async fn remove_config_and_reload(&self, id: i64) -> Result<(), ()> {
        self.db.lock().unwrap().files.remove(&id);
        if let Some(p) = &self.plane {
            let file = p.host_file(id);
            let _ = std::fs::remove_file(&file);
            let _ = std::fs::remove_file(file.with_extension("conf.err"));
        }
        if self.take_fail() {
            return Err(());
        }
        self.reload().await
    }

    /// `nginx -t`, then the reload. With a data plane the reload runs [`RELOAD_LAG`] after the
    /// call answered, as with NPM (nginx serves what is on disk then); without one, at once.
    async fn reload(&self) -> Result<(), ()> {
        let Some(p) = &self.plane else {
            let mut db = self.db.lock().unwrap();
            db.live = db.files.clone();
            db.reloads += 1;
            return Ok(());
        };
        p.test().await.map_err(|_| ())?;
        if let Some(me) = self.me.upgrade() {
            tokio::spawn(async move {
                tokio::time::sleep(RELOAD_LAG).await;
                let Some(p) = &me.plane else { return };
                // Whatever is on disk when the signal arrives is what nginx loads.
                let files = me.db.lock().unwrap().files.clone();
                if p.reload().await.is_ok() {
                    let mut db = me.db.lock().unwrap();
                    db.live = files;
                    db.reloads += 1;
                    db.calls.push("(nginx reloaded)".into());
                }
            });
        }
        Ok(())
    }

    // --- helpers for the test-facing API ------------------------------------------------------

    /// Inserts a host as NPM's UI would have (no ownership tag), configured and live.
    pub(crate) fn insert_foreign(&self, domains: &[&str], forward_host: &str, port: u16) -> i64 {
        let mut db = self.db.lock().unwrap();
        for d in domains {
            assert!(
                !Self::taken(&db, d, None),
                "insert_foreign_host: {d} is already in use"
            );
        }
        let mut f = defaults();
        f.insert("domain_names".into(), json!(domains));
        f.insert("forward_host".into(), json!(forward_host));
        f.insert("forward_port".into(), json!(port));
        f.insert(
            "meta".into(),
            json!({"letsencrypt_agree": false, "dns_challenge": false,
                   "nginx_online": true, "nginx_err": null}),
        );
        sort_domains(&mut f);
        db.next_id += 1;
        let id = db.next_id;
        let now = now_sql();
        db.hosts.push(Host {
            id,
            created_on: now.clone(),
            modified_on: now,
            owner_user_id: 1,
            is_deleted: false,
            f: f.clone(),
        });
        db.files.insert(id, f.clone());
        db.live = db.files.clone();
        drop(db);
        if let Some(p) = &self.plane {
            let listen = format!("127.0.0.1:{}", p.http_port());
            std::fs::write(p.host_file(id), render(&f, &listen)).expect("write host config");
            p.test_and_reload_blocking()
                .expect("nginx rejected the foreign host's config");
        }
        id
    }

    /// The target (`scheme://host:port`) nginx currently sends `domain` to, if any.
    pub(crate) fn route_for(&self, domain: &str) -> Option<String> {
        let db = self.db.lock().unwrap();
        let wanted = domain.to_lowercase();
        db.live.values().find_map(|f| {
            let serves = f
                .get("domain_names")
                .and_then(Value::as_array)
                .is_some_and(|a| {
                    a.iter()
                        .any(|d| d.as_str().is_some_and(|d| d.to_lowercase() == wanted))
                });
            serves.then(|| {
                format!(
                    "{}://{}:{}",
                    f.get("forward_scheme")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                    f.get("forward_host").and_then(Value::as_str).unwrap_or(""),
                    f.get("forward_port")
                        .map(Value::to_string)
                        .unwrap_or_default()
                )
            })
        })
    }
}

fn show_id(id: Option<i64>) -> String {
    id.map(|i| i.to_string()).unwrap_or_else(|| "NaN".into())
}

/// Express's `bodyParser.json()`: only `application/json` bodies are parsed (anything else
/// leaves `{}`); strict (object or array); over 100 kB → 413; malformed → 400 (both surface as
/// NPM's non-public "Internal Error").
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, Reply> {
    let is_json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false);
    if !is_json || body.is_empty() {
        return Ok(json!({}));
    }
    if body.len() > 100 * 1024 {
        return Err(internal(413));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() || v.is_array() => Ok(v),
        _ => Err(internal(400)),
    }
}
