//! tiny-forge-demo: a tiny HTTP/1.1 app that tiny-forge deploys in demos and tests.
//!
//! * `GET /`        → 200 `tiny-forge-demo <DEMO_VERSION>\n`
//! * `GET /healthz` → 200 `ok`, or 500 `broken` when `DEMO_BROKEN=1`
//! * anything else  → 404
//!
//! `tiny-forge-demo check [URL]` GETs `http://127.0.0.1:$PORT/healthz` (or URL) and exits 0 on a
//! 200, else 1: the image's Docker HEALTHCHECK. The server runs as PID 1 in a `FROM scratch`
//! image, where SIGTERM is ignored unless handled, so SIGTERM/SIGINT are handled explicitly.

use std::env;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Upper bound for a request line plus headers.
const MAX_HEAD_BYTES: u64 = 16 * 1024;
/// Largest request body we read and discard while keeping the connection alive.
const MAX_DRAIN_BYTES: usize = 1024 * 1024;
/// How long an idle keep-alive connection is kept open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_PORT: u16 = 8080;

/// What the app serves, read once from the environment.
#[derive(Debug, Clone)]
struct Config {
    version: String,
    broken: bool,
}

impl Config {
    fn from_env() -> Self {
        Config {
            version: env::var("DEMO_VERSION").unwrap_or_else(|_| "dev".to_string()),
            broken: env::var("DEMO_BROKEN").is_ok_and(|v| v == "1"),
        }
    }
}

/// The parts of a request head this app cares about.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    target: String,
    version: String,
    keep_alive: bool,
    content_length: usize,
    chunked: bool,
}

#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    body: String,
}

/// Parses a request head (request line plus header lines, without the blank line).
fn parse_head(head: &str) -> Result<Request, &'static str> {
    let mut lines = head.lines();
    let request_line = lines.next().ok_or("empty request")?;
    let mut parts = request_line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err("unsupported HTTP version"),
    };
    let mut request = Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        keep_alive: http11,
        content_length: 0,
        chunked: false,
    };
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("malformed header")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    request.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && !http11 {
                    request.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            request.content_length = value.parse().map_err(|_| "bad content-length")?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            request.chunked = true;
        }
    }
    Ok(request)
}

/// Maps a request to a response body and status.
fn route(config: &Config, method: &str, target: &str) -> Response {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let ok = |body: String| Response { status: 200, body };
    match (method, path) {
        ("GET" | "HEAD", "/") => ok(format!("tiny-forge-demo {}\n", config.version)),
        ("GET" | "HEAD", "/healthz") if config.broken => Response {
            status: 500,
            body: "broken".to_string(),
        },
        ("GET" | "HEAD", "/healthz") => ok("ok".to_string()),
        _ => Response {
            status: 404,
            body: "not found\n".to_string(),
        },
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

fn write_response(
    out: &mut impl Write,
    response: &Response,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        response.status,
        reason(response.status),
        response.body.len(),
        connection
    )?;
    if !head_only {
        out.write_all(response.body.as_bytes())?;
    }
    out.flush()
}

/// Reads one request head; `Ok(None)` when the client closed the connection between requests.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut head = String::new();
    let mut limited = reader.take(MAX_HEAD_BYTES);
    loop {
        let mut line = String::new();
        if limited.read_line(&mut line)? == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head truncated or too large",
            ));
        }
        if line == "\r\n" || line == "\n" {
            if head.is_empty() {
                continue; // tolerate stray CRLF between requests (RFC 9112 §2.2)
            }
            return Ok(Some(head));
        }
        head.push_str(&line);
    }
}

fn log_line(line: &str) {
    if cfg!(test) {
        println!("{line}"); // captured by the test harness
    } else {
        // One line per request; a closed stdout must not take the server down.
        let _ = writeln!(io::stdout().lock(), "{line}");
    }
}

fn handle_connection(stream: TcpStream, config: &Config) -> io::Result<()> {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "-".to_string(), |a| a.to_string());
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(IDLE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_head(&mut reader)? {
        let mut request = match parse_head(&head) {
            Ok(request) => request,
            Err(why) => {
                let response = Response {
                    status: 400,
                    body: format!("{why}\n"),
                };
                log_line(&format!("{peer} (bad request: {why}) 400"));
                return write_response(&mut writer, &response, false, false);
            }
        };
        if request.chunked || request.content_length > MAX_DRAIN_BYTES {
            // We do not read such bodies: answer, then close.
            request.keep_alive = false;
        } else if request.content_length > 0 {
            let drained = io::copy(
                &mut (&mut reader).take(request.content_length as u64),
                &mut io::sink(),
            )?;
            if drained < request.content_length as u64 {
                return Ok(());
            }
        }
        let response = route(config, &request.method, &request.target);
        log_line(&format!(
            "{peer} \"{} {} {}\" {} {}",
            request.method,
            request.target,
            request.version,
            response.status,
            response.body.len()
        ));
        write_response(
            &mut writer,
            &response,
            request.keep_alive,
            request.method == "HEAD",
        )?;
        if !request.keep_alive {
            break;
        }
    }
    Ok(())
}

fn serve(listener: TcpListener, config: Config) {
    let config = Arc::new(config);
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let config = Arc::clone(&config);
                thread::spawn(move || {
                    if let Err(e) = handle_connection(stream, &config)
                        && !matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::ConnectionReset
                                | io::ErrorKind::BrokenPipe
                        )
                    {
                        eprintln!("connection error: {e}");
                    }
                });
            }
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
}

fn port_from_env() -> Result<u16, String> {
    match env::var("PORT") {
        Ok(p) => p.parse().map_err(|_| format!("invalid PORT {p:?}")),
        Err(_) => Ok(DEFAULT_PORT),
    }
}

/// Splits `http://host[:port][/path]` into (`host:port` to connect to, Host header, path).
fn parse_http_url(url: &str) -> Option<(String, String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'), // [::1]:8080
        None => authority.contains(':'),
    };
    let connect = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Some((connect, authority.to_string(), path.to_string()))
}

/// GETs `url` and returns the response status code.
fn http_get_status(url: &str) -> Result<u16, String> {
    let (connect, host, path) =
        parse_http_url(url).ok_or_else(|| format!("unsupported URL {url:?}"))?;
    let addr: SocketAddr = connect
        .to_socket_addrs()
        .map_err(|e| format!("{connect}: {e}"))?
        .next()
        .ok_or_else(|| format!("{connect}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, CHECK_TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    stream.set_read_timeout(Some(CHECK_TIMEOUT)).ok();
    stream.set_write_timeout(Some(CHECK_TIMEOUT)).ok();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tiny-forge-demo-check\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut status_line = String::new();
    BufReader::new(stream)
        .read_line(&mut status_line)
        .map_err(|e| format!("receive: {e}"))?;
    status_line
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {:?}", status_line.trim_end()))
}

fn check(url: Option<String>) -> ExitCode {
    let url = match url {
        Some(url) => url,
        None => match port_from_env() {
            Ok(port) => format!("http://127.0.0.1:{port}/healthz"),
            Err(e) => {
                eprintln!("check: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match http_get_status(&url) {
        Ok(200) => {
            println!("check: {url} -> 200");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("check: {url} -> {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("check: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_server() -> ExitCode {
    let config = Config::from_env();
    let port = match port_from_env() {
        Ok(port) => port,
        Err(e) => {
            eprintln!("tiny-forge-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("tiny-forge-demo: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            log_line(&format!("tiny-forge-demo: signal {signal}, exiting"));
            std::process::exit(0);
        }
    });
    // DEMO_START_DELAY_MS makes the app slow to come up, as real apps are (tests use it to
    // interrupt a deploy while it waits for health).
    if let Some(ms) = env::var("DEMO_START_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        thread::sleep(std::time::Duration::from_millis(ms));
    }
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("tiny-forge-demo: cannot listen on 0.0.0.0:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    log_line(&format!(
        "tiny-forge-demo {} listening on 0.0.0.0:{port}{}",
        config.version,
        if config.broken {
            " (DEMO_BROKEN=1)"
        } else {
            ""
        }
    ));
    serve(listener, config);
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let mut args = env::args().skip(1);
    match args.next().as_deref() {
        None => run_server(),
        Some("check") => check(args.next()),
        Some(other) => {
            eprintln!("usage: tiny-forge-demo [check [URL]]  (unknown argument {other:?})");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(broken: bool) -> Config {
        Config {
            version: "1.2.3".to_string(),
            broken,
        }
    }

    #[test]
    fn parses_request_head_and_keep_alive_rules() {
        let r =
            parse_head("GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/healthz?x=1");
        assert!(r.keep_alive);
        assert_eq!(r.content_length, 3);

        let r = parse_head("GET / HTTP/1.1\r\nConnection: Close\r\n").unwrap();
        assert!(!r.keep_alive);
        let r = parse_head("GET / HTTP/1.0\r\n").unwrap();
        assert!(!r.keep_alive);
        let r = parse_head("GET / HTTP/1.0\r\nconnection: keep-alive\r\n").unwrap();
        assert!(r.keep_alive);

        assert!(parse_head("GET /\r\n").is_err());
        assert!(parse_head("GET / HTTP/2.0\r\n").is_err());
        assert!(parse_head("GET / HTTP/1.1\r\nno-colon\r\n").is_err());
        assert!(parse_head("GET / HTTP/1.1\r\nContent-Length: x\r\n").is_err());
    }

    #[test]
    fn routes() {
        let ok = config(false);
        assert_eq!(
            route(&ok, "GET", "/"),
            Response {
                status: 200,
                body: "tiny-forge-demo 1.2.3\n".to_string()
            }
        );
        assert_eq!(route(&ok, "GET", "/healthz?probe=1").status, 200);
        assert_eq!(route(&ok, "GET", "/healthz").body, "ok");
        assert_eq!(route(&ok, "HEAD", "/").status, 200);
        assert_eq!(route(&ok, "GET", "/nope").status, 404);
        assert_eq!(route(&ok, "POST", "/").status, 404);
        let broken = config(true);
        assert_eq!(route(&broken, "GET", "/healthz").status, 500);
        assert_eq!(route(&broken, "GET", "/healthz").body, "broken");
        assert_eq!(route(&broken, "GET", "/").status, 200);
    }

    #[test]
    fn parses_check_urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/healthz"),
            Some((
                "127.0.0.1:8080".into(),
                "127.0.0.1:8080".into(),
                "/healthz".into()
            ))
        );
        assert_eq!(
            parse_http_url("http://localhost"),
            Some(("localhost:80".into(), "localhost".into(), "/".into()))
        );
        assert_eq!(
            parse_http_url("http://[::1]/x").map(|u| u.0),
            Some("[::1]:80".to_string())
        );
        assert_eq!(parse_http_url("https://x/"), None);
        assert_eq!(parse_http_url("http:///x"), None);
    }

    #[test]
    fn serves_keep_alive_and_check_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || serve(listener, config(true)));

        // Two requests on one connection; the second asks to close.
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
        let mut all = String::new();
        stream.read_to_string(&mut all).unwrap();
        assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
        assert!(all.contains(
            "Content-Length: 22\r\nConnection: keep-alive\r\n\r\ntiny-forge-demo 1.2.3\n"
        ));
        assert!(all.contains("HTTP/1.1 404 Not Found\r\n"));
        assert!(
            all.ends_with("Connection: close\r\n\r\nnot found\n"),
            "{all}"
        );

        assert_eq!(http_get_status(&format!("http://{addr}/healthz")), Ok(500));
        assert_eq!(http_get_status(&format!("http://{addr}/")), Ok(200));
    }
}
