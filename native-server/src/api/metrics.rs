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
    /// Bodies being read now (a gauge kept by `routes::read_body`).
    pub uploads_in_flight: AtomicU64,
    pub uploads_timed_out: AtomicU64,
    /// Uploads refused because the upload memory stayed full.
    pub uploads_busy: AtomicU64,
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
    /// Bytes of upload memory reserved now, and the budget.
    pub upload_bytes_reserved: u64,
    pub upload_budget: u64,
    pub key_memory_budget: u64,
}

/// The process's resident memory now and at its peak (Linux `/proc/self/status`; zeros
/// elsewhere).
pub fn resident_memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
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
            "blindsight_key_memory_budget_bytes",
            "Bytes of evaluation keys the server keeps loaded at most (one session always fits).",
            g.key_memory_budget as f64,
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
        let (rss, peak) = resident_memory();
        gauge(
            "blindsight_resident_bytes",
            "Resident memory of the server process.",
            rss as f64,
        );
        gauge(
            "blindsight_peak_resident_bytes",
            "Peak resident memory of the server process since it started.",
            peak as f64,
        );
        gauge(
            "blindsight_uploads_in_flight",
            "Request bodies being read now.",
            load(&self.uploads_in_flight) as f64,
        );
        gauge(
            "blindsight_upload_bytes_reserved",
            "Bytes of upload memory reserved by bodies being read.",
            g.upload_bytes_reserved as f64,
        );
        gauge(
            "blindsight_upload_budget_bytes",
            "Upload memory budget.",
            g.upload_budget as f64,
        );
        let _ = writeln!(
            s,
            "# HELP blindsight_uploads_refused_total Uploads cut off or refused.\n# TYPE blindsight_uploads_refused_total counter"
        );
        for (reason, v) in [
            ("timeout", load(&self.uploads_timed_out)),
            ("busy", load(&self.uploads_busy)),
        ] {
            let _ = writeln!(
                s,
                "blindsight_uploads_refused_total{{reason=\"{reason}\"}} {v}"
            );
        }
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
