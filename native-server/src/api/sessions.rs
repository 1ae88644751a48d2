//! The session store: a session is the evaluation keys one client uploaded for the server's
//! contract. Keys are checked against the contract, written to `data_dir/sessions/{id}/` (to a
//! temporary file, then renamed into place, so a crash never leaves half a key), and loaded into
//! memory only for evaluation, within a stated budget (least recently used sessions are dropped
//! from memory first; their keys stay on disk). A restart finds the sessions again on disk.
//!
//! Cost of one ResNet-20 session: 164 MB on disk (the seeded, bit-packed upload) and, while
//! loaded, the keys' 64-bit form in memory (`EvaluationKeys::memory_bytes`, reported by
//! `/metrics`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use blindsight_client::ClientContract;
use blindsight_core::{Context, EvaluationKeys, Evaluator, SwitchingKey, WireError};
use serde::{Deserialize, Serialize};

use crate::api::error::ApiError;
use crate::he::keys::KeyPlan;

/// A session id: 128 random bits from the OS, in hex.
pub type SessionId = String;

/// What a session's directory says about it (`meta.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    plan_hash: String,
    created_unix: u64,
}

#[derive(Debug, Clone)]
struct Session {
    created: SystemTime,
    last_used: SystemTime,
    /// Which of the contract's keys are stored.
    present: Vec<bool>,
}

/// What `GET /api/sessions/{id}` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionStatus {
    pub id: String,
    pub keys_present: Vec<usize>,
    pub keys_missing: Vec<usize>,
    pub key_bytes: u64,
    pub created_unix: u64,
    /// When the session expires if it stays idle (seconds since the epoch).
    pub expires_unix: u64,
}

/// Limits and places of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub max_sessions: usize,
    pub idle_ttl: Duration,
    /// Bytes of loaded evaluation keys kept in memory at most (at least one session is always
    /// loadable: the job that needs it).
    pub memory_budget: u64,
}

pub struct SessionStore {
    config: StoreConfig,
    ctx: Arc<Context>,
    contract: Arc<ClientContract>,
    /// Which keys are derived from the uploaded ones when a session's keys are loaded.
    key_plan: KeyPlan,
    sessions: Mutex<HashMap<SessionId, Session>>,
    /// Loaded keys, most recently used last.
    loaded: Mutex<Vec<(SessionId, Arc<EvaluationKeys>, u64)>>,
    /// One gate per session: a session's keys are loaded (and derived) once, however many jobs
    /// and preloads ask at the same time.
    loading: Mutex<HashMap<SessionId, Arc<Mutex<()>>>>,
    /// Held by the one preload running: a burst of finished uploads loads one session ahead,
    /// not all of them at once.
    preloading: Mutex<()>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn io_error(what: &str, e: std::io::Error) -> ApiError {
    tracing::error!("{what}: {e}");
    ApiError::internal(format!("{what}: storage error"))
}

impl SessionStore {
    /// Opens the store, restoring every session on disk made for this contract's plan that has
    /// not expired (others are removed).
    pub fn open(
        config: StoreConfig,
        ctx: Arc<Context>,
        contract: Arc<ClientContract>,
        key_plan: KeyPlan,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&config.dir)?;
        let store = Self {
            config,
            ctx,
            contract,
            key_plan,
            sessions: Mutex::new(HashMap::new()),
            loaded: Mutex::new(Vec::new()),
            loading: Mutex::new(HashMap::new()),
            preloading: Mutex::new(()),
        };
        store.restore()?;
        Ok(store)
    }

    fn restore(&self) -> std::io::Result<()> {
        let now = SystemTime::now();
        let mut sessions = self.lock();
        for entry in std::fs::read_dir(&self.config.dir)? {
            let entry = entry?;
            let path = entry.path();
            let Some(id) = path.file_name().and_then(|n| n.to_str()).map(String::from) else {
                continue;
            };
            let meta: Option<Meta> = std::fs::read(path.join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let last_used = entry.metadata()?.modified().unwrap_or(now);
            let idle = now.duration_since(last_used).unwrap_or_default();
            match meta {
                Some(m)
                    if valid_id(&id)
                        && m.plan_hash == self.contract.plan_hash
                        && idle < self.config.idle_ttl
                        && sessions.len() < self.config.max_sessions =>
                {
                    let present = self.restore_keys(&path);
                    let created = UNIX_EPOCH + Duration::from_secs(m.created_unix);
                    tracing::info!(session = %id, "restored from disk");
                    sessions.insert(
                        id,
                        Session {
                            created,
                            last_used,
                            present,
                        },
                    );
                }
                _ => {
                    tracing::info!(path = %path.display(), "removing a stale session directory");
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
        }
        Ok(())
    }

    /// Which keys a restored session has: a key file counts only at its exact size (it was
    /// renamed into place whole); temporaries a crash left mid-write are removed.
    fn restore_keys(&self, dir: &Path) -> Vec<bool> {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                if name.to_string_lossy().ends_with(".tmp") {
                    tracing::info!(path = %e.path().display(), "removing a partial upload");
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        self.contract
            .keys
            .iter()
            .enumerate()
            .map(|(k, spec)| {
                let path = key_path(dir, k);
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() && m.len() == spec.bytes as u64 => true,
                    Ok(_) => {
                        tracing::warn!(path = %path.display(), "removing a key of the wrong size");
                        let _ = std::fs::remove_file(&path);
                        false
                    }
                    Err(_) => false,
                }
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.config.dir.join(id)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new, empty session; 503 when the cap is reached.
    pub fn create(&self) -> Result<SessionStatus, ApiError> {
        let mut sessions = self.lock();
        if sessions.len() >= self.config.max_sessions {
            return Err(ApiError::busy(
                "too_many_sessions",
                format!(
                    "the server holds its maximum of {} sessions; try again when one expires",
                    self.config.max_sessions
                ),
                60,
            ));
        }
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| ApiError::internal(format!("randomness: {e}")))?;
        let id = blindsight_client::hex(&raw);
        let now = SystemTime::now();
        let dir = self.dir(&id);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("creating a session", e))?;
        let meta = Meta {
            plan_hash: self.contract.plan_hash.clone(),
            created_unix: unix(now),
        };
        write_atomically(
            &dir,
            "meta.json",
            &serde_json::to_vec(&meta).unwrap_or_default(),
        )
        .map_err(|e| io_error("creating a session", e))?;
        let session = Session {
            created: now,
            last_used: now,
            present: vec![false; self.contract.keys.len()],
        };
        let status = self.status_of(&id, &session);
        sessions.insert(id, session);
        Ok(status)
    }

    fn status_of(&self, id: &str, s: &Session) -> SessionStatus {
        let (mut present, mut missing) = (Vec::new(), Vec::new());
        let mut key_bytes = 0;
        for (k, &p) in s.present.iter().enumerate() {
            if p {
                present.push(k);
                key_bytes += self.contract.keys[k].bytes as u64;
            } else {
                missing.push(k);
            }
        }
        SessionStatus {
            id: id.to_string(),
            keys_present: present,
            keys_missing: missing,
            key_bytes,
            created_unix: unix(s.created),
            expires_unix: unix(s.last_used + self.config.idle_ttl),
        }
    }

    pub fn status(&self, id: &str) -> Result<SessionStatus, ApiError> {
        let sessions = self.lock();
        let s = sessions.get(id).ok_or_else(|| unknown_session(id))?;
        Ok(self.status_of(id, s))
    }

    /// Marks the session used now (idle expiry counts from here).
    pub fn touch(&self, id: &str) -> Result<(), ApiError> {
        let mut sessions = self.lock();
        let s = sessions.get_mut(id).ok_or_else(|| unknown_session(id))?;
        s.last_used = SystemTime::now();
        // the directory's mtime carries the idle time across restarts
        let _ = std::fs::File::open(self.dir(id)).and_then(|f| f.set_modified(s.last_used));
        Ok(())
    }

    /// The largest body accepted for key `k`, or 404 for an index the contract does not have.
    pub fn key_limit(&self, id: &str, k: usize) -> Result<usize, ApiError> {
        self.status(id)?;
        self.contract
            .keys
            .get(k)
            .map(|spec| spec.bytes)
            .ok_or_else(|| {
                ApiError::not_found(
                    "unknown_key",
                    format!(
                        "no evaluation key {k}: the contract lists {} (0..{})",
                        self.contract.keys.len(),
                        self.contract.keys.len()
                    ),
                )
            })
    }

    /// Checks key `k` against the contract (size, parameter fingerprint, kind, level, every
    /// residue below its prime) and stores it. Blocking: call from a blocking thread.
    pub fn put_key(&self, id: &str, k: usize, bytes: &[u8]) -> Result<SessionStatus, ApiError> {
        let limit = self.key_limit(id, k)?;
        let spec = &self.contract.keys[k];
        let key = SwitchingKey::from_bytes(&self.ctx, bytes, limit).map_err(wire_error)?;
        if key.kind() != spec.kind() || key.level() != spec.level {
            return Err(ApiError::bad_request(
                "wrong_key",
                format!(
                    "key {k} must be {:?} at level {}, got {:?} at level {}",
                    spec.kind(),
                    spec.level,
                    key.kind(),
                    key.level()
                ),
            ));
        }
        if bytes.len() != spec.bytes {
            return Err(ApiError::bad_request(
                "wrong_size",
                format!("key {k} is {} bytes, not {}", bytes.len(), spec.bytes),
            ));
        }
        let dir = self.dir(id);
        write_atomically(&dir, &format!("key-{k}.bin"), bytes)
            .map_err(|e| io_error("storing a key", e))?;
        let mut sessions = self.lock();
        let s = sessions.get_mut(id).ok_or_else(|| unknown_session(id))?;
        s.present[k] = true;
        s.last_used = SystemTime::now();
        let status = self.status_of(id, s);
        drop(sessions);
        // a loaded copy without this key is stale
        self.unload(id);
        Ok(status)
    }

    /// Removes the session, its keys on disk and in memory.
    pub fn delete(&self, id: &str) -> Result<(), ApiError> {
        self.lock().remove(id).ok_or_else(|| unknown_session(id))?;
        self.unload(id);
        self.loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        std::fs::remove_dir_all(self.dir(id)).map_err(|e| io_error("deleting a session", e))
    }

    /// 409 naming the missing keys, if any.
    pub fn check_complete(&self, id: &str) -> Result<(), ApiError> {
        let status = self.status(id)?;
        if !status.keys_missing.is_empty() {
            return Err(ApiError::conflict(
                "missing_keys",
                format!(
                    "the session lacks evaluation keys {:?}; upload them before a job",
                    status.keys_missing
                ),
            ));
        }
        Ok(())
    }

    /// The session's evaluation keys in memory, loading them from disk if needed (and dropping
    /// the least recently used others beyond the budget) and deriving those the client does not
    /// upload. Blocking.
    pub fn keys(&self, id: &str) -> Result<Arc<EvaluationKeys>, ApiError> {
        if let Some(keys) = self.loaded_keys(id) {
            return Ok(keys);
        }
        let gate = self
            .loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        let _once = gate.lock().unwrap_or_else(|e| e.into_inner());
        // loaded by whoever held the gate before us
        if let Some(keys) = self.loaded_keys(id) {
            return Ok(keys);
        }
        self.check_complete(id)?;
        self.make_room();
        let dir = self.dir(id);
        let mut keys = EvaluationKeys::new(&self.ctx);
        for (k, spec) in self.contract.keys.iter().enumerate() {
            let bytes =
                std::fs::read(key_path(&dir, k)).map_err(|e| io_error("reading a key", e))?;
            let key =
                SwitchingKey::from_bytes(&self.ctx, &bytes, spec.bytes).map_err(wire_error)?;
            keys.insert(key)
                .map_err(|e| ApiError::internal(format!("key {k}: {e}")))?;
        }
        self.key_plan
            .derive(&Evaluator::new(&self.ctx), &mut keys)
            .map_err(|e| ApiError::internal(format!("deriving keys: {e}")))?;
        let bytes = keys.iter().map(|k| k.memory_bytes() as u64).sum();
        let keys = Arc::new(keys);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|(s, _, _)| s != id);
        loaded.push((id.to_string(), keys.clone(), bytes));
        let mut total: u64 = loaded.iter().map(|e| e.2).sum();
        while total > self.config.memory_budget && loaded.len() > 1 {
            let (_, _, b) = loaded.remove(0);
            total -= b;
        }
        Ok(keys)
    }

    /// The session's keys if they are loaded, marked most recently used.
    fn loaded_keys(&self, id: &str) -> Option<Arc<EvaluationKeys>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let i = loaded.iter().position(|(s, _, _)| s == id)?;
        let entry = loaded.remove(i);
        let keys = entry.1.clone();
        loaded.push(entry);
        Some(keys)
    }

    /// Loads a complete session's keys before its first job asks (their derivation takes
    /// seconds), but only into spare memory and one session at a time: it unloads no other
    /// session, and skips while another preload runs. Whether it loaded them. Blocking.
    pub fn preload(&self, id: &str) -> Result<bool, ApiError> {
        let Ok(_one) = self.preloading.try_lock() else {
            return Ok(false);
        };
        {
            let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            if loaded.iter().any(|(s, _, _)| s == id) {
                return Ok(false);
            }
            // every session of a contract takes the same memory
            let total: u64 = loaded.iter().map(|e| e.2).sum();
            if loaded
                .last()
                .is_some_and(|e| total + e.2 > self.config.memory_budget)
            {
                return Ok(false);
            }
        }
        self.keys(id).map(|_| true)
    }

    /// Unloads the least recently used sessions until one more fits the budget, before it is
    /// loaded: every session of a contract takes the same memory, so the peak stays within the
    /// budget (or one session, when the budget is smaller than that).
    fn make_room(&self) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let Some(one) = loaded.last().map(|e| e.2) else {
            return;
        };
        let mut total: u64 = loaded.iter().map(|e| e.2).sum();
        while !loaded.is_empty() && total + one > self.config.memory_budget {
            let (_, _, b) = loaded.remove(0);
            total -= b;
        }
    }

    fn unload(&self, id: &str) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|(s, _, _)| s != id);
    }

    /// Bytes of keys on disk and in memory.
    pub fn key_bytes(&self) -> (u64, u64) {
        let disk = {
            let sessions = self.lock();
            sessions
                .iter()
                .map(|(id, s)| self.status_of(id, s).key_bytes)
                .sum::<u64>()
        };
        let memory = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|e| e.2)
            .sum();
        (disk, memory)
    }

    /// Removes sessions idle for longer than the TTL, except those in `busy` (they have jobs).
    pub fn expire(&self, busy: &[String]) -> usize {
        let now = SystemTime::now();
        let expired: Vec<String> = self
            .lock()
            .iter()
            .filter(|(id, s)| {
                now.duration_since(s.last_used).unwrap_or_default() > self.config.idle_ttl
                    && !busy.contains(id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            tracing::info!(session = %id, "expired");
            let _ = self.delete(id);
        }
        expired.len()
    }
}

/// Session ids are 32 lower-case hex digits: nothing else is a path component of ours.
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn unknown_session(id: &str) -> ApiError {
    ApiError::not_found(
        "unknown_session",
        format!("no session {id:?} (it may have expired)"),
    )
}

fn key_path(dir: &Path, k: usize) -> PathBuf {
    dir.join(format!("key-{k}.bin"))
}

/// The wire format's errors, as the client should read them.
pub fn wire_error(e: WireError) -> ApiError {
    let code = match e {
        WireError::Fingerprint => "foreign_parameters",
        WireError::TooLarge { .. } => {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        WireError::Truncated { .. } => "truncated",
        _ => "malformed",
    };
    ApiError::bad_request(code, e.to_string())
}

/// Writes `name` in `dir` through a temporary file and a rename: readers see the old file or
/// the whole new one.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}
