//! Data parallelism over RNS limbs and independent items: rayon on native targets, a plain loop on
//! wasm32 (no threads there).

#[cfg(not(target_arch = "wasm32"))]
use rayon::prelude::*;

/// Calls `f(limb_index, limb)` for every `n`-sized limb of `data`.
#[inline]
pub fn for_each_limb<T, F>(data: &mut [T], n: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    #[cfg(not(target_arch = "wasm32"))]
    data.par_chunks_mut(n)
        .enumerate()
        .for_each(|(i, c)| f(i, c));
    #[cfg(target_arch = "wasm32")]
    data.chunks_mut(n).enumerate().for_each(|(i, c)| f(i, c));
}

/// Maps `f` over `0..count`, in parallel where threads exist; results keep their order.
#[inline]
pub fn map_range<T, F>(count: usize, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize) -> T + Sync + Send,
{
    #[cfg(not(target_arch = "wasm32"))]
    return (0..count).into_par_iter().map(f).collect();
    #[cfg(target_arch = "wasm32")]
    return (0..count).map(f).collect();
}

/// Calls `f(i, item)` for every item, in parallel where threads exist.
#[inline]
pub fn for_each_mut<T, F>(items: &mut [T], f: F)
where
    T: Send,
    F: Fn(usize, &mut T) + Sync + Send,
{
    #[cfg(not(target_arch = "wasm32"))]
    items.par_iter_mut().enumerate().for_each(|(i, t)| f(i, t));
    #[cfg(target_arch = "wasm32")]
    items.iter_mut().enumerate().for_each(|(i, t)| f(i, t));
}

/// Runs two independent jobs, in parallel where threads exist.
#[inline]
pub fn join<A: Send, B: Send>(
    fa: impl FnOnce() -> A + Send,
    fb: impl FnOnce() -> B + Send,
) -> (A, B) {
    #[cfg(not(target_arch = "wasm32"))]
    return rayon::join(fa, fb);
    #[cfg(target_arch = "wasm32")]
    return (fa(), fb());
}

/// Calls `f(limb_index, limb_of_a, limb_of_b)` for every pair of `n`-sized limbs of two buffers
/// of the same length.
#[inline]
pub fn for_each_limb_pair<T, F>(a: &mut [T], b: &mut [T], n: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T], &mut [T]) + Sync + Send,
{
    #[cfg(not(target_arch = "wasm32"))]
    a.par_chunks_mut(n)
        .zip(b.par_chunks_mut(n))
        .enumerate()
        .for_each(|(i, (x, y))| f(i, x, y));
    #[cfg(target_arch = "wasm32")]
    a.chunks_mut(n)
        .zip(b.chunks_mut(n))
        .enumerate()
        .for_each(|(i, (x, y))| f(i, x, y));
}
