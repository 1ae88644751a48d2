// Blindsight's module Web Worker: everything slow or secret happens here, so the page never
// freezes and the secret key never reaches the page's JavaScript.
//
// - The secret key is made inside wasm memory (WasmClient). Its only copy outside wasm is the
//   page's own IndexedDB, so a reload resumes the session without new keys; "forget my keys"
//   deletes the session on the server and that copy.
// - Evaluation keys are made one at a time and uploaded (PUT /api/sessions/{id}/keys/{k}); the
//   next key is made while the previous one uploads, so at most two are in memory, never all.
// - Images (RGBA pixels from the page, up to the contract's batch.max at once) are encrypted, one
//   ciphertext each, uploaded as one job, followed live through server-sent events, and the one
//   encrypted result (every image's logits) is downloaded and decrypted here.
//
// Messages in:  {type: 'start'}, {type: 'classify', job, images: [{name, rgba, width, height}]},
//               {type: 'forget'}
// Messages out: {type: 'session', state, ...}, {type: 'step', job, step, ...}, {type: 'notice', ...},
//               {type: 'result', job, ...}, {type: 'error', job?, code, message}

import init, { WasmClient } from './pkg/blindsight_wasm_client.js';

const DB_NAME = 'blindsight';
const STORE = 'session';
const RECORD = 'current';

/** A failure with a code the page can act on and a message a person can read. */
class Failure extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** A run that a newer one replaced (another image picked, or the keys forgotten). */
class Superseded extends Error {}

let wasm = null; // the module's exports (its memory, for the memory gauge)
let contractText = null;
let contract = null;
let client = null;
let session = null; // the server's session status
let ready = null; // a promise: the session exists and all its keys are uploaded
let keysReady = false; // ... and it has resolved
let generation = 0; // bumped by every new image and by "forget": older image runs stop
let epoch = 0; // bumped by "forget": the session being set up stops
let peakWasmBytes = 0;

const post = (msg) => self.postMessage(msg);
const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// the last key setup's numbers, for the result's table
let lastKeys = null;
let keySetups = 0; // how many key setups made at least one key

function wasmBytes() {
  const bytes = wasm ? wasm.memory.buffer.byteLength : 0;
  peakWasmBytes = Math.max(peakWasmBytes, bytes);
  return bytes;
}

// ---------------------------------------------------------------- the network

/** fetch, with the network failure said plainly and JSON errors turned into Failures. */
async function request(path, options = {}, { accept = [] } = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch {
    throw new Failure(
      'unreachable',
      `The Blindsight server at ${self.location.origin} cannot be reached. Check that it is running, then try again.`,
    );
  }
  if (response.ok || accept.includes(response.status)) return response;
  let code = `http_${response.status}`;
  let message = `The server answered ${response.status} ${response.statusText}.`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not JSON: keep the status line
  }
  const failure = new Failure(code, message);
  failure.status = response.status;
  failure.retryAfter = Number(response.headers.get('Retry-After')) || 0;
  throw failure;
}

/** Waits out a 503 (queue full, too many sessions), telling the page, then tries again. */
async function withRetry(what, check, attempt) {
  for (;;) {
    try {
      return await attempt();
    } catch (e) {
      if (!(e instanceof Failure) || e.status !== 503) throw e;
      const wait = Math.max(1, e.retryAfter || 10);
      for (let left = wait; left > 0; left--) {
        check();
        post({
          type: 'notice',
          kind: 'wait',
          code: e.code,
          message: `${busyText(e.code, what)} Trying again in ${left} s.`,
        });
        await sleep(1000);
      }
      check();
      post({ type: 'notice', kind: 'clear' });
    }
  }
}

function busyText(code, what) {
  if (code === 'queue_full') return 'The server’s queue is full (other images are waiting).';
  if (code === 'too_many_sessions') return 'The server holds as many sessions as it can right now.';
  return `The server is busy (${what}).`;
}

/** Throws Superseded once image run `gen` is replaced. */
const jobCheck = (gen) => () => {
  if (gen !== generation) throw new Superseded();
};
/** Throws Superseded once the session being set up in `e` is forgotten. */
const epochCheck = (e) => () => {
  if (e !== epoch) throw new Superseded();
};

// ---------------------------------------------------------------- IndexedDB (the page's own)

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function dbDo(mode, fn) {
  try {
    const db = await openDb();
    try {
      return await new Promise((resolve, reject) => {
        const tx = db.transaction(STORE, mode);
        const req = fn(tx.objectStore(STORE));
        tx.oncomplete = () => resolve(req.result);
        tx.onerror = () => reject(tx.error);
        tx.onabort = () => reject(tx.error);
      });
    } finally {
      db.close();
    }
  } catch (e) {
    // private browsing and the like: no resume, but everything else works
    console.warn('IndexedDB unavailable:', e);
    return undefined;
  }
}

const loadRecord = () => dbDo('readonly', (s) => s.get(RECORD));
const saveRecord = (record) => dbDo('readwrite', (s) => s.put(record, RECORD));
const clearRecord = () => dbDo('readwrite', (s) => s.delete(RECORD));

// ---------------------------------------------------------------- the session and its keys

async function loadContract() {
  if (!wasm) wasm = await init();
  if (contractText) return;
  const response = await request('/api/contract');
  contractText = await response.text();
  contract = JSON.parse(contractText);
  post({
    type: 'contract',
    model: contract.model,
    params: contract.params.name,
    classes: contract.classes,
    inputBytes: contract.input.bytes,
    outputBytes: contract.output.bytes,
    keyCount: contract.keys.length,
    keyBytes: contract.keys.reduce((n, k) => n + k.bytes, 0),
    imageWidth: contract.image.width,
    imageHeight: contract.image.height,
    batchMax: contract.batch ? contract.batch.max : 1,
  });
}

function dropClient() {
  if (client) client.free(); // zeroizes the secret key in wasm memory
  client = null;
  session = null;
}

function publishSession(state, extra = {}) {
  post({
    type: 'session',
    state,
    id: session ? session.id : null,
    expiresUnix: session ? session.expires_unix : null,
    keysPresent: session ? session.keys_present.length : 0,
    ...extra,
  });
}

/** Resumes the stored session if the server still has it, else makes a new one. */
async function openSession(check) {
  await loadContract();
  check();
  if (client && session) {
    // still ours? (it may have expired while the page sat idle)
    const r = await request(`/api/sessions/${session.id}`, {}, { accept: [404] });
    if (r.status === 200) {
      session = await r.json();
      return;
    }
    dropClient();
    await clearRecord();
    post({
      type: 'notice',
      kind: 'info',
      message: 'Your session had expired on the server, so a new one was made with new keys.',
    });
  }
  const stored = await loadRecord();
  if (stored && !client) {
    if (stored.planHash !== contract.plan_hash) {
      await request(`/api/sessions/${stored.id}`, { method: 'DELETE' }, { accept: [404] }).catch(
        () => {},
      );
      await clearRecord();
      post({
        type: 'notice',
        kind: 'info',
        message: 'The server’s model changed since your last visit, so a new session was made with new keys.',
      });
    } else {
      const r = await request(`/api/sessions/${stored.id}`, {}, { accept: [404] });
      if (r.status === 200) {
        session = await r.json();
        client = WasmClient.fromSecretKey(contractText, stored.secretKey.slice());
        const since = new Date(stored.createdUnix * 1000).toLocaleTimeString();
        const missing = session.keys_missing.length;
        post({
          type: 'notice',
          kind: 'info',
          message: missing
            ? `Resumed your session from ${since}: ${missing} of its ${contract.keys.length} keys were not uploaded yet and are made now.`
            : `Resumed your session from ${since}: its keys are reused, none are made again.`,
        });
        return;
      }
      await clearRecord();
      post({
        type: 'notice',
        kind: 'info',
        message: 'Your previous session has expired on the server (or it was restarted without it), so a new one was made with new keys.',
      });
    }
  }
  check();
  client = new WasmClient(contractText);
  const r = await withRetry('sessions', check, () => request('/api/sessions', { method: 'POST' }));
  session = await r.json();
  const secretKey = client.exportSecretKey();
  await saveRecord({
    id: session.id,
    planHash: contract.plan_hash,
    secretKey,
    createdUnix: session.created_unix,
    expiresUnix: session.expires_unix,
  });
  secretKey.fill(0);
}

/** Makes and uploads every key the server lacks, one at a time (the next made while one uploads). */
async function uploadKeys(check) {
  const setupStart = now();
  const missing = session.keys_missing.slice();
  const total = contract.keys.length;
  const totalBytes = missing.reduce((n, k) => n + contract.keys[k].bytes, 0);
  const skipped = total - missing.length;
  const keygen = { made: 0, bytes: 0, seconds: 0 };
  const upload = { sent: 0, bytes: 0, seconds: 0, start: 0 };
  const stepMsg = (step, o) => post({ type: 'step', step, ...o, wasmBytes: wasmBytes() });
  if (missing.length === 0) {
    stepMsg('keygen', { state: 'skipped', detail: `reused: all ${total} keys are on the server` });
    stepMsg('keyupload', { state: 'skipped', detail: 'nothing to upload' });
    return;
  }
  publishSession('keys');
  const note = skipped ? ` (${skipped} already on the server)` : '';
  stepMsg('keygen', { state: 'running', fraction: 0, detail: `0 of ${missing.length} keys${note}` });
  stepMsg('keyupload', { state: 'waiting', fraction: 0 });
  let pending = null;
  const send = async (k, bytes) => {
    const t0 = now();
    if (!upload.start) upload.start = t0;
    await request(`/api/sessions/${session.id}/keys/${k}`, {
      method: 'PUT',
      headers: { 'Content-Type': 'application/octet-stream' },
      // A Blob, not the array: Chromium sends a Blob body from the browser process, an array
      // body through the renderer's upload pipe, 4-6x slower (a 28 MB key: 0.14-0.22 s as a Blob,
      // 0.8-0.9 s as an array; headless Chromium on the 2-core VM).
      body: new Blob([bytes]),
    });
    upload.seconds += (now() - t0) / 1000;
    upload.sent += 1;
    upload.bytes += bytes.length;
    const wall = (now() - upload.start) / 1000;
    stepMsg('keyupload', {
      state: upload.sent === missing.length ? 'done' : 'running',
      fraction: upload.bytes / totalBytes,
      bytes: upload.bytes,
      seconds: wall,
      rate: upload.bytes / Math.max(upload.seconds, 1e-3),
      detail: `${upload.sent} of ${missing.length} keys`,
    });
  };
  try {
    for (const k of missing) {
      check();
      const t0 = now();
      const bytes = client.makeKey(k);
      const dt = (now() - t0) / 1000;
      keygen.made += 1;
      keygen.bytes += bytes.length;
      keygen.seconds += dt;
      stepMsg('keygen', {
        state: keygen.made === missing.length ? 'done' : 'running',
        fraction: keygen.bytes / totalBytes,
        bytes: keygen.bytes,
        seconds: keygen.seconds,
        perKey: keygen.seconds / keygen.made,
        detail: `${keygen.made} of ${missing.length} keys${note}`,
      });
      if (pending) await pending;
      check();
      pending = send(k, bytes);
      // let the upload start and the page hear from us before the next key is made
      await sleep(0);
    }
    if (pending) await pending;
  } catch (e) {
    if (pending) await pending.catch(() => {});
    throw e;
  }
  const r = await request(`/api/sessions/${session.id}`);
  session = await r.json();
  keySetups += 1;
  lastKeys = {
    made: keygen.made,
    bytes: keygen.bytes,
    keygenSeconds: keygen.seconds,
    perKeySeconds: keygen.seconds / keygen.made,
    uploadSeconds: upload.seconds,
    uploadWallSeconds: (now() - upload.start) / 1000,
    wallSeconds: (now() - setupStart) / 1000,
  };
  post({ type: 'keys', ...lastKeys });
}

/** The session exists on the server with all its keys. Concurrent callers share the work. */
function ensureReady() {
  if (!ready) {
    const check = epochCheck(epoch);
    const promise = (async () => {
      publishSession('opening');
      await openSession(check);
      check();
      await uploadKeys(check);
      check();
      keysReady = true;
      publishSession('ready');
    })();
    ready = promise;
    promise.catch((e) => {
      if (ready === promise) ready = null;
      if (e instanceof Superseded) return;
      publishSession('error', { message: readable(e) });
    });
  }
  return ready;
}

// ---------------------------------------------------------------- one image

/** Follows the job's server-sent events until done or failed (reconnecting if dropped). */
async function follow(jobUrl, check, onEvent) {
  let seen = 0;
  for (let attempt = 0; ; attempt++) {
    check();
    let response;
    try {
      response = await request(jobUrl, { headers: { Accept: 'text/event-stream' } });
    } catch (e) {
      if (attempt < 2 && e.code === 'unreachable') {
        await sleep(1000);
        continue;
      }
      throw e;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let index = 0;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        check();
        buffer += value.replace(/\r\n?/g, '\n');
        let cut;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let name = 'message';
          let data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) name = line.slice(6).trim();
            else if (line.startsWith('data:')) data += line.slice(5).trimStart();
          }
          if (!data) continue; // a keep-alive comment
          index += 1;
          if (index <= seen) continue; // replayed after a reconnect
          seen = index;
          const event = JSON.parse(data);
          if (onEvent(name, event)) {
            reader.cancel().catch(() => {});
            return event;
          }
        }
      }
    } catch (e) {
      if (e instanceof Superseded || e instanceof Failure) {
        reader.cancel().catch(() => {});
        throw e;
      }
      // the stream broke: try again below
    }
    if (attempt >= 2) {
      throw new Failure(
        'unreachable',
        'The connection to the server was lost while it evaluated your image. Check that it is running, then try again.',
      );
    }
    await sleep(1000);
  }
}

/** One job of one or more images (`images`: `{ name, rgba, width, height }`, at most the
 * contract's `batch.max`): each is encrypted, the ciphertexts go up together, and the one result
 * holds every image's logits. */
async function classify({ job, images }) {
  const name = images[0].name; // the job's first image (all of them are in the result)
  const gen = ++generation;
  const t0 = now();
  const steps = {};
  const step = (s, o) => {
    steps[s] = { ...(steps[s] || {}), ...o };
    post({ type: 'step', job, step: s, ...o, wasmBytes: wasmBytes() });
  };
  const check = jobCheck(gen);
  try {
    // keys first: for a first image this waits for them to be made and uploaded; later, it
    // checks that the server still has the session (it may have expired while the page sat idle)
    const reusedKeys = keysReady;
    const setupsBefore = keySetups;
    if (keysReady) {
      const r = await request(`/api/sessions/${session.id}`, {}, { accept: [404] });
      const status = r.status === 200 ? await r.json() : null;
      if (status) session = status;
      if (!status || status.keys_missing.length) {
        keysReady = false;
        ready = null;
      }
    }
    check();
    await ensureReady();
    check();
    const max = contract.batch ? contract.batch.max : 1;
    if (images.length > max) {
      throw new Failure('batch_size', `The server takes at most ${max} images in one job; pick fewer.`);
    }
    const keysThisImage = keySetups !== setupsBefore || !reusedKeys;
    if (!keysThisImage) {
      const n = contract.keys.length;
      step('keygen', { state: 'skipped', detail: `reused: all ${n} keys are on the server already` });
      step('keyupload', { state: 'skipped', detail: 'reused: only the encrypted image goes up' });
    }

    for (let tries = 0; ; tries++) {
      // encrypt, one ciphertext per image
      step('encrypt', { state: 'running', fraction: 0 });
      await sleep(0);
      const e0 = now();
      const parts = [];
      for (const [i, im] of images.entries()) {
        parts.push(client.encryptRgba(im.rgba, im.width, im.height));
        step('encrypt', { state: 'running', fraction: (i + 1) / images.length });
        await sleep(0);
        check();
      }
      const encryptSeconds = (now() - e0) / 1000;
      const ciphertext = new Blob(parts);
      const first = images[0];
      step('encrypt', {
        state: 'done',
        fraction: 1,
        seconds: encryptSeconds,
        bytes: ciphertext.size,
        detail:
          images.length === 1
            ? `${first.width}×${first.height} → ${contract.image.width}×${contract.image.height}, normalized, packed`
            : `${images.length} images → ${contract.image.width}×${contract.image.height} each, normalized, packed: one ciphertext each`,
      });

      // upload
      step('upload', { state: 'running', fraction: 0, bytes: 0 });
      const u0 = now();
      let submitted;
      try {
        submitted = await withRetry('jobs', check, () =>
          request(`/api/sessions/${session.id}/jobs`, {
            method: 'POST',
            headers: { 'Content-Type': 'application/octet-stream' },
            body: ciphertext,
          }),
        );
      } catch (e) {
        if (!(e instanceof Failure) || tries > 0) throw e;
        if (e.code === 'unknown_session') {
          // expired between the check and the upload: a new session, then the image again
          dropClient();
          ready = null;
          await clearRecord();
          post({
            type: 'notice',
            kind: 'info',
            message: 'Your session expired on the server, so a new one is being made with new keys.',
          });
          await ensureReady();
          continue;
        }
        if (e.code === 'missing_keys') {
          const r = await request(`/api/sessions/${session.id}`);
          session = await r.json();
          ready = null;
          await ensureReady();
          continue;
        }
        throw e;
      }
      const uploadSeconds = (now() - u0) / 1000;
      const accepted = await submitted.json();
      step('upload', {
        state: 'done',
        fraction: 1,
        seconds: uploadSeconds,
        bytes: ciphertext.size,
        rate: ciphertext.size / Math.max(uploadSeconds, 1e-3),
      });
      check();

      // evaluate, live
      const v0 = now();
      step('evaluate', {
        state: 'running',
        fraction: 0,
        detail: accepted.position > 0 ? `queued: ${accepted.position} ahead` : 'queued',
      });
      let layers = 0;
      let serverSeconds = 0;
      const ticker = setInterval(() => step('evaluate', { seconds: (now() - v0) / 1000 }), 500);
      await follow(accepted.events, check, (name, ev) => {
        const elapsed = (now() - v0) / 1000;
        if (name === 'queued') {
          step('evaluate', {
            state: 'running',
            seconds: elapsed,
            detail: ev.position > 0 ? `queued: ${ev.position} ahead` : 'queued: next',
          });
        } else if (name === 'started') {
          layers = ev.layers;
          step('evaluate', { state: 'running', fraction: 0, seconds: elapsed, detail: `0 of ${layers} layers` });
        } else if (name === 'layer') {
          layers = ev.layers;
          step('evaluate', {
            state: 'running',
            fraction: ev.index / ev.layers,
            seconds: elapsed,
            detail: `layer ${ev.index} of ${ev.layers}: ${ev.name} (${ev.seconds.toFixed(2)} s)`,
            layer: { index: ev.index, name: ev.name, seconds: ev.seconds },
          });
        } else if (name === 'done') {
          serverSeconds = ev.seconds;
          step('evaluate', {
            state: 'done',
            fraction: 1,
            seconds: elapsed,
            serverSeconds: ev.seconds,
            detail: `${layers} layers, ${ev.seconds.toFixed(1)} s on the server`,
          });
          return true;
        } else if (name === 'failed' && ev.code === 'job_lost') {
          throw new Failure('job_lost', 'The server restarted before your image was done. Your keys are still there: press Try again to send the image again.');
        } else if (name === 'failed') {
          throw new Failure('job_failed', `The server could not evaluate the image: ${ev.error}`);
        }
        return false;
      }).finally(() => clearInterval(ticker));
      check();

      // download
      step('download', { state: 'running', fraction: 0, bytes: 0 });
      const d0 = now();
      const response = await request(accepted.result);
      const expected = Number(response.headers.get('Content-Length')) || contract.output.bytes;
      const result = new Uint8Array(expected);
      let got = 0;
      const reader = response.body.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (got + value.length > result.length) throw new Failure('bad_result', 'The server’s result is larger than the contract says.');
        result.set(value, got);
        got += value.length;
        step('download', { state: 'running', fraction: got / expected, bytes: got });
      }
      const downloadSeconds = (now() - d0) / 1000;
      step('download', {
        state: 'done',
        fraction: 1,
        bytes: got,
        seconds: downloadSeconds,
        rate: got / Math.max(downloadSeconds, 1e-3),
      });
      check();

      // decrypt
      step('decrypt', { state: 'running', fraction: 0 });
      await sleep(0);
      const c0 = now();
      const predictions = client.decryptBatchResult(result.subarray(0, got), images.length);
      const decryptSeconds = (now() - c0) / 1000;
      step('decrypt', { state: 'done', fraction: 1, seconds: decryptSeconds });
      const prediction = predictions[0];

      post({
        type: 'result',
        job,
        name,
        label: prediction.label,
        index: prediction.index,
        probabilities: prediction.probabilities,
        logits: prediction.logits,
        // every image of the job, in the order picked
        images: predictions.map((p, i) => ({
          name: images[i].name,
          label: p.label,
          index: p.index,
          probabilities: p.probabilities,
          logits: p.logits,
        })),
        classes: contract.classes,
        seconds: (now() - t0) / 1000,
        serverSeconds,
        steps,
        keys: lastKeys,
        keysThisImage,
        wasmBytes: wasmBytes(),
        peakWasmBytes,
        session: { id: session.id, expiresUnix: session.expires_unix },
      });
      publishSession('ready');
      return;
    }
  } catch (e) {
    if (e instanceof Superseded) return;
    post({ type: 'error', job, code: e.code || 'client', message: readable(e) });
  }
}

function readable(e) {
  if (e instanceof Failure) return e.message;
  const message = e && e.message ? e.message : String(e);
  return `Something went wrong in the browser: ${message}`;
}

// ---------------------------------------------------------------- forget

async function forget() {
  generation += 1;
  epoch += 1;
  ready = null;
  keysReady = false;
  const stored = await loadRecord();
  const ids = new Set([session && session.id, stored && stored.id].filter(Boolean));
  dropClient();
  await clearRecord();
  let serverForgot = true;
  for (const id of ids) {
    try {
      await request(`/api/sessions/${id}`, { method: 'DELETE' }, { accept: [404] });
    } catch {
      serverForgot = false;
    }
  }
  post({ type: 'forgotten', serverForgot, sessions: ids.size });
  publishSession('none');
}

// ---------------------------------------------------------------- messages

self.onmessage = async ({ data }) => {
  if (data.type === 'start') {
    try {
      await ensureReady();
    } catch (e) {
      if (e instanceof Superseded) return;
      post({ type: 'error', code: e.code || 'client', message: readable(e), during: 'start' });
    }
  } else if (data.type === 'classify') {
    await classify(data);
  } else if (data.type === 'forget') {
    await forget();
  }
};
