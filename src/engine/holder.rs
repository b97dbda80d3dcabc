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
}

/// The holder's route name of a Stage: names go into paths and metric labels, so anything
/// outside `[a-z0-9-]` becomes `-`; the dots separate instance, namespace and Stage.
pub fn route_name(instance: &str, key: &StageKey) -> String {
    format!(
        "{}.{}.{}",
        clean(instance),
        clean(&key.namespace),
        clean(&key.stage)
    )
}

/// The route names of `instance` among `names`.
pub fn of_instance<'a>(instance: &str, names: &'a [String]) -> impl Iterator<Item = &'a String> {
    let prefix = format!("{}.", clean(instance));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_are_safe_for_paths_and_labels_and_tell_stages_apart() {
        let key = |ns: &str, stage: &str| StageKey {
            namespace: ns.into(),
            project: "demo".into(),
            stage: stage.into(),
        };
        assert_eq!(
            route_name("demo", &key("default", "prod")),
            "demo.default.prod"
        );
        assert_eq!(
            route_name("My_Inst", &key("team/a", "Prod")),
            "my-inst.team-a.prod"
        );
        assert_ne!(
            route_name("demo", &key("default", "prod")),
            route_name("demo", &key("default", "staging"))
        );
        let names = vec![
            "demo.default.prod".to_string(),
            "demox.default.prod".to_string(),
        ];
        assert_eq!(of_instance("demo", &names).collect::<Vec<_>>(), [&names[0]]);
    }
}
