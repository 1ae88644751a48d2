//! A bounded load generator for `blindsight serve` (`blindsight load`): K sessions upload their
//! evaluation keys at once, then J jobs go in at once, more than the queue holds. It checks what
//! the server promises under load: a full queue answers 503 with `Retry-After` (the client waits
//! and tries again), every accepted job finishes exactly once with the label the plaintext model
//! gives, and the server's memory stays within its stated budgets (sampled from `/metrics`).
//!
//! Every session uses keys of one secret key (made here once: the server cannot tell), so the
//! generator holds one set of keys however many sessions it opens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blindsight_client::Client;
use hyper::Method;
use serde::Serialize;

use crate::model::Model;
use crate::plain;
use crate::remote::{Remote, RemoteError, ServerEvent};

/// One image to classify: RGBA pixels.
#[derive(Clone)]
pub struct LoadImage {
    pub rgba: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

#[derive(Clone)]
pub struct LoadConfig {
    pub server: String,
    pub sessions: usize,
    pub jobs: usize,
    pub images: Vec<LoadImage>,
    /// The model the server runs, for the plaintext labels every answer is checked against.
    pub model: Arc<Model>,
}

/// The server's memory as `/metrics` showed it, at its largest over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemorySamples {
    pub samples: usize,
    pub peak_resident_bytes: u64,
    pub max_key_bytes_in_memory: u64,
    pub key_memory_budget: u64,
    pub max_upload_bytes_reserved: u64,
    pub upload_budget: u64,
    pub max_queue_depth: u64,
}

/// What a load run saw.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub sessions: usize,
    pub key_bytes_per_session: usize,
    pub key_upload_seconds: f64,
    /// Uploads answered 503 (upload memory full) and sent again.
    pub key_uploads_busy: usize,
    pub jobs: usize,
    /// Submissions answered 503 (queue full), and the `Retry-After` values they carried.
    pub jobs_busy: usize,
    pub retry_after_seen: Vec<u64>,
    pub jobs_accepted: usize,
    pub jobs_done: usize,
    pub jobs_failed: usize,
    /// Job ids that were answered more than once (a final event twice, or one id twice).
    pub jobs_answered_twice: usize,
    pub labels_equal_plaintext: usize,
    pub wall_seconds: f64,
    pub memory: MemorySamples,
    pub errors: Vec<String>,
}

impl LoadReport {
    /// Every job accepted, done once, with the plaintext label; nothing failed.
    pub fn all_good(&self) -> bool {
        self.errors.is_empty()
            && self.jobs_failed == 0
            && self.jobs_answered_twice == 0
            && self.jobs_done == self.jobs
            && self.labels_equal_plaintext == self.jobs
    }
}

/// Runs the load: keys for `sessions` sessions at once, then `jobs` jobs at once.
pub async fn run(config: LoadConfig) -> Result<LoadReport, RemoteError> {
    assert!(!config.images.is_empty(), "at least one image");
    let t0 = Instant::now();
    let remote = Arc::new(Remote::new(&config.server));
    let contract = remote.contract().await?;
    let client = Arc::new(tokio::task::block_in_place(|| Client::new(contract))?);
    let n = client.contract().keys.len();
    let keys: Arc<Vec<Vec<u8>>> = Arc::new(tokio::task::block_in_place(|| {
        (0..n)
            .map(|k| client.key_bytes(k))
            .collect::<Result<_, _>>()
    })?);
    let mut expected = Vec::new();
    for im in &config.images {
        let tensor = client.image_tensor(&im.rgba, im.width, im.height)?;
        let logits = plain::forward(&config.model, &tensor)
            .map_err(|e| RemoteError::Transport(format!("the plaintext model: {e}")))?;
        expected.push(blindsight_client::argmax(&logits));
    }

    let memory = Arc::new(Mutex::new(MemorySamples::default()));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = tokio::spawn(sample_memory(
        remote.clone(),
        memory.clone(),
        sampling.clone(),
    ));

    // K sessions, every key of each uploaded at once
    let t_keys = Instant::now();
    let mut uploads = Vec::new();
    for _ in 0..config.sessions {
        let (remote, keys) = (remote.clone(), keys.clone());
        uploads.push(tokio::spawn(async move {
            let id = remote.create_session().await?;
            let mut busy = 0;
            for (k, bytes) in keys.iter().enumerate() {
                loop {
                    match remote.put_key(&id, k, bytes.clone()).await {
                        Err(RemoteError::Api {
                            status: 503,
                            retry_after,
                            ..
                        }) if busy < 100 => {
                            busy += 1;
                            let wait = retry_after.unwrap_or(1).clamp(1, 10);
                            tokio::time::sleep(Duration::from_secs(wait)).await;
                        }
                        other => {
                            other?;
                            break;
                        }
                    }
                }
            }
            Ok::<_, RemoteError>((id, busy))
        }));
    }
    let mut sessions = Vec::new();
    let mut key_uploads_busy = 0;
    for u in uploads {
        let (id, busy) = u
            .await
            .map_err(|e| RemoteError::Transport(e.to_string()))??;
        sessions.push(id);
        key_uploads_busy += busy;
    }
    let key_upload_seconds = t_keys.elapsed().as_secs_f64();

    // J jobs at once
    let mut tasks = Vec::new();
    for j in 0..config.jobs {
        let (remote, client) = (remote.clone(), client.clone());
        let session = sessions[j % sessions.len()].clone();
        let image = config.images[j % config.images.len()].clone();
        let label = expected[j % expected.len()];
        tasks.push(tokio::spawn(async move {
            one_job(&remote, &client, &session, &image, label).await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(
            t.await
                .unwrap_or_else(|e| Err(RemoteError::Transport(e.to_string()))),
        );
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.await;

    let mut report = LoadReport {
        sessions: sessions.len(),
        key_bytes_per_session: client.contract().key_bytes(),
        key_upload_seconds,
        key_uploads_busy,
        jobs: config.jobs,
        jobs_busy: 0,
        retry_after_seen: Vec::new(),
        jobs_accepted: 0,
        jobs_done: 0,
        jobs_failed: 0,
        jobs_answered_twice: 0,
        labels_equal_plaintext: 0,
        wall_seconds: t0.elapsed().as_secs_f64(),
        memory: memory.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        errors: Vec::new(),
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for o in outcomes {
        match o {
            Ok(o) => {
                report.jobs_busy += o.busy.len();
                report.retry_after_seen.extend(o.busy);
                report.jobs_accepted += 1;
                *seen.entry(o.job).or_default() += 1;
                let finals = o.events.iter().filter(|e| is_final(e)).count();
                if finals != 1 {
                    report.jobs_answered_twice += 1;
                }
                match o.label {
                    Some(label) => {
                        report.jobs_done += 1;
                        if label == o.expected {
                            report.labels_equal_plaintext += 1;
                        }
                    }
                    None => report.jobs_failed += 1,
                }
            }
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    report.jobs_answered_twice += seen.values().filter(|&&c| c > 1).count();
    report.retry_after_seen.sort_unstable();
    report.retry_after_seen.dedup();
    for id in &sessions {
        let _ = remote
            .send(Method::DELETE, &format!("/api/sessions/{id}"), Vec::new())
            .await;
    }
    Ok(report)
}

struct JobOutcome {
    job: String,
    events: Vec<ServerEvent>,
    /// `Retry-After` of each 503 before the job was accepted.
    busy: Vec<u64>,
    label: Option<usize>,
    expected: usize,
}

fn is_final(e: &ServerEvent) -> bool {
    e.event == "done" || e.event == "failed"
}

/// Encrypts, submits (waiting out a full queue), follows, downloads and decrypts one job.
async fn one_job(
    remote: &Remote,
    client: &Client,
    session: &str,
    image: &LoadImage,
    expected: usize,
) -> Result<JobOutcome, RemoteError> {
    let ct = tokio::task::block_in_place(|| {
        client.encrypt_rgba(&image.rgba, image.width, image.height)
    })?;
    let mut busy = Vec::new();
    let job = remote
        .submit_waiting(session, &ct, |wait| busy.push(wait))
        .await?;
    let events = remote.follow(&job, |_| {}).await?;
    let label = if events.iter().any(|e| e.event == "done") {
        let bytes = remote.result(&job).await?;
        Some(tokio::task::block_in_place(|| client.decrypt_result(&bytes))?.index)
    } else {
        None
    };
    Ok(JobOutcome {
        job,
        events,
        busy,
        label,
        expected,
    })
}

/// Reads `/metrics` every 200 ms while the run lasts, keeping the largest values.
async fn sample_memory(
    remote: Arc<Remote>,
    memory: Arc<Mutex<MemorySamples>>,
    running: Arc<std::sync::atomic::AtomicBool>,
) {
    while running.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(body) = remote.send(Method::GET, "/metrics", Vec::new()).await {
            let text = String::from_utf8_lossy(&body);
            let value = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .map_or(0, |v| v as u64)
            };
            let mut m = memory.lock().unwrap_or_else(|e| e.into_inner());
            m.samples += 1;
            m.peak_resident_bytes = m
                .peak_resident_bytes
                .max(value("blindsight_peak_resident_bytes"));
            m.max_key_bytes_in_memory = m
                .max_key_bytes_in_memory
                .max(value("blindsight_key_bytes_in_memory"));
            m.key_memory_budget = value("blindsight_key_memory_budget_bytes");
            m.max_upload_bytes_reserved = m
                .max_upload_bytes_reserved
                .max(value("blindsight_upload_bytes_reserved"));
            m.upload_budget = value("blindsight_upload_budget_bytes");
            m.max_queue_depth = m.max_queue_depth.max(value("blindsight_queue_depth"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
