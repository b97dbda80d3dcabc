//! The command line as a newcomer uses it: the commands started in one directory share one
//! store without flags, and clear errors. No Docker needed.

use std::path::Path;
use std::process::{Command, Output};

fn tiny_forge(cwd: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiny-forge"))
        .args(args)
        .current_dir(cwd)
        .env("HOME", home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("TINY_FORGE_STATE_DIR")
        .env_remove("TINY_FORGE_PUBLIC_URL")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_string()
}

/// `make run` keeps its state in `./.tiny-forge/state`; `get`, `webhook url` and the others
/// started in the same directory find it without `--state-dir`.
#[test]
fn commands_in_a_checkout_find_its_local_state_without_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (checkout, home) = (dir.path().join("checkout"), dir.path().join("home"));
    let local = checkout.join(".tiny-forge/state");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::create_dir_all(&home).unwrap();

    let url = stdout(&tiny_forge(&checkout, &home, &["webhook", "url"]));
    assert!(
        local.join("secret.key").exists(),
        "the local store was used"
    );
    assert!(
        !home.join(".local/share/tiny-forge").exists(),
        "the per-user store was not touched"
    );
    let explicit = stdout(&tiny_forge(
        &home,
        &home,
        &["webhook", "url", "--state-dir", local.to_str().unwrap()],
    ));
    assert_eq!(url, explicit, "the same store, the same URL");
    // No controller has run on it: the default listener, and a note saying so.
    assert!(
        url.starts_with("http://127.0.0.1:8080/api/webhook/"),
        "{url}"
    );

    let get = tiny_forge(&checkout, &home, &["get", "stages"]);
    assert!(get.status.success(), "{get:?}");

    // Elsewhere, with no local state, the per-user directory is the default.
    let elsewhere = stdout(&tiny_forge(&home, &home, &["webhook", "url"]));
    assert_ne!(elsewhere, url);
    assert!(home.join(".local/share/tiny-forge/secret.key").exists());
}

#[test]
fn an_explicit_public_url_wins() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let url = stdout(&tiny_forge(
        dir.path(),
        dir.path(),
        &[
            "webhook",
            "url",
            "--state-dir",
            state.to_str().unwrap(),
            "--public-url",
            "https://forge.example.com/",
        ],
    ));
    assert!(
        url.starts_with("https://forge.example.com/api/webhook/"),
        "{url}"
    );
}
