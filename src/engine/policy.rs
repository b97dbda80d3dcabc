//! When to look again and when to clean up: the scheduling rules both modes follow. Pure: plain
//! `Duration`s and instants handed in by the caller, no clock read, no I/O.
//!
//! - [`Backoff`]: how long a Stage waits after a reconcile, by its outcome — the resync period
//!   when converged, a doubling wait on transient trouble, nothing until a change when the spec
//!   cannot work.
//! - [`orphan_grace`] and [`Orphans`]: how long what a removed Stage left behind (containers, a
//!   proxy host) is kept before it is collected, and the clock that counts it.
//!
//! Standalone mode and Kubernetes mode schedule differently (a pass over all Stages vs
//! kube-runtime's per-object queue) but take these numbers from here only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use super::{ContainerInfo, Requeue};
use crate::api::labels;

/// The wait after the first transient failure; each further one doubles it.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between retries of transient trouble (Docker, the proxy or the API server
/// away): 1 s, 2 s, 4 s … 32 s, 60 s, 60 s …
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// The wait after a reconcile that panicked, whatever came before: a bug is likely to recur, so
/// it is not retried at once, yet the Stage is not given up either.
pub const AFTER_PANIC: Duration = Duration::from_secs(30);
/// The shortest orphan grace, whatever the resync period.
pub const ORPHAN_GRACE_MIN: Duration = Duration::from_secs(5);

/// The retry schedule of one object: consecutive transient failures double the wait, up to
/// [`BACKOFF_CAP`]; any outcome that is not transient trouble ends the streak.
///
/// Both modes used to count differently: standalone capped a failed container listing at 30 s
/// and kept a streak across a `WaitForChange`; Kubernetes mode forgot the streak after every
/// reconcile that returned (so an engine retry came back after 1 s, always). The one rule is the
/// one both documented: 1 s doubling to 60 s for every kind of transient trouble, and a verdict
/// (converged, or waiting for an edit) starts the next streak from 1 s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    /// The last wait given; zero when no streak runs.
    delay: Duration,
}

impl Backoff {
    /// One more transient failure: the wait before the next try.
    pub fn failed(&mut self) -> Duration {
        self.delay = (self.delay * 2).clamp(BACKOFF_FIRST, BACKOFF_CAP);
        self.delay
    }

    /// The reconcile panicked: the wait before the next try ([`AFTER_PANIC`]).
    pub fn panicked(&mut self) -> Duration {
        self.delay = AFTER_PANIC;
        self.delay
    }

    /// The streak is over (converged, waiting for a change, or the object is gone).
    pub fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// Whether no streak runs: a map of these can drop the entry.
    pub fn is_idle(&self) -> bool {
        self.delay.is_zero()
    }

    /// After a reconcile: how long until the next one; None when only a change of the Stage's
    /// inputs should trigger it.
    pub fn after(&mut self, requeue: Requeue, resync: Duration) -> Option<Duration> {
        match requeue {
            Requeue::Resync => {
                self.reset();
                Some(resync)
            }
            Requeue::Retry => Some(self.failed()),
            Requeue::WaitForChange => {
                self.reset();
                None
            }
        }
    }
}

/// How long a Stage must have been gone before what it left behind is removed: the longer of
/// one resync period and [`ORPHAN_GRACE_MIN`].
///
/// The grace is there for a Stage that disappears and comes back: a checkout or an editor
/// removing a file and writing it back, a watch that missed the event. Removing a serving
/// container is not undoable, so the Stage must have had the chance to be seen again first. In
/// both modes its source is read again at least once per resync (standalone re-reads the
/// manifest directory; Kubernetes mode watches, and its orphan collector looks once per resync
/// and confirms with the API server before it removes anything), so one resync period covers it,
/// and 5 s covers a tool that removes and rewrites when the resync is short. Kubernetes mode used
/// to wait two resync periods (at least 10 s): the second period bought nothing the API server's
/// confirmation does not, and one rule for both modes is easier to reason about.
pub fn orphan_grace(resync: Duration) -> Duration {
    resync.max(ORPHAN_GRACE_MIN)
}

/// Containers by the Stage their labels name, (namespace, Stage): how both modes find what a
/// Stage runs and what a gone Stage left behind.
pub type ByStage = BTreeMap<(String, String), Vec<ContainerInfo>>;

/// Groups containers by the (namespace, Stage) of their ownership labels.
pub fn group_by_stage(containers: Vec<ContainerInfo>) -> ByStage {
    let mut by_stage = ByStage::new();
    for c in containers {
        let namespace = c.label(labels::NAMESPACE).unwrap_or_default().to_string();
        let stage = c.label(labels::STAGE).unwrap_or_default().to_string();
        by_stage.entry((namespace, stage)).or_default().push(c);
    }
    by_stage
}

/// The clock of removed Stages: since when each has been gone (counted from the look that first
/// found it gone, whatever cleanup ran before), and whose proxy route was removed when — their
/// containers go once the route's drain is over, so clients never reach a dead upstream.
#[derive(Debug)]
pub struct Orphans<K> {
    grace: Duration,
    drain: Duration,
    /// The Stages that existed at the last look.
    known: BTreeSet<K>,
    since: HashMap<K, Instant>,
    unrouted: HashMap<K, Instant>,
}

impl<K: Ord + Hash + Clone> Orphans<K> {
    /// `grace`: see [`orphan_grace`]; `drain`: how long the containers of a removed route stay.
    pub fn new(grace: Duration, drain: Duration) -> Orphans<K> {
        Orphans {
            grace,
            drain,
            known: BTreeSet::new(),
            since: HashMap::new(),
            unrouted: HashMap::new(),
        }
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// At every look, with the Stages that exist now: the ones gone since the last look start
    /// their clock; the ones back forget theirs.
    pub fn stages(&mut self, known: &BTreeSet<K>, now: Instant) {
        for k in self.known.difference(known) {
            self.since.entry(k.clone()).or_insert(now);
        }
        self.since.retain(|k, _| !known.contains(k));
        self.unrouted.retain(|k, _| !known.contains(k));
        self.known.clone_from(known);
    }

    /// Whether what `key` left behind (containers, a proxy host) may go: its Stage has been gone
    /// for the grace. Never for a Stage that exists. Leftovers of a Stage never seen (found at
    /// start-up) start their clock now.
    pub fn gone(&mut self, key: &K, now: Instant) -> bool {
        if self.known.contains(key) {
            return false;
        }
        let since = *self.since.entry(key.clone()).or_insert(now);
        now.duration_since(since) >= self.grace
    }

    /// What `key` left behind was removed: a later leftover starts a clock of its own.
    pub fn forget(&mut self, key: &K) {
        self.since.remove(key);
        self.unrouted.remove(key);
    }

    /// The route of `key` was removed now.
    pub fn unrouted(&mut self, key: &K, now: Instant) {
        self.unrouted.insert(key.clone(), now);
    }

    /// Keeps the removed routes' drains only of the Stages `keep` says still have containers.
    pub fn retain_unrouted(&mut self, keep: impl Fn(&K) -> bool) {
        self.unrouted.retain(|k, _| keep(k));
    }

    /// Whether the containers of `key` may go: no route was removed, or its drain is over.
    pub fn route_drained(&self, key: &K, now: Instant) -> bool {
        self.unrouted
            .get(key)
            .is_none_or(|t| now.duration_since(*t) >= self.drain)
    }

    /// A removed route's drain is over: its containers are due.
    pub fn drained(&self, now: Instant) -> bool {
        self.unrouted
            .values()
            .any(|t| now.duration_since(*t) >= self.drain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn transient_failures_double_from_1s_to_60s() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..9).map(|_| b.failed().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn a_verdict_ends_the_streak() {
        let resync = S(30);
        let mut b = Backoff::default();
        assert_eq!(b.after(Requeue::Retry, resync), Some(S(1)));
        assert_eq!(b.after(Requeue::Retry, resync), Some(S(2)));
        assert_eq!(b.after(Requeue::Resync, resync), Some(resync));
        assert!(b.is_idle());
        assert_eq!(b.after(Requeue::Retry, resync), Some(S(1)));
        assert_eq!(b.after(Requeue::Retry, resync), Some(S(2)));
        assert_eq!(b.after(Requeue::WaitForChange, resync), None);
        assert!(b.is_idle());
        assert_eq!(b.after(Requeue::Retry, resync), Some(S(1)));
    }

    #[test]
    fn a_panic_waits_30s_then_the_streak_goes_on() {
        let mut b = Backoff::default();
        b.failed();
        assert_eq!(b.panicked(), S(30));
        assert_eq!(b.failed(), S(60));
    }

    #[test]
    fn the_grace_is_one_resync_and_at_least_5s() {
        assert_eq!(orphan_grace(S(1)), S(5));
        assert_eq!(orphan_grace(S(5)), S(5));
        assert_eq!(orphan_grace(S(60)), S(60));
    }

    fn key(name: &str) -> (String, String) {
        ("ns".into(), name.into())
    }

    fn orphans() -> Orphans<(String, String)> {
        Orphans::new(orphan_grace(S(1)), Duration::from_secs(2))
    }

    #[test]
    fn the_grace_counts_from_when_the_stage_disappeared_not_from_an_earlier_cleanup() {
        let t0 = Instant::now();
        let mut m = orphans();
        let grace = m.grace();
        let web: BTreeSet<_> = [key("web")].into();
        m.stages(&web, t0);
        // A cleanup pass sees the Stage's proxy host while the Stage exists: no clock starts.
        assert!(!m.gone(&key("web"), t0));
        // Removed 4 s later: still within its grace 4.9 s after that, gone at 5 s.
        let removed = t0 + S(4);
        m.stages(&BTreeSet::new(), removed);
        assert!(!m.gone(&key("web"), removed + Duration::from_millis(4900)));
        assert!(m.gone(&key("web"), removed + grace));
        // Back within its grace: its clock is forgotten; removed again later, a new one starts.
        let back = removed + S(3);
        m.stages(&web, back);
        assert!(!m.gone(&key("web"), back + S(60)));
        let again = back + S(60);
        m.stages(&BTreeSet::new(), again);
        assert!(!m.gone(&key("web"), again + S(4)));
        assert!(m.gone(&key("web"), again + grace));
    }

    #[test]
    fn leftovers_of_a_stage_never_seen_start_their_clock_when_found() {
        let t0 = Instant::now();
        let mut m = orphans();
        m.stages(&BTreeSet::new(), t0);
        assert!(!m.gone(&key("old"), t0 + S(1)));
        assert!(!m.gone(&key("old"), t0 + S(5)));
        assert!(m.gone(&key("old"), t0 + S(6)));
        // Collected: leftovers found later start again.
        m.forget(&key("old"));
        assert!(!m.gone(&key("old"), t0 + S(7)));
        assert!(m.gone(&key("old"), t0 + S(12)));
    }

    #[test]
    fn containers_are_grouped_by_the_stage_their_labels_name() {
        let c = |id: &str, ns: &str, stage: &str| ContainerInfo {
            id: id.into(),
            name: id.into(),
            labels: [
                (labels::NAMESPACE.to_string(), ns.to_string()),
                (labels::STAGE.to_string(), stage.to_string()),
            ]
            .into(),
            running: true,
            created: 0,
        };
        let by = group_by_stage(vec![
            c("1", "a", "web"),
            c("2", "b", "web"),
            c("3", "a", "web"),
        ]);
        let ids = |k: (&str, &str)| -> Vec<String> {
            by[&(k.0.into(), k.1.into())]
                .iter()
                .map(|c| c.id.clone())
                .collect()
        };
        assert_eq!(by.len(), 2);
        assert_eq!(ids(("a", "web")), ["1", "3"]);
        assert_eq!(ids(("b", "web")), ["2"]);
    }

    #[test]
    fn containers_wait_for_the_drain_of_their_removed_route() {
        let t0 = Instant::now();
        let drain = S(2);
        let mut m = orphans();
        assert!(m.route_drained(&key("web"), t0), "no route was removed");
        m.unrouted(&key("web"), t0);
        assert!(!m.route_drained(&key("web"), t0 + Duration::from_millis(100)));
        assert!(!m.drained(t0 + Duration::from_millis(100)));
        assert!(m.route_drained(&key("web"), t0 + drain));
        assert!(m.drained(t0 + drain));
        m.retain_unrouted(|_| false);
        assert!(!m.drained(t0 + drain));
    }
}
