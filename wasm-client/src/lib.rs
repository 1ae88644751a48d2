//! Blindsight in the browser: a thin wasm-bindgen facade over [`blindsight_client::Client`], so the
//! page runs the very code that `blindsight bench` and `classify` run natively (contract checks,
//! key generation, the image resize and normalization of the server's image loader, encryption,
//! decryption). Nothing here does cryptography of its own.
//!
//! How the page uses it (from a module Web Worker, `scripts/build-web.sh` makes `web/pkg`):
//!
//! ```js
//! import init, { WasmClient } from './pkg/blindsight_wasm_client.js'
//! await init()
//! const client = new WasmClient(contractJson)          // a fresh secret key, in wasm memory
//! for (let k = 0; k < client.keyCount(); k++) {
//!   await upload(k, client.makeKey(k))                 // one key at a time, dropped after upload
//! }
//! const ct = client.encryptRgba(imageData.data, imageData.width, imageData.height)
//! const { probabilities, label } = client.decryptResult(resultBytes)
//! client.free()                                        // zeroizes the secret key
//! ```
//!
//! Why it looks like this:
//! - **The secret key never reaches JavaScript.** It is made inside wasm memory from the browser's
//!   CSPRNG (`crypto.getRandomValues`, through getrandom's `wasm_js` backend) and zeroized when the
//!   client is dropped (`free()`, or JavaScript's garbage collector through wasm-bindgen's
//!   finalizer). The one exception is [`WasmClient::export_secret_key`], which exists only so the
//!   page can keep the key in its own IndexedDB and resume after a reload, and so that several Web
//!   Workers can share the key generation ([`WasmClient::from_secret_key`] in each, then
//!   [`WasmClient::key_share`]). Nothing else may call it; it is never sent anywhere.
//! - **Evaluation keys come out one at a time** ([`WasmClient::make_key`]): a ResNet-20 key set is
//!   hundreds of MB, so the page makes a key, streams it to the server and drops it; all keys are
//!   never in memory at once (wasm32 has 4 GiB at most, and a tab much less).
//! - **Errors are JavaScript exceptions** (`Error` objects) carrying the [`ClientError`] message as
//!   it is, which says what to fix.

use blindsight_client::{Client, ClientContract, ClientError};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use zeroize::Zeroizing;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &str = r#"
/** An evaluation key of the contract (its JSON field names). */
export interface KeySpec {
    index: number;
    kind: "rotation" | "conjugation" | "relin";
    /** Rotations only: the left rotation of the slots. */
    amount?: number;
    /** Rotations and conjugation: the Galois element. */
    galois_element?: number;
    /** The highest level the key serves (it is made there). */
    level: number;
    /** Its size in the wire format. */
    bytes: number;
}

/** The decrypted result. */
export interface Prediction {
    logits: number[];
    probabilities: number[];
    /** The most probable class, and its name. */
    index: number;
    label: string;
}
"#;

/// One contract and one secret key, living in wasm memory.
#[wasm_bindgen]
pub struct WasmClient {
    inner: Client,
}

#[wasm_bindgen]
impl WasmClient {
    /// Checks the contract JSON (as served by `GET /api/contract`) and makes a fresh secret key.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(js_name = "contractJson")] contract_json: &str,
    ) -> Result<WasmClient, JsError> {
        Ok(Self {
            inner: Client::new(parse_contract(contract_json)?)?,
        })
    }

    /// A client for the contract with a secret key exported earlier by
    /// [`WasmClient::export_secret_key`] (the page's IndexedDB after a reload, or another worker
    /// of the same page sharing the key generation). The bytes are zeroized once read.
    #[wasm_bindgen(js_name = fromSecretKey)]
    pub fn from_secret_key(
        #[wasm_bindgen(js_name = "contractJson")] contract_json: &str,
        #[wasm_bindgen(js_name = "secretKey")] secret_key: Vec<u8>,
    ) -> Result<WasmClient, JsError> {
        let secret_key = Zeroizing::new(secret_key);
        Ok(Self {
            inner: Client::from_secret_key(parse_contract(contract_json)?, &secret_key)?,
        })
    }

    /// The secret key as bytes. **Only for the page's own storage in the browser (IndexedDB), to
    /// resume after a reload, and to start other workers of the same page with
    /// [`WasmClient::from_secret_key`]**: never send it anywhere, never call it for anything else.
    /// The copy in wasm memory is zeroized before this returns; the returned array is the
    /// caller's to wipe (`bytes.fill(0)`).
    #[wasm_bindgen(js_name = exportSecretKey)]
    pub fn export_secret_key(&self) -> js_sys::Uint8Array {
        let bytes = self.inner.secret_key_bytes();
        // Copied straight into a JavaScript-owned array: returning a `Vec` would leave a freed but
        // unwiped copy in wasm memory.
        js_sys::Uint8Array::from(&bytes[..])
    }

    /// How many evaluation keys the contract lists (indices `0..keyCount()`).
    #[wasm_bindgen(js_name = keyCount)]
    pub fn key_count(&self) -> usize {
        self.inner.contract().keys.len()
    }

    /// Key `k` as the contract describes it: `{ index, kind: "rotation" | "conjugation" |
    /// "relin", amount?, galois_element?, level, bytes }` (the contract's JSON field names).
    #[wasm_bindgen(js_name = keySpec, unchecked_return_type = "KeySpec")]
    pub fn key_spec(&self, k: usize) -> Result<JsValue, JsError> {
        to_js(self.inner.contract().key(k)?)
    }

    /// Evaluation key `k` in the wire format, exactly `keySpec(k).bytes` long: upload it
    /// (`PUT /api/sessions/{id}/keys/{k}`) and drop it.
    #[wasm_bindgen(js_name = makeKey)]
    pub fn make_key(&self, k: usize) -> Result<Vec<u8>, JsError> {
        Ok(self.inner.key_bytes(k)?)
    }

    /// The key indices worker `worker` of `workers` makes when several Web Workers share the key
    /// generation, each with its own client from the same secret key: every index in exactly one
    /// share, the shares balanced by bytes (a key's cost grows with its size).
    #[wasm_bindgen(js_name = keyShare)]
    pub fn key_share(&self, worker: usize, workers: usize) -> Result<Vec<u32>, JsError> {
        key_share(self.inner.contract(), worker, workers).map_err(|e| JsError::new(&e))
    }

    /// RGBA pixels of any size (a canvas's `ImageData.data`, row-major, `width * height * 4`
    /// bytes) to the uploaded ciphertext: composited over white, center-cropped, resized and
    /// normalized exactly as the server's image loader does, then encrypted (`inputBytes` long).
    #[wasm_bindgen(js_name = encryptRgba)]
    pub fn encrypt_rgba(&self, rgba: &[u8], width: u32, height: u32) -> Result<Vec<u8>, JsError> {
        Ok(self.inner.encrypt_rgba(rgba, width, height)?)
    }

    /// The server's result to `{ logits, probabilities, index, label }`.
    #[wasm_bindgen(js_name = decryptResult, unchecked_return_type = "Prediction")]
    pub fn decrypt_result(&self, bytes: &[u8]) -> Result<JsValue, JsError> {
        to_js(&self.inner.decrypt_result(bytes)?)
    }

    /// The result of a job of `images` images to one prediction per image, in upload order.
    #[wasm_bindgen(js_name = decryptBatchResult, unchecked_return_type = "Prediction[]")]
    pub fn decrypt_batch_result(&self, bytes: &[u8], images: usize) -> Result<JsValue, JsError> {
        to_js(&self.inner.decrypt_batch_result(bytes, images)?)
    }

    /// Most images the server takes in one job.
    #[wasm_bindgen(getter = batchMax)]
    pub fn batch_max(&self) -> usize {
        self.inner.contract().batch.max
    }

    /// Bytes of the encrypted image.
    #[wasm_bindgen(getter = inputBytes)]
    pub fn input_bytes(&self) -> usize {
        self.inner.contract().input.bytes
    }

    /// Bytes of the server's result.
    #[wasm_bindgen(getter = outputBytes)]
    pub fn output_bytes(&self) -> usize {
        self.inner.contract().output.bytes
    }

    /// Bytes of all evaluation keys together (a number: may pass 4 GiB, unlike a wasm32 `usize`).
    #[wasm_bindgen(getter = keyBytesTotal)]
    pub fn key_bytes_total(&self) -> f64 {
        key_bytes_total(self.inner.contract())
    }

    /// Class names, in logit order.
    #[wasm_bindgen(getter)]
    pub fn classes(&self) -> Vec<String> {
        self.inner.contract().classes.clone()
    }

    /// The model's name.
    #[wasm_bindgen(getter)]
    pub fn model(&self) -> String {
        self.inner.contract().model.clone()
    }

    /// The parameter set's name (e.g. `N16_L39`).
    #[wasm_bindgen(getter = paramsName)]
    pub fn params_name(&self) -> String {
        self.inner.contract().params.name.clone()
    }

    /// The plan hash, to tell whether a stored session still matches the server's plan.
    #[wasm_bindgen(getter = planHash)]
    pub fn plan_hash(&self) -> String {
        self.inner.contract().plan_hash.clone()
    }

    /// The model's input width and height (the image is resized to them).
    #[wasm_bindgen(getter = imageWidth)]
    pub fn image_width(&self) -> usize {
        self.inner.contract().image.width
    }

    #[wasm_bindgen(getter = imageHeight)]
    pub fn image_height(&self) -> usize {
        self.inner.contract().image.height
    }
}

impl WasmClient {
    /// The client underneath (Rust callers and tests).
    pub fn client(&self) -> &Client {
        &self.inner
    }
}

/// A contract from JSON, checked against its parameter set (as [`Client::new`] does).
pub fn parse_contract(json: &str) -> Result<ClientContract, ClientError> {
    ClientContract::from_json(json.as_bytes())
}

/// Bytes of all keys, summed without overflowing a wasm32 `usize`.
pub fn key_bytes_total(contract: &ClientContract) -> f64 {
    contract.keys.iter().map(|k| k.bytes as u64).sum::<u64>() as f64
}

/// Worker `worker`'s share of the key indices among `workers`, in ascending order: keys taken
/// largest first, each to the worker with the fewest bytes so far (the lowest on ties), so every
/// worker computes the same split from the contract alone.
pub fn key_share(
    contract: &ClientContract,
    worker: usize,
    workers: usize,
) -> Result<Vec<u32>, String> {
    if worker >= workers {
        return Err(format!(
            "worker {worker} of {workers}: the worker index must be below the worker count"
        ));
    }
    let mut order: Vec<_> = contract.keys.iter().collect();
    order.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.index.cmp(&b.index)));
    let mut load = vec![0u64; workers];
    let mut share = Vec::new();
    for key in order {
        let w = (0..workers).min_by_key(|&w| (load[w], w)).unwrap_or(0);
        load[w] += key.bytes as u64;
        if w == worker {
            share.push(key.index as u32);
        }
    }
    share.sort_unstable();
    Ok(share)
}

/// Plain data to a JavaScript value: objects for structs and maps (not `Map`s), arrays for
/// vectors, numbers for integers.
fn to_js<T: Serialize + ?Sized>(value: &T) -> Result<JsValue, JsError> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| JsError::new(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use blindsight_client::contract::KeyPurpose;
    use blindsight_client::KeySpec;

    fn contract() -> ClientContract {
        parse_contract(include_str!("../tests/fixtures/resnet20_contract.json")).unwrap()
    }

    #[test]
    fn key_shares_partition_the_keys_and_balance_bytes() {
        let c = contract();
        for workers in 1..=5 {
            let shares: Vec<_> = (0..workers)
                .map(|w| key_share(&c, w, workers).unwrap())
                .collect();
            let mut all: Vec<u32> = shares.concat();
            all.sort_unstable();
            assert_eq!(all, (0..c.keys.len() as u32).collect::<Vec<_>>());
            let bytes: Vec<u64> = shares
                .iter()
                .map(|s| s.iter().map(|&k| c.keys[k as usize].bytes as u64).sum())
                .collect();
            let largest = c.keys.iter().map(|k| k.bytes as u64).max().unwrap();
            let (lo, hi) = (bytes.iter().min().unwrap(), bytes.iter().max().unwrap());
            assert!(hi - lo <= largest, "{workers} workers: {bytes:?}");
        }
        assert!(key_share(&c, 2, 2).is_err());
        assert!(key_share(&c, 0, 0).is_err());
    }

    #[test]
    fn key_bytes_total_does_not_overflow() {
        let mut c = contract();
        assert_eq!(key_bytes_total(&c), c.key_bytes() as f64);
        let key = KeySpec {
            index: 0,
            purpose: KeyPurpose::Relin,
            level: 0,
            bytes: u32::MAX as usize,
        };
        c.keys = vec![key.clone(), key];
        assert_eq!(key_bytes_total(&c), 2.0 * u32::MAX as f64);
    }
}
