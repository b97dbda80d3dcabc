//! Prometheus metrics served on `/metrics`: webhook requests by provider and outcome, their
//! latency, and (Kubernetes mode) reconciles by kind and outcome, their duration, leadership.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    provider: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Labels are static strings: their number is bounded by the code, never by the input.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ProviderLabel, Histogram>,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_duration: Family<KindLabel, Histogram>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tiny_forge");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "webhook_requests",
            "Webhook deliveries by provider and outcome",
            requests.clone(),
        );
        let latency = Family::<ProviderLabel, Histogram>::new_with_constructor(|| {
            // 0.25 ms … ~1 s: a delivery is answered after a durable write.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.00025, 2.0, 13,
            ))
        });
        registry.register(
            "webhook_request_duration_seconds",
            "Time from request to answer, body read and durable store included",
            latency.clone(),
        );
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles (Kubernetes mode) by kind and outcome: converged, retry, waiting (for a spec change), error",
            reconciles.clone(),
        );
        let reconcile_duration = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            // 1 ms … ~65 s: a steady reconcile takes milliseconds, a deploy seconds.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 17,
            ))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, deploys and health checks included",
            reconcile_duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the Lease and runs the controllers",
            leader.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            latency,
            reconciles,
            reconcile_duration,
            leader,
        }
    }
}

impl Metrics {
    pub fn observe(&self, provider: &'static str, outcome: &'static str, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels { provider, outcome })
            .inc();
        self.latency
            .get_or_create(&ProviderLabel { provider })
            .observe(took.as_secs_f64());
    }

    pub fn reconciled(&self, kind: &'static str, outcome: &'static str, took: Duration) {
        self.reconciles
            .get_or_create(&ReconcileLabels { kind, outcome })
            .inc();
        self.reconcile_duration
            .get_or_create(&KindLabel { kind })
            .observe(took.as_secs_f64());
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}
