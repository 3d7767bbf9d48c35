//! Binary codes for a quantized exact scan: one sign bit per dimension of each vector minus the
//! collection's mean (64 bytes at 512 dimensions), compared with the query's sign bits by Hamming
//! distance (XOR + popcount). The scan visits every code, so what it finds does not depend on
//! where the query lies (a text query far from the image cone is scanned like an image query);
//! its shortlist is then rescored with the exact f32 vectors by the caller.
//!
//! Centering matters: CLIP vectors of one modality share a large common component, so the raw
//! sign bits of two unrelated images mostly agree. Subtracting the collection's mean (computed when
//! the codes are built, kept for later upserts) spends the bits on what differs. The query is not
//! centred: `q . (x - mean)` ranks items as `q . x` does, and the query's own offset belongs to it.
//!
//! The popcount kernel runs on AVX-512 VPOPCNTDQ when the CPU has it (runtime detection), else on
//! the portable `count_ones` (POPCNT where the build allows).

/// Codes of a whole collection, slot-major.
pub struct BinaryCodes {
    dim: usize,
    words: usize,
    mean: Vec<f32>,
    codes: Vec<u64>,
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

    pub fn words(&self) -> usize {
        self.words
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
        let s = slot as usize;
        if (s + 1) * self.words > self.codes.len() {
            self.codes.resize((s + 1) * self.words, 0);
        }
        let (mean, words) = (&self.mean, self.words);
        encode(
            vector.iter().zip(mean).map(|(x, m)| x - m),
            &mut self.codes[s * words..(s + 1) * words],
        );
    }

    /// The query's code (not centred; see the module's notes).
    pub fn query(&self, query: &[f32]) -> Vec<u64> {
        let mut out = vec![0u64; self.words];
        encode(query.iter().copied(), &mut out);
        out
    }

    /// Hamming distances of slots `rows` to `query` (a [`BinaryCodes::query`]) into `out`.
    pub fn distances(&self, rows: std::ops::Range<usize>, query: &[u64], out: &mut Vec<u16>) {
        let rows = rows.start.min(self.len())..rows.end.min(self.len());
        out.clear();
        out.resize(rows.len(), 0);
        let codes = &self.codes[rows.start * self.words..rows.end * self.words];
        hamming(codes, query, out);
    }

    /// The Hamming distance of one slot.
    pub fn distance(&self, slot: u32, query: &[u64]) -> u16 {
        let s = slot as usize * self.words;
        self.codes[s..s + self.words]
            .iter()
            .zip(query)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum::<u32>() as u16
    }

    /// Slots with a code.
    pub fn len(&self) -> usize {
        self.codes.len() / self.words.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }
}

/// Per-query byte tables for [`BinaryCodes::asymmetric`]: entry `256 * j + b` is the sum of the
/// query's components over the set bits of byte value `b` at byte `j` (dimensions `8j..8j+8`).
pub struct Tables(Vec<f32>);

impl BinaryCodes {
    /// The query's tables (`words * 8 * 256` floats: 64 KiB at 512 dimensions), each entry one
    /// addition from a smaller one.
    pub fn tables(&self, query: &[f32]) -> Tables {
        let bytes = self.words * 8;
        let mut t = vec![0f32; bytes * 256];
        for j in 0..bytes {
            let row = &mut t[j * 256..(j + 1) * 256];
            for b in 1..256usize {
                let low = b & (b - 1);
                let i = j * 8 + b.trailing_zeros() as usize;
                row[b] = row[low] + query.get(i).copied().unwrap_or(0.0);
            }
        }
        Tables(t)
    }

    /// The asymmetric score of `slot`: the query's f32 components summed over the code's set
    /// bits, which ranks items as `sum_i q_i * sign(x_i - mean_i)` does: a finer estimate of
    /// `q . x` than the Hamming distance, whose query side is quantized too.
    pub fn asymmetric(&self, slot: u32, tables: &Tables) -> f32 {
        let s = slot as usize * self.words;
        let mut sum = 0f32;
        for (w, word) in self.codes[s..s + self.words].iter().enumerate() {
            for (jj, byte) in word.to_le_bytes().into_iter().enumerate() {
                sum += tables.0[(w * 8 + jj) * 256 + byte as usize];
            }
        }
        sum
    }
}

fn encode(values: impl Iterator<Item = f32>, out: &mut [u64]) {
    out.iter_mut().for_each(|w| *w = 0);
    for (i, v) in values.enumerate() {
        if v > 0.0 {
            out[i / 64] |= 1 << (i % 64);
        }
    }
}

/// Distances of every `query.len()`-word code in `codes` to `query`.
fn hamming(codes: &[u64], query: &[u64], out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if query.len() == 8 && std::arch::is_x86_feature_detected!("avx512vpopcntdq") {
        // SAFETY: the CPU has the features the function is compiled for (checked just above).
        unsafe { hamming8_avx512(codes, query, out) };
        return;
    }
    if query.len() == 8 {
        hamming8(codes, query, out);
    } else {
        for (code, d) in codes.chunks_exact(query.len()).zip(out.iter_mut()) {
            *d = code
                .iter()
                .zip(query)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum::<u32>() as u16;
        }
    }
}

/// 512-bit codes: a fixed-size body the compiler turns into SIMD (VPOPCNTQ under AVX-512).
#[inline(always)]
fn hamming8(codes: &[u64], query: &[u64], out: &mut [u16]) {
    let mut q = [0u64; 8];
    q.copy_from_slice(&query[..8]);
    for (code, d) in codes.chunks_exact(8).zip(out.iter_mut()) {
        let mut sum = 0u32;
        for i in 0..8 {
            sum += (code[i] ^ q[i]).count_ones();
        }
        *d = sum as u16;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt")]
unsafe fn hamming8_avx512(codes: &[u64], query: &[u64], out: &mut [u16]) {
    hamming8(codes, query, out)
}

/// The `r` smallest of `dists` (slots `base + i`, kept where `live`), as (distance, slot): a
/// histogram of the distances finds the cut, one more pass gathers (no sort of the whole scan).
pub fn smallest(
    dists: &[u16],
    base: usize,
    r: usize,
    dim: usize,
    mut live: impl FnMut(u32) -> bool,
) -> Vec<(u16, u32)> {
    let mut hist = vec![0usize; dim + 2];
    for &d in dists {
        hist[(d as usize).min(dim + 1)] += 1;
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
    fn the_kernels_agree_with_a_plain_count_and_the_cut_keeps_the_nearest() {
        let dim = 512;
        let mut rng = crate::retrieve::synth::Rng::new(5);
        let rows: Vec<Vec<f32>> = (0..300)
            .map(|_| (0..dim).map(|_| rng.gauss()).collect())
            .collect();
        let mut codes =
            BinaryCodes::new(dim, BinaryCodes::mean_of(dim, rows.iter().map(|r| &r[..])));
        for (i, r) in rows.iter().enumerate() {
            codes.set(i as u32, r);
        }
        let q = codes.query(&rows[7]);
        let mut d = Vec::new();
        codes.distances(0..300, &q, &mut d);
        for (i, &di) in d.iter().enumerate() {
            assert_eq!(di, codes.distance(i as u32, &q));
            let plain = codes.codes[i * 8..(i + 1) * 8]
                .iter()
                .zip(&q)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum::<u32>();
            assert_eq!(u32::from(di), plain);
        }
        let mut portable = vec![0u16; 300];
        hamming8(&codes.codes, &q, &mut portable);
        assert_eq!(portable, d);
        // The asymmetric score is the query summed over the set bits.
        let t = codes.tables(&rows[7]);
        for slot in [0u32, 7, 299] {
            let mut want = 0f32;
            for (i, x) in rows[7].iter().enumerate() {
                if codes.codes[slot as usize * 8 + i / 64] >> (i % 64) & 1 == 1 {
                    want += x;
                }
            }
            assert!((codes.asymmetric(slot, &t) - want).abs() < 1e-3);
        }
        // The 20 smallest.
        let best = smallest(&d, 0, 20, dim, |_| true);
        let mut sorted = d.clone();
        sorted.sort_unstable();
        let mut got: Vec<u16> = best.iter().map(|b| b.0).collect();
        got.sort_unstable();
        assert_eq!(got, sorted[..20]);
        // A dead slot never comes back; at most one place is lost to it.
        let dead = best[0].1;
        let alive = smallest(&d, 0, 20, dim, |s| s != dead);
        assert!(alive.len() >= 19 && alive.iter().all(|b| b.1 != dead));
    }
}
