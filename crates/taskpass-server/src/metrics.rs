//! Per-RPC request counts and latency histograms, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS_MS: [f64; 12] = [
    0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 5000.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS_MS.len()],
    sum_ms: f64,
    total: u64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(&'static str, &'static str), u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

/// The broker's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Records one finished RPC.
    pub fn observe(&self, rpc: &'static str, code: tonic::Code, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        *inner.requests.entry((rpc, code_name(code))).or_default() += 1;
        let h = inner.latency.entry(rpc).or_default();
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if ms <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum_ms += ms;
        h.total += 1;
    }

    /// The Prometheus text exposition, with `extra` gauges appended.
    pub fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let Ok(inner) = self.inner.lock() else {
            return out;
        };
        out.push_str("# HELP taskpass_rpc_requests_total gRPC requests handled, by method and status code.\n");
        out.push_str("# TYPE taskpass_rpc_requests_total counter\n");
        for ((rpc, code), n) in &inner.requests {
            let _ = writeln!(
                out,
                "taskpass_rpc_requests_total{{method=\"{rpc}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP taskpass_rpc_duration_seconds gRPC handling time, by method.\n");
        out.push_str("# TYPE taskpass_rpc_duration_seconds histogram\n");
        for (rpc, h) in &inner.latency {
            for (i, b) in BUCKETS_MS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "taskpass_rpc_duration_seconds_bucket{{method=\"{rpc}\",le=\"{}\"}} {}",
                    b / 1000.0,
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "taskpass_rpc_duration_seconds_bucket{{method=\"{rpc}\",le=\"+Inf\"}} {}",
                h.total
            );
            let _ = writeln!(
                out,
                "taskpass_rpc_duration_seconds_sum{{method=\"{rpc}\"}} {}",
                h.sum_ms / 1000.0
            );
            let _ = writeln!(
                out,
                "taskpass_rpc_duration_seconds_count{{method=\"{rpc}\"}} {}",
                h.total
            );
        }
        for (name, help, v) in extra {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_buckets() {
        let m = Metrics::default();
        m.observe("IssueToken", tonic::Code::Ok, Duration::from_micros(700));
        m.observe(
            "IssueToken",
            tonic::Code::PermissionDenied,
            Duration::from_millis(3),
        );
        let text = m.render(&[("taskpass_up", "1 when serving", 1.0)]);
        assert!(text.contains("taskpass_rpc_requests_total{method=\"IssueToken\",code=\"OK\"} 1"));
        assert!(text.contains(
            "taskpass_rpc_duration_seconds_bucket{method=\"IssueToken\",le=\"0.001\"} 1"
        ));
        assert!(text.contains("taskpass_rpc_duration_seconds_count{method=\"IssueToken\"} 2"));
        assert!(text.contains("taskpass_up 1"));
    }
}
