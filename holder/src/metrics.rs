//! Per-route counters in the Prometheus text format, on the control listener's `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram: time to the upstream's response head.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// By status class: 1xx … 5xx.
    requests: [AtomicU64; 5],
    upstream_errors: AtomicU64,
    connections: AtomicU64,
    switches: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl RouteMetrics {
    pub fn response(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros().min(u64::MAX.into()) as u64, Relaxed);
    }

    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Relaxed);
    }

    pub fn connection(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    pub fn switch(&self) {
        self.switches.fetch_add(1, Relaxed);
    }

    pub fn upstream_errors(&self) -> u64 {
        self.upstream_errors.load(Relaxed)
    }
}

/// A counter family: name, type, help, and how to read it.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&RouteMetrics) -> u64,
);

/// The exposition of all routes (`routes`: name and metrics, sorted by name).
pub fn render<'a>(
    routes: impl Iterator<Item = (&'a str, &'a RouteMetrics, usize)> + Clone,
) -> String {
    let mut out = String::new();
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut out,
        "tiny_forge_holder_requests_total",
        "counter",
        "HTTP responses sent, by route and status class.",
    );
    for (route, m, _) in routes.clone() {
        for (i, n) in m.requests.iter().enumerate() {
            let _ = writeln!(
                out,
                "tiny_forge_holder_requests_total{{route=\"{route}\",code=\"{}xx\"}} {}",
                i + 1,
                n.load(Relaxed)
            );
        }
    }
    let simple: [Family; 3] = [
        (
            "tiny_forge_holder_upstream_errors_total",
            "counter",
            "Requests or connections the upstream could not take (answered 502 or closed).",
            |m| m.upstream_errors.load(Relaxed),
        ),
        (
            "tiny_forge_holder_connections_total",
            "counter",
            "Client connections accepted.",
            |m| m.connections.load(Relaxed),
        ),
        (
            "tiny_forge_holder_switches_total",
            "counter",
            "Times the route's upstream changed.",
            |m| m.switches.load(Relaxed),
        ),
    ];
    for (name, kind, help, get) in simple {
        family(&mut out, name, kind, help);
        for (route, m, _) in routes.clone() {
            let _ = writeln!(out, "{name}{{route=\"{route}\"}} {}", get(m));
        }
    }
    family(
        &mut out,
        "tiny_forge_holder_in_flight",
        "gauge",
        "Requests and tunnels in flight, to the current and draining upstreams.",
    );
    for (route, _, active) in routes.clone() {
        let _ = writeln!(
            out,
            "tiny_forge_holder_in_flight{{route=\"{route}\"}} {active}"
        );
    }
    let name = "tiny_forge_holder_upstream_latency_seconds";
    family(
        &mut out,
        name,
        "histogram",
        "Time from a request to the upstream's response head.",
    );
    for (route, m, _) in routes {
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(&m.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{route=\"{route}\",le=\"{b}\"}} {cumulative}"
            );
        }
        let count = m.count.load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
        );
        let sum = m.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {count}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_classes_are_counted() {
        let m = RouteMetrics::default();
        m.response(200, Duration::from_micros(300));
        m.response(502, Duration::from_millis(30));
        m.upstream_error();
        let text = render([("r", &m, 1)].into_iter());
        for line in [
            "tiny_forge_holder_requests_total{route=\"r\",code=\"2xx\"} 1",
            "tiny_forge_holder_requests_total{route=\"r\",code=\"5xx\"} 1",
            "tiny_forge_holder_upstream_errors_total{route=\"r\"} 1",
            "tiny_forge_holder_upstream_latency_seconds_bucket{route=\"r\",le=\"0.0005\"} 1",
            "tiny_forge_holder_upstream_latency_seconds_bucket{route=\"r\",le=\"0.025\"} 1",
            "tiny_forge_holder_upstream_latency_seconds_bucket{route=\"r\",le=\"0.05\"} 2",
            "tiny_forge_holder_upstream_latency_seconds_count{route=\"r\"} 2",
            "tiny_forge_holder_in_flight{route=\"r\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
