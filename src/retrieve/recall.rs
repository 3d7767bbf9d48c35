//! A recall target kept by measurement instead of raw knobs: the local store keeps a small sample
//! of each collection's own recent queries ([`Samples`]), and a background check ([`check`])
//! answers them both ways (the approximate path and the exact scan) every `interval`, publishes
//! the measured recall@10 and raises the binary scan's oversampling by half (up to
//! `max_oversample`) while the measurement is under the target. The work is bounded: at most
//! `samples` queries per collection per check, each costing one exact scan.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{
    ann::AnnIndex,
    index::{Metadata, VectorIndex},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecallConfig {
    /// The recall@10 to keep, in thousandths (950: 0.95).
    pub target_permille: u32,
    /// Between checks; zero: never checked.
    pub interval: Duration,
    /// Queries kept per collection and measured per check.
    pub samples: usize,
    /// The most the oversampling is raised to.
    pub max_oversample: usize,
    /// PostgreSQL: the most of the time, in thousandths, the check's exact scans may take (it
    /// pauses after each sample in proportion: each is a sequential scan of the table).
    pub duty_permille: u32,
}

impl Default for RecallConfig {
    fn default() -> Self {
        RecallConfig {
            target_permille: 950,
            interval: Duration::from_secs(60),
            samples: 32,
            max_oversample: 200,
            duty_permille: 100,
        }
    }
}

/// One query in `KEEP_EVERY` is kept (a copy of its vector), the newest `samples` of them.
const KEEP_EVERY: u64 = 4;

/// Recent queries of one collection.
#[derive(Default)]
pub struct Samples {
    queries: Mutex<VecDeque<Vec<f32>>>,
    seen: AtomicU64,
}

impl Samples {
    /// Offers a query (one in [`KEEP_EVERY`] is kept, the newest `cap`).
    pub fn offer(&self, query: &[f32], cap: usize) {
        if cap == 0
            || !self
                .seen
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(KEEP_EVERY)
        {
            return;
        }
        let mut q = self.queries.lock().unwrap_or_else(PoisonError::into_inner);
        while q.len() >= cap {
            q.pop_front();
        }
        q.push_back(query.to_vec());
    }

    pub fn snapshot(&self) -> Vec<Vec<f32>> {
        let q = self.queries.lock().unwrap_or_else(PoisonError::into_inner);
        q.iter().cloned().collect()
    }
}

/// recall@10 of `index`'s planned (approximate) answers against its exact ones over `queries`;
/// `None` without queries or items.
pub fn measure(index: &AnnIndex, queries: &[Vec<f32>]) -> Option<f64> {
    let none = Metadata::new();
    let (mut hit, mut total) = (0usize, 0usize);
    for q in queries {
        let (exact, _) = index.search_with(q, 10, &none, true);
        let (approx, _) = index.search_with(q, 10, &none, false);
        total += exact.len();
        hit += approx
            .iter()
            .filter(|a| exact.iter().any(|e| e.id == a.id))
            .count();
    }
    (total > 0).then(|| hit as f64 / total as f64)
}

/// `config` with a collection's own target (CreateCollection's `recall_target`) when it has one.
pub fn for_collection(config: &RecallConfig, options: &super::CollectionOptions) -> RecallConfig {
    RecallConfig {
        target_permille: options
            .recall_target_permille
            .unwrap_or(config.target_permille),
        ..*config
    }
}

/// How long a check pauses after a sample that took `took`, so that its scans take at most
/// `duty_permille` thousandths of the time.
pub fn pause_after(took: Duration, duty_permille: u32) -> Duration {
    let duty = duty_permille.clamp(1, 1000);
    took.mul_f64(f64::from(1000 - duty) / f64::from(duty))
}

/// The oversampling to use after measuring `recall`: raised by half (at least one) while under
/// the target, up to the bound; `None`: leave it.
pub fn raised(current: usize, recall: f64, config: &RecallConfig) -> Option<usize> {
    let target = f64::from(config.target_permille) / 1000.0;
    (recall < target && current < config.max_oversample)
        .then(|| (current + current.div_ceil(2)).min(config.max_oversample))
}

/// One check of one index: the measured recall, and the raised oversampling if any.
pub fn check(
    index: &AnnIndex,
    samples: &Samples,
    config: &RecallConfig,
) -> Option<(f64, Option<usize>)> {
    if index.params().graph {
        return None;
    }
    let queries = samples.snapshot();
    let recall = measure(index, &queries)?;
    Some((recall, raised(index.params().oversample, recall, config)))
}

/// Checks one collection's index (when it is a binary scan): publishes the measured recall into
/// `gauge`, and raises the oversampling (under the write lock, briefly) when under the target.
pub fn keep(
    name: &str,
    index: &RwLock<Box<dyn VectorIndex>>,
    samples: &Samples,
    config: &RecallConfig,
    gauge: Option<&prometheus::GaugeVec>,
) {
    let checked = {
        let index = index.read().unwrap_or_else(PoisonError::into_inner);
        index.ann().and_then(|ann| check(ann, samples, config))
    };
    let Some((measured, raised)) = checked else {
        return;
    };
    if let Some(gauge) = gauge {
        gauge.with_label_values(&[name]).set(measured);
    }
    if let Some(oversample) = raised {
        tracing::info!(collection = %name, measured, oversample, "recall under its target: more oversampling");
        let mut index = index.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(ann) = index.ann_mut() {
            ann.set_oversample(oversample);
        }
    }
}

/// Runs `tick` every `interval` on a thread of its own until it returns false.
pub fn every(interval: Duration, mut tick: impl FnMut() -> bool + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("recall-check".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                if !tick() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the recall check");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrieve::{
        ann::AnnParams,
        synth::{self, Kind},
    };
    use std::sync::Arc;

    #[test]
    fn the_check_pauses_in_proportion_to_its_share_of_the_time() {
        let two = Duration::from_secs(2);
        assert_eq!(pause_after(two, 100), Duration::from_secs(18));
        assert_eq!(pause_after(two, 500), two);
        assert_eq!(pause_after(two, 1000), Duration::ZERO);
        // Out-of-range shares are clamped, never a division by zero.
        assert_eq!(
            pause_after(Duration::from_millis(1), 0),
            Duration::from_millis(999)
        );
        assert_eq!(pause_after(two, 5000), Duration::ZERO);
    }

    #[test]
    fn a_collection_under_its_target_gets_more_oversampling_until_it_meets_it() {
        let (dim, n) = (512, 6000);
        let subjects = synth::subjects(n);
        let data = synth::vectors(Kind::Images, n, dim, subjects, 7);
        let items: Vec<_> = data
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, v)| (format!("i{i}"), v.to_vec(), Arc::new(Metadata::new())))
            .collect();
        // Starved on purpose: 1 x k rescored.
        let params = AnnParams {
            oversample: 1,
            ..AnnParams::default()
        };
        let mut index = AnnIndex::build(dim, 1, params, &items).unwrap();
        let samples = Samples::default();
        let texts = synth::vectors(Kind::Texts, 64, dim, subjects, 3);
        for q in texts.chunks_exact(dim) {
            samples.offer(q, 16);
        }
        assert_eq!(
            samples.snapshot().len(),
            16,
            "one in four kept, the cap holds"
        );
        let config = RecallConfig::default();
        let mut measured = Vec::new();
        for _ in 0..20 {
            let (recall, raised) = check(&index, &samples, &config).unwrap();
            measured.push(recall);
            match raised {
                Some(o) => index.set_oversample(o),
                None => break,
            }
        }
        let (first, last) = (measured[0], *measured.last().unwrap());
        assert!(first < 0.95, "starved: {first}");
        assert!(last >= 0.95, "kept: {measured:?}");
        assert!(index.params().oversample > 1);
        assert_eq!(raised(10, 0.5, &config), Some(15));
        assert_eq!(raised(200, 0.5, &config), None, "bounded");
        assert_eq!(raised(10, 0.99, &config), None);
        // A collection's own target (CreateCollection's recall_target) replaces the server's.
        let lax = crate::retrieve::CollectionOptions {
            recall_target_permille: Some(500),
            ..Default::default()
        };
        assert_eq!(raised(10, 0.6, &for_collection(&config, &lax)), None);
        assert_eq!(raised(10, 0.6, &config), Some(15));
        let strict = crate::retrieve::CollectionOptions {
            recall_target_permille: Some(999),
            ..Default::default()
        };
        assert_eq!(
            raised(10, 0.99, &for_collection(&config, &strict)),
            Some(15)
        );
    }
}
