//! Model-input layout shared by the browser and the server.
//!
//! Both sides must turn the same pixels into bit-identical tensors, or the encrypted result drifts from
//! the plaintext reference: so the normalization lives here, in one place, and both call it. A tensor is
//! channel-major (CHW), the layout the network's weights are stored in; decoded images arrive
//! interleaved (HWC), CIFAR records planar (CHW), and both are supported.
//!
//! `SlotLayout` maps such a tensor into the slots of one ciphertext: the browser places the image
//! with it, the server plans every intermediate tensor with it, and the browser reads the logits
//! back with it.

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
    /// A slot layout whose geometry does not fit or does not tile the slots.
    Geometry(String),
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
            Self::Geometry(detail) => write!(f, "slot layout: {detail}"),
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

/// Where each element of a `(channels, height, width)` tensor lives in the slots of one ciphertext.
///
/// Channel `c` occupies block `c % blocks` (a block is `block` slots, a map of rows of `row` slots);
/// element `(y, x)` sits at row `y * gap`, column `x * gap`. A map shrunk by strided convolutions keeps
/// its gaps (`gap` > 1) instead of being repacked, and channels beyond `blocks` fill those gaps: channel
/// `c` takes sub-position `s = c / blocks`, placed by [`SlotLayout::sub_offset`]. The
/// whole pattern is shifted by `offset` (cyclically), which lets a linear layer pick an output position
/// that keeps its rotation amounts small, and repeats every `blocks * block` slots: the tensor is
/// replicated across the slots, so a rotation by less than one period reads valid data everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(try_from = "SlotLayoutParts", into = "SlotLayoutParts")
)]
pub struct SlotLayout {
    channels: usize,
    height: usize,
    width: usize,
    /// Slots of the ciphertext (N/2).
    slots: usize,
    /// Slots per channel block.
    block: usize,
    /// Slots per map row.
    row: usize,
    /// Distance between neighbouring elements of a map, in rows and columns.
    gap: usize,
    /// Distinct channel blocks before the pattern repeats.
    blocks: usize,
    /// Cyclic shift of the whole pattern.
    offset: usize,
}

/// The fields of a [`SlotLayout`], plain: what travels in the client contract. Turning parts into
/// a layout runs the same validation as every constructor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SlotLayoutParts {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub slots: usize,
    pub block: usize,
    pub row: usize,
    pub gap: usize,
    pub blocks: usize,
    pub offset: usize,
}

impl TryFrom<SlotLayoutParts> for SlotLayout {
    type Error = LayoutError;

    fn try_from(p: SlotLayoutParts) -> Result<Self, LayoutError> {
        SlotLayout {
            channels: p.channels,
            height: p.height,
            width: p.width,
            slots: p.slots,
            block: p.block,
            row: p.row,
            gap: p.gap,
            blocks: p.blocks,
            offset: p.offset,
        }
        .validated()
    }
}

impl From<SlotLayout> for SlotLayoutParts {
    fn from(l: SlotLayout) -> Self {
        SlotLayoutParts {
            channels: l.channels,
            height: l.height,
            width: l.width,
            slots: l.slots,
            block: l.block,
            row: l.row,
            gap: l.gap,
            blocks: l.blocks,
            offset: l.offset,
        }
    }
}

impl SlotLayout {
    pub fn channels(&self) -> usize {
        self.channels
    }
    pub fn height(&self) -> usize {
        self.height
    }
    pub fn width(&self) -> usize {
        self.width
    }
    /// Slots of the ciphertext (N/2).
    pub fn slots(&self) -> usize {
        self.slots
    }
    /// Slots per channel block.
    pub fn block(&self) -> usize {
        self.block
    }
    /// Slots per map row.
    pub fn row(&self) -> usize {
        self.row
    }
    /// Distance between neighbouring elements of a map, in rows and columns.
    pub fn gap(&self) -> usize {
        self.gap
    }
    /// Distinct channel blocks before the pattern repeats.
    pub fn blocks(&self) -> usize {
        self.blocks
    }
    /// Cyclic shift of the whole pattern.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The same channels and geometry with each map reduced to one element (its top-left
    /// position): the layout of a global average pool's output.
    pub fn pooled(&self) -> Result<Self, LayoutError> {
        Self {
            height: 1,
            width: 1,
            ..self.clone()
        }
        .validated()
    }

    /// Checks that every element gets its own slot and that the pattern tiles the slots (build the
    /// struct, then validate it; the offset is taken modulo the slots). Every constructor ends
    /// here, so a `SlotLayout` that exists is valid: no size is zero, nothing divides by zero.
    fn validated(self) -> Result<Self, LayoutError> {
        let Self {
            channels,
            height,
            width,
            slots,
            block,
            row,
            gap,
            blocks,
            offset,
        } = self;
        let bad = |d: String| Err(LayoutError::Geometry(d));
        if [channels, height, width, slots, block, row, gap, blocks].contains(&0) {
            return bad("every size must be positive".into());
        }
        let per_block = gap.checked_mul(gap).and_then(|g2| blocks.checked_mul(g2));
        if per_block.is_none_or(|p| p < channels) {
            return bad(format!(
                "{channels} channels do not fit {blocks} blocks with gap {gap}"
            ));
        }
        if width.saturating_mul(gap) > row {
            return bad(format!(
                "{width} columns with gap {gap} exceed a row of {row} slots"
            ));
        }
        if height.saturating_mul(gap).saturating_mul(row) > block {
            return bad(format!(
                "{height} rows with gap {gap} of {row} slots exceed a block of {block}"
            ));
        }
        let period = blocks.saturating_mul(block);
        if period > slots || !slots.is_multiple_of(period) {
            return bad(format!(
                "the period {blocks} x {block} does not divide {slots} slots"
            ));
        }
        Ok(Self {
            channels,
            height,
            width,
            slots,
            block,
            row,
            gap,
            blocks,
            offset: offset % slots,
        })
    }

    /// The plain layout of a map of `height x width` with one channel per block of
    /// `next_power_of_two(height * width)` slots: how an image is first placed.
    pub fn dense(
        channels: usize,
        height: usize,
        width: usize,
        slots: usize,
    ) -> Result<Self, LayoutError> {
        let row = width.next_power_of_two();
        let block = (height.next_power_of_two()).saturating_mul(row);
        let blocks = channels
            .next_power_of_two()
            .min(slots / block.max(1))
            .max(1);
        Self {
            channels,
            height,
            width,
            slots,
            block,
            row,
            gap: 1,
            blocks,
            offset: 0,
        }
        .validated()
    }

    /// The same geometry for a tensor of another shape and gap: the layout of a layer's output.
    /// Channels take `next_power_of_two(channels)` blocks, or as many as the slots hold (the rest
    /// fill gaps).
    pub fn derive(
        &self,
        channels: usize,
        height: usize,
        width: usize,
        gap: usize,
    ) -> Result<Self, LayoutError> {
        let blocks = channels
            .next_power_of_two()
            .min(self.slots / self.block)
            .max(1);
        Self {
            channels,
            height,
            width,
            gap,
            blocks,
            ..self.clone()
        }
        .validated()
    }

    /// This layout shifted by `delta` slots (cyclically).
    pub fn shifted(&self, delta: i64) -> Self {
        let s = self.slots as i64;
        Self {
            offset: (self.offset as i64 + delta).rem_euclid(s) as usize,
            ..self.clone()
        }
    }

    /// Slots between two copies of the tensor.
    pub fn period(&self) -> usize {
        self.blocks * self.block
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slot of element `(c, y, x)` in the first copy.
    pub fn slot(&self, c: usize, y: usize, x: usize) -> usize {
        let (b, s) = (c % self.blocks, c / self.blocks);
        let (dy, dx) = self.sub_offset(s);
        let pos = b * self.block + (y * self.gap + dy) * self.row + x * self.gap + dx;
        (pos + self.offset) % self.slots
    }

    /// Row and column offset of sub-position `s` inside a gap cell. The sub-positions in use are
    /// spread evenly over the cell, columns first: two of them in a 4x4 cell sit 2 columns apart,
    /// so moving a channel to the other sub-position is the same rotation as half a kernel step,
    /// and a convolution needs fewer distinct rotations (ResNet-20's 64-channel stage: 21 baby
    /// steps instead of 27, a quarter fewer plaintext products).
    pub fn sub_offset(&self, s: usize) -> (usize, usize) {
        let used = self.channels.div_ceil(self.blocks).max(1);
        let cols = used.min(self.gap);
        let rows = used.div_ceil(cols);
        (
            (s / cols) * (self.gap / rows),
            (s % cols) * (self.gap / cols),
        )
    }

    /// The slot of the element at flat CHW index `i` in the first copy.
    pub fn slot_of(&self, i: usize) -> usize {
        let hw = self.height * self.width;
        self.slot(i / hw, (i % hw) / self.width, i % self.width)
    }

    /// Places a CHW tensor into a slot vector (every copy; other slots zero).
    pub fn place(&self, tensor: &[f64]) -> Result<Vec<f64>, LayoutError> {
        if tensor.len() != self.len() {
            return Err(LayoutError::Length {
                expected: self.len(),
                found: tensor.len(),
            });
        }
        let mut slots = vec![0.0; self.slots];
        for (i, &v) in tensor.iter().enumerate() {
            let s = self.slot_of(i);
            for k in 0..self.slots / self.period() {
                slots[(s + k * self.period()) % self.slots] = v;
            }
        }
        Ok(slots)
    }

    /// Every slot the tensor occupies, over all copies.
    fn occupied(&self) -> Vec<usize> {
        let copies = self.slots / self.period();
        (0..self.len())
            .flat_map(|i| {
                let s = self.slot_of(i);
                (0..copies).map(move |k| (s + k * self.period()) % self.slots)
            })
            .collect()
    }

    /// Shifts (in slots) at which copies of this layout's tensor fit beside each other without
    /// sharing a slot: where a batch's images go in the slots one image leaves idle (the gap
    /// cells a strided layout keeps). The result starts with `prefix` when every shift in it fits
    /// (so images need not move between layers), then adds offsets inside one gap cell in
    /// row-major order; it is `[0]` for a layout without gaps.
    pub fn batch_shifts(&self, prefix: &[usize]) -> Vec<usize> {
        let occupied = self.occupied();
        let mut taken = vec![false; self.slots];
        let mut shifts = Vec::new();
        let try_add = |d: usize, taken: &mut Vec<bool>, shifts: &mut Vec<usize>| {
            if shifts.contains(&d) || occupied.iter().any(|&s| taken[(s + d) % self.slots]) {
                return false;
            }
            for &s in &occupied {
                taken[(s + d) % self.slots] = true;
            }
            shifts.push(d);
            true
        };
        if prefix.first() == Some(&0) {
            for &d in prefix {
                if !try_add(d % self.slots, &mut taken, &mut shifts) {
                    taken.iter_mut().for_each(|t| *t = false);
                    shifts.clear();
                    break;
                }
            }
        }
        for ey in 0..self.gap {
            for ex in 0..self.gap {
                try_add(ey * self.row + ex, &mut taken, &mut shifts);
            }
        }
        shifts
    }

    /// Places the same CHW tensor at each of `shifts` (every copy; other slots zero).
    pub fn place_shifted(&self, tensor: &[f64], shifts: &[usize]) -> Result<Vec<f64>, LayoutError> {
        let one = self.place(tensor)?;
        if shifts == [0] {
            return Ok(one);
        }
        let mut slots = vec![0.0; self.slots];
        for &d in shifts {
            for (i, &v) in one.iter().enumerate() {
                if v != 0.0 {
                    slots[(i + d) % self.slots] = v;
                }
            }
        }
        Ok(slots)
    }

    /// Reads the CHW tensor placed `shift` slots further (a batch's image) from the first copy.
    pub fn extract_shifted(&self, slots: &[f64], shift: usize) -> Result<Vec<f64>, LayoutError> {
        if slots.len() != self.slots {
            return Err(LayoutError::Length {
                expected: self.slots,
                found: slots.len(),
            });
        }
        Ok((0..self.len())
            .map(|i| slots[(self.slot_of(i) + shift) % self.slots])
            .collect())
    }

    /// Reads the CHW tensor back from the first copy.
    pub fn extract(&self, slots: &[f64]) -> Result<Vec<f64>, LayoutError> {
        if slots.len() != self.slots {
            return Err(LayoutError::Length {
                expected: self.slots,
                found: slots.len(),
            });
        }
        Ok((0..self.len()).map(|i| slots[self.slot_of(i)]).collect())
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

    /// channels, height, width, slots, block, row, gap, blocks, offset
    fn lay(
        [channels, height, width, slots, block, row, gap, blocks, offset]: [usize; 9],
    ) -> Result<SlotLayout, LayoutError> {
        SlotLayout {
            channels,
            height,
            width,
            slots,
            block,
            row,
            gap,
            blocks,
            offset,
        }
        .validated()
    }

    #[test]
    fn slot_layout_gives_every_element_its_own_slot() {
        // 16 channels of 8x8 with gap 2 in blocks of 256: 8 blocks, the rest in the gaps.
        let l = lay([16, 8, 8, 4096, 256, 16, 2, 8, 4090]).unwrap();
        let mut seen = std::collections::HashSet::new();
        for i in 0..l.len() {
            assert!(seen.insert(l.slot_of(i)), "slot of {i} taken twice");
        }
        let t: Vec<f64> = (0..l.len()).map(|i| i as f64).collect();
        let slots = l.place(&t).unwrap();
        assert_eq!(l.extract(&slots).unwrap(), t);
        // replicated every period
        for (i, &v) in t.iter().enumerate() {
            let s = l.slot_of(i);
            assert_eq!(slots[(s + l.period()) % l.slots], v);
        }
        assert_eq!(l.shifted(10).slot(0, 0, 0), (l.slot(0, 0, 0) + 10) % 4096);
    }

    #[test]
    fn used_sub_positions_are_spread_over_the_gap_cell() {
        // ResNet-20's last stage: 64 channels of 8x8, gap 4, 32 blocks: two sub-positions per
        // block, two columns apart
        let l = lay([64, 8, 8, 32768, 1024, 32, 4, 32, 0]).unwrap();
        assert_eq!(l.slot(32, 0, 0), l.slot(0, 0, 0) + 2);
        assert_eq!(l.slot(33, 1, 1), l.slot(1, 1, 1) + 2);
        // four sub-positions fill a row of the cell; eight take two rows, two apart
        let l = lay([128, 8, 8, 32768, 1024, 32, 4, 32, 0]).unwrap();
        assert_eq!(l.sub_offset(3), (0, 3));
        let l = lay([256, 8, 8, 32768, 1024, 32, 4, 32, 0]).unwrap();
        assert_eq!((l.sub_offset(4), l.sub_offset(7)), ((2, 0), (2, 3)));
        // a gap of 3 with 5 sub-positions: 3 columns, 2 rows, all distinct inside the cell
        let l = lay([10, 4, 4, 4096, 256, 16, 3, 2, 0]).unwrap();
        let subs: std::collections::HashSet<_> = (0..5).map(|s| l.sub_offset(s)).collect();
        assert_eq!(subs.len(), 5);
        assert!(subs.iter().all(|&(dy, dx)| dy < 3 && dx < 3));
        for l in [l, lay([64, 8, 8, 32768, 1024, 32, 4, 32, 7]).unwrap()] {
            let mut seen = std::collections::HashSet::new();
            for i in 0..l.len() {
                assert!(seen.insert(l.slot_of(i)), "slot of {i} taken twice");
            }
        }
    }

    #[test]
    fn slot_layout_refuses_what_does_not_fit() {
        assert!(lay([17, 8, 8, 4096, 256, 16, 2, 4, 0]).is_err());
        assert!(lay([4, 8, 9, 4096, 256, 16, 2, 4, 0]).is_err());
        assert!(lay([4, 8, 8, 4096, 128, 16, 2, 4, 0]).is_err());
        assert!(lay([3, 8, 8, 4096, 256, 16, 1, 3, 0]).is_err());
        assert!(lay([0, 8, 8, 4096, 256, 16, 1, 4, 0]).is_err());
        let l = SlotLayout::dense(3, 32, 32, 32768).unwrap();
        assert_eq!((l.block, l.blocks, l.period()), (1024, 4, 4096));
        assert!(l.place(&[0.0; 5]).is_err());
        assert!(l.extract(&[0.0; 5]).is_err());
    }

    #[test]
    fn every_constructor_validates() {
        // a zero size can only be asked for, never built (no division by zero later)
        assert!(SlotLayout::dense(0, 4, 4, 1024).is_err());
        assert!(SlotLayout::dense(3, 0, 4, 1024).is_err());
        let l = SlotLayout::dense(3, 4, 4, 1024).unwrap();
        assert!(l.derive(0, 2, 2, 2).is_err());
        assert!(
            l.derive(3, 64, 64, 1).is_err(),
            "a map larger than its block"
        );
        let p = l.derive(8, 2, 2, 2).unwrap().pooled().unwrap();
        assert_eq!((p.height(), p.width(), p.channels()), (1, 1, 8));
        assert_eq!(p.slots() % p.period(), 0);
        // parts round-trip, and bad parts are refused
        let parts = SlotLayoutParts::from(p.clone());
        assert_eq!(SlotLayout::try_from(parts).unwrap(), p);
        assert!(SlotLayout::try_from(SlotLayoutParts { blocks: 0, ..parts }).is_err());
        assert!(SlotLayout::try_from(SlotLayoutParts {
            slots: 1000,
            ..parts
        })
        .is_err());
        // sizes whose products overflow are refused, not a panic (found by the contract fuzzer)
        assert!(SlotLayout::try_from(SlotLayoutParts {
            gap: 14_294_967_296,
            ..parts
        })
        .is_err());
        assert!(SlotLayout::try_from(SlotLayoutParts {
            gap: usize::MAX,
            blocks: usize::MAX,
            ..parts
        })
        .is_err());
    }
}
