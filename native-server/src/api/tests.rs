//! The API through real HTTP on an ephemeral port, with the native client code, on a reduced test
//! network (the mini ResNet of `he`'s tests) at the fast test parameters N14_TEST: the flow,
//! every kind of bad input (each a 4xx with a reason, the server serving afterwards), a full
//! queue, and a restart that keeps the session. `tests/api_resnet20.rs` runs the real network.

use std::sync::Arc;
use std::time::Duration;

use blindsight_client::Client;
use blindsight_core::{Encryptor, Plaintext};
use hyper::Method;
use serde_json::Value;

use super::routes::router;
use super::{AppState, ServeConfig};
use crate::he::tests::{mini_resnet, weights};
use crate::plain;
use crate::remote::{Remote, RemoteError, RemoteSession};

struct Server {
    state: Arc<AppState>,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

async fn start(data_dir: &std::path::Path, queue: usize) -> Server {
    let config = ServeConfig {
        params: "N14_TEST".into(),
        data_dir: data_dir.to_path_buf(),
        queue,
        threads: 2,
        ..ServeConfig::default()
    };
    let state = AppState::new(&mini_resnet(true), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state.clone());
    let task = tokio::spawn(async move {
        crate::api::listener::serve(listener, app, Default::default(), std::future::pending())
            .await
            .unwrap();
    });
    Server { state, url, task }
}

impl Server {
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        self.state.queue.stop();
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("blindsight-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The status and code of a failed call.
fn err_of<T: std::fmt::Debug>(r: Result<T, RemoteError>) -> (u16, String) {
    match r {
        Err(RemoteError::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A test image (RGBA, 8x8) and its plaintext label under the mini network.
fn image(client: &Client, seed: u64) -> (Vec<u8>, usize) {
    let px: Vec<u8> = weights(8 * 8 * 4, seed, 1.0)
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i % 4 == 3 {
                255
            } else {
                ((w + 1.0) * 127.0) as u8
            }
        })
        .collect();
    let tensor = client.image_tensor(&px, 8, 8).unwrap();
    let logits = plain::forward(&mini_resnet(true), &tensor).unwrap();
    (px, blindsight_client::argmax(&logits))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_bad_input_full_queue_and_restart() {
    let dir = temp_dir("flow");
    let server = start(&dir, 1).await;
    let remote = Remote::new(&server.url);
    let contract = remote.contract().await.unwrap();
    let client = Client::new(contract.clone()).unwrap();
    let n = contract.keys.len();
    assert!(n >= 2, "rotations and relinearization");

    // unknown sessions and jobs
    let ghost = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        err_of(
            remote
                .send(Method::GET, &format!("/api/sessions/{ghost}"), vec![])
                .await
        ),
        (404, "unknown_session".into())
    );
    assert_eq!(
        err_of(
            remote
                .send(Method::GET, "/api/sessions/../../etc", vec![])
                .await
        )
        .0,
        404
    );
    assert_eq!(
        err_of(
            remote
                .send(Method::GET, "/api/jobs/nope/result", vec![])
                .await
        ),
        (404, "unknown_job".into())
    );
    assert_eq!(
        err_of(remote.send(Method::PATCH, "/api/sessions", vec![]).await),
        (405, "method_not_allowed".into())
    );
    assert_eq!(
        err_of(remote.send(Method::GET, "/api/nothing", vec![]).await),
        (404, "not_found".into())
    );

    let id = remote.create_session().await.unwrap();
    let key0 = client.key_bytes(0).unwrap();
    let put = |k: usize, b: Vec<u8>| {
        let (remote, id) = (&remote, id.clone());
        async move { remote.put_key(&id, k, b).await }
    };
    // a job before the keys: 409 naming them
    let ct = client.encrypt_rgba(&image(&client, 1).0, 8, 8).unwrap();
    match remote.submit(&id, ct.clone()).await {
        Err(RemoteError::Api {
            status: 409,
            code,
            message,
            ..
        }) => {
            assert_eq!(code, "missing_keys");
            assert!(
                message.contains(&format!("{:?}", (0..n).collect::<Vec<_>>())),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // bad keys
    assert_eq!(
        err_of(put(0, key0[..key0.len() / 2].to_vec()).await),
        (400, "truncated".into())
    );
    let mut long = key0.clone();
    long.push(0);
    assert_eq!(err_of(put(0, long).await), (413, "too_large".into()));
    assert_eq!(
        err_of(put(0, vec![0x5a; key0.len()]).await),
        (400, "malformed".into())
    );
    let mut foreign = key0.clone();
    // the header's parameter fingerprint (after magic, version, kind and flags)
    foreign[8] ^= 1;
    assert_eq!(
        err_of(put(0, foreign).await),
        (400, "foreign_parameters".into())
    );
    let other = client.key_bytes(n - 1).unwrap();
    assert_eq!(
        err_of(put(0, other.clone()).await).0 / 100,
        4,
        "key n-1 is not key 0"
    );
    assert_eq!(
        err_of(put(n, key0.clone()).await),
        (404, "unknown_key".into())
    );
    assert_eq!(
        err_of(
            remote
                .send(
                    Method::PUT,
                    &format!("/api/sessions/{id}/keys/x"),
                    key0.clone()
                )
                .await
        )
        .0,
        404
    );
    assert_eq!(
        err_of(remote.put_key(ghost, 0, key0.clone()).await),
        (404, "unknown_session".into())
    );
    // every key
    for k in 0..n {
        let status = put(k, client.key_bytes(k).unwrap()).await.unwrap();
        assert_eq!(status["keys_present"].as_array().unwrap().len(), k + 1);
    }
    let status: Value = remote.session(&id).await.unwrap();
    assert!(status["keys_missing"].as_array().unwrap().is_empty());
    // the last key starts loading (and deriving) the session's keys before any job asks
    let t0 = std::time::Instant::now();
    while server.state.sessions.key_bytes().1 == 0 {
        assert!(t0.elapsed().as_secs() < 60, "the keys were not preloaded");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // bad ciphertexts: truncated, oversized, wrong level
    assert_eq!(
        err_of(remote.submit(&id, ct[..ct.len() - 10].to_vec()).await).0,
        400
    );
    // a job is whole ciphertexts, at most the contract's batch of them
    let max = contract.batch.max;
    assert!(max >= 2, "the mini network batches");
    let mut ragged = ct.clone();
    ragged.extend_from_slice(&[0; 16]);
    assert_eq!(
        err_of(remote.submit(&id, ragged).await),
        (400, "batch_size".into())
    );
    assert_eq!(
        err_of(remote.submit(&id, ct.repeat(max + 1)).await),
        (413, "too_large".into())
    );
    let mut one_bad = ct.repeat(2);
    one_bad[ct.len() + 5] ^= 0xff;
    assert_eq!(err_of(remote.submit(&id, one_bad).await).0, 400);
    let ctx = client.context();
    let low = contract.input.level - 1;
    let pt = Plaintext::encode_real(ctx, &[0.5; 16], low, contract.input.scale).unwrap();
    // an honest encryption one level too low
    let sk = blindsight_core::SecretKey::generate(ctx);
    let sk_ct = Encryptor::new(ctx).encrypt_sk(&pt, &sk).unwrap();
    assert_eq!(
        err_of(remote.submit(&id, sk_ct.to_bytes(ctx).unwrap()).await),
        (400, "wrong_level".into())
    );

    // two images: events in order, label equal to the plaintext model's
    let session = RemoteSession {
        remote: Remote::new(&server.url),
        client,
        id: id.clone(),
    };
    for seed in [1, 2] {
        let (px, want) = image(&session.client, seed);
        let (prediction, events) = session.classify_rgba(&px, 8, 8, |_| {}).await.unwrap();
        assert_eq!(prediction.index, want);
        let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(names[0], "queued");
        assert_eq!(names[1], "started");
        assert_eq!(*names.last().unwrap(), "done");
        let layers: Vec<u64> = events
            .iter()
            .filter(|e| e.event == "layer")
            .map(|e| e.data["index"].as_u64().unwrap())
            .collect();
        let total = events[1].data["layers"].as_u64().unwrap();
        assert_eq!(layers, (1..=total).collect::<Vec<_>>());
    }

    // several images in one job: each gets its plaintext label, from one result ciphertext
    let seeds = [4, 5, 6];
    let pixels: Vec<(Vec<u8>, usize)> = seeds.iter().map(|&s| image(&session.client, s)).collect();
    let images: Vec<(&[u8], u32, u32)> = pixels.iter().map(|(px, _)| (&px[..], 8, 8)).collect();
    let (predictions, events) = session.classify_many(&images, |_| {}).await.unwrap();
    let labels: Vec<usize> = predictions.iter().map(|p| p.index).collect();
    let want: Vec<usize> = pixels.iter().map(|(_, l)| *l).collect();
    assert_eq!(labels, want);
    assert_eq!(events.last().unwrap().event, "done");
    // and a single image after a batch is still a single image's job
    let (prediction, _) = session
        .classify_rgba(&pixels[0].0, 8, 8, |_| {})
        .await
        .unwrap();
    assert_eq!(prediction.index, want[0]);
    assert_eq!(prediction.logits.len(), predictions[0].logits.len());
    for (a, b) in prediction.logits.iter().zip(&predictions[0].logits) {
        assert!(
            (a - b).abs() < 2e-3,
            "{:?} vs {:?}",
            prediction.logits,
            predictions[0].logits
        );
    }

    // a full queue: 503 with Retry-After, the server still serving
    server.state.queue.set_paused(true);
    let ct = session
        .client
        .encrypt_rgba(&image(&session.client, 3).0, 8, 8)
        .unwrap();
    let first = remote.submit(&id, ct.clone()).await.unwrap();
    match remote.submit(&id, ct.clone()).await {
        Err(RemoteError::Api {
            status: 503, code, ..
        }) => assert_eq!(code, "queue_full"),
        other => panic!("{other:?}"),
    }
    server.state.queue.set_paused(false);
    let events = remote.follow(&first, |_| {}).await.unwrap();
    assert_eq!(events.last().unwrap().event, "done");
    let health: Value = serde_json::from_slice(
        &remote
            .send(Method::GET, "/api/health", vec![])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = String::from_utf8(
        remote
            .send(Method::GET, "/metrics", vec![])
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        metrics.contains("blindsight_jobs_total{outcome=\"done\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("blindsight_jobs_total{outcome=\"rejected\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("blindsight_sessions 1"), "{metrics}");

    // a restart keeps the session and its keys
    server.stop().await;
    let server = start(&dir, 1).await;
    let remote = Remote::new(&server.url);
    let status: Value = remote.session(&id).await.unwrap();
    assert!(
        status["keys_missing"].as_array().unwrap().is_empty(),
        "{status}"
    );
    let session = RemoteSession {
        remote,
        client: session.client,
        id: id.clone(),
    };
    let (px, want) = image(&session.client, 4);
    let (prediction, _) = session.classify_rgba(&px, 8, 8, |_| {}).await.unwrap();
    assert_eq!(prediction.index, want);
    // delete: gone from the API and from disk
    session
        .remote
        .send(Method::DELETE, &format!("/api/sessions/{id}"), vec![])
        .await
        .unwrap();
    assert_eq!(
        err_of(
            session
                .remote
                .send(Method::GET, &format!("/api/sessions/{id}"), vec![])
                .await
        )
        .0,
        404
    );
    assert!(!dir.join("sessions").join(&id).exists());
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A session whose last key arrives is loaded ahead of its jobs only into spare memory: with
/// room for one session, the second is left for its first job, which then unloads the first.
#[test]
fn preload_fills_spare_memory_only() {
    let dir = temp_dir("preload");
    let config = ServeConfig {
        params: "N14_TEST".into(),
        data_dir: dir.clone(),
        key_memory: 1,
        ..ServeConfig::default()
    };
    let state = AppState::new(&mini_resnet(true), config).unwrap();
    let client = Client::new((*state.contract).clone()).unwrap();
    let sessions = &state.sessions;
    let (a, b) = (sessions.create().unwrap().id, sessions.create().unwrap().id);
    for id in [&a, &b] {
        for k in 0..state.contract.keys.len() {
            sessions
                .put_key(id, k, &client.key_bytes(k).unwrap())
                .unwrap();
        }
    }
    assert_eq!(sessions.key_bytes().1, 0, "nothing loaded before a preload");
    assert!(sessions.preload(&a).unwrap(), "an empty memory has room");
    let one = sessions.key_bytes().1;
    assert!(one > 0);
    assert!(!sessions.preload(&a).unwrap(), "already loaded");
    assert!(!sessions.preload(&b).unwrap(), "no room beside a");
    assert_eq!(sessions.key_bytes().1, one, "a stays loaded");
    // the job that needs b loads it anyway
    sessions.keys(&b).unwrap();
    assert_eq!(sessions.key_bytes().1, one, "b in place of a");
    state.queue.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cap_and_idle_expiry() {
    let dir = temp_dir("cap");
    let config = ServeConfig {
        params: "N14_TEST".into(),
        data_dir: dir.clone(),
        max_sessions: 2,
        session_ttl: Duration::from_millis(300),
        ..ServeConfig::default()
    };
    let state = AppState::new(&mini_resnet(false), config).unwrap();
    let a = state.sessions.create().unwrap();
    state.sessions.create().unwrap();
    let e = state.sessions.create().unwrap_err();
    assert_eq!(
        (e.status.as_u16(), e.code, e.retry_after.is_some()),
        (503, "too_many_sessions", true)
    );
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        state.sessions.expire(std::slice::from_ref(&a.id)),
        1,
        "the busy one stays"
    );
    assert_eq!(state.sessions.len(), 1);
    state.sessions.create().unwrap();
    state.queue.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_wasm_mime_and_compression() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client as HttpClient;
    use hyper_util::rt::TokioExecutor;

    let dir = temp_dir("web");
    let web = dir.join("web");
    std::fs::create_dir_all(web.join("pkg")).unwrap();
    std::fs::write(
        web.join("index.html"),
        "<!doctype html><title>x</title>".repeat(40),
    )
    .unwrap();
    std::fs::write(web.join("pkg/app_bg.wasm"), b"\0asm\x01\0\0\0".repeat(200)).unwrap();
    let config = ServeConfig {
        params: "N14_TEST".into(),
        data_dir: dir.clone(),
        web_dir: Some(web),
        ..ServeConfig::default()
    };
    let state = AppState::new(&mini_resnet(false), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state.clone());
    let task = tokio::spawn(async move {
        crate::api::listener::serve(listener, app, Default::default(), std::future::pending())
            .await
            .unwrap()
    });
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let get = |path: &str, encoding: &str| {
        let req = hyper::Request::get(format!("{base}{path}"))
            .header("accept-encoding", encoding)
            .body(Empty::new())
            .unwrap();
        http.request(req)
    };
    let res = get("/pkg/app_bg.wasm", "gzip").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/wasm");
    assert_eq!(res.headers()["content-encoding"], "gzip");
    let res = get("/", "gzip").await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    // the API still answers JSON beside the page, and unknown API routes are JSON 404s
    let res = get("/api/nothing", "identity").await.unwrap();
    assert_eq!(res.status(), 404);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    task.abort();
    state.queue.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
