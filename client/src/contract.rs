//! The client contract: everything a client needs to make keys for a server, encrypt an image for
//! it and read its answer, computed by the server from its evaluation plan and served as JSON
//! (`GET /api/contract`). A client needs nothing else; the server checks every upload against it.
//!
//! The parameter fingerprint pins the exact primes (keys for other parameters are refused on both
//! sides), and the plan hash changes whenever anything the client derives from the plan changes,
//! so a stored session is never reused against a different plan.

use blindsight_core::layout::{SlotLayout, SlotLayoutParts};
use blindsight_core::{Context, KeyKind};
use serde::{Deserialize, Serialize};

use crate::error::ClientError;
use crate::hex;

/// The contract format this code reads and writes.
pub const CONTRACT_VERSION: u32 = 1;

/// Largest contract accepted from the network (a ResNet-20 contract is a few KB).
pub const MAX_CONTRACT_BYTES: usize = 1 << 20;

/// Most slots a parameter set has: N/2 for N = 2^17, the largest ring with a security bound.
pub const MAX_SLOTS: usize = 1 << 16;

/// Most images a contract may put in one job.
pub const MAX_BATCH: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientContract {
    pub version: u32,
    pub params: ParamsSpec,
    /// The model's name (for display).
    pub model: String,
    pub image: ImageSpec,
    pub input: InputSpec,
    /// The evaluation keys to make, in upload order; `keys[k].index == k`.
    pub keys: Vec<KeySpec>,
    pub output: OutputSpec,
    /// Class names, in logit order.
    pub classes: Vec<String>,
    /// SHA-256 of the server's plan (hex).
    pub plan_hash: String,
    /// How several images go in one job (absent in contracts of servers without batches).
    #[serde(default)]
    pub batch: BatchSpec,
}

/// Several images in one job: the upload is one input ciphertext per image, concatenated, and the
/// result is one output ciphertext holding every image's logits, image `j` at the output layout
/// shifted by `shifts[j]` slots (the server packs images into the slots one image leaves idle).
/// A job of one image is evaluated as without batches: its logits are at the layout itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchSpec {
    /// Most images in one job.
    pub max: usize,
    /// Where each image's logits sit, `max` shifts (in slots) of the output layout.
    pub shifts: Vec<usize>,
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            max: 1,
            shifts: vec![0],
        }
    }
}

/// The CKKS parameter set, by name and by the fingerprint of its exact primes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamsSpec {
    pub name: String,
    /// SHA-256 of the parameter set (hex): primes, ring degree, digits.
    pub fingerprint: String,
    pub ring_degree: usize,
    pub slots: usize,
}

/// The model's input image and its normalization `(x / 255 - mean) / std` per channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageSpec {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// Where the normalized image goes in the slots, at which level and scale it is encrypted, and
/// the size of the uploaded (seeded) ciphertext.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    #[serde(deserialize_with = "bounded_layout")]
    pub layout: SlotLayout,
    pub level: usize,
    pub scale: f64,
    pub bytes: usize,
}

/// Where the logits are in the decrypted result, its level and its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    #[serde(deserialize_with = "bounded_layout")]
    pub layout: SlotLayout,
    pub level: usize,
    pub bytes: usize,
}

/// A slot layout read from a contract, its sizes bounded before the core validates it: in a valid
/// layout every size is at most the slot count and the gap at most its square root, so this
/// refuses nothing valid, and none of the validation's products can overflow (on wasm32 either).
fn bounded_layout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SlotLayout, D::Error> {
    use serde::de::Error;
    let p = SlotLayoutParts::deserialize(d)?;
    let sizes = [p.channels, p.height, p.width, p.block, p.row, p.blocks];
    if p.slots > MAX_SLOTS
        || sizes.iter().any(|&x| x > p.slots)
        || p.gap.saturating_mul(p.gap) > p.slots
    {
        return Err(D::Error::custom(format!(
            "slot layout sizes beyond its {} slots (at most {MAX_SLOTS})",
            p.slots
        )));
    }
    SlotLayout::try_from(p).map_err(D::Error::custom)
}

/// What an evaluation key switches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum KeyPurpose {
    /// Relinearization (`s^2 -> s`).
    Relin,
    /// A left rotation of the slots by `amount` (Galois element `5^amount mod 2N`).
    Rotation { amount: i64, galois_element: u64 },
    /// Complex conjugation of the slots (Galois element `2N - 1`).
    Conjugation { galois_element: u64 },
}

/// One evaluation key: what it is, the highest level it serves (it is made there), its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeySpec {
    pub index: usize,
    #[serde(flatten)]
    pub purpose: KeyPurpose,
    pub level: usize,
    pub bytes: usize,
}

impl KeySpec {
    /// The core's name for the key's kind.
    pub fn kind(&self) -> KeyKind {
        match self.purpose {
            KeyPurpose::Relin => KeyKind::Relin,
            KeyPurpose::Rotation { galois_element, .. }
            | KeyPurpose::Conjugation { galois_element } => KeyKind::Galois(galois_element),
        }
    }
}

impl ClientContract {
    /// Reads a contract from JSON, refusing oversized input, other versions and inconsistent
    /// contents (see [`ClientContract::context`]).
    pub fn from_json(json: &[u8]) -> Result<Self, ClientError> {
        if json.len() > MAX_CONTRACT_BYTES {
            return Err(ClientError::Contract(format!(
                "{} bytes, at most {MAX_CONTRACT_BYTES} accepted",
                json.len()
            )));
        }
        let c: Self =
            serde_json::from_slice(json).map_err(|e| ClientError::Contract(e.to_string()))?;
        if c.version != CONTRACT_VERSION {
            return Err(ClientError::Version {
                expected: CONTRACT_VERSION,
                found: c.version,
            });
        }
        Ok(c)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a contract is plain data")
    }

    /// The CKKS context of the contract's parameter set, after checking everything a client
    /// relies on against it: the fingerprint, the layouts' slot count, the key list (indices,
    /// levels, Galois elements, sizes) and the image shape.
    pub fn context(&self) -> Result<std::sync::Arc<Context>, ClientError> {
        let ctx = Context::named(&self.params.name)?;
        self.check(&ctx)?;
        Ok(ctx)
    }

    /// [`ClientContract::context`]'s checks against a context the caller already has (the
    /// server's own, in `bench` and the tests), without building another one.
    pub fn check(&self, ctx: &Context) -> Result<(), ClientError> {
        if self.version != CONTRACT_VERSION {
            return Err(ClientError::Version {
                expected: CONTRACT_VERSION,
                found: self.version,
            });
        }
        if ctx.params().name() != self.params.name
            || hex(ctx.fingerprint()) != self.params.fingerprint
        {
            return Err(ClientError::Fingerprint(self.params.name.clone()));
        }
        let bad = |m: String| Err(ClientError::Contract(m));
        let slots = ctx.params().slots();
        for (what, layout) in [
            ("input", &self.input.layout),
            ("output", &self.output.layout),
        ] {
            if layout.slots() != slots {
                return bad(format!(
                    "the {what} layout has {} slots, not {slots}",
                    layout.slots()
                ));
            }
        }
        let img = &self.image;
        let pixels = img
            .channels
            .checked_mul(img.height)
            .and_then(|n| n.checked_mul(img.width));
        if pixels != Some(self.input.layout.len())
            || img.mean.len() != img.channels
            || img.std.len() != img.channels
        {
            return bad("the image shape does not match the input layout".into());
        }
        let b = &self.batch;
        if !(1..=MAX_BATCH).contains(&b.max)
            || b.shifts.len() != b.max
            || b.shifts.iter().any(|&d| d >= slots)
        {
            return bad(format!(
                "a batch of at most {} images needs as many shifts, each below the slots (at \
                 most {MAX_BATCH} images)",
                b.max
            ));
        }
        let mut taken = vec![false; slots];
        for &d in &b.shifts {
            for i in 0..self.output.layout.len() {
                let s = (self.output.layout.slot_of(i) + d) % slots;
                if std::mem::replace(&mut taken[s], true) {
                    return bad("two images of a batch share an output slot".into());
                }
            }
        }
        if self.output.layout.len() != self.classes.len() {
            return bad(format!(
                "{} classes for {} logits",
                self.classes.len(),
                self.output.layout.len()
            ));
        }
        let wire = |r: Result<usize, blindsight_core::CkksError>| r.map_err(ClientError::from);
        if self.input.bytes
            != wire(blindsight_core::wire::ciphertext_size(
                ctx,
                self.input.level,
                1,
                true,
            ))?
        {
            return bad("the input size does not match its level".into());
        }
        if !(self.input.scale.is_finite() && self.input.scale >= 1.0) {
            return bad("the input scale must be finite and at least 1".into());
        }
        for (k, key) in self.keys.iter().enumerate() {
            if key.index != k {
                return bad(format!("key {k} has index {}", key.index));
            }
            if key.bytes != wire(blindsight_core::wire::switching_key_size(ctx, key.level))? {
                return bad(format!("key {k}: the size does not match its level"));
            }
            match key.purpose {
                KeyPurpose::Rotation {
                    amount,
                    galois_element,
                } if ctx.galois_element(amount) != galois_element => {
                    return bad(format!(
                        "key {k}: the Galois element is not that of rotation {amount}"
                    ));
                }
                KeyPurpose::Conjugation { galois_element }
                    if galois_element != ctx.conjugation_element() =>
                {
                    return bad(format!(
                        "key {k}: the Galois element is not that of conjugation"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The key of index `k`.
    pub fn key(&self, k: usize) -> Result<&KeySpec, ClientError> {
        self.keys.get(k).ok_or(ClientError::KeyIndex {
            index: k,
            count: self.keys.len(),
        })
    }

    /// Bytes of all evaluation keys together: the upload a new session costs (saturating: an
    /// unchecked contract may claim any sizes).
    pub fn key_bytes(&self) -> usize {
        self.keys
            .iter()
            .map(|k| k.bytes)
            .fold(0, usize::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A contract for `ctx` as far as names, fingerprint and layouts go.
    fn contract_for(ctx: &Context) -> ClientContract {
        let slots = ctx.params().slots();
        let layout = SlotLayout::dense(3, 8, 8, slots).unwrap();
        ClientContract {
            version: CONTRACT_VERSION,
            params: ParamsSpec {
                name: ctx.params().name().into(),
                fingerprint: hex(ctx.fingerprint()),
                ring_degree: ctx.n(),
                slots,
            },
            model: "m".into(),
            image: ImageSpec {
                channels: 3,
                height: 8,
                width: 8,
                mean: vec![0.5; 3],
                std: vec![0.25; 3],
            },
            input: InputSpec {
                layout: layout.clone(),
                level: 0,
                scale: 1.0,
                bytes: 1,
            },
            keys: vec![KeySpec {
                index: 0,
                purpose: KeyPurpose::Relin,
                level: 0,
                bytes: 1,
            }],
            output: OutputSpec {
                layout,
                level: 0,
                bytes: 1,
            },
            classes: vec!["a".into()],
            plan_hash: "00".into(),
            batch: BatchSpec::default(),
        }
    }

    /// A batch spec must name one shift per image, the first 0, and place no two images' logits
    /// in one slot; a contract without one (an older server) means one image per job.
    #[test]
    fn batch_specs_are_checked() {
        let ctx = Context::named("N12_TINY").unwrap();
        let base = contract_for(&ctx);
        let err = |batch: BatchSpec| {
            let mut c = base.clone();
            c.batch = batch;
            c.check(&ctx).unwrap_err().to_string()
        };
        let spec = |max, shifts: &[usize]| BatchSpec {
            max,
            shifts: shifts.to_vec(),
        };
        // the output layout holds 3 channels of 8x8 in blocks of 64 slots: shift 1 collides
        for (bad, why) in [
            (spec(2, &[0]), "shifts"),
            (spec(0, &[]), "shifts"),
            (spec(2, &[0, 1]), "share an output slot"),
            (spec(2, &[0, 1 << 20]), "shifts"),
        ] {
            assert!(
                err(bad.clone()).contains(why),
                "{bad:?}: {}",
                err(bad.clone())
            );
        }
        // a good spec gets past the batch checks (to the next: this contract's one class)
        let far = ctx.params().slots() / 2;
        assert!(err(spec(2, &[0, far])).contains("classes"));
        let json = serde_json::to_value(&base).unwrap();
        let mut old = json.as_object().unwrap().clone();
        old.remove("batch");
        let back: ClientContract = serde_json::from_value(old.into()).unwrap();
        assert_eq!(back.batch, BatchSpec::default());
    }

    /// Fuzzing found it (`fuzz/regressions/contract/`): a layout gap whose square overflows
    /// panicked in the core's layout validation (`gap * gap`) while the JSON was read.
    #[test]
    fn layout_sizes_that_overflow_are_errors() {
        let ctx = Context::named("N12_TINY").unwrap();
        let json = serde_json::to_string(&contract_for(&ctx)).unwrap();
        assert!(ClientContract::from_json(json.as_bytes()).is_ok());
        for (field, value) in [
            ("gap", "4294967297"),
            ("gap", "18446744073709551615"),
            ("slots", "18446744073709551615"),
            ("blocks", "18446744073709551615"),
            ("block", "18446744073709551615"),
        ] {
            let from = format!("\"{field}\":");
            let layout = json.find("\"layout\"").unwrap();
            let at = layout + json[layout..].find(&from).unwrap() + from.len();
            let end = at + json[at..].find([',', '}']).unwrap();
            let bad = format!("{}{value}{}", &json[..at], &json[end..]);
            assert!(
                ClientContract::from_json(bad.as_bytes()).is_err(),
                "{field} = {value}"
            );
        }
    }

    #[test]
    fn image_sizes_that_overflow_are_refused_by_check() {
        let ctx = Context::named("N12_TINY").unwrap();
        let mut c = contract_for(&ctx);
        c.image.channels = usize::MAX;
        c.image.height = 2;
        assert!(
            matches!(c.check(&ctx), Err(ClientError::Contract(m)) if m.contains("image shape"))
        );
        c.keys[0].bytes = usize::MAX;
        c.keys.push(c.keys[0].clone());
        assert_eq!(c.key_bytes(), usize::MAX);
    }
}
