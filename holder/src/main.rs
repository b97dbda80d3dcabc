//! `tiny-forge-holder [--state-dir DIR] [--control ADDR] [--token-file FILE]`
//!
//! Defaults suit its container: state in `/state`, control on 127.0.0.1:7480 (the container
//! shares the host's network, so that is the host's loopback), the control token from
//! `TINY_FORGE_HOLDER_TOKEN`, else from `<state>/token`; `TINY_FORGE_HOLDER_NAME` names it on
//! `/healthz`.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: tiny-forge-holder [--state-dir DIR] [--control ADDR] [--token-file FILE]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut state_dir = PathBuf::from("/state");
    let mut control = "127.0.0.1:7480".to_string();
    let mut token_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let Some(value) = args.next() else {
            return usage();
        };
        match arg.as_str() {
            "--state-dir" => state_dir = value.into(),
            "--control" => control = value,
            "--token-file" => token_file = Some(PathBuf::from(value)),
            _ => return usage(),
        }
    }
    let Ok(control) = control.parse() else {
        eprintln!("holder: --control must be an IP address and port");
        return usage();
    };
    let token_file = token_file.unwrap_or_else(|| state_dir.join("token"));
    // From the environment (the controller's way: it reads the token back from the container),
    // else from the file.
    let from_env = std::env::var("TINY_FORGE_HOLDER_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty());
    let token = match from_env
        .map(Ok)
        .unwrap_or_else(|| std::fs::read_to_string(&token_file))
    {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        Ok(_) => {
            eprintln!("holder: {token_file:?} is empty");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("holder: cannot read the token file {token_file:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // TINY_FORGE_HOLDER_WORKERS: runtime threads (default: one per CPU).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("TINY_FORGE_HOLDER_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("holder: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let config = tiny_forge_holder::Config {
            state_dir,
            control,
            token,
            name: std::env::var("TINY_FORGE_HOLDER_NAME").unwrap_or_else(|_| "holder".into()),
            limits: tiny_forge_holder::Limits::default(),
        };
        let running = match tiny_forge_holder::start(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("holder: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!(
            "holder: control on {}, {} route(s)",
            running.control,
            running.holder().list().len()
        );
        // PID 1 in a FROM scratch image ignores SIGTERM unless it is handled.
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("holder: {e}");
                    return ExitCode::FAILURE;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("holder: stopping");
        running.stop();
        // Connections linger, then in-flight requests finish; Docker's stop timeout bounds it.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        tokio::time::sleep(tiny_forge_holder::http::STOP_LINGER * 2).await;
        while running.holder().in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        ExitCode::SUCCESS
    })
}
