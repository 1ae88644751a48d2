//! `blindsight serve`: the HTTP API (axum) over the homomorphic network. It holds no secret key
//! and has no decryption path: this module and everything it uses build without the crate's
//! `client` feature, and `scripts/test.sh` checks that build.
//!
//! - `GET /api/contract`: the client contract (JSON);
//! - `POST /api/sessions`, `GET`/`DELETE /api/sessions/{id}`, `PUT /api/sessions/{id}/keys/{k}`:
//!   sessions and their evaluation keys, one key per request, each checked against the contract;
//! - `POST /api/sessions/{id}/jobs`: an encrypted image; `GET /api/jobs/{id}/events`
//!   (server-sent events) and `GET /api/jobs/{id}/result` (the encrypted logits);
//! - `GET /api/health`, `GET /metrics` (Prometheus text);
//! - everything else: the static page from the web directory.

pub mod error;
pub mod jobs;
pub mod journal;
pub mod listener;
pub mod metrics;
pub mod path;
pub mod routes;
pub mod sessions;
#[cfg(all(test, feature = "client"))]
mod tests;
pub mod uploads;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use blindsight_client::ClientContract;
use blindsight_core::Context;

use crate::contract::server_contract;
use crate::model::Model;
use jobs::{Engine, JobQueue, QueueConfig};
use listener::ConnLimits;
use metrics::Metrics;
use sessions::{SessionStore, StoreConfig};
use uploads::UploadBudget;

/// Everything `blindsight serve` can be told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub params: String,
    pub data_dir: PathBuf,
    /// The page's files; `None` serves the API alone.
    pub web_dir: Option<PathBuf>,
    pub jobs: usize,
    pub queue: usize,
    /// Most images in one job (each batch size has its plan, made at start).
    pub max_batch: usize,
    /// Threads of the evaluation pool (0: one per core).
    pub threads: usize,
    pub max_sessions: usize,
    pub session_ttl: Duration,
    pub result_ttl: Duration,
    /// Bytes of evaluation keys kept loaded in memory.
    pub key_memory: u64,
    /// How often expired sessions and results are swept.
    pub sweep_every: Duration,
    /// Bytes all request bodies being read may hold at once.
    pub upload_memory: u64,
    /// How long an upload waits for upload memory before a 503.
    pub upload_wait: Duration,
    /// A body that sends nothing for this long is cut off (408).
    pub body_idle_timeout: Duration,
    /// A body that takes longer than this in all is cut off (408).
    pub upload_timeout: Duration,
    /// Connections at once and the time to send headers.
    pub connections: ConnLimits,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            params: "N16_L39".into(),
            data_dir: PathBuf::from("blindsight-data"),
            web_dir: None,
            jobs: 1,
            queue: 8,
            max_batch: 8,
            threads: 0,
            max_sessions: 16,
            session_ttl: Duration::from_secs(3600),
            result_ttl: Duration::from_secs(600),
            key_memory: 2 << 30,
            sweep_every: Duration::from_secs(30),
            upload_memory: 512 << 20,
            upload_wait: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(600),
            connections: ConnLimits::default(),
        }
    }
}

/// The server's shared state.
pub struct AppState {
    pub ctx: Arc<Context>,
    pub contract: Arc<ClientContract>,
    pub contract_json: String,
    pub sessions: Arc<SessionStore>,
    pub queue: Arc<JobQueue>,
    pub metrics: Arc<Metrics>,
    pub uploads: UploadBudget,
    pub config: ServeConfig,
    pub model_name: String,
}

impl AppState {
    /// Plans the model, makes the contract, opens the session store (restoring sessions from
    /// disk) and starts the workers.
    pub fn new(model: &Model, config: ServeConfig) -> anyhow::Result<Arc<Self>> {
        let ctx = Context::named(&config.params)?;
        // both plans are made now: a job never waits for planning
        let (plan, batch, contract) = server_contract(model, &ctx, config.max_batch)?;
        let (plan, batch) = (Arc::new(plan), batch.map(Arc::new));
        let contract = Arc::new(contract);
        let contract_json = contract.to_json();
        let sessions = Arc::new(SessionStore::open(
            StoreConfig {
                dir: config.data_dir.join("sessions"),
                max_sessions: config.max_sessions,
                idle_ttl: config.session_ttl,
                memory_budget: config.key_memory,
            },
            ctx.clone(),
            contract.clone(),
            plan.keys.clone(),
        )?);
        let metrics = Arc::new(Metrics::default());
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("blindsight-eval-{i}"))
            .build()?;
        let queue = JobQueue::start(
            QueueConfig {
                workers: config.jobs,
                capacity: config.queue,
                result_ttl: config.result_ttl,
                journal: config.data_dir.join("jobs"),
            },
            Engine {
                ctx: ctx.clone(),
                plan,
                batch,
                sessions: sessions.clone(),
                metrics: metrics.clone(),
                pool,
            },
        )?;
        Ok(Arc::new(Self {
            ctx,
            contract,
            contract_json,
            sessions,
            queue,
            metrics,
            uploads: UploadBudget::new(config.upload_memory),
            config,
            model_name: model.metadata().name.clone(),
        }))
    }

    /// The memory the server holds beyond its model and the evaluations running: the budgets
    /// it enforces, and what a full queue of inputs takes (each waiting job holds its
    /// ciphertext in memory). Bytes.
    pub fn memory_limits(&self) -> serde_json::Value {
        let n = self.ctx.n() as u64;
        let input =
            2 * (self.contract.input.level as u64 + 1) * n * 8 * self.contract.batch.max as u64;
        let queued = input * self.config.queue as u64;
        serde_json::json!({
            "key_memory_budget": self.config.key_memory,
            "upload_budget": self.uploads.total_bytes(),
            "queued_inputs": queued,
            "total": self.config.key_memory + self.uploads.total_bytes() + queued,
        })
    }

    /// Sweeps expired sessions and results every `sweep_every`, off tokio's threads.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(state.config.sweep_every);
            loop {
                tick.tick().await;
                let s = state.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    s.queue.expire();
                    s.sessions.expire(&s.queue.busy_sessions())
                })
                .await;
            }
        });
    }
}

impl Drop for AppState {
    fn drop(&mut self) {
        self.queue.stop();
    }
}
