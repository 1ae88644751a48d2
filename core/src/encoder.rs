//! The canonical embedding of CKKS: N/2 complex slots <-> real polynomials of degree < N, through
//! the "special" FFT over the orbit of 5 modulo 2N (slot j is the evaluation at zeta^(5^j), so that
//! the automorphism X -> X^(5^r) rotates the slots by r and X -> X^-1 conjugates them).
//!
//! Precision: the transform is exact up to f64 rounding (about 2^-50 relative); encoding error is
//! dominated by rounding coefficients to integers, 2^-1 / scale per coefficient, and is tested.

use zeroize::Zeroizing;

/// A complex number; CKKS needs only the arithmetic below.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Complex {
    pub re: f64,
    pub im: f64,
}

impl zeroize::DefaultIsZeroes for Complex {}

impl Complex {
    pub const fn new(re: f64, im: f64) -> Self {
        Self { re, im }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Self::new(self.re + o.re, self.im + o.im)
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Self::new(self.re - o.re, self.im - o.im)
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Self::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
    pub fn norm(self) -> f64 {
        self.re.hypot(self.im)
    }
}

impl From<f64> for Complex {
    fn from(re: f64) -> Self {
        Self::new(re, 0.0)
    }
}

/// Precomputed tables of the special FFT for one ring degree.
#[derive(Debug)]
pub struct Encoder {
    n: usize,
    /// The forward transform's twiddles, stage by stage: the stage of half-length `h` holds
    /// `exp(2*pi*i * (5^j mod 4*2h) / (4*2h))` for `j < h` at `h - 1 + j` (the inverse uses their
    /// conjugates), so the butterflies read them in order.
    twiddles: Vec<Complex>,
    /// The bit-reversal permutation of `0..N/2`.
    bit_reverse: Vec<u32>,
}

impl Encoder {
    pub fn new(n: usize) -> Self {
        assert!(n.is_power_of_two() && n >= 4);
        let m = 2 * n;
        let mut rot_group = Vec::with_capacity(n / 2);
        let mut g = 1usize;
        for _ in 0..n / 2 {
            rot_group.push(g);
            g = g * 5 % m;
        }
        let slots = n / 2;
        let mut twiddles = vec![Complex::default(); slots.max(1)];
        let mut h = 1;
        while h < slots {
            let lenq = 8 * h;
            for (j, &g) in rot_group.iter().take(h).enumerate() {
                let a = 2.0 * std::f64::consts::PI * (g % lenq) as f64 / lenq as f64;
                twiddles[h - 1 + j] = Complex::new(a.cos(), a.sin());
            }
            h <<= 1;
        }
        let bits = slots.trailing_zeros();
        let bit_reverse = (0..slots as u32)
            .map(|i| i.reverse_bits().checked_shr(32 - bits).unwrap_or(0))
            .collect();
        Self {
            n,
            twiddles,
            bit_reverse,
        }
    }

    pub fn slots(&self) -> usize {
        self.n / 2
    }

    /// Slot values (at most N/2; missing ones are zero) to polynomial coefficients times `scale`,
    /// unrounded: `coeffs[i]` and `coeffs[i + N/2]` are the real and imaginary parts of the
    /// inverse transform.
    pub fn slots_to_coeffs(&self, values: &[Complex], scale: f64) -> Vec<f64> {
        let slots = self.slots();
        assert!(values.len() <= slots);
        let mut v = vec![Complex::default(); slots];
        v[..values.len()].copy_from_slice(values);
        self.special_ifft(&mut v);
        let scale = scale / slots as f64;
        let mut out = vec![0.0; self.n];
        for (i, c) in v.iter().enumerate() {
            out[i] = c.re * scale;
            out[i + slots] = c.im * scale;
        }
        out
    }

    /// Polynomial coefficients (already centered, as reals) divided by `scale`, to slot values.
    /// Wiped when dropped: all N/2 slots of a decryption are an invertible transform of its
    /// coefficients, and so as secret as they are (callers keep only the slots they need).
    pub fn coeffs_to_slots(&self, coeffs: &[f64], scale: f64) -> Zeroizing<Vec<Complex>> {
        let slots = self.slots();
        assert_eq!(coeffs.len(), self.n);
        let mut v: Zeroizing<Vec<Complex>> = Zeroizing::new(
            (0..slots)
                .map(|i| Complex::new(coeffs[i] / scale, coeffs[i + slots] / scale))
                .collect(),
        );
        self.special_fft(&mut v);
        v
    }

    fn special_fft(&self, v: &mut [Complex]) {
        let size = v.len();
        self.permute(v);
        let mut len = 2;
        while len <= size {
            let lenh = len >> 1;
            let tw = &self.twiddles[lenh - 1..len - 1];
            for chunk in v.chunks_exact_mut(len) {
                let (lo, hi) = chunk.split_at_mut(lenh);
                for ((a, b), &w) in lo.iter_mut().zip(hi.iter_mut()).zip(tw) {
                    let u = *a;
                    let t = b.mul(w);
                    *a = u.add(t);
                    *b = u.sub(t);
                }
            }
            len <<= 1;
        }
    }

    /// The inverse transform, unnormalized (the caller divides by the size).
    fn special_ifft(&self, v: &mut [Complex]) {
        let size = v.len();
        let mut len = size;
        while len >= 2 {
            let lenh = len >> 1;
            let tw = &self.twiddles[lenh - 1..len - 1];
            for chunk in v.chunks_exact_mut(len) {
                let (lo, hi) = chunk.split_at_mut(lenh);
                for ((a, b), &w) in lo.iter_mut().zip(hi.iter_mut()).zip(tw) {
                    let u = a.add(*b);
                    let d = a.sub(*b);
                    *a = u;
                    // times the conjugate twiddle
                    *b = Complex::new(d.re * w.re + d.im * w.im, d.im * w.re - d.re * w.im);
                }
            }
            len >>= 1;
        }
        self.permute(v);
    }

    /// Bit-reversal permutation (size N/2, the only size the transforms run at).
    fn permute(&self, v: &mut [Complex]) {
        debug_assert_eq!(v.len(), self.bit_reverse.len());
        for (i, &j) in self.bit_reverse.iter().enumerate() {
            let j = j as usize;
            if i < j {
                v.swap(i, j);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evaluates the polynomial at zeta^(5^j) directly.
    fn eval(coeffs: &[f64], n: usize, j: usize) -> Complex {
        let m = 2 * n;
        let mut e = 1usize;
        for _ in 0..j {
            e = e * 5 % m;
        }
        let mut acc = Complex::default();
        for (k, &c) in coeffs.iter().enumerate() {
            let a = 2.0 * std::f64::consts::PI * ((e * k) % m) as f64 / m as f64;
            acc = acc.add(Complex::new(c * a.cos(), c * a.sin()));
        }
        acc
    }

    #[test]
    fn embedding_evaluates_at_the_orbit_of_5() {
        let n = 32;
        let enc = Encoder::new(n);
        let vals: Vec<Complex> = (0..n / 2)
            .map(|i| Complex::new(i as f64 * 0.25 - 1.0, 0.5 - i as f64 * 0.125))
            .collect();
        let coeffs = enc.slots_to_coeffs(&vals, 1.0);
        for (j, v) in vals.iter().enumerate() {
            let got = eval(&coeffs, n, j);
            assert!(got.sub(*v).norm() < 1e-12, "slot {j}");
        }
        let back = enc.coeffs_to_slots(&coeffs, 1.0);
        for (a, b) in back.iter().zip(&vals) {
            assert!(a.sub(*b).norm() < 1e-12);
        }
    }

    #[test]
    fn rounding_error_is_bounded() {
        let n = 1 << 12;
        let enc = Encoder::new(n);
        let vals: Vec<Complex> = (0..n / 2)
            .map(|i| Complex::new(((i * 37) % 101) as f64 / 50.0 - 1.0, 0.0))
            .collect();
        let scale = 2f64.powi(30);
        let coeffs: Vec<f64> = enc
            .slots_to_coeffs(&vals, scale)
            .iter()
            .map(|c| c.round())
            .collect();
        let back = enc.coeffs_to_slots(&coeffs, scale);
        let err = back
            .iter()
            .zip(&vals)
            .map(|(a, b)| a.sub(*b).norm())
            .fold(0.0, f64::max);
        // rounding adds at most 1/2 per coefficient; in a slot about sqrt(N)/2 / scale on average
        assert!(err < (n as f64).sqrt() * 4.0 / scale, "max error {err}");
    }
}
