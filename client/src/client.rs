//! The client half of the contract: the secret key (made here, kept here, zeroized on drop), the
//! evaluation keys one at a time, the encrypted image, the decrypted prediction. The browser runs
//! it through `wasm-client`; `blindsight bench` and `classify` run it natively.

use std::sync::Arc;

use blindsight_core::layout::Normalization;
use blindsight_core::{
    decrypt, Ciphertext, Context, Encryptor, EvaluationKeys, KeyGenerator, Plaintext, SecretKey,
    SwitchingKey,
};
use zeroize::Zeroizing;

use crate::contract::{ClientContract, KeyPurpose};
use crate::error::ClientError;
use crate::image::fit_rgba;
use crate::{argmax, softmax};

/// What the decrypted logits say.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub logits: Vec<f64>,
    pub probabilities: Vec<f64>,
    /// Index of the most probable class, and its name.
    pub index: usize,
    pub label: String,
}

/// A client for one contract, holding one secret key.
pub struct Client {
    ctx: Arc<Context>,
    contract: ClientContract,
    normalization: Normalization,
    sk: SecretKey,
}

impl Client {
    /// Checks the contract and makes a fresh secret key from the OS's randomness.
    pub fn new(contract: ClientContract) -> Result<Self, ClientError> {
        let ctx = contract.context()?;
        let sk = SecretKey::generate(&ctx);
        Self::with_key(ctx, contract, sk)
    }

    /// [`Client::new`] with the contract's context already at hand (it is checked against it, not
    /// built again: a context at N = 2^16 is a few hundred milliseconds of tables).
    pub fn with_context(ctx: Arc<Context>, contract: ClientContract) -> Result<Self, ClientError> {
        contract.check(&ctx)?;
        let sk = SecretKey::generate(&ctx);
        Self::with_key(ctx, contract, sk)
    }

    /// A client for `contract` with a secret key exported earlier by
    /// [`Client::secret_key_bytes`] (another worker of the same page, or a reload).
    pub fn from_secret_key(contract: ClientContract, bytes: &[u8]) -> Result<Self, ClientError> {
        let ctx = contract.context()?;
        let sk = SecretKey::from_secret_bytes(&ctx, bytes)?;
        Self::with_key(ctx, contract, sk)
    }

    fn with_key(
        ctx: Arc<Context>,
        contract: ClientContract,
        sk: SecretKey,
    ) -> Result<Self, ClientError> {
        let normalization = Normalization::new(&contract.image.mean, &contract.image.std)?;
        Ok(Self {
            ctx,
            contract,
            normalization,
            sk,
        })
    }

    pub fn contract(&self) -> &ClientContract {
        &self.contract
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The secret key as bytes, for the client's own storage only (zeroized on drop).
    pub fn secret_key_bytes(&self) -> Zeroizing<Vec<u8>> {
        self.sk.to_secret_bytes()
    }

    /// Evaluation key `k` of the contract.
    pub fn make_key(&self, k: usize) -> Result<SwitchingKey, ClientError> {
        let spec = self.contract.key(k)?;
        let mut kg = KeyGenerator::new(&self.ctx, &self.sk);
        Ok(match spec.purpose {
            KeyPurpose::Relin => kg.relin_key(spec.level)?,
            KeyPurpose::Rotation { amount, .. } => kg.rotation_key(amount, spec.level)?,
            KeyPurpose::Conjugation { .. } => kg.conjugation_key(spec.level)?,
        })
    }

    /// Evaluation key `k` in the wire format, as uploaded: seeded and bit-packed, exactly
    /// `contract.keys[k].bytes` long.
    pub fn key_bytes(&self, k: usize) -> Result<Vec<u8>, ClientError> {
        Ok(self.make_key(k)?.to_bytes(&self.ctx)?)
    }

    /// Every evaluation key, in memory (native callers that evaluate in the same process).
    pub fn evaluation_keys(&self) -> Result<EvaluationKeys, ClientError> {
        let indices: Vec<usize> = (0..self.contract.keys.len()).collect();
        #[cfg(not(target_arch = "wasm32"))]
        let made: Vec<_> = {
            use rayon::prelude::*;
            indices.par_iter().map(|&k| self.make_key(k)).collect()
        };
        #[cfg(target_arch = "wasm32")]
        let made: Vec<_> = indices.iter().map(|&k| self.make_key(k)).collect();
        let mut keys = EvaluationKeys::new(&self.ctx);
        for key in made {
            keys.insert(key?)?;
        }
        Ok(keys)
    }

    /// RGBA pixels of any size (a canvas's `ImageData`) to the model's normalized CHW input.
    pub fn image_tensor(
        &self,
        rgba: &[u8],
        width: u32,
        height: u32,
    ) -> Result<Vec<f64>, ClientError> {
        let img = &self.contract.image;
        let dim =
            |n: usize| u32::try_from(n).map_err(|_| ClientError::Contract("image size".into()));
        let rgb = fit_rgba(rgba, width, height, dim(img.width)?, dim(img.height)?)?;
        Ok(self
            .normalization
            .normalize_hwc(rgb.as_raw(), img.height, img.width)?)
    }

    /// Encrypts a normalized CHW tensor at the contract's input layout, level and scale
    /// (secret-key encryption: seeded, half the upload).
    pub fn encrypt_tensor(&self, tensor: &[f64]) -> Result<Ciphertext, ClientError> {
        let input = &self.contract.input;
        let slots = input.layout.place(tensor)?;
        let pt = Plaintext::encode_real(&self.ctx, &slots, input.level, input.scale)?;
        Ok(Encryptor::new(&self.ctx).encrypt_sk(&pt, &self.sk)?)
    }

    /// RGBA pixels to the uploaded ciphertext bytes.
    pub fn encrypt_rgba(
        &self,
        rgba: &[u8],
        width: u32,
        height: u32,
    ) -> Result<Vec<u8>, ClientError> {
        let tensor = self.image_tensor(rgba, width, height)?;
        Ok(self.encrypt_tensor(&tensor)?.to_bytes(&self.ctx)?)
    }

    /// The real parts of the slots of any ciphertext encrypted under this client's key. Wiped
    /// when dropped: all the slots of a decryption, with the ciphertext, give away the key.
    pub fn decrypt_slots(&self, ct: &Ciphertext) -> Result<Zeroizing<Vec<f64>>, ClientError> {
        Ok(Zeroizing::new(
            decrypt(&self.ctx, ct, &self.sk)?
                .decode(&self.ctx)?
                .iter()
                .map(|c| c.re)
                .collect(),
        ))
    }

    /// Decrypts the server's result and reads the logits from the contract's output layout.
    pub fn decrypt_logits(&self, ct: &Ciphertext) -> Result<Vec<f64>, ClientError> {
        let slots = self.decrypt_slots(ct)?;
        Ok(self.contract.output.layout.extract(&slots)?)
    }

    /// The server's result bytes (size-checked against the contract) to a prediction.
    pub fn decrypt_result(&self, bytes: &[u8]) -> Result<Prediction, ClientError> {
        let mut all = self.decrypt_batch_result(bytes, 1)?;
        Ok(all.swap_remove(0))
    }

    /// The result of a job of `images` images (one ciphertext, see [`crate::BatchSpec`]) to one
    /// prediction per image, in upload order.
    pub fn decrypt_batch_result(
        &self,
        bytes: &[u8],
        images: usize,
    ) -> Result<Vec<Prediction>, ClientError> {
        let batch = &self.contract.batch;
        if !(1..=batch.max).contains(&images) {
            return Err(ClientError::Contract(format!(
                "a job holds 1 to {} images, not {images}",
                batch.max
            )));
        }
        let ct = Ciphertext::from_bytes(&self.ctx, bytes, self.contract.output.bytes)?;
        if ct.level() != self.contract.output.level {
            return Err(ClientError::Contract(format!(
                "the result is at level {}, the contract says {}",
                ct.level(),
                self.contract.output.level
            )));
        }
        let slots = self.decrypt_slots(&ct)?;
        let layout = &self.contract.output.layout;
        // one image is evaluated as ever, its logits unshifted
        let shifts = if images == 1 {
            &[0][..]
        } else {
            &batch.shifts[..images]
        };
        shifts
            .iter()
            .map(|&shift| {
                let logits = layout.extract_shifted(&slots, shift)?;
                // a result under another key decrypts to noise far beyond any logit, often not
                // finite
                if logits.iter().any(|x| !x.is_finite() || x.abs() > 1e6) {
                    return Err(ClientError::Contract(
                        "the result does not decrypt under this client's key".into(),
                    ));
                }
                Ok(self.predict(logits))
            })
            .collect()
    }

    /// Logits to probabilities and the label.
    pub fn predict(&self, logits: Vec<f64>) -> Prediction {
        let probabilities = softmax(&logits);
        let index = argmax(&logits);
        let label = self
            .contract
            .classes
            .get(index)
            .cloned()
            .unwrap_or_default();
        Prediction {
            logits,
            probabilities,
            index,
            label,
        }
    }
}
