//! The data plane: a private instance of Debian's real nginx (`/usr/sbin/nginx`) that serves the
//! proxy hosts the double has configured, the way NPM's openresty does — one server block per
//! host in `conf.d/<id>.conf`, a broken one renamed to `<id>.conf.err`, `nginx -t` before and
//! after writing, `nginx -s reload` (asynchronous: traffic switches when the new workers start).
//!
//! Everything lives in a temporary directory (prefix, config, pid file, logs, temp paths); the
//! master runs in the foreground as our child (`-g 'daemon off;'`) and is stopped by its pid.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::DEFAULT_SITE_BODY;

pub(crate) const NGINX: &str = "/usr/sbin/nginx";

/// A private nginx that routes `Host: <domain>` on `127.0.0.1:<http_port>` to the proxy hosts.
pub struct NginxPlane {
    dir: tempfile::TempDir,
    port: u16,
    child: Mutex<Option<Child>>,
}

impl std::fmt::Debug for NginxPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NginxPlane")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .finish()
    }
}

impl NginxPlane {
    /// Starts nginx with no proxy hosts (only NPM's default site). Errors when nginx is not
    /// installed (CI must install the `nginx` package) or does not come up.
    pub async fn start() -> Result<NginxPlane, String> {
        if !Path::new(NGINX).exists() {
            return Err(format!(
                "{NGINX} is missing: install Debian's nginx package (apt-get install nginx)"
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("npm-double-nginx-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        for sub in [
            "conf.d",
            "logs",
            "tmp/body",
            "tmp/proxy",
            "tmp/fastcgi",
            "tmp/uwsgi",
            "tmp/scgi",
        ] {
            std::fs::create_dir_all(dir.path().join(sub)).map_err(|e| format!("mkdir: {e}"))?;
        }
        let mut plane = NginxPlane {
            dir,
            port: 0,
            child: Mutex::new(None),
        };
        // A free port can be taken between our probe and nginx's bind: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            plane.port = free_port()?;
            std::fs::write(plane.conf(), plane.main_conf()).map_err(|e| e.to_string())?;
            match plane.spawn().await {
                Ok(()) => return Ok(plane),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The port every proxy host listens on (send `Host: <domain>`).
    pub fn http_port(&self) -> u16 {
        self.port
    }

    /// The prefix directory (config, `conf.d/`, `logs/error.log`), for diagnostics.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }

    fn error_log(&self) -> PathBuf {
        self.dir.path().join("logs/error.log")
    }

    pub(crate) fn host_file(&self, id: i64) -> PathBuf {
        self.dir.path().join(format!("conf.d/{id}.conf"))
    }

    fn main_conf(&self) -> String {
        let d = self.dir.path().display();
        let user = if running_as_root() {
            "user root;\n"
        } else {
            ""
        };
        format!(
            "# written by the NPM test double (tests/npm)\n\
             {user}worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {d}/tmp/body;\n\
             \x20   proxy_temp_path {d}/tmp/proxy;\n\
             \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/tmp/uwsgi;\n\
             \x20   scgi_temp_path {d}/tmp/scgi;\n\
             \x20   server_names_hash_bucket_size 128;\n\
             \x20   proxy_connect_timeout 5s;\n\
             \x20   # NPM's default site, for a Host no proxy host serves\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port} default_server;\n\
             \x20       server_name localhost-nginx-proxy-manager;\n\
             \x20       location / {{\n\
             \x20           default_type text/html;\n\
             \x20           return 200 \"{DEFAULT_SITE_BODY}\\n\";\n\
             \x20       }}\n\
             \x20   }}\n\
             \x20   include {d}/conf.d/*.conf;\n\
             }}\n",
            port = self.port
        )
    }

    fn args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            format!("{}/", self.dir.path().display()),
            "-c".into(),
            self.conf().display().to_string(),
            "-e".into(),
            self.error_log().display().to_string(),
        ]
    }

    async fn spawn(&self) -> Result<(), String> {
        let stderr = std::fs::File::create(self.dir.path().join("logs/stderr.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(NGINX)
            .args(self.args())
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn {NGINX}: {e}"))?;
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let exited = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .map(|c| c.try_wait().ok().flatten().is_some())
                .unwrap_or(true);
            if exited {
                self.child.lock().unwrap().take();
                return Err(format!("nginx exited at start: {}", self.logs()));
            }
            let pid_ok = self.dir.path().join("nginx.pid").exists();
            if pid_ok
                && TcpStream::connect_timeout(
                    &([127, 0, 0, 1], self.port).into(),
                    Duration::from_millis(200),
                )
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("nginx did not come up: {}", self.logs()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for f in ["logs/stderr.log", "logs/error.log"] {
            if let Ok(mut file) = std::fs::File::open(self.dir.path().join(f)) {
                let _ = file.read_to_string(&mut s);
            }
        }
        s.trim().to_string()
    }

    /// `nginx -t`: Ok, or nginx's error text.
    pub(crate) async fn test(&self) -> Result<(), String> {
        let out = tokio::process::Command::new(NGINX)
            .args(self.args())
            .args(["-t", "-q"])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("run {NGINX}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim_end().to_string())
        }
    }

    /// `nginx -s reload` (returns once the master has the signal; the switch is asynchronous).
    pub(crate) async fn reload(&self) -> Result<(), String> {
        let out = tokio::process::Command::new(NGINX)
            .args(self.args())
            .args(["-s", "reload"])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("run {NGINX}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim_end().to_string())
        }
    }

    /// Blocking test + reload, for set-up helpers that are not async.
    pub(crate) fn test_and_reload_blocking(&self) -> Result<(), String> {
        for extra in [&["-t", "-q"][..], &["-s", "reload"][..]] {
            let out = Command::new(NGINX)
                .args(self.args())
                .args(extra)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("run {NGINX}: {e}"))?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).trim_end().to_string());
            }
        }
        Ok(())
    }

    /// Stops nginx: SIGTERM to the master (by pid), then SIGKILL if it lingers.
    pub async fn stop(&self) {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        signal(child.id(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Synchronous stop, for Drop.
    pub(crate) fn kill(&self) {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        signal(child.id(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NginxPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Config rendering, after NPM's templates (proxy_host.conf, _location.conf, proxy.conf), minus
// what needs files the double does not have (certificates, access lists, exploit/asset includes).

fn s<'a>(h: &'a Map<String, Value>, k: &str) -> &'a str {
    h.get(k).and_then(Value::as_str).unwrap_or("")
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Null) | None => false,
        Some(_) => true,
    }
}

const PROXY_HEADERS: &str = "    add_header       X-Served-By $host;\n\
    proxy_set_header Host $host;\n\
    proxy_set_header X-Forwarded-Scheme $scheme;\n\
    proxy_set_header X-Forwarded-Proto  $scheme;\n\
    proxy_set_header X-Forwarded-For    $proxy_add_x_forwarded_for;\n\
    proxy_set_header X-Real-IP          $remote_addr;\n";

/// The server block for one host; empty for a disabled host (NPM's template starts with
/// `{% if enabled %}`).
pub(crate) fn render(h: &Map<String, Value>, listen: &str) -> String {
    if !truthy(h.get("enabled")) {
        return String::new();
    }
    let domains: Vec<&str> = h
        .get("domain_names")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // NPM: "host/path" in forward_host means forward to host, path.
    let forward_host = s(h, "forward_host").split('/').next().unwrap_or("");
    let websocket = truthy(h.get("allow_websocket_upgrade"));
    let advanced = s(h, "advanced_config");
    let locations: Vec<&Map<String, Value>> = h
        .get("locations")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default();
    let default_location_in_advanced = regex::Regex::new(r"(?im)^(?:.*;)?\s*?location\s*?/\s*?\{")
        .expect("regex")
        .is_match(advanced);
    let use_default_location =
        !default_location_in_advanced && !locations.iter().any(|l| s(l, "path") == "/");

    let mut out = String::new();
    out.push_str("# ------------------------------------------------------------\n");
    out.push_str(&format!("# {}\n", domains.join(", ")));
    out.push_str("# ------------------------------------------------------------\n\n");
    out.push_str("server {\n");
    out.push_str(&format!(
        "  set $forward_scheme {};\n",
        s(h, "forward_scheme")
    ));
    out.push_str(&format!("  set $server         \"{forward_host}\";\n"));
    out.push_str(&format!(
        "  set $port           {};\n\n",
        h.get("forward_port")
            .map(|v| v.to_string())
            .unwrap_or_default()
    ));
    out.push_str(&format!("  listen {listen};\n"));
    out.push_str(&format!("  server_name {};\n\n", domains.join(" ")));
    if websocket {
        out.push_str("  proxy_set_header Upgrade $http_upgrade;\n");
        out.push_str("  proxy_set_header Connection $http_connection;\n");
        out.push_str("  proxy_http_version 1.1;\n\n");
    }
    out.push_str("  access_log off;\n\n");
    if !advanced.is_empty() {
        out.push_str(advanced);
        out.push_str("\n\n");
    }
    for l in &locations {
        let lhost = s(l, "forward_host");
        let (lhost, lpath) = match lhost.split_once('/') {
            Some((host, rest)) => (host.to_string(), format!("/{rest}")),
            None => (lhost.to_string(), s(l, "forward_path").to_string()),
        };
        out.push_str(&format!("  location {} {{\n", s(l, "path")));
        let ladv = s(l, "advanced_config");
        if !ladv.is_empty() {
            out.push_str(ladv);
            out.push('\n');
        }
        out.push_str(PROXY_HEADERS);
        out.push_str(&format!(
            "    proxy_pass       {}://{}:{}{};\n",
            s(l, "forward_scheme"),
            lhost,
            l.get("forward_port")
                .map(|v| v.to_string())
                .unwrap_or_default(),
            lpath
        ));
        out.push_str("  }\n\n");
    }
    if use_default_location {
        out.push_str("  location / {\n");
        if websocket {
            out.push_str("    proxy_set_header Upgrade $http_upgrade;\n");
            out.push_str("    proxy_set_header Connection $http_connection;\n");
            out.push_str("    proxy_http_version 1.1;\n");
        }
        out.push_str(PROXY_HEADERS);
        out.push_str("    proxy_pass       $forward_scheme://$server:$port$request_uri;\n");
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

/// Without a data plane, the double stands in for `nginx -t` on one host's config: the text
/// `invalid_directive` anywhere in it fails, with nginx's own wording and NPM's file name.
pub(crate) fn simulated_test(id: i64, h: &Map<String, Value>) -> Result<(), String> {
    let text = render(h, "80");
    match text.lines().position(|l| l.contains("invalid_directive")) {
        None => Ok(()),
        Some(i) => Err(format!(
            "nginx: [emerg] unknown directive \"invalid_directive\" in /data/nginx/proxy_host/{id}.conf:{}\n\
             nginx: configuration file /etc/nginx/nginx.conf test failed",
            i + 1
        )),
    }
}
