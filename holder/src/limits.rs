//! What one client may cost the holder. It faces whoever can reach the Stage's port, so a
//! client that sends its request head a byte at a time, keeps a connection idle forever, or
//! opens connections without end must not take descriptors and memory from everyone else.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A client must send a whole request head within this once the holder waits for one.
    /// hyper starts that clock whenever it waits for a head, so this is also how long a
    /// keep-alive connection may sit idle between requests (slowloris and idle both end here).
    pub request_head: Duration,
    /// The upstream must answer with its response head within this (504 otherwise). The body
    /// may then take as long as it takes: downloads and streams are not cut.
    pub response_head: Duration,
    /// Client connections (and the tunnels they became) open at once, over every route. One
    /// past it is answered `503` with `Connection: close` (HTTP) or closed (TCP) at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // hyper's own default, and nginx's order of magnitude (client_header_timeout 60 s,
            // keepalive_timeout 75 s): long enough for a slow mobile client, short for an attack.
            request_head: Duration::from_secs(30),
            // nginx's proxy_read_timeout.
            response_head: Duration::from_secs(60),
            // Each connection costs two descriptors (client and upstream); far below Docker's
            // default of 1 048 576 open files, far above what one Docker host serves.
            max_connections: 10_000,
        }
    }
}

/// The limits and the connection count they are checked against, shared by every route.
#[derive(Debug)]
pub struct Guard {
    pub limits: Limits,
    connections: Arc<Semaphore>,
}

/// One admitted connection; dropping it lets the next one in.
pub type Admitted = Arc<OwnedSemaphorePermit>;

impl Guard {
    pub fn new(limits: Limits) -> Arc<Guard> {
        Arc::new(Guard {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
        })
    }

    /// A place for one more connection, if there is one.
    pub fn admit(&self) -> Option<Admitted> {
        self.connections
            .clone()
            .try_acquire_owned()
            .ok()
            .map(Arc::new)
    }
}

impl Default for Guard {
    fn default() -> Self {
        let limits = Limits::default();
        Guard {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
        }
    }
}
