use std::time::Instant;
#[inline(always)]
fn hamming8(codes: &[u64], q: &[u64;8], out: &mut [u16]) {
    for (code, d) in codes.chunks_exact(8).zip(out.iter_mut()) {
        let mut sum = 0u32;
        for i in 0..8 { sum += (code[i] ^ q[i]).count_ones(); }
        *d = sum as u16;
    }
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt")]
unsafe fn hamming8_avx(codes: &[u64], q: &[u64;8], out: &mut [u16]) { hamming8(codes,q,out) }

// planes: 4 x 8 words; pop: per-code popcount; returns U (weighted sum) per code as u16
#[inline(always)]
fn planes8(codes: &[u64], p: &[[u64;8];4], out: &mut [u16]) {
    for (code, d) in codes.chunks_exact(8).zip(out.iter_mut()) {
        let mut s = 0u32;
        for b in 0..4 {
            let mut t = 0u32;
            for i in 0..8 { t += (code[i] & p[b][i]).count_ones(); }
            s += t << b;
        }
        *d = s as u16;
    }
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt")]
unsafe fn planes8_avx(codes: &[u64], p: &[[u64;8];4], out: &mut [u16]) { planes8(codes,p,out) }

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt")]
unsafe fn planes8_intr(codes: &[u64], p: &[[u64;8];4], out: &mut [u16]) {
    use std::arch::x86_64::*;
    let p0 = _mm512_loadu_si512(p[0].as_ptr() as *const _);
    let p1 = _mm512_loadu_si512(p[1].as_ptr() as *const _);
    let p2 = _mm512_loadu_si512(p[2].as_ptr() as *const _);
    let p3 = _mm512_loadu_si512(p[3].as_ptr() as *const _);
    for (i, d) in out.iter_mut().enumerate().take(codes.len()/8) {
        let c = _mm512_loadu_si512(codes.as_ptr().add(i*8) as *const _);
        let a0 = _mm512_popcnt_epi64(_mm512_and_si512(c,p0));
        let a1 = _mm512_popcnt_epi64(_mm512_and_si512(c,p1));
        let a2 = _mm512_popcnt_epi64(_mm512_and_si512(c,p2));
        let a3 = _mm512_popcnt_epi64(_mm512_and_si512(c,p3));
        let s = _mm512_add_epi64(_mm512_add_epi64(a0, _mm512_slli_epi64(a1,1)), _mm512_add_epi64(_mm512_slli_epi64(a2,2), _mm512_slli_epi64(a3,3)));
        *d = _mm512_reduce_add_epi64(s) as u16;
    }
}

#[target_feature(enable = "popcnt")]
unsafe fn planes8_popcnt(codes: &[u64], p: &[[u64;8];4], out: &mut [u16]) { planes8(codes,p,out) }
#[target_feature(enable = "avx2,popcnt")]
unsafe fn planes8_avx2(codes: &[u64], p: &[[u64;8];4], out: &mut [u16]) { planes8(codes,p,out) }
fn main() {
    let n = 1_000_000usize;
    let mut x = 0x12345u64;
    let codes: Vec<u64> = (0..n*8).map(|_| { x ^= x<<13; x^=x>>7; x^=x<<17; x }).collect();
    let q = [x;8];
    let p = [[x^1;8],[x^2;8],[x^3;8],[x^4;8]];
    let mut out = vec![0u16; n];
    for name in ["ham", "ham_avx", "planes", "planes_avx", "planes_intr", "planes_popcnt", "planes_avx2"] {
        let mut best = f64::MAX;
        for _ in 0..10 {
            let t = Instant::now();
            for chunk in 0..(n/65536+1) {
                let a = chunk*65536; let b = (a+65536).min(n);
                if a>=b {break}
                let c = &codes[a*8..b*8]; let o = &mut out[a..b];
                unsafe { match name {
                    "ham" => hamming8(c,&q,o), "ham_avx" => hamming8_avx(c,&q,o),
                    "planes" => planes8(c,&p,o), "planes_avx" => planes8_avx(c,&p,o),
                    "planes_intr" => planes8_intr(c,&p,o), "planes_popcnt" => planes8_popcnt(c,&p,o), _ => planes8_avx2(c,&p,o) } }
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("{name}: {:.2} ms (sum {})", best*1e3, out.iter().map(|&v| v as u64).sum::<u64>());
    }
}
