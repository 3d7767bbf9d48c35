//! Synthetic embeddings for the approximate-search benchmark (`benches/ann.rs`) and tests: no
//! checkpoint is needed to make vectors shaped like CLIP's.
//!
//! * [`Kind::Uniform`]: random unit vectors (no structure; the hardest case for a graph).
//! * [`Kind::Clustered`] / [`Kind::Far`]: 1000 random centres plus gaussian noise (cosine ~0.83 to
//!   the centre), and queries around the same centres with much more noise (~0.3).
//! * [`Kind::Images`] / [`Kind::Texts`]: the **modality gap**. CLIP puts images and texts in two
//!   narrow cones around two different mean directions. An image of subject `s` is
//!   `normalize(a*m_img + b*c_s + g*noise)` and a caption of `s` is
//!   `normalize(a'*m_txt + b'*c_s + g'*noise)`, with `m_img . m_txt = rho`. The weights give:
//!   photos of one subject ~0.8 to each other, photos of different subjects ~0.45 (the image cone),
//!   a caption ~0.3 to its own subject's photos and ~0.12 to the others (see [`GAP`]). Subjects:
//!   one per 100 images (`subjects`), so a caption's true top 10 lie among ~100 photos all at about
//!   the same cosine, far outside the cone a graph built from images was made for.

/// xorshift64: deterministic, seedable, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    /// Standard normal (Box-Muller).
    pub fn gauss(&mut self) -> f32 {
        let u = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let v = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|a| *a /= n);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Uniform,
    Clustered,
    Far,
    Images,
    Texts,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "uniform" => Kind::Uniform,
            "clustered" => Kind::Clustered,
            "far" => Kind::Far,
            "images" | "gap" => Kind::Images,
            "texts" => Kind::Texts,
            _ => return None,
        })
    }
}

/// The modality-gap model's weights (squared weights of mean, subject and noise; rho).
pub struct Gap {
    pub image: [f32; 3],
    pub text: [f32; 3],
    /// Cosine between the two modalities' mean directions.
    pub rho: f32,
}

/// Image: 0.45 cone + 0.35 subject + 0.2 noise (same subject 0.8, other 0.45). Text: 0.5 cone +
/// 0.09 subject + 0.41 noise, rho 0.25: caption to own photos 0.45^.5*0.5^.5*0.25 + (0.35*0.09)^.5
/// ~ 0.12 + 0.18 = 0.30, to other photos ~0.12.
pub const GAP: Gap = Gap {
    image: [0.45, 0.35, 0.20],
    text: [0.50, 0.09, 0.41],
    rho: 0.25,
};

/// Subjects of a modality-gap collection of `n` images (one per 100, at least 10).
pub fn subjects(n: usize) -> usize {
    (n / 100).max(10)
}

/// Unit vector of random gaussian components.
fn direction(rng: &mut Rng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.gauss()).collect();
    normalize(&mut v);
    v
}

/// `n` unit vectors of `dim` components, row-major. `subjects` is the number of subjects
/// (modality gap) shared by a collection and its queries: pass [`subjects`] of the collection's size
/// for both. The centres and means come from fixed seeds; `seed` draws the items.
pub fn vectors(kind: Kind, n: usize, dim: usize, subjects: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n * dim);
    match kind {
        Kind::Uniform => {
            for _ in 0..n {
                let start = out.len();
                out.extend((0..dim).map(|_| rng.uniform()));
                normalize(&mut out[start..]);
            }
        }
        Kind::Clustered | Kind::Far => {
            let noise = if kind == Kind::Far { 0.14 } else { 0.03 };
            let mut crng = Rng(0x5EED);
            let mut centres: Vec<f32> = (0..1000 * dim).map(|_| crng.gauss()).collect();
            centres.chunks_exact_mut(dim).for_each(normalize);
            for _ in 0..n {
                let c = (rng.next_u64() % 1000) as usize;
                let start = out.len();
                out.extend(
                    centres[c * dim..(c + 1) * dim]
                        .iter()
                        .map(|x| x + noise * rng.gauss()),
                );
                normalize(&mut out[start..]);
            }
        }
        Kind::Images | Kind::Texts => {
            let mut crng = Rng::new(0x6A9);
            let m_img = direction(&mut crng, dim);
            let other = direction(&mut crng, dim);
            // m_txt at cosine rho from m_img: rho*m_img + sqrt(1-rho^2)*(other minus its m_img part).
            let along: f32 = other.iter().zip(&m_img).map(|(a, b)| a * b).sum();
            let mut ortho: Vec<f32> = other
                .iter()
                .zip(&m_img)
                .map(|(o, m)| o - along * m)
                .collect();
            normalize(&mut ortho);
            let r = GAP.rho;
            let m_txt: Vec<f32> = m_img
                .iter()
                .zip(&ortho)
                .map(|(m, o)| r * m + (1.0 - r * r).sqrt() * o)
                .collect();
            let subjects = subjects.max(1);
            let (mean, w) = if kind == Kind::Images {
                (&m_img, GAP.image)
            } else {
                (&m_txt, GAP.text)
            };
            let (wm, ws, wn) = (w[0].sqrt(), w[1].sqrt(), w[2].sqrt());
            // Noise of unit expected norm: gaussian / sqrt(dim).
            let scale = wn / (dim as f32).sqrt();
            for _ in 0..n {
                let s = rng.next_u64() % subjects as u64;
                let centre = direction(&mut Rng::new(0xC0FFEE ^ s.wrapping_mul(31)), dim);
                let start = out.len();
                out.extend(
                    mean.iter()
                        .zip(&centre)
                        .map(|(m, c)| wm * m + ws * c + scale * rng.gauss()),
                );
                normalize(&mut out[start..]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// The subject of each row, redrawn the way `vectors` draws it.
    fn subject_of(n: usize, subjects: usize, seed: u64, dim: usize) -> Vec<u64> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| {
                let s = rng.next_u64() % subjects as u64;
                for _ in 0..dim {
                    rng.gauss();
                }
                s
            })
            .collect()
    }

    #[test]
    fn the_modality_gap_model_has_clips_cosines() {
        let (dim, n, subjects) = (512, 400, 20);
        let images = vectors(Kind::Images, n, dim, subjects, 1);
        let texts = vectors(Kind::Texts, n, dim, subjects, 2);
        let si = subject_of(n, subjects, 1, dim);
        let st = subject_of(n, subjects, 2, dim);
        let (mut same, mut other, mut own, mut foreign) = (vec![], vec![], vec![], vec![]);
        for i in 0..n {
            let a = &images[i * dim..(i + 1) * dim];
            for j in (i + 1)..n {
                let c = cos(a, &images[j * dim..(j + 1) * dim]);
                if si[i] == si[j] {
                    &mut same
                } else {
                    &mut other
                }
                .push(c);
            }
            for j in 0..n {
                let c = cos(a, &texts[j * dim..(j + 1) * dim]);
                if si[i] == st[j] {
                    &mut own
                } else {
                    &mut foreign
                }
                .push(c);
            }
        }
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        let (same, other, own, foreign) = (mean(&same), mean(&other), mean(&own), mean(&foreign));
        assert!(
            (0.75..0.85).contains(&same),
            "photos of one subject: {same}"
        );
        assert!(
            (0.40..0.50).contains(&other),
            "photos of two subjects: {other}"
        );
        assert!(
            (0.25..0.35).contains(&own),
            "a caption and its photos: {own}"
        );
        assert!(
            (0.08..0.16).contains(&foreign),
            "a caption and other photos: {foreign}"
        );
        // Every vector is a unit vector, and the two kinds are deterministic per seed.
        assert!(
            images
                .chunks_exact(dim)
                .all(|v| (cos(v, v) - 1.0).abs() < 1e-4)
        );
        assert_eq!(texts, vectors(Kind::Texts, n, dim, subjects, 2));
    }
}
