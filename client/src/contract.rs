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
            KeyPurpose::Rotation { galois_element, .. } => KeyKind::Galois(galois_element),
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
            if let KeyPurpose::Rotation {
                amount,
                galois_element,
            } = key.purpose
            {
                if ctx.galois_element(amount) != galois_element {
                    return bad(format!(
                        "key {k}: the Galois element is not that of rotation {amount}"
                    ));
                }
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
        }
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
