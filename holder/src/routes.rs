//! The holder's routes: what each held port forwards to, and the file that keeps them across
//! restarts of the holder (written whole and renamed, so a crash leaves the old file or the new
//! one, never half of either).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a route understands of its traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// HTTP/1.1 (keep-alive, upgrades): draining is per request, `X-Forwarded-*` are added.
    #[default]
    Http,
    /// Bytes both ways: draining is per connection.
    Tcp,
}

/// The default time an old target keeps its in-flight requests and open tunnels after a switch.
pub const DEFAULT_DRAIN_MS: u64 = 5_000;

fn default_drain_ms() -> u64 {
    DEFAULT_DRAIN_MS
}

/// One held port, as the controller asks for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// The address the holder binds (the Stage's host IP and port).
    pub listen: SocketAddr,
    #[serde(default)]
    pub mode: Mode,
    /// The container's own address.
    pub upstream: SocketAddr,
    /// How long the previous target may finish what it has after a switch.
    #[serde(default = "default_drain_ms")]
    pub drain_ms: u64,
    /// Who is behind the port, for people (the controller writes the tag and container name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
}

/// A route as stored: its spec and since when its upstream is what it is (ms since the epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stored {
    pub spec: RouteSpec,
    pub since_ms: u64,
}

/// The route file: `routes.json` in the state directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteFile {
    pub version: u32,
    pub routes: BTreeMap<String, Stored>,
}

pub const FILE_VERSION: u32 = 1;

/// Route names go into paths and metric labels: short, lowercase, no quoting needed.
pub fn valid_name(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Reads the route file; a missing file is no routes. A file this holder cannot use (not
/// JSON, not this shape, or another `version`, say one a newer holder wrote before a
/// downgrade) is an error of kind `InvalidData`.
pub fn load(path: &Path) -> io::Result<RouteFile> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(RouteFile {
                version: FILE_VERSION,
                ..Default::default()
            });
        }
        Err(e) => return Err(e),
    };
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    // The version first: a newer holder's file may not parse as this one's at all, and saying
    // "version 2" is more use than a field name serde does not know.
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let versioned: Versioned =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("{path:?}: {e}")))?;
    if versioned.version != FILE_VERSION {
        return Err(invalid(format!(
            "{path:?} is version {}; this holder reads version {FILE_VERSION}",
            versioned.version
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| invalid(format!("{path:?}: {e}")))
}

/// The route file at start-up. One the holder cannot use must not keep it from starting (a
/// holder that exits at once is restarted by Docker, exits again, and no port is served):
/// it is renamed to `routes.json.bad-<ms since the epoch>` for a person to look at, and the
/// holder starts with no routes; the controller puts every route back on its next reconcile.
/// Returns the routes and, when the file was set aside, why.
pub fn load_or_set_aside(path: &Path, now_ms: u64) -> (RouteFile, Option<String>) {
    match load(path) {
        Ok(file) => (file, None),
        Err(e) => {
            let aside = path.with_extension(format!("json.bad-{now_ms}"));
            let why = match std::fs::rename(path, &aside) {
                Ok(()) => format!("{e}; moved to {aside:?}, starting with no routes"),
                Err(r) => format!(
                    "{e}; cannot move it to {aside:?} ({r}), starting with no routes \
                     (the next route written replaces it)"
                ),
            };
            let empty = RouteFile {
                version: FILE_VERSION,
                ..Default::default()
            };
            (empty, Some(why))
        }
    }
}

/// Writes the route file durably: a temporary file, synced, renamed over the old one, and the
/// directory synced so the rename itself survives a power cut.
pub fn save(path: &Path, file: &RouteFile) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(file).map_err(io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_break_paths_or_labels_are_refused() {
        assert!(valid_name("demo.default.prod"));
        assert!(valid_name("a-b_c.1"));
        for bad in ["", "A", "a/b", "a b", "a\"b", "é", &"x".repeat(201)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_file_round_trips_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.json");
        assert!(load(&path).unwrap().routes.is_empty());
        let mut file = RouteFile {
            version: FILE_VERSION,
            ..Default::default()
        };
        let spec: RouteSpec =
            serde_json::from_str(r#"{"listen":"127.0.0.1:8081","upstream":"172.17.0.2:8080"}"#)
                .unwrap();
        assert_eq!((spec.mode, spec.drain_ms), (Mode::Http, DEFAULT_DRAIN_MS));
        file.routes.insert("r".into(), Stored { spec, since_ms: 7 });
        save(&path, &file).unwrap();
        assert_eq!(load(&path).unwrap(), file);
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_file_of_another_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.json");
        std::fs::write(&path, r#"{"version":2,"routes":{}}"#).unwrap();
        let e = load(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("version 2"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused_rather_than_dropped() {
        let e = serde_json::from_str::<RouteSpec>(
            r#"{"listen":"127.0.0.1:1","upstream":"127.0.0.1:2","drain":5}"#,
        );
        assert!(e.is_err());
    }
}
