// What the tests share: the server under test, test images, the page's hooks, request capture.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest, createServer as createHttpServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { cifarImage, encodePng } from './cifar.js';
import { startServer as startServerAt } from './server.js';

export const URL = process.env.BLINDSIGHT_URL;
export const BIN = process.env.BLINDSIGHT_BIN;
export const BATCH = process.env.CIFAR_BATCH;
export const ARTIFACTS = process.env.E2E_ARTIFACTS || new globalThis.URL('../artifacts', import.meta.url).pathname;
if (!URL || !BIN || !BATCH) {
  throw new Error('run the tests with e2e/run.sh (it sets BLINDSIGHT_URL, BLINDSIGHT_BIN, CIFAR_BATCH)');
}
mkdirSync(ARTIFACTS, { recursive: true });

/** A scratch directory outside the repository, removed at exit. */
export const scratch = mkdtempSync(join(tmpdir(), 'blindsight-e2e-'));
process.on('exit', () => rmSync(scratch, { recursive: true, force: true }));

/** CIFAR-10 test image `index` written as a PNG: { path, name, label (the dataset's) }. */
export function cifarPng(index) {
  const image = cifarImage(BATCH, index);
  const name = `cifar-test-${index}.png`;
  const path = join(scratch, name);
  writeFileSync(path, encodePng(image));
  return { path, name, label: image.label };
}

/** A file of random bytes that claims to be a PNG. */
export function corruptPng(name = 'x.png') {
  const path = join(scratch, name);
  writeFileSync(path, randomBytes(4096));
  return { path, name };
}

/** The plaintext model's label for an image file (`blindsight classify --plaintext`). */
export function plaintextLabel(path) {
  const out = execFileSync(BIN, ['classify', '--plaintext', path], { encoding: 'utf8' });
  const m = out.match(/^label: (.+)$/m);
  if (!m) throw new Error(`no "label:" line in blindsight classify's output:\n${out}`);
  return m[1].trim();
}

export { freePort } from './server.js';

/** Another `blindsight serve` of the tests' own (one they may stop), with its own data dir. */
export function startServer(extraArgs = []) {
  return startServerAt(BIN, mkdtempSync(join(scratch, 'data-')), extraArgs);
}

/** Every request the page (and its workers) makes, with its body where the browser reports one. */
export function captureRequests(page) {
  const requests = [];
  page.on('request', (r) => {
    let body = null;
    try {
      body = r.postDataBuffer();
    } catch {
      body = null;
    }
    requests.push({ method: r.method(), url: r.url(), body });
  });
  return requests;
}

/**
 * An HTTP proxy in front of `target` that records every request with its whole body, as it
 * arrives over the network: what the page really sends. (The browser's own request events carry
 * no body for a Blob upload, which is how the page sends keys and images.) Responses, the event
 * stream included, pass through as they come.
 */
export async function recordingProxy(target) {
  const upstream = new globalThis.URL(target);
  const requests = [];
  const server = createHttpServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      requests.push({ method: req.method, url: `${target}${req.url}`, body });
      const up = httpRequest(
        { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
        (r) => {
          res.writeHead(r.statusCode, r.headers);
          r.pipe(res);
        },
      );
      up.on('error', () => res.destroy());
      up.end(body);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
  };
}

/** The result panel's state (idle | working | done | error). */
export const resultState = (page) => page.getAttribute('[data-testid=result]', 'data-state');

/** Picks a file and waits for the result panel to reach `state` for it. */
export async function pickAndWait(page, file, { state = 'done', timeout = 240_000 } = {}) {
  await page.setInputFiles('[data-testid=image-input]', file.path);
  const selector =
    state === 'done'
      ? `[data-testid=result][data-state=done][data-file="${file.name}"]`
      : `[data-testid=result][data-state=${state}]`;
  await page.waitForSelector(selector, { timeout, state: 'attached' });
}

/** The page's stored session: { id, secretKey (Buffer), planHash } or null. */
export async function storedSession(page) {
  const record = await page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        const open = indexedDB.open('blindsight');
        open.onerror = () => reject(open.error);
        open.onsuccess = () => {
          const db = open.result;
          if (!db.objectStoreNames.contains('session')) return resolve(null);
          const get = db.transaction('session').objectStore('session').get('current');
          get.onsuccess = () => {
            const r = get.result;
            db.close();
            if (!r) return resolve(null);
            let b = '';
            for (const byte of r.secretKey) b += String.fromCharCode(byte);
            resolve({ id: r.id, planHash: r.planHash, secretKey: btoa(b) });
          };
          get.onerror = () => reject(get.error);
        };
      }),
  );
  return record && { ...record, secretKey: Buffer.from(record.secretKey, 'base64') };
}

export const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;
