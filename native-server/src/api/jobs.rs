//! The job queue: encrypted images waiting for the network, a bounded queue (a full one answers
//! 503), a fixed number of workers (one by default), and the evaluation itself on a dedicated
//! rayon pool, never on tokio's threads. Each job keeps its events (queue position, each layer as
//! it finishes, done or failed) so that a server-sent-event stream that connects late still sees
//! them all, then waits for more.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use blindsight_core::{Ciphertext, Context, Evaluator};
use serde::Serialize;
use tokio::sync::watch;

use crate::api::error::ApiError;
use crate::api::journal::Journal;
use crate::api::metrics::Metrics;
use crate::api::sessions::SessionStore;
use crate::he::infer::{evaluate_batch, present_steps};
use crate::he::plan::Plan;

/// A job id: 128 random bits in hex.
pub type JobId = String;

/// One server-sent event of a job.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    /// Waiting; `position` jobs are ahead (0: next).
    Queued {
        position: usize,
    },
    Started {
        layers: usize,
    },
    /// Layer `index` (1-based) of `layers` finished, taking `seconds`.
    Layer {
        index: usize,
        layers: usize,
        name: String,
        seconds: f64,
    },
    Done {
        seconds: f64,
        bytes: usize,
    },
    /// `code` is stable for programs: `job_lost` (the server restarted before the job
    /// finished: send the image again), or the error code of what failed.
    Failed {
        code: String,
        error: String,
    },
}

impl JobEvent {
    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::Queued { .. } => "queued",
            JobEvent::Started { .. } => "started",
            JobEvent::Layer { .. } => "layer",
            JobEvent::Done { .. } => "done",
            JobEvent::Failed { .. } => "failed",
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(self, JobEvent::Done { .. } | JobEvent::Failed { .. })
    }
}

/// A job's record: its session, its input until it runs, its events and its result.
pub struct Job {
    pub session: String,
    /// One ciphertext per image (taken when the job runs).
    input: Mutex<Vec<Ciphertext>>,
    events: Mutex<Vec<JobEvent>>,
    result: Mutex<Option<Arc<Vec<u8>>>>,
    /// The number of events so far, for streams waiting on the next one.
    changed: watch::Sender<usize>,
    finished: Mutex<Option<Instant>>,
}

impl Job {
    fn new(session: &str, input: Vec<Ciphertext>) -> Self {
        Self {
            session: session.to_string(),
            input: Mutex::new(input),
            events: Mutex::new(Vec::new()),
            result: Mutex::new(None),
            changed: watch::channel(0).0,
            finished: Mutex::new(None),
        }
    }

    fn push(&self, e: JobEvent) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.push(e);
        let n = events.len();
        drop(events);
        self.changed.send_replace(n);
    }

    /// Events from index `from` on.
    pub fn events_from(&self, from: usize) -> Vec<JobEvent> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.get(from..).map(<[_]>::to_vec).unwrap_or_default()
    }

    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.changed.subscribe()
    }

    pub fn result(&self) -> Option<Arc<Vec<u8>>> {
        self.result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn last_event(&self) -> Option<JobEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
    }
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Jobs evaluated at the same time.
    pub workers: usize,
    /// Jobs waiting at most (beyond those running).
    pub capacity: usize,
    /// How long a finished job's result is kept.
    pub result_ttl: Duration,
    /// Where the journal of accepted jobs is kept.
    pub journal: PathBuf,
}

struct QueueState {
    waiting: VecDeque<JobId>,
    running: usize,
    jobs: HashMap<JobId, Arc<Job>>,
    stopping: bool,
    /// Workers take no new job while paused (a drain, or a test that needs a full queue).
    paused: bool,
    /// Recent job time (moving average; none before the first job ends), for the
    /// `Retry-After` of a full queue.
    job_seconds: Option<f64>,
}

/// What a full queue's `Retry-After` assumes before any job has finished.
const FIRST_GUESS_SECONDS: f64 = 30.0;

/// The queue and its workers.
pub struct JobQueue {
    config: QueueConfig,
    journal: Journal,
    state: Mutex<QueueState>,
    wake: Condvar,
}

/// What the workers need to evaluate.
pub struct Engine {
    pub ctx: Arc<Context>,
    /// The plan of one image.
    pub plan: Arc<Plan>,
    /// The plan of the largest batch, which evaluates every job of 2 or more images.
    pub batch: Option<Arc<Plan>>,
    pub sessions: Arc<SessionStore>,
    pub metrics: Arc<Metrics>,
    pub pool: rayon::ThreadPool,
}

impl JobQueue {
    /// The queue, with `config.workers` worker threads evaluating on one rayon pool. Jobs the
    /// journal says a previous run accepted and never finished are known from the start, as
    /// failed with `job_lost`.
    pub fn start(config: QueueConfig, engine: Engine) -> std::io::Result<Arc<Self>> {
        let (journal, lost) = Journal::open(&config.journal)?;
        let mut jobs = HashMap::new();
        for (id, entry) in lost {
            tracing::warn!(job = %id, session = %entry.session, "lost in a restart");
            let job = Job::new(&entry.session, Vec::new());
            job.push(JobEvent::Failed {
                code: "job_lost".into(),
                error: "the server restarted before this job finished; send the image again".into(),
            });
            *job.finished.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            jobs.insert(id, Arc::new(job));
        }
        let queue = Arc::new(Self {
            config,
            journal,
            state: Mutex::new(QueueState {
                waiting: VecDeque::new(),
                running: 0,
                jobs,
                stopping: false,
                paused: false,
                job_seconds: None,
            }),
            wake: Condvar::new(),
        });
        let engine = Arc::new(engine);
        for w in 0..queue.config.workers.max(1) {
            let (q, e) = (queue.clone(), engine.clone());
            std::thread::Builder::new()
                .name(format!("blindsight-worker-{w}"))
                .spawn(move || q.work(&e))?;
        }
        Ok(queue)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job of one or more images (one input ciphertext each); 503 with `Retry-After`
    /// when the queue is full.
    pub fn submit(
        &self,
        session: &str,
        input: Vec<Ciphertext>,
    ) -> Result<(JobId, usize), ApiError> {
        let mut st = self.lock();
        if st.waiting.len() >= self.config.capacity {
            // a place opens when a running job ends: on average within one job's time
            let job = st.job_seconds.unwrap_or(FIRST_GUESS_SECONDS);
            let retry = (job / self.config.workers.max(1) as f64).ceil();
            return Err(ApiError::busy(
                "queue_full",
                format!(
                    "{} jobs are waiting, the most this server queues; try again in {retry} s",
                    st.waiting.len()
                ),
                retry.clamp(1.0, 300.0) as u64,
            ));
        }
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| ApiError::internal(format!("randomness: {e}")))?;
        let id = blindsight_client::hex(&raw);
        self.journal.record(&id, session).map_err(|e| {
            tracing::error!("journal: {e}");
            ApiError::internal("recording the job: storage error")
        })?;
        let job = Arc::new(Job::new(session, input));
        let position = st.waiting.len();
        job.push(JobEvent::Queued { position });
        st.jobs.insert(id.clone(), job);
        st.waiting.push_back(id.clone());
        drop(st);
        self.wake.notify_one();
        Ok((id, position))
    }

    pub fn job(&self, id: &str) -> Result<Arc<Job>, ApiError> {
        self.lock().jobs.get(id).cloned().ok_or_else(|| {
            ApiError::not_found(
                "unknown_job",
                format!("no job {id:?} (results are kept for a while, then dropped)"),
            )
        })
    }

    /// (waiting, running).
    pub fn depth(&self) -> (usize, usize) {
        let st = self.lock();
        (st.waiting.len(), st.running)
    }

    /// Sessions with a job waiting or running (not to be expired under it).
    pub fn busy_sessions(&self) -> Vec<String> {
        let st = self.lock();
        st.jobs
            .values()
            .filter(|j| !j.last_event().is_some_and(|e| e.is_final()))
            .map(|j| j.session.clone())
            .collect()
    }

    /// Drops finished jobs older than the result TTL.
    pub fn expire(&self) {
        let ttl = self.config.result_ttl;
        self.lock().jobs.retain(|_, j| {
            j.finished
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none_or(|t| t.elapsed() < ttl)
        });
    }

    /// Pauses or resumes taking jobs off the queue (running ones finish).
    pub fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
        self.wake.notify_all();
    }

    /// Stops the workers after the jobs they are running.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.wake.notify_all();
    }

    fn work(&self, engine: &Engine) {
        loop {
            let (id, job) = {
                let mut st = self.lock();
                loop {
                    if st.stopping {
                        return;
                    }
                    if let Some(id) = (!st.paused).then(|| st.waiting.pop_front()).flatten() {
                        st.running += 1;
                        // everyone behind moves up one
                        for (pos, other) in st.waiting.iter().enumerate() {
                            if let Some(j) = st.jobs.get(other) {
                                j.push(JobEvent::Queued { position: pos });
                            }
                        }
                        let job = st.jobs.get(&id).cloned();
                        match job {
                            Some(job) => break (id, job),
                            None => {
                                st.running -= 1;
                                continue;
                            }
                        }
                    }
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            };
            let span = tracing::info_span!("job", id = %id, session = %job.session);
            let _enter = span.enter();
            let t0 = Instant::now();
            let outcome = engine.pool.install(|| run(engine, &job));
            let seconds = t0.elapsed().as_secs_f64();
            match outcome {
                Ok(bytes) => {
                    let n = bytes.len();
                    *job.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(bytes));
                    engine
                        .metrics
                        .jobs_done
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    engine.metrics.observe_latency(seconds);
                    tracing::info!(seconds, "done");
                    job.push(JobEvent::Done { seconds, bytes: n });
                }
                Err(e) => {
                    engine
                        .metrics
                        .jobs_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %e, "failed");
                    job.push(JobEvent::Failed {
                        code: e.code.into(),
                        error: e.message,
                    });
                }
            }
            self.journal.finish(&id);
            *job.finished.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            let _ = engine.sessions.touch(&job.session);
            let mut st = self.lock();
            st.running -= 1;
            st.job_seconds = Some(st.job_seconds.map_or(seconds, |m| 0.7 * m + 0.3 * seconds));
        }
    }
}

/// Evaluates one job: the session's keys, the network, the result's bytes.
fn run(engine: &Engine, job: &Job) -> Result<Vec<u8>, ApiError> {
    let input = std::mem::take(&mut *job.input.lock().unwrap_or_else(|e| e.into_inner()));
    let plan = match input.len() {
        0 => return Err(ApiError::internal("the job's input is gone")),
        1 => &engine.plan,
        b => engine
            .batch
            .as_ref()
            .filter(|p| b <= p.batch)
            .ok_or_else(|| ApiError::internal(format!("no plan for a batch of {b} images")))?,
    };
    let keys = engine.sessions.keys(&job.session)?;
    let layers = present_steps(plan, input.len())
        .into_iter()
        .filter(|&p| p)
        .count();
    job.push(JobEvent::Started { layers });
    let ev = Evaluator::new(&engine.ctx);
    let mut last = Instant::now();
    let (outs, _) = evaluate_batch(plan, &ev, &keys, &input, |i, n, name, _| {
        let now = Instant::now();
        job.push(JobEvent::Layer {
            index: i,
            layers: n,
            name: name.to_string(),
            seconds: (now - last).as_secs_f64(),
        });
        last = now;
    })
    .map_err(|e| ApiError::internal(format!("evaluation: {e}")))?;
    drop(input);
    // the contract promises one output ciphertext for any batch up to its maximum
    let [out] = <[_; 1]>::try_from(outs)
        .map_err(|_| ApiError::internal("a batch left more than one output ciphertext"))?;
    out.to_bytes(&engine.ctx)
        .map_err(|e| ApiError::internal(format!("serializing the result: {e}")))
}
