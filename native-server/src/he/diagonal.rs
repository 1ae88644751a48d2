//! The diagonals of a planned linear layer: each nonzero generalized diagonal, pre-rotated for the
//! Horner chain, kept as runs of equal weights (a convolution's diagonal is a few hundred runs,
//! not 32768 values).

use crate::he::bsgs::{for_each_term, LinearPlan};
use crate::model::Model;

/// `count` slots from `start`, `stride` apart, all holding `weight`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    pub start: u32,
    pub count: u32,
    pub stride: u32,
    pub weight: f64,
}

/// One plaintext of a linear layer: Horner term `giant`, baby index `baby`, as runs of equal
/// weights (a convolution's diagonal is a few hundred runs, not 32768 values: kept for every
/// image at a few KB instead of re-derived from the model or stored expanded).
#[derive(Debug, Clone, PartialEq)]
pub struct Diagonal {
    pub giant: usize,
    pub baby: usize,
    /// The real part.
    pub runs: Vec<Run>,
    /// The imaginary part (complex packing, or a term into the imaginary lane; empty
    /// otherwise).
    pub imag: Vec<Run>,
    /// The runs repeat at each of these shifts (slots; `[0]` for one image): a batch's images
    /// that a layer maps alike share their runs instead of interleaving them.
    pub shifts: Vec<u32>,
}

impl Diagonal {
    /// The real part's slot vector.
    pub fn expand(&self, slots: usize) -> Vec<f64> {
        self.expand_runs(&self.runs, slots)
    }

    /// The imaginary part's slot vector.
    pub fn expand_imag(&self, slots: usize) -> Vec<f64> {
        self.expand_runs(&self.imag, slots)
    }

    fn expand_runs(&self, runs: &[Run], slots: usize) -> Vec<f64> {
        let mut v = vec![0.0; slots];
        for &d in &self.shifts {
            for r in runs {
                for k in 0..r.count as usize {
                    v[(r.start as usize + k * r.stride as usize + d as usize) % slots] = r.weight;
                }
            }
        }
        v
    }
}

/// Compresses slot-sorted `(slot, weight)` entries (distinct slots) into runs.
fn compress(entries: &[(u32, f64)]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for &(slot, weight) in entries {
        if let Some(r) = runs.last_mut() {
            let last = r.start + (r.count - 1) * r.stride;
            if r.weight == weight && (r.count == 1 || slot - last == r.stride) {
                if r.count == 1 {
                    r.stride = slot - last;
                }
                r.count += 1;
                continue;
            }
        }
        runs.push(Run {
            start: slot,
            count: 1,
            stride: 1,
            weight,
        });
    }
    runs
}

impl LinearPlan {
    /// Derives the diagonals from the model, once per plan and its clones (the same for every
    /// image).
    pub fn build_diagonals(&self, model: &Model) {
        self.diagonals.get_or_init(|| self.derive_diagonals(model));
    }

    fn derive_diagonals(&self, model: &Model) -> Vec<Diagonal> {
        let slots = self.input.slots();
        let mut index = vec![u32::MAX; self.giant];
        for (i, &b) in self.babies.iter().enumerate() {
            index[b] = i as u32;
        }
        let nb = self.babies.len();
        // images whose output sits at the same distance from their input have the same
        // amounts: one image's runs, repeated at the others' output shifts
        let (pairs, shifts) = match self.pairs.split_first() {
            Some((&(din, dout), rest))
                if rest
                    .iter()
                    .all(|&(i, o)| o.wrapping_sub(i) == dout.wrapping_sub(din)) =>
            {
                let shifts = self
                    .pairs
                    .iter()
                    .map(|&(_, o)| ((o + slots - dout) % slots) as u32)
                    .collect();
                (vec![(din, dout)], shifts)
            }
            _ => (self.pairs.clone(), vec![0]),
        };
        let (fold, mult) = (self.fold(), self.mult);
        // (diagonal, imaginary part, slot, weight)
        let mut entries: Vec<(u32, bool, u32, f64)> = Vec::new();
        for_each_term(
            model,
            &self.op,
            &self.input,
            &self.output,
            &pairs,
            self.replicas,
            |a, p, w| {
                let (g, b) = (a / self.giant, a % self.giant);
                let (h, odd) = (g / fold, g % fold == 1);
                // rot_{-gG}(d)[p'] = d[p' - gG]: the entry for output slot p lands at p + gG;
                // an odd step's rides in -Im of term h, rotated by G less (X's imaginary part
                // is the input already rotated by G); an imaginary-lane term's all in +Im
                let slot = (p + h * fold * self.giant) % slots;
                let (odd, w) = match (self.imag, odd) {
                    (true, _) => (true, w * mult),
                    (false, true) => (true, -w * mult),
                    (false, false) => (false, w * mult),
                };
                entries.push(((h * nb) as u32 + index[b], odd, slot as u32, w));
            },
        );
        entries.sort_unstable_by_key(|&(k, odd, slot, _)| (k, odd, slot));
        let mut diags: Vec<Diagonal> = Vec::new();
        let mut i = 0;
        while i < entries.len() {
            let (key, odd) = (entries[i].0, entries[i].1);
            let mut merged: Vec<(u32, f64)> = Vec::new();
            while i < entries.len() && (entries[i].0, entries[i].1) == (key, odd) {
                let (_, _, slot, w) = entries[i];
                match merged.last_mut() {
                    Some(last) if last.0 == slot => last.1 += w,
                    _ => merged.push((slot, w)),
                }
                i += 1;
            }
            let (giant, baby) = (key as usize / nb, key as usize % nb);
            let runs = compress(&merged);
            match diags.last_mut() {
                // the imaginary part of the diagonal just made
                Some(d) if odd && (d.giant, d.baby) == (giant, baby) => d.imag = runs,
                _ => {
                    let (runs, imag) = if odd {
                        (Vec::new(), runs)
                    } else {
                        (runs, Vec::new())
                    };
                    diags.push(Diagonal {
                        giant,
                        baby,
                        runs,
                        imag,
                        shifts: shifts.clone(),
                    });
                }
            }
        }
        diags
    }
}
