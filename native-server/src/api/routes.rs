//! The handlers: each reads and checks its input, hands CKKS work to blocking threads or the job
//! queue (never to tokio's threads), and answers JSON, bytes or server-sent events.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use blindsight_core::{scales_equal, Ciphertext};
use futures_util::{Stream, StreamExt};
use serde_json::json;
use tower_http::compression::predicate::{DefaultPredicate, NotForContentType, Predicate};
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::api::error::ApiError;
use crate::api::jobs::JobEvent;
use crate::api::metrics::{Gauges, Metrics};
use crate::api::path::ApiPath;
use crate::api::sessions::{unknown_session, valid_id, wire_error};
use crate::api::AppState;

type St = State<Arc<AppState>>;

/// The API and, where a web directory is configured, the page.
pub fn router(state: Arc<AppState>) -> Router {
    let router = Router::new()
        .route("/api/health", get(health))
        .route("/api/contract", get(contract))
        .route("/api/sessions", post(create_session))
        .route("/api/sessions/{id}", get(session).delete(delete_session))
        .route("/api/sessions/{id}/keys/{k}", put(put_key))
        .route("/api/sessions/{id}/jobs", post(submit_job))
        .route("/api/jobs/{id}/events", get(job_events))
        .route("/api/jobs/{id}/result", get(job_result))
        .route("/api/{*rest}", any(no_route))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        });
    let router = match &state.config.web_dir {
        Some(dir) => {
            router.fallback_service(ServeDir::new(dir).append_index_html_on_directories(true))
        }
        None => router.fallback(no_route),
    };
    // static files and JSON compress; ciphertexts (random bytes) and event streams do not
    let compress =
        DefaultPredicate::new().and(NotForContentType::const_new("application/octet-stream"));
    router
        .layer(CompressionLayer::new().compress_when(compress))
        // a 503 at a stated capacity is not a server fault: warn, not error
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN)),
        )
        .with_state(state)
}

async fn no_route() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

async fn health(State(s): St) -> Json<serde_json::Value> {
    let (waiting, running) = s.queue.depth();
    Json(json!({
        "status": "ok",
        "model": s.model_name,
        "params": s.config.params,
        "sessions": s.sessions.len(),
        "queue": { "waiting": waiting, "running": running, "capacity": s.config.queue },
        "memory": s.memory_limits(),
    }))
}

async fn contract(State(s): St) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.contract_json.clone(),
    )
        .into_response()
}

async fn create_session(State(s): St) -> Result<Response, ApiError> {
    let st = s.clone();
    let status = blocking(move || st.sessions.create()).await?;
    tracing::info!(session = %status.id, "created");
    Ok((StatusCode::CREATED, Json(status)).into_response())
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(unknown_session(id))
    }
}

async fn session(State(s): St, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    check_id(&id)?;
    Ok(Json(s.sessions.status(&id)?).into_response())
}

async fn delete_session(
    State(s): St,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    check_id(&id)?;
    let st = s.clone();
    blocking(move || st.sessions.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_key(
    State(s): St,
    ApiPath((id, k)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let target = check_id(&id).and_then(|()| {
        let k: usize = k
            .parse()
            .map_err(|_| ApiError::not_found("unknown_key", format!("{k:?} is not a key index")))?;
        Ok((k, s.sessions.key_limit(&id, k)?))
    });
    let (k, limit) = match target {
        Ok(t) => t,
        Err(e) => return Err(refuse(&s, body, e).await),
    };
    let bytes = read_body(&s, &headers, body, limit).await?;
    let st = s.clone();
    let session = id.clone();
    let result = blocking(move || st.sessions.put_key(&session, k, &bytes)).await;
    let counter = if result.is_ok() {
        &s.metrics.keys_accepted
    } else {
        &s.metrics.keys_rejected
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let status = result?;
    if status.keys_missing.is_empty() {
        // the last key: load and derive the session's keys now, while the client encrypts and
        // uploads its image, instead of in its first job
        let st = s.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = st.sessions.preload(&id) {
                tracing::warn!(session = %id, "preloading keys: {e}");
            }
        });
    }
    Ok(Json(status).into_response())
}

async fn submit_job(
    State(s): St,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if let Err(e) = check_id(&id).and_then(|()| s.sessions.check_complete(&id)) {
        return Err(refuse(&s, body, e).await);
    }
    // one input ciphertext per image, concatenated: each has exactly the contract's size
    let (one, max) = (s.contract.input.bytes, s.contract.batch.max);
    let bytes = read_body(&s, &headers, body, one * max).await?;
    let st = s.clone();
    let cts = blocking(move || {
        let spec = &st.contract.input;
        if bytes.is_empty() || bytes.len() % one != 0 {
            // one object of another size says best what is wrong with it (a level, a cut)
            let single = Ciphertext::from_bytes(&st.ctx, &bytes, one * max);
            if let Ok(ct) = &single {
                check_input(ct, spec.level, spec.scale)?;
            }
            return Err(match single {
                Err(e) if bytes.len() < one => wire_error(e),
                _ => ApiError::bad_request(
                    "batch_size",
                    format!(
                        "a job is 1 to {max} input ciphertexts of {one} bytes each, not {} bytes",
                        bytes.len()
                    ),
                ),
            });
        }
        bytes
            .chunks(spec.bytes)
            .map(|chunk| {
                let ct = Ciphertext::from_bytes(&st.ctx, chunk, spec.bytes).map_err(wire_error)?;
                check_input(&ct, spec.level, spec.scale)?;
                Ok(ct)
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await?;
    let images = cts.len();
    s.sessions.touch(&id)?;
    let (job, position) = s.queue.submit(&id, cts).inspect_err(|_| {
        s.metrics
            .jobs_rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })?;
    tracing::info!(session = %id, job = %job, position, images, "queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "job": job,
            "images": images,
            "position": position,
            "events": format!("/api/jobs/{job}/events"),
            "result": format!("/api/jobs/{job}/result"),
        })),
    )
        .into_response())
}

/// An upload refused before its body was read: the body (up to the largest object the contract
/// has) is read and dropped first, so that the client, still sending, receives the reason
/// instead of a reset connection.
async fn refuse(s: &AppState, body: Body, e: ApiError) -> ApiError {
    let cap = s
        .contract
        .keys
        .iter()
        .map(|k| k.bytes)
        .chain([s.contract.input.bytes * s.contract.batch.max])
        .max()
        .unwrap_or(0);
    drain_body(s, body, cap).await;
    e
}

/// The input must be a degree-1 ciphertext at the contract's level and scale.
fn check_input(ct: &Ciphertext, level: usize, scale: f64) -> Result<(), ApiError> {
    if ct.level() != level {
        return Err(ApiError::bad_request(
            "wrong_level",
            format!(
                "the input is at level {}, the contract needs {level}",
                ct.level()
            ),
        ));
    }
    if ct.degree() != 1 || !scales_equal(ct.scale(), scale) {
        return Err(ApiError::bad_request(
            "wrong_scale",
            format!(
                "the input has degree {} and scale 2^{:.2}, the contract needs degree 1 and 2^{:.2}",
                ct.degree(),
                ct.scale().log2(),
                scale.log2()
            ),
        ));
    }
    Ok(())
}

async fn job_events(
    State(s): St,
    ApiPath(id): ApiPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let job = s.queue.job(&id)?;
    let rx = job.subscribe();
    let stream = futures_util::stream::unfold(
        (job, rx, 0usize, false),
        |(job, mut rx, from, finished)| async move {
            if finished {
                return None;
            }
            loop {
                rx.borrow_and_update();
                let events = job.events_from(from);
                if !events.is_empty() {
                    let done = events.iter().any(JobEvent::is_final);
                    let next = from + events.len();
                    let sse: Vec<Result<Event, Infallible>> = events
                        .iter()
                        .map(|e| {
                            Ok(Event::default()
                                .event(e.name())
                                .data(serde_json::to_string(e).unwrap_or_default()))
                        })
                        .collect();
                    return Some((futures_util::stream::iter(sse), (job, rx, next, done)));
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        },
    )
    .flatten();
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn job_result(State(s): St, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    let job = s.queue.job(&id)?;
    if let Some(bytes) = job.result() {
        return Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Body::from(bytes.as_ref().clone()),
        )
            .into_response());
    }
    match job.last_event() {
        Some(JobEvent::Failed { code, error }) if code == "job_lost" => {
            Err(ApiError::new(StatusCode::GONE, "job_lost", error))
        }
        Some(JobEvent::Failed { error, .. }) => {
            Err(ApiError::internal(format!("the job failed: {error}")))
        }
        _ => Err(ApiError::conflict(
            "not_ready",
            "the job has not finished; follow its events",
        )),
    }
}

async fn metrics(State(s): St) -> Response {
    let st = s.clone();
    let text = tokio::task::spawn_blocking(move || {
        let (waiting, running) = st.queue.depth();
        let (disk, memory) = st.sessions.key_bytes();
        st.metrics.render(&Gauges {
            sessions: st.sessions.len(),
            key_bytes_on_disk: disk,
            key_bytes_in_memory: memory,
            queue_depth: waiting,
            running,
            upload_bytes_reserved: st.uploads.reserved_bytes(),
            upload_budget: st.uploads.total_bytes(),
            key_memory_budget: st.config.key_memory,
        })
    })
    .await
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Reads a body of at most `limit` bytes as it streams in: a declared or actual length beyond
/// the limit is refused before more is read. The bytes count against the server's upload
/// memory (a 503 when it stays full), and a body that stalls for `body_idle_timeout` or takes
/// longer than `upload_timeout` in all is cut off with 408, so slow or vanished clients hold
/// neither memory nor a connection for long.
async fn read_body(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        // a near miss is read and dropped so that the client gets the answer, not a reset
        // connection; a body far beyond the limit is not read at all
        if n <= 2 * limit as u64 {
            drain_body(s, body, 2 * limit).await;
        }
        return Err(ApiError::too_large(limit));
    }
    let expect = declared.map_or(limit, |n| n as usize);
    let _permit = match s.uploads.reserve(expect, s.config.upload_wait).await {
        Ok(p) => p,
        Err(e) => {
            s.metrics.uploads_busy.fetch_add(1, Relaxed);
            drain_body(s, body, limit).await;
            return Err(e);
        }
    };
    let _in_flight = InFlight::new(&s.metrics);
    let mut buf = Vec::with_capacity(expect);
    let deadline = tokio::time::Instant::now() + s.config.upload_timeout;
    let mut stream = body.into_data_stream();
    loop {
        let chunk = match next_chunk(s, &mut stream, deadline).await? {
            Some(c) => c,
            None => break,
        };
        let chunk =
            chunk.map_err(|e| ApiError::bad_request("body", format!("reading the body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The next chunk of a body, within the idle and total timeouts.
async fn next_chunk<S: Stream + Unpin>(
    s: &AppState,
    stream: &mut S,
    deadline: tokio::time::Instant,
) -> Result<Option<S::Item>, ApiError> {
    let idle = tokio::time::Instant::now() + s.config.body_idle_timeout;
    match tokio::time::timeout_at(idle.min(deadline), stream.next()).await {
        Ok(item) => Ok(item),
        Err(_) => {
            s.metrics.uploads_timed_out.fetch_add(1, Relaxed);
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "upload_timeout",
                format!(
                    "the upload stalled for {} s or took longer than {} s; send it again",
                    s.config.body_idle_timeout.as_secs(),
                    s.config.upload_timeout.as_secs()
                ),
            ))
        }
    }
}

/// Reads and drops up to `cap` bytes of a body (within the same timeouts), holding no memory.
async fn drain_body(s: &AppState, body: Body, cap: usize) {
    let deadline = tokio::time::Instant::now() + s.config.upload_timeout;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    while let Ok(Some(Ok(chunk))) = next_chunk(s, &mut stream, deadline).await {
        seen += chunk.len();
        if seen > cap {
            break;
        }
    }
}

/// Counts a body being read in `uploads_in_flight`, and stops counting it when dropped: on every
/// path, errors and a client that goes away (the handler's future is dropped) included.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.uploads_in_flight.fetch_add(1, Relaxed);
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.uploads_in_flight.fetch_sub(1, Relaxed);
    }
}

/// Runs CKKS or file work on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a worker stopped: {e}")))?
}
