//! # A test double of Nginx Proxy Manager's API (v2.12–v2.15)
//!
//! NPM cannot run on these machines, so the adapter (`src/adapters/npm.rs`) is tested against this
//! double over real HTTP. It is built from the contract in `NPM-API.md` and NPM's own OpenAPI
//! document (`npm-openapi-v2.15.1.json`, served by NPM at `GET /api/schema`); where those are
//! silent, from NPM's backend code (`internal/proxy-host.js`, `internal/host.js`,
//! `internal/nginx.js`, `lib/error.js`). Where the double and the real NPM differ, the real one
//! is right: fix the double.
//!
//! ## What it does
//!
//! - `GET /api/` (no auth) with the configured version; `POST /api/tokens` (identity/secret,
//!   `additionalProperties: false`, so `expiry` in the body is rejected; 1-day token);
//!   `GET /api/tokens` refresh (`?expiry=` as NPM's `parseDatePeriod`).
//! - Auth quirks of v2.13–v2.15: no token, or an `Authorization` that is not `Bearer <t>` with a
//!   capital B → 404 `Not Found - /nginx/proxy-hosts[/..]` (GET/PUT/DELETE/enable/disable) or
//!   500 (POST collection); a token this NPM did not sign → 500 `Internal Error`; an expired one →
//!   400 `Token has expired`; wrong password → 400 `Invalid email or password`. Versions before
//!   2.13: no token → 403 `Permission Denied`, expired/wrong password → 401.
//! - Proxy hosts: list (`?query=` as SQLite `LIKE '%q%'` on the `domain_names` JSON text,
//!   ordered by that text; `?expand=owner,certificate,access_list`, anything else → 500), create
//!   (201), get, partial update, soft delete (ids never reused), `/enable`, `/disable`; bodies
//!   validated like NPM's AJV (`allErrors`, `coerceTypes`, the OpenAPI schemas; messages such as
//!   `data/forward_port must be <= 65535`, joined with ", "); `domain_names` stored sorted;
//!   SSL/HSTS clean-up unless `certificate_id: 0` is sent explicitly; `locations` null until set;
//!   `trust_forwarded_proto` only from v2.14 (rejected and not returned before);
//!   `bool_as_int` answers booleans as 0/1 (v2.11 style).
//! - Domain conflict: 400 `<domain as sent> is already in use`, case-insensitive exact match,
//!   deleted hosts and the host being updated skipped.
//! - Each write runs NPM's nginx steps: global `nginx -t` (failure → 500 after the database
//!   change), write the host's config, `nginx -t` (failure → saved, config renamed `.err`,
//!   `meta.nginx_online=false` + `meta.nginx_err`), reload. Without a data plane the test is
//!   simulated: a config containing the text `invalid_directive` fails. The POST answers the row
//!   read before nginx ran (no `nginx_online`); GET shows it; PUT answers the new meta. As in
//!   NPM, the call answers before nginx has reloaded: with a data plane the reload runs
//!   [`api::RELOAD_LAG`] (0.1 s) after the answer, so traffic switches that much later.
//! - `PUT {"enabled": false}` saves the flag but leaves nginx alone (the host keeps routing, and a
//!   later `/disable` answers `Host is already disabled`); only `/disable` removes the config.
//! - [`NginxPlane`]: Debian's real nginx serving one server block per configured host on
//!   `127.0.0.1:<http_port>` (send `Host: <domain>`); `nginx -t` gives real `nginx_online`.
//!
//! ## Test controls
//!
//! [`NpmDouble::set_down`] closes the listening socket (connection refused) and drops open
//! connections without an answer, until `set_down(false)` listens again on the same port; the
//! data plane keeps serving. [`NpmDouble::fail_next_write_after_commit`] makes the next mutating
//! call change the database, then answer 500 without reloading nginx (as NPM does when its
//! global `nginx -t` fails). [`NpmDouble::expire_tokens`] expires every token issued so far.
//! [`NpmDouble::set_gateway_error`] stands for NPM's backend restarting: NPM's own nginx (in
//! front of the backend on the admin port) answers every `/api` call with 502 (or 503/504) and
//! its HTML error page, and nothing reaches the API.
//!
//! ## Known differences from the real NPM
//!
//! - Only `/api/`, `/api/tokens` and `/api/nginx/proxy-hosts*` exist. Certificates, access lists,
//!   users, settings, redirection/404 hosts, streams, audit log and `/api/schema` answer 404;
//!   so the domain-conflict check covers proxy hosts only (NPM also checks redirection and 404
//!   hosts), `?expand=certificate|access_list` is always `null`, and `certificate_id: "new"`
//!   always fails (500 after the host is saved on POST; nothing saved on PUT), as certbot
//!   would without network. A `certificate_id`/`access_list_id` that does not exist is stored
//!   as sent and has no effect on the rendered config.
//! - One user (id 1, admin) with the configured email/password; no 2FA flow beyond
//!   `set_requires_2fa` (login then answers `requires_2fa` + a challenge token that leads
//!   nowhere). Tokens are JWT-shaped but signed with SHA-256 over a per-double key, not RS256.
//! - Without a data plane only `invalid_directive` makes nginx's test fail (its message imitates
//!   nginx's, with NPM's paths); with the plane the message is real nginx's, with the double's
//!   temporary paths. The plane renders a simplified version of NPM's templates: no SSL (there
//!   are no certificates), no access lists, no `block_exploits`/`caching_enabled` includes, no
//!   `forward_path` on the default location; headers and `proxy_pass` with variables (so a
//!   hostname `forward_host` needs a resolver and answers 502, as in NPM) are as NPM's.
//! - Writes take milliseconds, not NPM's 0.2–0.9 s, and run one at a time. Without a data plane
//!   the "reload" is instantaneous ([`NpmDouble::route_for`]); with it, `nginx -s reload` runs
//!   0.1 s after the answer and nginx's own reload is asynchronous on top of that.
//! - Not verified against NPM, chosen from its code or by analogy: `GET /api/tokens` without a
//!   token answers 404 `Not Found - /tokens` (v2.13+); PUT/DELETE/enable/disable parse the id with
//!   `parseInt` ("5abc" → 5, "abc" → 404 `Not Found - NaN`) while GET answers 400 `Internal
//!   Error`; 500 bodies carry `"code": 500` (NPM's handler copies `err.status`, which some
//!   errors lack); versions before 2.13 say `Not Found - ` like the newer ones; a failing
//!   certbot answers 500 `Internal Error`; `?expand=` items that are empty are ignored.
//! - [`NpmDouble::fail_next_write_after_commit`] also trips a PUT to a disabled host (which
//!   never runs nginx in NPM, so cannot fail that way there), so that it always hits the next
//!   write that reaches the database.
//! - `cleanSslHstsData` in NPM's source cleans up for `certificate_id: 0` too; the double follows
//!   NPM-API.md (checked against a running instance), where an explicit 0 skips the clean-up.
//! - `modified_on` is the double's clock (UTC, SQLite format); errors are JSON only (no
//!   `debug` stack even for certificate paths); responses have no CORS or security headers
//!   beyond a few; non-`/api` paths answer a plain 404 instead of NPM's web UI.
#![allow(dead_code)]

mod api;
mod http;
mod nginx;
mod schema;
mod token;

use std::sync::{Arc, Mutex};

use serde_json::Value;

use api::{Db, Inner};
pub use nginx::NginxPlane;

/// The body NPM's default site answers (HTTP 200) on the data plane for a `Host` no proxy host
/// serves — NPM's "Congratulations" page, not a 404: check response bodies, not status codes.
pub const DEFAULT_SITE_BODY: &str = "Congratulations! You've successfully started the Nginx Proxy Manager. (NPM test double default site)";

/// How to start the double.
pub struct DoubleOptions {
    /// The admin account (NPM v2.13+ has no default one; v2.12 used admin@example.com/changeme).
    pub email: String,
    pub password: String,
    /// What `GET /api/` reports and which quirks apply (default 2.15.1).
    pub version: (u32, u32, u32),
    /// Answer booleans as 0/1, as v2.11 and older did.
    pub bool_as_int: bool,
    /// A real nginx serving the hosts (end-to-end tests); None: nginx is simulated.
    pub nginx: Option<NginxPlane>,
}

impl Default for DoubleOptions {
    fn default() -> Self {
        DoubleOptions {
            email: "admin@example.com".into(),
            password: "changeme".into(),
            version: (2, 15, 1),
            bool_as_int: false,
            nginx: None,
        }
    }
}

/// A running NPM double on `127.0.0.1`. The API is under `{url}/api`.
pub struct NpmDouble {
    /// `http://127.0.0.1:PORT` (the API is under `/api`, as NPM's admin port 81).
    pub url: String,
    inner: Arc<Inner>,
    server: Arc<http::Server>,
}

impl NpmDouble {
    pub async fn start(opts: DoubleOptions) -> NpmDouble {
        let mut key = uuid::Uuid::new_v4().as_bytes().to_vec();
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        let inner = Arc::new_cyclic(|me| Inner {
            email: opts.email,
            password: opts.password,
            version: opts.version,
            bool_as_int: opts.bool_as_int,
            key,
            started_on: api::now_sql(),
            db: Mutex::new(Db::default()),
            write_lock: tokio::sync::Mutex::new(()),
            plane: opts.nginx,
            me: me.clone(),
        });
        let server = http::Server::start(inner.clone());
        NpmDouble {
            url: format!("http://127.0.0.1:{}", server.port),
            inner,
            server,
        }
    }

    /// The current proxy hosts as `GET /api/nginx/proxy-hosts` returns them (deleted ones
    /// excluded, same order and shape, booleans as configured).
    pub fn hosts(&self) -> Vec<Value> {
        let db = self.inner.db.lock().unwrap();
        self.inner
            .listed(&db, None)
            .into_iter()
            .map(|h| self.inner.render_host(h, &[]))
            .collect()
    }

    /// One host as `GET /api/nginx/proxy-hosts/{id}` returns it (None if missing or deleted).
    pub fn host(&self, id: i64) -> Option<Value> {
        let db = self.inner.db.lock().unwrap();
        db.hosts
            .iter()
            .find(|h| h.id == id && !h.is_deleted)
            .map(|h| self.inner.render_host(h, &[]))
    }

    /// Mutating calls (POST/PUT/DELETE, enable/disable) that succeeded (2xx).
    pub fn writes(&self) -> usize {
        self.inner.db.lock().unwrap().writes
    }

    /// Mutating requests received on the proxy-host paths, whatever their outcome.
    pub fn write_attempts(&self) -> usize {
        self.inner.db.lock().unwrap().write_attempts
    }

    /// Every call received so far, as `"PUT /api/nginx/proxy-hosts/3 200"` (diagnostics, and
    /// for asserting which calls an adapter made).
    pub fn calls(&self) -> Vec<String> {
        self.inner.db.lock().unwrap().calls.clone()
    }

    /// NPM's backend restarting: `Some(502)` (or 503, 504) makes NPM's own nginx answer every
    /// `/api` call with that status and its HTML error page; nothing reaches the API. `None`:
    /// the backend answers again. The data plane keeps serving meanwhile.
    pub fn set_gateway_error(&self, status: Option<u16>) {
        self.inner.db.lock().unwrap().gateway_error = status;
    }

    /// Reloads nginx has done (with a data plane each comes [`api::RELOAD_LAG`] after the call
    /// that caused it answered; `calls()` shows it as `(nginx reloaded)`).
    pub fn reloads(&self) -> usize {
        self.inner.db.lock().unwrap().reloads
    }

    /// Successful logins (`POST /api/tokens` that issued a token).
    pub fn logins(&self) -> usize {
        self.inner.db.lock().unwrap().logins
    }

    /// `true`: NPM is unreachable — the listening socket is closed (connection refused) and
    /// open connections are dropped without an answer (in-flight calls may or may not have
    /// changed the database). `false`: listening again on the same port before this returns.
    /// The nginx data plane is not affected.
    pub fn set_down(&self, down: bool) {
        self.server.set_down(down);
    }

    /// The next mutating call that gets as far as the database changes it, then answers 500
    /// `Internal Error` without reloading nginx (not atomic, as NPM when `nginx -t` fails):
    /// POST/PUT/enable leave nginx's files untouched; DELETE/disable have already removed the
    /// host's config file, but nginx keeps serving it until the next successful reload. Calls
    /// rejected before the database (validation, conflict, 404) leave the switch armed.
    pub fn fail_next_write_after_commit(&self) {
        self.inner.db.lock().unwrap().fail_next = true;
    }

    /// Every token issued so far now answers 400 `Token has expired` (401 before v2.13).
    pub fn expire_tokens(&self) {
        let mut db = self.inner.db.lock().unwrap();
        db.valid_from_serial = db.token_serial + 1;
    }

    /// Make logins answer `{"requires_2fa": true, "challenge_token": ..}`.
    pub fn set_requires_2fa(&self, on: bool) {
        self.inner.db.lock().unwrap().requires_2fa = on;
    }

    /// Inserts a host as someone using NPM's UI would have made it (meta without any ownership
    /// tag), configured and routed. Not counted as a write. Panics if a domain is taken.
    pub fn insert_foreign_host(
        &self,
        domains: &[&str],
        forward_host: &str,
        forward_port: u16,
    ) -> i64 {
        self.inner
            .insert_foreign(domains, forward_host, forward_port)
    }

    /// Where nginx currently sends requests for `domain` (`http://127.0.0.1:8080`), from the
    /// double's bookkeeping of the configs it has loaded; None when no loaded config serves it
    /// (NPM's default site answers).
    pub fn route_for(&self, domain: &str) -> Option<String> {
        self.inner.route_for(domain)
    }

    /// The data plane's port. Panics when the double was started without an [`NginxPlane`].
    pub fn http_port(&self) -> u16 {
        self.inner
            .plane
            .as_ref()
            .expect("the NPM double was started without an nginx plane")
            .http_port()
    }

    /// The data plane, if any.
    pub fn nginx(&self) -> Option<&NginxPlane> {
        self.inner.plane.as_ref()
    }

    /// Stops the API server and the data plane (nginx is stopped by its pid).
    pub async fn stop(self) {
        self.server.shutdown();
        if let Some(p) = &self.inner.plane {
            p.stop().await;
        }
    }
}

impl Drop for NpmDouble {
    fn drop(&mut self) {
        self.server.shutdown();
        if let Some(p) = &self.inner.plane {
            p.kill();
        }
    }
}
