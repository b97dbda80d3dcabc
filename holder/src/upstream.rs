//! One target of a route, with what is in flight to it: the unit a switch drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// Requests in flight (until their response body is sent) and open tunnels.
    active: AtomicUsize,
    /// Woken when `active` drops to zero.
    idle: Notify,
    /// Set once: its idle connections and open tunnels are closed.
    closing: watch::Sender<bool>,
    /// Upstream connections no client uses now, for the next client connection.
    idle_pool: std::sync::Mutex<Vec<crate::http::Sender>>,
}

/// Idle upstream connections kept per target.
const POOL_MAX: usize = 256;

impl Upstream {
    pub fn new(addr: SocketAddr) -> Arc<Upstream> {
        Arc::new(Upstream {
            addr,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            closing: watch::channel(false).0,
            idle_pool: Default::default(),
        })
    }

    /// Keeps an upstream connection for the next client, unless the target is closing.
    pub(crate) fn keep_idle(&self, sender: crate::http::Sender) {
        if self.is_closing() || sender.is_closed() {
            return;
        }
        let mut pool = self.idle_pool.lock().expect("poisoned");
        if pool.len() < POOL_MAX {
            pool.push(sender);
        }
    }

    /// An idle upstream connection that is still open, if any.
    pub(crate) fn take_idle(&self) -> Option<crate::http::Sender> {
        let mut pool = self.idle_pool.lock().expect("poisoned");
        while let Some(s) = pool.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Resolves once the upstream is closed (owns what it needs: safe to hold in a task).
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|closing| *closing).await;
        }
    }

    fn close(&self) {
        self.closing.send_replace(true);
        self.idle_pool.lock().expect("poisoned").clear();
    }

    /// Counts one more request or tunnel; the guard uncounts it.
    pub fn enter(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::SeqCst);
        Active(self.clone())
    }

    /// After a switch: waits until what is in flight has finished or `drain` is over, then closes
    /// what is left (idle upstream connections at once, tunnels and unfinished requests at the
    /// deadline) and waits for those to let go.
    pub async fn drain(self: Arc<Self>, drain: Duration) {
        let deadline = Instant::now() + drain;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the check: a drop to zero in between still wakes us.
            idle.as_mut().enable();
            if self.active() == 0 {
                break;
            }
            tokio::select! {
                _ = idle => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        self.close();
        // Closed tunnels end within a moment; bounded so a stuck peer cannot keep an entry.
        let bound = Instant::now() + Duration::from_secs(5);
        while self.active() > 0 && Instant::now() < bound {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.active() == 0 {
                break;
            }
            let _ = tokio::time::timeout_at(bound, idle).await;
        }
    }
}

/// One request or tunnel in flight to an upstream.
#[derive(Debug)]
pub struct Active(Arc<Upstream>);

impl Active {
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drain_ends_when_the_last_request_finishes_and_closes_the_upstream() {
        let up = Upstream::new("127.0.0.1:1".parse().unwrap());
        let a = up.enter();
        let b = up.enter();
        let drain = tokio::spawn(up.clone().drain(Duration::from_secs(3600)));
        tokio::task::yield_now().await;
        drop(a);
        tokio::task::yield_now().await;
        assert!(!up.is_closing(), "one request is still in flight");
        drop(b);
        drain.await.unwrap();
        assert!(up.is_closing());
        assert_eq!(up.active(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_closes_what_is_left_at_its_deadline() {
        let up = Upstream::new("127.0.0.1:1".parse().unwrap());
        let tunnel = up.enter();
        let closed = up.closed();
        let holder = tokio::spawn(async move {
            closed.await;
            drop(tunnel);
        });
        up.clone().drain(Duration::from_secs(2)).await;
        holder.await.unwrap();
        assert!(up.is_closing());
        assert_eq!(up.active(), 0);
    }
}
