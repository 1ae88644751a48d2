//! Wire format: round trips for every object, and typed errors for truncated, oversized,
//! corrupted and foreign-parameter input (proptest).

use std::sync::{Arc, OnceLock};

use blindsight_core::wire::{self, ciphertext_size, switching_key_size};
use blindsight_core::*;
use proptest::prelude::*;

struct Fx {
    ctx: Arc<Context>,
    sk: SecretKey,
    pk: PublicKey,
    rlk: SwitchingKey,
    gk: SwitchingKey,
    ct_seeded: Ciphertext,
    ct_full: Ciphertext,
    pt: Plaintext,
}

fn fx() -> &'static Fx {
    static F: OnceLock<Fx> = OnceLock::new();
    F.get_or_init(|| {
        let ctx = Context::named("N14_TEST").unwrap();
        let sk = SecretKey::generate(&ctx);
        let mut kg = KeyGenerator::new(&ctx, &sk);
        let pk = kg.public_key();
        let rlk = kg.relin_key(3).unwrap();
        let gk = kg.rotation_key(5, ctx.max_level()).unwrap();
        let v: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
        let pt = Plaintext::encode_real(&ctx, &v, ctx.max_level(), 2f64.powi(30)).unwrap();
        let ct_seeded = Encryptor::new(&ctx).encrypt_sk(&pt, &sk).unwrap();
        let ct_full = Encryptor::new(&ctx).encrypt_pk(&pt, &pk).unwrap();
        Fx {
            ctx,
            sk,
            pk,
            rlk,
            gk,
            ct_seeded,
            ct_full,
            pt,
        }
    })
}

const LIMIT: usize = 64 << 20;

#[test]
fn round_trips() {
    let f = fx();
    let ctx = &f.ctx;
    for ct in [&f.ct_seeded, &f.ct_full] {
        let bytes = ct.to_bytes(ctx).unwrap();
        assert_eq!(
            bytes.len(),
            ciphertext_size(ctx, ct.level(), 1, ct.is_seeded()).unwrap()
        );
        let back = Ciphertext::from_bytes(ctx, &bytes, LIMIT).unwrap();
        assert_eq!(&back, ct);
    }
    // a seeded ciphertext is about half the size of an unseeded one
    let (s, u) = (
        f.ct_seeded.to_bytes(ctx).unwrap().len(),
        f.ct_full.to_bytes(ctx).unwrap().len(),
    );
    assert!(s * 2 < u + 200, "{s} vs {u}");
    // residues are bit-packed: 6 primes of 60/50 bits = 310 bits per coefficient
    assert_eq!(
        ctx.params()
            .q()
            .iter()
            .map(|q| 64 - q.leading_zeros())
            .sum::<u32>(),
        310
    );
    assert!(u < 2 * ctx.n() * 310 / 8 + 100);
    let pt = Plaintext::from_bytes(ctx, &f.pt.to_bytes(ctx).unwrap(), LIMIT).unwrap();
    assert_eq!(pt, f.pt);
    let pk = PublicKey::from_bytes(ctx, &f.pk.to_bytes(ctx).unwrap(), LIMIT).unwrap();
    assert_eq!(pk, f.pk);
    for key in [&f.rlk, &f.gk] {
        let bytes = key.to_bytes(ctx).unwrap();
        assert_eq!(bytes.len(), switching_key_size(ctx, key.level()).unwrap());
        assert_eq!(&SwitchingKey::from_bytes(ctx, &bytes, LIMIT).unwrap(), key);
    }
    let params = Params::from_bytes(&ctx.params().to_bytes()).unwrap();
    assert_eq!(&params, ctx.params());
    // a deserialized seeded ciphertext still decrypts
    let back = Ciphertext::from_bytes(ctx, &f.ct_seeded.to_bytes(ctx).unwrap(), LIMIT).unwrap();
    let got = decrypt(ctx, &back, &f.sk).unwrap().decode(ctx).unwrap();
    assert!((got[42].re - 0.42).abs() < 1e-6);
}

#[test]
fn foreign_and_wrong_kind_and_limits() {
    let f = fx();
    let ctx = &f.ctx;
    let other = Context::named("N12_TINY").unwrap();
    let bytes = f.ct_seeded.to_bytes(ctx).unwrap();
    assert_eq!(
        Ciphertext::from_bytes(&other, &bytes, LIMIT),
        Err(WireError::Fingerprint)
    );
    assert!(matches!(
        PublicKey::from_bytes(ctx, &bytes, LIMIT),
        Err(WireError::Kind { .. })
    ));
    assert!(matches!(
        Ciphertext::from_bytes(ctx, &bytes, 1000),
        Err(WireError::TooLarge { .. })
    ));
    let mut v2 = bytes.clone();
    v2[4] = 9;
    assert_eq!(
        Ciphertext::from_bytes(ctx, &v2, LIMIT),
        Err(WireError::Version(9))
    );
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(
        Ciphertext::from_bytes(ctx, &long, LIMIT),
        Err(WireError::Trailing(1))
    );
    // level beyond the chain
    let mut lv = bytes.clone();
    lv[40] = 200;
    assert!(Ciphertext::from_bytes(ctx, &lv, LIMIT).is_err());
    // a residue >= its prime: set the first packed residue to all ones
    let mut res = f.ct_full.to_bytes(ctx).unwrap();
    let start = res.len() - ciphertext_size(ctx, f.ct_full.level(), 1, false).unwrap() + 40 + 2 + 9;
    for b in &mut res[start..start + 8] {
        *b = 0xff;
    }
    assert_eq!(
        Ciphertext::from_bytes(ctx, &res, LIMIT),
        Err(WireError::Residue { prime_index: 0 })
    );
    // params that fail the security bound are refused even if well-formed
    let mut p = ctx.params().to_bytes();
    let name_len = p[42] as usize;
    p[43 + name_len] = 13; // log_n 14 -> 13: the same chain is insecure there
    assert!(Params::from_bytes(&p).is_err());
}

#[test]
fn seed_expansion_test_vector() {
    // The same digest is checked by the wasm32 test (tests/wasm.rs): native and browser must
    // expand a seed to the same polynomial.
    let ctx = Context::named("N12_TINY").unwrap();
    let d = wire::seed_expansion_digest(&ctx);
    assert_eq!(hex(&d), SEED_VECTOR.trim());
}

pub const SEED_VECTOR: &str = include_str!("seed_vector.txt");

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn truncation_is_an_error(cut in 0usize..1000) {
        let f = fx();
        for bytes in [f.ct_seeded.to_bytes(&f.ctx).unwrap(), f.gk.to_bytes(&f.ctx).unwrap(), f.pk.to_bytes(&f.ctx).unwrap()] {
            let at = cut.min(bytes.len() - 1) * (bytes.len() - 1) / 999;
            let t = &bytes[..at];
            prop_assert!(Ciphertext::from_bytes(&f.ctx, t, LIMIT).is_err());
            prop_assert!(SwitchingKey::from_bytes(&f.ctx, t, LIMIT).is_err());
            prop_assert!(PublicKey::from_bytes(&f.ctx, t, LIMIT).is_err());
        }
    }

    #[test]
    fn corrupted_headers_never_panic(pos in 0usize..60, val in any::<u8>()) {
        let f = fx();
        for bytes in [f.ct_seeded.to_bytes(&f.ctx).unwrap(), f.ct_full.to_bytes(&f.ctx).unwrap(), f.rlk.to_bytes(&f.ctx).unwrap()] {
            let mut b = bytes.clone();
            b[pos] = val;
            // either an error, or (if the byte did not matter) a valid object
            let _ = Ciphertext::from_bytes(&f.ctx, &b, LIMIT);
            let _ = SwitchingKey::from_bytes(&f.ctx, &b, LIMIT);
            let _ = Plaintext::from_bytes(&f.ctx, &b, LIMIT);
            let _ = Params::from_bytes(&b);
        }
    }

    #[test]
    fn random_bytes_are_rejected(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let f = fx();
        prop_assert!(Ciphertext::from_bytes(&f.ctx, &data, LIMIT).is_err());
        prop_assert!(SwitchingKey::from_bytes(&f.ctx, &data, LIMIT).is_err());
        prop_assert!(Params::from_bytes(&data).is_err());
    }

    #[test]
    fn corrupted_payload_is_caught_or_harmless(pos in 0usize..100000, val in any::<u8>()) {
        let f = fx();
        let mut b = f.ct_full.to_bytes(&f.ctx).unwrap();
        let p = 51 + pos % (b.len() - 51);
        b[p] = val;
        match Ciphertext::from_bytes(&f.ctx, &b, LIMIT) {
            Err(WireError::Residue { .. }) | Ok(_) => {}
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }
}
