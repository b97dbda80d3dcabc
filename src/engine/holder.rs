//! The port holder as the engine sees it: one route per held Stage, from the Stage's host
//! address to its serving container's own address. The holder is a process of its own (it
//! outlives the controller); the engine only asks it to switch, and waits for the drain.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use crate::api::HolderMode;

use super::reasons::Reason;
use super::spec::StageKey;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the engine asks of the holder for one Stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRequest {
    pub name: String,
    pub listen: SocketAddr,
    pub mode: HolderMode,
    pub target: SocketAddr,
    pub drain: Duration,
    /// For people reading the holder's routes: the tag and the container.
    pub label: String,
}

/// A route as the holder has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldRoute {
    pub listen: SocketAddr,
    pub target: SocketAddr,
    /// Since when `target` is behind the port (ms since the epoch).
    pub since_ms: u64,
    pub mode: HolderMode,
    pub drain: Duration,
    /// Whether the holder has bound the port.
    pub listening: bool,
    /// Previous targets with requests or connections still in flight.
    pub draining: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HolderError {
    /// Not running, not reachable, or its image is missing: no verdict on the container.
    #[error("the port holder is unavailable: {0}")]
    Unavailable(String),
    /// The address is bound by another process (say a container publishing it directly).
    #[error("the port holder cannot listen on {0}: {1}")]
    PortTaken(SocketAddr, String),
    #[error("the port holder refused the route: {0}")]
    Rejected(String),
}

impl HolderError {
    pub fn reason(&self) -> Reason {
        match self {
            HolderError::Unavailable(_) | HolderError::Rejected(_) => Reason::PortHolderUnavailable,
            HolderError::PortTaken(..) => Reason::PortTaken,
        }
    }
}

/// The verbs the engine needs; each is safe to repeat. Boxed futures: the reconciler holds the
/// holder as an optional trait object, so no mode has to name its type.
pub trait PortHolder: Send + Sync {
    fn route<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<HeldRoute>, HolderError>>;
    /// Creates the route or switches it to `req.target`; returns once new connections go there
    /// and the switch is on the holder's disk.
    fn switch<'a>(&'a self, req: &'a HoldRequest) -> BoxFuture<'a, Result<HeldRoute, HolderError>>;
    /// Removes the route (the port is released); none is fine. Returns whether there was one.
    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, HolderError>>;
    /// Names of the routes this controller instance created, for garbage collection.
    fn owned<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<String>, HolderError>>;
    /// Why no holder can run at all (say its image is not on the host), if so: Stages then
    /// publish their ports directly, with the old gap on a roll, rather than not at all. A
    /// holder that is merely restarting is not this: it comes back.
    fn unusable(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async { None })
    }
}

/// The holder's route name of a Stage: `<instance>.<namespace>.<stage>.<hash>`. Names go into
/// paths and metric labels, so the readable part keeps `[a-z0-9-]` only (anything else becomes
/// `-`) and is cut short; that alone would let `a_b` and `a.b` (or `A` and `a`) share a route
/// and steal each other's port, so the name ends in a hash of the exact instance, namespace
/// and Stage, which tells them apart.
pub fn route_name(instance: &str, key: &StageKey) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [instance, &key.namespace, &key.stage] {
        // Length-prefixed: no choice of parts can make two triples hash the same bytes.
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let hash: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}.{}.{}.{hash}",
        readable(instance),
        readable(&key.namespace),
        readable(&key.stage)
    )
}

/// The name routes had before [`route_name`] ended in a hash. A holder that runs on may still
/// have a route by this name: the engine moves it to the new name the first time it syncs the
/// Stage (the new route binds beside it, then the old one goes, so the port stays served), and
/// removes it whenever it removes the Stage's route.
pub fn legacy_route_name(instance: &str, key: &StageKey) -> String {
    format!(
        "{}.{}.{}",
        clean(instance),
        clean(&key.namespace),
        clean(&key.stage)
    )
}

/// The route names of `instance` among `names`: those the readable prefix matches. An instance
/// whose name differs only in characters `[a-z0-9-]` cannot show (`a_b`, `a.b`) shares the
/// prefix, so this is a filter for listing, not for deleting.
pub fn of_instance<'a>(instance: &str, names: &'a [String]) -> impl Iterator<Item = &'a String> {
    let prefix = format!("{}.", readable(instance));
    names.iter().filter(move |n| n.starts_with(&prefix))
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect()
}

/// At most 50 characters: three of them, the dots and the hash stay within the holder's 200.
fn readable(s: &str) -> String {
    clean(s).chars().take(50).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, stage: &str) -> StageKey {
        StageKey {
            namespace: ns.into(),
            project: "demo".into(),
            stage: stage.into(),
        }
    }

    fn safe(name: &str) -> bool {
        (1..=200).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    }

    #[test]
    fn route_names_are_readable_pinned_and_safe_for_paths_and_labels() {
        // Pinned: a running holder knows routes by these names; changing the encoding strands
        // them (see legacy_route_name for the one migration there is).
        assert_eq!(
            route_name("demo", &key("default", "prod")),
            "demo.default.prod.2f82344720f8e28a"
        );
        let long = "x".repeat(300);
        for name in [
            route_name("My_Inst", &key("team/a", "Prod")),
            route_name(&long, &key(&long, &long)),
            route_name("", &key("", "")),
        ] {
            assert!(safe(&name), "{name}");
        }
        assert!(route_name("My_Inst", &key("team/a", "Prod")).starts_with("my-inst.team-a.prod."));
    }

    #[test]
    fn route_names_of_different_stages_never_collide() {
        let names = [
            route_name("demo", &key("default", "prod")),
            route_name("demo", &key("default", "staging")),
            // Each of these pairs cleaned to the same name before the hash.
            route_name("demo", &key("team.a", "prod")),
            route_name("demo", &key("team_a", "prod")),
            route_name("demo", &key("team-a", "prod")),
            route_name("demo", &key("default", "Prod")),
            route_name("a_b", &key("default", "prod")),
            route_name("a.b", &key("default", "prod")),
            // Where the dots fall.
            route_name("demo", &key("a.b", "c")),
            route_name("demo", &key("a", "b.c")),
            // Past the readable part's length.
            route_name("demo", &key("default", &format!("{}1", "x".repeat(60)))),
            route_name("demo", &key("default", &format!("{}2", "x".repeat(60)))),
        ];
        let distinct: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:#?}");
    }

    #[test]
    fn the_legacy_name_is_the_readable_part_without_the_hash() {
        assert_eq!(
            legacy_route_name("My_Inst", &key("team/a", "Prod")),
            "my-inst.team-a.prod"
        );
        let names = vec![
            route_name("demo", &key("default", "prod")),
            route_name("demox", &key("default", "prod")),
        ];
        assert_eq!(of_instance("demo", &names).collect::<Vec<_>>(), [&names[0]]);
    }
}
