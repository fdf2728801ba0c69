//! Walker's alias method, the generator's O(1) weighted draw.

#[allow(unused_imports)]
use super::*;

/// Walker's alias method (Vose's construction) with the payloads in the table: a draw costs one
/// random `u64` and one memory access. rand_distr's `WeightedAliasIndex` costs two draws and up to
/// three cache misses per play at SF 1 (odds, alias, then the user or song record), which made
/// those draws a third of the generator's time.
///
/// The slot comes from the high 32 bits by multiply-shift (bias below n / 2³², i.e. < 0.2 % for
/// 5 M users — immaterial for synthetic data), the coin from the low 32 bits.
pub(super) struct AliasTable<T> {
    pub(super) entries: Vec<AliasEntry<T>>,
}

#[derive(Clone, Copy)]
pub(super) struct AliasEntry<T> {
    /// Keep `own` when the coin is below this; otherwise `alias`.
    pub(super) threshold: u32,
    pub(super) own: T,
    pub(super) alias: T,
}

impl<T: Copy> AliasTable<T> {
    /// `None` for no weights or weights that are not all finite, non-negative with a positive sum.
    pub(super) fn new(weights: &[f64], payload: impl Fn(usize) -> T) -> Option<Self> {
        let n = weights.len();
        let sum: f64 = weights.iter().sum();
        if n == 0
            || n > u32::MAX as usize
            || !(sum > 0.0 && sum.is_finite())
            || weights.iter().any(|w| w.is_nan() || *w < 0.0)
        {
            return None;
        }
        let mut p: Vec<f64> = weights.iter().map(|w| w * n as f64 / sum).collect();
        let mut alias: Vec<usize> = (0..n).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| p[*i] < 1.0);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            alias[s] = l;
            p[l] -= 1.0 - p[s];
            if p[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left holds probability 1 up to rounding: it keeps itself.
        for i in small.into_iter().chain(large) {
            p[i] = 1.0;
            alias[i] = i;
        }
        let entries = (0..n)
            .map(|i| AliasEntry {
                threshold: (p[i] * 4_294_967_296.0).min(u32::MAX as f64) as u32,
                own: payload(i),
                // A slot that always keeps itself has itself as alias, so the threshold's rounding
                // at 1.0 cannot matter.
                alias: payload(alias[i]),
            })
            .collect();
        Some(Self { entries })
    }

    #[inline]
    pub(super) fn slot(&self, r: u64) -> usize {
        (((r >> 32) * self.entries.len() as u64) >> 32) as usize
    }

    #[inline]
    pub(super) fn pick(&self, r: u64) -> T {
        let e = &self.entries[self.slot(r)];
        if (r as u32) < e.threshold { e.own } else { e.alias }
    }
}

/// Alias table drawing `items[r]` with probability ∝ (r + 1)^-s: Zipf's law over ranks.
pub(super) fn zipf_alias<T: Copy>(items: &[T], s: f64) -> Option<AliasTable<T>> {
    let weights: Vec<f64> = (1..=items.len()).map(|k| (k as f64).powf(-s)).collect();
    AliasTable::new(&weights, |r| items[r])
}
