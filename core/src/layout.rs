//! Model-input layout shared by the browser and the server.
//!
//! Both sides must turn the same pixels into bit-identical tensors, or the encrypted result drifts from
//! the plaintext reference: so the normalization lives here, in one place, and both call it. A tensor is
//! channel-major (CHW), the layout the network's weights are stored in; decoded images arrive
//! interleaved (HWC), CIFAR records planar (CHW), and both are supported.
//!
//! The mapping of this tensor into CKKS slots (the packing) comes later, in this module, once the
//! encrypted convolution's layout is fixed.

use std::fmt;

/// Why pixels could not be normalized.
#[derive(Debug, Clone, PartialEq)]
pub enum LayoutError {
    /// Mean and standard deviation lists differ in length, or are empty.
    ChannelCount { mean: usize, std: usize },
    /// A mean or standard deviation is not finite, or a standard deviation is not positive.
    InvalidStatistic { channel: usize, mean: f64, std: f64 },
    /// The pixel buffer does not hold `channels * height * width` bytes.
    Length { expected: usize, found: usize },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ChannelCount { mean, std } => write!(
                f,
                "normalization needs one mean and one std per channel (at least one), got {mean} means and {std} stds"
            ),
            Self::InvalidStatistic { channel, mean, std } => write!(
                f,
                "channel {channel}: mean {mean} and std {std} must be finite and std positive"
            ),
            Self::Length { expected, found } => {
                write!(f, "pixel buffer holds {found} bytes, expected {expected}")
            }
        }
    }
}

impl std::error::Error for LayoutError {}

/// Per-channel input normalization `(x / 255 - mean) / std`, as the model was trained with.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    /// `table[c][x]` is the normalized value of byte `x` in channel `c`: 256 entries computed with the
    /// formula above, so a lookup is exact and costs nothing per pixel.
    table: Vec<[f64; 256]>,
}

impl Normalization {
    /// Checks the statistics: one finite mean and one finite, positive std per channel.
    pub fn new(mean: &[f64], std: &[f64]) -> Result<Self, LayoutError> {
        if mean.len() != std.len() || mean.is_empty() {
            return Err(LayoutError::ChannelCount {
                mean: mean.len(),
                std: std.len(),
            });
        }
        let table = mean
            .iter()
            .zip(std)
            .enumerate()
            .map(|(channel, (&m, &s))| {
                if !(m.is_finite() && s.is_finite() && s > 0.0) {
                    return Err(LayoutError::InvalidStatistic {
                        channel,
                        mean: m,
                        std: s,
                    });
                }
                Ok(std::array::from_fn(|x| (x as f64 / 255.0 - m) / s))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { table })
    }

    /// Number of channels the statistics describe.
    pub fn channels(&self) -> usize {
        self.table.len()
    }

    /// Interleaved pixels (row-major, `channels` bytes per pixel, as images decode) to a normalized
    /// CHW tensor of `channels * height * width` values.
    pub fn normalize_hwc(
        &self,
        pixels: &[u8],
        height: usize,
        width: usize,
    ) -> Result<Vec<f64>, LayoutError> {
        let channels = self.channels();
        let plane = self.check_len(pixels, height, width)?;
        let mut out = vec![0.0; channels * plane];
        for (c, table) in self.table.iter().enumerate() {
            let dst = &mut out[c * plane..(c + 1) * plane];
            for (d, px) in dst.iter_mut().zip(pixels.chunks_exact(channels)) {
                *d = table[usize::from(px[c])];
            }
        }
        Ok(out)
    }

    /// Planar pixels (one row-major plane per channel, as CIFAR records store them) to a normalized
    /// CHW tensor.
    pub fn normalize_chw(
        &self,
        planes: &[u8],
        height: usize,
        width: usize,
    ) -> Result<Vec<f64>, LayoutError> {
        let plane = self.check_len(planes, height, width)?;
        let mut out = Vec::with_capacity(planes.len());
        for (c, table) in self.table.iter().enumerate() {
            let src = &planes[c * plane..(c + 1) * plane];
            out.extend(src.iter().map(|&x| table[usize::from(x)]));
        }
        Ok(out)
    }

    /// Checks that `pixels` holds exactly one image; returns the plane size `height * width`.
    fn check_len(&self, pixels: &[u8], height: usize, width: usize) -> Result<usize, LayoutError> {
        // Saturating: an overflowing size cannot equal the length of a real buffer.
        let plane = height.saturating_mul(width);
        let expected = plane.saturating_mul(self.channels());
        if expected != pixels.len() {
            return Err(LayoutError::Length {
                expected,
                found: pixels.len(),
            });
        }
        Ok(plane)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
    const STD: [f64; 3] = [0.2470, 0.2435, 0.2616];

    fn cifar() -> Normalization {
        Normalization::new(&MEAN, &STD).unwrap()
    }

    #[test]
    fn values_follow_the_formula_exactly() {
        let n = cifar();
        let px = [0u8, 128, 255];
        let t = n.normalize_hwc(&px, 1, 1).unwrap();
        for c in 0..3 {
            assert_eq!(t[c], (px[c] as f64 / 255.0 - MEAN[c]) / STD[c]);
        }
    }

    #[test]
    fn hwc_is_transposed_to_chw() {
        // 2x3 image; pixel (y, x) has channel values (10y + x, 100 + 10y + x, 200 + 10y + x).
        let (h, w) = (2, 3);
        let mut hwc = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let v = (10 * y + x) as u8;
                hwc.extend([v, 100 + v, 200 + v]);
            }
        }
        let unit = Normalization::new(&[0.0; 3], &[1.0 / 255.0; 3]).unwrap();
        let t = unit.normalize_hwc(&hwc, h, w).unwrap();
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let want = (100 * c + 10 * y + x) as f64;
                    assert!((t[(c * h + y) * w + x] - want).abs() < 1e-9);
                }
            }
        }
    }

    #[test]
    fn chw_and_hwc_agree() {
        let (h, w) = (4, 5);
        let hwc: Vec<u8> = (0..h * w * 3).map(|i| (i * 37 % 256) as u8).collect();
        let mut chw = vec![0u8; hwc.len()];
        for (i, px) in hwc.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * h * w + i] = px[c];
            }
        }
        let n = cifar();
        assert_eq!(
            n.normalize_hwc(&hwc, h, w).unwrap(),
            n.normalize_chw(&chw, h, w).unwrap()
        );
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let n = cifar();
        let err = n.normalize_hwc(&[0; 11], 2, 2).unwrap_err();
        assert_eq!(
            err,
            LayoutError::Length {
                expected: 12,
                found: 11
            }
        );
        assert!(n.normalize_chw(&[0; 13], 2, 2).is_err());
        assert!(n.normalize_chw(&[], usize::MAX, 2).is_err());
        assert_eq!(n.normalize_chw(&[], 0, 0).unwrap(), Vec::<f64>::new());
    }

    #[test]
    fn bad_statistics_are_refused() {
        assert!(matches!(
            Normalization::new(&[0.5, 0.5], &[0.2]),
            Err(LayoutError::ChannelCount { mean: 2, std: 1 })
        ));
        assert!(Normalization::new(&[], &[]).is_err());
        assert!(matches!(
            Normalization::new(&[0.5, 0.5], &[0.2, 0.0]),
            Err(LayoutError::InvalidStatistic { channel: 1, .. })
        ));
        assert!(Normalization::new(&[f64::NAN], &[1.0]).is_err());
        assert!(Normalization::new(&[0.0], &[f64::INFINITY]).is_err());
        assert!(LayoutError::Length {
            expected: 3,
            found: 2
        }
        .to_string()
        .contains("expected 3"));
    }
}
