//! Binary codes for a quantized exact scan: one sign bit per dimension of each vector minus the
//! collection's mean (64 bytes at 512 dimensions). A search scores every code against the query
//! **asymmetrically**: the query keeps 4 bits per component (four bit planes) and each code is
//! scored by the query's components summed over the code's set bits, `sum_i q_i * [x_i > mean_i]`,
//! which ranks items as `q . sign(x - mean)` does. The scan visits every code, so what it finds does
//! not depend on where the query lies (a text query far from the image cone is scanned like an
//! image query); its shortlist is then rescored with the exact f32 vectors by the caller.
//!
//! Why asymmetric: the older first stage compared the query's own sign bits with the codes
//! (Hamming distance), quantizing both sides to one bit. For a caption among a million photos
//! that loses most of the ranking: the true top 10 were in the Hamming top 1,000 for 0.886 of
//! them, against 0.992 with the 4-bit query (a numpy model of the benchmark's modality-gap data,
//! 200 text queries; the f32 query scores 0.993, so 4 bits lose nothing measurable). It costs four
//! AND + popcount per word instead of one XOR + popcount: 3.6 ms per million codes on one core
//! with AVX-512 VPOPCNTDQ, 8 ms with scalar POPCNT (BENCHMARKS.md, "Text-to-image recall").
//!
//! Centring matters: CLIP vectors of one modality share a large common component, so the raw
//! sign bits of two unrelated images mostly agree. Subtracting the collection's mean (computed when
//! the codes are built, kept for later upserts) spends the bits on what differs. The query is not
//! centred: `q . (x - mean)` ranks items as `q . x` does, and the query's own offset belongs to it.
//!
//! The kernel runs on AVX-512 VPOPCNTDQ when the CPU has it, else on scalar POPCNT (runtime
//! detection both), else on the portable `count_ones`.

/// Levels of the query's quantization: components become `d * (u - 7.5)`, `u` in `0..=15`.
const LEVELS: u32 = 15;

/// Codes of a whole collection, slot-major.
pub struct BinaryCodes {
    dim: usize,
    words: usize,
    mean: Vec<f32>,
    codes: Vec<u64>,
}

/// A query quantized for the scan: plane `b` holds bit `b` of every component's level `u`
/// (`4 * words` words, plane-major).
pub struct Planes {
    planes: Vec<u64>,
    /// `LEVELS * dim`: what makes every distance non-negative.
    offset: i64,
}

impl BinaryCodes {
    /// Empty codes centred on `mean` (zeros: not centred).
    pub fn new(dim: usize, mean: Vec<f32>) -> Self {
        debug_assert_eq!(mean.len(), dim);
        BinaryCodes {
            dim,
            words: dim.div_ceil(64),
            mean,
            codes: Vec::new(),
        }
    }

    /// The mean of `rows` (row-major, `dim` each), the centre for [`BinaryCodes::new`].
    pub fn mean_of<'a>(dim: usize, rows: impl Iterator<Item = &'a [f32]>) -> Vec<f32> {
        let mut sum = vec![0f64; dim];
        let mut n = 0usize;
        for row in rows {
            n += 1;
            for (s, x) in sum.iter_mut().zip(row) {
                *s += f64::from(*x);
            }
        }
        sum.into_iter()
            .map(|s| if n == 0 { 0.0 } else { (s / n as f64) as f32 })
            .collect()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.codes.capacity() * 8 + self.mean.capacity() * 4
    }

    pub fn reserve(&mut self, slots: usize) {
        self.codes.reserve(slots * self.words);
    }

    /// Sets `slot`'s code from its vector (growing the table to it).
    pub fn set(&mut self, slot: u32, vector: &[f32]) {
        let out = cleared(&mut self.codes, self.words, slot);
        for (i, (x, m)) in vector.iter().zip(&self.mean).enumerate() {
            if x - m > 0.0 {
                out[i / 64] |= 1 << (i % 64);
            }
        }
    }

    /// Sets `slot`'s code from bits computed elsewhere (the PostgreSQL mirror's
    /// `binary_quantize`): `bits` holds bit `i` of the code, dimension `i`, MSB first in each byte
    /// (PostgreSQL's `bit` layout), at least `dim` bits. `false` (nothing set) when it is short.
    pub fn set_msb_bits(&mut self, slot: u32, bits: &[u8]) -> bool {
        let dim = self.dim;
        if bits.len() * 8 < dim {
            return false;
        }
        let out = cleared(&mut self.codes, self.words, slot);
        for i in 0..dim {
            if bits[i / 8] >> (7 - i % 8) & 1 == 1 {
                out[i / 64] |= 1 << (i % 64);
            }
        }
        true
    }

    /// The query's bit planes: each component `q_i` becomes the level
    /// `u_i = round(q_i / d + 7.5)` in `0..=15`, `d = max |q_i| / 7.5`, so `q_i ~ d * (u_i - 7.5)`.
    pub fn planes(&self, query: &[f32]) -> Planes {
        let words = self.words;
        let top = query.iter().fold(0f32, |m, q| m.max(q.abs()));
        let half = LEVELS as f32 / 2.0;
        let d = if top > 0.0 && top.is_finite() {
            top / half
        } else {
            1.0
        };
        let mut planes = vec![0u64; 4 * words];
        for (i, q) in query.iter().enumerate().take(self.dim) {
            let u = (q / d + half).round().clamp(0.0, LEVELS as f32) as u32;
            for b in 0..4 {
                if u >> b & 1 == 1 {
                    planes[b * words + i / 64] |= 1 << (i % 64);
                }
            }
        }
        Planes {
            planes,
            offset: i64::from(LEVELS) * self.dim as i64,
        }
    }

    /// The largest distance [`BinaryCodes::distances`] gives (saturated at `u16::MAX`).
    pub fn max_distance(&self) -> usize {
        (2 * LEVELS as usize * self.dim).min(u16::MAX as usize)
    }

    /// Distances of slots `rows` to the query into `out`: `LEVELS * dim - (2U - LEVELS * P)`, where
    /// `U` sums the query's levels over the code's set bits and `P` counts them, so that
    /// `d / 2 * (2U - LEVELS * P)` is the query summed over the set bits. Smaller is nearer.
    pub fn distances(&self, rows: std::ops::Range<usize>, planes: &Planes, out: &mut Vec<u16>) {
        let rows = rows.start.min(self.len())..rows.end.min(self.len());
        out.clear();
        out.resize(rows.len(), 0);
        let codes = &self.codes[rows.start * self.words..rows.end * self.words];
        scan(codes, self.words, planes, out);
    }

    /// The distance of one slot (the filtered path scores its matches one by one: the same
    /// kernels as the full scan).
    pub fn distance(&self, slot: u32, planes: &Planes) -> u16 {
        let s = slot as usize * self.words;
        let mut out = [0u16; 1];
        scan(&self.codes[s..s + self.words], self.words, planes, &mut out);
        out[0]
    }

    /// Slots with a code.
    pub fn len(&self) -> usize {
        self.codes.len() / self.words.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }
}

/// `slot`'s `words` words of `codes`, zeroed (the table grown to it).
fn cleared(codes: &mut Vec<u64>, words: usize, slot: u32) -> &mut [u64] {
    let s = slot as usize;
    if (s + 1) * words > codes.len() {
        codes.resize((s + 1) * words, 0);
    }
    let out = &mut codes[s * words..(s + 1) * words];
    out.iter_mut().for_each(|w| *w = 0);
    out
}

fn to_distance(offset: i64, u: i64, p: i64) -> u16 {
    (offset - (2 * u - i64::from(LEVELS) * p)).clamp(0, i64::from(u16::MAX)) as u16
}

/// Distances of every `words`-word code in `codes` to `planes`.
fn scan(codes: &[u64], words: usize, planes: &Planes, out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    {
        if words.is_multiple_of(8) && std::arch::is_x86_feature_detected!("avx512vpopcntdq") {
            // SAFETY: the CPU has the features the function is compiled for (checked just above).
            unsafe { avx512::scan(codes, words, planes, out) };
            return;
        }
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: as above.
            unsafe { portable_popcnt(codes, words, planes, out) };
            return;
        }
    }
    portable(codes, words, planes, out);
}

#[inline(always)]
fn portable(codes: &[u64], words: usize, planes: &Planes, out: &mut [u16]) {
    let p = &planes.planes;
    for (code, d) in codes.chunks_exact(words).zip(out.iter_mut()) {
        let (mut u, mut bits) = (0u32, 0u32);
        for (w, c) in code.iter().enumerate() {
            bits += c.count_ones();
            for b in 0..4 {
                u += (c & p[b * words + w]).count_ones() << b;
            }
        }
        *d = to_distance(planes.offset, i64::from(u), i64::from(bits));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn portable_popcnt(codes: &[u64], words: usize, planes: &Planes, out: &mut [u16]) {
    portable(codes, words, planes, out)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Planes, to_distance};
    use std::arch::x86_64::*;

    /// One 512-bit register per 8 words of a code: four AND + VPOPCNTQ for the planes, one
    /// VPOPCNTQ for the code's own bits, the lanes summed once per code.
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    pub(super) unsafe fn scan(codes: &[u64], words: usize, planes: &Planes, out: &mut [u16]) {
        debug_assert_eq!(words % 8, 0);
        let blocks = words / 8;
        let p = &planes.planes;
        for (code, d) in codes.chunks_exact(words).zip(out.iter_mut()) {
            let mut u = _mm512_setzero_si512();
            let mut bits = _mm512_setzero_si512();
            for k in 0..blocks {
                // SAFETY: `code` and each plane hold `words` = 8 * blocks u64s; unaligned loads.
                let (c, p0, p1, p2, p3) = unsafe {
                    (
                        _mm512_loadu_si512(code.as_ptr().add(8 * k).cast()),
                        _mm512_loadu_si512(p.as_ptr().add(8 * k).cast()),
                        _mm512_loadu_si512(p.as_ptr().add(words + 8 * k).cast()),
                        _mm512_loadu_si512(p.as_ptr().add(2 * words + 8 * k).cast()),
                        _mm512_loadu_si512(p.as_ptr().add(3 * words + 8 * k).cast()),
                    )
                };
                let a0 = _mm512_popcnt_epi64(_mm512_and_si512(c, p0));
                let a1 = _mm512_popcnt_epi64(_mm512_and_si512(c, p1));
                let a2 = _mm512_popcnt_epi64(_mm512_and_si512(c, p2));
                let a3 = _mm512_popcnt_epi64(_mm512_and_si512(c, p3));
                let lo = _mm512_add_epi64(a0, _mm512_slli_epi64::<1>(a1));
                let hi = _mm512_add_epi64(_mm512_slli_epi64::<2>(a2), _mm512_slli_epi64::<3>(a3));
                u = _mm512_add_epi64(u, _mm512_add_epi64(lo, hi));
                bits = _mm512_add_epi64(bits, _mm512_popcnt_epi64(c));
            }
            *d = to_distance(
                planes.offset,
                _mm512_reduce_add_epi64(u),
                _mm512_reduce_add_epi64(bits),
            );
        }
    }
}

/// The `r` smallest of `dists` (each at most `max`) (slots `base + i`, kept where `live`), as (distance, slot): a
/// histogram of the distances finds the cut, one more pass gathers (no sort of the whole scan).
pub fn smallest(
    dists: &[u16],
    base: usize,
    r: usize,
    max: usize,
    mut live: impl FnMut(u32) -> bool,
) -> Vec<(u16, u32)> {
    let mut hist = vec![0usize; max + 2];
    for &d in dists {
        hist[(d as usize).min(max + 1)] += 1;
    }
    let (mut cut, mut below) = (0usize, 0usize);
    while cut < hist.len() && below + hist[cut] < r {
        below += hist[cut];
        cut += 1;
    }
    // Everything under `cut`, and at `cut` until `r`. Dead slots are skipped, so fewer than `r`
    // may come back; the caller falls back to an exact scan when that leaves it short of `k`.
    let mut at_cut = r.saturating_sub(below);
    let mut out = Vec::with_capacity(r);
    for (i, &d) in dists.iter().enumerate() {
        let d_ = d as usize;
        if d_ > cut {
            continue;
        }
        let slot = (base + i) as u32;
        if d_ == cut {
            if at_cut == 0 || !live(slot) {
                continue;
            }
            at_cut -= 1;
        } else if !live(slot) {
            continue;
        }
        out.push((d, slot));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msb_first_bits_set_the_same_code_as_the_vector() {
        let dim = 77;
        let mean: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin() * 0.1).collect();
        let v: Vec<f32> = (0..dim).map(|i| (i as f32 * 1.91).cos()).collect();
        let mut a = BinaryCodes::new(dim, mean.clone());
        a.set(3, &v);
        // PostgreSQL's layout: dimension i is bit 7 - i % 8 of byte i / 8.
        let mut bytes = vec![0u8; dim.div_ceil(8)];
        for i in 0..dim {
            if v[i] - mean[i] > 0.0 {
                bytes[i / 8] |= 1 << (7 - i % 8);
            }
        }
        let mut b = BinaryCodes::new(dim, vec![0.0; dim]);
        assert!(b.set_msb_bits(3, &bytes));
        assert_eq!(a.codes, b.codes);
        assert!(!b.set_msb_bits(4, &bytes[..5]), "short bits are refused");
    }

    /// The query summed over the code's set bits, in f32: what the distance estimates.
    fn summed(codes: &BinaryCodes, slot: u32, q: &[f32]) -> f32 {
        q.iter()
            .enumerate()
            .filter(|(i, _)| codes.codes[slot as usize * codes.words + i / 64] >> (i % 64) & 1 == 1)
            .map(|(_, x)| x)
            .sum()
    }

    fn collection(dim: usize, n: usize) -> (Vec<Vec<f32>>, BinaryCodes) {
        let mut rng = crate::retrieve::synth::Rng::new(5);
        let rows: Vec<Vec<f32>> = (0..n)
            .map(|_| (0..dim).map(|_| rng.gauss()).collect())
            .collect();
        let mut codes =
            BinaryCodes::new(dim, BinaryCodes::mean_of(dim, rows.iter().map(|r| &r[..])));
        for (i, r) in rows.iter().enumerate() {
            codes.set(i as u32, r);
        }
        (rows, codes)
    }

    #[test]
    fn every_kernel_gives_the_plain_count_and_the_distance_tracks_the_query_sum() {
        // 512 (the AVX-512 kernel's one block), 1024 (two blocks), 200 (no whole block: scalar).
        for dim in [512usize, 1024, 200] {
            let (rows, codes) = collection(dim, 300);
            let q = &rows[7];
            let planes = codes.planes(q);
            let mut d = Vec::new();
            codes.distances(0..300, &planes, &mut d);
            let mut plain = vec![0u16; 300];
            portable(&codes.codes, codes.words, &planes, &mut plain);
            assert_eq!(d, plain, "dim {dim}");
            for (i, &di) in d.iter().enumerate() {
                assert_eq!(di, codes.distance(i as u32, &planes));
                // By hand: levels summed over the set bits, the set bits counted.
                let top = q.iter().fold(0f32, |m, x| m.max(x.abs()));
                let (mut u, mut p) = (0i64, 0i64);
                for (j, x) in q.iter().enumerate() {
                    if codes.codes[i * codes.words + j / 64] >> (j % 64) & 1 == 1 {
                        u += (x / (top / 7.5) + 7.5).round().clamp(0.0, 15.0) as i64;
                        p += 1;
                    }
                }
                assert_eq!(i64::from(di), 15 * dim as i64 - (2 * u - 15 * p));
            }
            // The distance is an affine image of the query's sum over the set bits, up to the
            // 4-bit rounding: `sum ~ d / 2 * (15 * dim - distance)`.
            let half_step = q.iter().fold(0f32, |m, x| m.max(x.abs())) / 7.5 / 2.0;
            for slot in 0..300u32 {
                let est = half_step * (15.0 * dim as f32 - f32::from(d[slot as usize]));
                let want = summed(&codes, slot, q);
                let bits = (0..dim)
                    .filter(|j| {
                        codes.codes[slot as usize * codes.words + j / 64] >> (j % 64) & 1 == 1
                    })
                    .count() as f32;
                assert!(
                    (est - want).abs() <= half_step * bits + 1e-3,
                    "dim {dim} slot {slot}: {est} vs {want}"
                );
            }
        }
    }

    #[test]
    fn the_scan_ranks_by_the_query_not_by_its_sign_bits() {
        // Two codes with the same Hamming distance to the query's signs: the one whose set bits
        // fall on the query's large components must rank first.
        let dim = 512;
        let mut codes = BinaryCodes::new(dim, vec![0.0; dim]);
        let mut q = vec![0.01f32; dim];
        q[0] = 1.0;
        q[1] = -1.0;
        let mut a = vec![1.0f32; dim];
        a[1] = -1.0; // agrees with q's signs except at 2
        a[2] = -1.0;
        let mut b = vec![1.0f32; dim];
        b[0] = -1.0; // disagrees at the large component 0
        b[1] = -1.0;
        codes.set(0, &a);
        codes.set(1, &b);
        let planes = codes.planes(&q);
        assert!(codes.distance(0, &planes) < codes.distance(1, &planes));
    }

    #[test]
    fn the_cut_keeps_the_nearest_and_skips_dead_slots() {
        let (rows, codes) = collection(512, 300);
        let planes = codes.planes(&rows[7]);
        let mut d = Vec::new();
        codes.distances(0..300, &planes, &mut d);
        let max = codes.max_distance();
        let best = smallest(&d, 0, 20, max, |_| true);
        let mut sorted = d.clone();
        sorted.sort_unstable();
        let mut got: Vec<u16> = best.iter().map(|b| b.0).collect();
        got.sort_unstable();
        assert_eq!(got, sorted[..20]);
        // The item itself is nearest.
        assert!(best.iter().any(|b| b.1 == 7 && b.0 == sorted[0]));
        // A dead slot never comes back; at most one place is lost to it.
        let dead = best[0].1;
        let alive = smallest(&d, 0, 20, max, |s| s != dead);
        assert!(alive.len() >= 19 && alive.iter().all(|b| b.1 != dead));
    }
}
