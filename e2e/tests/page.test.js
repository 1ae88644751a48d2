// The page, end to end, in headless Chromium against a real server: an image goes in, the
// plaintext model's label comes out; a second image sends only its ciphertext; the secret key
// never leaves the page; reload, expiry, "forget my keys"; unreadable images, a full queue and a
// stopped server give readable messages.

import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { launch } from '../lib/browser.js';
import {
  ARTIFACTS,
  URL,
  captureRequests,
  recordingProxy,
  cifarPng,
  corruptPng,
  mb,
  pickAndWait,
  plaintextLabel,
  startServer,
  storedSession,
} from '../lib/helpers.js';

const VIEWPORT = { width: 1200, height: 1000 };
const measured = {};

// the tests' own server (one they stop), planning while the first tests run
const stoppable = startServer(['--queue', '0']);

const keyPuts = (reqs) => reqs.filter((r) => r.method === 'PUT' && /\/api\/sessions\/[^/]+\/keys\//.test(r.url));
const jobPosts = (reqs) => reqs.filter((r) => r.method === 'POST' && /\/api\/sessions\/[^/]+\/jobs$/.test(r.url));
const sessionPosts = (reqs) => reqs.filter((r) => r.method === 'POST' && /\/api\/sessions$/.test(r.url));
const sentBytes = (reqs) => reqs.reduce((n, r) => n + (r.body ? r.body.length : 0), 0);

async function shot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

async function notice(page, pattern, timeout = 60_000) {
  await page.waitForFunction(
    ([source, flags]) => {
      const n = document.querySelector('[data-testid=notice]');
      return n && !n.hidden && new RegExp(source, flags).test(n.textContent);
    },
    [pattern.source, pattern.flags],
    { timeout },
  );
  return page.textContent('[data-testid=notice]');
}

const sessionReady = (page, timeout = 180_000) =>
  page.waitForSelector('[data-testid=session][data-state=ready]', { timeout, state: 'attached' });

describe('one session in the page', () => {
  let browser;
  let page;
  let proxy;
  let requests;
  let contract;
  const consoleErrors = [];

  before(async () => {
    contract = await (await fetch(`${URL}/api/contract`)).json();
    browser = await launch();
    page = await browser.newPage({ viewport: VIEWPORT });
    page.on('pageerror', (e) => consoleErrors.push(e.message));
    proxy = await recordingProxy(URL);
    requests = proxy.requests;
    await page.goto(proxy.url);
  });

  after(async () => {
    writeFileSync(join(ARTIFACTS, 'measurements.json'), JSON.stringify(measured, null, 2));
    await browser?.close();
    await proxy?.close();
  });

  test('an unreadable image gives a readable message', async () => {
    const file = corruptPng('x.png');
    await pickAndWait(page, file, { state: 'error', timeout: 30_000 });
    const message = await page.textContent('[data-testid=error]');
    assert.match(message, /x\.png.*could not be read as an image/);
    assert.ok(await page.isVisible('[data-testid=error]'));
    await shot(page, 'unreadable-image');
  });

  test('an image goes through the page and gets the plaintext model’s label', async (t) => {
    const file = cifarPng(0);
    const expected = plaintextLabel(file.path);
    const mark = requests.length;
    await pickAndWait(page, file);
    assert.equal(await page.getAttribute('[data-testid=result]', 'data-file'), file.name);
    assert.equal((await page.textContent('[data-testid=label]')).trim(), expected);
    assert.ok(await page.isHidden('[data-testid=error]'));
    const bars = await page.$$eval('[data-testid=probabilities] [data-class]', (rows) =>
      rows.map((r) => [r.dataset.class, r.querySelector('.bar-value').textContent]),
    );
    assert.deepEqual(bars.map((b) => b[0]), contract.classes);
    await shot(page, 'first-image');

    const result = await page.evaluate(() => window.blindsight.results.at(-1));
    const keys = await page.evaluate(() => window.blindsight.keys);
    const mine = requests.slice(mark);
    measured.first = {
      label: result.label,
      pickToLabelSeconds: result.pickToLabel,
      keyGeneration: keys && { keys: keys.made, seconds: keys.keygenSeconds, perKeySeconds: keys.perKeySeconds },
      keyUpload: keys && { bytes: keys.bytes, wallSeconds: keys.uploadWallSeconds, mbPerSecond: keys.bytes / 1e6 / keys.uploadWallSeconds },
      encryptSeconds: result.steps.encrypt.seconds,
      ciphertextBytes: result.steps.upload.bytes,
      uploadSeconds: result.steps.upload.seconds,
      serverSeconds: result.serverSeconds,
      evaluationWallSeconds: result.steps.evaluate.seconds,
      downloadBytes: result.steps.download.bytes,
      downloadSeconds: result.steps.download.seconds,
      decryptSeconds: result.steps.decrypt.seconds,
      peakWasmBytes: result.peakWasmBytes,
      bytesSentSincePick: sentBytes(mine),
    };
    t.diagnostic(`first image: ${JSON.stringify(measured.first)}`);
  });

  test('a second image reuses the keys: only its ciphertext goes up', async (t) => {
    const file = cifarPng(1);
    const expected = plaintextLabel(file.path);
    const mark = requests.length;
    await pickAndWait(page, file);
    assert.equal((await page.textContent('[data-testid=label]')).trim(), expected);
    const mine = requests.slice(mark);
    assert.equal(keyPuts(mine).length, 0, 'no key is uploaded again');
    assert.equal(sessionPosts(mine).length, 0, 'no new session');
    const jobs = jobPosts(mine);
    assert.equal(jobs.length, 1, 'one job');
    assert.equal(jobs[0].body.length, contract.input.bytes, 'the job is exactly the contract’s input bytes');
    assert.equal(sentBytes(mine), contract.input.bytes, 'nothing else is uploaded');
    await shot(page, 'second-image');

    const result = await page.evaluate(() => window.blindsight.results.at(-1));
    measured.second = {
      label: result.label,
      pickToLabelSeconds: result.pickToLabel,
      encryptSeconds: result.steps.encrypt.seconds,
      uploadSeconds: result.steps.upload.seconds,
      serverSeconds: result.serverSeconds,
      decryptSeconds: result.steps.decrypt.seconds,
      bytesSentSincePick: sentBytes(mine),
      peakWasmBytes: result.peakWasmBytes,
    };
    measured.pageHeapBytes = await page.evaluate(() => performance.memory?.usedJSHeapSize ?? null);
    t.diagnostic(`second image: ${JSON.stringify(measured.second)}`);
  });

  test('several images go in one job, and each gets the plaintext model’s label', async (t) => {
    const files = [cifarPng(2), cifarPng(3), cifarPng(4)];
    const expected = files.map((f) => plaintextLabel(f.path));
    const mark = requests.length;
    await page.setInputFiles('[data-testid=image-input]', files.map((f) => f.path));
    await page.waitForSelector(`[data-testid=result][data-state=done][data-file="${files[0].name}"]`, {
      timeout: 300_000,
      state: 'attached',
    });
    const result = await page.evaluate(() => window.blindsight.results.at(-1));
    assert.deepEqual(result.images.map((r) => r.name), files.map((f) => f.name));
    assert.deepEqual(result.images.map((r) => r.label), expected);
    // one row per image on the page, the first one's bars shown
    const rows = await page.$$eval('[data-testid=batch-results] li', (lis) => lis.map((li) => li.dataset.label));
    assert.deepEqual(rows, expected);
    assert.equal((await page.textContent('[data-testid=label]')).trim(), expected[0]);
    const mine = requests.slice(mark);
    const jobs = jobPosts(mine);
    assert.equal(jobs.length, 1, 'one job for the three images');
    assert.equal(jobs[0].body.length, 3 * contract.input.bytes, 'three ciphertexts of the contract’s size');
    assert.equal(keyPuts(mine).length, 0, 'no key is uploaded again');
    // a click shows another image's bars
    await page.click('[data-testid=batch-results] li[data-index="2"]');
    assert.equal((await page.textContent('[data-testid=label]')).trim(), expected[2]);
    await shot(page, 'batch');
    measured.batch = {
      images: files.length,
      labels: result.images.map((r) => r.label),
      pickToLabelSeconds: result.pickToLabel,
      serverSeconds: result.serverSeconds,
      uploadBytes: result.steps.upload.bytes,
    };
    t.diagnostic(`three images in one job: ${JSON.stringify(measured.batch)}`);
  });

  test('the secret key never leaves the page', async (t) => {
    const stored = await storedSession(page);
    assert.ok(stored, 'the page keeps its session in IndexedDB');
    const sk = stored.secretKey;
    assert.ok(sk.length > 4096, `a secret key of ${sk.length} bytes`);
    // 64-byte windows across the key (past its header, which holds the public parameter
    // fingerprint), each far too varied to occur by chance
    const windows = [];
    for (let i = 0; i < 16; i++) {
      const at = 64 + Math.floor(((sk.length - 128) * i) / 16);
      const w = sk.subarray(at, at + 64);
      assert.ok(new Set(w).size > 1, 'a varied window');
      windows.push(w);
    }
    const withBodies = requests.filter((r) => r.body && r.body.length);
    assert.ok(keyPuts(withBodies).length >= contract.keys.length, 'the key uploads were captured');
    let searched = 0;
    for (const r of withBodies) {
      searched += r.body.length;
      for (const w of windows) assert.equal(r.body.indexOf(w), -1, `secret key bytes in ${r.method} ${r.url}`);
    }
    const hex = sk.subarray(64, 96).toString('hex');
    const b64 = sk.subarray(64, 112).toString('base64');
    for (const r of requests) assert.ok(!r.url.includes(hex) && !r.url.includes(b64), `secret key in ${r.url}`);
    t.diagnostic(`searched ${requests.length} requests, ${mb(searched)} of bodies, for 16 windows of a ${sk.length}-byte secret key`);
  });

  test('a reload resumes the session without new keys', async () => {
    const before = await storedSession(page);
    const mark = requests.length;
    await page.reload();
    await sessionReady(page, 60_000);
    const text = await notice(page, /Resumed your session/);
    assert.match(text, /none are made again/);
    const mine = requests.slice(mark);
    assert.equal(keyPuts(mine).length, 0);
    assert.equal(sessionPosts(mine).length, 0);
    assert.equal((await storedSession(page)).id, before.id);
  });

  test('an expired session is replaced with a new one, and the page says so', async () => {
    const old = await storedSession(page);
    const r = await fetch(`${URL}/api/sessions/${old.id}`, { method: 'DELETE' });
    assert.equal(r.status, 204);
    const mark = requests.length;
    await page.reload();
    await notice(page, /expired/);
    await sessionReady(page);
    const mine = requests.slice(mark);
    assert.equal(sessionPosts(mine).length, 1);
    assert.equal(keyPuts(mine).length, contract.keys.length);
    const fresh = await storedSession(page);
    assert.notEqual(fresh.id, old.id);
    assert.ok(!fresh.secretKey.equals(old.secretKey), 'a new secret key');
  });

  test('“forget my keys” ends the session on both sides', async () => {
    const stored = await storedSession(page);
    assert.equal((await fetch(`${URL}/api/sessions/${stored.id}`)).status, 200);
    const mark = requests.length;
    await page.click('[data-testid=forget]');
    await notice(page, /keys are forgotten/);
    const deletes = requests.slice(mark).filter((r) => r.method === 'DELETE');
    assert.equal(deletes.length, 1);
    assert.ok(deletes[0].url.endsWith(`/api/sessions/${stored.id}`));
    assert.equal((await fetch(`${URL}/api/sessions/${stored.id}`)).status, 404);
    assert.equal(await storedSession(page), null);
    assert.equal(await page.getAttribute('[data-testid=session]', 'data-state'), 'none');
    await shot(page, 'forgotten');
    assert.deepEqual(consoleErrors, []);
  });
});

describe('a busy, then stopped server', () => {
  let browser;
  let page;
  let server;
  let requests;

  before(async () => {
    server = await stoppable;
    await server.ready;
    browser = await launch();
    page = await browser.newPage({ viewport: VIEWPORT });
    requests = captureRequests(page);
    await page.goto(server.url);
    await sessionReady(page);
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test('a full queue is retried after Retry-After, and the page says so', async () => {
    // this server queues nothing (--queue 0): every job gets 503 queue_full
    const file = cifarPng(2);
    await page.setInputFiles('[data-testid=image-input]', file.path);
    const text = await notice(page, /queue is full/);
    assert.match(text, /Trying again in \d+ s/);
    assert.equal(await page.getAttribute('[data-testid=result]', 'data-state'), 'working');
    await shot(page, 'queue-full');
  });

  for (const [how, index] of [['dropped', 4], ['pasted', 5]]) {
    test(`an image ${how} on the page takes the same path`, async () => {
      const file = cifarPng(index);
      const base64 = readFileSync(file.path).toString('base64');
      const mark = requests.length;
      await page.evaluate(
        ([how, name, base64]) => {
          const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
          const data = new DataTransfer();
          data.items.add(new File([bytes], name, { type: 'image/png' }));
          if (how === 'dropped') {
            const drop = document.querySelector('[data-testid=image-input]').closest('label');
            for (const type of ['dragenter', 'dragover', 'drop']) {
              drop.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
            }
          } else {
            document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true }));
          }
        },
        [how, file.name, base64],
      );
      await page.waitForFunction(
        (name) => document.getElementById('original-caption').textContent.startsWith(name),
        file.name,
        { timeout: 10_000 },
      );
      assert.equal(await page.getAttribute('[data-testid=result]', 'data-state'), 'working');
      // its ciphertext is sent (and refused: the queue is full)
      for (let i = 0; i < 100 && jobPosts(requests.slice(mark)).length === 0; i++) await page.waitForTimeout(200);
      assert.equal(jobPosts(requests.slice(mark)).length, 1);
      await notice(page, /queue is full/);
    });
  }

  test('a server stopped mid-session gives a readable message', async () => {
    await server.stop();
    const file = cifarPng(3);
    await pickAndWait(page, file, { state: 'error', timeout: 60_000 });
    const message = await page.textContent('[data-testid=error]');
    assert.match(message, /cannot be reached/);
    assert.ok(await page.isVisible('[data-testid=error]'));
    await shot(page, 'server-stopped');
  });
});
