// The browser client's costs, measured in node on the built package (web/pkg, from
// scripts/build-web.sh) at the server's ResNet-20 contract (wasm-client/tests/fixtures): a new
// client (secret key, context), every evaluation key one at a time as the page makes them, the
// encryption of a 32x32 image (and of a 640x480 one, resize included), the secret key's export and
// re-import. Single-threaded wasm32, as in one Web Worker. Times in ms.
//
//   bash scripts/build-web.sh && node wasm-client/bench/keys.mjs [--reps N] [--contract FILE]
//
// Decryption is not measured here: the JavaScript API can only decrypt a server result (a
// ciphertext at the output level), which only the server makes; tests/node.rs times
// `decryptResult` on such a ciphertext made in Rust.
import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'

const args = process.argv.slice(2)
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : dflt }
const reps = Number(opt('--reps', 5))
const here = (p) => new URL(p, import.meta.url)
const contractJson = readFileSync(opt('--contract', here('../tests/fixtures/resnet20_contract.json')), 'utf8')

const { initSync, WasmClient } = await import(here('../../web/pkg/blindsight_wasm_client.js'))
const wasm = initSync({ module: readFileSync(here('../../web/pkg/blindsight_wasm_client_bg.wasm')) })

const median = (a) => { const b = [...a].sort((x, y) => x - y); const m = b.length >> 1; return b.length % 2 ? b[m] : (b[m - 1] + b[m]) / 2 }
const time = (fn) => { const t = performance.now(); const r = fn(); return [performance.now() - t, r] }
const timeMedian = (fn, n) => median(Array.from({ length: n }, () => time(fn)[0]))
const ms = (x) => x.toFixed(1).padStart(9)
const mb = (b) => (b / 1e6).toFixed(2)

function rgba(w, h) {
  const px = new Uint8ClampedArray(w * h * 4)
  for (let i = 0; i < w * h; i++) px.set([(i * 7) & 255, (i * 13) & 255, (i * 29) & 255, 255], 4 * i)
  return px
}

console.log(`# blindsight-wasm-client, node ${process.version}, ${new Date().toISOString()}`)
const [tNew, client] = time(() => new WasmClient(contractJson))
console.log(`# contract: ${client.model}, ${client.paramsName}, ${client.keyCount()} keys, ${mb(client.keyBytesTotal)} MB of keys, input ${mb(client.inputBytes)} MB`)
console.log(`new WasmClient (secret key + context)   ${ms(tNew)} ms`)

console.log('key  kind      level      MB    makeKey ms')
let total = 0
for (let k = 0; k < client.keyCount(); k++) {
  const spec = client.keySpec(k)
  const [t, bytes] = time(() => client.makeKey(k))
  if (bytes.length !== spec.bytes) throw new Error(`key ${k}: ${bytes.length} bytes, the contract says ${spec.bytes}`)
  total += t
  const what = spec.kind === 'rotation' ? `rot ${spec.amount}` : spec.kind === 'conjugation' ? 'conj' : spec.kind
  console.log(`${String(k).padStart(3)}  ${what.padEnd(9)} ${String(spec.level).padStart(5)} ${mb(spec.bytes).padStart(7)} ${ms(t)}`)
}
console.log(`all keys, one at a time                 ${ms(total)} ms (${(client.keyBytesTotal / 1e6 / (total / 1e3)).toFixed(1)} MB/s)`)

for (const [w, h] of [[32, 32], [640, 480]]) {
  const px = rgba(w, h)
  const ct = client.encryptRgba(px, w, h)
  if (ct.length !== client.inputBytes) throw new Error('input size')
  console.log(`encryptRgba ${`${w}x${h}`.padEnd(8)} (median of ${reps})     ${ms(timeMedian(() => client.encryptRgba(px, w, h), reps))} ms`)
}

const [tExport, sk] = time(() => client.exportSecretKey())
const [tImport, again] = time(() => WasmClient.fromSecretKey(contractJson, sk))
sk.fill(0)
console.log(`exportSecretKey                         ${ms(tExport)} ms (${sk.length} bytes)`)
console.log(`fromSecretKey (context + key)           ${ms(tImport)} ms`)
again.free()
client.free()
// wasm memory only grows: its size now is the peak of the whole run.
console.log(`wasm memory (peak)                      ${mb(wasm.memory.buffer.byteLength).padStart(9)} MB`)
