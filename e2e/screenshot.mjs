// The README screenshot (docs/screenshot.png): a finished classification in the page, at 1200 px
// wide. The picture is drawn here (a synthetic airliner on a sky gradient), never taken from
// CIFAR-10, so nothing made from the dataset lands in the repository. It goes through the page
// against a real `blindsight serve` on a free port with a temporary data directory. Build first:
//   cargo build --release -p blindsight-server --bin blindsight && bash scripts/build-web.sh
//   (cd e2e && npm ci)
//   node e2e/screenshot.mjs            # writes docs/screenshot.png (a run takes a few minutes)
// Chromium is Debian's /usr/bin/chromium (or $CHROMIUM), as for the browser tests.

import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { launch } from './lib/browser.js';
import { encodePng } from './lib/cifar.js';
import { startServer } from './lib/server.js';

const ROOT = new URL('..', import.meta.url).pathname;
const BIN = join(ROOT, 'target/release/blindsight');
const OUT = join(ROOT, 'docs/screenshot.png');
const VIEWPORT = { width: 1200, height: 900 };
const MAX_BYTES = 250_000;

function fail(message) {
  console.error(`screenshot: ${message}`);
  process.exit(1);
}

if (!existsSync(BIN)) fail(`${BIN} is missing: cargo build --release -p blindsight-server --bin blindsight`);
if (!existsSync(join(ROOT, 'web/pkg/blindsight_wasm_client_bg.wasm'))) fail('web/pkg is missing: bash scripts/build-web.sh');

// ---------------------------------------------------------------- the picture

const inPolygon = (pts, x, y) => {
  let inside = false;
  for (let i = 0, j = pts.length - 1; i < pts.length; j = i++) {
    const [xi, yi] = pts[i];
    const [xj, yj] = pts[j];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
};
const inEllipse = (cx, cy, rx, ry, x, y) => ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1;

// an airliner flying right, seen a little from above; coordinates in the unit square, y down
const FAR_WING = [[0.5, 0.47], [0.57, 0.47], [0.47, 0.31], [0.43, 0.31]];
const FUSELAGE = [
  [0.1, 0.4], [0.17, 0.4], [0.27, 0.455], [0.8, 0.455], [0.86, 0.463], [0.895, 0.478], [0.915, 0.5],
  [0.9, 0.517], [0.86, 0.532], [0.8, 0.54], [0.26, 0.54], [0.15, 0.505],
];
const FIN = [[0.095, 0.26], [0.15, 0.26], [0.26, 0.46], [0.16, 0.46]];
const STABILIZER = [[0.15, 0.49], [0.21, 0.49], [0.125, 0.6], [0.09, 0.6]];
const NEAR_WING = [[0.5, 0.51], [0.6, 0.51], [0.43, 0.8], [0.37, 0.8]];
const COCKPIT = [[0.855, 0.472], [0.885, 0.483], [0.878, 0.49], [0.85, 0.484]];

function colorAt(x, y) {
  if (inEllipse(0.5, 0.62, 0.055, 0.026, x, y)) return x > 0.545 ? [70, 75, 90] : [160, 166, 178]; // engine
  if (inPolygon(NEAR_WING, x, y)) return [214, 219, 228];
  if (inPolygon(STABILIZER, x, y)) return [205, 210, 220];
  if (inPolygon(COCKPIT, x, y)) return [35, 45, 70];
  if (inPolygon(FIN, x, y)) return [196, 40, 48];
  if (inPolygon(FUSELAGE, x, y)) {
    const window = y > 0.468 && y < 0.484 && x > 0.3 && x < 0.82 && (x - 0.3) % 0.022 < 0.01;
    if (window) return [45, 60, 90];
    if (y > 0.52) return [196, 40, 48]; // a red stripe along the belly
    return y < 0.5 ? [246, 247, 250] : [222, 226, 233];
  }
  if (inPolygon(FAR_WING, x, y)) return [170, 176, 188];
  const t = y; // sky: deep blue above, pale near the horizon
  return [60 + 120 * t, 120 + 95 * t, 200 + 45 * t];
}

/** A `side`-pixel square RGB image, 4x4 supersampled. */
function drawAirplane(side) {
  const rgb = Buffer.alloc(3 * side * side);
  const S = 4;
  for (let py = 0; py < side; py++) {
    for (let px = 0; px < side; px++) {
      const acc = [0, 0, 0];
      for (let sy = 0; sy < S; sy++) {
        for (let sx = 0; sx < S; sx++) {
          const c = colorAt((px + (sx + 0.5) / S) / side, (py + (sy + 0.5) / S) / side);
          for (let k = 0; k < 3; k++) acc[k] += c[k];
        }
      }
      for (let k = 0; k < 3; k++) rgb[3 * (py * side + px) + k] = Math.round(acc[k] / (S * S));
    }
  }
  return { rgb, width: side, height: side };
}

// ---------------------------------------------------------------- the server

// ---------------------------------------------------------------- the run

const scratch = mkdtempSync(join(tmpdir(), 'blindsight-shot-'));
const file = { name: 'airplane.png', path: join(scratch, 'airplane.png') };
writeFileSync(file.path, encodePng(drawAirplane(256)));

const server = await startServer(BIN, join(scratch, 'data'), [], { readySeconds: 600 });
const url = server.url;

let browser;
let status = 0;
try {
  console.error(`screenshot: starting blindsight serve at ${url} (the plan takes a while)`);
  await server.ready;
  browser = await launch();
  const page = await browser.newPage({ viewport: VIEWPORT, deviceScaleFactor: 1 });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(url);
  console.error('screenshot: classifying the synthetic airplane (a few minutes)');
  await page.setInputFiles('[data-testid=image-input]', file.path);
  await page.waitForSelector(`[data-testid=result][data-state=done][data-file="${file.name}"]`, {
    timeout: 600_000,
    state: 'attached',
  });
  await page.waitForTimeout(1000); // the bars' width transitions
  const label = (await page.textContent('[data-testid=label]')).trim();

  mkdirSync(join(ROOT, 'docs'), { recursive: true });
  let png = await page.screenshot({ fullPage: true });
  if (png.length > MAX_BYTES) {
    // too large: only the main content (the three cards), with a margin
    const box = await page.locator('main').boundingBox();
    const clip = { x: 0, y: 0, width: VIEWPORT.width, height: Math.ceil(box.y + box.height + 24) };
    png = await page.screenshot({ fullPage: true, clip });
  }
  writeFileSync(OUT, png);
  console.log(`label: ${label}`);
  console.log(`${OUT}: ${statSync(OUT).size} bytes`);
  // the page's own measurements (no request capture here, unlike the e2e tests)
  console.log(`measurements: ${JSON.stringify(await page.evaluate(() => window.blindsight))}`);
  if (errors.length) console.error(`screenshot: page errors: ${errors.join('; ')}`);
} catch (e) {
  console.error(`screenshot: ${e.stack || e}`);
  status = 1;
} finally {
  await browser?.close();
  await server.stop('SIGTERM');
  rmSync(scratch, { recursive: true, force: true });
}
process.exit(status);
