//! The HTTP harness: one server (the reduced test network at N14_TEST, its data in a temporary
//! directory), built once; each input is one request, answered through the router in process.
//!
//! An input is a request in HTTP/1 text form, which mutates well and reads well in a corpus:
//!
//! ```text
//! METHOD TARGET
//! Name: value
//!
//! body bytes
//! ```
//!
//! Lines end in `\n` (a `\r` before it is dropped). `{S}` in the target or a header value stands
//! for the id of a live session, so that inputs reach the handlers behind a session lookup. A
//! request that hyper would refuse before routing (a method, target or header that does not parse)
//! is skipped; `Content-Length`, when given, is set to the body's true length (hyper frames the body
//! by it). The answer must come within [`DEADLINE`], be at most [`MAX_RESPONSE`] bytes (a gzip
//! answer: also once decompressed) and never be a 500 or another 5xx than 503 (at a stated
//! capacity).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use axum::Router;
use blindsight_server::api::routes::router;
use blindsight_server::api::{AppState, ServeConfig};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The server's parameter set.
pub const SERVER_PARAMS: &str = "N14_TEST";
/// Longest answer accepted (the contract, the largest, is a few KB).
pub const MAX_RESPONSE: usize = 1 << 20;
/// Time for one request, answer included.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// What `{S}` becomes before the server is up (tests of the parser alone).
const PLACEHOLDER: &str = "{S}";

struct Server {
    rt: tokio::runtime::Runtime,
    state: Arc<AppState>,
    app: Router,
    /// The live session `{S}` names; made again if a request deleted it.
    session: Mutex<String>,
}

const DIR_PREFIX: &str = "blindsight-fuzz-http-";

/// This process's data directory; those of processes that are gone (on Linux) are removed.
fn data_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX));
            let gone = pid.is_some_and(|pid| {
                cfg!(target_os = "linux") && !std::path::Path::new("/proc").join(pid).exists()
            });
            if gone {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    tmp.join(format!("{DIR_PREFIX}{}", std::process::id()))
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = data_dir();
        let _ = std::fs::remove_dir_all(&dir);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let config = ServeConfig {
            params: SERVER_PARAMS.into(),
            data_dir: dir,
            threads: 1,
            max_sessions: 4,
            ..ServeConfig::default()
        };
        let state = {
            let _guard = rt.enter();
            AppState::new(crate::mini_model(), config).expect("the test server starts")
        };
        let session = state.sessions.create().expect("a session").id;
        Server {
            app: router(state.clone()),
            rt,
            state,
            session: Mutex::new(session),
        }
    })
}

/// Parses an input into a request, `{S}` replaced by `session`; `None` for what hyper would
/// refuse before any handler runs.
pub fn parse_request(data: &[u8], session: &str) -> Option<Request<Body>> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next()?;
    let mut parts = first.splitn(3, |&b| b == b' ');
    let method = Method::from_bytes(parts.next()?).ok()?;
    let target = std::str::from_utf8(parts.next()?).ok()?;
    let uri: Uri = target.replace(PLACEHOLDER, session).parse().ok()?;
    // hyper hands the router an origin-form target only
    if uri.scheme().is_some() || !uri.path().starts_with('/') {
        return None;
    }
    let mut req = Request::builder().method(method).uri(uri);
    let mut has_length = false;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let Ok(name) = HeaderName::from_bytes(&line[..colon]) else {
            continue;
        };
        if name == header::CONTENT_LENGTH {
            has_length = true;
            continue;
        }
        let value =
            String::from_utf8_lossy(line[colon + 1..].trim_ascii()).replace(PLACEHOLDER, session);
        if let Ok(value) = HeaderValue::from_str(&value) {
            req = req.header(name, value);
        }
    }
    if has_length {
        req = req.header(header::CONTENT_LENGTH, body.len());
    }
    req.body(Body::from(body.to_vec())).ok()
}

/// What one request got.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

pub fn http(data: &[u8]) {
    let s = server();
    let session = s.session.lock().unwrap().clone();
    let Some(req) = parse_request(data, &session) else {
        return;
    };
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let answer = s.rt.block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let res = s.app.clone().oneshot(req).await.expect("infallible");
            let status = res.status();
            let gzip = res
                .headers()
                .get(header::CONTENT_ENCODING)
                .is_some_and(|v| v == "gzip");
            let body = http_body_util::Limited::new(res.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec());
            (status, gzip, body)
        })
        .await
    });
    let Ok((status, gzip, body)) = answer else {
        panic!("{method} {path}: no complete answer within {DEADLINE:?}");
    };
    let mut body = body.unwrap_or_else(|e| {
        panic!("{method} {path}: answer over {MAX_RESPONSE} bytes or broken: {e}")
    });
    // (an answer to HEAD carries the headers of the GET, gzip included, and no body)
    if gzip && method != Method::HEAD {
        use std::io::Read;
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut plain)
            .unwrap_or_else(|e| panic!("{method} {path}: a broken gzip answer: {e}"));
        assert!(
            plain.len() <= MAX_RESPONSE,
            "{method} {path}: answer over {MAX_RESPONSE} bytes"
        );
        body = plain;
    }
    let answer = Answer { status, body };
    assert!(
        !answer.status.is_server_error() || answer.status == StatusCode::SERVICE_UNAVAILABLE,
        "{method} {path}: {} {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    // every refusal of the API says why, in its JSON format (`{"error": {"code", "message"}}`);
    // an answer to HEAD has no body by definition
    if path.starts_with("/api/") && !answer.status.is_success() && method != Method::HEAD {
        let v: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: {} without a JSON error ({e}): {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )
        });
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{method} {path}: {} {v}",
            answer.status
        );
    }
    tidy(s, &session, &method, &path, &answer);
}

/// Keeps the server's state bounded across inputs: sessions a request made are deleted, and the
/// session `{S}` names exists again if a request deleted it.
fn tidy(s: &Server, session: &str, method: &Method, path: &str, answer: &Answer) {
    if answer.status == StatusCode::CREATED && method == Method::POST {
        let made = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v["id"].as_str().map(String::from));
        match made {
            Some(id) => s.state.sessions.delete(&id).expect("a new session deletes"),
            None => panic!("POST {path}: 201 without a session id"),
        }
    }
    if s.state.sessions.status(session).is_err() {
        let id = s.state.sessions.create().expect("a session").id;
        *s.session.lock().unwrap() = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_text() {
        let req = parse_request(
            b"PUT /api/sessions/{S}/keys/0 HTTP/1.1\r\nContent-Length: 99\nX-A: {S}\n\nbody",
            "abc",
        )
        .unwrap();
        assert_eq!(req.method(), Method::PUT);
        assert_eq!(req.uri().path(), "/api/sessions/abc/keys/0");
        assert_eq!(req.headers()["x-a"], "abc");
        assert_eq!(req.headers()[header::CONTENT_LENGTH], "4");
        assert!(parse_request(b"GET", "abc").is_none());
        assert!(parse_request(b"G\x01T / x", "abc").is_none());
        assert!(parse_request(b"GET http://h/ x", "abc").is_none());
        assert!(parse_request(b"GET * x", "abc").is_none());
    }
}
