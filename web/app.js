// Blindsight's page: reads images (file picker, drag and drop, paste), shows what the model sees,
// and draws what the worker (worker.js) reports. All cryptography and networking happen in the
// worker, so this thread stays responsive; the page only decodes the image to RGBA pixels.

const $ = (id) => document.getElementById(id);

const STEPS = [
  ['keygen', 'Key generation', 'Evaluation keys, made from your secret key (once per session)'],
  ['keyupload', 'Key upload', 'Streamed to the server one at a time'],
  ['encrypt', 'Encryption', 'Resize, normalize, pack and encrypt the image'],
  ['upload', 'Upload', 'The encrypted image'],
  ['evaluate', 'Server evaluation', 'The network runs on the ciphertext'],
  ['download', 'Download', 'The encrypted result'],
  ['decrypt', 'Decryption', 'Only your secret key can read it'],
];
const IMAGE_STEPS = ['encrypt', 'upload', 'evaluate', 'download', 'decrypt'];
// the decoders' limits (client/src/image.rs): larger images are scaled down first
const MAX_SIDE = 8192;
const MAX_PIXELS = 16 * 1024 * 1024;

const state = {
  worker: null,
  contract: null,
  job: 0,
  files: [], // the images of the current job
  thumbs: [], // what the model sees of each, as canvases
  picked: 0, // performance.now() at the pick
  stepsSeen: {},
  layers: 0,
  started: false, // a session was asked for
};
// what the page measured, for anyone curious (and the end-to-end tests)
window.blindsight = { results: [], keys: null, errors: [] };

// ---------------------------------------------------------------- formatting

function mb(bytes) {
  if (bytes == null) return '';
  if (bytes < 1e3) return `${bytes} B`;
  if (bytes < 1e6) return `${(bytes / 1e3).toFixed(1)} kB`;
  if (bytes < 1e9) return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 2 : 1)} MB`;
  return `${(bytes / 1e9).toFixed(2)} GB`;
}
function secs(s) {
  if (s == null) return '';
  if (s < 0.01) return `${(s * 1000).toFixed(1)} ms`;
  if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
  return `${s.toFixed(s < 10 ? 2 : 1)} s`;
}
const rate = (r) => (r ? `${(r / 1e6).toFixed(r < 1e7 ? 1 : 0)} MB/s` : '');
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
};

// ---------------------------------------------------------------- the step list

function buildSteps() {
  const list = $('steps');
  list.replaceChildren();
  for (const [id, title, hint] of STEPS) {
    const li = el('li', 'step');
    li.id = `step-${id}`;
    li.dataset.step = id;
    li.dataset.state = 'waiting';
    const icon = el('span', 'icon');
    icon.setAttribute('aria-hidden', 'true');
    const body = el('div', 'step-body');
    const head = el('div', 'step-head');
    head.append(el('span', 'step-title', title), el('span', 'step-numbers'));
    const detail = el('div', 'step-detail', hint);
    const bar = el('div', 'bar');
    bar.append(el('span', 'fill'));
    body.append(head, detail, bar);
    if (id === 'evaluate') body.append(el('div', 'layers'));
    li.append(icon, body);
    list.append(li);
  }
}

function resetImageSteps() {
  const list = $('steps');
  list.classList.add('instant'); // empty bars at once, not animated
  for (const id of IMAGE_STEPS) {
    const li = $(`step-${id}`);
    li.dataset.state = 'waiting';
    li.querySelector('.step-numbers').textContent = '';
    li.querySelector('.step-detail').textContent = STEPS.find((s) => s[0] === id)[2];
    li.querySelector('.fill').style.width = '0%';
  }
  void list.offsetWidth;
  list.classList.remove('instant');
  $('step-evaluate').querySelector('.layers').replaceChildren();
  state.layers = 0;
}

function showStep(msg) {
  const li = $(`step-${msg.step}`);
  if (!li) return;
  if (msg.state) li.dataset.state = msg.state;
  if (msg.fraction != null) li.querySelector('.fill').style.width = `${(msg.fraction * 100).toFixed(1)}%`;
  if (msg.state === 'done' || msg.state === 'skipped') li.querySelector('.fill').style.width = '100%';
  if (msg.detail) li.querySelector('.step-detail').textContent = msg.detail;
  const numbers = [];
  if (msg.state === 'skipped') li.querySelector('.step-numbers').textContent = '';
  if (msg.bytes != null) numbers.push(mb(msg.bytes));
  if (msg.rate) numbers.push(rate(msg.rate));
  if (msg.perKey) numbers.push(`${secs(msg.perKey)}/key`);
  if (msg.seconds != null) numbers.push(secs(msg.seconds));
  if (numbers.length) li.querySelector('.step-numbers').textContent = numbers.join(' · ');
  if (msg.step === 'evaluate' && msg.layer) showLayer(li, msg.layer, msg.fraction);
}

function showLayer(li, layer, fraction) {
  const strip = li.querySelector('.layers');
  const total = Math.round(layer.index / fraction);
  if (strip.childElementCount !== total) {
    strip.replaceChildren();
    for (let i = 0; i < total; i++) strip.append(el('span', 'cell'));
  }
  const cell = strip.children[layer.index - 1];
  if (cell) {
    cell.classList.add('done');
    cell.title = `${layer.index}. ${layer.name}: ${secs(layer.seconds)}`;
  }
}

// ---------------------------------------------------------------- banners, session, result

function showError(message, { retry = false } = {}) {
  $('error').textContent = message;
  $('error-box').hidden = false;
  $('retry').hidden = !retry;
  window.blindsight.errors.push(message);
}
function clearError() {
  $('error').textContent = '';
  $('error-box').hidden = true;
}
let noticeTimer = null;
function showNotice(message, { sticky = false, kind = 'info' } = {}) {
  clearTimeout(noticeTimer);
  $('notice').textContent = message;
  $('notice').dataset.kind = kind;
  $('notice').hidden = false;
  if (!sticky) noticeTimer = setTimeout(() => ($('notice').hidden = true), 15000);
}
function clearNotice() {
  clearTimeout(noticeTimer);
  $('notice').hidden = true;
}

function showSession(msg) {
  const box = document.querySelector('.session');
  box.dataset.state = msg.state;
  const short = msg.id ? msg.id.slice(0, 8) : '';
  const until = msg.expiresUnix ? new Date(msg.expiresUnix * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';
  const text = {
    none: 'No keys yet: they are made with your first image',
    opening: 'Opening a session…',
    keys: `Session ${short} · making and uploading keys…`,
    ready: `Session ${short} · keys on the server · expires ${until} unless used`,
    error: 'No session: see the message above',
  }[msg.state];
  $('session-text').textContent = text || msg.state;
  $('forget').disabled = msg.state === 'none' || (!msg.id && msg.state !== 'error');
}

function setResultState(value, file) {
  const result = $('result');
  result.dataset.state = value;
  if (file != null) result.dataset.file = file;
  else if (value !== 'done') delete result.dataset.file;
}

function buildBars(classes) {
  const bars = $('probabilities');
  bars.replaceChildren();
  for (const name of classes) {
    const row = el('div', 'bar-row');
    row.setAttribute('role', 'listitem');
    row.dataset.class = name;
    const track = el('div', 'bar');
    track.append(el('span', 'fill'));
    row.append(el('span', 'bar-name', name), track, el('span', 'bar-value', ''));
    bars.append(row);
  }
}

/** The label and probability bars of one image of the result. */
function showPrediction(msg, k) {
  const p = msg.images[k];
  const best = p.probabilities[p.index];
  $('label').textContent = p.label;
  $('confidence').textContent = `${(best * 100).toFixed(1)}%`;
  $('verdict-caption').textContent =
    msg.images.length === 1 ? `The model says, for ${p.name}:` : `The model says, for ${p.name} (${k + 1} of ${msg.images.length}):`;
  const rows = $('probabilities').children;
  p.probabilities.forEach((q, i) => {
    const row = rows[i];
    row.classList.toggle('top', i === p.index);
    row.querySelector('.fill').style.width = `${(q * 100).toFixed(2)}%`;
    row.querySelector('.bar-value').textContent = q >= 0.001 ? `${(q * 100).toFixed(1)}%` : '<0.1%';
    row.title = `${msg.classes[i]}: probability ${q.toFixed(4)}, logit ${p.logits[i].toFixed(3)}`;
  });
  for (const li of $('batch-results').children) li.classList.toggle('selected', Number(li.dataset.index) === k);
}

/** For a job of several images: a row per image (what the model saw, name, label), each
 * showing its bars when clicked. */
function showBatch(msg) {
  const list = $('batch-results');
  list.replaceChildren();
  list.hidden = msg.images.length < 2;
  if (list.hidden) return;
  msg.images.forEach((p, k) => {
    const li = el('li', 'batch-row');
    li.dataset.index = k;
    li.dataset.label = p.label;
    li.tabIndex = 0;
    const thumb = state.thumbs[k];
    const canvas = el('canvas', 'batch-thumb');
    if (thumb) {
      canvas.width = thumb.width;
      canvas.height = thumb.height;
      canvas.getContext('2d').drawImage(thumb, 0, 0);
    }
    const best = p.probabilities[p.index];
    li.append(canvas, el('span', 'batch-name', p.name), el('span', 'batch-label', p.label), el('span', 'batch-conf', `${(best * 100).toFixed(0)}%`));
    const select = () => showPrediction(msg, k);
    li.addEventListener('click', select);
    li.addEventListener('keydown', (e) => (e.key === 'Enter' || e.key === ' ') && select());
    list.append(li);
  });
}

function showResult(msg) {
  showBatch(msg);
  showPrediction(msg, 0);
  const s = msg.steps;
  const k = msg.keys;
  const rowsData = [];
  if (k && msg.keysThisImage) {
    rowsData.push(['Key generation', `${secs(k.keygenSeconds)} · ${secs(k.perKeySeconds)}/key`, `${k.made} keys`]);
    rowsData.push(['Key upload', `${secs(k.uploadWallSeconds)} · ${rate(k.bytes / k.uploadWallSeconds)}`, mb(k.bytes)]);
  } else {
    rowsData.push(['Keys', 'reused', '0 B sent']);
  }
  rowsData.push(['Encryption', secs(s.encrypt?.seconds), '']);
  rowsData.push(['Upload', secs(s.upload?.seconds), mb(s.upload?.bytes)]);
  rowsData.push(['Server evaluation', secs(msg.serverSeconds), s.evaluate?.detail?.split(',')[0] || '']);
  rowsData.push(['Download', secs(s.download?.seconds), mb(s.download?.bytes)]);
  rowsData.push(['Decryption', secs(s.decrypt?.seconds), '']);
  rowsData.push(['Wasm memory (peak)', '', mb(msg.peakWasmBytes)]);
  rowsData.push(['Pick to label', secs(msg.pickToLabel), '']);
  const body = $('timings').querySelector('tbody');
  body.replaceChildren();
  rowsData.forEach(([a, b, c], i) => {
    const tr = el('tr', i === rowsData.length - 1 ? 'total' : '');
    tr.append(el('td', '', a), el('td', 'n', b), el('td', 'n', c));
    body.append(tr);
  });
  setResultState('done', msg.name);
}

// ---------------------------------------------------------------- images

async function decode(file) {
  const options = { colorSpaceConversion: 'none', premultiplyAlpha: 'none', imageOrientation: 'from-image' };
  let bitmap = await createImageBitmap(file, options);
  let { width, height } = bitmap;
  const scale = Math.min(1, MAX_SIDE / Math.max(width, height), Math.sqrt(MAX_PIXELS / (width * height)));
  if (scale < 1) {
    width = Math.max(1, Math.floor(width * scale));
    height = Math.max(1, Math.floor(height * scale));
    bitmap.close();
    bitmap = await createImageBitmap(file, { ...options, resizeWidth: width, resizeHeight: height, resizeQuality: 'high' });
  }
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  return { bitmap, rgba, width, height };
}

/** The image as the model sees it: over white, center-cropped to the input's shape, resized. */
function drawThumb(bitmap) {
  const tw = state.contract?.imageWidth || 32;
  const th = state.contract?.imageHeight || 32;
  const canvas = $('thumb');
  canvas.width = tw;
  canvas.height = th;
  const ctx = canvas.getContext('2d');
  const { width: w, height: h } = bitmap;
  let cw = w;
  let ch = h;
  if (w * th > h * tw) cw = Math.max(1, Math.round((h * tw) / th));
  else ch = Math.max(1, Math.round((w * th) / tw));
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, tw, th);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(bitmap, Math.floor((w - cw) / 2), Math.floor((h - ch) / 2), cw, ch, 0, 0, tw, th);
  $('thumb-caption').textContent = `What the model sees: ${tw}×${th}`;
  const copy = document.createElement('canvas');
  copy.width = tw;
  copy.height = th;
  copy.getContext('2d').drawImage(canvas, 0, 0);
  return copy;
}

/** The images of one pick: every image file, at most as many as the server takes in one job. */
function pickMany(files) {
  const images = [...(files || [])].filter((f) => f instanceof File);
  if (!images.length) return;
  const max = state.contract?.batchMax || 1;
  if (images.length > max) {
    showNotice(`The server takes up to ${max} images in one job: the first ${max} of your ${images.length} go now.`);
  }
  pick(images.slice(0, max));
}

async function pick(files) {
  if (!files || !files.length) return;
  const job = ++state.job;
  state.files = files;
  state.thumbs = [];
  const file = files[0];
  const many = files.length > 1;
  state.picked = performance.now();
  clearError();
  resetImageSteps();
  setResultState('working');
  $('label').textContent = '…';
  $('confidence').textContent = '';
  $('verdict-caption').textContent = many ? `Working on ${files.length} images…` : `Working on ${file.name || 'the pasted image'}…`;
  $('batch-results').replaceChildren();
  $('batch-results').hidden = true;
  $('timings').querySelector('tbody').replaceChildren();
  for (const row of $('probabilities').children) {
    row.classList.remove('top');
    row.querySelector('.fill').style.width = '0%';
    row.querySelector('.bar-value').textContent = '';
  }
  const decoded = [];
  for (const f of files) {
    try {
      decoded.push(await decode(f));
    } catch {
      if (job !== state.job) return;
      setResultState('error');
      $('label').textContent = '—';
      $('verdict-caption').textContent = many ? 'No result: one of the files is not an image.' : 'No result: the file is not an image.';
      showError(`“${f.name || 'The pasted file'}” could not be read as an image. Pick PNG or JPEG files.`);
      return;
    }
    if (job !== state.job) return;
  }
  const image = decoded[0];
  const url = URL.createObjectURL(file);
  const original = $('original');
  if (original.dataset.url) URL.revokeObjectURL(original.dataset.url);
  original.dataset.url = url;
  original.src = url;
  // small images (CIFAR's own 32x32) are shown enlarged, pixel for pixel
  original.classList.toggle('small', Math.max(image.bitmap.width, image.bitmap.height) < 160);
  $('original-caption').textContent =
    `${file.name || 'Pasted image'} · ${image.bitmap.width}×${image.bitmap.height}` + (many ? ` · and ${files.length - 1} more` : '');
  // the first image last, so that its thumbnail is the one shown
  for (let k = decoded.length - 1; k >= 0; k--) state.thumbs[k] = drawThumb(decoded[k].bitmap);
  for (const d of decoded) d.bitmap.close();
  $('previews').hidden = false;
  ensureWorker();
  state.started = true;
  const images = decoded.map((d, k) => ({ name: files[k].name || 'pasted image', rgba: d.rgba, width: d.width, height: d.height }));
  state.worker.postMessage(
    { type: 'classify', job, images },
    images.map((im) => im.rgba.buffer),
  );
}

// ---------------------------------------------------------------- the worker

function ensureWorker() {
  if (state.worker) return;
  const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = ({ data }) => onWorker(data);
  worker.onerror = (e) => {
    showError(`The page's worker failed to start (${e.message || 'unknown error'}). Reload the page; if that does not help, use a current Chrome, Edge, Firefox or Safari.`);
    setResultState('error');
  };
  state.worker = worker;
}

function onWorker(msg) {
  switch (msg.type) {
    case 'contract':
      state.contract = msg;
      buildBars(msg.classes);
      $('model-line').textContent =
        `${msg.model} · CKKS ${msg.params} · ${msg.keyCount} evaluation keys, ${mb(msg.keyBytes)} per session · ` +
        `encrypted image ${mb(msg.inputBytes)} · encrypted result ${mb(msg.outputBytes)}`;
      break;
    case 'session':
      showSession(msg);
      break;
    case 'keys':
      window.blindsight.keys = msg;
      console.info(
        `Blindsight: ${msg.made} keys (${mb(msg.bytes)}) made in ${secs(msg.keygenSeconds)} ` +
          `(${secs(msg.perKeySeconds)}/key) and uploaded in ${secs(msg.uploadWallSeconds)}; ` +
          `${secs(msg.wallSeconds)} in all`,
      );
      break;
    case 'step':
      if (msg.job != null && msg.job !== state.job) return;
      showStep(msg);
      break;
    case 'notice':
      if (msg.kind === 'clear') clearNotice();
      else showNotice(msg.message, { sticky: msg.kind === 'wait', kind: msg.kind });
      break;
    case 'result': {
      if (msg.job !== state.job) return;
      msg.pickToLabel = (performance.now() - state.picked) / 1000;
      clearNotice();
      showResult(msg);
      window.blindsight.results.push(msg);
      console.info(
        `Blindsight: ${msg.name} is ${msg.label}; pick to label ${secs(msg.pickToLabel)}, ` +
          `encryption ${secs(msg.steps.encrypt?.seconds)}, server ${secs(msg.serverSeconds)}, ` +
          `decryption ${secs(msg.steps.decrypt?.seconds)}, wasm memory ${mb(msg.peakWasmBytes)}`,
      );
      break;
    }
    case 'error':
      if (msg.job != null && msg.job !== state.job) return;
      clearNotice();
      if (msg.job != null || $('result').dataset.state === 'working') {
        setResultState('error');
        $('label').textContent = '—';
        $('verdict-caption').textContent = 'No result: see the message above.';
        for (const li of document.querySelectorAll('.step[data-state="running"]')) li.dataset.state = 'failed';
      }
      if (msg.code === 'unreachable') {
        document.querySelector('.session').dataset.state = 'error';
        $('session-text').textContent = 'Server unreachable';
      }
      showError(msg.message, { retry: ['unreachable', 'job_failed', 'job_lost'].includes(msg.code) });
      break;
    case 'forgotten':
      state.started = false;
      state.files = [];
      $('batch-results').replaceChildren();
      $('batch-results').hidden = true;
      $('previews').hidden = true;
      $('timings').querySelector('tbody').replaceChildren();
      for (const row of $('probabilities').children) {
        row.classList.remove('top');
        row.querySelector('.fill').style.width = '0%';
        row.querySelector('.bar-value').textContent = '';
      }
      $('verdict-caption').textContent = 'The label appears here, decrypted in your browser.';
      for (const li of document.querySelectorAll('.step')) li.dataset.state = 'waiting';
      buildSteps();
      showNotice(
        msg.serverForgot
          ? 'Your keys are forgotten: the session is deleted on the server and the secret key in this browser. The next image makes new keys.'
          : 'The secret key is deleted in this browser, but the server could not be reached to delete the session; it expires there on its own.',
      );
      break;
    default:
  }
}

// ---------------------------------------------------------------- wiring

function firstImage(items) {
  for (const item of items || []) {
    const file = item instanceof File ? item : item.kind === 'file' ? item.getAsFile() : null;
    if (file) return file;
  }
  return null;
}

function wire() {
  buildSteps();
  const input = $('image-input');
  input.addEventListener('change', () => {
    pickMany(input.files);
    input.value = '';
  });
  const drop = $('drop');
  for (const type of ['dragenter', 'dragover']) {
    window.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add('over');
    });
  }
  for (const type of ['dragleave', 'drop']) {
    window.addEventListener(type, (e) => {
      e.preventDefault();
      if (type === 'drop' || e.relatedTarget === null) drop.classList.remove('over');
    });
  }
  window.addEventListener('drop', (e) => pickMany(e.dataTransfer.files));
  window.addEventListener('paste', (e) => {
    const file = firstImage(e.clipboardData.items);
    if (file) pick([file]);
  });
  $('forget').addEventListener('click', () => {
    clearError();
    state.job += 1;
    setResultState('idle');
    $('label').textContent = '—';
    $('confidence').textContent = '';
    ensureWorker();
    state.worker.postMessage({ type: 'forget' });
  });
  $('retry').addEventListener('click', () => {
    if (state.files.length) pick(state.files);
    else {
      clearError();
      state.worker.postMessage({ type: 'start' });
    }
  });
  ensureWorker();
  state.worker.postMessage({ type: 'start' });
}

wire();
