//! Exact pruning for [`top_k_nearest`](super::top_k_nearest): the items are grouped into
//! clusters of nearby vectors, and each cluster carries a bound on the score any of its items
//! can reach for a given query vector. A block of users multiplies a cluster's items only while
//! some user's bound for it is above that user's current candidate threshold, so whole clusters
//! that cannot change anyone's answer are never scored. Nothing approximate is involved: a
//! skipped item scores at most its cluster's bound, which is below the threshold it would have
//! had to beat.
//!
//! - Cosine (every vector unit length): a cluster is a cone around its mean direction `ĉ` with
//!   half-angle `α` (the widest angle of a member to `ĉ`). For a query `u` at angle `θ` to `ĉ`,
//!   every member is at least `θ - α` away, so its score is at most `cos(θ - α)` (1 when
//!   `θ <= α`).
//! - Inner product: a ball around the centroid `c` of radius `r`; a member scores at most
//!   `u·c + |u| r` (Cauchy–Schwarz).
//!
//! Clusters come from a few rounds of k-means (Lloyd's algorithm, assignment by one GEMM per
//! chunk of items), seeded with evenly spaced items so the result is deterministic. They are
//! then put in a spatial order (a median split of their centres, recursively), so clusters next
//! to each other in that order are near each other; users are sorted by the position of their
//! best cluster before they are cut into blocks, which keeps a block's users alike and the set
//! of clusters the block must score small.

use super::top_k_nearest::Metric;

/// Items per cluster aimed at: a cluster is the unit of skipping, and also one GEMM tile.
pub const CLUSTER_SIZE: usize = 256;
/// Lloyd iterations: the bounds are exact whatever the clustering, so a few rounds that make
/// clusters tight are enough.
const ITERATIONS: usize = 5;
/// Items assigned per GEMM in k-means (the score chunk is `CHUNK x clusters` f32).
const CHUNK: usize = 2048;
/// Added to every bound before it is compared with an f32 threshold: it covers the rounding of
/// the f32 scores (a few ulps of values near 1) with a wide margin.
pub const BOUND_SLACK: f32 = 1e-4;

/// One cluster: items `start..end` of the reordered item matrix and what bounds their scores.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub start: usize,
    pub end: usize,
    /// Cosine: the unit mean direction; inner product: the centroid.
    pub center: Vec<f32>,
    /// Cosine: `cos α` and `sin α` of the cone's half-angle; inner product: `(r, 0)`.
    pub spread: (f32, f32),
}

impl Cluster {
    /// The most any member can score against a query whose dot product with `center` is `dot`
    /// and whose norm is `norm` (1 for cosine).
    #[inline]
    pub fn bound(&self, metric: Metric, dot: f32, norm: f32) -> f32 {
        match metric {
            Metric::Cosine => {
                let (cos_a, sin_a) = self.spread;
                let t = dot.clamp(-1.0, 1.0);
                if t >= cos_a { 1.0 } else { t * cos_a + (1.0 - t * t).max(0.0).sqrt() * sin_a }
            }
            Metric::InnerProduct => dot + norm * self.spread.0,
        }
    }
}

/// Cluster `n` vectors of `dim` values (`f64s`, row-major, unit length for cosine). Returns the
/// clusters, in spatial order, and the permutation: `order[j]` is the original row that goes
/// to position `j` of the reordered matrix.
pub fn cluster(f64s: &[f64], f32s: &[f32], n: usize, dim: usize, metric: Metric) -> (Vec<Cluster>, Vec<usize>) {
    let wanted = n / CLUSTER_SIZE;
    if wanted < 2 || dim == 0 {
        let all = (n > 0).then(|| make_cluster(f64s, dim, 0..n, (0..n).collect::<Vec<_>>().as_slice(), metric));
        return (all.into_iter().collect(), (0..n).collect());
    }
    let assignment = kmeans(f32s, n, dim, wanted);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); wanted];
    for (row, &c) in assignment.iter().enumerate() {
        members[c as usize].push(row);
    }
    members.retain(|m| !m.is_empty());
    // spatial order of the clusters, by their means
    let means: Vec<Vec<f64>> = members.iter().map(|m| mean(f64s, dim, m)).collect();
    let mut by_place: Vec<usize> = (0..members.len()).collect();
    spatial_order(&means, &mut by_place);
    let mut order = Vec::with_capacity(n);
    let mut clusters = Vec::with_capacity(members.len());
    for &c in &by_place {
        let start = order.len();
        order.extend_from_slice(&members[c]);
        clusters.push(make_cluster(f64s, dim, start..order.len(), &members[c], metric));
    }
    (clusters, order)
}

/// A cluster over `rows` (original row numbers), placed at `range` of the reordered matrix.
fn make_cluster(f64s: &[f64], dim: usize, range: std::ops::Range<usize>, rows: &[usize], metric: Metric) -> Cluster {
    let centroid = mean(f64s, dim, rows);
    let row = |r: usize| &f64s[r * dim..(r + 1) * dim];
    let (center, spread) = match metric {
        Metric::Cosine => {
            let norm = centroid.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm < 1e-12 {
                // members all around: no cone narrower than the whole sphere
                (vec![0.0; dim], (-1.0f32, 0.0f32))
            } else {
                let dir: Vec<f64> = centroid.iter().map(|v| v / norm).collect();
                let cos_a = rows
                    .iter()
                    .map(|&r| row(r).iter().zip(&dir).map(|(a, b)| a * b).sum::<f64>())
                    .fold(1.0f64, f64::min)
                    .clamp(-1.0, 1.0);
                // widened a little, so f32 rounding of the centre cannot make the cone too narrow
                let cos_a = (cos_a - 1e-6).max(-1.0);
                let sin_a = (1.0 - cos_a * cos_a).max(0.0).sqrt();
                (dir.iter().map(|v| *v as f32).collect(), (cos_a as f32, sin_a as f32))
            }
        }
        Metric::InnerProduct => {
            let radius = rows
                .iter()
                .map(|&r| row(r).iter().zip(&centroid).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt())
                .fold(0.0f64, f64::max);
            let radius = radius * (1.0 + 1e-6) + 1e-9;
            (centroid.iter().map(|v| *v as f32).collect(), (radius as f32, 0.0))
        }
    };
    Cluster { start: range.start, end: range.end, center, spread }
}

fn mean(f64s: &[f64], dim: usize, rows: &[usize]) -> Vec<f64> {
    let mut sum = vec![0.0f64; dim];
    for &r in rows {
        for (s, v) in sum.iter_mut().zip(&f64s[r * dim..(r + 1) * dim]) {
            *s += v;
        }
    }
    let n = rows.len().max(1) as f64;
    sum.iter_mut().for_each(|s| *s /= n);
    sum
}

/// Lloyd's k-means on f32 rows; returns each row's cluster.
fn kmeans(data: &[f32], n: usize, dim: usize, k: usize) -> Vec<u32> {
    let mut centers: Vec<f32> = (0..k).flat_map(|c| data[(c * n / k) * dim..(c * n / k + 1) * dim].to_vec()).collect();
    let mut assignment = vec![0u32; n];
    let mut scores = vec![0f32; CHUNK.min(n) * k];
    for _ in 0..ITERATIONS {
        // nearest centre = largest x·c - |c|²/2
        let half_norms: Vec<f32> = centers.chunks(dim).map(|c| 0.5 * c.iter().map(|v| v * v).sum::<f32>()).collect();
        let mut first = 0;
        while first < n {
            let rows = CHUNK.min(n - first);
            // SAFETY: a is rows x dim (row stride dim) inside data from `first`; b is the
            // dim x k view of centers (centre-major: row stride 1, column stride dim); c is
            // rows x k (row stride k) inside scores, which holds CHUNK.min(n) * k values.
            unsafe {
                matrixmultiply::sgemm(
                    rows,
                    dim,
                    k,
                    1.0,
                    data[first * dim..].as_ptr(),
                    dim as isize,
                    1,
                    centers.as_ptr(),
                    1,
                    dim as isize,
                    0.0,
                    scores.as_mut_ptr(),
                    k as isize,
                    1,
                );
            }
            for r in 0..rows {
                let row = &scores[r * k..(r + 1) * k];
                let mut best = (f32::NEG_INFINITY, 0u32);
                for (c, (s, h)) in row.iter().zip(&half_norms).enumerate() {
                    let v = s - h;
                    if v > best.0 {
                        best = (v, c as u32);
                    }
                }
                assignment[first + r] = best.1;
            }
            first += rows;
        }
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (r, &c) in assignment.iter().enumerate() {
            counts[c as usize] += 1;
            for (s, v) in sums[c as usize * dim..(c as usize + 1) * dim].iter_mut().zip(&data[r * dim..(r + 1) * dim]) {
                *s += *v as f64;
            }
        }
        for c in 0..k {
            // an empty cluster keeps its centre (and stays empty or picks rows up later)
            if counts[c] > 0 {
                for d in 0..dim {
                    centers[c * dim + d] = (sums[c * dim + d] / counts[c] as f64) as f32;
                }
            }
        }
    }
    assignment
}

/// Reorder `idx` (indexes into `points`) so near points are near in the order: split at the
/// median of the widest coordinate, and recurse into both halves.
fn spatial_order(points: &[Vec<f64>], idx: &mut [usize]) {
    if idx.len() <= 2 {
        return;
    }
    let dim = points[idx[0]].len();
    let widest = (0..dim)
        .map(|d| {
            let (lo, hi) = idx
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &i| (lo.min(points[i][d]), hi.max(points[i][d])));
            (hi - lo, d)
        })
        .fold((f64::NEG_INFINITY, 0), |best, x| if x.0 > best.0 { x } else { best })
        .1;
    idx.sort_by(|&a, &b| points[a][widest].total_cmp(&points[b][widest]).then(a.cmp(&b)));
    let mid = idx.len() / 2;
    let (left, right) = idx.split_at_mut(mid);
    spatial_order(points, left);
    spatial_order(points, right);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f64> {
        // a small LCG: deterministic and dependency-free
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        let mut rows = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let v: Vec<f64> = (0..dim).map(|_| next()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            rows.extend(v.iter().map(|x| x / norm));
        }
        rows
    }

    #[test]
    fn every_member_scores_within_its_clusters_bound() {
        let (n, dim) = (5000, 8);
        let f64s = unit_rows(n, dim, 7);
        let f32s: Vec<f32> = f64s.iter().map(|v| *v as f32).collect();
        let queries = unit_rows(50, dim, 11);
        for metric in [Metric::Cosine, Metric::InnerProduct] {
            let (clusters, order) = cluster(&f64s, &f32s, n, dim, metric);
            assert!(clusters.len() > 5, "{} clusters", clusters.len());
            let mut seen = order.clone();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "the order is a permutation");
            assert_eq!(clusters.last().map(|c| c.end), Some(n));
            let mut widest = 0.0f32;
            for q in queries.chunks(dim) {
                for c in &clusters {
                    let dot: f32 = c.center.iter().zip(q).map(|(a, b)| a * *b as f32).sum();
                    let bound = c.bound(metric, dot, 1.0);
                    for &row in &order[c.start..c.end] {
                        let score: f64 = f64s[row * dim..(row + 1) * dim].iter().zip(q).map(|(a, b)| a * b).sum();
                        assert!(score as f32 <= bound + 1e-6, "{metric}: {score} above the bound {bound}");
                    }
                    widest = widest.max(bound);
                }
            }
            // the bounds must also be useful: most clusters are far from a given query
            let skippable = queries
                .chunks(dim)
                .map(|q| {
                    clusters
                        .iter()
                        .filter(|c| {
                            let dot: f32 = c.center.iter().zip(q).map(|(a, b)| a * *b as f32).sum();
                            c.bound(metric, dot, 1.0) < 0.9
                        })
                        .count()
                })
                .sum::<usize>();
            assert!(skippable > 0, "{metric}: no cluster is ever below 0.9 (widest bound {widest})");
        }
    }
}
