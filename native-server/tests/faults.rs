//! Faults injected into a real `blindsight serve` process (the built binary, on loopback, with
//! the reduced test network `tests/fixtures/mini_resnet` at N14_TEST): slow, stalled, vanishing
//! and oversized uploads; more connections than it serves; SIGKILL mid-upload and mid-job, then
//! a restart; load beyond its queue; expiry and DELETE. Each test asserts what the server
//! promises: an answer with a reason, nothing lost, nothing invented, nothing left behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blindsight_client::Client;
use blindsight_server::load::{self, LoadConfig, LoadImage};
use blindsight_server::model::Model;
use blindsight_server::plain;
use blindsight_server::remote::{Remote, RemoteError, RemoteSession};
use hyper::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One test at a time: each starts servers with timeouts of a second or two, which a machine
/// busy with the others' evaluations would blur.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mini_resnet")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("blindsight-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A `blindsight serve` child process.
struct Server {
    child: Child,
    url: String,
    addr: String,
}

impl Server {
    /// Starts the server on `data_dir` (on `addr`, or a free port) and waits for its URL.
    fn start(data_dir: &Path, addr: Option<&str>, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_blindsight"))
            .args(["serve", "--params", "N14_TEST", "--threads", "2", "--addr"])
            .arg(addr.unwrap_or("127.0.0.1:0"))
            .arg("--model")
            .arg(fixture())
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting blindsight serve");
        let mut out = child.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        use std::io::Read;
        while out.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line).to_string();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .trim_end_matches('/')
            .to_string();
        let addr = url.trim_start_matches("http://").to_string();
        Server { child, url, addr }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    async fn metric(&self, name: &str) -> f64 {
        let body = Remote::new(&self.url)
            .send(Method::GET, "/metrics", Vec::new())
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body).to_string();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An 8x8 RGBA test image (seeded) and the plaintext model's label for it.
fn image(client: &Client, model: &Model, seed: u32) -> (Vec<u8>, usize) {
    let rgba = pixels(seed);
    let tensor = client.image_tensor(&rgba, 8, 8).unwrap();
    let logits = plain::forward(model, &tensor).unwrap();
    (rgba, blindsight_client::argmax(&logits))
}

/// 8x8 opaque RGBA pixels from a seed.
fn pixels(seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..8 * 8 * 4)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 4 == 3 {
                255
            } else {
                (x >> 24) as u8
            }
        })
        .collect()
}

/// Sends `head` (and `body`) on a fresh connection and reads what comes back until the server
/// closes it or `wait` passes: the response text, and whether the connection was closed.
async fn raw(addr: &str, head: &str, body: &[u8], wait: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    read_until_closed(&mut s, wait).await
}

async fn read_until_closed(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
        }
    }
}

/// Files in a session's directory other than its metadata and whole keys.
fn strays(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n != "meta.json" && !(n.starts_with("key-") && n.ends_with(".bin")))
                .collect()
        })
        .unwrap_or_default()
}

async fn keys_present(remote: &Remote, id: &str) -> Vec<usize> {
    let v: Value = remote.session(id).await.unwrap();
    serde_json::from_value(v["keys_present"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_stalled_vanishing_and_oversized_uploads_are_cut_off_and_leave_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir("slow");
    let server = Server::start(
        &dir,
        None,
        &[
            "--header-timeout",
            "1",
            "--body-idle-timeout",
            "1",
            "--upload-timeout",
            "4",
            "--max-connections",
            "4",
        ],
    );
    let remote = Remote::new(&server.url);
    let contract = remote.contract().await.unwrap();
    let client = Client::new(contract.clone()).unwrap();
    let id = remote.create_session().await.unwrap();
    let key0 = client.key_bytes(0).unwrap();
    let put = |len: usize| {
        format!(
            "PUT /api/sessions/{id}/keys/0 HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n"
        )
    };

    // slowloris: headers that never end are cut off by the header timeout
    let t = Instant::now();
    let mut s = TcpStream::connect(&server.addr).await.unwrap();
    s.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let dribble = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                return true;
            }
        }
        false
    });
    assert!(
        dribble.await.unwrap(),
        "the slow headers were never cut off"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // more idle connections than the server serves: the next real request still gets through
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(&server.addr).await.unwrap());
    }
    let t = Instant::now();
    let health = remote.send(Method::GET, "/api/health", Vec::new()).await;
    assert!(health.is_ok(), "{health:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    drop(idle);

    // a body that stalls: 408 once it sends nothing for a second
    let t = Instant::now();
    let (answer, _) = raw(
        &server.addr,
        &put(key0.len()),
        &key0[..4096],
        Duration::from_secs(6),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("upload_timeout"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

    // a body that trickles (never idle for a second): cut off at the 4 s upload timeout
    let t = Instant::now();
    let mut s = TcpStream::connect(&server.addr).await.unwrap();
    s.write_all(put(key0.len()).as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for chunk in key0[..40_000].chunks(500) {
            if wr.write_all(chunk).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), rd.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(8),
        "{took:?}"
    );
    trickle.abort();

    // a client that vanishes mid-upload
    let key0 = client.key_bytes(0).unwrap();
    let mut s = TcpStream::connect(&server.addr).await.unwrap();
    s.write_all(put(key0.len()).as_bytes()).await.unwrap();
    s.write_all(&key0[..key0.len() / 2]).await.unwrap();
    drop(s);

    // oversized: declared far beyond the limit (refused unread), a near miss (read, refused),
    // and a chunked body without a length that runs past it
    let limit = contract.keys[0].bytes;
    let (answer, _) = raw(&server.addr, &put(10 * limit), &[], Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    match remote.put_key(&id, 0, vec![0u8; limit + 10]).await {
        Err(RemoteError::Api { status: 413, .. }) => {}
        other => panic!("a near miss: {other:?}"),
    }
    let mut chunked = format!(
        "PUT /api/sessions/{id}/keys/0 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..(limit / 65536 + 2) {
        chunked.extend_from_slice(b"10000\r\n");
        chunked.extend_from_slice(&[7u8; 65536]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (answer, _) = raw(
        &server.addr,
        std::str::from_utf8(&chunked[..chunked.iter().position(|&b| b == 7).unwrap()]).unwrap(),
        &chunked[chunked.iter().position(|&b| b == 7).unwrap()..],
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // nothing was stored, nothing is held, nothing is left on disk
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(keys_present(&remote, &id).await.is_empty());
    assert_eq!(server.metric("blindsight_uploads_in_flight").await, 0.0);
    assert_eq!(server.metric("blindsight_upload_bytes_reserved").await, 0.0);
    assert!(
        server
            .metric("blindsight_uploads_refused_total{reason=\"timeout\"}")
            .await
            >= 2.0
    );
    let session_dir = dir.join("sessions").join(&id);
    assert_eq!(strays(&session_dir), Vec::<String>::new());

    // and the server serves a whole session afterwards
    for k in 0..contract.keys.len() {
        remote
            .put_key(&id, k, client.key_bytes(k).unwrap())
            .await
            .unwrap();
    }
    let model = Model::from_dir(&fixture()).unwrap();
    let (rgba, label) = image(&client, &model, 1);
    let session = RemoteSession {
        remote: Remote::new(&server.url),
        client,
        id,
    };
    let (prediction, _) = session.classify_rgba(&rgba, 8, 8, |_| {}).await.unwrap();
    assert_eq!(prediction.index, label);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_upload_and_mid_job_the_server_restarts_losing_and_inventing_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir("kill");
    let model = Model::from_dir(&fixture()).unwrap();
    let mut server = Server::start(&dir, None, &["--queue", "3"]);
    let addr = server.addr.clone();
    let remote = Remote::new(&server.url);
    let contract = remote.contract().await.unwrap();
    let client = Client::new(contract.clone()).unwrap();
    let n = contract.keys.len();
    let keys: Vec<Vec<u8>> = (0..n).map(|k| client.key_bytes(k).unwrap()).collect();

    // one whole session, and one whose last key is in flight when the server is killed
    let whole = remote.create_session().await.unwrap();
    for (k, b) in keys.iter().enumerate() {
        remote.put_key(&whole, k, b.clone()).await.unwrap();
    }
    let partial = remote.create_session().await.unwrap();
    for (k, b) in keys.iter().enumerate().take(n - 1) {
        remote.put_key(&partial, k, b.clone()).await.unwrap();
    }
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let last = &keys[n - 1];
    s.write_all(
        format!(
            "PUT /api/sessions/{partial}/keys/{} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            n - 1,
            last.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&last[..last.len() / 2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.kill();
    drop(s);
    // what a kill in the middle of writing a key leaves: its temporary file (the key is written
    // to `.key-K.bin.tmp`, synced, then renamed), placed here because the moment cannot be timed
    let partial_dir = dir.join("sessions").join(&partial);
    std::fs::write(
        partial_dir.join(format!(".key-{}.bin.tmp", n - 1)),
        &last[..1000],
    )
    .unwrap();

    let mut server = Server::start(&dir, Some(&addr), &["--queue", "3"]);
    let remote = Remote::new(&server.url);
    assert_eq!(
        keys_present(&remote, &whole).await,
        (0..n).collect::<Vec<_>>()
    );
    assert_eq!(
        keys_present(&remote, &partial).await,
        (0..n - 1).collect::<Vec<_>>(),
        "the key in flight must not count"
    );
    assert_eq!(strays(&partial_dir), Vec::<String>::new());
    remote.put_key(&partial, n - 1, last.clone()).await.unwrap();
    assert_eq!(
        keys_present(&remote, &partial).await,
        (0..n).collect::<Vec<_>>()
    );

    // jobs accepted, then the server killed before they ran
    let (rgba, label) = image(&client, &model, 7);
    let ct = client.encrypt_rgba(&rgba, 8, 8).unwrap();
    let mut accepted = Vec::new();
    for _ in 0..4 {
        if let Ok(job) = remote.submit(&whole, ct.clone()).await {
            accepted.push(job);
        }
    }
    assert!(accepted.len() >= 3, "{accepted:?}");
    server.kill();
    let mut server = Server::start(&dir, Some(&addr), &["--queue", "3"]);
    let remote = Remote::new(&server.url);
    let mut lost = 0;
    for job in &accepted {
        match remote.follow(job, |_| {}).await {
            Ok(events) => {
                // one answer only: failed, job_lost (it never ran here)
                assert_eq!(events.len(), 1, "{events:?}");
                assert_eq!(events[0].event, "failed");
                assert_eq!(events[0].data["code"], "job_lost");
                match remote.result(job).await {
                    Err(RemoteError::Api {
                        status: 410, code, ..
                    }) => assert_eq!(code, "job_lost"),
                    other => panic!("{other:?}"),
                }
                lost += 1;
            }
            // it finished before the kill, and its result went with the process
            Err(RemoteError::Api { status: 404, .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(lost >= 2, "{lost} of {} jobs reported lost", accepted.len());

    // the native client across a kill: its job is lost, it follows through the restart and
    // sends the image again, and the label is the plaintext one
    for _ in 0..2 {
        remote.submit(&whole, ct.clone()).await.unwrap(); // ahead of it in the queue
    }
    let session = RemoteSession {
        remote: Remote::new(&server.url),
        client,
        id: whole.clone(),
    };
    let (queued, mut first_event) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let r = session
            .classify_rgba(&rgba, 8, 8, |_| {
                let _ = queued.send(());
            })
            .await;
        (r.map(|(p, _)| p.index), session)
    });
    tokio::time::timeout(Duration::from_secs(10), first_event.recv())
        .await
        .expect("the job was never accepted");
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = Server::start(&dir, Some(&addr), &["--queue", "3"]);
    let (got, _session) = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the client gave up")
        .unwrap();
    assert_eq!(got.unwrap(), label);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_beyond_the_queue_and_the_budgets_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir("load");
    let model = Arc::new(Model::from_dir(&fixture()).unwrap());
    // a queue of 2, upload memory for about two keys, key memory for about one session
    let server = Server::start(
        &dir,
        None,
        &[
            "--queue",
            "2",
            "--upload-memory-mb",
            "8",
            "--key-memory-mb",
            "1",
        ],
    );
    let images = (0..3)
        .map(|seed| LoadImage {
            rgba: pixels(77 + seed),
            width: 8,
            height: 8,
        })
        .collect();
    let report = load::run(LoadConfig {
        server: server.url.clone(),
        sessions: 4,
        jobs: 10,
        images,
        model: model.clone(),
    })
    .await
    .unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(report.all_good(), "{report:?}");
    assert_eq!(report.jobs_accepted, 10);
    assert!(
        report.jobs_busy > 0,
        "10 jobs at once never filled a queue of 2"
    );
    assert!(report.retry_after_seen.iter().all(|&s| s > 0));
    let m = &report.memory;
    assert!(m.samples > 0);
    assert!(m.max_upload_bytes_reserved <= m.upload_budget, "{m:?}");
    // one session's keys (uploaded and derived) may exceed the key budget (the job needs them);
    // never two
    let contract = Remote::new(&server.url).contract().await.unwrap();
    let mut keys = Client::new(contract).unwrap().evaluation_keys().unwrap();
    let ctx = blindsight_core::Context::named("N14_TEST").unwrap();
    let (plan, _, _) = blindsight_server::contract::server_contract(&model, &ctx, 1).unwrap();
    plan.keys
        .derive(&blindsight_core::Evaluator::new(&ctx), &mut keys)
        .unwrap();
    let one_session: u64 = keys.iter().map(|k| k.memory_bytes() as u64).sum();
    assert!(
        m.max_key_bytes_in_memory <= m.key_memory_budget.max(one_session),
        "{m:?}"
    );
    assert!(m.max_queue_depth <= 2, "{m:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_delete_remove_keys_from_memory_and_disk() {
    let _serial = SERIAL.lock().await;
    let dir = temp_dir("expiry");
    let model = Model::from_dir(&fixture()).unwrap();
    let server = Server::start(&dir, None, &["--session-ttl", "3"]);
    let sessions_dir = dir.join("sessions");
    let mut ids = Vec::new();
    for seed in 0..2 {
        let session = RemoteSession::open(&server.url, |_| {}).await.unwrap();
        let (rgba, label) = image(&session.client, &model, seed);
        let (p, _) = session.classify_rgba(&rgba, 8, 8, |_| {}).await.unwrap();
        assert_eq!(p.index, label);
        ids.push(session.id.clone());
    }
    assert!(server.metric("blindsight_key_bytes_in_memory").await > 0.0);
    assert!(sessions_dir.join(&ids[0]).is_dir());

    // DELETE: gone from the API, from memory and from disk at once
    let remote = Remote::new(&server.url);
    remote
        .send(
            Method::DELETE,
            &format!("/api/sessions/{}", ids[0]),
            Vec::new(),
        )
        .await
        .unwrap();
    assert!(!sessions_dir.join(&ids[0]).exists());
    match remote.session(&ids[0]).await {
        Err(RemoteError::Api { status: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
    // expiry: the other one goes within 1.5 TTLs of its last use
    let t = Instant::now();
    while sessions_dir.join(&ids[1]).exists() {
        assert!(t.elapsed() < Duration::from_secs(15), "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(remote.session(&ids[1]).await.is_err());
    assert_eq!(server.metric("blindsight_key_bytes_in_memory").await, 0.0);
    assert_eq!(server.metric("blindsight_key_bytes_on_disk").await, 0.0);
    assert_eq!(server.metric("blindsight_sessions").await, 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
