//! A native client of the HTTP API (`blindsight classify --server URL`): the keys and the
//! encryption are made here with the same client code the browser runs, only ciphertexts and
//! public keys go to the server. Plain HTTP/1.1 over hyper; events are read from the
//! server-sent-event stream as they arrive.

use std::time::Duration;

use blindsight_client::{Client, ClientContract, Prediction};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::Value;

/// Why a call to the server failed: its JSON error, or the transport.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("server answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// Seconds, from a 503's `Retry-After`.
        retry_after: Option<u64>,
    },
    #[error("{0}")]
    Transport(String),
    #[error("{0}")]
    Client(#[from] blindsight_client::ClientError),
}

/// One server-sent event: its name and JSON data.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerEvent {
    pub event: String,
    pub data: Value,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct Submitted {
    job: String,
}

/// Times a submission waits out a full queue before giving up.
const BUSY_TRIES: usize = 60;

/// A connection to one server.
pub struct Remote {
    base: String,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl Remote {
    /// `base` like `http://127.0.0.1:8080` (no trailing slash needed).
    pub fn new(base: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: HttpClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, RemoteError> {
        let uri = format!("{}{path}", self.base);
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| RemoteError::Transport(format!("{uri}: {e}")))?;
        let res = self
            .http
            .request(req)
            .await
            .map_err(|e| RemoteError::Transport(format!("{uri}: {e}")))?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status();
        let retry_after = res
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = res
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Err(api_error(status, &body, retry_after))
    }

    /// A request whose whole answer is read.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Bytes, RemoteError> {
        let res = self.call(method, path, body).await?;
        res.into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| RemoteError::Transport(e.to_string()))
    }

    pub async fn contract(&self) -> Result<ClientContract, RemoteError> {
        let body = self.send(Method::GET, "/api/contract", Vec::new()).await?;
        Ok(ClientContract::from_json(&body)?)
    }

    pub async fn create_session(&self) -> Result<String, RemoteError> {
        let body = self.send(Method::POST, "/api/sessions", Vec::new()).await?;
        let c: Created =
            serde_json::from_slice(&body).map_err(|e| RemoteError::Transport(e.to_string()))?;
        Ok(c.id)
    }

    /// The session's status: keys present and missing, expiry.
    pub async fn session(&self, session: &str) -> Result<Value, RemoteError> {
        let body = self
            .send(Method::GET, &format!("/api/sessions/{session}"), Vec::new())
            .await?;
        serde_json::from_slice(&body).map_err(|e| RemoteError::Transport(e.to_string()))
    }

    pub async fn put_key(
        &self,
        session: &str,
        k: usize,
        bytes: Vec<u8>,
    ) -> Result<Value, RemoteError> {
        let body = self
            .send(
                Method::PUT,
                &format!("/api/sessions/{session}/keys/{k}"),
                bytes,
            )
            .await?;
        serde_json::from_slice(&body).map_err(|e| RemoteError::Transport(e.to_string()))
    }

    pub async fn submit(&self, session: &str, ciphertext: Vec<u8>) -> Result<String, RemoteError> {
        let body = self
            .send(
                Method::POST,
                &format!("/api/sessions/{session}/jobs"),
                ciphertext,
            )
            .await?;
        let s: Submitted =
            serde_json::from_slice(&body).map_err(|e| RemoteError::Transport(e.to_string()))?;
        Ok(s.job)
    }

    /// Submits, waiting out 503s (a full queue) as `Retry-After` says, up to `BUSY_TRIES` times;
    /// `on_busy` hears each `Retry-After` (5 when the server gave none).
    pub async fn submit_waiting(
        &self,
        session: &str,
        ct: &[u8],
        mut on_busy: impl FnMut(u64),
    ) -> Result<String, RemoteError> {
        let mut tries = 0;
        loop {
            match self.submit(session, ct.to_vec()).await {
                Err(RemoteError::Api {
                    status: 503,
                    retry_after,
                    ..
                }) if tries < BUSY_TRIES => {
                    tries += 1;
                    let wait = retry_after.unwrap_or(5);
                    on_busy(wait);
                    let wait = wait.clamp(1, 60);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                other => return other,
            }
        }
    }

    /// Follows a job to its end like [`Remote::follow`], connecting again (for up to a minute)
    /// when the stream breaks or the server cannot be reached, as while it restarts.
    pub async fn follow_through(
        &self,
        job: &str,
        progress: &mut impl FnMut(Progress),
    ) -> Result<Vec<ServerEvent>, RemoteError> {
        let mut broken = 0;
        loop {
            match self.follow(job, |e| progress(Progress::Event(e))).await {
                Err(RemoteError::Transport(e)) if broken < 60 => {
                    broken += 1;
                    tracing::debug!("following job {job} again: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => return other,
            }
        }
    }

    /// Follows the job's events until `done` or `failed`, calling `on_event` for each; returns the
    /// events in order.
    pub async fn follow(
        &self,
        job: &str,
        mut on_event: impl FnMut(&ServerEvent),
    ) -> Result<Vec<ServerEvent>, RemoteError> {
        let res = self
            .call(Method::GET, &format!("/api/jobs/{job}/events"), Vec::new())
            .await?;
        let mut body = res.into_body();
        let mut buf = String::new();
        let mut events = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| RemoteError::Transport(e.to_string()))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                if let Some(e) = parse_event(&block) {
                    on_event(&e);
                    let last = e.event == "done" || e.event == "failed";
                    events.push(e);
                    if last {
                        return Ok(events);
                    }
                }
            }
        }
        Err(RemoteError::Transport(
            "the event stream ended before the job did".into(),
        ))
    }

    pub async fn result(&self, job: &str) -> Result<Bytes, RemoteError> {
        self.send(Method::GET, &format!("/api/jobs/{job}/result"), Vec::new())
            .await
    }
}

/// One SSE block (`event:` and `data:` lines); comments and keep-alives give `None`.
fn parse_event(block: &str) -> Option<ServerEvent> {
    let mut event = None;
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    Some(ServerEvent {
        event: event?,
        data: serde_json::from_str(&data).unwrap_or(Value::Null),
    })
}

fn api_error(status: StatusCode, body: &[u8], retry_after: Option<u64>) -> RemoteError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let field = |k: &str| v["error"][k].as_str().unwrap_or_default().to_string();
    RemoteError::Api {
        status: status.as_u16(),
        code: field("code"),
        message: field("message"),
        retry_after,
    }
}

/// Progress of a remote classification, for bars and logs.
pub enum Progress<'a> {
    /// Key `k` of `n` uploaded (`bytes` so far of `total`).
    Key {
        k: usize,
        n: usize,
        bytes: usize,
        total: usize,
    },
    /// A job event.
    Event(&'a ServerEvent),
}

/// A session on a server with every evaluation key uploaded, ready for images.
pub struct RemoteSession {
    pub remote: Remote,
    pub client: Client,
    pub id: String,
}

impl RemoteSession {
    /// Fetches the contract, makes a secret key here, then makes and uploads each evaluation key
    /// in turn (one in memory at a time).
    pub async fn open(base: &str, mut progress: impl FnMut(Progress)) -> Result<Self, RemoteError> {
        let remote = Remote::new(base);
        let contract = remote.contract().await?;
        let client = Client::new(contract)?;
        let id = remote.create_session().await?;
        let (n, total) = (client.contract().keys.len(), client.contract().key_bytes());
        let mut sent = 0;
        for k in 0..n {
            let bytes = tokio::task::block_in_place(|| client.key_bytes(k))?;
            sent += bytes.len();
            remote.put_key(&id, k, bytes).await?;
            progress(Progress::Key {
                k,
                n,
                bytes: sent,
                total,
            });
        }
        Ok(Self { remote, client, id })
    }

    /// Encrypts RGBA pixels, runs the job, decrypts the answer.
    pub async fn classify_rgba(
        &self,
        rgba: &[u8],
        width: u32,
        height: u32,
        mut progress: impl FnMut(Progress),
    ) -> Result<(Prediction, Vec<ServerEvent>), RemoteError> {
        let ct = tokio::task::block_in_place(|| self.client.encrypt_rgba(rgba, width, height))?;
        let (_, events, result) = self.run_job(ct, &mut progress).await?;
        let prediction = tokio::task::block_in_place(|| self.client.decrypt_result(&result))?;
        Ok((prediction, events))
    }

    /// Classifies several images (RGBA, width, height) in one job: one ciphertext each,
    /// uploaded together, one result with every image's logits. At most the contract's
    /// `batch.max` images.
    pub async fn classify_many(
        &self,
        images: &[(&[u8], u32, u32)],
        mut progress: impl FnMut(Progress),
    ) -> Result<(Vec<Prediction>, Vec<ServerEvent>), RemoteError> {
        let body = tokio::task::block_in_place(|| -> Result<Vec<u8>, RemoteError> {
            let mut body = Vec::new();
            for &(rgba, width, height) in images {
                body.extend(self.client.encrypt_rgba(rgba, width, height)?);
            }
            Ok(body)
        })?;
        let (_, events, result) = self.run_job(body, &mut progress).await?;
        let predictions = tokio::task::block_in_place(|| {
            self.client.decrypt_batch_result(&result, images.len())
        })?;
        Ok((predictions, events))
    }

    /// Submits a job's ciphertexts (one per image, concatenated), follows its job to the end and downloads the result: the job id,
    /// its events and the encrypted logits. A full queue is waited out as its `Retry-After`
    /// says; an event stream that breaks (the server restarting) is followed again; a job the
    /// server lost in a restart (`job_lost`, or its result gone) is submitted again, once.
    pub async fn run_job(
        &self,
        ct: Vec<u8>,
        progress: &mut impl FnMut(Progress),
    ) -> Result<(String, Vec<ServerEvent>, Bytes), RemoteError> {
        let mut resubmitted = false;
        loop {
            let job = self.remote.submit_waiting(&self.id, &ct, |_| {}).await?;
            let events = self.remote.follow_through(&job, progress).await?;
            let Some(failed) = events.iter().find(|e| e.event == "failed") else {
                match self.remote.result(&job).await {
                    Ok(result) => return Ok((job, events, result)),
                    Err(RemoteError::Api {
                        status: 404 | 410, ..
                    }) if !resubmitted => {
                        resubmitted = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            let code = failed.data["code"].as_str().unwrap_or("job_failed");
            if code == "job_lost" && !resubmitted {
                resubmitted = true;
                continue;
            }
            return Err(RemoteError::Api {
                status: 500,
                code: code.to_string(),
                message: failed.data["error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                retry_after: None,
            });
        }
    }
}
