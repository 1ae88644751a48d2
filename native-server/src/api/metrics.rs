//! Counters and gauges for `GET /metrics`, in the Prometheus text format: sessions, key bytes
//! held, queue depth, jobs by outcome, a job latency histogram. Plain atomics: the hot path is
//! one increment.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the job latency histogram's buckets: one ResNet-20 image takes
/// 20-40 s on two cores.
const BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0];

#[derive(Default)]
pub struct Metrics {
    pub jobs_done: AtomicU64,
    pub jobs_failed: AtomicU64,
    pub jobs_rejected: AtomicU64,
    pub keys_accepted: AtomicU64,
    pub keys_rejected: AtomicU64,
    latency: Mutex<Histogram>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The gauges, read from the session store and the queue when scraped.
pub struct Gauges {
    pub sessions: usize,
    pub key_bytes_on_disk: u64,
    pub key_bytes_in_memory: u64,
    pub queue_depth: usize,
    pub running: usize,
}

impl Metrics {
    pub fn observe_latency(&self, seconds: f64) {
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        for (c, &b) in h.counts.iter_mut().zip(&BUCKETS) {
            if seconds <= b {
                *c += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut s = String::new();
        let mut gauge = |name: &str, help: &str, v: f64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "blindsight_sessions",
            "Sessions held (in memory or on disk).",
            g.sessions as f64,
        );
        gauge(
            "blindsight_key_bytes_on_disk",
            "Bytes of evaluation keys stored for all sessions.",
            g.key_bytes_on_disk as f64,
        );
        gauge(
            "blindsight_key_bytes_in_memory",
            "Bytes of evaluation keys loaded for evaluation.",
            g.key_bytes_in_memory as f64,
        );
        gauge(
            "blindsight_queue_depth",
            "Jobs waiting to run.",
            g.queue_depth as f64,
        );
        gauge(
            "blindsight_jobs_running",
            "Jobs running now.",
            g.running as f64,
        );
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP blindsight_jobs_total Jobs by outcome.\n# TYPE blindsight_jobs_total counter"
        );
        for (outcome, v) in [
            ("done", load(&self.jobs_done)),
            ("failed", load(&self.jobs_failed)),
            ("rejected", load(&self.jobs_rejected)),
        ] {
            let _ = writeln!(s, "blindsight_jobs_total{{outcome=\"{outcome}\"}} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP blindsight_keys_total Evaluation key uploads by outcome.\n# TYPE blindsight_keys_total counter"
        );
        for (outcome, v) in [
            ("accepted", load(&self.keys_accepted)),
            ("rejected", load(&self.keys_rejected)),
        ] {
            let _ = writeln!(s, "blindsight_keys_total{{outcome=\"{outcome}\"}} {v}");
        }
        let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            s,
            "# HELP blindsight_job_seconds Time from a job's start to its result.\n# TYPE blindsight_job_seconds histogram"
        );
        for (c, b) in h.counts.iter().zip(BUCKETS) {
            let _ = writeln!(s, "blindsight_job_seconds_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            s,
            "blindsight_job_seconds_bucket{{le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(s, "blindsight_job_seconds_sum {}", h.sum);
        let _ = writeln!(s, "blindsight_job_seconds_count {}", h.count);
        s
    }
}
