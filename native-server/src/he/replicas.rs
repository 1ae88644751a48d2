//! Replicas: two copies of a layer's input in one ciphertext, where its layouts leave
//! sub-positions of their gap cells idle (the stages after a strided convolution fill a quarter
//! and an eighth of the slots).
//!
//! The input becomes `X = in + rot_s(in)`, one rotation, so that `X` also holds each value `s`
//! slots before its own. Of a layer's giant steps (see `bsgs`), those below `δ` (`δG` = half the
//! period) are written at output sub-position `+s`, reading `in` itself, and the rest at
//! sub-position 0 of the block `δ` further, reading the copy: the same baby rotations serve
//! both, so one plaintext product does the work of two and the Horner chain has half the terms.
//! The result is `rot_δG(Y) + rot_s(Y)`, two hoisted rotations.
//!
//! That sum leaves partial sums at `±s` around each output ("strays"). A layer that reads only
//! its layout never sees them; a copy or an input that lands on one would add it in. The planner
//! tracks each value's stray slots and gives a layer only a shift at which none is read
//! ([`Replicas::reads_clean`]). Column shifts wrap around the row at a map's edge (the maps fill
//! their rows), so their strays reach both row parities: rows are tried first.

use blindsight_core::layout::SlotLayout;

/// Two copies of the input in one ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    /// `s`: the copy's offset, a sub-position of the gap cell that the layouts leave idle.
    pub shift: usize,
    /// `δG`: half the input's period; giant steps from here on are taken by the copy.
    pub half: usize,
}

impl Replicas {
    /// Whether a layer from `input` to `output` has room for replicas: single-copy layouts of
    /// one geometry whose output leaves sub-positions of its gap cells idle.
    pub fn fits(input: &SlotLayout, output: &SlotLayout) -> bool {
        output.gap() >= 2
            && input.period() == input.slots()
            && output.period() == output.slots()
            && input.block() == output.block()
            && input.row() == output.row()
    }

    /// The replicas a layer from `input` to `output` may use, best first (none unless it
    /// [`fits`](Replicas::fits)): shifts to the sub-positions of the output's gap cells at which
    /// the two halves' partial sums land apart. Those whose keys are powers of two come first,
    /// rows before columns (a column shift wraps around the row at the map's edge). Which of
    /// them a layer may take depends on what its inputs hold outside their layouts
    /// ([`Replicas::reads_clean`]).
    pub fn candidates(input: &SlotLayout, output: &SlotLayout) -> Vec<Self> {
        if !Self::fits(input, output) {
            return Vec::new();
        }
        let (gap, row) = (output.gap(), input.row());
        let mut shifts: Vec<(usize, usize)> = (0..gap)
            .flat_map(|dy| (0..gap).map(move |dx| (dy, dx)))
            .filter(|&c| c != (0, 0))
            .collect();
        shifts.sort_by_key(|&(dy, dx)| {
            let s = dy * row + dx;
            (!s.is_power_of_two(), dx != 0, s)
        });
        shifts
            .into_iter()
            .map(|(dy, dx)| Self {
                shift: dy * row + dx,
                half: input.period() / 2,
            })
            .filter(|r| r.halves_apart(output))
            .collect()
    }

    /// Whether `X = in + rot_s(in)` holds each input value where the layer reads it: `in` at
    /// `q`, its copy at `q - s`, for every slot `q` of `input`. Both need zeros at `q + s` and
    /// `q - s`; `nonzero` marks the slots of `in` that may hold anything else.
    pub fn reads_clean(&self, input: &SlotLayout, nonzero: &[bool]) -> bool {
        let (n, s) = (input.slots(), self.shift);
        (0..input.len()).all(|i| {
            let q = input.slot_of(i);
            !nonzero[(q + s) % n] && !nonzero[(q + n - s) % n]
        })
    }

    /// Whether the two halves' partial sums land on distinct slots of `Y` (at `p + s` and
    /// `p + δG` for the output slots `p`).
    fn halves_apart(&self, output: &SlotLayout) -> bool {
        let n = output.slots();
        let at_half = occupied(output, self.half);
        (0..output.len()).all(|i| !at_half[(output.slot_of(i) + self.shift) % n])
    }

    /// The slots of the result other than `output`'s that may be nonzero: `rot_δG(Y) +
    /// rot_s(Y)` leaves partial sums at `±s` around the output slots.
    pub fn leftovers(&self, output: &SlotLayout) -> Vec<bool> {
        let n = output.slots();
        let mut y = vec![false; n];
        for i in 0..output.len() {
            let p = output.slot_of(i);
            y[(p + self.shift) % n] = true;
            y[(p + self.half) % n] = true;
        }
        let mut out = vec![false; n];
        for (x, o) in out.iter_mut().enumerate() {
            *o = y[(x + self.half) % n] || y[(x + self.shift) % n];
        }
        for i in 0..output.len() {
            out[output.slot_of(i)] = false;
        }
        out
    }

    /// `(amount on X, slot of Y)` for a term of amount `a` into output slot `p`: the giant
    /// steps below `δ` write at `p + s`, reading `in` itself; the rest write at `p + δG`,
    /// reading the copy.
    pub(crate) fn place(&self, a: usize, p: usize, period: usize, slots: usize) -> (usize, usize) {
        let a = (a + period - self.shift) % period;
        if a >= self.half {
            (a - self.half, (p + self.half) % slots)
        } else {
            (a, (p + self.shift) % slots)
        }
    }
}

/// The slots `layout` writes, shifted by `by` (every copy of its period).
pub fn occupied(layout: &SlotLayout, by: usize) -> Vec<bool> {
    let n = layout.slots();
    let mut v = vec![false; n];
    for i in 0..layout.len() {
        let q = layout.slot_of(i) + by;
        for k in 0..n / layout.period() {
            v[(q + k * layout.period()) % n] = true;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use blindsight_core::layout::SlotLayoutParts;

    use super::*;

    /// ResNet-20's stage 2 at N = 2^16: 32 channels of 16x16 at gap 2, one per block of 1024.
    fn stage2() -> SlotLayout {
        SlotLayoutParts {
            channels: 32,
            height: 16,
            width: 16,
            slots: 32768,
            block: 1024,
            row: 32,
            gap: 2,
            blocks: 32,
            offset: 0,
        }
        .try_into()
        .unwrap()
    }

    /// The cell sub-positions (row, column) of the marked slots.
    fn cells(l: &SlotLayout, marks: &[bool]) -> BTreeSet<(usize, usize)> {
        (0..marks.len())
            .filter(|&i| marks[i])
            .map(|i| ((i % l.block()) / l.row() % l.gap(), i % l.row() % l.gap()))
            .collect()
    }

    #[test]
    fn row_shifts_keep_their_strays_apart_and_column_shifts_wrap() {
        let l = stage2();
        let all = Replicas::candidates(&l, &l);
        let shifts: Vec<usize> = all.iter().map(|r| r.shift).collect();
        assert_eq!(shifts, [32, 1, 33]);
        assert!(all.iter().all(|r| r.half == 16384));
        let by = |s: usize| *all.iter().find(|r| r.shift == s).unwrap();
        let strays = |s: usize| cells(&l, &by(s).leftovers(&l));
        assert_eq!(strays(32), BTreeSet::from([(1, 0)]));
        // a column shift's partial sums at -s wrap from a row's first pixel to the end of the
        // row above: both row parities
        assert_eq!(strays(1), BTreeSet::from([(0, 1), (1, 1)]));
        assert_eq!(strays(33), BTreeSet::from([(0, 1), (1, 1)]));
        // a layer reading such a value may take a shift of the other kind only
        let nonzero = |s: usize| {
            let mut z = occupied(&l, 0);
            for (a, b) in z.iter_mut().zip(by(s).leftovers(&l)) {
                *a |= b;
            }
            z
        };
        assert!(by(1).reads_clean(&l, &occupied(&l, 0)));
        assert!(!by(32).reads_clean(&l, &nonzero(32)));
        assert!(by(1).reads_clean(&l, &nonzero(32)));
        assert!(by(32).reads_clean(&l, &nonzero(1)));
        assert!(!by(33).reads_clean(&l, &nonzero(1)));
        assert!(!by(1).reads_clean(&l, &nonzero(33)));
    }
}
