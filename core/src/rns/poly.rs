//! A polynomial in RNS form, stored limb-major: one contiguous `[u64; N]` per prime, so a limb is
//! one cache-friendly slice for the NTT and the vector kernels.

use std::mem::MaybeUninit;

use crate::par;

/// A polynomial in RNS form: `num_limbs` contiguous limbs of `n` residues each. Whether it holds
/// coefficients or NTT values, and over which basis, is the owner's bookkeeping.
#[derive(Clone, PartialEq, Eq)]
pub struct RnsPoly {
    pub(super) n: usize,
    pub(super) data: Vec<u64>,
}

impl std::fmt::Debug for RnsPoly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RnsPoly(n={}, limbs={})", self.n, self.num_limbs())
    }
}

/// A limb of fresh memory handed to [`RnsPoly::from_fresh_limbs`]'s closure. It becomes an
/// initialized `&mut [u64]` only through a method that writes every element, so a limb that is
/// about to be overwritten is not cleared first (clearing was 8% of an encrypted ResNet's time).
pub struct FreshLimb<'a>(&'a mut [MaybeUninit<u64>]);

impl<'a> FreshLimb<'a> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// All zeros: for limbs that are accumulated into.
    pub fn zeroed(self) -> &'a mut [u64] {
        for x in self.0.iter_mut() {
            x.write(0);
        }
        // SAFETY: every element was just written.
        unsafe { assume_init(self.0) }
    }

    /// A copy of `src` (of the same length).
    pub fn copy_of(self, src: &[u64]) -> &'a mut [u64] {
        assert_eq!(src.len(), self.0.len());
        // SAFETY: `src` and the limb have the same length and cannot overlap (the limb is fresh).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.0.as_mut_ptr().cast(), src.len());
            assume_init(self.0)
        }
    }

    /// `out[k] = src[idx[k]]` (`idx` as long as the limb).
    pub fn gather(self, src: &[u64], idx: &[u32]) -> &'a mut [u64] {
        assert_eq!(idx.len(), self.0.len());
        for (o, &j) in self.0.iter_mut().zip(idx) {
            o.write(src[j as usize]);
        }
        // SAFETY: the zip covered every element (equal lengths).
        unsafe { assume_init(self.0) }
    }

    /// Filled by `write`.
    ///
    /// # Safety
    /// `write` must write every element of the slice it is given (the `*_uninit` kernels do).
    pub unsafe fn written_by(self, write: impl FnOnce(&mut [MaybeUninit<u64>])) -> &'a mut [u64] {
        write(&mut *self.0);
        // SAFETY: promised by the caller.
        unsafe { assume_init(self.0) }
    }
}

/// # Safety
/// Every element of `limb` must be initialized.
unsafe fn assume_init(limb: &mut [MaybeUninit<u64>]) -> &mut [u64] {
    // SAFETY: MaybeUninit<u64> has the layout of u64; initialization is the caller's promise.
    unsafe { &mut *(limb as *mut [MaybeUninit<u64>] as *mut [u64]) }
}

/// Zeroes a limb of fresh memory and hands it out initialized.
fn zeroed(limb: &mut [MaybeUninit<u64>]) -> &mut [u64] {
    FreshLimb(limb).zeroed()
}

impl RnsPoly {
    pub fn zero(n: usize, limbs: usize) -> Self {
        Self {
            n,
            data: vec![0; n * limbs],
        }
    }

    /// `limbs` limbs computed by `f(i, limb)` in parallel, each limb zeroed inside its own job
    /// first. `zero` followed by a parallel loop clears the whole buffer on one thread (a
    /// `calloc` of up to 20 MB per key-switching product), which showed as 5-10% of an
    /// encrypted ResNet's profile and held back the second thread; here the clearing is spread
    /// over the threads and done just before the limb is used, while it is in cache.
    pub fn from_limbs<F>(n: usize, limbs: usize, f: F) -> Self
    where
        F: Fn(usize, &mut [u64]) + Sync + Send,
    {
        let len = n * limbs;
        let mut data: Vec<u64> = Vec::with_capacity(len);
        par::for_each_limb(&mut data.spare_capacity_mut()[..len], n, |i, limb| {
            f(i, zeroed(limb))
        });
        // SAFETY: the jobs above initialized all `len` elements (every limb, zeroed first).
        unsafe { data.set_len(len) };
        Self { n, data }
    }

    /// `limbs` limbs made by `f(i, fresh)` in parallel from fresh memory: `f` returns the limb
    /// it was given, initialized by one of [`FreshLimb`]'s methods (checked: the same memory).
    /// For limbs that are written whole (copies, conversions, permutations), with no clearing.
    pub fn from_fresh_limbs<F>(n: usize, limbs: usize, f: F) -> Self
    where
        F: for<'a> Fn(usize, FreshLimb<'a>) -> &'a mut [u64] + Sync + Send,
    {
        let len = n * limbs;
        let mut data: Vec<u64> = Vec::with_capacity(len);
        par::for_each_limb(&mut data.spare_capacity_mut()[..len], n, |i, limb| {
            let at = limb.as_ptr().cast::<u64>();
            let done = f(i, FreshLimb(limb));
            // the only way to a `&'a mut [u64]` of this length at this address is a FreshLimb
            // method on this limb (a closure cannot make one out of nothing but an empty slice)
            assert!(std::ptr::eq(done.as_ptr(), at) && done.len() == n);
        });
        // SAFETY: every limb was initialized by a FreshLimb method (asserted above).
        unsafe { data.set_len(len) };
        Self { n, data }
    }

    /// Two polynomials of `limbs` limbs computed limb by limb by `f(i, limb_a, limb_b)`, in
    /// parallel, as in [`RnsPoly::from_limbs`].
    pub fn pair_from_limbs<F>(n: usize, limbs: usize, f: F) -> (Self, Self)
    where
        F: Fn(usize, &mut [u64], &mut [u64]) + Sync + Send,
    {
        let len = n * limbs;
        let mut a: Vec<u64> = Vec::with_capacity(len);
        let mut b: Vec<u64> = Vec::with_capacity(len);
        par::for_each_limb_pair(
            &mut a.spare_capacity_mut()[..len],
            &mut b.spare_capacity_mut()[..len],
            n,
            |i, x, y| f(i, zeroed(x), zeroed(y)),
        );
        // SAFETY: the jobs above initialized all `len` elements of both (zeroed first).
        unsafe {
            a.set_len(len);
            b.set_len(len);
        }
        (Self { n, data: a }, Self { n, data: b })
    }

    #[inline]
    pub fn n(&self) -> usize {
        self.n
    }

    #[inline]
    pub fn num_limbs(&self) -> usize {
        self.data.len() / self.n
    }

    #[inline]
    pub fn limb(&self, i: usize) -> &[u64] {
        &self.data[i * self.n..(i + 1) * self.n]
    }

    #[inline]
    pub fn limb_mut(&mut self, i: usize) -> &mut [u64] {
        &mut self.data[i * self.n..(i + 1) * self.n]
    }

    #[inline]
    pub fn data(&self) -> &[u64] {
        &self.data
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u64] {
        &mut self.data
    }

    /// Keeps the first `limbs` limbs.
    pub fn truncate_limbs(&mut self, limbs: usize) {
        self.data.truncate(limbs * self.n);
    }

    /// Copy of the limbs `range`.
    pub fn slice_limbs(&self, range: std::ops::Range<usize>) -> Self {
        Self {
            n: self.n,
            data: self.data[range.start * self.n..range.end * self.n].to_vec(),
        }
    }

    /// Appends the limbs of `other`.
    pub fn extend_limbs(&mut self, other: &RnsPoly) {
        assert_eq!(self.n, other.n);
        self.data.extend_from_slice(&other.data);
    }
}

impl zeroize::Zeroize for RnsPoly {
    fn zeroize(&mut self) {
        self.data.zeroize();
    }
}
